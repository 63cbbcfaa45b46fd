"""A simulated Modbus energy meter: a real pymodbus server serving a register map.

Each request is answered from a fresh MeterReading (e.g. the sim board's
meter, so `make run` can read the simulated EV through a real Modbus stack),
encoded with hal.modbus.registers.encode. Several units can share one server,
as meters share an RS-485 line. Registers live only where the meter has them
and only for the map's function code (input vs holding registers), so a
driver that asks for the wrong thing gets an exception response, as from the
real meter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hal.interfaces import MeterError, MeterReading
from hal.modbus.meter import ModbusMeter
from hal.modbus.registers import READ_HOLDING_REGISTERS, RegisterMap, encode

log = logging.getLogger("chargepoint.hal.modbus")

ReadingSource = Callable[[], MeterReading]
# (unit_id, function code, address, count) -> an exception code to answer with, or None to answer normally.
RequestHook = Callable[[int, int, int, int], ExcCodes | None]

_UNUSED_ADDRESS = 0xFFF0


class _ReadingMeter(Protocol):
    def reading(self) -> MeterReading: ...

    async def read(self) -> MeterReading: ...


class SimBoardLike(Protocol):
    def sim_meter(self, connector_id: int) -> _ReadingMeter: ...


class SimulatedMeter:
    """One unit on the simulated bus: a register map and where its values come from."""

    def __init__(self, register_map: RegisterMap, source: ReadingSource, *, unit_id: int = 1) -> None:
        self.register_map = register_map
        self.source = source
        self.unit_id = unit_id
        self.hook: RequestHook | None = None
        self.requests = 0

    def device(self) -> SimDevice:
        span: set[int] = set()
        for block in self.register_map.blocks:
            span.update(range(block.address, block.address + block.count))
        registers = [SimData(address, values=0, datatype=DataType.REGISTERS) for address in sorted(span)]
        unused = [SimData(_UNUSED_ADDRESS, values=0, datatype=DataType.REGISTERS)]
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        holding, inputs = ((registers, unused) if self.register_map.function == READ_HOLDING_REGISTERS
                           else (unused, registers))
        return SimDevice(self.unit_id, simdata=(bits, list(bits), holding, inputs), action=self._action)

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        self.requests += 1
        if self.hook is not None and (code := self.hook(self.unit_id, function_code, address, count)) is not None:
            return code
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # a meter's measurements are read-only
        values = encode(self.register_map, self.source())
        for reg_address, value in values.items():
            offset = reg_address - start_address
            if 0 <= offset < len(current_registers):
                current_registers[offset] = value
        return None


class SimulatedMeterServer:
    """A pymodbus server (TCP, or RTU on a serial device) for one or more SimulatedMeters."""

    def __init__(self, meters: SimulatedMeter | list[SimulatedMeter]) -> None:
        self.meters: Mapping[int, SimulatedMeter] = {
            m.unit_id: m for m in (meters if isinstance(meters, list) else [meters])}
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self.port: int | None = None

    def _devices(self) -> list[SimDevice]:
        return [m.device() for m in self.meters.values()]

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0: a free port) and return the port."""
        server = ModbusTcpServer(self._devices(), address=(host, port))
        await server.serve_forever(background=True)
        self._server = server
        listener: Any = server.transport
        self.port = int(listener.sockets[0].getsockname()[1])
        log.info("simulated Modbus meter on %s:%d", host, self.port)
        return self.port

    async def start_rtu(self, device: str, *, baudrate: int = 9600, parity: str = "N", stopbits: int = 1) -> None:
        server = ModbusSerialServer(self._devices(), port=device, baudrate=baudrate, parity=parity,
                                    stopbits=stopbits, timeout=1.0)
        await server.serve_forever(background=True)
        self._server = server
        log.info("simulated Modbus RTU meter on %s", device)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.shutdown()
            await asyncio.sleep(0)  # let the closed transports call back


async def serve_sim_meter(board: SimBoardLike, connector_id: int = 1, *, driver: str = "sdm630",
                          unit_id: int = 1, host: str = "127.0.0.1", port: int = 0) -> SimulatedMeterServer:
    """Serve a SimBoard connector's meter as a Modbus TCP meter (for `make run`: the EV through a real Modbus stack).

    Point the connector's [meter] table (driver, host, port, unit_id) at it. Stop it with `await server.stop()`.
    """
    from hal.modbus.registers import register_map

    sim_meter = board.sim_meter(connector_id)
    server = SimulatedMeterServer(SimulatedMeter(register_map(driver), sim_meter.reading, unit_id=unit_id))
    await server.start_tcp(host, port)
    return server


class SelfServedSimMeter:
    """EnergyMeter for `make run` (`[hal] sim_meter_modbus = true`): this process serves a SimBoard
    connector's meter on Modbus TCP and reads it back through `reader`, a ModbusMeter pointed at the
    same host:port, so the simulated EV is metered through a real Modbus stack.

    The server starts on the first read (pymodbus needs the running loop); a port it cannot bind is a
    MeterError (PowerMeterFailure, never fatal), tried again at the next read. A `meter_lost` fault
    injected into the simulator still fails the meter, as it does without Modbus.
    """

    def __init__(self, board: SimBoardLike, connector_id: int, reader: ModbusMeter, *, host: str,
                 port: int) -> None:
        self.board = board
        self.connector_id = connector_id
        self.reader = reader
        self.host = host
        self.port = port
        self.server: SimulatedMeterServer | None = None

    async def read(self) -> MeterReading:
        await self.board.sim_meter(self.connector_id).read()
        if self.server is None:
            try:
                self.server = await serve_sim_meter(self.board, self.connector_id, driver=self.reader.register_map.name,
                                                    unit_id=self.reader.unit_id, host=self.host, port=self.port)
            except (OSError, RuntimeError) as exc:  # pymodbus reports a failed bind as RuntimeError
                raise MeterError(f"cannot serve the simulated meter on {self.host}:{self.port}: {exc}") from None
        return await self.reader.read()

    async def close(self) -> None:
        await self.reader.close()
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop()
