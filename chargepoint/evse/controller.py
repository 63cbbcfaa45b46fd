"""The connector controller: read the HAL, decide (pure), act, derive the status.

One ConnectorController per connector. Services set its inputs (energy allowed,
smart-charging limit, availability, reservation, transaction flags, metered
power); `step()` reads the hardware, runs `iec61851.step()`, applies the outputs
in a safe order, derives the OCPP status and tells listeners what changed.
`run()` repeats `step()` every `step_interval_s` and at once when poked (a
setter was called, or the HAL's listener saw a plug event), so a new limit
reaches the pilot within one loop turn. A quiet connector (nothing plugged, contactor
open, no fault, nothing pending or authorized) is looked at every `idle_step_interval_s`
instead: an idle charger stays idle, and the worst-case latency to notice a plug or a
fault on hardware that does not report changes is 1 s idle, 0.2 s otherwise (a
fault while idle finds the contactor already open). A backend that reports every change
of its inputs (the simulator: plug, EV, fault, link commands poke the controller) needs
no idle polling: `idle_step_interval_s=None` leaves a quiet connector asleep until poked
(or until a status held back by MinimumStatusDuration is due).

Order of operations (IEC 61851-1 Annex A): the contactor only closes after the
PWM is on and the lock has confirmed; it opens first on a fault or unplug; on a
normal stop (pause, limit below 6 A, end of authorization) the PWM goes first
and the contactor follows when the EV leaves C, or after `relay_open_grace_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from hal.interfaces import ConnectorHardware, ConnectorLock, CpState, Fault

from . import iec61851
from .iec61851 import Inputs, Memory, Outputs, Timing
from .status import ConnectorFacts, DueReport, StatusReport, StatusReporter, derive

log = logging.getLogger("chargepoint.evse")

# A lock that failed is retried this often (not at loop rate: it is a motor).
LOCK_RETRY_INTERVAL_S = 5.0
# After releasing the -12 V fault signal, a pilot still reading F this long is not a fault.
F_SETTLE_S = 0.5


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Plugged:
    connector_id: int


@dataclass(frozen=True)
class Unplugged:
    connector_id: int


@dataclass(frozen=True)
class EvStartedDrawing:
    connector_id: int


@dataclass(frozen=True)
class EvStoppedDrawing:
    connector_id: int


@dataclass(frozen=True)
class FaultRaised:
    connector_id: int
    fault: Fault


@dataclass(frozen=True)
class FaultCleared:
    connector_id: int
    fault: Fault


@dataclass(frozen=True)
class StatusChanged:
    """The derived status changed (not debounced; see StatusDue for what to send)."""

    connector_id: int
    report: StatusReport


@dataclass(frozen=True)
class StatusDue:
    """A StatusNotification.req is due now (MinimumStatusDuration respected)."""

    connector_id: int
    due: DueReport


ConnectorEvent = (Plugged | Unplugged | EvStartedDrawing | EvStoppedDrawing | FaultRaised | FaultCleared
                  | StatusChanged | StatusDue)
EventListener = Callable[[ConnectorEvent], None]


# --------------------------------------------------------------------------- controller


class ConnectorController:
    """Drives one connector's pilot, contactor and lock from the services' inputs.

    `on_change` is called synchronously from `step()`; it must not block (schedule
    any I/O as a task). A listener that raises is logged and ignored: it never
    stops the safety loop.
    """

    def __init__(self, hw: ConnectorHardware, *, max_current_a: float,
                 station_limit_a: Callable[[], float | None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 pilot_raise_min_interval_s: float = 5.0,
                 relay_open_grace_s: float = 3.0,
                 on_change: EventListener | None = None,
                 min_status_duration_s: Callable[[], float] | None = None,
                 step_interval_s: float = 0.2,
                 idle_step_interval_s: float | None = 1.0,
                 settle_s: float = 0.05,
                 drawing_threshold_w: float = 100.0,
                 ventilation_available: bool = False) -> None:
        self._hw = hw
        self.connector_id = hw.connector_id
        self._max_current_a = max_current_a
        self._station_limit_a = station_limit_a or (lambda: None)
        self._monotonic = monotonic
        self._timing = Timing(raise_min_interval_s=pilot_raise_min_interval_s,
                              relay_open_grace_s=relay_open_grace_s)
        self._listeners: list[EventListener] = [on_change] if on_change is not None else []
        self._step_interval_s = step_interval_s
        # None: the hardware reports its changes (poke), a quiet connector is not polled.
        self._idle_step_interval_s = (None if idle_step_interval_s is None
                                      else max(step_interval_s, idle_step_interval_s))
        self._settle_s = settle_s
        self._drawing_threshold_w = drawing_threshold_w
        # IEC 61851-1: state D asks for ventilation; a charger without it must not
        # energise in D. Home wallboxes have none.
        self._ventilation_available = ventilation_available
        self.reporter = StatusReporter(min_status_duration_s or (lambda: 0.0), monotonic,
                                       connector_id=hw.connector_id)

        # Inputs set by services.
        self._energy_allowed = False
        self._limit_a: float | None = None
        self._limit_source: str | None = None
        self._available = True
        self._reserved = False
        self._lock_held = False
        self._preparing = False
        self._finishing = False
        self._transaction_active = False
        self._info: str | None = None
        self._power_w: float | None = None
        self._power_at_s: float | None = None
        self._meter_lost = False

        # What was read, decided and applied.
        self._memory = Memory()
        self._applied: Outputs | None = None
        self._lock_commanded: bool | None = None
        self._lock_failed = False
        self._lock_retry_at_s = 0.0
        self._relay_closed_at_s: float | None = None
        self._f_released_at_s: float | None = None
        self._cp_state: CpState | None = None
        self._cable_rating_a: float | None = None
        self._plugged = False
        self._drawing = False
        self._faults: frozenset[Fault] = frozenset()
        self._status: StatusReport | None = None
        self._pending_offer_a: float | None = None
        self._wake = asyncio.Event()

    # ----------------------------------------------------------------- inputs (services)

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def set_energy_allowed(self, allowed: bool) -> None:
        """A transaction is authorized and running (or free vend): energy may flow."""
        self._set("_energy_allowed", allowed)

    def set_limit_a(self, limit_a: float | None, source: str | None = None) -> None:
        """The smart-charging limit in amperes per phase (None: no limit). Below 6 A pauses."""
        if limit_a is not None and not (math.isfinite(limit_a) and limit_a >= 0):
            log.warning("connector %d: invalid limit %r from %s; pausing", self.connector_id, limit_a, source)
            limit_a = 0.0
        if limit_a != self._limit_a or source != self._limit_source:
            log.info("connector %d: limit %s A (%s)", self.connector_id,
                     "none" if limit_a is None else f"{limit_a:g}", source)
        self._limit_source = source if limit_a is not None else None
        self._set("_limit_a", limit_a)

    def set_available(self, available: bool) -> None:
        """ChangeAvailability Operative (True) / Inoperative (False), once effective."""
        self._set("_available", available)

    def set_lock_held(self, held: bool) -> None:
        """Keep the cable locked although the EV side is unplugged (OCPP 1.6 §4.10, errata 3.5)."""
        self._set("_lock_held", held)

    def set_reserved(self, reserved: bool) -> None:
        self._set("_reserved", reserved)

    def set_preparing(self, preparing: bool) -> None:
        """An idTag is authorized and the connector waits for the plug (section 4.9 A2)."""
        self._set("_preparing", preparing)

    def set_finishing(self, finishing: bool) -> None:
        """The transaction stopped with the cable still in; cleared here on unplug (F1) and
        once the connector is Unavailable (F8)."""
        self._set("_finishing", finishing)

    def set_transaction_active(self, active: bool) -> None:
        self._set("_transaction_active", active)

    def set_info(self, info: str | None) -> None:
        """Free text for StatusNotification.info (CiString50), e.g. "EV side disconnected"."""
        self._set("_info", info[:50] if info else None)

    def set_power_w(self, power_w: float | None) -> None:
        """The metered active power; feed it after every meter read (None: no meter answer)."""
        changed = power_w != self._power_w
        self._power_w = power_w
        self._power_at_s = self._monotonic() if power_w is not None else None
        # With the contactor open the reading decides nothing (_ev_drawing) unless it changed:
        # an idle connector is not stepped for every meter poll.
        if changed or self._memory.relay_closed or self._hw.relay.commanded_closed:
            self.poke()

    def set_meter_lost(self, lost: bool) -> None:
        """The metering service's view: the meter stopped answering (MeterError). See hal.faults."""
        self._set("_meter_lost", lost)

    def poke(self) -> None:
        """Run a step now (a plug event, a new limit)."""
        self._wake.set()

    def _set(self, name: str, value: Any) -> None:
        if getattr(self, name) != value:
            setattr(self, name, value)
            self.poke()

    # ----------------------------------------------------------------- state (read-only)

    @property
    def status(self) -> StatusReport | None:
        return self._status

    @property
    def cp_state(self) -> CpState | None:
        return self._cp_state

    @property
    def plugged(self) -> bool:
        return self._plugged

    @property
    def lock_held(self) -> bool:
        """The cable is kept locked for its user (set_lock_held)."""
        return self._lock_held

    @property
    def ev_drawing(self) -> bool:
        return self._drawing

    @property
    def offered_current_a(self) -> float:
        return self._memory.offer_current_a

    @property
    def faults(self) -> frozenset[Fault]:
        return self._faults

    def snapshot(self) -> dict[str, Any]:
        """The fields of interfaces.md section 5 (connector), plus diagnostics."""
        status = self._status
        return {
            "id": self.connector_id,
            "status": str(status.status) if status else "Unavailable",
            "error_code": str(status.error_code) if status else "NoError",
            "cp_state": str(self._cp_state) if self._cp_state else None,
            "relay_closed": bool(self._hw.relay.commanded_closed),
            "pilot_duty_percent": round(float(self._hw.pilot.duty_percent), 1),
            "offered_current_a": self._memory.offer_current_a,
            "limit_a": self._limit_a,
            "limit_source": self._limit_source,
            "pending_offer_a": self._pending_offer_a,
            "energy_allowed": self._energy_allowed,
            "available": self._available,
            "plugged": self._plugged,
            "ev_drawing": self._drawing,
            "cable_rating_a": self._cable_rating_a,
            "locked": self._lock_commanded,
            "lock_held": self._lock_held,
            "faults": sorted(str(f) for f in self._faults),
        }

    # ----------------------------------------------------------------- the step

    def step(self) -> bool:
        """Read, decide, act, derive. Synchronous: the HAL calls are.

        Returns True when the outputs changed: the EV answers a pilot change by
        changing state, so the loop looks again soon (`settle_s`).
        """
        now_s = self._monotonic()
        hw = self._hw

        # Read.
        raw_state = hw.pilot.read_state()
        board_faults = hw.faults.active_faults()
        cable_a = hw.proximity.cable_rating_a() if hw.proximity is not None else None
        # F read while we drive it (or just after releasing it: the line needs a
        # moment to settle) is our own signal, not a pilot fault.
        driving_f = (self._applied is not None and self._applied.fault_signal) or (
            self._f_released_at_s is not None and now_s - self._f_released_at_s < F_SETTLE_S)
        faults = set(board_faults)
        if raw_state == CpState.E or (raw_state == CpState.F and not driving_f):
            faults.add(Fault.PILOT_FAULT)   # short on CP, or -12 V we did not drive
        if self._lock_failed:
            faults.add(Fault.LOCK_FAILURE)
        if self._meter_lost:
            faults.add(Fault.METER_LOST)
        plugged = self._plugged if (raw_state == CpState.F and driving_f) else raw_state != CpState.A

        # Decide.
        inputs = Inputs(
            cp_state=raw_state, faults=frozenset(faults), energy_allowed=self._energy_allowed,
            available=self._available, limit_a=self._limit_a, connector_max_a=self._max_current_a,
            cable_rating_a=cable_a, station_limit_a=self._station_limit_a(),
            ventilation_available=self._ventilation_available, lock_held=self._lock_held)
        outputs, memory = iec61851.step(inputs, self._memory, now_s, self._timing)

        # Act.
        previous = self._applied
        outputs = self._apply(outputs, now_s)
        if outputs.relay_closed != memory.relay_closed:   # the lock vetoed closing
            memory = replace(memory, relay_closed=outputs.relay_closed)
        if outputs.relay_closed and not self._memory.relay_closed:
            self._relay_closed_at_s = now_s
        if previous is not None and previous.fault_signal and not outputs.fault_signal:
            self._f_released_at_s = now_s
        self._memory = memory
        self._applied = outputs
        self._pending_offer_a = iec61851.pending_raise(inputs, memory)
        self._cp_state = raw_state
        self._cable_rating_a = cable_a

        # Derive and tell.
        events: list[ConnectorEvent] = []
        if plugged != self._plugged:
            self._plugged = plugged
            events.append(Plugged(self.connector_id) if plugged else Unplugged(self.connector_id))
            log.info("connector %d: %s (CP %s)", self.connector_id, "plugged" if plugged else "unplugged",
                     raw_state)
            if not plugged:
                self._finishing = False   # section 4.9 F1: all user actions completed
        if self._finishing and not self._available and not self._transaction_active:
            # Section 4.9 F8: Finishing -> Unavailable is "all user actions completed", so the
            # session is over. A cable still in when the connector is set Available again is a
            # new user interaction: Preparing (H2); the table has no Unavailable -> Finishing
            # (H6), which was reported after a Scheduled Inoperative (found by the schema fuzz).
            self._finishing = False
        drawing = self._ev_drawing(outputs.relay_closed, raw_state)
        if drawing != self._drawing:
            self._drawing = drawing
            events.append(EvStartedDrawing(self.connector_id) if drawing else EvStoppedDrawing(self.connector_id))
        frozen = frozenset(faults)
        for fault in sorted(frozen - self._faults):
            log.warning("connector %d: fault %s", self.connector_id, fault)
            events.append(FaultRaised(self.connector_id, fault))
        for fault in sorted(self._faults - frozen):
            log.info("connector %d: fault %s cleared", self.connector_id, fault)
            events.append(FaultCleared(self.connector_id, fault))
        self._faults = frozen

        report = derive(ConnectorFacts(
            plugged=self._plugged, transaction_active=self._transaction_active,
            energy_allowed=self._energy_allowed,
            energy_offered=outputs.offer_current_a >= iec61851.MIN_CURRENT_A, ev_drawing=drawing,
            faults=frozen, available=self._available, reserved=self._reserved, preparing=self._preparing,
            finishing=self._finishing, info=self._info, cable_held=self._lock_held))
        if report != self._status:
            log.info("connector %d: status %s (%s)", self.connector_id, report.status, report.error_code)
            self._status = report
            events.append(StatusChanged(self.connector_id, report))
        due = self.reporter.observe(report)
        if due is not None:
            events.append(StatusDue(self.connector_id, due))
        for event in events:
            self._emit(event)
        return outputs != previous

    def _ev_drawing(self, relay_closed: bool, cp_state: CpState) -> bool:
        # Customer meaning of Charging: "with imported power". A power reading
        # taken since the contactor closed decides; before the first one, an EV
        # in C/D behind a closed contactor counts as drawing.
        if not relay_closed:
            return False
        fresh = (self._power_w is not None and self._power_at_s is not None
                 and self._relay_closed_at_s is not None and self._power_at_s > self._relay_closed_at_s)
        if fresh:
            assert self._power_w is not None
            return self._power_w > self._drawing_threshold_w
        return cp_state in iec61851.ENERGY_REQUEST_STATES

    def _apply(self, out: Outputs, now_s: float) -> Outputs:
        """Command the hardware in a safe order; returns what was really applied."""
        pilot, relay, lock = self._hw.pilot, self._hw.relay, self._hw.lock
        prev = self._applied
        first = prev is None
        # 1. Open the contactor first when it must open (fault, unplug, B, grace over).
        if not out.relay_closed and (first or (prev is not None and prev.relay_closed) or relay.commanded_closed):
            relay.set_closed(False)
        # 2. Lower the offer (or withdraw the PWM) at once.
        if first or (prev is not None and out.offer_current_a < prev.offer_current_a):
            pilot.offer_current(out.offer_current_a)
        # 3. State F after the PWM is gone.
        if out.fault_signal and (first or (prev is not None and not prev.fault_signal)):
            pilot.set_fault_signal(True)
        # 4. The lock: unlock only with the contactor open; lock before it closes.
        lock_ok = self._apply_lock(lock, out.lock, now_s)
        # 5. Leave F, raise the offer, then close the contactor.
        if not out.fault_signal and (first or (prev is not None and prev.fault_signal)):
            pilot.set_fault_signal(False)
        if prev is not None and out.offer_current_a > prev.offer_current_a:
            pilot.offer_current(out.offer_current_a)
        if out.relay_closed and not lock_ok:
            out = replace(out, relay_closed=False)
            if relay.commanded_closed:
                relay.set_closed(False)
        elif out.relay_closed and (first or (prev is not None and not prev.relay_closed)):
            relay.set_closed(True)
        return out

    def _apply_lock(self, lock: ConnectorLock, locked: bool, now_s: float) -> bool:
        """Command the lock on change (and retry a failed one); False when a needed lock is not confirmed."""
        retry = self._lock_failed and now_s >= self._lock_retry_at_s
        if locked != self._lock_commanded or retry:
            confirmed = bool(lock.set_locked(locked))
            self._lock_commanded = locked
            if confirmed:
                if self._lock_failed:
                    log.info("connector %d: lock confirmed %s", self.connector_id,
                             "locked" if locked else "unlocked")
                self._lock_failed = False
            else:
                log.warning("connector %d: lock did not reach %s", self.connector_id,
                            "locked" if locked else "unlocked")
                self._lock_failed = True
                self._lock_retry_at_s = now_s + LOCK_RETRY_INTERVAL_S
        return not (locked and self._lock_failed)

    def _emit(self, event: ConnectorEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("connector %d: listener failed on %s", self.connector_id, event)

    # ----------------------------------------------------------------- the loop

    def _quiet(self) -> bool:
        """Nothing can change here by time alone: no EV, contactor open, no fault, no lock
        retry, no raise pending, no -12 V settling, no authorization waiting for the plug."""
        applied = self._applied
        settling_f = (self._f_released_at_s is not None
                      and self._monotonic() - self._f_released_at_s < F_SETTLE_S)
        return not (self._plugged or self._faults or self._lock_failed or self._energy_allowed
                    or self._preparing or self._finishing or self._transaction_active
                    or self._memory.relay_closed or self._hw.relay.commanded_closed
                    or self._pending_offer_a is not None
                    or applied is None or applied.fault_signal or settling_f)

    def _next_step_in_s(self, changed: bool, failed: bool) -> float | None:
        if changed:
            return min(self._settle_s, self._step_interval_s)
        if failed or not self._quiet():
            return self._step_interval_s
        # A status waiting for MinimumStatusDuration is due at a known time.
        due_s = self.reporter.due_in_s()
        idle_s = self._idle_step_interval_s
        if due_s is None:
            return idle_s
        return due_s if idle_s is None else min(idle_s, due_s)

    async def run(self) -> None:
        """Step every `step_interval_s` (`idle_step_interval_s` while quiet), and at once when
        poked. Runs until cancelled."""
        while True:
            self._wake.clear()
            changed = failed = False
            try:
                changed = self.step()
            except Exception:
                log.exception("connector %d: step failed; forcing a safe state", self.connector_id)
                self.safe_stop()
                failed = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_step_in_s(changed, failed)):
                    await self._wake.wait()

    def safe_stop(self) -> None:
        """Contactor open, PWM off. For a failed step and for an orderly shutdown."""
        for action in (lambda: self._hw.relay.set_closed(False), lambda: self._hw.pilot.offer_current(0.0)):
            try:
                action()
            except Exception:
                log.exception("connector %d: could not reach the safe state", self.connector_id)
        self._memory = replace(self._memory, offer_current_a=0.0, relay_closed=False, offer_withdrawn_s=None)
        self._applied = None   # re-command everything on the next step
        self._lock_commanded = None
