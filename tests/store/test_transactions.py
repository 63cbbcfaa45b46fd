"""The transactions table: what boot reconciliation needs after a power cut (field-notes §6)."""

from __future__ import annotations

from pathlib import Path

from chargepoint.clock import EventTime
from chargepoint.store import Store

T_START = EventTime("boot-a", 100.0, None)  # before the first NTP answer
T_SAMPLE = EventTime("boot-a", 160.0, 1_790_000_060.0)
T_STOP = EventTime("boot-a", 220.0, 1_790_000_120.0)


def test_begin_records_start_and_last_meter_equal_to_start(store: Store) -> None:
    local_id = store.transactions.begin(connector_id=2, id_tag="TAG1", start_meter_wh=1234.0, start_time=T_START,
                                        reservation_id=7)
    tx = store.transactions.get(local_id)
    assert tx is not None
    assert (tx.connector_id, tx.id_tag, tx.reservation_id, tx.transaction_id) == (2, "TAG1", 7, None)
    assert tx.start_time == T_START and tx.start_time.wall_s is None
    assert tx.last_meter_wh == 1234.0 and tx.last_meter_time == T_START
    assert not (tx.start_acked or tx.stop_queued or tx.stop_acked)


def test_offline_transaction_gets_remote_id_on_start_conf(store: Store) -> None:
    local_id = store.transactions.begin(connector_id=1, id_tag="TAG1", start_meter_wh=0.0, start_time=T_START)
    assert store.transactions.by_remote_id(4711) is None
    store.transactions.set_remote_id(local_id, 4711, "Accepted")
    tx = store.transactions.by_remote_id(4711)
    assert tx is not None and tx.local_id == local_id and tx.start_acked and tx.id_tag_status == "Accepted"


def test_last_meter_update_survives_reopen(tmp_path: Path) -> None:
    with Store(tmp_path) as s:
        local_id = s.transactions.begin(connector_id=1, id_tag="T", start_meter_wh=10.0, start_time=T_START)
        s.transactions.update_last_meter(local_id, 2500.5, T_SAMPLE)
    with Store(tmp_path) as s:
        tx = s.transactions.get(local_id)
        assert tx is not None and tx.last_meter_wh == 2500.5 and tx.last_meter_time == T_SAMPLE


def test_stop_is_queued_only_once(store: Store) -> None:
    """Never a second StopTransaction for one transaction (field-notes §6: "stopped twice")."""
    local_id = store.transactions.begin(connector_id=1, id_tag="T", start_meter_wh=10.0, start_time=T_START)
    assert store.transactions.open_transactions()[0].local_id == local_id
    assert store.transactions.mark_stop_queued(local_id, stop_meter_wh=900.0, stop_time=T_STOP, reason="EVDisconnected")
    assert not store.transactions.mark_stop_queued(local_id, stop_meter_wh=950.0, stop_time=T_STOP, reason="PowerLoss")
    tx = store.transactions.get(local_id)
    assert tx is not None and tx.stop_meter_wh == 900.0 and tx.stop_reason == "EVDisconnected"
    assert tx.stop_time == T_STOP and tx.last_meter_wh == 900.0
    assert store.transactions.open_transactions() == []
    assert store.transactions.open_on_connector(1) is None


def test_unacked_lists_owed_starts_and_stops(store: Store) -> None:
    a = store.transactions.begin(connector_id=1, id_tag="A", start_meter_wh=0, start_time=T_START)
    b = store.transactions.begin(connector_id=2, id_tag="B", start_meter_wh=0, start_time=T_START)
    store.transactions.set_remote_id(b, 2, "Accepted")
    assert [t.local_id for t in store.transactions.unacked()] == [a]
    store.transactions.mark_stop_queued(b, stop_meter_wh=5, stop_time=T_STOP)
    assert [t.local_id for t in store.transactions.unacked()] == [a, b]
    store.transactions.mark_stop_acked(b)
    assert [t.local_id for t in store.transactions.unacked()] == [a]
    store.transactions.mark_start_dropped(a)
    assert store.transactions.unacked() == []


def test_prune_keeps_newest_resolved_and_everything_still_owed(store: Store) -> None:
    ids = []
    for i in range(6):
        local_id = store.transactions.begin(connector_id=1, id_tag=f"T{i}", start_meter_wh=0, start_time=T_START)
        store.transactions.set_remote_id(local_id, 100 + i, "Accepted")
        store.transactions.mark_stop_queued(local_id, stop_meter_wh=1, stop_time=T_STOP)
        ids.append(local_id)
    for local_id in ids[:5]:
        store.transactions.mark_stop_acked(local_id)
    # ids[0] still has a message queued: it must stay (the queue refers to it).
    store.queue.enqueue("MeterValues", {"connectorId": 1}, local_tx_id=ids[0], kind="meter_last")
    open_id = store.transactions.begin(connector_id=2, id_tag="OPEN", start_meter_wh=0, start_time=T_START)
    deleted = store.transactions.prune(keep=2)
    remaining = {t.local_id for t in store.transactions.recent(100)}
    assert deleted == 2
    assert remaining == {ids[0], ids[3], ids[4], ids[5], open_id}
