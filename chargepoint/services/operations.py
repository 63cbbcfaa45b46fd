"""Core operations the central system initiates that belong to no feature service:
Reset, ChangeAvailability, UnlockConnector and DataTransfer.

Reset (OCPP 1.6 §5.14, errata 3.36 / 3.82): answered Accepted, then (after the
.conf is on the wire) every ongoing transaction is stopped with reason
SoftReset / HardReset through the transaction service, the StopTransactions are
queued in the durable queue (delivered before the restart when the link allows,
else after it: "it SHALL queue the StopTransaction.req"), and the daemon
re-executes itself with the same configuration and state. The reason is written
to the store first (kv "reset"/"reason"), so a power cut in the middle of the
reset still stops the transactions with the right reason at the next boot; it is
cleared once the restarted daemon runs.

ChangeAvailability (§5.2): connector 0 addresses the charge point and all its
connectors. The state persists (kv "availability"/<connectorId>: a reboot keeps
it, §5.2 "Persistent states"). Inoperative on a connector with a transaction is
answered Scheduled and applied when the transaction ends (kv
"availability_scheduled" keeps the promise across a restart). So is Inoperative on a
connector that is Preparing (an authorization or RemoteStartTransaction waiting for
the plug, or an EV plugged in waiting for an idTag): the §4.9 table has no
Preparing -> Unavailable (B8), so the change waits until the Preparing ends (B1 ->
Available -> A8, or a transaction and its end, C8 / F8), and on a connector whose
cable is still locked for its user after the transaction (F8 needs all user actions
completed; see _in_use); already in the
requested state is Accepted; an unknown connector is Rejected. An Inoperative
connector is Unavailable (the controller withholds energy and the status
follows); connector 0's status is reported here because no controller owns it.

UnlockConnector (§5.18, errata 3.87): an unknown connector is NotSupported; a
transaction on the connector is stopped first (reason UnlockCommand, §7.36); a
cable held for its user after the transaction (§4.10, errata 3.5) is let go;
then the lock gets a fresh unlock attempt: Unlocked when its feedback confirms,
UnlockFailed when it does not.

DataTransfer (§4.3, §5.6): a registry of vendor handlers. An unknown vendorId is
UnknownVendorId without data; a known vendor with an unknown messageId is
UnknownMessageId. vendorId and messageId are CiStrings (case-insensitive, §7.15).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chargepoint.evse.status import ChargePointStatus
from chargepoint.ocppj.session import Reply

if TYPE_CHECKING:
    from chargepoint.app import ChargePointApp

log = logging.getLogger("chargepoint.operations")

OPERATIVE = "Operative"
INOPERATIVE = "Inoperative"
AVAILABILITY_NS = "availability"
SCHEDULED_NS = "availability_scheduled"
RESET_NS = "reset"
RESET_REASON_KEY = "reason"

# Reset: how long to wait for the transaction service to stop everything and for the
# StopTransactions to be queued / delivered before restarting anyway (they are durable).
RESET_STOP_TIMEOUT_S = 10.0
RESET_HARD_STOP_TIMEOUT_S = 3.0
RESET_DELIVERY_TIMEOUT_S = 10.0
RESET_HARD_DELIVERY_TIMEOUT_S = 3.0
# UnlockConnector: how long the transaction stop and the controller's release may take.
UNLOCK_STOP_TIMEOUT_S = 10.0
UNLOCK_RELEASE_TIMEOUT_S = 5.0
# Without a transaction service to tell us when a transaction ends, a Scheduled availability
# change is re-checked this often (besides connector events). With one, it waits for the stop.
SCHEDULED_POLL_S = 1.0

DIAGNOSTIC_VENDOR_ID = "org.chargepoint"


# --------------------------------------------------------------------------- pure rules


def availability_targets(connector_id: int, connector_ids: Iterable[int]) -> list[int]:
    """The ids a ChangeAvailability applies to: 0 means the charge point and every connector (§5.2)."""
    ids = sorted(connector_ids)
    return [0, *ids] if connector_id == 0 else [connector_id]


@dataclass(frozen=True)
class AvailabilityPlan:
    """The answer to a ChangeAvailability and what to do now / after the transactions."""

    status: str                      # Accepted | Rejected | Scheduled
    apply_now: tuple[int, ...] = ()   # ids that change now
    schedule: tuple[int, ...] = ()    # ids that change when their transaction ends
    cancel: tuple[int, ...] = ()      # ids whose earlier Scheduled change is dropped


def plan_availability(connector_id: int, requested: str, *, connector_ids: Iterable[int],
                      current: Mapping[int, str], busy: Iterable[int]) -> AvailabilityPlan:
    """ChangeAvailability (§5.2) as a pure decision.

    `current` is the effective state per id (0 included), `busy` the connectors with a
    transaction in progress or Preparing for one (`_in_use`). Inoperative waits for a busy
    connector (Scheduled); connector 0 follows once none of its connectors waits any more. Operative never waits, and
    drops any Scheduled Inoperative for the same ids. A state already in place is Accepted.
    """
    ids = set(connector_ids)
    if connector_id != 0 and connector_id not in ids:
        return AvailabilityPlan("Rejected")
    targets = availability_targets(connector_id, ids)
    busy_set = set(busy)
    if requested == OPERATIVE:
        now = tuple(t for t in targets if current.get(t, OPERATIVE) != OPERATIVE)
        # A connector that may charge keeps the charge point operative (see the service), so
        # it also drops a Scheduled Inoperative of connector 0: applied later, that would
        # take this connector out of service again.
        return AvailabilityPlan("Accepted", apply_now=now, cancel=tuple(sorted({0, *targets})))
    waiting = tuple(t for t in targets if t != 0 and t in busy_set and current.get(t, OPERATIVE) != INOPERATIVE)
    now = tuple(t for t in targets if t != 0 and t not in waiting and current.get(t, OPERATIVE) != INOPERATIVE)
    if 0 in targets and current.get(0, OPERATIVE) != INOPERATIVE:
        if waiting:
            waiting = (0, *waiting)
        else:
            now = (0, *now)
    return AvailabilityPlan("Scheduled" if waiting else "Accepted", apply_now=now, schedule=waiting)


def reset_reason(reset_type: str) -> str:
    """StopTransaction reason for a Reset.req type (§7.36)."""
    return "HardReset" if reset_type == "Hard" else "SoftReset"


# --------------------------------------------------------------------------- helpers


def _transaction_on(app: ChargePointApp, connector_id: int) -> bool:
    """A transaction in progress on the connector: the service's view, or a started row in the store."""
    service = app.transactions
    if service is not None and hasattr(service, "active") and service.active(connector_id) is not None:
        return True
    return app.store.transactions.open_on_connector(connector_id) is not None


