"""The durable FIFO of transaction-related messages (OCPP 1.6 §3.7) and its thinning policy."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from chargepoint.clock import EventTime
from chargepoint.store import Store, resolve_payload, time_ref

T_UNSYNCED = EventTime("boot-a", 42.0, None)
T_SYNCED = EventTime("boot-a", 50.0, 1_790_000_000.0)


def _tx(store: Store, connector_id: int = 1) -> int:
    return store.transactions.begin(connector_id=connector_id, id_tag="T", start_meter_wh=0, start_time=T_SYNCED)


def test_fifo_peek_ack_and_pending_count(store: Store) -> None:
    local_id = _tx(store)
    seqs = [
        store.queue.enqueue("StartTransaction", {"n": 0}, local_tx_id=local_id, kind="start", event_time=T_SYNCED),
        store.queue.enqueue("MeterValues", {"n": 1}, local_tx_id=local_id, kind="meter_periodic"),
        store.queue.enqueue("StopTransaction", {"n": 2}, local_tx_id=local_id, kind="stop"),
    ]
    assert seqs == sorted(seqs) and store.queue.pending_count() == 3
    head = store.queue.peek()
    assert head is not None and head.seq == seqs[0] and head.payload == {"n": 0} and head.event_time == T_SYNCED
    assert store.queue.has_stop_for(local_id)
    assert store.queue.ack(seqs[0]) and not store.queue.ack(seqs[0])
    assert [m.payload["n"] for m in store.queue.items()] == [1, 2]


def test_attempts_are_persisted_across_reopen(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        seq = s.queue.enqueue("SecurityEventNotification", {"type": "X"}, local_tx_id=None, kind="security_event")
        assert s.queue.bump_attempts(seq) == 1
        assert s.queue.bump_attempts(seq) == 2
    with Store(tmp_path) as s:
        head = s.queue.peek()
        assert head is not None and head.attempts == 2
        assert s.queue.bump_attempts(seq) == 3
        assert s.queue.bump_attempts(seq + 100) == 0


def test_drop_logs_the_reason(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    seq = store.queue.enqueue("SecurityEventNotification", {}, local_tx_id=None, kind="security_event")
    with caplog.at_level(logging.WARNING, logger="chargepoint.store.queue"):
        assert store.queue.drop(seq, "3 of 3 attempts failed")
    assert store.queue.peek() is None
    assert "3 of 3 attempts failed" in caplog.text


def test_seq_is_never_reused_after_acks(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        first = s.queue.enqueue("X", {}, local_tx_id=None, kind="security_event")
        s.queue.ack(first)
    with Store(tmp_path) as s:
        assert s.queue.enqueue("X", {}, local_tx_id=None, kind="security_event") > first


def test_unknown_kind_is_refused(store: Store) -> None:
    with pytest.raises(ValueError):
        store.queue.enqueue("MeterValues", {}, local_tx_id=None, kind="meter")


def test_time_refs_resolve_at_send_time_including_nested_meter_values() -> None:
    payload = {
        "connectorId": 1,
        "timestamp": time_ref(T_UNSYNCED),
        "transactionData": [{"timestamp": time_ref(T_SYNCED), "sampledValue": [{"value": "1"}]}],
        "already": "2026-01-01T00:00:00.000Z",
    }
    assert resolve_payload(payload, lambda t: None if t.wall_s is None else "synced") is None  # clock unknown
    out = resolve_payload(payload, lambda t: f"{t.boot_id}@{t.monotonic_s}")
    assert out == {
        "connectorId": 1,
        "timestamp": "boot-a@42.0",
        "transactionData": [{"timestamp": "boot-a@50.0", "sampledValue": [{"value": "1"}]}],
        "already": "2026-01-01T00:00:00.000Z",
    }


# -- thinning ----------------------------------------------------------------


def _kinds_and_payloads(store: Store) -> list[tuple[str, int | None, int]]:
    return [(m.kind, m.local_tx_id, m.payload["i"]) for m in store.queue.items()]


def test_thinning_halves_periodic_samples_of_the_longest_outage_only(tmp_path: Path) -> None:
    with Store(tmp_path, queue_cap=30) as s:
        long_tx, short_tx = _tx(s), _tx(s, 2)
        s.queue.enqueue("StartTransaction", {"i": -1}, local_tx_id=long_tx, kind="start")
        s.queue.enqueue("MeterValues", {"i": 0}, local_tx_id=long_tx, kind="meter_first")
        for i in range(1, 22):
            s.queue.enqueue("MeterValues", {"i": i}, local_tx_id=long_tx, kind="meter_periodic")
        s.queue.enqueue("StartTransaction", {"i": -1}, local_tx_id=short_tx, kind="start")
        for i in range(100, 105):
            s.queue.enqueue("MeterValues", {"i": i}, local_tx_id=short_tx, kind="meter_periodic")
        s.queue.enqueue("SecurityEventNotification", {"i": -2}, local_tx_id=None, kind="security_event")
        assert s.queue.pending_count() == 30
        s.queue.enqueue("StopTransaction", {"i": 999}, local_tx_id=long_tx, kind="stop")  # 31 > cap
        items = _kinds_and_payloads(s)
        long_periodic = [i for k, t, i in items if k == "meter_periodic" and t == long_tx]
        # First and last kept, every other one of the inner samples deleted: still evenly spaced.
        assert long_periodic == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21]
        assert [i for k, t, i in items if k == "meter_periodic" and t == short_tx] == [100, 101, 102, 103, 104]
        assert [(k, i) for k, _, i in items if k != "meter_periodic"] == [
            ("start", -1), ("meter_first", 0), ("start", -1), ("security_event", -2), ("stop", 999)]
        assert s.queue.pending_count() <= 30


def test_queue_grows_past_cap_rather_than_lose_a_start_or_stop(tmp_path: Path) -> None:
    with Store(tmp_path, queue_cap=5) as s:
        for _ in range(4):
            local_id = _tx(s)
            s.queue.enqueue("StartTransaction", {"i": 0}, local_tx_id=local_id, kind="start")
            s.queue.enqueue("MeterValues", {"i": 1}, local_tx_id=local_id, kind="meter_periodic")
            s.queue.enqueue("MeterValues", {"i": 2}, local_tx_id=local_id, kind="meter_periodic")
            s.queue.enqueue("StopTransaction", {"i": 3}, local_tx_id=local_id, kind="stop")
        assert s.queue.pending_count() == 16  # nothing was thinnable: each has only a first and last sample
        assert [k for k, _, _ in _kinds_and_payloads(s)].count("stop") == 4
