"""Modbus energy meters over TCP or RTU (pymodbus 3.16), one owner per bus.

- ModbusBus owns one endpoint (a serial port, or a TCP host:port) and its
  pymodbus client. Its asyncio.Lock serialises every request on that bus, so
  several connectors' meters can share one RS-485 line with different unit ids
  (Modbus RTU is strictly one request at a time, master-driven).
- ModbusMeter reads one meter's register map in a few block requests and
  decodes it with the pure hal.modbus.registers.decode.

Failures (timeout, CRC error -> no valid frame -> timeout, exception response,
lost connection) are retried `retries` times, then raised as MeterError; the
driver never crashes the daemon. The client is created lazily inside the
running loop (pymodbus 3.16 needs one), without pymodbus' own reconnect task
or retries: a lost TCP connection is simply reopened on the next request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from hal.interfaces import MeterError, MeterReading
from hal.modbus.registers import READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS, RegisterMap, decode, register_map

if TYPE_CHECKING:
    from chargepoint.config import MeterSettings

log = logging.getLogger("chargepoint.hal.modbus")

# Pause between attempts on a serial line: lets a late answer to the timed-out
# request drain, so it cannot be taken for the answer to the retry (an RTU
# frame carries no transaction id).
RTU_RETRY_GAP_S = 0.05


@dataclass(frozen=True)
class BusEndpoint:
    """Where a bus is; equal endpoints are the same bus."""

    transport: str                  # "tcp" | "rtu"
    host: str = "127.0.0.1"
    port: int = 502
    device: str | None = None
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1

    @property
    def key(self) -> tuple[str, ...]:
        if self.transport == "rtu":
            return ("rtu", str(self.device))
        return ("tcp", self.host, str(self.port))

    def __str__(self) -> str:
        return f"{self.device}@{self.baudrate}" if self.transport == "rtu" else f"{self.host}:{self.port}"


def _quiet_pymodbus_logging() -> None:
    """pymodbus logs every failed attempt as an ERROR with frame dumps; MeterError already says it once.

    Only when nobody configured the "pymodbus" logger: an explicit level (for debugging) wins.
    """
    logger = logging.getLogger("pymodbus")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.CRITICAL)


class ModbusBus:
    """One Modbus endpoint and its client; every request on it goes through one lock."""

    def __init__(self, endpoint: BusEndpoint, *, timeout_s: float = 0.5) -> None:
        _quiet_pymodbus_logging()
        if endpoint.transport not in ("tcp", "rtu"):
            raise ValueError(f"unknown Modbus transport {endpoint.transport!r}")
        if endpoint.transport == "rtu" and not endpoint.device:
            raise ValueError("an RTU bus needs a serial device")
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._lock = asyncio.Lock()
        self._users = 0

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        e = self.endpoint
        # retries=0 and reconnect_delay=0: this class owns retries and reconnects.
        if e.transport == "rtu":
            return AsyncModbusSerialClient(str(e.device), baudrate=e.baudrate, parity=e.parity, stopbits=e.stopbits,
                                           bytesize=8, timeout=self.timeout_s, retries=0, reconnect_delay=0)
        return AsyncModbusTcpClient(e.host, port=e.port, timeout=self.timeout_s, retries=0, reconnect_delay=0)

    async def _connected_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._client is None:
            self._client = self._new_client()
        if not self._client.connected and not await self._client.connect():
            raise MeterError(f"cannot open Modbus bus {self.endpoint}")
        return self._client

    async def read_registers(self, *, unit_id: int, function: int, address: int, count: int,
                             retries: int) -> list[int]:
        """Read `count` registers; retried `retries` times, then MeterError."""
        if function not in (READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS):
            raise ValueError(f"unsupported function code {function}")
        last_error = "no attempt"
        async with self._lock:
            for attempt in range(retries + 1):
                if attempt and self.endpoint.transport == "rtu":
                    await asyncio.sleep(RTU_RETRY_GAP_S)
                try:
                    return await self._read_once(unit_id, function, address, count)
                except (TimeoutError, MeterError, ModbusException, OSError) as exc:
                    last_error = str(exc) or type(exc).__name__
                except Exception as exc:  # whatever a broken frame makes pymodbus raise: never crash the daemon
                    last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("modbus %s unit %d: unexpected %s", self.endpoint, unit_id, last_error)
                log.debug("modbus %s unit %d fc%d @%#06x: attempt %d failed: %s", self.endpoint, unit_id,
                          function, address, attempt + 1, last_error)
            # Start from a fresh connection next time (a half-open TCP socket, a gateway that lost sync).
            self._drop_client()
        raise MeterError(f"Modbus {self.endpoint} unit {unit_id}: no valid answer after {retries + 1} attempts "
                         f"({last_error})")

    async def _read_once(self, unit_id: int, function: int, address: int, count: int) -> list[int]:
        client = await self._connected_client()
        call = client.read_input_registers if function == READ_INPUT_REGISTERS else client.read_holding_registers
        # pymodbus times out by itself; the outer bound only guards against a stuck transport.
        response: Any = await asyncio.wait_for(call(address, count=count, device_id=unit_id),
                                               timeout=self.timeout_s * 2 + 1.0)
        if response.isError():
            raise MeterError(f"exception response {response}")
        registers = list(response.registers)
        if len(registers) < count:
            raise MeterError(f"short answer: {len(registers)} of {count} registers")
        return registers[:count]

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def acquire(self) -> None:
        self._users += 1

    async def release(self) -> None:
        """A meter no longer uses the bus; the last one closes it."""
        self._users = max(0, self._users - 1)
        if self._users == 0:
            await self.close()

    async def close(self) -> None:
        async with self._lock:
            self._drop_client()


class BusPool:
    """Hands out one ModbusBus per endpoint ("one owner of the bus")."""

    def __init__(self) -> None:
        self._buses: dict[tuple[str, ...], ModbusBus] = {}

    def bus(self, endpoint: BusEndpoint, *, timeout_s: float = 0.5) -> ModbusBus:
        existing = self._buses.get(endpoint.key)
        if existing is None:
            existing = self._buses[endpoint.key] = ModbusBus(endpoint, timeout_s=timeout_s)
            return existing
        if existing.endpoint != endpoint:
            raise ValueError(f"Modbus bus {endpoint} is configured twice with different line settings")
        # One line, one timeout: the slowest meter on it sets it.
        existing.timeout_s = max(existing.timeout_s, timeout_s)
        return existing

    async def close(self) -> None:
        for bus in self._buses.values():
            await bus.close()


class ModbusMeter:
    """EnergyMeter for one Modbus meter (unit id) on a bus."""

    def __init__(self, bus: ModbusBus, register_map: RegisterMap, *, unit_id: int = 1, retries: int = 2) -> None:
        self.bus = bus
        self.register_map = register_map
        self.unit_id = unit_id
        self.retries = retries
        bus.acquire()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: MeterSettings, pool: BusPool | None = None) -> ModbusMeter:
        """A meter from a `[meter]` table; meters built with the same pool share their buses."""
        endpoint = BusEndpoint(transport=settings.transport, host=settings.host, port=settings.port,
                               device=settings.device, baudrate=settings.baudrate, parity=settings.parity,
                               stopbits=settings.stopbits)
        bus = (pool or BusPool()).bus(endpoint, timeout_s=settings.timeout_s)
        return cls(bus, register_map(settings.driver), unit_id=settings.unit_id, retries=settings.retries)

    async def read(self) -> MeterReading:
        if self._closed:
            raise MeterError("meter closed")
        blocks: list[tuple[int, Sequence[int]]] = []
        for block in self.register_map.blocks:
            values = await self.bus.read_registers(unit_id=self.unit_id, function=self.register_map.function,
                                                   address=block.address, count=block.count, retries=self.retries)
            blocks.append((block.address, values))
        return decode(self.register_map, blocks)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.bus.release()