def _in_use(app: ChargePointApp, connector_id: int) -> bool:
    """A transaction in progress, the connector Preparing for one, or its cable still held for
    the last one's user: an Inoperative change waits (Scheduled). OCPP 1.6 §4.9 table (errata
    3.20 added B6 to it, no B8): from Preparing there is no transition to Unavailable, while
    every other status a user occupies reaches Unavailable only once that use ends with the
    connector "scheduled to become Unavailable" (C8, D8, E8, F8, G8). So Preparing is left first -- B1 (usage ended or
    ConnectionTimeOut, errata 3.21 / 3.77) then A8, or B3-B5 into a transaction whose end
    applies it (§5.2: Scheduled "will be executed when transaction(s) in progress have
    finished", §7.3). Preparing -> Unavailable at once was reported (found by the schema fuzz).

    Likewise Finishing with the cable locked for its user after the EV side left (§4.10,
    errata 3.5): F8 is "all user actions completed", and that user has yet to take the
    cable. Made Unavailable at once, it came back Finishing when set Operative (H6, not in
    the table). A Finishing connector with the EV still plugged is not waited for (F8 at the
    transaction's end, as before); the controller reports Preparing when it is set Available
    again (H2)."""
    if _transaction_on(app, connector_id):
        return True
    controller = app.controllers.get(connector_id)
    status = controller.status if controller is not None else None
    if status is None:
        return False
    return status.status == ChargePointStatus.PREPARING or (
        status.status == ChargePointStatus.FINISHING and controller is not None and controller.lock_held)


