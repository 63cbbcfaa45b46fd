"""Metering: the pure SampledValue/schedule functions, and the service on a real (unstarted) app
with a virtual clock, a scripted meter, real SQLite and the real transaction service.

OCPP 1.6 §3.16 (metering data), §7.31-7.45 (SampledValue fields), §9.1.5 ClockAlignedDataInterval,
§9.1.19 MeterValueSampleInterval; errata 3.14 (Begin/End in transactionData), 3.16 (transactionId
of the ongoing transaction), 3.78 (registers never rebased), 3.91 (bounded transactionData).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chargepoint.app import ChargePointApp
from chargepoint.clock import Clock
from chargepoint.config import parse_settings
from chargepoint.devtools.pki import ensure_pki
from chargepoint.services.metering import (
    MAX_TX_DATA_VALUES,
    TX_DATA_TABLE,
    Sample,
    aligned_boundary_at_or_before,
    format_decimal,
    next_aligned_boundary,
    next_periodic_s,
    sampled_values,
    stop_txn_measurands,
    thin_victims,
)
from chargepoint.services.tx_delivery import clock_time_resolver
from chargepoint.store.queue import QueuedMessage, resolve_payload
from hal.interfaces import MeterError, MeterReading
from hal.sim.board import SimBoard

WALL0_S = datetime(2026, 11, 24, 10, 0, 0, 300_000, tzinfo=UTC).timestamp()
MIDNIGHT_S = datetime(2026, 11, 25, tzinfo=UTC).timestamp()

ENERGY = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(("value", "places", "text"), [
    (3680.0, 1, "3680"), (15.999, 2, "16"), (0.1 + 0.2, 2, "0.3"), (229.96, 1, "230"), (-0.001, 2, "0"),
    (7.25, 2, "7.25"), (0.0, 1, "0"),
])
def test_decimal_strings_have_no_float_noise(value: float, places: int, text: str) -> None:
    assert format_decimal(value, places) == text


def test_sampled_values_of_a_three_phase_meter_7_43() -> None:
    sample = Sample(energy_wh=12345.97, power_w=7359.6, current_a=(10.6666, 10.5, 10.0),
                    voltage_v=(230.04, 229.9, 231.0), offered_current_a=16.0, phases=3)
    values = sampled_values([POWER, ENERGY, "Current.Import", "Voltage", "Current.Offered", "Power.Offered"],
                            sample, "Sample.Periodic")
    rows = [(v["measurand"], v.get("phase"), v["value"], v["unit"]) for v in values]
    assert rows == [
        (POWER, None, "7359.6", "W"),
        (ENERGY, None, "12345", "Wh"),            # the register, whole Wh rounded down (never up)
        ("Current.Import", "L1", "10.67", "A"), ("Current.Import", "L2", "10.5", "A"),
        ("Current.Import", "L3", "10", "A"),
        ("Voltage", "L1-N", "230", "V"), ("Voltage", "L2-N", "229.9", "V"), ("Voltage", "L3-N", "231", "V"),
        ("Current.Offered", None, "16", "A"),
        ("Power.Offered", None, "11040", "W"),    # 16 A x 230 V x 3 phases
    ]
    assert all(v["context"] == "Sample.Periodic" and v["location"] == "Outlet" and v["format"] == "Raw"
               for v in values)


def test_a_single_phase_meter_reports_l1_only_and_import_is_never_negative_3_16_3() -> None:
    sample = Sample(energy_wh=10.0, power_w=-1.4, current_a=(-0.01,), voltage_v=(230.0,), phases=1)
    values = sampled_values([POWER, "Current.Import", "Voltage", "Power.Offered"], sample, "Trigger")
    assert [(v["measurand"], v.get("phase"), v["value"]) for v in values] == [
        (POWER, None, "0"), ("Current.Import", "L1", "0"), ("Voltage", "L1-N", "230"), ("Power.Offered", None, "0")]


def test_begin_and_end_values_cover_both_stop_txn_keys_once_errata_3_14() -> None:
    assert stop_txn_measurands([ENERGY, POWER], [ENERGY, "Voltage"]) == [ENERGY, POWER, "Voltage"]
    assert stop_txn_measurands([], []) == []


@pytest.mark.parametrize(("now_s", "due_s"), [(100.0, 110.0), (109.9, 110.0), (110.0, 120.0), (135.5, 140.0),
                                              (99.0, 110.0)])
def test_periodic_samples_on_the_grid_from_the_transaction_start_3_16_1(now_s: float, due_s: float) -> None:
    assert next_periodic_s(100.0, 10, now_s) == due_s


def test_clock_aligned_boundaries_start_at_midnight_utc_9_1_5() -> None:
    t = datetime(2026, 11, 24, 10, 7, 30, tzinfo=UTC).timestamp()
    assert aligned_boundary_at_or_before(t, 900) == datetime(2026, 11, 24, 10, 0, tzinfo=UTC).timestamp()
    assert next_aligned_boundary(t, 900) == datetime(2026, 11, 24, 10, 15, tzinfo=UTC).timestamp()
    # A boundary is its own "at or before"; the next one is an interval later.
    assert aligned_boundary_at_or_before(MIDNIGHT_S, 900) == MIDNIGHT_S
    assert next_aligned_boundary(MIDNIGHT_S, 900) == MIDNIGHT_S + 900
    # 7 s does not divide a day: the day's last interval is shorter and midnight is a boundary.
    assert next_aligned_boundary(MIDNIGHT_S - 2, 7) == MIDNIGHT_S
    assert aligned_boundary_at_or_before(MIDNIGHT_S - 2, 7) == MIDNIGHT_S - 6
    assert next_aligned_boundary(MIDNIGHT_S, 7) == MIDNIGHT_S + 7


def test_thinning_keeps_begin_and_the_newest_and_drops_every_other_periodic_errata_3_91() -> None:
    ids = list(range(1, 11))
    contexts = ["Transaction.Begin", *["Sample.Periodic"] * 4, "Sample.Clock", *["Sample.Periodic"] * 4]
    assert thin_victims(ids, contexts, 10) == []
    victims = thin_victims(ids, contexts, 9)
    assert victims == [2, 4, 7, 9]
    assert 1 not in victims and 10 not in victims and 6 not in victims


# --------------------------------------------------------------------------- the service


class ScriptedMeter:
    """An EnergyMeter whose answers the test sets."""

    def __init__(self) -> None:
        self.reading = MeterReading(energy_wh=1000.4, power_w=7000.0, current_a=(10.0, 10.0, 10.0),
                                    voltage_v=(230.0, 230.0, 230.0))
        self.fail = False

    async def read(self) -> MeterReading:
        if self.fail:
            raise MeterError("no answer")
        return self.reading

    async def close(self) -> None:
        return None


class VirtualTime:
    def __init__(self) -> None:
        self.mono_s = 1000.0
        self.wall_s = WALL0_S

    def advance(self, seconds: float) -> None:
        self.mono_s += seconds
        self.wall_s += seconds


def settings_doc(tmp_path: Path, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "ocpp": {"url": "wss://127.0.0.1:9/ocpp", "charge_point_id": "CP-UNIT", "password": "0123456789abcdef0123",
                 "config": {"MeterValueSampleInterval": 10, **config}},
        "tls": {"ca_file": str(ensure_pki(tmp_path / "pki").ca_cert)},
        "ntp": {"servers": ["127.0.0.1:9"]},
        "storage": {"state_dir": str(tmp_path / "state")},
        "control": {"socket": str(tmp_path / "control.sock")},
        "hal": {"backend": "sim"},
        "connector": [{"max_current_a": 32, "phases": 3}],
    }


class Rig:
    def __init__(self, tmp_path: Path, config: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.config = config
        self.time = VirtualTime()
        self.meter = ScriptedMeter()
        self.app = self.build()

    def build(self) -> ChargePointApp:
        settings = parse_settings(settings_doc(self.tmp_path, self.config))
        board = SimBoard(settings.storage.state_dir, monotonic=lambda: self.time.mono_s)
        board.connectors[0].meter = self.meter
        clock = Clock(monotonic=lambda: self.time.mono_s, wall=lambda: self.time.wall_s, boot_id="boot-1")
        clock.apply_offset(0.0, "ntp", stepped=False)
        return ChargePointApp(settings, board=board, clock=clock)

    async def boot(self) -> None:
        """What the started app's service loop does first (attach to the transaction service)."""
        await self.app.metering.step()

    async def power_cut(self) -> None:
        """Gone without a clean stop: only what is committed survives; then boot again."""
        self.app.store.close()
        self.app = self.build()
        await self.boot()

    def messages(self, action: str = "MeterValues") -> list[QueuedMessage]:
        return [m for m in self.app.store.queue.items() if m.action == action]

    def sent_form(self, message: QueuedMessage) -> dict[str, Any]:
        """The payload as the delivery engine would send it (timestamps resolved)."""
        resolved = resolve_payload(message.payload, clock_time_resolver(self.app.clock))
        assert isinstance(resolved, dict)
        return resolved

    async def read(self) -> None:
        await self.app.meters.read_now(1)

    async def tick(self, seconds: float) -> None:
        self.time.advance(seconds)
        await self.read()
        await self.app.metering.step()

    def stored_contexts(self, local_id: int) -> list[str]:
        rows = self.app.store.query(f"SELECT context FROM {TX_DATA_TABLE} WHERE local_tx_id = ? ORDER BY id",
                                    (local_id,))
        return [r[0] for r in rows]


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, **config: Any) -> AsyncIterator[Rig]:
    r = Rig(tmp_path, config)
    await r.boot()
    try:
        yield r
    finally:
        await r.app.stop()


