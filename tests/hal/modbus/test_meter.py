"""ModbusMeter against real pymodbus servers: TCP on loopback, RTU over a pseudo-terminal pair."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from pymodbus.constants import ExcCodes

from chargepoint.config import MeterSettings
from hal.interfaces import MeterError, MeterReading
from hal.modbus.meter import BusEndpoint, BusPool, ModbusBus, ModbusMeter
from hal.modbus.registers import MAPS, SDM120, SDM630, RegisterMap
from hal.modbus.sim_server import SimulatedMeter, SimulatedMeterServer
from tests.hal.modbus.ptylink import PtyLink

READING_3P = MeterReading(energy_wh=1234500.0, power_w=11040.0, current_a=(16.0, 15.5, 16.5),
                          voltage_v=(230.0, 231.0, 229.0))
READING_1P = MeterReading(energy_wh=5000.0, power_w=3680.0, current_a=(16.0,), voltage_v=(230.0,))


def tcp_meter(port: int, register_map: RegisterMap, *, unit_id: int = 1, retries: int = 2,
              timeout_s: float = 1.0) -> ModbusMeter:
    return ModbusMeter(ModbusBus(BusEndpoint("tcp", port=port), timeout_s=timeout_s), register_map,
                       unit_id=unit_id, retries=retries)


@pytest_asyncio.fixture
async def servers() -> AsyncIterator[list[SimulatedMeterServer]]:
    started: list[SimulatedMeterServer] = []
    yield started
    for server in started:
        await server.stop()


@pytest.fixture
def pty_link() -> Iterator[PtyLink]:
    link = PtyLink()
    yield link
    link.close()


async def serve_tcp(servers: list[SimulatedMeterServer], meters: SimulatedMeter | list[SimulatedMeter],
                    port: int = 0) -> int:
    server = SimulatedMeterServer(meters)
    servers.append(server)
    return await server.start_tcp(port=port)


def expected(register_map: RegisterMap) -> MeterReading:
    return READING_3P if register_map.phases == 3 else READING_1P


@pytest.mark.asyncio
@pytest.mark.parametrize("name", sorted(MAPS))
async def test_each_meter_map_decodes_over_tcp(servers: list[SimulatedMeterServer], name: str) -> None:
    register_map = MAPS[name]
    reading = expected(register_map)
    port = await serve_tcp(servers, SimulatedMeter(register_map, lambda: reading, unit_id=7))
    meter = tcp_meter(port, register_map, unit_id=7)
    try:
        got = await meter.read()
    finally:
        await meter.close()
    # Each meter's own resolution: EM340 energy in 0.1 kWh, ABB in 0.01 kWh.
    assert got.energy_wh == pytest.approx(reading.energy_wh, abs=100)
    assert got.power_w == pytest.approx(reading.power_w, abs=0.1)
    assert got.current_a == pytest.approx(reading.current_a, abs=0.01)
    assert got.voltage_v == pytest.approx(reading.voltage_v, abs=0.1)


@pytest.mark.asyncio
async def test_wrong_function_code_is_an_exception_response_then_meter_error(
        servers: list[SimulatedMeterServer]) -> None:
    # The meter keeps its values in holding registers; the driver asks for input registers.
    served = dataclasses.replace(SDM630, function=0x03)
    port = await serve_tcp(servers, SimulatedMeter(served, lambda: READING_3P))
    meter = tcp_meter(port, SDM630, retries=1)
    with pytest.raises(MeterError, match="exception response"):
        await meter.read()
    await meter.close()


@pytest.mark.asyncio
async def test_exception_responses_are_retried(servers: list[SimulatedMeterServer]) -> None:
    sim = SimulatedMeter(SDM630, lambda: READING_3P)
    busy = [ExcCodes.DEVICE_BUSY, ExcCodes.DEVICE_FAILURE]
    sim.hook = lambda unit, fc, address, count: busy.pop() if busy else None
    port = await serve_tcp(servers, sim)
    meter = tcp_meter(port, SDM630, retries=2)
    assert (await meter.read()).power_w == pytest.approx(11040.0)
    assert sim.requests == len(SDM630.blocks) + 2
    await meter.close()


@pytest.mark.asyncio
async def test_too_many_exception_responses_give_meter_error_not_a_crash(servers: list[SimulatedMeterServer]) -> None:
    sim = SimulatedMeter(SDM630, lambda: READING_3P)
    sim.hook = lambda unit, fc, address, count: ExcCodes.DEVICE_FAILURE
    port = await serve_tcp(servers, sim)
    meter = tcp_meter(port, SDM630, retries=2)
    with pytest.raises(MeterError, match="3 attempts"):
        await meter.read()
    assert sim.requests == 3
    sim.hook = None
    assert (await meter.read()).energy_wh == pytest.approx(READING_3P.energy_wh, abs=1)
    await meter.close()


@pytest.mark.asyncio
async def test_stopped_meter_gives_meter_error_and_restarted_meter_recovers(
        servers: list[SimulatedMeterServer]) -> None:
    port = await serve_tcp(servers, SimulatedMeter(SDM630, lambda: READING_3P))
    meter = tcp_meter(port, SDM630, retries=1, timeout_s=0.3)
    assert (await meter.read()).power_w == pytest.approx(11040.0)
    await servers[0].stop()
    with pytest.raises(MeterError):
        await meter.read()
    with pytest.raises(MeterError):
        await meter.read()
    await serve_tcp(servers, SimulatedMeter(SDM630, lambda: READING_3P), port=port)
    assert (await meter.read()).power_w == pytest.approx(11040.0)
    await meter.close()


@pytest.mark.asyncio
async def test_silent_meter_times_out_into_meter_error() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while await reader.read(1024):
            pass  # never answers

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    meter = tcp_meter(port, SDM630, retries=1, timeout_s=0.2)
    try:
        with pytest.raises(MeterError, match="2 attempts"):
            await asyncio.wait_for(meter.read(), timeout=30)
    finally:
        await meter.close()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_meters_sharing_a_bus_use_one_client_and_read_their_own_unit(
        servers: list[SimulatedMeterServer]) -> None:
    port = await serve_tcp(servers, [SimulatedMeter(SDM630, lambda: READING_3P, unit_id=1),
                                     SimulatedMeter(SDM120, lambda: READING_1P, unit_id=2)])
    pool = BusPool()
    settings_1 = MeterSettings(driver="sdm630", transport="tcp", port=port, unit_id=1, timeout_s=1.0)
    settings_2 = MeterSettings(driver="sdm120", transport="tcp", port=port, unit_id=2, timeout_s=1.0)
    meter_1 = ModbusMeter.from_settings(settings_1, pool)
    meter_2 = ModbusMeter.from_settings(settings_2, pool)
    assert meter_1.bus is meter_2.bus
    results = await asyncio.gather(*(m.read() for m in (meter_1, meter_2, meter_1, meter_2)))
    assert [r.current_a for r in results] == [READING_3P.current_a, READING_1P.current_a] * 2
    await meter_1.close()
    assert (await meter_2.read()).energy_wh == pytest.approx(5000.0)  # the bus stays open for meter 2
    await meter_2.close()
    with pytest.raises(MeterError):
        await meter_2.read()


def test_bus_pool_refuses_one_serial_port_with_two_line_settings() -> None:
    pool = BusPool()
    pool.bus(BusEndpoint("rtu", device="/dev/ttyUSB0", baudrate=9600))
    with pytest.raises(ValueError, match="configured twice"):
        pool.bus(BusEndpoint("rtu", device="/dev/ttyUSB0", baudrate=19200))


@pytest.mark.asyncio
async def test_rtu_meter_over_a_pseudo_terminal_pair(pty_link: PtyLink) -> None:
    server = SimulatedMeterServer(SimulatedMeter(SDM630, lambda: READING_3P, unit_id=3))
    await server.start_rtu(pty_link.server_device)
    settings = MeterSettings(driver="sdm630", transport="rtu", device=pty_link.client_device, unit_id=3,
                             timeout_s=1.0, retries=2)
    meter = ModbusMeter.from_settings(settings)
    try:
        reading = await meter.read()
        assert reading.voltage_v == (230.0, 231.0, 229.0)
        assert reading.energy_wh == pytest.approx(1234500.0)
    finally:
        await meter.close()
        await server.stop()


@pytest.mark.asyncio
async def test_rtu_crc_error_is_retried(pty_link: PtyLink) -> None:
    sim = SimulatedMeter(SDM630, lambda: READING_3P, unit_id=3)
    server = SimulatedMeterServer(sim)
    await server.start_rtu(pty_link.server_device)
    meter = ModbusMeter(ModbusBus(BusEndpoint("rtu", device=pty_link.client_device), timeout_s=0.5), SDM630,
                        unit_id=3, retries=2)
    try:
        assert (await meter.read()).power_w == pytest.approx(11040.0)
        requests_before = sim.requests
        pty_link.corrupt_next_answers(2)
        assert (await meter.read()).current_a == (16.0, 15.5, 16.5)
        assert pty_link.corrupted_chunks >= 2
        assert sim.requests == requests_before + len(SDM630.blocks) + 2  # two answers lost, asked again
        # More bad frames than retries: MeterError, and the next read is clean again.
        pty_link.corrupt_next_answers(3)
        with pytest.raises(MeterError):
            await meter.read()
        assert (await meter.read()).power_w == pytest.approx(11040.0)
    finally:
        await meter.close()
        await server.stop()