async def _wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval_s)
    return True


# --------------------------------------------------------------------------- Reset


class ResetService:
    """Reset.req (§5.14): stop every transaction (reason SoftReset/HardReset), then restart."""

    def __init__(self, app: ChargePointApp) -> None:
        self.app = app
        self.in_progress: str | None = None     # the Reset type being carried out
        self.last_reset_reason: str | None = app.store.kv_get(RESET_NS, RESET_REASON_KEY)
        self._task: asyncio.Task[Any] | None = None
        app.on("Reset", self.on_reset)
        app.add_status_contributor(self._status)

    def _status(self, result: dict[str, Any]) -> None:
        if self.in_progress is not None:
            result["reset"] = self.in_progress

    async def run(self) -> None:
        # The restarted daemon is running: the services built before this point (the
        # transaction service's boot reconciliation) have read the reason; a later power
        # cut is a PowerLoss again.
        if self.app.store.kv_get(RESET_NS, RESET_REASON_KEY) is not None and self.in_progress is None:
            self.app.store.kv_delete(RESET_NS, RESET_REASON_KEY)
            log.info("restarted after a reset (%s)", self.last_reset_reason)

    async def on_reset(self, payload: dict[str, Any]) -> dict[str, Any] | Reply:
        reset_type = str(payload["type"])
        if self.in_progress is not None:
            # Already resetting: the charger will reset, which is what was asked.
            return {"status": "Accepted"}
        self.in_progress = reset_type
        # Record the reason before anything else: a kill from here on still stops the
        # transactions with the reason of the reset at the next boot.
        self.app.store.kv_put(RESET_NS, RESET_REASON_KEY, reset_reason(reset_type))
        log.info("%s reset requested", reset_type)
        if self.app.security_events is not None:
            # Security WP §8: ResetOrReboot is a critical event, pushed (durably queued).
            self.app.security_events("ResetOrReboot", f"{reset_type} reset requested by the central system")

        def after_sent() -> None:
            # In a task of its own: the reset waits for the StopTransaction.conf, which the
            # session can only read once this inbound handler has returned.
            self._task = self.app.spawn(self._reset(reset_type), "reset")

        return Reply({"status": "Accepted"}, after_sent=after_sent)

    async def _reset(self, reset_type: str) -> None:
        reason = reset_reason(reset_type)
        hard = reset_type == "Hard"
        try:
            await self._stop_transactions(reason, RESET_HARD_STOP_TIMEOUT_S if hard else RESET_STOP_TIMEOUT_S)
            # §5.14: send the StopTransactions before restarting when we can (a Hard reset waits
            # less). The queue is durable: what is not delivered in time goes after the reboot.
            await _wait_until(lambda: not self.app.online or self.app.store.queue.pending_count() == 0,
                              RESET_HARD_DELIVERY_TIMEOUT_S if hard else RESET_DELIVERY_TIMEOUT_S)
        except Exception:
            log.exception("reset: stopping the transactions failed; restarting anyway")
        log.info("%s reset: restarting", reset_type)
        self.app.request_stop(restart=True)

    async def _stop_transactions(self, reason: str, timeout_s: float) -> None:
        service = self.app.transactions
        if service is not None and hasattr(service, "stop_all"):
            try:
                async with asyncio.timeout(timeout_s):
                    await service.stop_all(reason)
            except TimeoutError:
                log.warning("reset: transactions not stopped within %.0f s", timeout_s)
        elif self.app.store.transactions.open_transactions():
            log.warning("reset: no transaction service; the next boot stops the open transactions (%s)", reason)
            return
        # Stopped means: the StopTransaction is in the durable queue (stop_queued).
        if not await _wait_until(lambda: not self.app.store.transactions.open_transactions(), timeout_s):
            log.warning("reset: some StopTransactions not queued; the next boot stops them (%s)", reason)


