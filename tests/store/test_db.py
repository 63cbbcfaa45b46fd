"""Store opening, durability settings, atomic transactions and recovery from a damaged file."""

from __future__ import annotations

import logging
import sqlite3
import stat
from pathlib import Path

import pytest

from chargepoint.clock import EventTime
from chargepoint.store import Store
from chargepoint.store.db import DB_FILENAME, SCHEMA_VERSION

T0 = EventTime("boot-a", 10.0, 1_790_000_000.0)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_uses_wal_fsync_at_commit_and_foreign_keys(store: Store) -> None:
    conn = store.connection
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_database_and_wal_files_are_private(tmp_path: Path) -> None:
    with Store(tmp_path / "state") as s:
        s.kv_put("ns", "k", 1)
        assert _mode(tmp_path / "state" / DB_FILENAME) == 0o600
        wal = tmp_path / "state" / (DB_FILENAME + "-wal")
        assert wal.exists() and _mode(wal) == 0o600


def test_existing_world_readable_database_is_made_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Store(state).close()
    (state / DB_FILENAME).chmod(0o644)
    Store(state).close()
    assert _mode(state / DB_FILENAME) == 0o600


def test_data_survives_reopen(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        s.kv_put("cfg", "HeartbeatInterval", "300")
        local_id = s.transactions.begin(connector_id=1, id_tag="TAG", start_meter_wh=5.0, start_time=T0)
        seq = s.queue.enqueue("StartTransaction", {"connectorId": 1}, local_tx_id=local_id, kind="start")
    with Store(tmp_path) as s:
        assert s.kv_get("cfg", "HeartbeatInterval") == "300"
        msg = s.queue.peek()
        assert msg is not None and msg.seq == seq and msg.local_tx_id == local_id


def test_transaction_block_is_atomic_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.kv_put("ns", "a", 1)
        store.kv_put("ns", "b", 2)
        raise RuntimeError("power cut in the middle")
    assert store.kv_items("ns") == {}


def test_nested_block_rolls_back_alone_when_its_error_is_handled(store: Store) -> None:
    with store.transaction():
        store.kv_put("ns", "outer", 1)
        with pytest.raises(KeyError), store.transaction():
            store.kv_put("ns", "inner", 2)
            raise KeyError("inner fails")
        store.kv_put("ns", "after", 3)
    assert store.kv_items("ns") == {"after": 3, "outer": 1}


def test_garbage_database_is_moved_aside_with_one_error_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / DB_FILENAME).write_bytes(b"this is not sqlite, a blackout ate it " * 300)
    (state / (DB_FILENAME + "-wal")).write_bytes(b"junk wal")
    with caplog.at_level(logging.DEBUG, logger="chargepoint.store"):
        s = Store(state, wall_s=lambda: 1_790_000_000.0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "moved aside" in errors[0].getMessage()
    aside = state / (DB_FILENAME + ".corrupt-20260921T141320Z")
    assert s.recovered_from == aside
    assert aside.read_bytes().startswith(b"this is not sqlite")  # kept for a post-mortem
    # The fresh store works.
    seq = s.queue.enqueue("SecurityEventNotification", {"type": "X"}, local_tx_id=None, kind="security_event")
    assert s.queue.peek() is not None and s.queue.peek().seq == seq  # type: ignore[union-attr]
    s.close()


def test_damaged_pages_are_detected_by_quick_check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    with Store(state) as s:
        with s.transaction():
            for i in range(400):
                s.kv_put("bulk", f"key-{i:04d}", "x" * 200)
        s.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db = state / DB_FILENAME
    data = bytearray(db.read_bytes())
    page_size = 4096
    assert len(data) > 6 * page_size
    # Scribble over interior b-tree pages, keeping the file header valid.
    for page in range(2, 6):
        data[page * page_size:(page + 1) * page_size] = b"\xa5" * page_size
    db.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="chargepoint.store"), Store(state) as s:
        assert s.recovered_from is not None
        assert s.kv_items("bulk") == {}
        s.kv_put("ok", "k", True)
        assert s.kv_get("ok", "k") is True
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


def test_database_from_a_newer_build_is_moved_aside(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Store(state).close()
    conn = sqlite3.connect(state / DB_FILENAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.commit()
    conn.close()
    with Store(state) as s:
        assert s.recovered_from is not None
        assert s.connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_healthy_database_is_not_moved(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Store(state).close()
    with Store(state) as s:
        assert s.recovered_from is None
    assert not [p for p in state.iterdir() if ".corrupt-" in p.name]


def test_kv_round_trips_json_values_per_namespace(store: Store) -> None:
    store.kv_put("cfg", "MeterValuesSampledData", "Energy.Active.Import.Register,Power.Active.Import")
    store.kv_put("connector", "1", {"availability": "Inoperative"})
    store.kv_put("fw", "state", {"status": "Installing", "retries": 2})
    assert store.kv_get("connector", "1") == {"availability": "Inoperative"}
    assert store.kv_get("connector", "2", "Operative") == "Operative"
    assert store.kv_items("fw") == {"state": {"status": "Installing", "retries": 2}}
    store.kv_put("connector", "1", {"availability": "Operative"})
    assert store.kv_get("connector", "1") == {"availability": "Operative"}
    assert store.kv_delete("connector", "1") is True
    assert store.kv_delete("connector", "1") is False
    assert store.kv_items("connector") == {}
