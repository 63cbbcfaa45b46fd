"""MeterValues end to end: the charger in-process on the simulated board against the strict
bundled central system (wss, schemas, timestamps, transaction bookkeeping).

OCPP 1.6 §3.16 (metering data), §4.7 MeterValues, §5.17 TriggerMessage, §7.31-7.45,
§9.1 keys; errata 3.14 (Begin/End in transactionData), 3.15 (SHALL send when configured),
3.16 (transactionId of the ongoing transaction), 3.46 (triggered = latest sampled
measurands). A transaction is started by free vend (plugging the simulated EV in).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from chargepoint.app import ChargePointApp
from chargepoint.csms.server import Received
from tests.support.harness import CP_ID, ChargerEnv, charger_env, eventually, plug_and_charge

FREE_VEND = "FREEVEND"
WAIT_S = 20.0

pytestmark = pytest.mark.asyncio


# --------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def running(env: ChargerEnv, *, free_vend: bool = True) -> AsyncIterator[ChargePointApp]:
    if free_vend:
        env.doc["authorization"] = {"free_vend_id_tag": FREE_VEND}
    async with env.app() as app:
        await env.csms.wait_for("BootNotification", timeout_s=WAIT_S)
        await eventually(lambda: app.online, timeout_s=WAIT_S, message="registered")
        yield app





def values_of(payload: dict[str, Any], measurand: str) -> list[dict[str, Any]]:
    return [sv for mv in payload["meterValue"] for sv in mv["sampledValue"] if sv.get("measurand") == measurand]


def contexts(payload: dict[str, Any]) -> set[str]:
    return {sv.get("context") for mv in payload["meterValue"] for sv in mv["sampledValue"]}


def meter_values(env: ChargerEnv, context: str | None = None, after_index: int = 0) -> list[Received]:
    return [r for r in env.csms.received_of("MeterValues")
            if r.index >= after_index and (context is None or context in contexts(r.payload))]


def timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def wait_meter_values(env: ChargerEnv, count: int, context: str = "Sample.Periodic", *,
                            after_index: int = 0) -> list[Received]:
    found: list[Received] = await eventually(
        lambda: (lambda got: got if len(got) >= count else None)(meter_values(env, context, after_index)),
        timeout_s=WAIT_S, message=f"{count} MeterValues {context}")
    return found


# --------------------------------------------------------------------------- tests


def energy_of(mv: dict[str, Any]) -> int:
    return int(next(sv["value"] for sv in mv["sampledValue"] if sv["measurand"] == "Energy.Active.Import.Register"))


async def test_sampled_meter_values_during_the_transaction_and_in_stop_transaction_data_3_16_1(
        tmp_path: Path) -> None:
    """Every MeterValueSampleInterval during the transaction (errata 3.15): the register grows, power
    > 0 while charging, per-phase currents and voltages that multiply to the power (the customer's
    requirement); StopTxnSampledData -> transactionData with Transaction.Begin/End (errata 3.14)."""
    async with charger_env(tmp_path, MeterValueSampleInterval=1,
                           MeterValuesSampledData="Energy.Active.Import.Register,Power.Active.Import,"
                                                  "Current.Import,Voltage",
                           StopTxnSampledData="Energy.Active.Import.Register,Power.Active.Import") as env:
        async with running(env):
            tx_id = await plug_and_charge(env)
            received = await wait_meter_values(env, 4)
            for payload in [r.payload for r in received]:
                assert payload["connectorId"] == 1
                assert payload["transactionId"] == tx_id
                assert contexts(payload) == {"Sample.Periodic"}
                for sv in payload["meterValue"][0]["sampledValue"]:
                    assert sv["location"] == "Outlet" and sv["format"] == "Raw"
                energy = values_of(payload, "Energy.Active.Import.Register")
                assert len(energy) == 1 and energy[0]["unit"] == "Wh" and "phase" not in energy[0]
            # Charging at 3 x 32 A x 230 V: the register moves within a few samples.
            more = await eventually(
                lambda: (lambda got: got if energy_of(got[-1].payload["meterValue"][0])
                         > energy_of(received[0].payload["meterValue"][0]) else None)(meter_values(env)),
                timeout_s=WAIT_S, message="the register grows")
            energies = [energy_of(r.payload["meterValue"][0]) for r in more]
            assert energies == sorted(energies)
            stamps = [timestamp(r.payload["meterValue"][0]["timestamp"]) for r in more]
            assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)

            payload = next(r.payload for r in reversed(more)
                           if float(values_of(r.payload, "Power.Active.Import")[0]["value"]) > 0)
            power_w = float(values_of(payload, "Power.Active.Import")[0]["value"])
            currents = values_of(payload, "Current.Import")
            voltages = values_of(payload, "Voltage")
            assert [c["phase"] for c in currents] == ["L1", "L2", "L3"]
            assert [v["phase"] for v in voltages] == ["L1-N", "L2-N", "L3-N"]
            assert {c["unit"] for c in currents} == {"A"} and {v["unit"] for v in voltages} == {"V"}
            product_w = sum(float(c["value"]) * float(v["value"]) for c, v in zip(currents, voltages, strict=True))
            assert abs(product_w - power_w) <= 0.01 * power_w

            await env.asim("sim.unplug", connector=1)
            stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
            start = env.csms.transactions[tx_id].start
            data = stop.payload["transactionData"]
            assert [sv["context"] for sv in data[0]["sampledValue"]] == ["Transaction.Begin"] * 2
            assert [sv["context"] for sv in data[-1]["sampledValue"]] == ["Transaction.End"] * 2
            assert all(sv["context"] == "Sample.Periodic" for mv in data[1:-1] for sv in mv["sampledValue"])
            assert len(data) >= 6
            assert energy_of(data[0]) == start["meterStart"]
            assert energy_of(data[-1]) == stop.payload["meterStop"]
            data_energies = [energy_of(mv) for mv in data]
            assert data_energies == sorted(data_energies)
            data_stamps = [timestamp(mv["timestamp"]) for mv in data]
            assert data_stamps == sorted(data_stamps)
            assert data_stamps[0] == timestamp(start["timestamp"])
            assert data_stamps[-1] >= timestamp(stop.payload["timestamp"])

        env.csms.assert_no_violations()


def on_boundary(text: str, interval_s: int) -> bool:
    t = timestamp(text)
    return t.microsecond == 0 and int(t.timestamp()) % interval_s == 0


async def test_clock_aligned_values_on_the_interval_boundaries_with_the_transaction_id_only_in_one_3_16_2(
        tmp_path: Path) -> None:
    """ClockAlignedDataInterval: Sample.Clock on midnight-aligned boundaries for the connector, not
    transaction-related without a transaction, with its transactionId during one (errata 3.16);
    no periodic values outside the transaction (§3.16.1); StopTxnAlignedData -> Sample.Clock values
    in transactionData."""
    async with charger_env(tmp_path, MeterValueSampleInterval=1, ClockAlignedDataInterval=2,
                           MeterValuesAlignedData="Energy.Active.Import.Register,Power.Active.Import",
                           StopTxnAlignedData="Energy.Active.Import.Register") as env:
        async with running(env, free_vend=False):
            await env.asim("sim.plug", connector=1)   # plugged in, no transaction (no card yet)
            idle = await wait_meter_values(env, 2, "Sample.Clock")
            for r in idle:
                assert r.payload["connectorId"] == 1 and "transactionId" not in r.payload
                assert contexts(r.payload) == {"Sample.Clock"}
                assert on_boundary(r.payload["meterValue"][0]["timestamp"], 2)
                assert [sv["measurand"] for sv in r.payload["meterValue"][0]["sampledValue"]] == [
                    "Energy.Active.Import.Register", "Power.Active.Import"]
            # At least one second-by-second sampling interval went by: still nothing periodic.
            assert meter_values(env, "Sample.Periodic") == []

            await env.asim("sim.swipe", id_tag="TAG1", connector=1)
            start = await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
            assert start.response is not None
            tx_id = start.response["transactionId"]
            during = await wait_meter_values(env, 1, "Sample.Clock", after_index=start.index)
            for r in during:
                assert r.payload["transactionId"] == tx_id
                assert on_boundary(r.payload["meterValue"][0]["timestamp"], 2)
            periodic = meter_values(env, "Sample.Periodic")
            assert periodic and all(r.payload["transactionId"] == tx_id for r in periodic)

            await env.asim("sim.unplug", connector=1)
            stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
            data = stop.payload["transactionData"]
            ctx = [mv["sampledValue"][0]["context"] for mv in data]
            assert ctx[0] == "Transaction.Begin" and ctx[-1] == "Transaction.End"
            assert set(ctx[1:-1]) == {"Sample.Clock"}   # StopTxnSampledData is empty
            assert all(on_boundary(mv["timestamp"], 2) for mv in data[1:-1])
            assert all(len(mv["sampledValue"]) == 1 for mv in data)

            after = await wait_meter_values(env, 1, "Sample.Clock", after_index=stop.index)
            assert "transactionId" not in after[0].payload
        env.csms.assert_no_violations()


async def test_trigger_message_meter_values_and_unsupported_measurands_rejected_5_17_3_16_4(
        tmp_path: Path) -> None:
    """TriggerMessage MeterValues: the latest MeterValuesSampledData measurands, context Trigger
    (errata 3.46), with the transactionId during a transaction. A measurand the charger cannot
    measure is Rejected and nothing changes (§3.16.4)."""
    async with charger_env(tmp_path) as env:
        async with running(env) as app:
            mark = len(env.csms.received)
            conf = await env.csms.call(CP_ID, "TriggerMessage", {"requestedMessage": "MeterValues", "connectorId": 1})
            assert conf == {"status": "Accepted"}
            idle = (await wait_meter_values(env, 1, "Trigger", after_index=mark))[0].payload
            assert idle["connectorId"] == 1 and "transactionId" not in idle
            assert [sv["measurand"] for sv in idle["meterValue"][0]["sampledValue"]] == [
                "Energy.Active.Import.Register", "Power.Active.Import"]

            for key, value in [("MeterValuesSampledData", "Energy.Active.Import.Register,SoC"),
                               ("MeterValuesSampledData", "Temperature"),
                               ("MeterValuesAlignedData", "Frequency"),
                               ("StopTxnSampledData", "Energy.Active.Import.Register,Power.Factor"),
                               ("StopTxnAlignedData", "Current.Export")]:
                conf = await env.csms.call(CP_ID, "ChangeConfiguration", {"key": key, "value": value})
                assert conf == {"status": "Rejected"}, (key, value)
            got = await env.csms.call(CP_ID, "GetConfiguration", {"key": ["MeterValuesSampledData",
                                                                          "StopTxnSampledData"]})
            assert {k["key"]: k["value"] for k in got["configurationKey"]} == {
                "MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import",
                "StopTxnSampledData": ""}

            measurands = "Current.Offered,Power.Offered,Energy.Active.Import.Register"
            conf = await env.csms.call(CP_ID, "ChangeConfiguration", {"key": "MeterValuesSampledData",
                                                                      "value": measurands})
            assert conf == {"status": "Accepted"}
            tx_id = await plug_and_charge(env)
            await eventually(lambda: app.controllers[1].offered_current_a == 32.0, timeout_s=WAIT_S)
            mark = len(env.csms.received)
            conf = await env.csms.call(CP_ID, "TriggerMessage", {"requestedMessage": "MeterValues"})
            assert conf == {"status": "Accepted"}
            during = (await wait_meter_values(env, 1, "Trigger", after_index=mark))[0].payload
            assert during["connectorId"] == 1 and during["transactionId"] == tx_id
            svs = during["meterValue"][0]["sampledValue"]
            assert [(sv["measurand"], sv["unit"], sv["value"]) for sv in svs[:2]] == [
                ("Current.Offered", "A", "32"), ("Power.Offered", "W", "22080")]   # 32 A x 230 V x 3 phases
            assert svs[2]["measurand"] == "Energy.Active.Import.Register"
        env.csms.assert_no_violations()


async def test_lost_meter_sends_no_values_reports_power_meter_failure_and_recovers_7_6(tmp_path: Path) -> None:
    """A meter that stops answering: no made-up values while it is lost (samples skipped, not
    filled in), the connector reports PowerMeterFailure (§7.6); values resume once it answers."""
    async with charger_env(tmp_path, MeterValueSampleInterval=1) as env:
        async with running(env) as app:
            tx_id = await plug_and_charge(env)
            before = await wait_meter_values(env, 2)
            last_energy = energy_of(before[-1].payload["meterValue"][0])

            await env.asim("sim.fault", connector=1, kind="meter_lost")
            faulted = await env.csms.wait_for(
                "StatusNotification", lambda p: p["connectorId"] == 1 and p["errorCode"] == "PowerMeterFailure",
                timeout_s=WAIT_S)
            lost_at = app.clock.now()
            entry = (await env.astatus())["connectors"][0]
            assert entry["error_code"] == "PowerMeterFailure"
            skipped = app.metering.skipped.get(1, 0)
            await eventually(lambda: app.metering.skipped.get(1, 0) >= skipped + 2, timeout_s=WAIT_S,
                             message="sampling intervals go by with the meter lost")

            cleared_at = app.clock.now()
            await env.asim("sim.clear", connector=1)
            await env.csms.wait_for("StatusNotification",
                                    lambda p: p["connectorId"] == 1 and p["errorCode"] == "NoError",
                                    after_index=faulted.index, timeout_s=WAIT_S)
            resumed = await eventually(
                lambda: [r for r in meter_values(env, "Sample.Periodic")
                         if timestamp(r.payload["meterValue"][0]["timestamp"]) > cleared_at],
                timeout_s=WAIT_S, message="values resume")
            assert resumed[0].payload["transactionId"] == tx_id
            assert energy_of(resumed[0].payload["meterValue"][0]) >= last_energy
            during = [r for r in meter_values(env)
                      if lost_at <= timestamp(r.payload["meterValue"][0]["timestamp"]) <= cleared_at]
            assert during == []
        env.csms.assert_no_violations()


async def test_meter_values_queued_offline_arrive_in_chronological_order_before_new_ones_3_7(
        tmp_path: Path) -> None:
    """Periodic MeterValues are transaction-related (§3.7): taken while the central system is
    down they are kept and delivered, oldest first, before the ones taken after it is back."""
    async with charger_env(tmp_path, MeterValueSampleInterval=1) as env:
        async with running(env) as app:
            tx_id = await plug_and_charge(env)
            await wait_meter_values(env, 1)

            await env.csms.stop()
            await eventually(lambda: not app.online, timeout_s=WAIT_S, message="charger offline")
            await eventually(lambda: app.store.queue.pending_count() >= 3, timeout_s=WAIT_S,
                             message="samples queued while offline")
            queued = app.store.queue.pending_count()
            back = len(env.csms.received)
            back_at = app.clock.now()
            await env.csms.start()
            app.link.request_reconnect()
            await eventually(lambda: app.store.queue.pending_count() == 0, timeout_s=WAIT_S, message="queue drained")
            await wait_meter_values(env, queued + 2, after_index=back)

            arrived = meter_values(env, "Sample.Periodic")
            stamps = [timestamp(r.payload["meterValue"][0]["timestamp"]) for r in arrived]
            assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
            assert all(r.payload["transactionId"] == tx_id for r in arrived)
            # Every sample taken offline was delivered after the reconnect, before the new ones.
            kept = [r for r in arrived if r.index >= back and timestamp(r.payload["meterValue"][0]["timestamp"])
                    <= back_at]
            assert len(kept) >= queued
        env.csms.assert_no_violations()