# --------------------------------------------------------------------------- ChangeAvailability


class AvailabilityService:
    """ChangeAvailability.req (§5.2), persisted per connector and re-applied at start."""

    def __init__(self, app: ChargePointApp) -> None:
        self.app = app
        self._status_sender: Callable[[int], Awaitable[None]] | None = None
        app.on("ChangeAvailability", self.on_change_availability)
        app.add_connector_listener(self._on_connector_event)
        app.add_connector_status_contributor(self._connector_status)
        # A Scheduled change waits for its transaction to end (§5.2): the stop wakes the loop.
        self._wake = asyncio.Event()
        transactions = app.transactions
        self._stops_notified = transactions is not None and hasattr(transactions, "add_listener")
        if self._stops_notified:
            transactions.add_listener(self._on_transaction_event)
        # Re-apply the persisted state before the controllers' first step (§5.2: an
        # Unavailable connector stays so across a reboot).
        for cid, controller in app.controllers.items():
            controller.set_available(self.is_operative(cid))

    # ----------------------------------------------------------------- queries (other services)

    def state(self, connector_id: int) -> str:
        """The persisted state of one id (0 = the charge point itself)."""
        value = self.app.store.kv_get(AVAILABILITY_NS, str(connector_id), OPERATIVE)
        return INOPERATIVE if value == INOPERATIVE else OPERATIVE

    def is_operative(self, connector_id: int) -> bool:
        """May a new transaction start on this connector (and is the charge point operative)?"""
        if connector_id != 0 and self.state(0) == INOPERATIVE:
            return False
        return self.state(connector_id) == OPERATIVE

    def scheduled(self) -> dict[int, str]:
        """Changes answered Scheduled and not yet applied."""
        return {int(k): str(v) for k, v in self.app.store.kv_items(SCHEDULED_NS).items()}

    # ----------------------------------------------------------------- OCPP

    async def on_change_availability(self, payload: dict[str, Any]) -> dict[str, Any]:
        connector_id = int(payload["connectorId"])
        requested = str(payload["type"])
        ids = list(self.app.controllers)
        current = {i: self.state(i) for i in [0, *ids]}
        busy = [i for i in ids if _in_use(self.app, i)]
        plan = plan_availability(connector_id, requested, connector_ids=ids, current=current, busy=busy)
        if plan.status == "Rejected":
            log.info("ChangeAvailability %s on unknown connector %d: Rejected", requested, connector_id)
            return {"status": "Rejected"}
        store = self.app.store
        with store.transaction():
            for cid in plan.cancel:
                store.kv_delete(SCHEDULED_NS, str(cid))
            for cid in plan.schedule:
                store.kv_put(SCHEDULED_NS, str(cid), requested)
        for cid in plan.apply_now:
            self._apply(cid, requested)
        if requested == OPERATIVE and connector_id != 0 and self.state(0) == INOPERATIVE:
            # A connector that may charge makes the charge point operative (§5.2: the charge
            # point is unavailable only when it does not allow any charging).
            self._apply(0, OPERATIVE)
        log.info("ChangeAvailability %s on connector %d: %s", requested, connector_id, plan.status)
        return {"status": plan.status}

    # ----------------------------------------------------------------- applying

    def _apply(self, connector_id: int, state: str) -> None:
        changed = self.state(connector_id) != state
        with self.app.store.transaction():
            self.app.store.kv_put(AVAILABILITY_NS, str(connector_id), state)
            self.app.store.kv_delete(SCHEDULED_NS, str(connector_id))
        if connector_id == 0:
            for cid, controller in self.app.controllers.items():
                controller.set_available(self.is_operative(cid))
            if changed:
                # No controller derives connector 0's status: report it here (§5.2, §4.9).
                self._send_status(0)
        else:
            controller = self.app.controllers[connector_id]
            controller.set_available(self.is_operative(connector_id))
        if changed:
            log.info("connector %d is now %s", connector_id, state)
            reservations = self.app.reservations
            if reservations is not None and hasattr(reservations, "wake"):
                # Connector 0 Inoperative ends connector-0 reservations (§5.13 (3)) even when
                # no connector's status changes.
                reservations.wake()

    def apply_scheduled(self) -> None:
        """Carry out Scheduled changes whose transaction has ended (idempotent)."""
        pending = self.scheduled()
        if not pending:
            return
        for cid, state in sorted(pending.items()):
            if cid != 0 and cid in self.app.controllers and not _in_use(self.app, cid):
                self._apply(cid, state)
            elif cid != 0 and cid not in self.app.controllers:
                self.app.store.kv_delete(SCHEDULED_NS, str(cid))
        rest = self.scheduled()
        # Connector 0 takes every connector with it: only once none is in use any more
        # (no Preparing -> Unavailable, §4.9; see _in_use).
        if 0 in rest and not any(cid != 0 for cid in rest) \
                and not any(_in_use(self.app, cid) for cid in self.app.controllers):
            self._apply(0, rest[0])

    def _send_status(self, connector_id: int) -> None:
        if not self.app.online:
            return   # the full picture is sent again on (re)connection
        from chargepoint.services.core import StatusNotificationService

        try:
            status = self.app.service(StatusNotificationService)
        except LookupError:
            return
        self.app.spawn(status.send_connector(connector_id), f"status-{connector_id}")

    def _on_connector_event(self, event: Any) -> None:
        from chargepoint.evse.controller import StatusChanged

        if isinstance(event, StatusChanged) and self.app.store.kv_items(SCHEDULED_NS):
            self.apply_scheduled()

    def _connector_status(self, connector_id: int, entry: dict[str, Any]) -> None:
        entry["availability"] = OPERATIVE if self.is_operative(connector_id) else INOPERATIVE
        scheduled = self.app.store.kv_get(SCHEDULED_NS, str(connector_id))
        if scheduled is not None:
            entry["availability_scheduled"] = scheduled

    def _on_transaction_event(self, event: Any) -> None:
        from chargepoint.services.transactions import TransactionStopped

        if isinstance(event, TransactionStopped):
            self._wake.set()

    async def run(self) -> None:
        # A transaction may end without a status change reaching us first: its stop wakes
        # the loop (and a Scheduled change may come from before a restart: look once now).
        timeout_s = None if self._stops_notified else SCHEDULED_POLL_S
        while True:
            self._wake.clear()
            if self.app.store.kv_items(SCHEDULED_NS):
                self.apply_scheduled()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._wake.wait()


