"""MeterValues: sampled, clock-aligned and triggered meter data, and StopTransaction's transactionData.

OCPP 1.6 §3.16 (metering data), §4.7, §5.17, §6.31, §7.30-7.49, §9.1 keys, with
errata 3.9, 3.13-3.16, 3.46, 3.76, 3.78, 3.91 and 4.25.

What is sent
- Sampled (§3.16.1): every MeterValueSampleInterval seconds from the start of
  each transaction (0 = off), on the transaction's connector, context
  Sample.Periodic, the MeterValuesSampledData measurands. Only during a
  transaction: these are transaction-related messages (§3.7), so they go
  through the durable queue (kind "meter_periodic") and the delivery engine
  fills in the transactionId and re-stamps pre-sync times when it sends them.
  Errata 3.15: when the interval is > 0 they SHALL be sent.
- Clock-aligned (§3.16.2, §9.1.5): every ClockAlignedDataInterval seconds on
  the day's grid starting at 00:00:00 UTC (the last interval of the day is
  shorter when the interval does not divide a day), for every connector, context
  Sample.Clock, the MeterValuesAlignedData measurands, stamped exactly with the
  boundary. The meter is read when the boundary is reached; we report register
  and instantaneous values only (no ".Interval" measurand is supported), so
  the reading belongs to the boundary instant itself, not to an aggregated
  interval (errata 3.76 drops the old "duration" text of §9.1.5). Needs a
  synchronised clock: no alignment is possible without one. With a transaction
  running on the connector at the moment of the sample (errata 3.16) the
  message carries its transactionId and is queued ("meter_aligned"); otherwise
  it is not transaction-related: sent at once when online, dropped when not.
  No connectorId 0: this charger has no main meter of its own, only one meter
  per connector (§4.7 item 1: connector 0 energy SHOULD come from the main
  meter; §3.16.3: report the locations actually measured).
- Triggered (§5.17, errata 3.46): the most recent reading of the
  MeterValuesSampledData measurands (the default measurand when that key is
  empty, since a MeterValue needs one value), context Trigger, sent at once
  (not queued), with the transactionId of a running transaction. Connector 0
  or none means every connector (we have no main meter to answer for 0).
  A transaction whose StartTransaction is not confirmed yet has no id to put
  in: that one triggered value goes through the queue, which fills it in.

What each SampledValue holds (§7.43): value as a decimal string, context,
format Raw, measurand, phase for per-phase values, location Outlet, unit.
- Energy.Active.Import.Register: the meter's own register (never rebased:
  §7.31, errata 3.9 / 3.78), whole Wh rounded down, the same rule as
  meterStart/meterStop, so the values of one transaction agree and never
  decrease.
- Power.Active.Import W (total); Current.Import A per phase L1..L3 (§7.34);
  Voltage V per phase to neutral L1-N..L3-N (a phase-to-neutral meter);
  one value per phase the meter measures (§3.16.3: all phases measured).
  Import quantities are never negative: meter noise around 0 reads 0.
- Current.Offered A: the pilot's offer (per phase, so no phase field);
  Power.Offered W: that offer x 230 V nominal x the connector's phases, the
  same conversion as smart charging (errata 3.69 on the W unit).
A meter that does not answer (app.meters.error) or reports a non-finite or
negative register gives no sample at all (one log line per outage): nothing is
sent rather than a made-up value.

StopTransaction transactionData (§3.16.1/§3.16.2, errata 3.14 "3.16.6", 3.91)
- StopTxnSampledData every MeterValueSampleInterval (Sample.Periodic) and
  StopTxnAlignedData at every clock-aligned boundary (Sample.Clock) during the
  transaction, plus Transaction.Begin and Transaction.End values of every
  measurand of both keys (errata 3.14 recommends them). Begin's energy is the
  transaction's meterStart; End is taken when `transaction_data()` is called
  (the transaction service calls it right after reading meterStop), or, for a
  stop after a power cut, the last persisted register and time.
- Stored in SQLite as they are taken (table metering_tx_data, created here),
  so a power cut loses none; rows of a transaction are deleted once its
  StopTransaction is queued. At most MAX_TX_DATA_VALUES per transaction:
  beyond that every other intermediate value is dropped, never Begin or End
  nor the newest (errata 3.91 StopTransactionMaxMeterValues).
- Both keys empty -> no transactionData at all (§3.16.5).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chargepoint.clock import EventTime
from chargepoint.services.configuration import split_phase
from chargepoint.store.db import dumps, loads
from chargepoint.store.queue import time_ref

if TYPE_CHECKING:
    from chargepoint.app import ChargePointApp
    from chargepoint.services.transactions import ActiveTransaction

log = logging.getLogger("chargepoint.metering")

DAY_S = 86400
NOMINAL_VOLTAGE_V = 230.0        # as smart charging converts W <-> A (errata 3.69)
LOCATION = "Outlet"              # each connector's own meter (§7.30)
DEFAULT_MEASURAND = "Energy.Active.Import.Register"
MAX_TX_DATA_VALUES = 100         # per transaction, Begin and End included (errata 3.91)
MAX_WAIT_S = 5.0                 # look at the clock at least this often (NTP steps, sync)

CTX_PERIODIC = "Sample.Periodic"
CTX_CLOCK = "Sample.Clock"
CTX_BEGIN = "Transaction.Begin"
CTX_END = "Transaction.End"
CTX_TRIGGER = "Trigger"

TX_DATA_TABLE = "metering_tx_data"
_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TX_DATA_TABLE} ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " local_tx_id INTEGER NOT NULL,"
    " context TEXT NOT NULL,"
    " meter_value TEXT NOT NULL)",      # MeterValue JSON with queue time_ref placeholders
    f"CREATE INDEX IF NOT EXISTS {TX_DATA_TABLE}_tx ON {TX_DATA_TABLE} (local_tx_id, id)",
)


# --------------------------------------------------------------------------- pure part


@dataclass(frozen=True)
class Sample:
    """What one connector measures at one instant (units in the names)."""

    energy_wh: float
    power_w: float
    current_a: tuple[float, ...] = ()
    voltage_v: tuple[float, ...] = ()
    offered_current_a: float = 0.0
    phases: int = 3


def format_decimal(value: float, places: int) -> str:
    """A decimal string without float noise or trailing zeros: 3680.0 -> "3680", 15.999 (2) -> "16"."""
    text = f"{value:.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def stop_txn_measurands(sampled: Sequence[str], aligned: Sequence[str]) -> list[str]:
    """Measurands of the Begin/End values: every one of either StopTxn key (errata 3.14), in order."""
    return list(dict.fromkeys([*sampled, *aligned]))


def sampled_values(measurands: Iterable[str], sample: Sample, context: str) -> list[dict[str, Any]]:
    """SampledValue objects (§7.43) for the measurands, in the configured order."""
    values: list[dict[str, Any]] = []

    def add(measurand: str, value: str, unit: str, phase: str | None = None) -> None:
        item: dict[str, Any] = {"value": value, "context": context, "format": "Raw", "measurand": measurand}
        if phase is not None:
            item["phase"] = phase
        item["location"] = LOCATION
        item["unit"] = unit
        values.append(item)

    for item in measurands:
        # "Voltage.L1" (§9.1.17): that phase only; the plain measurand: every phase.
        measurand, only = split_phase(item)
        if measurand == "Energy.Active.Import.Register":
            add(measurand, str(math.floor(sample.energy_wh)), "Wh")
        elif measurand == "Power.Active.Import":
            add(measurand, format_decimal(max(0.0, sample.power_w), 1), "W")
        elif measurand == "Current.Import":
            for i, current_a in enumerate(sample.current_a[:3]):
                if only is None or only == i:
                    add(measurand, format_decimal(max(0.0, current_a), 2), "A", f"L{i + 1}")
        elif measurand == "Voltage":
            for i, voltage_v in enumerate(sample.voltage_v[:3]):
                if only is None or only == i:
                    add(measurand, format_decimal(max(0.0, voltage_v), 1), "V", f"L{i + 1}-N")
        elif measurand == "Current.Offered":
            add(measurand, format_decimal(max(0.0, sample.offered_current_a), 2), "A")
        elif measurand == "Power.Offered":
            offered_w = max(0.0, sample.offered_current_a) * NOMINAL_VOLTAGE_V * sample.phases
            add(measurand, format_decimal(offered_w, 1), "W")
        # Anything else cannot be configured (ChangeConfiguration Rejects it, §3.16.4).
    return values


def meter_value(timestamp: Any, values: list[dict[str, Any]]) -> dict[str, Any]:
    """A MeterValue (§7.33): `timestamp` an ISO string or a queue time_ref placeholder."""
    return {"timestamp": timestamp, "sampledValue": values}


def next_periodic_s(anchor_s: float, interval_s: float, now_s: float) -> float:
    """The first sample time after now_s on the grid anchor_s + k * interval_s, k >= 1 (§3.16.1)."""
    if now_s < anchor_s:
        return anchor_s + interval_s
    k = math.floor((now_s - anchor_s) / interval_s) + 1
    return anchor_s + k * interval_s


def aligned_boundary_at_or_before(wall_s: float, interval_s: int) -> float:
    """The latest clock-aligned boundary <= wall_s: midnight UTC + k * interval_s (§9.1.5)."""
    day_start_s = math.floor(wall_s / DAY_S) * DAY_S
    k = math.floor((wall_s - day_start_s) / interval_s)
    return float(day_start_s + k * interval_s)


def next_aligned_boundary(wall_s: float, interval_s: int) -> float:
    """The first clock-aligned boundary after wall_s; every midnight UTC is one (a day is not
    always a multiple of the interval: its last interval is then shorter)."""
    day_start_s = math.floor(wall_s / DAY_S) * DAY_S
    candidate = aligned_boundary_at_or_before(wall_s, interval_s) + interval_s
    return float(min(candidate, day_start_s + DAY_S))


def thin_victims(ids: Sequence[int], contexts: Sequence[str], cap: int) -> list[int]:
    """Rows to delete so a transaction's stored values fit `cap` (errata 3.91): every other
    intermediate value (periodic ones first), never Transaction.Begin nor the newest."""
    if len(ids) <= cap:
        return []
    inner = [(i, c) for i, c in zip(ids[:-1], contexts[:-1], strict=True) if c != CTX_BEGIN]
    periodic = [i for i, c in inner if c == CTX_PERIODIC]
    pool = periodic if len(periodic) >= 2 else [i for i, _ in inner]
    return pool[0::2]


# --------------------------------------------------------------------------- the service


@dataclass
class _Periodic:
    anchor_s: float                  # monotonic start of the transaction
    interval_s: int = 0
    due_s: float = math.inf


class MeteringService:
    """app.metering."""

    def __init__(self, app: ChargePointApp) -> None:
        self.app = app
        self._wake = asyncio.Event()
        self._periodic: dict[int, _Periodic] = {}     # local_id -> schedule
        self._begun: set[int] = set()                 # local ids whose Begin value is settled
        self._aligned_due_s: float | None = None      # wall time of the next clock-aligned sample
        self._unusable: set[int] = set()              # connectors whose meter we skip (logged once)
        self._hooked = False
        self.skipped: dict[int, int] = {}             # connector -> readings refused (meter unusable)
        for statement in _SCHEMA:
            app.store.execute(statement)
        app.config.add_listener(self._on_config_change)
        if app.trigger is not None:
            app.trigger.register("MeterValues", self.on_trigger)
        app.metering = self
        self._hook_transactions()

    # ----------------------------------------------------------------- public API

    def transaction_data(self, local_id: int) -> list[dict[str, Any]] | None:
        """StopTransaction.req transactionData: the stored values plus Transaction.End; None
        when StopTxnSampledData and StopTxnAlignedData are both empty (§3.16.5).
        Timestamps may be queue time_ref placeholders (resolved when the Stop is sent)."""
        measurands = self._stop_measurands()
        if not measurands:
            return None
        rows = self.app.store.query(
            f"SELECT context, meter_value FROM {TX_DATA_TABLE} WHERE local_tx_id = ? ORDER BY id", (local_id,))
        values = [loads(row[1]) for row in rows]
        rec = self.app.store.transactions.get(local_id)
        if rec is not None and (not rows or rows[0][0] != CTX_BEGIN):
            # Not stored (a power cut right after the start): the register from the transaction row.
            begin = sampled_values([m for m in measurands if m == DEFAULT_MEASURAND],
                                   Sample(energy_wh=rec.start_meter_wh, power_w=0.0), CTX_BEGIN)
            if begin:
                values.insert(0, meter_value(time_ref(rec.start_time), begin))
        end = self._end_value(local_id, measurands)
        if end is not None:
            values.append(end)
        return values or None

    def wake(self) -> None:
        self._wake.set()

    # ----------------------------------------------------------------- wiring

    def _hook_transactions(self) -> None:
        transactions = self.app.transactions
        if self._hooked or transactions is None or not hasattr(transactions, "add_listener"):
            return
        transactions.add_listener(self._on_transaction_event)
        self._hooked = True

    def _on_transaction_event(self, event: Any) -> None:
        kind = type(event).__name__
        if kind == "TransactionStarted":
            tx = self._active(event.connector_id)
            if tx is not None and tx.local_id == event.local_id:
                self._ensure_begin(tx, at_start=True)
                self._schedule(tx)
        elif kind == "TransactionStopped":
            # Its StopTransaction (with our data) is queued: the stored rows are done with.
            self._periodic.pop(event.local_id, None)
            self._begun.discard(event.local_id)
            self.app.store.execute(f"DELETE FROM {TX_DATA_TABLE} WHERE local_tx_id = ?", (event.local_id,))
        self._wake.set()

    def _on_config_change(self, key: str, _value: str) -> None:
        if key == "ClockAlignedDataInterval":
            self._aligned_due_s = None
        if key in ("ClockAlignedDataInterval", "MeterValueSampleInterval"):
            self._wake.set()

    def _active(self, connector_id: int) -> ActiveTransaction | None:
        transactions = self.app.transactions
        return transactions.active(connector_id) if transactions is not None else None

    def _notify_sender(self) -> None:
        transactions = self.app.transactions
        notify = getattr(transactions, "notify_queue", None)
        if notify is not None:
            notify()

    # ----------------------------------------------------------------- readings

    def _sample(self, connector_id: int) -> Sample | None:
        """The latest reading of a healthy meter, or None (logged once per outage)."""
        meters = self.app.meters
        reading = None
        problem = "no meter service"
        if meters is not None:
            reading = meters.latest(connector_id)
            error = meters.error(connector_id)
            if error is not None:
                problem, reading = f"meter error: {error}", None
            elif reading is None:
                problem = "no reading yet"
            elif not all(math.isfinite(x) for x in (reading.energy_wh, reading.power_w, *reading.current_a,
                                                   *reading.voltage_v)) or reading.energy_wh < 0:
                problem, reading = "implausible reading", None
        if reading is None:
            if problem == "no reading yet":
                return None     # just started (or a power-cut stop at boot): nothing to report yet
            self.skipped[connector_id] = self.skipped.get(connector_id, 0) + 1
            if connector_id not in self._unusable:
                self._unusable.add(connector_id)
                log.warning("connector %d: no meter values while the meter is unusable (%s)", connector_id, problem)
            return None
        if connector_id in self._unusable:
            self._unusable.discard(connector_id)
            log.info("connector %d: meter readings usable again; meter values resume", connector_id)
        controller = self.app.controllers[connector_id]
        return Sample(energy_wh=reading.energy_wh, power_w=reading.power_w, current_a=tuple(reading.current_a),
                      voltage_v=tuple(reading.voltage_v), offered_current_a=float(controller.offered_current_a),
                      phases=self.app.board.connector(connector_id).phases)

    def _stop_measurands(self) -> list[str]:
        config = self.app.config
        return stop_txn_measurands(config.get_csl("StopTxnSampledData"), config.get_csl("StopTxnAlignedData"))

    # ----------------------------------------------------------------- transactionData storage

    def _store_tx_value(self, local_id: int, context: str, value: dict[str, Any]) -> None:
        store = self.app.store
        with store.transaction():
            store.execute(f"INSERT INTO {TX_DATA_TABLE} (local_tx_id, context, meter_value) VALUES (?, ?, ?)",
                          (local_id, context, dumps(value)))
            rows = store.query(f"SELECT id, context FROM {TX_DATA_TABLE} WHERE local_tx_id = ? ORDER BY id",
                               (local_id,))
            # One slot is kept free for Transaction.End, which is not stored.
            victims = thin_victims([r[0] for r in rows], [r[1] for r in rows], MAX_TX_DATA_VALUES - 1)
            if victims:
                store.connection.executemany(f"DELETE FROM {TX_DATA_TABLE} WHERE id = ?", [(v,) for v in victims])
        if victims:
            log.info("local tx %d: %d intermediate transactionData values dropped (cap %d, errata 3.91)",
                     local_id, len(victims), MAX_TX_DATA_VALUES)

    def _ensure_begin(self, tx: ActiveTransaction, *, at_start: bool = False) -> None:
        """Store the Transaction.Begin value once: energy = meterStart, at the start time."""
        if tx.local_id in self._begun:
            return
        self._begun.add(tx.local_id)
        measurands = self._stop_measurands()
        if not measurands:
            return
        exists = self.app.store.query_one(
            f"SELECT 1 FROM {TX_DATA_TABLE} WHERE local_tx_id = ? AND context = ? LIMIT 1", (tx.local_id, CTX_BEGIN))
        if exists is not None:
            return
        sample = self._sample(tx.connector_id) if at_start else None
        if sample is None:
            # The other measurands were not read at the start: the register is all we know.
            sample = Sample(energy_wh=float(tx.meter_start_wh), power_w=0.0)
            measurands = [m for m in measurands if m == DEFAULT_MEASURAND]
        else:
            sample = Sample(float(tx.meter_start_wh), sample.power_w, sample.current_a, sample.voltage_v,
                            sample.offered_current_a, sample.phases)
        values = sampled_values(measurands, sample, CTX_BEGIN)
        if values:
            start_event = tx.start_event if tx.start_event is not None else self.app.clock.event_time()
            self._store_tx_value(tx.local_id, CTX_BEGIN, meter_value(time_ref(start_event), values))

    def _end_value(self, local_id: int, measurands: list[str]) -> dict[str, Any] | None:
        rec = self.app.store.transactions.get(local_id)
        if rec is None:
            return None
        sample = self._sample(rec.connector_id) if rec.connector_id in self.app.controllers else None
        when: EventTime | None = self.app.clock.event_time()
        if sample is None:
            # Meter lost, or a stop after a power cut: the last register we persisted, and when.
            reading = self.app.meters.latest(rec.connector_id) if self.app.meters is not None else None
            if reading is not None and math.isfinite(reading.energy_wh):
                energy_wh = reading.energy_wh
            elif rec.last_meter_wh is not None:
                energy_wh, when = rec.last_meter_wh, rec.last_meter_time
            else:
                return None
            sample = Sample(energy_wh=energy_wh, power_w=0.0)
            measurands = [m for m in measurands if m == DEFAULT_MEASURAND]
        # Never below the start (the transaction service clamps meterStop the same way).
        sample = Sample(max(sample.energy_wh, rec.start_meter_wh), sample.power_w, sample.current_a,
                        sample.voltage_v, sample.offered_current_a, sample.phases)
        values = sampled_values(measurands, sample, CTX_END)
        if not values or when is None:
            return None
        return meter_value(time_ref(when), values)

    # ----------------------------------------------------------------- sampled (periodic)

    def _schedule(self, tx: ActiveTransaction) -> _Periodic:
        state = self._periodic.get(tx.local_id)
        if state is None:
            start = tx.start_event
            now_s = self.app.clock.monotonic_s()
            same_boot = start is not None and start.boot_id == self.app.clock.boot_id and start.monotonic_s <= now_s
            state = _Periodic(anchor_s=start.monotonic_s if start is not None and same_boot else now_s)
            self._periodic[tx.local_id] = state
        return state

    def _take_periodic(self, tx: ActiveTransaction) -> None:
        sample = self._sample(tx.connector_id)
        if sample is None:
            return
        config = self.app.config
        t = self.app.clock.event_time()
        values = sampled_values(config.get_csl("MeterValuesSampledData"), sample, CTX_PERIODIC)
        stop_values = sampled_values(config.get_csl("StopTxnSampledData"), sample, CTX_PERIODIC)
        store = self.app.store
        with store.transaction():
            if values:
                store.queue.enqueue("MeterValues", self._payload(tx, meter_value(time_ref(t), values)),
                                    local_tx_id=tx.local_id, kind="meter_periodic", event_time=t)
                # In the same commit: a PowerLoss stop's meterStop and time are never before a sent sample.
                store.transactions.update_last_meter(tx.local_id, sample.energy_wh, t)
            if stop_values:
                self._store_tx_value(tx.local_id, CTX_PERIODIC, meter_value(time_ref(t), stop_values))
        if values:
            self._notify_sender()

    @staticmethod
    def _payload(tx: ActiveTransaction, value: dict[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = {"connectorId": tx.connector_id}
        if tx.transaction_id is not None:
            # Refreshed from the transactions table at send time (services/tx_delivery.py).
            payload["transactionId"] = tx.transaction_id
        payload["meterValue"] = [value]
        return payload

    def _periodic_step(self, now_s: float) -> float:
        """Take the due samples; returns the seconds until the next one."""
        interval_s = self.app.config.get_int("MeterValueSampleInterval")
        wait_s = math.inf
        live: set[int] = set()
        for cid in self.app.controllers:
            tx = self._active(cid)
            if tx is None:
                continue
            live.add(tx.local_id)
            self._ensure_begin(tx)
            state = self._schedule(tx)
            if interval_s <= 0:
                continue
            if state.interval_s != interval_s:
                # The first sample is one interval after the start; after a change of the
                # interval, the next point of the new grid (no immediate extra sample).
                first = state.interval_s == 0
                state.interval_s = interval_s
                state.due_s = state.anchor_s + interval_s if first else next_periodic_s(state.anchor_s, interval_s,
                                                                                         now_s)
            if now_s >= state.due_s:
                self._take_periodic(tx)
                # A late wake-up skips the missed samples rather than sending a burst.
                state.due_s = next_periodic_s(state.anchor_s, interval_s, now_s)
            wait_s = min(wait_s, state.due_s - now_s)
        for local_id in set(self._periodic) - live:
            del self._periodic[local_id]
        return wait_s

    # ----------------------------------------------------------------- clock-aligned

    async def _aligned_step(self) -> float:
        interval_s = self.app.config.get_int("ClockAlignedDataInterval")
        clock = self.app.clock
        if interval_s <= 0 or not clock.synced:
            self._aligned_due_s = None
            return math.inf
        wall_s = clock.wall_s()
        if self._aligned_due_s is None or self._aligned_due_s - wall_s > interval_s:
            # First time, a new interval, or the clock was stepped back.
            self._aligned_due_s = next_aligned_boundary(wall_s, interval_s)
        if wall_s >= self._aligned_due_s:
            # Stamped with the boundary; after a forward clock step, the latest boundary passed.
            boundary_s = aligned_boundary_at_or_before(wall_s, interval_s)
            self._aligned_due_s = next_aligned_boundary(wall_s, interval_s)
            await self._take_aligned(boundary_s)
            wall_s = clock.wall_s()
        return self._aligned_due_s - wall_s

    async def _take_aligned(self, boundary_s: float) -> None:
        config = self.app.config
        stamp = self.app.clock.iso8601(datetime.fromtimestamp(boundary_s, UTC))
        for cid in self.app.controllers:
            if self.app.meters is not None:
                await self.app.meters.read_now(cid)     # the register at the boundary, not up to 1 s old
            sample = self._sample(cid)
            if sample is None:
                continue
            values = sampled_values(config.get_csl("MeterValuesAlignedData"), sample, CTX_CLOCK)
            # Errata 3.16: the transaction ongoing now (after the read), if any, owns the sample.
            tx = self._active(cid)
            if tx is not None:
                stop_values = sampled_values(config.get_csl("StopTxnAlignedData"), sample, CTX_CLOCK)
                store = self.app.store
                with store.transaction():
                    if values:
                        t = self.app.clock.event_time()
                        store.queue.enqueue("MeterValues", self._payload(tx, meter_value(stamp, values)),
                                            local_tx_id=tx.local_id, kind="meter_aligned", event_time=t)
                        store.transactions.update_last_meter(tx.local_id, sample.energy_wh, t)   # as periodic
                    if stop_values:
                        self._store_tx_value(tx.local_id, CTX_CLOCK, meter_value(stamp, stop_values))
                if values:
                    self._notify_sender()
            elif values:
                if self.app.online:
                    payload = {"connectorId": cid, "meterValue": [meter_value(stamp, values)]}
                    self.app.spawn(self.app.try_call("MeterValues", payload), f"meter-aligned-{cid}")
                else:
                    # Not transaction-related: not queued (§3.7 queues only transaction messages).
                    log.debug("connector %d: clock-aligned value at %s dropped: offline", cid, stamp)

    # ----------------------------------------------------------------- TriggerMessage

    async def on_trigger(self, connector_id: int | None) -> None:
        """TriggerMessage(MeterValues), after its CALLRESULT (§5.17, errata 3.46)."""
        cids = [connector_id] if connector_id in self.app.controllers else list(self.app.controllers)
        clock = self.app.clock
        measurands = self.app.config.get_csl("MeterValuesSampledData") or [DEFAULT_MEASURAND]
        for cid in cids:
            sample = self._sample(cid)
            if sample is None:
                log.info("TriggerMessage MeterValues: connector %d has no usable meter reading", cid)
                continue
            values = sampled_values(measurands, sample, CTX_TRIGGER)
            if not values:
                continue
            tx = self._active(cid)
            if tx is not None and tx.transaction_id is None:
                # Its Start is not confirmed: only the queue can give this value its transactionId.
                t = clock.event_time()
                store = self.app.store
                with store.transaction():
                    store.queue.enqueue("MeterValues", self._payload(tx, meter_value(time_ref(t), values)),
                                        local_tx_id=tx.local_id, kind="meter_periodic", event_time=t)
                    store.transactions.update_last_meter(tx.local_id, sample.energy_wh, t)   # as periodic
                self._notify_sender()
                continue
            if not clock.synced:
                log.info("TriggerMessage MeterValues: clock not synchronised, nothing sent for connector %d", cid)
                continue
            value = meter_value(clock.iso8601(clock.now()), values)
            if tx is not None:
                self.app.store.transactions.update_last_meter(tx.local_id, sample.energy_wh, clock.event_time())
            payload = self._payload(tx, value) if tx is not None else {"connectorId": cid, "meterValue": [value]}
            await self.app.try_call("MeterValues", payload, allow_unregistered=True)

    # ----------------------------------------------------------------- the loop

    def _prune(self) -> None:
        """Rows of transactions whose stop is queued (or that are gone) are done with."""
        deleted = self.app.store.execute(
            f"DELETE FROM {TX_DATA_TABLE} WHERE local_tx_id NOT IN"
            " (SELECT local_id FROM transactions WHERE stop_queued = 0)").rowcount
        if deleted:
            log.info("dropped %d stored transactionData values of finished transactions", deleted)

    async def step(self) -> float:
        """Take whatever is due now; returns the seconds until something may be due."""
        self._hook_transactions()
        wait_s = self._periodic_step(self.app.clock.monotonic_s())
        wait_s = min(wait_s, await self._aligned_step())
        return max(0.0, min(wait_s, MAX_WAIT_S))

    async def run(self) -> None:
        self._hook_transactions()
        self._prune()
        while True:
            self._wake.clear()
            wait_s = await self.step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)