def contexts_of(payload: dict[str, Any]) -> list[str]:
    return [sv["context"] for mv in payload["meterValue"] for sv in mv["sampledValue"]]


@pytest.mark.asyncio
async def test_periodic_sample_is_queued_for_its_transaction_every_interval_3_16_1_3_7(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.read()
        await r.tick(30)
        assert r.messages() == []                      # no transaction, nothing periodic
        tx = await r.app.transactions.start(1, "TAG1")
        assert tx is not None
        await r.tick(9.5)
        assert r.messages() == []                      # not due before the interval
        await r.tick(0.5)
        [first] = r.messages()
        assert first.kind == "meter_periodic" and first.local_tx_id == tx.local_id
        payload = r.sent_form(first)
        assert payload["connectorId"] == 1 and contexts_of(payload) == ["Sample.Periodic"] * 2
        assert payload["meterValue"][0]["timestamp"] == "2026-11-24T10:00:40.300Z"   # start + 10 s
        await r.tick(10)
        await r.tick(10)
        assert len(r.messages()) == 3
        # A late wake-up skips what it missed instead of sending a burst.
        await r.tick(35)
        assert len(r.messages()) == 4

        assert r.app.config.change_configuration("MeterValueSampleInterval", "0") == "Accepted"
        await r.tick(60)
        assert len(r.messages()) == 4                  # 0 = no sampled data (§9.1.19)


@pytest.mark.asyncio
async def test_no_sample_while_the_meter_is_lost_and_sampling_resumes_after(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.read()
        await r.app.transactions.start(1, "TAG1")
        r.meter.fail = True
        await r.tick(10)
        await r.tick(10)
        assert r.messages() == []
        assert r.app.metering.skipped[1] == 2
        r.meter.fail = False
        r.meter.reading = MeterReading(1500.0, 0.0, (0.0, 0.0, 0.0), (230.0, 230.0, 230.0))
        await r.tick(10)
        [resumed] = r.messages()
        energy = [sv for sv in resumed.payload["meterValue"][0]["sampledValue"] if sv["measurand"] == ENERGY]
        assert energy[0]["value"] == "1500"


@pytest.mark.asyncio
async def test_implausible_readings_are_never_sent(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.read()
        await r.app.transactions.start(1, "TAG1")
        r.meter.reading = MeterReading(float("nan"), 10.0, (1.0,), (230.0,))
        await r.tick(10)
        r.meter.reading = MeterReading(-5.0, 10.0, (1.0,), (230.0,))
        await r.tick(10)
        assert r.messages() == []


@pytest.mark.asyncio
async def test_clock_aligned_value_carries_the_boundary_and_the_ongoing_transaction_9_1_5_errata_3_16(
        tmp_path: Path) -> None:
    async with rig(tmp_path, MeterValueSampleInterval=0, ClockAlignedDataInterval=900,
                   MeterValuesAlignedData=ENERGY) as r:
        await r.read()
        await r.app.metering.step()
        # Offline and no transaction: not transaction-related, so it is dropped, not queued.
        r.time.advance(15 * 60 - 0.3 + 0.004)      # just past 10:15:00
        await r.app.metering.step()
        assert r.messages() == []
        tx = await r.app.transactions.start(1, "TAG1")
        assert tx is not None
        r.time.advance(15 * 60)
        await r.app.metering.step()
        [aligned] = r.messages()
        assert aligned.kind == "meter_aligned" and aligned.local_tx_id == tx.local_id
        assert aligned.payload["meterValue"][0]["timestamp"] == "2026-11-24T10:30:00.000Z"
        assert contexts_of(aligned.payload) == ["Sample.Clock"]


@pytest.mark.asyncio
async def test_no_clock_aligned_values_without_a_synchronised_clock(tmp_path: Path) -> None:
    async with rig(tmp_path, ClockAlignedDataInterval=60, MeterValueSampleInterval=0) as r:
        r.app.clock.offset_s = None                    # as before the first NTP answer
        await r.read()
        await r.app.transactions.start(1, "TAG1")
        await r.tick(120)
        assert r.messages() == []


@pytest.mark.asyncio
async def test_stop_transaction_data_begin_samples_end_and_nothing_when_keys_empty_3_16_5(
        tmp_path: Path) -> None:
    async with rig(tmp_path, StopTxnSampledData=f"{ENERGY},{POWER}") as r:
        await r.read()
        tx = await r.app.transactions.start(1, "TAG1")
        assert tx is not None
        await r.tick(10)
        r.meter.reading = MeterReading(1200.9, 6900.0, (10.0, 10.0, 10.0), (230.0, 230.0, 230.0))
        await r.tick(10)
        assert r.stored_contexts(tx.local_id) == ["Transaction.Begin", "Sample.Periodic", "Sample.Periodic"]
        assert await r.app.transactions.stop(1, "Local")
        [stop] = r.messages("StopTransaction")
        data = r.sent_form(stop)["transactionData"]
        assert [mv["sampledValue"][0]["context"] for mv in data] == [
            "Transaction.Begin", "Sample.Periodic", "Sample.Periodic", "Transaction.End"]
        energies = [mv["sampledValue"][0]["value"] for mv in data]
        assert energies == ["1000", "1000", "1200", "1200"]
        assert energies[0] == str(tx.meter_start_wh) and energies[-1] == str(stop.payload["meterStop"])
        assert r.stored_contexts(tx.local_id) == []    # done with once the Stop is queued

        assert r.app.config.change_configuration("StopTxnSampledData", "") == "Accepted"
        tx2 = await r.app.transactions.start(1, "TAG2")
        assert tx2 is not None
        await r.tick(10)
        assert r.app.metering.transaction_data(tx2.local_id) is None


@pytest.mark.asyncio
async def test_transaction_data_survives_a_power_cut_and_goes_into_the_power_loss_stop(tmp_path: Path) -> None:
    async with rig(tmp_path, StopTxnSampledData=ENERGY) as r:
        await r.read()
        tx = await r.app.transactions.start(1, "TAG1")
        assert tx is not None
        r.meter.reading = MeterReading(1100.0, 7000.0, (10.0,) * 3, (230.0,) * 3)
        await r.tick(10)
        # The transaction service persists the latest register now and then (field-notes §6).
        r.app.store.transactions.update_last_meter(tx.local_id, 1100.0, r.app.clock.event_time())
        await r.power_cut()
        [stop] = r.messages("StopTransaction")
        payload = r.sent_form(stop)
        assert payload["reason"] == "PowerLoss"
        data = payload["transactionData"]
        assert [mv["sampledValue"][0]["context"] for mv in data] == [
            "Transaction.Begin", "Sample.Periodic", "Transaction.End"]
        assert [mv["sampledValue"][0]["value"] for mv in data] == ["1000", "1100", "1100"]
        assert data[-1]["timestamp"] == "2026-11-24T10:00:10.300Z"   # when the last register was persisted


@pytest.mark.asyncio
async def test_transaction_data_is_bounded_keeping_begin_and_the_latest_errata_3_91(tmp_path: Path) -> None:
    async with rig(tmp_path, MeterValueSampleInterval=1, MeterValuesSampledData="", StopTxnSampledData=ENERGY) as r:
        await r.read()
        tx = await r.app.transactions.start(1, "TAG1")
        assert tx is not None
        for i in range(2 * MAX_TX_DATA_VALUES):
            r.meter.reading = MeterReading(1001.0 + i, 100.0, (1.0,) * 3, (230.0,) * 3)
            await r.tick(1)
        stored = r.stored_contexts(tx.local_id)
        assert len(stored) < MAX_TX_DATA_VALUES and stored[0] == "Transaction.Begin"
        data = r.app.metering.transaction_data(tx.local_id)
        assert data is not None and len(data) <= MAX_TX_DATA_VALUES
        values = [int(mv["sampledValue"][0]["value"]) for mv in data]
        assert values[0] == 1000 and values[-2] == 1000 + 2 * MAX_TX_DATA_VALUES    # newest sample kept
        assert values == sorted(values)
        assert r.messages() == []                      # MeterValuesSampledData empty: nothing to send


@pytest.mark.asyncio
async def test_triggered_value_for_an_unconfirmed_transaction_is_queued_to_get_its_id_5_17(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.read()
        tx = await r.app.transactions.start(1, "TAG1")
        assert tx is not None and tx.transaction_id is None
        await r.app.metering.on_trigger(None)
        [triggered] = r.messages()
        assert triggered.local_tx_id == tx.local_id
        assert contexts_of(triggered.payload) == ["Trigger", "Trigger"]
        assert "transactionId" not in triggered.payload   # filled in from StartTransaction.conf at send time


@pytest.mark.asyncio
async def test_power_cut_before_the_begin_value_was_stored_still_reports_the_start_register(tmp_path: Path) -> None:
    async with rig(tmp_path, StopTxnSampledData=ENERGY) as r:
        await r.read()
        tx = await r.app.transactions.start(1, "TAG1")
        assert tx is not None
        r.app.store.execute(f"DELETE FROM {TX_DATA_TABLE}")      # as if cut before the Begin row's commit
        await r.power_cut()
        [stop] = r.messages("StopTransaction")
        data = r.sent_form(stop)["transactionData"]
        assert [(mv["sampledValue"][0]["context"], mv["sampledValue"][0]["value"]) for mv in data] == [
            ("Transaction.Begin", "1000"), ("Transaction.End", "1000")]
        assert data[0]["timestamp"] == "2026-11-24T10:00:00.300Z"