# --------------------------------------------------------------------------- UnlockConnector


class UnlockService:
    """UnlockConnector.req (§5.18, errata 3.87)."""

    def __init__(self, app: ChargePointApp) -> None:
        self.app = app
        app.on("UnlockConnector", self.on_unlock_connector)

    async def on_unlock_connector(self, payload: dict[str, Any]) -> dict[str, Any]:
        connector_id = int(payload["connectorId"])
        controller = self.app.controllers.get(connector_id)
        if controller is None:
            return {"status": "NotSupported"}   # errata 3.87: unknown connectorId
        lock = getattr(self.app.board.connector(connector_id), "lock", None)
        if lock is None:
            return {"status": "NotSupported"}   # no cable retention lock (fixed cable)
        if _transaction_on(self.app, connector_id):
            # §5.18: finish the transaction first, as in Stop Transaction (§7.36 UnlockCommand).
            service = self.app.transactions
            if service is not None and hasattr(service, "stop"):
                try:
                    async with asyncio.timeout(UNLOCK_STOP_TIMEOUT_S):
                        await service.stop(connector_id, "UnlockCommand")
                except TimeoutError:
                    log.warning("unlock: the transaction on connector %d did not stop in time", connector_id)
            else:
                log.warning("unlock: no transaction service to stop the transaction on connector %d", connector_id)
        release = getattr(self.app.transactions, "release_lock", None)
        if release is not None:
            # A cable held for its user after the EV side left (§4.10, errata 3.5): the
            # central system's unlock is the operator's way to free it.
            release(connector_id, "UnlockConnector")
        # The controller releases the lock once no session holds the cable (energy no longer
        # allowed); never pull it from under a closed contactor.
        released = await _wait_until(lambda: controller.snapshot().get("locked") is not True,
                                     UNLOCK_RELEASE_TIMEOUT_S)
        if not released:
            log.warning("unlock: connector %d still held by its session", connector_id)
            return {"status": "UnlockFailed"}
        # A fresh attempt (§5.18: "forcing a new attempt to unlock"), judged by its feedback.
        try:
            unlocked = bool(lock.set_locked(False))
        except Exception:
            log.exception("unlock: connector %d lock driver failed", connector_id)
            unlocked = False
        controller.poke()
        log.info("UnlockConnector %d: %s", connector_id, "Unlocked" if unlocked else "UnlockFailed")
        return {"status": "Unlocked" if unlocked else "UnlockFailed"}


