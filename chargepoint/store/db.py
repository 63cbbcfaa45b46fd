"""The durable store: one SQLite database under `state_dir`, power-cut safe.

Everything that must survive a power cut lives in `state_dir/chargepoint.db`:
key/value state, transactions, the queue of transaction-related messages, the
authorization cache and local list, charging profiles and reservations. One
connection, one thread (the event loop); every public method is one short
transaction.

Durability: WAL journal with `synchronous=FULL`, so each COMMIT fsyncs the WAL
before it returns. A row whose insert has returned is on the flash; a power cut
rolls back only a transaction that had not committed. `with store.transaction():`
groups several writes into one atomic commit (e.g. "queue the StopTransaction and
mark the transaction stop_queued" must never be half done: field-notes §6, the
"stopped twice after a power cut" bug).

A database that SQLite reports as corrupt (or not a database at all) at open is
moved aside to `chargepoint.db.corrupt-<timestamp>` (with its -wal/-shm) with one
ERROR log line, and a fresh database is started: the charger keeps charging and
the broken file stays for a post-mortem (field-notes §6, "a corrupted store after
a blackout").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from chargepoint.clock import EventTime

log = logging.getLogger("chargepoint.store")

DB_FILENAME = "chargepoint.db"
FILE_MODE = 0o600
DIR_MODE = 0o700

# SQLite primary result codes that mean "this file is damaged" (sqlite3.h).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


class EventTimeLike(Protocol):
    """What the store needs of an event time; it reads back `chargepoint.clock.EventTime`."""

    @property
    def boot_id(self) -> Any: ...

    @property
    def monotonic_s(self) -> float: ...

    @property
    def wall_s(self) -> float | None: ...


def stored_time(boot_id: Any, monotonic_s: float | None, wall_s: float | None) -> EventTime | None:
    """An event time read back from three columns (None if none was stored).

    `wall_s` is None for an event recorded before the clock was synchronised; the
    clock re-stamps it when the message is sent (never 1970).
    """
    if monotonic_s is None:
        return None
    return EventTime(str(boot_id), float(monotonic_s), None if wall_s is None else float(wall_s))


def time_columns(t: EventTimeLike | None) -> tuple[str | None, float | None, float | None]:
    """(boot_id, monotonic_s, wall_s) for the three columns that hold an event time."""
    if t is None:
        return (None, None, None)
    return (str(t.boot_id), float(t.monotonic_s), None if t.wall_s is None else float(t.wall_s))


def _json_default(value: Any) -> Any:
    # A payload parsed with Decimal numbers (the `ocpp` library's parser, field-notes §1).
    # Checked through sys.modules so that `decimal` is never imported just for this.
    decimal = sys.modules.get("decimal")
    if decimal is not None and isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=_json_default)


def loads(text: str) -> Any:
    return json.loads(text)


# Schema migrations: MIGRATIONS[n] takes user_version n to n + 1. Append only;
# never edit a released step (a charger in the field may be at any version).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE kv (
        ns    TEXT NOT NULL,
        key   TEXT NOT NULL,
        value TEXT NOT NULL,            -- JSON
        PRIMARY KEY (ns, key)
    ) WITHOUT ROWID;

    -- Time columns come in threes (boot_id, monotonic_s, wall_s): chargepoint.clock.EventTime.
    CREATE TABLE transactions (
        local_id          INTEGER PRIMARY KEY AUTOINCREMENT,
        connector_id      INTEGER NOT NULL,
        id_tag            TEXT NOT NULL,
        transaction_id    INTEGER,      -- the central system's; NULL until StartTransaction.conf
        reservation_id    INTEGER,
        start_meter_wh    REAL NOT NULL,
        start_boot_id,
        start_monotonic_s REAL NOT NULL,
        start_wall_s      REAL,
        start_acked       INTEGER NOT NULL DEFAULT 0,
        start_dropped     INTEGER NOT NULL DEFAULT 0,   -- StartTransaction discarded (OCPP 1.6 §3.7.1)
        id_tag_status     TEXT,         -- idTagInfo.status of StartTransaction.conf
        stop_meter_wh     REAL,
        stop_boot_id,
        stop_monotonic_s  REAL,
        stop_wall_s       REAL,
        stop_reason       TEXT,
        stop_id_tag       TEXT,
        stop_queued       INTEGER NOT NULL DEFAULT 0,
        stop_acked        INTEGER NOT NULL DEFAULT 0,
        stop_dropped      INTEGER NOT NULL DEFAULT 0,
        last_meter_wh     REAL,
        last_boot_id,
        last_monotonic_s  REAL,
        last_wall_s       REAL
    );
    CREATE INDEX transactions_remote ON transactions (transaction_id);
    CREATE INDEX transactions_open ON transactions (stop_queued, connector_id);

    CREATE TABLE queue (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: seq identifies a message
        action       TEXT NOT NULL,
        payload      TEXT NOT NULL,     -- JSON, with event-time references (see queue.py)
        kind         TEXT NOT NULL,
        local_tx_id  INTEGER REFERENCES transactions (local_id),
        boot_id,
        monotonic_s  REAL,
        wall_s       REAL,
        attempts     INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX queue_tx_kind ON queue (local_tx_id, kind);
    CREATE INDEX queue_kind_tx ON queue (kind, local_tx_id, seq);

    CREATE TABLE auth_cache (
        id_tag   TEXT PRIMARY KEY,
        info     TEXT NOT NULL,         -- IdTagInfo JSON
        valid    INTEGER NOT NULL,      -- status Accepted (evicted last, OCPP 1.6 §3.5.1)
        touched  INTEGER NOT NULL       -- update counter: oldest evicted first
    );
    CREATE INDEX auth_cache_evict ON auth_cache (valid, touched);

    CREATE TABLE local_list (
        id_tag   TEXT PRIMARY KEY,
        info     TEXT NOT NULL          -- IdTagInfo JSON
    );

    CREATE TABLE charging_profiles (
        profile_id    INTEGER PRIMARY KEY,   -- chargingProfileId
        connector_id  INTEGER,
        body          TEXT NOT NULL           -- the profile JSON, with "connectorId"
    );

    CREATE TABLE reservations (
        reservation_id INTEGER PRIMARY KEY,
        connector_id   INTEGER NOT NULL,
        id_tag         TEXT NOT NULL,
        parent_id_tag  TEXT,
        expiry_date    TEXT NOT NULL          -- ISO 8601 as sent by the central system
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class _DamagedDatabase(Exception):
    """Raised internally when the file at open is not a usable database."""


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


class Store:
    """SQLite under `state_dir/chargepoint.db`; repositories share this one connection.

    Repositories: `kv` (also as `kv_get`/`kv_put`/`kv_delete`/`kv_items` here),
    `transactions`, `queue`, `auth_cache`, `local_list`, `profiles`, `reservations`.
    """

    def __init__(
        self,
        state_dir: Path | str,
        *,
        queue_cap: int | None = None,
        auth_cache_cap: int | None = None,
        wall_s: Callable[[], float] = time.time,
    ) -> None:
        from chargepoint.store.auth import DEFAULT_CACHE_CAP, AuthCacheRepo, LocalListRepo
        from chargepoint.store.kv import KeyValueRepo
        from chargepoint.store.profiles import ProfileRepo, ReservationRepo
        from chargepoint.store.queue import DEFAULT_QUEUE_CAP, MessageQueue
        from chargepoint.store.transactions import TransactionRepo

        self.state_dir = Path(state_dir)
        self.path = self.state_dir / DB_FILENAME
        self._wall_s = wall_s
        self._depth = 0
        self.recovered_from: Path | None = None  # where a damaged file was moved, if it was
        self._conn = self._open()

        self.kv = KeyValueRepo(self)
        self.transactions = TransactionRepo(self)
        self.queue = MessageQueue(self, cap=DEFAULT_QUEUE_CAP if queue_cap is None else queue_cap)
        self.auth_cache = AuthCacheRepo(self, cap=DEFAULT_CACHE_CAP if auth_cache_cap is None else auth_cache_cap)
        self.local_list = LocalListRepo(self)
        self.profiles = ProfileRepo(self)
        self.reservations = ReservationRepo(self)

    # -- opening ---------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        try:
            return self._connect_and_check()
        except _DamagedDatabase as exc:
            self.recovered_from = self._move_aside(str(exc))
            return self._connect_and_check()

    def _connect_and_check(self) -> sqlite3.Connection:
        # Create the file ourselves so it is 0600 from the first byte; SQLite gives
        # the -wal and -shm files the database file's mode.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        os.close(fd)
        with contextlib.suppress(OSError):
            os.chmod(self.path, FILE_MODE)
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
            if [r[0] for r in rows] != ["ok"]:
                raise _DamagedDatabase("quick_check: " + "; ".join(str(r[0]) for r in rows[:3]))
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("SQLite journal_mode is %s, not wal", mode)
            conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
            conn.execute("PRAGMA foreign_keys=ON")
            self._migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _is_damage(exc):
                raise _DamagedDatabase(str(exc)) from exc
            raise
        except _DamagedDatabase:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            # Written by a newer build (firmware downgrade): its tables may carry
            # constraints this build cannot honour, so start fresh rather than guess.
            raise _DamagedDatabase(f"schema version {version} is newer than this build's {SCHEMA_VERSION}")
        for step in range(version, SCHEMA_VERSION):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_sql(MIGRATIONS[step]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {step + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _move_aside(self, reason: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._wall_s()))
        target = self.path.with_name(f"{DB_FILENAME}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{DB_FILENAME}.corrupt-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(target) + suffix))
        log.error("store %s is unreadable (%s): moved aside to %s, starting a fresh database",
                  self.path, reason, target)
        return target

    # -- transactions ----------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic commit for everything inside; nests (inner blocks are savepoints)."""
        conn = self._conn
        if self._depth == 0:
            conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                conn.execute("ROLLBACK")
                raise
            self._depth = 0
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return
        name = f"sp{self._depth}"
        conn.execute(f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
            raise
        self._depth -= 1
        conn.execute(f"RELEASE {name}")

    # -- helpers for the repositories ------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """A write: one statement in its own transaction unless inside `transaction()`."""
        with self.transaction():
            return self._conn.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        cur = self._conn.execute(sql, params)
        cur.row_factory = sqlite3.Row
        return list(cur.fetchall())

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        cur = self._conn.execute(sql, params)
        cur.row_factory = sqlite3.Row
        row: sqlite3.Row | None = cur.fetchone()
        return row

    @property
    def connection(self) -> sqlite3.Connection:
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- key/value shortcuts (the KeyValueBackend protocol of services.configuration)

    def kv_get(self, ns: str, key: str, default: Any = None) -> Any:
        return self.kv.get(ns, key, default)

    def kv_put(self, ns: str, key: str, value: Any) -> None:
        self.kv.put(ns, key, value)

    def kv_delete(self, ns: str, key: str) -> bool:
        return self.kv.delete(ns, key)

    def kv_items(self, ns: str) -> dict[str, Any]:
        return self.kv.items(ns)


def _split_sql(script: str) -> list[str]:
    """Statements of a migration script (no ';' inside literals in our schema)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
