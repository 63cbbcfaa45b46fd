"""Transactions as the charger knows them, from first energy to the central system's ack.

One row per transaction, keyed by our own `local_id` (the central system's
`transaction_id` is NULL until StartTransaction.conf arrives, and may never come
when the charger is offline). The row records what the boot-time reconciliation
needs after a power cut (field-notes §6): whether a StopTransaction is already
queued (`stop_queued`: never queue a second one) and the last persisted meter
reading and time (the meterStop of a PowerLoss stop).

Queue a message and change the row in one commit:

    with store.transaction():
        if store.transactions.mark_stop_queued(local_id, meter_wh, t, "PowerLoss"):
            store.queue.enqueue("StopTransaction", payload, local_tx_id=local_id, kind="stop", event_time=t)

`mark_stop_queued` returns False when a stop was already queued, so the pair is
idempotent across crashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from chargepoint.clock import EventTime
from chargepoint.store.db import EventTimeLike, stored_time, time_columns

if TYPE_CHECKING:
    import sqlite3

    from chargepoint.store.db import Store


@dataclass(frozen=True)
class TransactionRecord:
    local_id: int
    connector_id: int
    id_tag: str
    transaction_id: int | None
    reservation_id: int | None
    start_meter_wh: float
    start_time: EventTime
    start_acked: bool
    start_dropped: bool
    id_tag_status: str | None
    stop_meter_wh: float | None
    stop_time: EventTime | None
    stop_reason: str | None
    stop_id_tag: str | None
    stop_queued: bool
    stop_acked: bool
    stop_dropped: bool
    last_meter_wh: float | None
    last_meter_time: EventTime | None

    @property
    def resolved(self) -> bool:
        """Nothing more will be sent for it: its stop was confirmed or discarded."""
        return self.stop_queued and (self.stop_acked or self.stop_dropped)


def _record(row: sqlite3.Row) -> TransactionRecord:
    start_time = stored_time(row["start_boot_id"], row["start_monotonic_s"], row["start_wall_s"])
    assert start_time is not None  # NOT NULL column
    return TransactionRecord(
        local_id=row["local_id"],
        connector_id=row["connector_id"],
        id_tag=row["id_tag"],
        transaction_id=row["transaction_id"],
        reservation_id=row["reservation_id"],
        start_meter_wh=row["start_meter_wh"],
        start_time=start_time,
        start_acked=bool(row["start_acked"]),
        start_dropped=bool(row["start_dropped"]),
        id_tag_status=row["id_tag_status"],
        stop_meter_wh=row["stop_meter_wh"],
        stop_time=stored_time(row["stop_boot_id"], row["stop_monotonic_s"], row["stop_wall_s"]),
        stop_reason=row["stop_reason"],
        stop_id_tag=row["stop_id_tag"],
        stop_queued=bool(row["stop_queued"]),
        stop_acked=bool(row["stop_acked"]),
        stop_dropped=bool(row["stop_dropped"]),
        last_meter_wh=row["last_meter_wh"],
        last_meter_time=stored_time(row["last_boot_id"], row["last_monotonic_s"], row["last_wall_s"]),
    )


class TransactionRepo:
    def __init__(self, store: Store) -> None:
        self._store = store

    def begin(
        self,
        *,
        connector_id: int,
        id_tag: str,
        start_meter_wh: float,
        start_time: EventTimeLike,
        reservation_id: int | None = None,
    ) -> int:
        """Record a started transaction; returns its local id. The last reading starts as the first."""
        boot_id, mono, wall = time_columns(start_time)
        cur = self._store.execute(
            "INSERT INTO transactions (connector_id, id_tag, reservation_id, start_meter_wh,"
            " start_boot_id, start_monotonic_s, start_wall_s,"
            " last_meter_wh, last_boot_id, last_monotonic_s, last_wall_s)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (connector_id, id_tag, reservation_id, start_meter_wh, boot_id, mono, wall, start_meter_wh, boot_id, mono,
             wall),
        )
        local_id = cur.lastrowid
        assert local_id is not None
        return local_id

    def get(self, local_id: int) -> TransactionRecord | None:
        row = self._store.query_one("SELECT * FROM transactions WHERE local_id = ?", (local_id,))
        return None if row is None else _record(row)

    def set_remote_id(self, local_id: int, transaction_id: int, id_tag_status: str | None = None) -> None:
        """StartTransaction.conf arrived: the central system's id, and the Start is acknowledged."""
        self._store.execute(
            "UPDATE transactions SET transaction_id = ?, id_tag_status = ?, start_acked = 1 WHERE local_id = ?",
            (transaction_id, id_tag_status, local_id),
        )

    def mark_start_dropped(self, local_id: int) -> None:
        """The StartTransaction was discarded after TransactionMessageAttempts failures (OCPP 1.6 §3.7.1)."""
        self._store.execute("UPDATE transactions SET start_dropped = 1 WHERE local_id = ?", (local_id,))

    def update_last_meter(self, local_id: int, meter_wh: float, time: EventTimeLike) -> None:
        """The latest register reading: the meterStop of a PowerLoss stop after a power cut."""
        boot_id, mono, wall = time_columns(time)
        self._store.execute(
            "UPDATE transactions SET last_meter_wh = ?, last_boot_id = ?, last_monotonic_s = ?, last_wall_s = ?"
            " WHERE local_id = ?",
            (meter_wh, boot_id, mono, wall, local_id),
        )

    def mark_stop_queued(
        self,
        local_id: int,
        *,
        stop_meter_wh: float,
        stop_time: EventTimeLike,
        reason: str | None = None,
        stop_id_tag: str | None = None,
    ) -> bool:
        """Record the stop; False (and no change) if a stop was already queued for it."""
        boot_id, mono, wall = time_columns(stop_time)
        cur = self._store.execute(
            "UPDATE transactions SET stop_queued = 1, stop_meter_wh = ?, stop_boot_id = ?, stop_monotonic_s = ?,"
            " stop_wall_s = ?, stop_reason = ?, stop_id_tag = ?,"
            " last_meter_wh = ?, last_boot_id = ?, last_monotonic_s = ?, last_wall_s = ?"
            " WHERE local_id = ? AND stop_queued = 0",
            (stop_meter_wh, boot_id, mono, wall, reason, stop_id_tag, stop_meter_wh, boot_id, mono, wall, local_id),
        )
        return cur.rowcount > 0

    def mark_stop_acked(self, local_id: int) -> None:
        self._store.execute("UPDATE transactions SET stop_acked = 1 WHERE local_id = ?", (local_id,))

    def mark_stop_dropped(self, local_id: int) -> None:
        self._store.execute("UPDATE transactions SET stop_dropped = 1 WHERE local_id = ?", (local_id,))

    def open_transactions(self) -> list[TransactionRecord]:
        """Started and no stop queued yet: what boot reconciliation resumes or stops (PowerLoss)."""
        rows = self._store.query("SELECT * FROM transactions WHERE stop_queued = 0 ORDER BY local_id")
        return [_record(r) for r in rows]

    def open_on_connector(self, connector_id: int) -> TransactionRecord | None:
        row = self._store.query_one(
            "SELECT * FROM transactions WHERE stop_queued = 0 AND connector_id = ? ORDER BY local_id DESC LIMIT 1",
            (connector_id,),
        )
        return None if row is None else _record(row)

    def unacked(self) -> list[TransactionRecord]:
        """Transactions the central system has not fully confirmed: Start or (queued) Stop still owed."""
        rows = self._store.query(
            "SELECT * FROM transactions WHERE (start_acked = 0 AND start_dropped = 0)"
            " OR (stop_queued = 1 AND stop_acked = 0 AND stop_dropped = 0) ORDER BY local_id"
        )
        return [_record(r) for r in rows]

    def by_remote_id(self, transaction_id: int) -> TransactionRecord | None:
        """The newest transaction with this central-system id (ids are not guaranteed unique: errata 3.54)."""
        row = self._store.query_one(
            "SELECT * FROM transactions WHERE transaction_id = ? ORDER BY local_id DESC LIMIT 1", (transaction_id,)
        )
        return None if row is None else _record(row)

    def recent(self, limit: int = 20) -> list[TransactionRecord]:
        rows = self._store.query("SELECT * FROM transactions ORDER BY local_id DESC LIMIT ?", (limit,))
        return [_record(r) for r in rows]

    def prune(self, keep: int = 100) -> int:
        """Delete resolved transactions beyond the newest `keep`; never one a queued message refers to."""
        cur = self._store.execute(
            "DELETE FROM transactions WHERE stop_queued = 1 AND (stop_acked = 1 OR stop_dropped = 1)"
            " AND local_id NOT IN (SELECT local_id FROM transactions WHERE stop_queued = 1"
            "   AND (stop_acked = 1 OR stop_dropped = 1) ORDER BY local_id DESC LIMIT ?)"
            " AND NOT EXISTS (SELECT 1 FROM queue WHERE queue.local_tx_id = transactions.local_id)",
            (max(0, keep),),
        )
        return cur.rowcount
