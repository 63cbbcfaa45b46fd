"""Modbus energy meters (TCP or RTU): register maps as data, one owner per bus."""

from hal.modbus.meter import BusEndpoint, BusPool, ModbusBus, ModbusMeter
from hal.modbus.registers import MAPS, RegisterMap, decode, encode, register_map

__all__ = ["MAPS", "BusEndpoint", "BusPool", "ModbusBus", "ModbusMeter", "RegisterMap", "decode", "encode",
           "register_map"]
