"""Smart charging, enforced on the control pilot (OCPP 1.6 §3.13, §5.5, §5.7, §5.16).

`SmartChargingService(app)` wires the pure engine (`chargepoint.smartcharging`)
to the daemon:

* OCPP handlers: SetChargingProfile (Accepted/Rejected; CALLERROR
  PropertyConstraintViolation for a connectorId that does not exist, errata 3.39),
  ClearChargingProfile (Accepted/Unknown, errata 3.25/3.26) and
  GetCompositeSchedule (Accepted with scheduleStart + chargingSchedule, Rejected for
  an unknown connector, §5.7; chargingRateUnit honoured, else A).
* RemoteStartTransaction's chargingProfile: the transaction service calls
  `on_remote_start_profile(connector_id, profile)`; a TxProfile without
  transactionId is held and installed when the next transaction starts on that
  connector (§5.16.2, errata 3.41/3.42/3.67). A hold that did not lead to a
  transaction within ConnectionTimeOut (+ slack) is dropped.
* TxProfiles end with their transaction (§7.10): TransactionStopped removes them;
  TxProfiles left in the store by a transaction a power cut ended are removed at start.
* Enforcement: one loop per connector computes the profile limit in A per phase
  (W converted with 230 V x the connector's phases, §7.12) and hands it to
  `ConnectorController.set_limit_a` at once on every change of profiles or
  transactions, and at each period boundary (it sleeps on the monotonic clock until
  `next_change_at`, re-checking at least every TICK_S, which also catches a wall-clock
  step by NTP). Below 6 A the controller pauses (no PWM -> SuspendedEVSE); a later
  period resumes.
* Fail-safe (field notes §4/§6): with `[smart_charging] failsafe_current_a` set, once
  the central system has been unreachable (`app.online` false) for
  `failsafe_after_s` the limit becomes min(profile limit, fail-safe), source
  "failsafe"; lifted as soon as the charger is online again. §3.13.6 asks to keep
  using the installed profiles offline: the fail-safe only ever lowers them.

Before the clock is synchronised: profiles are written in wall time (absolute
startSchedule, validFrom/To, recurrences), so they are only evaluated with a wall
clock we can believe. A synced clock (NTP or the central system's time) is used as
is; until then the system clock is used if it is plausible (not before the build
date: a board with an RTC keeps time over a power cut, so a restart mid-schedule
enforces the right period at once, give or take the RTC's drift). A board whose
clock is implausible (no RTC, 1970) cannot place itself in any schedule: it applies
the fail-safe current if one is configured (source "failsafe"), else no OCPP limit
(as §3.13.6 prescribes for a charger without profiles), and GetCompositeSchedule
answers Rejected until the clock is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from chargepoint.ocppj.session import OcppError
from chargepoint.smartcharging.composite import floor_tenth
from chargepoint.smartcharging.manager import SmartChargingManager, UnknownConnector
from chargepoint.smartcharging.model import TxInfo

if TYPE_CHECKING:
    from chargepoint.app import ChargePointApp

log = logging.getLogger("chargepoint.smartcharging")

# §7.12 / errata 3.69: P = V x I x phases with the nominal line-to-neutral voltage.
NOMINAL_VOLTAGE_V = 230.0
# Longest sleep between two evaluations: bounds how late a limit follows a step of the
# system clock by someone else (a sync or step by this daemon wakes the loops through
# Clock.add_listener). Period boundaries themselves are slept to exactly.
TICK_S = 5.0
# With no profile installed and no fail-safe configured nothing but a notification can give
# a limit (a clock step cannot): an idle charger without smart charging is not woken.
IDLE_TICK_S = 60.0
# Wake this long after a computed boundary so the evaluation lands inside the new second
# (the composite works in whole seconds; waking a hair early would just loop once more).
BOUNDARY_MARGIN_S = 0.005
# A RemoteStartTransaction profile is held this long beyond ConnectionTimeOut (Authorize
# round trip, plug-in debounce) before a transaction that starts is no longer "its" one.
REMOTE_HOLD_SLACK_S = 30.0
# TxInfo needs an int id: a transaction the central system has not numbered yet gets one
# no real transactionId (int32) can equal, so a TxProfile naming an id never matches it.
UNCONFIRMED_TRANSACTION_ID = -(2**40)
FAILSAFE_SOURCE = "failsafe"


@dataclass(frozen=True)
class Enforced:
    """What one evaluation decided for a connector."""

    current_a: float | None            # the limit handed to the controller (None: no limit)
    source: str | None                 # "TxProfile #12", "failsafe", ... (None with no limit)
    next_change: datetime | None       # when the profile limit next changes by the clock alone


@dataclass(frozen=True)
class _Hold:
    """A RemoteStartTransaction profile waiting for its transaction (the manager holds the parsed one)."""

    held_at_s: float                   # monotonic
    group: int                         # one RemoteStartTransaction (held on several connectors without connectorId)
    payload: dict[str, Any]


class SmartChargingService:
    def __init__(self, app: ChargePointApp) -> None:
        self.app = app
        settings = app.settings
        self._failsafe_a = settings.smart_charging.failsafe_current_a
        self._failsafe_after_s = settings.smart_charging.failsafe_after_s
        self._connector_ids = tuple(app.controllers)
        config = app.config
        self.manager = SmartChargingManager(
            connector_ids=self._connector_ids,
            repository=app.store.profiles,
            max_stack_level=lambda: config.get_int("ChargeProfileMaxStackLevel"),
            allowed_rate_units=lambda: config.get_csl("ChargingScheduleAllowedChargingRateUnit"),
            max_periods=lambda: config.get_int("ChargingScheduleMaxPeriods"),
            max_profiles_installed=lambda: config.get_int("MaxChargingProfilesInstalled"),
            clock=app.clock.now,
            active_transaction=self._transaction_info,
            voltage_v=NOMINAL_VOLTAGE_V,
            connector_phases={c.connector_id: c.phases for c in settings.connectors},
            connector_max_current_a={c.connector_id: c.max_current_a for c in settings.connectors},
        )
        self._wakes: dict[int, asyncio.Event] = {cid: asyncio.Event() for cid in self._connector_ids}
        self._enforced: dict[int, Enforced] = {}
        # Connectors whose limit wake() applied but whose next change is not planned yet: the
        # wall time it was evaluated at (the loop plans from the same instant).
        self._unplanned: dict[int, datetime | None] = {}
        # The daemon starts offline: the fail-safe clock runs from start until the first Accepted.
        self._offline_since_s: float | None = app.clock.monotonic_s()
        self._tx_start_fallback: dict[Any, datetime] = {}
        self._remote_holds: dict[int, _Hold] = {}   # connector -> RemoteStartTransaction profile held
        self._hold_groups = 0
        self._subscribed_transactions = False
        self._clock_warned = False
        self.manager.add_listener(self.wake)
        # An NTP sync moves wall time: re-plan the period boundaries at once.
        app.clock.add_listener(self.wake)

        app.on("SetChargingProfile", self.on_set_charging_profile)
        app.on("ClearChargingProfile", self.on_clear_charging_profile)
        app.on("GetCompositeSchedule", self.on_get_composite_schedule)
        app.add_connector_status_contributor(self._contribute_status)
        app.set_schedule_provider(self.schedule)
        app.add_link_listener(self._on_link_state)
        app.registration.on_accepted(self._on_online)
        self._subscribe_transactions()
        # Persisted profiles (errata 3.37) limit the connectors before anything else runs.
        self.wake()

    # ------------------------------------------------------------------ transactions

    def _subscribe_transactions(self) -> None:
        """Listen to the transaction service (built before or after us: retried from run())."""
        if self._subscribed_transactions or self.app.transactions is None:
            return
        self.app.transactions.add_listener(self._on_transaction_event)
        self._subscribed_transactions = True

    def _transaction_info(self, connector_id: int) -> TxInfo | None:
        transactions = self.app.transactions
        if transactions is None:
            return None
        self._subscribe_transactions()
        tx = transactions.active(connector_id)
        if tx is None:
            return None
        transaction_id = tx.transaction_id if tx.transaction_id is not None else UNCONFIRMED_TRANSACTION_ID
        start = tx.start_time
        if start is None:
            # Started before the clock was synced: Relative schedules count from when we
            # first saw the transaction (§7.9: the charge point determines the start).
            start = self._tx_start_fallback.setdefault(tx.local_id, self.app.clock.now())
        return TxInfo(transaction_id=int(transaction_id), start=start)

    def _on_transaction_event(self, event: Any) -> None:
        kind = type(event).__name__
        if kind == "TransactionStarted":
            self._on_transaction_started(int(event.connector_id))
        elif kind == "TransactionStopped":
            self._tx_start_fallback.pop(event.local_id, None)
            transaction_id = event.transaction_id if event.transaction_id is not None else 0
            self.manager.on_transaction_ended(int(event.connector_id), int(transaction_id))
        # TransactionConfirmed gives the transactionId a TxProfile may name: re-evaluate.
        self.wake()

    def _on_transaction_started(self, connector_id: int) -> None:
        """Install the RemoteStartTransaction profile held for this transaction, if any (errata 3.42)."""
        transactions = self.app.transactions
        tx = transactions.active(connector_id) if transactions is not None else None
        remote = bool(getattr(tx, "remote", True))   # a service that does not say: assume it is
        hold = self._remote_holds.pop(connector_id, None)
        if hold is not None and (not remote or self._expired(hold)):
            # A local start on a connector a remote start was waiting for: not its profile.
            log.info("connector %d: RemoteStartTransaction profile not applied to this transaction", connector_id)
            self.manager.discard_remote_start_profile(connector_id)
            hold = None
        if hold is None and remote:
            # The remote authorization moved to the connector the EV was plugged into.
            waiting = [c for c, h in self._remote_holds.items() if not self._expired(h)]
            if waiting:
                other = min(waiting, key=lambda c: self._remote_holds[c].held_at_s)
                moved = self._remote_holds.pop(other)
                self.manager.discard_remote_start_profile(other)
                if self.manager.remote_start_profile(connector_id, moved.payload) == "Accepted":
                    hold = moved
        if hold is not None:
            # A profile held for "any connector" applies to this transaction only.
            for sibling in [c for c, h in self._remote_holds.items() if h.group == hold.group]:
                del self._remote_holds[sibling]
                self.manager.discard_remote_start_profile(sibling)
        self.manager.on_transaction_started(connector_id)

    def _expired(self, hold: _Hold) -> bool:
        return self.app.clock.monotonic_s() - hold.held_at_s > self._remote_hold_s()

    def _remote_hold_s(self) -> float:
        try:
            timeout_s = float(self.app.config.get_int("ConnectionTimeOut"))
        except (KeyError, ValueError):
            timeout_s = 60.0
        return timeout_s + self.app.settings.ocpp.call_timeout_s + REMOTE_HOLD_SLACK_S

    def on_remote_start_profile(self, connector_id: int | None, profile_payload: dict[str, Any]) -> bool:
        """RemoteStartTransaction.req chargingProfile: True to accept (held for the coming
        transaction), False to answer Rejected (§5.11: purpose must be TxProfile; errata
        3.41: no transactionId; the same capability checks as SetChargingProfile).

        `connector_id` None (the charger picks the connector): the profile is held for every
        connector and installed on the one whose transaction starts first.
        """
        targets: Sequence[int]
        if connector_id is None or connector_id == 0:
            targets = self._connector_ids
        else:
            targets = (connector_id,)
        if not targets:
            return False
        self._hold_groups += 1
        hold = _Hold(self.app.clock.monotonic_s(), self._hold_groups, copy.deepcopy(profile_payload))
        accepted: list[int] = []
        for cid in targets:
            if self.manager.remote_start_profile(cid, profile_payload) != "Accepted":
                for undo in accepted:
                    self.manager.discard_remote_start_profile(undo)
                    self._remote_holds.pop(undo, None)
                return False
            accepted.append(cid)
            self._remote_holds[cid] = hold
        return True

    def discard_remote_start_profile(self, connector_id: int | None = None) -> None:
        """The remote start will not lead to a transaction (optional hook for the transaction service)."""
        for cid in self._connector_ids if connector_id is None else (connector_id,):
            self.manager.discard_remote_start_profile(cid)
            self._remote_holds.pop(cid, None)

    def _purge_orphan_tx_profiles(self) -> None:
        """§7.10: TxProfiles cease with their transaction. One a power cut ended (the
        transaction service stops it at boot) has left its TxProfiles in the store."""
        for cid in self._connector_ids:
            if self._transaction_info(cid) is not None:
                continue
            if any(p.purpose == "TxProfile" and p.connector_id == cid for p in self.manager.profiles()):
                self.manager.on_transaction_ended(cid, 0)

    # ------------------------------------------------------------------ OCPP handlers

    async def on_set_charging_profile(self, payload: dict[str, Any]) -> dict[str, Any]:
        connector_id = payload["connectorId"]
        try:
            status = self.manager.set_profile(connector_id, payload["csChargingProfiles"])
        except UnknownConnector as exc:
            # Errata 3.39: an invalid connectorId is a CALLERROR, not Rejected.
            raise OcppError("PropertyConstraintViolation", str(exc)) from None
        return {"status": status}

    async def on_clear_charging_profile(self, payload: dict[str, Any]) -> dict[str, Any]:
        status = self.manager.clear_profile(
            id=payload.get("id"), connector_id=payload.get("connectorId"),
            purpose=payload.get("chargingProfilePurpose"), stack_level=payload.get("stackLevel"))
        return {"status": status}

    async def on_get_composite_schedule(self, payload: dict[str, Any]) -> dict[str, Any]:
        unit = payload.get("chargingRateUnit")
        if unit is not None and unit not in ("A", "W"):
            # Errata 3.24 (the schema catches it first; kept for a charger run without validation).
            raise OcppError("PropertyConstraintViolation", f"chargingRateUnit {unit!r}")
        now = self._wall_now()
        if now is None:
            return {"status": "Rejected"}   # §5.7: not able to report (the clock is not set)
        conf = self.manager.composite(payload["connectorId"], int(payload["duration"]), unit, now=now)
        if conf is None:
            return {"status": "Rejected"}   # §5.7: unknown connectorId
        return conf

    # ------------------------------------------------------------------ status

    def schedule(self, connector_id: int, duration_s: int) -> dict[str, Any] | None:
        """`chargepoint status --schedule HOURS`: the composite schedule from now."""
        now = self._wall_now()
        if now is None:
            return None
        conf = self.manager.composite(connector_id, duration_s, now=now)
        if conf is None:
            return None
        return {"scheduleStart": conf["scheduleStart"], **conf["chargingSchedule"]}

    def _contribute_status(self, connector_id: int, entry: dict[str, Any]) -> None:
        enforced = self._enforced.get(connector_id)
        entry["limit"] = {
            "current_a": None if enforced is None else enforced.current_a,
            "source": None if enforced is None else enforced.source,
        }

    def enforced(self, connector_id: int) -> Enforced | None:
        """The last limit handed to the connector's controller."""
        return self._enforced.get(connector_id)

    # ------------------------------------------------------------------ evaluation

    def _wall_now(self) -> datetime | None:
        """Wall time to place ourselves in a schedule, or None when the clock cannot be believed."""
        clock = self.app.clock
        if clock.plausible:   # synced, or a system clock not before the build date (an RTC)
            return clock.now()
        if not self._clock_warned:
            log.warning("clock not set: charging profiles cannot be evaluated until it is")
            self._clock_warned = True
        return None

    def failsafe_active(self) -> bool:
        if self._failsafe_a is None:
            return False
        self._track_online()
        since = self._offline_since_s
        return since is not None and self.app.clock.monotonic_s() - since >= self._failsafe_after_s

    def _track_online(self) -> None:
        if self.app.online:
            self._offline_since_s = None
        elif self._offline_since_s is None:
            self._offline_since_s = self.app.clock.monotonic_s()

    def evaluate(self, connector_id: int, *, plan: bool = True) -> Enforced:
        """The limit to enforce on the connector now (pure apart from reading the clock).

        `plan=False` leaves `next_change` None: the limit alone, for wake(), which must hand it
        to the controller at once; the loop plans the next change afterwards (plan()).
        """
        return self._evaluate_at(connector_id, self._wall_now(), plan=plan)

    def _evaluate_at(self, connector_id: int, now: datetime | None, *, plan: bool) -> Enforced:
        limit_a: float | None = None
        source: str | None = None
        next_change: datetime | None = None
        if now is not None:
            found = self.manager.current_limit(connector_id, now)
            if found is not None:
                # Never above the profile: floor to the 0.1 A the pilot and the schema work in.
                limit_a = floor_tenth(found.current_a)
                source = f"{found.purpose} #{found.profile_id}"
            if plan:
                next_change = self.manager.next_change_at(connector_id, now)
        failsafe = self._failsafe_a is not None and (now is None or self.failsafe_active())
        if failsafe and self._failsafe_a is not None and (limit_a is None or self._failsafe_a < limit_a):
            limit_a, source = float(self._failsafe_a), FAILSAFE_SOURCE
        return Enforced(limit_a, source, next_change)

    def _evaluate_safely(self, connector_id: int, *, plan: bool = True, now: datetime | None = None) -> Enforced:
        try:
            return self._evaluate_at(connector_id, self._wall_now() if now is None else now, plan=plan)
        except Exception:
            # A bug must not lift a limit: keep the last one, lowered to the fail-safe if configured.
            log.exception("connector %d: smart-charging evaluation failed", connector_id)
            decision = self._enforced.get(connector_id) or Enforced(None, None, None)
            failsafe_a = self._failsafe_a
            if failsafe_a is not None and (decision.current_a is None or failsafe_a < decision.current_a):
                decision = Enforced(float(failsafe_a), FAILSAFE_SOURCE, None)
            return decision

    def _apply(self, connector_id: int, decision: Enforced) -> None:
        # The controller logs the change (one line per event).
        self._enforced[connector_id] = decision
        self.app.controllers[connector_id].set_limit_a(decision.current_a, decision.source)

    def _plan(self, connector_id: int, decision: Enforced, at: datetime | None) -> Enforced:
        """`decision` (applied by wake() at wall time `at`) with its next change: when the
        limit changes by the clock alone, from the same instant the limit was evaluated at."""
        if at is None:
            return decision
        try:
            planned = Enforced(decision.current_a, decision.source, self.manager.next_change_at(connector_id, at))
        except Exception:
            log.exception("connector %d: smart-charging planning failed", connector_id)
            return decision   # no boundary known: re-checked every TICK_S
        if self._enforced.get(connector_id) is decision:
            self._enforced[connector_id] = planned
        return planned

    def _sleep_s(self, decision: Enforced) -> float:
        clock = self.app.clock
        delay = TICK_S if self._failsafe_a is not None or self.manager.profiles() else IDLE_TICK_S
        if decision.next_change is not None:
            until = (decision.next_change.timestamp() - clock.wall_s()) + BOUNDARY_MARGIN_S
            delay = min(delay, max(until, BOUNDARY_MARGIN_S))
        if self._failsafe_a is not None and self._offline_since_s is not None:
            until = self._offline_since_s + self._failsafe_after_s - clock.monotonic_s()
            if until > 0:
                delay = min(delay, until + BOUNDARY_MARGIN_S)
        return delay

    # ------------------------------------------------------------------ wake-ups

    def wake(self) -> None:
        """Re-evaluate every connector now (profiles, transactions or the link changed).

        The new limit is handed to the controllers synchronously, inside the caller's
        stack: a RemoteStartTransaction TxProfile installed by TransactionStarted is in
        place before the controller may close the contactor, and a lowered limit never
        waits for a task switch. The loops are woken to re-plan their sleep: finding the
        next change is their work, after the caller (e.g. SetChargingProfile's answer) is
        done, and the limit is not evaluated a second time.
        """
        for cid, event in self._wakes.items():
            now = self._wall_now()
            self._apply(cid, self._evaluate_safely(cid, plan=False, now=now))
            self._unplanned[cid] = now
            event.set()

    def _on_link_state(self, _state: str) -> None:
        self._track_online()
        self.wake()

    def _on_online(self) -> None:
        self._offline_since_s = None
        self.wake()

    # ------------------------------------------------------------------ the loops

    async def run(self) -> None:
        self._subscribe_transactions()
        self._purge_orphan_tx_profiles()
        async with asyncio.TaskGroup() as group:
            for cid in self._connector_ids:
                group.create_task(self._enforce(cid), name=f"smart-charging-{cid}")

    async def _enforce(self, connector_id: int) -> None:
        wake = self._wakes[connector_id]
        self._unplanned.pop(connector_id, None)   # the first turn evaluates in full
        while True:
            wake.clear()
            current = self._enforced.get(connector_id)
            if connector_id in self._unplanned and current is not None:
                # wake() applied the limit already: only its next change is to be found.
                decision = self._plan(connector_id, current, self._unplanned.pop(connector_id))
            else:
                decision = self._evaluate_safely(connector_id)
                self._apply(connector_id, decision)
            inputs = self._tick_inputs()
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._sleep_s(decision)):
                        await wake.wait()
                # A tick with nothing new (no wake-up, no clock step, no boundary, no
                # fail-safe change) costs no evaluation: keeps an idle charger idle.
                if wake.is_set() or self._tick_inputs() != inputs or self._boundary_reached(decision):
                    break

    def _tick_inputs(self) -> tuple[float | None, bool, bool]:
        clock = self.app.clock
        return clock.offset_s, clock.plausible, self.failsafe_active()

    def _boundary_reached(self, decision: Enforced) -> bool:
        return decision.next_change is not None and self.app.clock.wall_s() >= decision.next_change.timestamp()
