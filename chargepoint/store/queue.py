"""The durable FIFO of transaction-related messages (OCPP 1.6 §3.7).

StartTransaction, StopTransaction, MeterValues during a transaction, and
security events (Security WP A04.FR.02: queued with guaranteed delivery) go
through this queue, oldest first, one in flight at a time. A row is committed
(fsynced) before `enqueue` returns and deleted only by `ack` (the central
system's CALLRESULT) or `drop` (OCPP 1.6 §3.7.1: discarded after
TransactionMessageAttempts failures to process it); `attempts` is persisted so
the retry count survives a reboot. Retry waits are computed in memory by the
delivery engine (monotonic time does not survive a reboot).

Two things are filled in at the moment of sending, not at enqueue time
(services/tx_delivery.py):
- `transactionId` of Stop and MeterValues comes from the transactions table,
  so a transaction started offline is queued under our local id and every
  message carries the central system's id once StartTransaction.conf is in.
- Timestamps: payloads hold `time_ref(event_time)` placeholders wherever a
  dateTime goes; `resolve_payload` replaces them using the clock at send time,
  so events recorded before the clock was synchronised are re-stamped, never
  sent as 1970. A plain ISO string in the payload is sent unchanged.

Kinds: "start", "stop", "meter_first", "meter_periodic", "meter_aligned",
"meter_last", "security_event".

Storage bound and thinning policy
---------------------------------
The queue holds at most `cap` messages (DEFAULT_QUEUE_CAP = 50000: ~5.8 days of
10 s samples on one connector, ~2.9 days on two; ~17 days on two connectors at
a 60 s interval; roughly 30-40 MB of flash at ~700 bytes a message). When an
enqueue takes it over the cap, the queue thins the longest outage: it takes the
transaction with the most queued "meter_periodic" messages (the oldest one on a
tie) and deletes every other one of its periodic samples, keeping that
transaction's first and last periodic sample, and repeats until under the cap.
The surviving samples stay evenly spaced and older stretches end up sparser than
recent ones. Only "meter_periodic" is ever thinned: a Start, a Stop, a
transaction's first and last readings ("meter_first"/"meter_last", and the
first/last periodic sample), clock-aligned (billing) values and security events
are never deleted to make room. If only such messages remain, the queue grows
past the cap (and logs it) rather than lose one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from chargepoint.clock import EventTime
from chargepoint.store.db import EventTimeLike, dumps, loads, stored_time, time_columns

if TYPE_CHECKING:
    import sqlite3

    from chargepoint.store.db import Store

log = logging.getLogger("chargepoint.store.queue")

Kind = Literal["start", "stop", "meter_first", "meter_periodic", "meter_aligned", "meter_last", "security_event"]
KINDS: tuple[str, ...] = (
    "start",
    "stop",
    "meter_first",
    "meter_periodic",
    "meter_aligned",
    "meter_last",
    "security_event",
)
THINNABLE_KIND = "meter_periodic"
DEFAULT_QUEUE_CAP = 50_000

TIME_REF_KEY = "$eventTime"


def time_ref(t: EventTimeLike) -> dict[str, Any]:
    """A placeholder for a dateTime field, resolved to ISO 8601 when the message is sent."""
    boot_id, mono, wall = time_columns(t)
    return {TIME_REF_KEY: [boot_id, mono, wall]}


def resolve_payload(payload: Any, resolve: Callable[[EventTime], str | None]) -> Any | None:
    """A copy of `payload` with every time_ref replaced by resolve(time); None if any is still unknown."""
    unresolved = False

    def walk(node: Any) -> Any:
        nonlocal unresolved
        if isinstance(node, dict):
            ref = node.get(TIME_REF_KEY) if len(node) == 1 else None
            if isinstance(ref, list) and len(ref) == 3:
                t = EventTime(str(ref[0]), float(ref[1]), None if ref[2] is None else float(ref[2]))
                text = resolve(t)
                if text is None:
                    unresolved = True
                return text
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out = walk(payload)
    return None if unresolved else out


@dataclass(frozen=True)
class QueuedMessage:
    seq: int
    action: str
    payload: dict[str, Any]
    kind: str
    local_tx_id: int | None
    event_time: EventTime | None
    attempts: int


def _message(row: sqlite3.Row) -> QueuedMessage:
    return QueuedMessage(
        seq=row["seq"],
        action=row["action"],
        payload=loads(row["payload"]),
        kind=row["kind"],
        local_tx_id=row["local_tx_id"],
        event_time=stored_time(row["boot_id"], row["monotonic_s"], row["wall_s"]),
        attempts=row["attempts"],
    )


class MessageQueue:
    def __init__(self, store: Store, *, cap: int = DEFAULT_QUEUE_CAP) -> None:
        self._store = store
        self.cap = cap
        self._warned_unthinnable = False  # log "over cap, nothing to thin" once, not per enqueue

    def enqueue(
        self,
        action: str,
        payload: dict[str, Any],
        *,
        local_tx_id: int | None,
        kind: str,
        event_time: EventTimeLike | None = None,
    ) -> int:
        """Append a message; returns its seq once it is committed (fsynced)."""
        if kind not in KINDS:
            raise ValueError(f"unknown message kind {kind!r}")
        boot_id, mono, wall = time_columns(event_time)
        with self._store.transaction():
            cur = self._store.execute(
                "INSERT INTO queue (action, payload, kind, local_tx_id, boot_id, monotonic_s, wall_s)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (action, dumps(payload), kind, local_tx_id, boot_id, mono, wall),
            )
            seq = cur.lastrowid
            assert seq is not None
            if self.cap > 0:
                self._enforce_cap(seq)
        return seq

    def peek(self) -> QueuedMessage | None:
        """The oldest message, or None when the queue is empty."""
        row = self._store.query_one("SELECT * FROM queue ORDER BY seq LIMIT 1")
        return None if row is None else _message(row)

    def get(self, seq: int) -> QueuedMessage | None:
        row = self._store.query_one("SELECT * FROM queue WHERE seq = ?", (seq,))
        return None if row is None else _message(row)

    def items(self, limit: int | None = None) -> list[QueuedMessage]:
        rows = self._store.query("SELECT * FROM queue ORDER BY seq LIMIT ?", (-1 if limit is None else limit,))
        return [_message(r) for r in rows]

    def ack(self, seq: int) -> bool:
        """The central system confirmed it: remove it. False if it was not there."""
        return self._store.execute("DELETE FROM queue WHERE seq = ?", (seq,)).rowcount > 0

    def bump_attempts(self, seq: int) -> int:
        """Count one failed transmission; returns the attempts so far (0 if the message is gone)."""
        with self._store.transaction():
            # RETURNING rows must be read before the commit.
            row = self._store.connection.execute(
                "UPDATE queue SET attempts = attempts + 1 WHERE seq = ? RETURNING attempts", (seq,)).fetchone()
        return 0 if row is None else int(row[0])

    def drop(self, seq: int, reason: str) -> bool:
        """Discard a message without delivery (logged as a WARNING with the reason)."""
        with self._store.transaction():
            row = self._store.query_one("SELECT action, kind, local_tx_id, attempts FROM queue WHERE seq = ?", (seq,))
            if row is None:
                return False
            self._store.execute("DELETE FROM queue WHERE seq = ?", (seq,))
        log.warning("dropped queued %s (seq=%d kind=%s local_tx=%s attempts=%d): %s",
                    row["action"], seq, row["kind"], row["local_tx_id"], row["attempts"], reason)
        return True

    def pending_count(self) -> int:
        row = self._store.query_one("SELECT COUNT(*) FROM queue")
        return 0 if row is None else int(row[0])

    def has_stop_for(self, local_tx_id: int) -> bool:
        row = self._store.query_one("SELECT 1 FROM queue WHERE local_tx_id = ? AND kind = 'stop' LIMIT 1",
                                    (local_tx_id,))
        return row is not None

    def count_for(self, local_tx_id: int) -> int:
        row = self._store.query_one("SELECT COUNT(*) FROM queue WHERE local_tx_id = ?", (local_tx_id,))
        return 0 if row is None else int(row[0])

    # -- thinning (policy in the module docstring) ----------------------

    def _enforce_cap(self, newest_seq: int) -> None:
        lowest = self._store.query_one("SELECT MIN(seq) FROM queue")
        if lowest is None or lowest[0] is None or newest_seq - int(lowest[0]) + 1 <= self.cap:
            return  # seq span bounds the count: cheap early exit
        count = self.pending_count()
        if count <= self.cap:
            self._warned_unthinnable = False
            return
        before = count
        thinned: dict[int | None, int] = {}
        while count > self.cap:
            victims, local_tx_id = self._thin_once()
            if not victims:
                if not self._warned_unthinnable:
                    self._warned_unthinnable = True
                    log.warning("transaction message queue holds %d messages (cap %d) and none can be thinned",
                                count, self.cap)
                break
            count -= victims
            thinned[local_tx_id] = thinned.get(local_tx_id, 0) + victims
        if thinned:
            log.warning("transaction message queue over its cap of %d (%d messages): thinned periodic MeterValues %s",
                        self.cap, before, ", ".join(f"local_tx={k}: {v}" for k, v in thinned.items()))

    def _thin_once(self) -> tuple[int, int | None]:
        """Halve the periodic samples of the transaction with the most; returns (deleted, local_tx_id)."""
        top = self._store.query_one(
            "SELECT local_tx_id, COUNT(*) AS n, MIN(seq) AS first FROM queue WHERE kind = ?"
            " GROUP BY local_tx_id ORDER BY n DESC, first ASC LIMIT 1",
            (THINNABLE_KIND,),
        )
        if top is None or top["n"] <= 2:
            return 0, None  # the largest group has only its first and last sample left
        local_tx_id = top["local_tx_id"]
        # Every other sample (2nd, 4th, ...), never the first or the last: one statement, so a
        # large outage is thinned in one short commit.
        cur = self._store.execute(
            "DELETE FROM queue WHERE seq IN (SELECT seq FROM (SELECT seq, ROW_NUMBER() OVER (ORDER BY seq) AS rn,"
            " COUNT(*) OVER () AS n FROM queue WHERE kind = ? AND local_tx_id IS ?) WHERE rn % 2 = 0 AND rn < n)",
            (THINNABLE_KIND, local_tx_id),
        )
        victims = cur.rowcount
        return victims, local_tx_id
