"""Charging sessions and OCPP transactions (Core profile).

OCPP 1.6 §4.8 StartTransaction, §4.10 StopTransaction, §5.11/§5.12 Remote
Start/Stop (errata 3.32, 3.33, 3.41), §3.5.4 and errata 3.17 (a StartTransaction.conf
that is not Accepted), §3.7 (transaction messages are queued durably and
delivered in order), errata 3.18 (transactionId -1 only for a Start that was
discarded), §4.9 with errata 3.21 / 3.77 (ConnectionTimeOut), §3.10 (stop by the
same idTag or one of the same parentIdTag group), field-notes §6.

How a transaction starts
- Plug first: Plugged -> the connector is Preparing (the controller derives it);
  a card is presented -> authorized (app.auth) -> the transaction starts.
- Identification first: a card is presented and authorized -> Preparing while
  waiting for the plug; no plug within ConnectionTimeOut -> cancelled, back to
  the previous status (typically Available). A pending authorization moves to
  another free connector if the EV is plugged in there instead.
- RemoteStartTransaction: Accepted when the connector (given, or chosen) can
  start; then, after the CALLRESULT, authorized first when
  AuthorizeRemoteTxRequests is true, and started at once (EV plugged) or
  pending as above.
- Free vend ([authorization] free_vend_id_tag): plugging in starts a
  transaction with that idTag at once, no Authorize.req. The central system's
  StartTransaction.conf still rules (StopTransactionOnInvalidId).
- Which connector a card is for: the reader is station-wide. A card that
  started a transaction (or belongs to its group) stops it. Otherwise the
  transaction goes to a connector that can start, in this order: the
  connector named by the simulator's `sim.swipe --connector` (informative, used
  only when that connector can start), a plugged connector not in Finishing, a
  plugged connector in Finishing (§4.9 F2: the user restarts), then a free
  unplugged connector (identification first).
- A connector can start when it has no transaction, is Operative (kv
  "availability" of the connector and of connector 0), is not Faulted, and is
  not Reserved for another idTag (app.reservations / app.reservation, when
  present: `reservation_for(connector_id, id_tag) -> reservation_id | None` and
  `blocks(connector_id, id_tag) -> bool`; the reservation is
  `consume(reservation_id)`d when the idTag is accepted (§4.9 G2) and its id
  goes into StartTransaction.req, §4.8).
- Plug first without any card keeps the connector Preparing: no B6 time-out
  (errata 3.20 MAY), because the platform starts transactions remotely later.

Start: meterStart is the meter's own energy register in whole Wh (read fresh);
the transaction row and its StartTransaction.req are committed together
(store.transaction) before energy is allowed; TransactionStarted listeners run
synchronously before the contactor may close (smart charging installs the
TxProfile of a RemoteStartTransaction there). StartTransaction.conf: the
central system's transactionId; idTagInfo updates the cache; not Accepted ->
StopTransactionOnInvalidId true: stopped with reason DeAuthorized, false: energy
suspended, the transaction stays (SuspendedEVSE); MaxEnergyOnInvalidId > 0 lets
that much energy (Wh since meterStart) flow first.

Stop: by the same card (no Authorize.req, §3.4) or a card of the same
parentIdTag group (Authorized first, §4.1), RemoteStopTransaction (reason
Remote), EV unplugged (StopTransactionOnEVSideDisconnect true: EVDisconnected;
false: the transaction stays, SuspendedEV "EV side disconnected", §4.9),
Reset / ChangeAvailability / UnlockConnector callers (`stop`, `stop_all`).
Energy stops first; then meterStop (register, Wh, never below meterStart), the
StopTransaction.req (reason; idTag only when a card stopped it;
transactionData from app.metering.transaction_data(local_id) when there is
one) and the row's stop_queued flag are committed together. A still-plugged
connector shows Finishing until unplugged.

Power loss (field-notes §6): the last meter reading of each running
transaction is persisted every `persist_interval_s` while it changes. At
construction (before the link starts, so before anything is sent), every
transaction in the store whose stop was not queued is ended with a
StopTransaction.req: reason PowerLoss, or the reset reason if kv ("reset",
"reason") records that a Reset was in progress (SoftReset / HardReset / Reboot;
the Reset service, which owns the flag, clears it once the restarted daemon
runs), with its last persisted meter value and time.
`mark_stop_queued` makes this idempotent: never a second stop. Transactions are
not resumed: a connector that had one shows Finishing if the EV is still
plugged (the user re-identifies, §4.9 F2); with free vend a new transaction
starts.

Delivery: this service owns the TransactionMessageSender (services/tx_delivery.py)
of the durable queue: online when connected and Accepted; it fills in the
central system's transactionId at send time, so no message is ever sent with a
provisional id, and -1 only per errata 3.18.

The cable lock (§4.10, §9.1.33, errata 3.5): the controller locks while an EV
is plugged with energy allowed. This service also makes it hold the cable with the
EV side unplugged (`set_lock_held`): during a transaction when
StopTransactionOnEVSideDisconnect or UnlockConnectorOnEVSideDisconnect is false
(set before the plug can go, the controller acts on the unplug in the same step);
after an EVDisconnected stop with UnlockConnectorOnEVSideDisconnect false, and
after a DeAuthorized stop of a transaction a card started (errata 3.5 SHOULD; not
for remote or free-vend starts, whose user may have no card), until the same idTag
or one of its parentIdTag group (as known locally) is presented, or an
UnlockConnector. Such a hold is persisted (kv "lock_hold"), the connector shows
Finishing meanwhile and no other idTag starts there. Every other stop unlocks
(§4.10 "as part of the normal transaction termination").

A new transaction on a Finishing or Reserved connector passes through Preparing
(§4.9 F2 / G2: neither row allows Charging or Suspended directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from chargepoint.clock import EventTime
from chargepoint.evse.controller import ConnectorEvent, Plugged, StatusChanged, Unplugged
from chargepoint.evse.status import ChargePointStatus
from chargepoint.ocppj.session import Reply
from chargepoint.services.authorization import ACCEPTED, same_group
from chargepoint.services.tx_delivery import TransactionMessageSender, clock_time_resolver
from chargepoint.store.queue import time_ref

if TYPE_CHECKING:
    from chargepoint.app import ChargePointApp

log = logging.getLogger("chargepoint.transactions")
# idTags are peer data (CiString20 allows any character, from the central system or a card):
# logged with %r, so a CR/LF in one cannot forge a log line (one line per event,
# docs/ARCHITECTURE.md; found by the schema fuzz).

# Reasons of OCPP 1.6 §7.36 that a Reset in progress stands for after a restart.
RESET_REASONS = frozenset({"SoftReset", "HardReset", "Reboot"})
REASONS = frozenset({"DeAuthorized", "EmergencyStop", "EVDisconnected", "HardReset", "Local", "Other", "PowerLoss",
                     "Reboot", "Remote", "SoftReset", "UnlockCommand"})
RESET_KV = ("reset", "reason")
LOCK_HOLD_NS = "lock_hold"   # connectorId -> {"id_tag", "parent"}: who may release the cable
# Keys that decide whether a transaction's cable stays locked with the EV side unplugged.
LOCK_POLICY_KEYS = frozenset({"StopTransactionOnEVSideDisconnect", "UnlockConnectorOnEVSideDisconnect"})
# A clean stop waits at most this long for queued messages to reach the central system.
SHUTDOWN_DELIVERY_S = 3.0

PERSIST_INTERVAL_S = 5.0   # last meter value for a PowerLoss stop (flash writes vs lost Wh)
# While a transaction runs: MaxEnergyOnInvalidId and persistence follow the meter readings,
# which come without an event here. Idle, the loop sleeps until the earliest ConnectionTimeOut
# deadline (or until an authorization or a transaction starts).
TICK_S = 0.5


# --------------------------------------------------------------------------- public types


@dataclass
class ActiveTransaction:
    local_id: int
    connector_id: int
    id_tag: str
    transaction_id: int | None          # the central system's, None until StartTransaction.conf
    start_time: datetime | None         # None while the clock is not synchronised
    meter_start_wh: int
    reservation_id: int | None = None
    parent_id_tag: str | None = None
    start_event: EventTime | None = None
    id_tag_status: str | None = None     # idTagInfo.status of StartTransaction.conf
    remote: bool = False
    invalid_limit_wh: float | None = None  # MaxEnergyOnInvalidId: register value at which to act


@dataclass(frozen=True)
class TransactionStarted:
    local_id: int
    connector_id: int
    id_tag: str


@dataclass(frozen=True)
class TransactionConfirmed:
    local_id: int
    transaction_id: int


@dataclass(frozen=True)
class TransactionStopped:
    local_id: int
    connector_id: int
    transaction_id: int | None
    reason: str


TransactionEvent = TransactionStarted | TransactionConfirmed | TransactionStopped


@dataclass
class _Pending:
    """Identification first: authorized, waiting for the plug (Preparing, ConnectionTimeOut)."""

    id_tag: str
    info: dict[str, Any]
    connector_id: int
    deadline_s: float
    bound: bool                 # RemoteStartTransaction with a connectorId: never moves
    remote: bool
    has_profile: bool
    reservation_id: int | None


# --------------------------------------------------------------------------- the service


class TransactionService:
    """app.transactions."""

    def __init__(self, app: ChargePointApp, *, persist_interval_s: float = PERSIST_INTERVAL_S,
                 tick_s: float = TICK_S) -> None:
        self.app = app
        self.persist_interval_s = persist_interval_s
        self.tick_s = tick_s
        self._active: dict[int, ActiveTransaction] = {}
        self._pending: dict[int, _Pending] = {}
        self._locks = {cid: asyncio.Lock() for cid in app.controllers}
        self._swipe_lock = asyncio.Lock()
        self._swipe_hint: int | None = None
        self._listeners: list[Callable[[TransactionEvent], None]] = []
        self._persisted: dict[int, tuple[float, float]] = {}   # local_id -> (monotonic_s, energy_wh)
        self._recovered: set[int] = set()   # connectors whose transaction a power loss ended
        self._holds: dict[int, tuple[str, str | None]] = {}   # cable held after a stop: (idTag, parent)
        self._wake = asyncio.Event()   # the loop's deadlines changed (an authorization, a transaction)

        config = app.config
        self.sender = TransactionMessageSender(
            store=app.store,
            call=self._call,
            attempts=lambda: config.get_int("TransactionMessageAttempts"),
            retry_interval_s=lambda: float(config.get_int("TransactionMessageRetryInterval")),
            resolve_time=clock_time_resolver(app.clock),
            on_start_confirmed=self._on_start_confirmed,
            on_stop_confirmed=self._on_stop_confirmed,
            monotonic=app.clock.monotonic_s,
            clock_poll_s=1.0,
        )
        # The one sender working the durable queue; other services (security events) wake it.
        app.tx_sender = self.sender
        app.on("RemoteStartTransaction", self.on_remote_start)
        app.on("RemoteStopTransaction", self.on_remote_stop)
        app.add_connector_listener(self._on_connector_event)
        app.add_link_listener(self._on_link_state)
        app.registration.on_accepted(self._on_accepted)
        app.add_connector_status_contributor(self._contribute)
        app.board.id_reader.set_listener(self.on_id_tag)
        sim = app.board.extra.get("sim")
        if sim is not None and hasattr(sim, "add_listener"):
            sim.add_listener(self._on_sim_change)
        app.config.add_listener(self._on_config_change)
        app.transactions = self
        self._recover()
        self._restore_holds()

    # ----------------------------------------------------------------- public API

    def active(self, connector_id: int) -> ActiveTransaction | None:
        tx = self._active.get(connector_id)
        if tx is not None and tx.start_time is None and tx.start_event is not None:
            tx.start_time = self.app.clock.resolve(tx.start_event)
        return tx

    def transactions(self) -> list[ActiveTransaction]:
        return [tx for cid in sorted(self._active) if (tx := self.active(cid)) is not None]

    def by_transaction_id(self, transaction_id: int) -> ActiveTransaction | None:
        return next((tx for tx in self._active.values() if tx.transaction_id == transaction_id), None)

    def by_local_id(self, local_id: int) -> ActiveTransaction | None:
        return next((tx for tx in self._active.values() if tx.local_id == local_id), None)

    def add_listener(self, callback: Callable[[TransactionEvent], None]) -> None:
        """callback(TransactionStarted | TransactionConfirmed | TransactionStopped), synchronously."""
        self._listeners.append(callback)

    def notify_queue(self) -> None:
        """Something was enqueued in app.store.queue (e.g. MeterValues): wake the sender."""
        self.sender.notify()

    def lock_holder(self, connector_id: int) -> str | None:
        """The idTag whose presentation releases a cable held after its transaction stopped."""
        hold = self._holds.get(connector_id)
        return hold[0] if hold is not None else None

    def release_lock(self, connector_id: int, why: str) -> bool:
        """Let the connector's cable go (its user's idTag, UnlockConnector); True if one was held."""
        controller = self.app.controllers.get(connector_id)
        if controller is None:
            return False
        held = self._holds.pop(connector_id, None) is not None
        if held:
            self.app.store.kv_delete(LOCK_HOLD_NS, str(connector_id))
            log.info("connector %d: cable released (%s)", connector_id, why)
        if connector_id not in self._active:
            controller.set_lock_held(False)
        return held

    def pending_id_tag(self, connector_id: int) -> str | None:
        pending = self._pending.get(connector_id)
        return pending.id_tag if pending is not None else None

    async def stop(self, connector_id: int, reason: str, *, id_tag: str | None = None) -> bool:
        """End the connector's transaction; True when a StopTransaction.req was queued.
        Also cancels an authorization waiting for the plug there (then False)."""
        self._cancel_pending(connector_id, "transaction stop requested")
        if reason not in REASONS:
            log.warning("unknown stop reason %r; using Other", reason)
            reason = "Other"
        async with self._locks[connector_id]:
            tx = self._active.pop(connector_id, None)
            if tx is None:
                return False
            controller = self.app.controllers[connector_id]
            # Energy off and the session over in one step of the controller: Charging -> Finishing.
            controller.set_energy_allowed(False)
            controller.set_transaction_active(False)
            controller.set_finishing(controller.plugged)
            # Before any await: the controller must not see a step without the decision.
            if self._keeps_cable(tx, reason):
                self._hold_lock(connector_id, tx.id_tag, tx.parent_id_tag or self._parent_of(tx.id_tag), reason)
            else:
                controller.set_lock_held(False)   # §4.10: normal termination unlocks the cable
            energy_wh = await self._read_energy_wh(connector_id)
            meter_stop_wh = self._meter_stop_wh(tx.meter_start_wh, energy_wh, tx.local_id)
            queued = self._queue_stop(tx.local_id, meter_stop_wh, self.app.clock.event_time(), reason, id_tag)
            self._persisted.pop(tx.local_id, None)
            log.info("transaction local %d (id %s) on connector %d stopped: %s, meterStop %d Wh",
                     tx.local_id, tx.transaction_id, connector_id, reason, meter_stop_wh)
            self._emit(TransactionStopped(tx.local_id, connector_id, tx.transaction_id, reason))
            self.sender.notify()
            return queued

    async def stop_all(self, reason: str) -> None:
        """Stop every transaction (Reset and friends); returns once their stops are queued.
        A reset reason is recorded first, so a power cut in between still stops with it."""
        if reason in RESET_REASONS:
            self.app.store.kv_put(*RESET_KV, reason)
        for cid in list(self._pending):
            self._cancel_pending(cid, reason)
        await asyncio.gather(*(self.stop(cid, reason) for cid in list(self._active)))

    async def start(self, connector_id: int, id_tag: str, *, reservation_id: int | None = None,
                    parent_id_tag: str | None = None) -> ActiveTransaction | None:
        """Start a transaction now, already authorized (free vend, tests, tools). None if it cannot."""
        info: dict[str, Any] = {"status": ACCEPTED}
        if parent_id_tag:
            info["parentIdTag"] = parent_id_tag
        return await self._start(connector_id, id_tag, info, reservation_id=reservation_id)

    async def shutdown(self) -> None:
        """A clean stop (SIGTERM, Reset): end what is running with reason Reboot (a Reset has
        already stopped its transactions with SoftReset/HardReset), and give the queue a few
        seconds to deliver; whatever is not delivered stays queued for the next start."""
        if self._active:
            log.info("stopping %d transaction(s): the daemon is shutting down", len(self._active))
            await self.stop_all("Reboot")
        deadline_s = self.app.clock.monotonic_s() + SHUTDOWN_DELIVERY_S
        # The count lives in SQLite: a short, bounded poll.
        while (self.app.online and self.app.store.queue.pending_count() > 0  # noqa: ASYNC110
               and self.app.clock.monotonic_s() < deadline_s):
            await asyncio.sleep(0.05)

    # ----------------------------------------------------------------- power-loss recovery

    def _recover(self) -> None:
        store = self.app.store
        recorded = store.kv_get(*RESET_KV)
        reason = recorded if recorded in RESET_REASONS else "PowerLoss"
        for rec in store.transactions.open_transactions():
            meter_wh = rec.last_meter_wh if rec.last_meter_wh is not None else rec.start_meter_wh
            when = rec.last_meter_time or rec.start_time
            meter_stop_wh = self._meter_stop_wh(int(rec.start_meter_wh), meter_wh, rec.local_id)
            if self._queue_stop(rec.local_id, meter_stop_wh, when, reason, None):
                log.warning("transaction local %d (id %s) on connector %d was running at shutdown: "
                            "StopTransaction %s queued with meterStop %d Wh", rec.local_id, rec.transaction_id,
                            rec.connector_id, reason, meter_stop_wh)
            if rec.connector_id in self.app.controllers:
                self._recovered.add(rec.connector_id)
        if not self.app.settings.authorization.free_vend_id_tag:
            # The session ended without the user: Finishing while the EV is still plugged
            # (cleared after the controller's first step if it is not).
            for cid in self._recovered:
                self.app.controllers[cid].set_finishing(True)

    # ----------------------------------------------------------------- card reader

    def _on_sim_change(self, change: Any) -> None:
        if getattr(change, "kind", None) == "swipe":
            self._swipe_hint = getattr(change, "connector_id", None)

    async def on_id_tag(self, id_tag: str) -> None:
        """A card was presented at the station's reader."""
        hint, self._swipe_hint = self._swipe_hint, None
        async with self._swipe_lock:
            await self._handle_card(id_tag, hint)

    async def _handle_card(self, id_tag: str, hint: int | None) -> None:
        for tx in list(self._active.values()):
            if tx.id_tag.casefold() == id_tag.casefold():
                # §3.4 / §4.1: the same idTag stops without an Authorize.req.
                await self.stop(tx.connector_id, "Local", id_tag=id_tag)
                return
        for held_cid, (holder, parent) in list(self._holds.items()):
            if same_group(holder, parent, id_tag, self._parent_of(id_tag)):
                # §4.10 / errata 3.5: the user's own idTag (or its group) releases the cable.
                self.release_lock(held_cid, f"idTag {id_tag} presented")
                return
        for pending in list(self._pending.values()):
            if pending.id_tag.casefold() == id_tag.casefold():
                self._cancel_pending(pending.connector_id, "idTag presented again")   # §4.9 B1
                return
        result = await self.app.auth.check(id_tag)
        if not result.accepted:
            log.info("idTag %r refused (%s): no transaction", id_tag, result.info.get("status"))
            return
        for tx in list(self._active.values()):
            if same_group(tx.id_tag, tx.parent_id_tag or self.app.auth.parent_of(tx.id_tag), id_tag,
                          result.parent_id_tag):
                await self.stop(tx.connector_id, "Local", id_tag=id_tag)   # §3.10: same group
                return
        cid = self._choose_connector(hint, id_tag)
        if cid is None:
            log.info("idTag %r accepted but no connector can start a transaction", id_tag)
            return
        await self._begin_authorized(cid, id_tag, result.info, remote=False, bound=False, has_profile=False)

    # ----------------------------------------------------------------- remote start / stop

    async def on_remote_start(self, payload: dict[str, Any]) -> dict[str, Any] | Reply:
        id_tag = str(payload["idTag"])
        connector_id = payload.get("connectorId")
        profile = payload.get("chargingProfile")
        if connector_id is None:
            cid = self._choose_connector(None, id_tag)
        elif connector_id in self.app.controllers and self._can_start(connector_id, id_tag):
            cid = connector_id
        else:
            cid = None
        if cid is None:
            log.info("RemoteStartTransaction for %r on connector %s rejected: no connector can start",
                     id_tag, connector_id)
            return {"status": "Rejected"}
        if profile is not None and not self._accept_remote_profile(cid, profile):
            return {"status": "Rejected"}

        def after_sent() -> None:
            self.app.spawn(self._remote_start(cid, id_tag, bound=connector_id is not None,
                                              has_profile=profile is not None), f"remote-start-{cid}")

        return Reply({"status": "Accepted"}, after_sent=after_sent)

    def _accept_remote_profile(self, cid: int, profile: dict[str, Any]) -> bool:
        # §5.16.2 / errata 3.41: a TxProfile without transactionId.
        if profile.get("chargingProfilePurpose") != "TxProfile" or "transactionId" in profile:
            log.info("RemoteStartTransaction rejected: chargingProfile must be a TxProfile without transactionId")
            return False
        smart = self.app.smart_charging
        hook = None
        if smart is not None:
            hook = getattr(smart, "on_remote_start_profile", None) or getattr(smart, "remote_start_profile", None)
        if hook is None:
            log.warning("RemoteStartTransaction chargingProfile ignored: no smart charging service")
            return True
        verdict = hook(cid, profile)
        return verdict is not False and verdict != "Rejected"

    def _discard_remote_profile(self, cid: int) -> None:
        smart = self.app.smart_charging
        discard = getattr(smart, "discard_remote_start_profile", None) if smart is not None else None
        if discard is not None:
            discard(cid)

    async def _remote_start(self, cid: int, id_tag: str, *, bound: bool, has_profile: bool) -> None:
        if self.app.config.get_bool("AuthorizeRemoteTxRequests"):
            # §5.11: behave as for a local action: authorize first.
            result = await self.app.auth.check(id_tag)
            if not result.accepted:
                log.info("RemoteStartTransaction for %r: not authorized (%s)", id_tag, result.info.get("status"))
                if has_profile:
                    self._discard_remote_profile(cid)
                return
            info = result.info
        else:
            # The central system checks the idTag when it answers StartTransaction (§5.11).
            info = {"status": ACCEPTED}
        if not self._can_start(cid, id_tag):
            log.info("RemoteStartTransaction for %r: connector %d can no longer start", id_tag, cid)
            if has_profile:
                self._discard_remote_profile(cid)
            return
        await self._begin_authorized(cid, id_tag, info, remote=True, bound=bound, has_profile=has_profile)

    async def on_remote_stop(self, payload: dict[str, Any]) -> dict[str, Any] | Reply:
        tx = self.by_transaction_id(payload["transactionId"])
        if tx is None:
            return {"status": "Rejected"}   # errata 3.33: Accepted only for an ongoing transaction
        cid = tx.connector_id

        def after_sent() -> None:
            self.app.spawn(self.stop(cid, "Remote"), f"remote-stop-{cid}")

        return Reply({"status": "Accepted"}, after_sent=after_sent)

    # ----------------------------------------------------------------- choosing and gating

    def _reservations(self) -> Any:
        return getattr(self.app, "reservations", None) or getattr(self.app, "reservation", None)

    def _reservation_for(self, cid: int, id_tag: str) -> tuple[bool, int | None]:
        """(may start here, reservation id to use)."""
        svc = self._reservations()
        reservation_id = None
        if svc is not None and hasattr(svc, "reservation_for"):
            reservation_id = svc.reservation_for(cid, id_tag)
        if reservation_id is not None:
            return True, reservation_id
        if svc is not None and hasattr(svc, "blocks"):
            # Also counts connector-0 reservations that need this connector (§5.13).
            return not svc.blocks(cid, id_tag), None
        status = self.app.controllers[cid].status
        return not (status is not None and str(status.status) == "Reserved"), None

    def _operative(self, cid: int) -> bool:
        store = self.app.store
        if store.kv_get("availability", "0", "Operative") == "Inoperative":
            return False
        if store.kv_get("availability", str(cid), "Operative") == "Inoperative":
            return False
        return bool(self.app.controllers[cid].snapshot().get("available", True))

    def _can_start(self, cid: int, id_tag: str) -> bool:
        if cid in self._active:
            return False
        pending = self._pending.get(cid)
        if pending is not None and pending.id_tag.casefold() != id_tag.casefold():
            return False
        if not self._operative(cid):
            return False
        hold = self._holds.get(cid)
        if hold is not None and not same_group(hold[0], hold[1], id_tag, self._parent_of(id_tag)):
            return False   # the cable is held for its user (errata 3.5): not for a new one
        status = self.app.controllers[cid].status
        if status is not None and str(status.status) == "Faulted":
            return False
        return self._reservation_for(cid, id_tag)[0]

    def _choose_connector(self, hint: int | None, id_tag: str) -> int | None:
        candidates = [cid for cid in sorted(self.app.controllers) if self._can_start(cid, id_tag)]
        if hint in candidates:
            return hint

        def rank(cid: int) -> int:
            controller = self.app.controllers[cid]
            status = controller.status
            if controller.plugged:
                return 1 if status is not None and str(status.status) == "Finishing" else 0
            return 2

        return min(candidates, key=rank) if candidates else None

    # ----------------------------------------------------------------- start flows

    async def _begin_authorized(self, cid: int, id_tag: str, info: dict[str, Any], *, remote: bool, bound: bool,
                                has_profile: bool) -> None:
        """An accepted idTag for connector cid: start now if plugged, else wait for the plug."""
        ok, reservation_id = self._reservation_for(cid, id_tag)
        if not ok:
            log.info("connector %d is reserved for another idTag; %r refused", cid, id_tag)
            if has_profile:
                self._discard_remote_profile(cid)
            return
        self._consume_reservation(reservation_id)
        if self.app.controllers[cid].plugged:
            tx = await self._start(cid, id_tag, info, reservation_id=reservation_id, remote=remote)
            if tx is None and has_profile:
                self._discard_remote_profile(cid)
            return
        timeout_s = float(self.app.config.get_int("ConnectionTimeOut"))
        self._pending[cid] = _Pending(id_tag, dict(info), cid, self.app.clock.monotonic_s() + timeout_s, bound,
                                      remote, has_profile, reservation_id)
        self.app.controllers[cid].set_preparing(True)
        self._wake.set()   # the loop may be asleep with no deadline, or a later one
        log.info("idTag %r authorized on connector %d: waiting %.0f s for the plug (ConnectionTimeOut)",
                 id_tag, cid, timeout_s)

    def _consume_reservation(self, reservation_id: int | None) -> None:
        svc = self._reservations()
        if reservation_id is not None and svc is not None and hasattr(svc, "consume"):
            svc.consume(reservation_id)

    def _cancel_pending(self, cid: int, why: str) -> None:
        pending = self._pending.pop(cid, None)
        if pending is None:
            return
        self.app.controllers[cid].set_preparing(False)
        if pending.has_profile:
            self._discard_remote_profile(cid)
        log.info("authorization of %r on connector %d cancelled: %s", pending.id_tag, cid, why)

    def _pending_for_plug(self, cid: int) -> _Pending | None:
        """The authorization a plug on connector cid completes (its own, or a movable one)."""
        pending = self._pending.pop(cid, None)
        if pending is not None:
            return pending
        for other, candidate in list(self._pending.items()):
            if not candidate.bound and not self.app.controllers[other].plugged \
                    and self._can_start(cid, candidate.id_tag):
                del self._pending[other]
                self.app.controllers[other].set_preparing(False)
                candidate.connector_id = cid
                return candidate
        return None

    async def _start(self, cid: int, id_tag: str, info: dict[str, Any], *, reservation_id: int | None = None,
                     remote: bool = False) -> ActiveTransaction | None:
        async with self._locks[cid]:
            if cid in self._active:
                log.info("connector %d already has a transaction; %r not started", cid, id_tag)
                return None
            if not self._operative(cid):
                log.info("connector %d is Inoperative; %r not started", cid, id_tag)
                return None
            energy_wh = await self._read_energy_wh(cid)
            meter_start_wh = max(0, math.floor(energy_wh)) if energy_wh is not None else 0
            if energy_wh is None:
                log.error("connector %d: no meter reading; meterStart 0", cid)
            t = self.app.clock.event_time()
            payload: dict[str, Any] = {"connectorId": cid, "idTag": id_tag, "meterStart": meter_start_wh,
                                       "timestamp": time_ref(t)}
            if reservation_id is not None:
                payload["reservationId"] = reservation_id
            store = self.app.store
            with store.transaction():
                local_id = store.transactions.begin(connector_id=cid, id_tag=id_tag, start_meter_wh=meter_start_wh,
                                                    start_time=t, reservation_id=reservation_id)
                store.queue.enqueue("StartTransaction", payload, local_tx_id=local_id, kind="start", event_time=t)
            parent = info.get("parentIdTag")
            tx = ActiveTransaction(local_id=local_id, connector_id=cid, id_tag=id_tag, transaction_id=None,
                                   start_time=self.app.clock.resolve(t), meter_start_wh=meter_start_wh,
                                   reservation_id=reservation_id,
                                   parent_id_tag=parent if isinstance(parent, str) and parent else None,
                                   start_event=t, remote=remote)
            self._active[cid] = tx
            self._wake.set()   # the loop watches the meter while a transaction runs
            self._persisted[local_id] = (self.app.clock.monotonic_s(), float(meter_start_wh))
            self._recovered.discard(cid)
            controller = self.app.controllers[cid]
            if cid in self._holds:   # the holder (or its group) starts again: the session owns the cable
                self._holds.pop(cid)
                store.kv_delete(LOCK_HOLD_NS, str(cid))
            shown = controller.status.status if controller.status is not None else None
            if shown in (ChargePointStatus.FINISHING, ChargePointStatus.RESERVED):
                # §4.9 F2 / G2: from Finishing or Reserved a new transaction starts via Preparing.
                controller.set_finishing(False)
                controller.set_preparing(True)
                controller.step()
            controller.set_preparing(False)
            controller.set_finishing(False)
            controller.set_lock_held(self._lock_policy_holds())
            controller.set_transaction_active(True)
            log.info("transaction local %d started on connector %d for %r, meterStart %d Wh", local_id, cid,
                     id_tag, meter_start_wh)
            # Listeners first (a RemoteStart TxProfile is installed there), then energy.
            self._emit(TransactionStarted(local_id, cid, id_tag))
            controller.set_energy_allowed(True)
            self.sender.notify()
            return tx

    # ----------------------------------------------------------------- connector events

    def _on_connector_event(self, event: ConnectorEvent) -> None:
        cid = event.connector_id
        if cid not in self._locks:
            return
        if isinstance(event, Plugged):
            self._on_plugged(cid)
        elif isinstance(event, Unplugged):
            self._on_unplugged(cid)
        elif isinstance(event, StatusChanged) and cid in self._recovered:
            # First step after a power-loss recovery: Finishing only while the EV is still plugged.
            self._recovered.discard(cid)
            controller = self.app.controllers[cid]
            if not controller.plugged:
                controller.set_finishing(False)

    def _on_plugged(self, cid: int) -> None:
        if cid in self._active:
            log.info("connector %d: EV plugged in again during its transaction", cid)
            return
        pending = self._pending_for_plug(cid)
        if pending is not None:
            self.app.spawn(self._start_pending(pending), f"start-{cid}")
            return
        free_vend = self.app.settings.authorization.free_vend_id_tag
        if free_vend and self._can_start(cid, free_vend):
            # Free vend: no Authorize.req; the central system's StartTransaction.conf still rules.
            self.app.spawn(self._start(cid, free_vend, {"status": ACCEPTED}), f"free-vend-{cid}")

    async def _start_pending(self, pending: _Pending) -> None:
        tx = await self._start(pending.connector_id, pending.id_tag, pending.info,
                               reservation_id=pending.reservation_id, remote=pending.remote)
        if tx is None and pending.has_profile:
            self._discard_remote_profile(pending.connector_id)

    def _on_unplugged(self, cid: int) -> None:
        if cid not in self._active:
            return
        if self.app.config.get_bool("StopTransactionOnEVSideDisconnect"):
            self.app.spawn(self.stop(cid, "EVDisconnected"), f"ev-disconnected-{cid}")
        else:
            # §4.10: the transaction stays; SuspendedEV "EV side disconnected" (derived by the
            # controller); energy flows again when the EV is plugged back in.
            log.info("connector %d: EV side disconnected; transaction continues "
                     "(StopTransactionOnEVSideDisconnect false)", cid)

    # ----------------------------------------------------------------- confirmations

    def _on_start_confirmed(self, local_id: int, conf: dict[str, Any]) -> None:
        raw_info = conf.get("idTagInfo")
        info: dict[str, Any] = raw_info if isinstance(raw_info, dict) else {}
        rec = self.app.store.transactions.get(local_id)
        if rec is not None and info and self.app.auth is not None:
            self.app.auth.note_id_tag_info(rec.id_tag, info, origin="StartTransaction")
        transaction_id = int(conf["transactionId"])
        tx = self.by_local_id(local_id)
        if tx is not None:
            tx.transaction_id = transaction_id
            tx.id_tag_status = info.get("status")
            parent = info.get("parentIdTag")
            if isinstance(parent, str) and parent:
                tx.parent_id_tag = parent
        self._emit(TransactionConfirmed(local_id, transaction_id))
        if tx is not None and info.get("status") != ACCEPTED:
            self._invalidated(tx)

    def _invalidated(self, tx: ActiveTransaction) -> None:
        """Errata 3.17: StartTransaction.conf not Accepted for an ongoing transaction."""
        max_wh = self.app.config.get_int("MaxEnergyOnInvalidId")
        reading = self.app.meters.latest(tx.connector_id) if self.app.meters is not None else None
        delivered_wh = (reading.energy_wh - tx.meter_start_wh) if reading is not None else 0.0
        log.warning("transaction %s on connector %d: idTag %r is %s", tx.transaction_id, tx.connector_id,
                    tx.id_tag, tx.id_tag_status)
        if max_wh > 0 and delivered_wh < max_wh:
            tx.invalid_limit_wh = tx.meter_start_wh + max_wh   # MaxEnergyOnInvalidId (§9.1.14)
            return
        self._apply_invalid(tx)

    def _apply_invalid(self, tx: ActiveTransaction) -> None:
        tx.invalid_limit_wh = None
        if self.app.config.get_bool("StopTransactionOnInvalidId"):
            self.app.spawn(self.stop(tx.connector_id, "DeAuthorized"), f"deauthorized-{tx.connector_id}")
        else:
            self.app.controllers[tx.connector_id].set_energy_allowed(False)   # SuspendedEVSE, tx stays

    def _on_stop_confirmed(self, local_id: int, conf: dict[str, Any]) -> None:
        info = conf.get("idTagInfo")
        rec = self.app.store.transactions.get(local_id)
        if isinstance(info, dict) and rec is not None and rec.stop_id_tag and self.app.auth is not None:
            self.app.auth.note_id_tag_info(rec.stop_id_tag, info, origin="StopTransaction")

    # ----------------------------------------------------------------- delivery plumbing

    async def _call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        return await self.app.call(action, payload)

    def _on_link_state(self, state: str) -> None:
        self.sender.set_online(state == "connected" and self.app.registration.online)

    def _on_accepted(self) -> None:
        self.sender.set_online(self.app.registration.online)

    # ----------------------------------------------------------------- the cable lock

    def _lock_policy_holds(self) -> bool:
        """Does a transaction's cable stay locked when the EV side is unplugged (§4.10, §9.1.33)?
        StopTransactionOnEVSideDisconnect false has priority: always locked while it runs."""
        config = self.app.config
        return (not config.get_bool("StopTransactionOnEVSideDisconnect")
                or not config.get_bool("UnlockConnectorOnEVSideDisconnect"))

    def _keeps_cable(self, tx: ActiveTransaction, reason: str) -> bool:
        """Does the cable stay locked for its user after this stop?"""
        if reason == "EVDisconnected":
            # §9.1.33: unlocked on an EV-side unplug only when UnlockConnectorOnEVSideDisconnect.
            return not self.app.config.get_bool("UnlockConnectorOnEVSideDisconnect")
        if reason == "DeAuthorized":
            # Errata 3.5 / 3.17: keep it until the same idTag (or its group) is presented; only for
            # a card presented here (a remote or free-vend user may have no card to present).
            free_vend = self.app.settings.authorization.free_vend_id_tag
            return not tx.remote and not (free_vend and tx.id_tag == free_vend)
        return False

    def _hold_lock(self, cid: int, id_tag: str, parent: str | None, why: str) -> None:
        self._holds[cid] = (id_tag, parent)
        self.app.store.kv_put(LOCK_HOLD_NS, str(cid), {"id_tag": id_tag, "parent": parent})
        self.app.controllers[cid].set_lock_held(True)
        log.info("connector %d: cable stays locked until %r is presented (%s)", cid, id_tag, why)

    def _restore_holds(self) -> None:
        for key, value in self.app.store.kv_items(LOCK_HOLD_NS).items():
            cid = int(key)
            if cid in self.app.controllers and isinstance(value, dict) and isinstance(value.get("id_tag"), str):
                parent = value.get("parent")
                self._holds[cid] = (value["id_tag"], parent if isinstance(parent, str) else None)
                self.app.controllers[cid].set_lock_held(True)
            else:
                self.app.store.kv_delete(LOCK_HOLD_NS, key)

    def _on_config_change(self, key: str, _value: str) -> None:
        if key in LOCK_POLICY_KEYS:
            for cid in self._active:
                self.app.controllers[cid].set_lock_held(self._lock_policy_holds())

    def _parent_of(self, id_tag: str) -> str | None:
        return self.app.auth.parent_of(id_tag) if self.app.auth is not None else None

    # ----------------------------------------------------------------- helpers

    async def _read_energy_wh(self, cid: int) -> float | None:
        meters = self.app.meters
        if meters is None:
            return None
        reading = await meters.read_now(cid)
        return None if reading is None else float(reading.energy_wh)

    @staticmethod
    def _meter_stop_wh(meter_start_wh: int, energy_wh: float | None, local_id: int) -> int:
        if energy_wh is None:
            log.error("local tx %d: no meter reading at stop; meterStop = meterStart", local_id)
            return meter_start_wh
        value = math.floor(energy_wh)
        if value < meter_start_wh:
            # A register below meterStart (meter swapped or reset): never report negative energy.
            log.error("local tx %d: meter register %.1f Wh below meterStart %d Wh", local_id, energy_wh,
                      meter_start_wh)
            return meter_start_wh
        return value

    def _queue_stop(self, local_id: int, meter_stop_wh: int, when: EventTime, reason: str,
                    id_tag: str | None) -> bool:
        """StopTransaction.req and stop_queued in one commit; False if a stop was queued before."""
        store = self.app.store
        if store.queue.has_stop_for(local_id):
            return False
        payload: dict[str, Any] = {"meterStop": meter_stop_wh, "timestamp": time_ref(when), "reason": reason}
        if id_tag:
            payload["idTag"] = id_tag
        data = self._transaction_data(local_id)
        if data:
            payload["transactionData"] = data
        # transactionId is filled in at send time from the transactions table (tx_delivery).
        with store.transaction():
            if not store.transactions.mark_stop_queued(local_id, stop_meter_wh=meter_stop_wh, stop_time=when,
                                                       reason=reason, stop_id_tag=id_tag):
                return False
            store.queue.enqueue("StopTransaction", payload, local_tx_id=local_id, kind="stop", event_time=when)
        return True

    def _transaction_data(self, local_id: int) -> list[dict[str, Any]] | None:
        metering = self.app.metering
        provider = getattr(metering, "transaction_data", None) if metering is not None else None
        if provider is None:
            return None
        try:
            data = provider(local_id)
        except Exception:
            log.exception("transaction data for local tx %d failed; StopTransaction without it", local_id)
            return None
        return list(data) if data else None

    def _emit(self, event: TransactionEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("transaction listener failed on %s", type(event).__name__)

    def _contribute(self, connector_id: int, entry: dict[str, Any]) -> None:
        tx = self.active(connector_id)
        if tx is not None:
            entry["transaction_id"] = tx.transaction_id
            entry["id_tag"] = tx.id_tag
            entry["transaction"] = {
                "local_id": tx.local_id,
                "meter_start_wh": tx.meter_start_wh,
                "start_time": None if tx.start_time is None else self.app.clock.iso8601(tx.start_time),
                "id_tag_status": tx.id_tag_status,
            }
        pending = self._pending.get(connector_id)
        if pending is not None:
            entry["authorized_id_tag"] = pending.id_tag
        holder = self.lock_holder(connector_id)
        if holder is not None:
            entry["cable_held_for"] = holder

    # ----------------------------------------------------------------- the loop

    async def run(self) -> None:
        self.sender.set_online(self.app.registration.online)
        sender = asyncio.ensure_future(self.sender.run())
        try:
            while True:
                self._wake.clear()
                self._tick()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._next_tick_in_s()):
                        await self._wake.wait()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    def _next_tick_in_s(self) -> float | None:
        """How long the loop may sleep: `tick_s` while a transaction runs (its meter readings
        have no event), else until the earliest ConnectionTimeOut deadline (monotonic clock);
        None when nothing is due (woken by `_wake` when that changes)."""
        if self._active:
            return self.tick_s
        if not self._pending:
            return None
        deadline_s = min(pending.deadline_s for pending in self._pending.values())
        return max(0.0, deadline_s - self.app.clock.monotonic_s())

    def _tick(self) -> None:
        now_s = self.app.clock.monotonic_s()
        for cid, pending in list(self._pending.items()):
            if now_s >= pending.deadline_s:
                # ConnectionTimeOut (§9.1.6, errata 3.77): back to the original status.
                self._cancel_pending(cid, "no plug within ConnectionTimeOut")
        for cid, tx in list(self._active.items()):
            reading = self.app.meters.latest(cid) if self.app.meters is not None else None
            if reading is None:
                continue
            last_s, last_wh = self._persisted.get(tx.local_id, (0.0, float("nan")))
            if reading.energy_wh != last_wh and now_s - last_s >= self.persist_interval_s:
                self.app.store.transactions.update_last_meter(tx.local_id, reading.energy_wh,
                                                              self.app.clock.event_time())
                self._persisted[tx.local_id] = (now_s, reading.energy_wh)
            if tx.invalid_limit_wh is not None and reading.energy_wh >= tx.invalid_limit_wh:
                log.info("connector %d: MaxEnergyOnInvalidId reached", cid)
                self._apply_invalid(tx)
