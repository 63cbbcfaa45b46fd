"""Delivery of transaction-related messages: the durable queue to the central system, in order.

OCPP 1.6 §3.7: transaction-related messages (StartTransaction, StopTransaction,
MeterValues during a transaction; Security WP A04.FR.02 adds security events)
are delivered in chronological order, one at a time, each after the previous
one is confirmed. The queue (store/queue.py) is the single source of truth:

- `run()` takes the oldest message, completes it (below), sends it with
  `call()`, and on the CALLRESULT commits the ack, together with what the
  confirmation means for the transaction row (central-system id, start/stop
  acknowledged), before it looks at the next message.
- Completion at send time: Stop and MeterValues get `transactionId` from the
  transactions table, so messages queued while a Start was still unconfirmed
  (e.g. a transaction started offline) carry the central system's id once
  StartTransaction.conf is in. Timestamp placeholders (queue.time_ref) are
  resolved with `resolve_time`; while it answers None (clock not yet known) the
  message waits, so an unsynced event is never sent as 1970.
- Failure to process (OCPP-J errata 3.3: a CALLERROR; a missing answer counts
  too): OCPP 1.6 §3.7.1 - wait TransactionMessageRetryInterval x (transmissions
  so far), resend; after TransactionMessageAttempts failures discard the message
  and go on with the next one. The attempt count is persisted, so a reboot does
  not reset it; the wait is not (it restarts with the next transmission).
- NotConnected is not a failure of the central system: no attempt is counted,
  the message waits until the link is back (`set_online(True)`).
- A StartTransaction discarded after its attempts leaves its transaction without
  a central-system id. Errata 3.18 (OCPP 1.6 §4.8): the charger SHALL send that
  transaction's later messages with transactionId = -1 and the central system
  SHALL accept them. That is the default (`orphan_policy="minus_one"`); with
  `orphan_policy="drop"` they are discarded instead, each with a log line.
  No message of a transaction whose Start is merely unconfirmed is ever sent
  with -1: FIFO order means its Start has been confirmed or discarded first.

Exactly-once as far as the central system can tell, except for one message:
an ack is committed before the next message is sent, so a confirmed message is
never sent again. The message in flight when its confirmation is lost - a power
cut or crash between the CALLRESULT and the ack commit, the link dropping, a
timeout - is sent again (at-least-once on the wire, the OCPP model). Duplicates
are therefore only ever that single in-flight message, never older ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from chargepoint.clock import EventTime
from chargepoint.ocppj.session import CallErrorReceived, CallTimeout, NotConnected
from chargepoint.store.db import Store
from chargepoint.store.queue import QueuedMessage, resolve_payload

log = logging.getLogger("chargepoint.tx_delivery")

OrphanPolicy = Literal["minus_one", "drop"]
# Errata 3.18: the id to use when the StartTransaction could not be delivered.
ORPHAN_TRANSACTION_ID = -1
_NEEDS_TRANSACTION_ID = ("StopTransaction", "MeterValues")

CallFn = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
ConfirmedFn = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True)
class SenderStatus:
    pending: int
    online: bool
    in_flight_seq: int | None
    waiting_for_clock: bool


class TransactionMessageSender:
    def __init__(
        self,
        *,
        store: Store,
        call: CallFn,
        attempts: Callable[[], int],
        retry_interval_s: Callable[[], float],
        resolve_time: Callable[[EventTime], str | None],
        on_start_confirmed: ConfirmedFn | None = None,
        on_stop_confirmed: ConfirmedFn | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        orphan_policy: OrphanPolicy = "minus_one",
        clock_poll_s: float = 5.0,
        not_connected_backoff_s: float = 1.0,
        error_backoff_s: float = 5.0,
    ) -> None:
        self._store = store
        self._call = call
        self._attempts = attempts
        self._retry_interval_s = retry_interval_s
        self._resolve_time = resolve_time
        self._on_start_confirmed = on_start_confirmed
        self._on_stop_confirmed = on_stop_confirmed
        self._monotonic = monotonic
        self._sleep = sleep
        self._orphan_policy = orphan_policy
        self._clock_poll_s = clock_poll_s
        self._not_connected_backoff_s = not_connected_backoff_s
        self._error_backoff_s = error_backoff_s
        self._online = asyncio.Event()
        self._wake = asyncio.Event()
        self._in_flight: int | None = None
        self._waiting_for_clock: int | None = None  # seq we logged "waiting for the clock" for
        self.last_delivered_at_s: float | None = None  # monotonic

    # -- control ---------------------------------------------------------

    def set_online(self, online: bool) -> None:
        """Registered with the central system (BootNotification Accepted) and connected, or not."""
        if online:
            self._online.set()
            self._wake.set()
        else:
            self._online.clear()

    def notify(self) -> None:
        """Something was enqueued, or the clock got synchronised: look at the queue again."""
        self._wake.set()

    @property
    def online(self) -> bool:
        return self._online.is_set()

    def pending(self) -> int:
        """Transaction messages not yet confirmed by the central system (status "queue.pending")."""
        return self._store.queue.pending_count()

    def status(self) -> SenderStatus:
        return SenderStatus(self.pending(), self.online, self._in_flight, self._waiting_for_clock is not None)

    # -- the loop --------------------------------------------------------

    async def run(self) -> None:
        """Deliver forever; cancel to stop (an unacked message stays queued)."""
        while True:
            try:
                await self._online.wait()
                self._wake.clear()
                message = self._store.queue.peek()
                if message is None:
                    await self._wake.wait()
                    continue
                await self._deliver(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A store error (disk full, I/O error) or a bug: never let delivery die.
                log.exception("transaction message delivery failed; retrying in %.0f s", self._error_backoff_s)
                await self._sleep(self._error_backoff_s)

    async def _deliver(self, message: QueuedMessage) -> None:
        payload = self._complete(message)
        if payload is None:
            return
        resolved = resolve_payload(payload, self._resolve_time)
        if resolved is None:
            # OCPP timestamps only from a synchronised clock (docs/ARCHITECTURE.md): wait, don't send 1970.
            if self._waiting_for_clock != message.seq:
                self._waiting_for_clock = message.seq
                log.info("queued %s (seq=%d) waits for the clock to be synchronised", message.action, message.seq)
            await self._wait_wake(self._clock_poll_s)
            return
        self._waiting_for_clock = None

        self._in_flight = message.seq
        try:
            conf = await self._call(message.action, resolved)
        except NotConnected:
            # Not the central system's failure (OCPP 1.6 §3.7.1): no attempt counted; resent when back online.
            log.info("queued %s (seq=%d) not sent: not connected", message.action, message.seq)
            await self._sleep(self._not_connected_backoff_s)
            return
        except CallErrorReceived as exc:
            await self._failed(message, f"CALLERROR {str(exc)!r}")   # the description is the central system's text
            return
        except CallTimeout:
            await self._failed(message, "no answer (timeout)")
            return
        except Exception as exc:
            # E.g. our own outgoing validation refusing the payload: counted, so a message that
            # can never be sent is discarded after its attempts instead of blocking the queue.
            log.exception("sending queued %s (seq=%d) raised", message.action, message.seq)
            await self._failed(message, f"{type(exc).__name__}: {exc}")
            return
        finally:
            self._in_flight = None
        problem = self._confirmed(message, conf if isinstance(conf, dict) else {})
        if problem is not None:
            await self._failed(message, problem)

    def _complete(self, message: QueuedMessage) -> dict[str, Any] | None:
        """The payload with transactionId filled in; None when the message was discarded instead."""
        payload = dict(message.payload)
        if message.local_tx_id is None or message.action not in _NEEDS_TRANSACTION_ID:
            return payload
        tx = self._store.transactions.get(message.local_tx_id)
        if tx is None:
            self._store.queue.drop(message.seq, f"its transaction (local id {message.local_tx_id}) is unknown")
            return None
        if tx.transaction_id is not None:
            payload["transactionId"] = tx.transaction_id
            return payload
        # FIFO order: its StartTransaction has been confirmed or discarded before we get here.
        if not tx.start_dropped:
            log.error("queued %s (seq=%d) for local tx %d has no StartTransaction before it",
                      message.action, message.seq, tx.local_id)
        if self._orphan_policy == "drop":
            self._discard(message, "its StartTransaction was never confirmed, so it has no transactionId")
            return None
        payload["transactionId"] = ORPHAN_TRANSACTION_ID  # errata 3.18
        return payload

    def _confirmed(self, message: QueuedMessage, conf: dict[str, Any]) -> str | None:
        """Commit the ack and its consequences; returns why the confirmation is unusable, if it is."""
        local_id = message.local_tx_id
        callback: ConfirmedFn | None = None
        if message.action == "StartTransaction" and local_id is not None:
            transaction_id = conf.get("transactionId")
            if not isinstance(transaction_id, int) or isinstance(transaction_id, bool):
                # Unusable confirmation: treat like a failure to process it rather than lose the id.
                log.error("StartTransaction.conf without a transactionId for local tx %d: %r", local_id, conf)
                return "StartTransaction.conf without transactionId"
            status = conf.get("idTagInfo", {}).get("status") if isinstance(conf.get("idTagInfo"), dict) else None
            with self._store.transaction():
                self._store.queue.ack(message.seq)
                self._store.transactions.set_remote_id(local_id, transaction_id, status)
            log.info("StartTransaction confirmed: local tx %d is transaction %d (%s)", local_id, transaction_id,
                     status)
            callback = self._on_start_confirmed
        elif message.action == "StopTransaction" and local_id is not None:
            with self._store.transaction():
                self._store.queue.ack(message.seq)
                self._store.transactions.mark_stop_acked(local_id)
            log.info("StopTransaction confirmed for local tx %d", local_id)
            callback = self._on_stop_confirmed
        else:
            self._store.queue.ack(message.seq)
        self.last_delivered_at_s = self._monotonic()
        if callback is not None and local_id is not None:
            try:
                callback(local_id, conf)
            except Exception:
                log.exception("%s confirmation handler failed for local tx %d", message.action, local_id)
        return None

    async def _failed(self, message: QueuedMessage, reason: str) -> None:
        attempts = self._count_failure(message, reason)
        if attempts:
            # OCPP 1.6 §3.7.1: wait interval x number of transmissions so far before the next one.
            await self._sleep(max(0.0, float(self._retry_interval_s())) * attempts)

    def _count_failure(self, message: QueuedMessage, reason: str) -> int:
        """Persist one failed transmission; discard at the limit. Returns attempts so far, 0 if discarded."""
        attempts = self._store.queue.bump_attempts(message.seq)
        limit = max(1, int(self._attempts()))
        if attempts >= limit:
            self._discard(message, f"{reason}; {attempts} of {limit} attempts failed (OCPP 1.6 §3.7.1)")
            return 0
        log.warning("%s (seq=%d) failed, attempt %d of %d: %s", message.action, message.seq, attempts, limit, reason)
        return attempts

    def _discard(self, message: QueuedMessage, reason: str) -> None:
        local_id = message.local_tx_id
        with self._store.transaction():
            self._store.queue.drop(message.seq, reason)
            if local_id is None:
                return
            if message.action == "StartTransaction":
                self._store.transactions.mark_start_dropped(local_id)
                if self._orphan_policy == "drop":
                    for later in self._store.queue.items():
                        if later.local_tx_id == local_id:
                            self._discard(later, "its StartTransaction was discarded")
            elif message.action == "StopTransaction":
                self._store.transactions.mark_stop_dropped(local_id)
        if message.action == "StartTransaction":
            then = ("its queued messages are discarded" if self._orphan_policy == "drop"
                    else f"its messages will carry transactionId {ORPHAN_TRANSACTION_ID} (errata 3.18)")
            log.error("StartTransaction of local tx %d discarded: %s", local_id, then)

    async def _wait_wake(self, timeout_s: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout_s)


class ClockLike(Protocol):
    @property
    def synced(self) -> bool: ...

    def resolve(self, t: EventTime) -> datetime | None: ...

    def wall_s(self) -> float: ...

    def monotonic_s(self) -> float: ...


def clock_time_resolver(clock: ClockLike) -> Callable[[EventTime], str | None]:
    """`resolve_time` for the sender from chargepoint.clock.Clock.

    None only while the clock is unsynchronised. An unsynced event of an earlier
    boot (a power cut before the first NTP answer) can never be re-stamped
    exactly; once synced it gets this boot's start time, the latest instant it
    can have happened, so the queue is not blocked forever and nothing is 1970.
    """

    def resolve(t: EventTime) -> str | None:
        dt = clock.resolve(t)
        if dt is None:
            if not clock.synced:
                return None
            boot_start_s = clock.wall_s() - clock.monotonic_s()
            log.warning("event of an earlier boot had no wall time; stamped with this boot's start")
            dt = datetime.fromtimestamp(boot_start_s, UTC)
        return iso8601(dt)

    return resolve


def iso8601(dt: datetime) -> str:
    """UTC with milliseconds and "Z" (same format as chargepoint.clock.Clock.iso8601)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
