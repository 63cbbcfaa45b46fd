"""The charger metering through a real Modbus stack (issue 3): pymodbus servers serving energy-meter
register maps over TCP on loopback and over RTU on a pseudo-terminal pair, read by the daemon's
ModbusMeter (fitted by hal.factory from the `[meter]` table), against the strict bundled central system.

OCPP 1.6 §3.16 / §7.31 (Energy.Active.Import.Register is the meter's own register, never rebased;
errata 3.9, 3.78), §4.8 StartTransaction meterStart and §6.45 StopTransaction meterStop in Wh,
§4.9 / §7.6 PowerMeterFailure reported with the current status as a warning (hal/faults.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chargepoint.app import ChargePointApp
from chargepoint.csms.server import Received
from hal.interfaces import MeterReading
from hal.modbus.meter import ModbusMeter
from hal.modbus.registers import register_map
from hal.modbus.sim_server import SelfServedSimMeter, SimulatedMeter, SimulatedMeterServer
from tests.hal.modbus.ptylink import PtyLink
from tests.support.harness import CP_ID, ChargerEnv, charger_env, eventually

FREE_VEND = "FREEVEND"
WAIT_S = 20.0
ENERGY = "Energy.Active.Import.Register"
SAMPLED = "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage"

pytestmark = pytest.mark.asyncio


# --------------------------------------------------------------------------- helpers


class MeterValuesSource:
    """What the simulated meter measures; the test moves the register between reads."""

    def __init__(self, reading: MeterReading) -> None:
        self.reading = reading

    def __call__(self) -> MeterReading:
        return self.reading

    def add_energy_wh(self, energy_wh: float) -> None:
        self.reading = dataclasses.replace(self.reading, energy_wh=self.reading.energy_wh + energy_wh)


@contextlib.asynccontextmanager
async def modbus_tcp_meter(driver: str, source: Callable[[], MeterReading], *,
                           unit_id: int = 1) -> AsyncIterator[tuple[SimulatedMeterServer, SimulatedMeter]]:
    meter = SimulatedMeter(register_map(driver), source, unit_id=unit_id)
    server = SimulatedMeterServer(meter)
    await server.start_tcp()
    try:
        yield server, meter
    finally:
        await server.stop()


def use_tcp_meter(env: ChargerEnv, driver: str, port: int, *, unit_id: int = 1) -> None:
    # Short timeouts: a stopped meter is reported within a few polls.
    env.doc["meter"] = {"driver": driver, "transport": "tcp", "host": "127.0.0.1", "port": port,
                        "unit_id": unit_id, "timeout_s": 0.3, "retries": 1}


@contextlib.asynccontextmanager
async def running(env: ChargerEnv) -> AsyncIterator[ChargePointApp]:
    env.doc["authorization"] = {"free_vend_id_tag": FREE_VEND}
    async with env.app() as app:
        await env.csms.wait_for("BootNotification", timeout_s=WAIT_S)
        await eventually(lambda: app.online, timeout_s=WAIT_S, message="registered")
        yield app


async def connector_status(env: ChargerEnv, predicate: Callable[[dict[str, Any]], bool],
                           message: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        entry: dict[str, Any] = (await env.astatus())["connectors"][0]
        return entry if predicate(entry) else None
    found: dict[str, Any] = await eventually(check, timeout_s=WAIT_S, interval_s=0.2, message=message)
    return found


def sampled(payload: dict[str, Any], measurand: str) -> list[dict[str, Any]]:
    return [sv for mv in payload["meterValue"] for sv in mv["sampledValue"] if sv.get("measurand") == measurand]


def meter_values(env: ChargerEnv, after_index: int = 0) -> list[Received]:
    return [r for r in env.csms.received_of("MeterValues") if r.index >= after_index]


async def plug_and_start(env: ChargerEnv) -> Received:
    """Plug the simulated EV in; free vend starts the transaction."""
    await env.asim("sim.plug", connector=1)
    start = await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
    assert start.response is not None
    return start


def transaction_id(start: Received) -> int:
    assert start.response is not None
    return int(start.response["transactionId"])


# --------------------------------------------------------------------------- tests

SDM630_READING = MeterReading(energy_wh=12345600.0, power_w=11040.0, current_a=(16.0, 15.5, 16.5),
                              voltage_v=(230.0, 231.0, 229.0))


async def test_sdm630_over_tcp_register_in_status_meter_start_and_meter_values_never_rebased_3_16(
        tmp_path: Path) -> None:
    """An Eastron SDM630 (float32, input registers) at 12345.6 kWh, which no float32 holds exactly: the
    charger reports what the meter displays, 12345600 Wh, in status, meterStart, MeterValues and
    meterStop; the register the meter holds, never Wh since the start (§7.31, errata 3.9)."""
    source = MeterValuesSource(SDM630_READING)
    async with modbus_tcp_meter("sdm630", source) as (server, _meter), \
            charger_env(tmp_path, MeterValueSampleInterval=1, MeterValuesSampledData=SAMPLED) as env:
        assert server.port is not None
        use_tcp_meter(env, "sdm630", server.port)
        async with running(env):
            entry = await connector_status(env, lambda c: c["meter"] is not None, "a meter reading")
            assert entry["meter"] == {"energy_wh": 12345600.0, "power_w": 11040.0,
                                      "current_a": [16.0, 15.5, 16.5], "voltage_v": [230.0, 231.0, 229.0]}
            start = await plug_and_start(env)
            assert start.payload["meterStart"] == 12345600
            first = await env.csms.wait_for("MeterValues", timeout_s=WAIT_S)
            energy = sampled(first.payload, ENERGY)
            assert [(sv["value"], sv["unit"]) for sv in energy] == [("12345600", "Wh")]
            power = sampled(first.payload, "Power.Active.Import")
            assert [(float(sv["value"]), sv["unit"]) for sv in power] == [(11040.0, "W")]
            currents = sampled(first.payload, "Current.Import")
            assert [(c["phase"], float(c["value"])) for c in currents] == [("L1", 16.0), ("L2", 15.5), ("L3", 16.5)]
            voltages = sampled(first.payload, "Voltage")
            assert [(v["phase"], float(v["value"])) for v in voltages] == [
                ("L1-N", 230.0), ("L2-N", 231.0), ("L3-N", 229.0)]

            # The register moves on the meter: the charger reports the meter's value, not Wh since the start.
            source.add_energy_wh(1500.0)
            moved = await env.csms.wait_for(
                "MeterValues", lambda p: sampled(p, ENERGY)[0]["value"] != "12345600", timeout_s=WAIT_S)
            assert sampled(moved.payload, ENERGY)[0]["value"] == "12347100"

            await env.asim("sim.unplug", connector=1)
            stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
            assert stop.payload["meterStop"] == 12347100
        env.csms.assert_no_violations()


# Each meter's own resolution: ABB B23 energy in 0.01 kWh and power in 0.01 W (integers, high word
# first, holding registers); EM340 energy in 0.1 kWh, current in mA (INT32 low word first).
OTHER_ENCODINGS = {
    "abb_b23": MeterReading(energy_wh=98765430.0, power_w=7360.5, current_a=(10.5, 10.25, 11.0),
                            voltage_v=(230.1, 229.9, 231.0)),
    "em340": MeterReading(energy_wh=98765400.0, power_w=7360.5, current_a=(10.5, 10.25, 11.125),
                          voltage_v=(230.1, 229.9, 231.0)),
}


@pytest.mark.parametrize("driver", sorted(OTHER_ENCODINGS))
async def test_scaled_integer_meters_over_tcp_give_the_register_in_wh_3_16(tmp_path: Path, driver: str) -> None:
    """ABB B23 (U64/U32/S32 high word first, holding registers) and Carlo Gavazzi EM340 (INT32 low word
    first) on unit 17: the same readings, scaled to Wh, W, A and V, reach status and the messages."""
    reading = OTHER_ENCODINGS[driver]
    source = MeterValuesSource(reading)
    async with modbus_tcp_meter(driver, source, unit_id=17) as (server, _meter), \
            charger_env(tmp_path, MeterValueSampleInterval=1, MeterValuesSampledData=SAMPLED) as env:
        assert server.port is not None
        use_tcp_meter(env, driver, server.port, unit_id=17)
        async with running(env):
            entry = await connector_status(env, lambda c: c["meter"] is not None, "a meter reading")
            assert entry["meter"] == {"energy_wh": reading.energy_wh, "power_w": round(reading.power_w, 1),
                                      "current_a": [round(a, 2) for a in reading.current_a],
                                      "voltage_v": list(reading.voltage_v)}
            start = await plug_and_start(env)
            assert start.payload["meterStart"] == int(reading.energy_wh)
            first = await env.csms.wait_for("MeterValues", timeout_s=WAIT_S)
            assert [sv["value"] for sv in sampled(first.payload, ENERGY)] == [str(int(reading.energy_wh))]
            assert float(sampled(first.payload, "Power.Active.Import")[0]["value"]) == reading.power_w
            assert [float(c["value"]) for c in sampled(first.payload, "Current.Import")] == pytest.approx(
                reading.current_a, abs=0.01)  # reported to 0.01 A
            await env.asim("sim.unplug", connector=1)
            stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
            assert stop.payload["meterStop"] == int(reading.energy_wh)
        env.csms.assert_no_violations()


@pytest.fixture
def pty_link() -> Iterator[PtyLink]:
    link = PtyLink()
    yield link
    link.close()


SDM120_READING = MeterReading(energy_wh=4321500.0, power_w=3680.0, current_a=(16.0,), voltage_v=(230.0,))


async def test_sdm120_over_rtu_crc_error_retried_silent_meter_reported_then_recovered_4_9(
        tmp_path: Path, pty_link: PtyLink) -> None:
    """RS-485 through a pseudo-terminal pair: a single-phase SDM120 on unit 5. An answer with a broken
    CRC is retried by the bus owner and never becomes a PowerMeterFailure; a meter that goes silent
    (every request times out) does, as a warning with the current status (OCPP 1.6 §4.9), until it
    answers again."""
    source = MeterValuesSource(SDM120_READING)
    servers = [SimulatedMeterServer(SimulatedMeter(register_map("sdm120"), source, unit_id=5)) for _ in range(2)]
    await servers[0].start_rtu(pty_link.server_device)
    try:
        async with charger_env(tmp_path, MeterValueSampleInterval=1, MeterValuesSampledData=SAMPLED) as env:
            env.doc["connector"] = [{"max_current_a": 16, "phases": 1}]
            env.doc["meter"] = {"driver": "sdm120", "transport": "rtu", "device": pty_link.client_device,
                                "baudrate": 9600, "unit_id": 5, "timeout_s": 0.3, "retries": 1}
            async with running(env):
                entry = await connector_status(env, lambda c: c["meter"] is not None, "a meter reading")
                assert entry["meter"] == {"energy_wh": 4321500.0, "power_w": 3680.0, "current_a": [16.0],
                                          "voltage_v": [230.0]}
                start = await plug_and_start(env)
                assert start.payload["meterStart"] == 4321500
                first = await env.csms.wait_for("MeterValues", timeout_s=WAIT_S)
                assert [(c.get("phase"), float(c["value"])) for c in sampled(first.payload, "Current.Import")] == [
                    ("L1", 16.0)]

                pty_link.corrupt_next_answers(1)
                source.add_energy_wh(250.0)
                await connector_status(env, lambda c: c["meter"]["energy_wh"] == 4321750.0, "the new register")
                assert pty_link.corrupted_chunks >= 1
                assert {r.payload["errorCode"] for r in env.csms.received_of("StatusNotification")} == {"NoError"}
                assert "meter_error" not in (await env.astatus())["connectors"][0]

                await servers[0].stop()   # the line stays, nobody answers: every request times out
                lost = await env.csms.wait_for(
                    "StatusNotification", lambda p: p["errorCode"] == "PowerMeterFailure", timeout_s=WAIT_S)
                assert lost.payload["status"] == "Charging"
                entry = await connector_status(env, lambda c: "meter_error" in c, "the meter error in status")
                assert "no valid answer after 2 attempts" in entry["meter_error"]

                source.add_energy_wh(250.0)
                await servers[1].start_rtu(pty_link.server_device)
                cleared = await env.csms.wait_for(
                    "StatusNotification", lambda p: p["errorCode"] == "NoError", timeout_s=WAIT_S,
                    after_index=lost.index)
                assert cleared.payload["status"] == "Charging"
                await connector_status(env, lambda c: c["meter"]["energy_wh"] == 4322000.0, "readings resumed")
                await env.asim("sim.unplug", connector=1)
                stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
                assert stop.payload["meterStop"] == 4322000
            env.csms.assert_no_violations()
    finally:
        for server in servers:
            await server.stop()


def energy_registers(env: ChargerEnv) -> list[int]:
    return [int(sv["value"]) for r in meter_values(env) for sv in sampled(r.payload, ENERGY)]


async def test_meter_lost_mid_transaction_is_a_power_meter_failure_warning_and_recovers_4_9(
        tmp_path: Path) -> None:
    """The real daemon process. The meter's server goes away during a charge: after a few failed polls
    the connector reports PowerMeterFailure with its current status (a warning, OCPP 1.6 §4.9; the
    charge goes on, hal/faults.py), `status` names the meter error, the daemon keeps answering the
    central system. The server comes back on its port: readings resume with the register the meter
    holds now, the error clears with a StatusNotification NoError, meterStop is that register. No
    made-up value is ever sent while the meter is silent."""
    source = MeterValuesSource(SDM630_READING)
    first_server = SimulatedMeterServer(SimulatedMeter(register_map("sdm630"), source))
    port = await first_server.start_tcp()
    second_server = SimulatedMeterServer(SimulatedMeter(register_map("sdm630"), source))
    try:
        async with charger_env(tmp_path, MeterValueSampleInterval=1, MeterValuesSampledData=SAMPLED) as env:
            use_tcp_meter(env, "sdm630", port)
            env.doc["authorization"] = {"free_vend_id_tag": FREE_VEND}
            with env.daemon() as proc:
                await env.csms.wait_for("BootNotification", timeout_s=WAIT_S)
                await asyncio.to_thread(proc.wait_socket, env.socket_path)
                await connector_status(env, lambda c: c["meter"] is not None, "a meter reading")
                start = await plug_and_start(env)
                assert start.payload["meterStart"] == 12345600
                charging = await env.csms.wait_for(
                    "StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == "Charging",
                    timeout_s=WAIT_S)

                await first_server.stop()
                lost = await env.csms.wait_for(
                    "StatusNotification", lambda p: p["connectorId"] == 1 and p["errorCode"] == "PowerMeterFailure",
                    timeout_s=WAIT_S, after_index=charging.index)
                assert lost.payload["status"] == "Charging"
                entry = await connector_status(env, lambda c: "meter_error" in c, "the meter error in status")
                assert entry["error_code"] == "PowerMeterFailure" and "Modbus" in entry["meter_error"]
                assert entry["status"] == "Charging" and entry["relay_closed"] is True
                assert entry["transaction_id"] == transaction_id(start)
                conf = await env.csms.call(CP_ID, "GetConfiguration", {"key": ["MeterValueSampleInterval"]})
                assert conf["configurationKey"][0]["value"] == "1"
                assert proc.proc is not None and proc.proc.poll() is None

                # The meter counted on while it was unreachable; back on the same port.
                source.add_energy_wh(2000.0)
                await second_server.start_tcp(port=port)
                cleared = await env.csms.wait_for(
                    "StatusNotification", lambda p: p["connectorId"] == 1 and p["errorCode"] == "NoError",
                    timeout_s=WAIT_S, after_index=lost.index)
                assert cleared.payload["status"] == "Charging"
                entry = await connector_status(env, lambda c: "meter_error" not in c, "the meter error cleared")
                assert entry["error_code"] == "NoError" and entry["meter"]["energy_wh"] == 12347600.0
                await env.csms.wait_for("MeterValues", lambda p: sampled(p, ENERGY)[0]["value"] == "12347600",
                                        timeout_s=WAIT_S, after_index=cleared.index)

                await env.asim("sim.unplug", connector=1)
                stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
                assert stop.payload["meterStop"] == 12347600
                assert set(energy_registers(env)) <= {12345600, 12347600}
                data = stop.payload.get("transactionData", [])
                assert all(int(sv["value"]) in (12345600, 12347600) for mv in data for sv in mv["sampledValue"]
                           if sv.get("measurand", ENERGY) == ENERGY)
            assert "Traceback" not in proc.log_text()
            env.csms.assert_no_violations()
    finally:
        await first_server.stop()
        await second_server.stop()


def free_tcp_port() -> int:
    # The charger binds the configured port itself; the OS picks one that is free now.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_the_simulated_ev_charges_through_a_modbus_meter_its_register_rises_3_16_1(tmp_path: Path) -> None:
    """`make run`'s meter (`[hal] sim_meter_modbus = true`): the charger serves the sim board's meter as
    an SDM630 on Modbus TCP and reads it back through pymodbus. The EV's draw shows as power, per-phase
    current and a rising register; the simulator's meter_lost fault still reads as PowerMeterFailure."""
    async with charger_env(tmp_path, MeterValueSampleInterval=1, MeterValuesSampledData=SAMPLED) as env:
        use_tcp_meter(env, "sdm630", free_tcp_port())
        env.doc["hal"].update(sim_meter_modbus=True, persist_interval_s=0.5)  # the register is the last committed
        async with running(env) as app:
            meter = app.board.connector(1).meter
            assert isinstance(meter, SelfServedSimMeter) and isinstance(meter.reader, ModbusMeter)
            start = await plug_and_start(env)
            entry = await connector_status(env, lambda c: bool(c["meter"]) and c["meter"]["power_w"] > 0,
                                           "the EV drawing")
            reading = entry["meter"]
            assert reading["current_a"] == [32.0, 32.0, 32.0]
            product_w = sum(a * v for a, v in zip(reading["current_a"], reading["voltage_v"], strict=True))
            assert reading["power_w"] == pytest.approx(product_w, rel=0.01)
            rising = await env.csms.wait_for(
                "MeterValues", lambda p: int(sampled(p, ENERGY)[0]["value"]) > start.payload["meterStart"],
                timeout_s=WAIT_S)
            assert rising.payload["transactionId"] == transaction_id(start)
            assert meter.server is not None and sum(m.requests for m in meter.server.meters.values()) > 0

            await env.asim("sim.fault", connector=1, kind="meter_lost")
            lost = await env.csms.wait_for("StatusNotification", lambda p: p["errorCode"] == "PowerMeterFailure",
                                           timeout_s=WAIT_S)
            await env.asim("sim.clear", connector=1)
            await env.csms.wait_for("StatusNotification", lambda p: p["errorCode"] == "NoError",
                                    timeout_s=WAIT_S, after_index=lost.index)
            await env.asim("sim.unplug", connector=1)
            stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
            assert stop.payload["meterStop"] >= int(sampled(rising.payload, ENERGY)[0]["value"])
        env.csms.assert_no_violations()