# --------------------------------------------------------------------------- DataTransfer

# A vendor handler gets (messageId, data) and returns (status, data or None).
VendorResult = tuple[str, str | None]
VendorHandler = Callable[[str | None, str | None], Awaitable[VendorResult] | VendorResult]


class DataTransferService:
    """DataTransfer.req both ways (§4.3, §5.6): inbound vendor registry, outbound helper."""

    def __init__(self, app: ChargePointApp) -> None:
        self.app = app
        self._vendors: dict[str, VendorHandler] = {}
        app.on("DataTransfer", self.on_data_transfer)
        self.register(DIAGNOSTIC_VENDOR_ID, self._diagnostic)

    def register(self, vendor_id: str, handler: VendorHandler) -> None:
        """Handle DataTransfer.req for `vendor_id` (case-insensitive)."""
        self._vendors[vendor_id.casefold()] = handler

    async def on_data_transfer(self, payload: dict[str, Any]) -> dict[str, Any]:
        vendor_id = str(payload["vendorId"])
        handler = self._vendors.get(vendor_id.casefold())
        if handler is None:
            # §4.3: no implementation for the vendorId; the data element SHALL NOT be present.
            log.info("DataTransfer from unknown vendor %r", vendor_id[:255])
            return {"status": "UnknownVendorId"}
        outcome = handler(payload.get("messageId"), payload.get("data"))
        if inspect.isawaitable(outcome):
            outcome = await outcome
        status, data = outcome
        answer: dict[str, Any] = {"status": status}
        if data is not None and status not in ("UnknownVendorId", "UnknownMessageId"):
            answer["data"] = data
        return answer

    async def send(self, vendor_id: str, message_id: str | None = None,
                   data: str | None = None) -> dict[str, Any] | None:
        """DataTransfer.req to the central system; its .conf, or None when not delivered."""
        payload: dict[str, Any] = {"vendorId": vendor_id}
        if message_id is not None:
            payload["messageId"] = message_id
        if data is not None:
            payload["data"] = data
        return await self.app.try_call("DataTransfer", payload)

    @staticmethod
    def _diagnostic(message_id: str | None, data: str | None) -> VendorResult:
        # A liveness probe for field tools: "Ping" answers "Pong" (or echoes the data).
        if message_id is not None and message_id.casefold() == "ping":
            return "Accepted", data if data is not None else "Pong"
        return "UnknownMessageId", None


# --------------------------------------------------------------------------- wiring


def build_operation_services(app: ChargePointApp) -> list[object]:
    """Reset, availability, unlock, data transfer, reservations and the local list.

    Sets app.availability, app.reservations, app.local_list and app.data_transfer for the
    other services (see each class for its public API).
    """
    from chargepoint.services.local_list import LocalListService
    from chargepoint.services.reservation import ReservationService

    availability = AvailabilityService(app)
    data_transfer = DataTransferService(app)
    reservations = ReservationService(app)
    local_list = LocalListService(app)
    # ChargePointApp declares no attribute for these yet (request to the integrator).
    app.availability = availability
    app.data_transfer = data_transfer
    app.reservations = reservations
    app.local_list = local_list
    return [ResetService(app), availability, UnlockService(app), data_transfer, reservations, local_list]
