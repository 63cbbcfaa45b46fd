"""Durable state in SQLite (WAL, fsync at commit): see db.Store."""

from chargepoint.store.auth import apply_local_list
from chargepoint.store.db import EventTimeLike, Store
from chargepoint.store.profiles import Reservation
from chargepoint.store.queue import QueuedMessage, resolve_payload, time_ref
from chargepoint.store.transactions import TransactionRecord

__all__ = [
    "EventTimeLike",
    "QueuedMessage",
    "Reservation",
    "Store",
    "TransactionRecord",
    "apply_local_list",
    "resolve_payload",
    "time_ref",
]
