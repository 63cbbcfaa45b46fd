"""Delivery of queued transaction-related messages (OCPP 1.6 §3.7, §3.7.1, §4.8, errata 3.18).

The central system here is a function (`FakeCentralSystem.call`), the store is
real SQLite under tmp_path. Waits are injected (`sleep`) and recorded, so the
retry schedule is checked by value, not by timing.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from chargepoint.clock import Clock, EventTime
from chargepoint.ocppj.session import CallErrorReceived, CallTimeout, NotConnected
from chargepoint.services.tx_delivery import TransactionMessageSender, clock_time_resolver
from chargepoint.store import Store, time_ref

WALL0 = 1_790_000_000.0
T_SYNCED = EventTime("boot-a", 5.0, WALL0)

Response = dict[str, Any] | Exception | Callable[[], Any]


class FakeCentralSystem:
    """`call(action, payload)`: scripted answers per action, else a normal confirmation."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.script: dict[str, list[Response]] = {}
        self.ids = itertools.count(4711)
        self.concurrent = 0
        self.max_concurrent = 0

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            self.calls.append((action, payload))
            await asyncio.sleep(0)
            queued = self.script.get(action)
            if queued:
                answer = queued.pop(0)
                if isinstance(answer, Exception):
                    raise answer
                if callable(answer):
                    result = answer()
                    return dict(await result) if inspect.isawaitable(result) else dict(result)
                return answer
            if action == "StartTransaction":
                return {"transactionId": next(self.ids), "idTagInfo": {"status": "Accepted"}}
            if action == "StopTransaction":
                return {"idTagInfo": {"status": "Accepted"}}
            return {}
        finally:
            self.concurrent -= 1

    def sent(self, action: str | None = None) -> list[dict[str, Any]]:
        return [p for a, p in self.calls if action is None or a == action]


class Harness:
    def __init__(self, store: Store, **kwargs: Any) -> None:
        self.store = store
        self.cs = FakeCentralSystem()
        self.sleeps: list[float] = []
        self.started: list[tuple[int, dict[str, Any]]] = []
        self.stopped: list[tuple[int, dict[str, Any]]] = []
        self.attempts = 3
        self.interval_s = 7.0
        self.synced = True
        options: dict[str, Any] = {
            "store": store,
            "call": self.cs.call,
            "attempts": lambda: self.attempts,
            "retry_interval_s": lambda: self.interval_s,
            "resolve_time": self.resolve,
            "on_start_confirmed": lambda lid, conf: self.started.append((lid, conf)),
            "on_stop_confirmed": lambda lid, conf: self.stopped.append((lid, conf)),
            "sleep": self.sleep,
        }
        options.update(kwargs)
        self.sender = TransactionMessageSender(**options)
        self.task: asyncio.Task[None] | None = None

    def resolve(self, t: EventTime) -> str | None:
        if t.wall_s is not None:
            return f"wall:{t.wall_s}"
        return f"restamped:{t.boot_id}:{t.monotonic_s}" if self.synced else None

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)

    def start(self) -> None:
        self.task = asyncio.create_task(self.sender.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await self.task
            self.task = None

    # -- what the transaction and metering services would enqueue ----------

    def start_tx(self, connector_id: int = 1, id_tag: str = "TAG1", t: EventTime = T_SYNCED) -> int:
        with self.store.transaction():
            local_id = self.store.transactions.begin(connector_id=connector_id, id_tag=id_tag, start_meter_wh=1000,
                                                     start_time=t)
            self.store.queue.enqueue(
                "StartTransaction",
                {"connectorId": connector_id, "idTag": id_tag, "meterStart": 1000, "timestamp": time_ref(t)},
                local_tx_id=local_id, kind="start", event_time=t)
        self.sender.notify()
        return local_id

    def meter(self, local_id: int, wh: float, kind: str = "meter_periodic", t: EventTime = T_SYNCED) -> int:
        seq = self.store.queue.enqueue(
            "MeterValues",
            {"connectorId": 1, "meterValue": [{"timestamp": time_ref(t), "sampledValue": [{"value": str(wh)}]}]},
            local_tx_id=local_id, kind=kind, event_time=t)
        self.sender.notify()
        return seq

    def stop_tx(self, local_id: int, wh: float = 2000, t: EventTime = T_SYNCED) -> None:
        with self.store.transaction():
            assert self.store.transactions.mark_stop_queued(local_id, stop_meter_wh=wh, stop_time=t, reason="Local")
            self.store.queue.enqueue("StopTransaction", {"meterStop": int(wh), "timestamp": time_ref(t)},
                                     local_tx_id=local_id, kind="stop", event_time=t)
        self.sender.notify()

    def security_event(self, kind: str = "SettingSystemTime") -> None:
        self.store.queue.enqueue("SecurityEventNotification", {"type": kind, "timestamp": time_ref(T_SYNCED)},
                                 local_tx_id=None, kind="security_event", event_time=T_SYNCED)
        self.sender.notify()


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll a condition the sender reaches through several awaits (a generous timeout, no timing assert)."""
    async with asyncio.timeout(timeout_s):
        for _ in itertools.count():
            if predicate():
                return
            await asyncio.sleep(0.001)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state")
    yield s
    s.close()


@pytest_asyncio.fixture
async def h(store: Store) -> AsyncIterator[Harness]:
    harness = Harness(store)
    yield harness
    await harness.stop()


@pytest.mark.asyncio
async def test_messages_are_delivered_in_queue_order_one_at_a_time_3_7(h: Harness) -> None:
    a = h.start_tx(1)
    h.meter(a, 1100)
    b = h.start_tx(2, "TAG2")
    h.security_event()
    h.meter(a, 1200)
    h.stop_tx(a)
    h.stop_tx(b)
    h.sender.set_online(True)
    h.start()
    await wait_until(lambda: h.sender.pending() == 0)
    assert [a for a, _ in h.cs.calls] == ["StartTransaction", "MeterValues", "StartTransaction",
                                          "SecurityEventNotification", "MeterValues", "StopTransaction",
                                          "StopTransaction"]
    assert h.cs.max_concurrent == 1
    tx_a, tx_b = h.store.transactions.get(a), h.store.transactions.get(b)
    assert tx_a is not None and tx_a.start_acked and tx_a.stop_acked and tx_a.transaction_id == 4711
    assert tx_b is not None and tx_b.stop_acked and tx_b.transaction_id == 4712
    assert [lid for lid, _ in h.stopped] == [a, b]


@pytest.mark.asyncio
async def test_offline_start_then_meter_values_and_stop_carry_the_real_transaction_id(h: Harness) -> None:
    """Queued before StartTransaction.conf; sent with its transactionId, never -1 (field-notes §6)."""
    local_id = h.start_tx()
    h.meter(local_id, 1100, kind="meter_first")
    h.meter(local_id, 1500)
    h.stop_tx(local_id, 2000)
    h.cs.script["StartTransaction"] = [{"transactionId": 987, "idTagInfo": {"status": "Accepted"}}]
    h.start()
    await asyncio.sleep(0.01)
    assert h.cs.calls == []  # offline: nothing is sent
    h.sender.set_online(True)
    await wait_until(lambda: h.sender.pending() == 0)
    assert "transactionId" not in h.cs.sent("StartTransaction")[0]
    assert [p["transactionId"] for p in h.cs.sent("MeterValues")] == [987, 987]
    assert h.cs.sent("StopTransaction")[0]["transactionId"] == 987
    assert h.started == [(local_id, {"transactionId": 987, "idTagInfo": {"status": "Accepted"}})]
    assert h.store.transactions.by_remote_id(987) is not None


@pytest.mark.asyncio
async def test_retry_waits_interval_times_transmissions_then_delivers_3_7_1(h: Harness) -> None:
    h.start_tx()
    h.cs.script["StartTransaction"] = [CallErrorReceived("InternalError", "db down"), CallTimeout("no answer")]
    h.sender.set_online(True)
    h.start()
    await wait_until(lambda: h.sender.pending() == 0)
    assert len(h.cs.sent("StartTransaction")) == 3
    assert h.sleeps == [7.0, 14.0]  # TransactionMessageRetryInterval x 1, then x 2


@pytest.mark.asyncio
async def test_message_discarded_after_attempts_and_the_next_one_is_sent_3_7_1(h: Harness) -> None:
    h.attempts, h.interval_s = 3, 2.0
    h.security_event("FirstEvent")
    h.security_event("SecondEvent")
    h.cs.script["SecurityEventNotification"] = [CallErrorReceived("InternalError")] * 3
    h.sender.set_online(True)
    h.start()
    await wait_until(lambda: h.sender.pending() == 0)
    assert [p["type"] for p in h.cs.sent()] == ["FirstEvent"] * 3 + ["SecondEvent"]
    assert h.sleeps == [2.0, 4.0]  # no wait after the last failure: the message is discarded


@pytest.mark.asyncio
async def test_discarded_start_leaves_its_messages_with_transaction_id_minus_one_errata_3_18(h: Harness) -> None:
    local_id = h.start_tx()
    h.meter(local_id, 1500)
    h.stop_tx(local_id)
    h.cs.script["StartTransaction"] = [CallErrorReceived("InternalError")] * 3
    h.sender.set_online(True)
    h.start()
    await wait_until(lambda: h.sender.pending() == 0)
    assert h.cs.sent("MeterValues")[0]["transactionId"] == -1
    assert h.cs.sent("StopTransaction")[0]["transactionId"] == -1
    tx = h.store.transactions.get(local_id)
    assert tx is not None and tx.start_dropped and tx.stop_acked and tx.transaction_id is None
    assert h.started == []


@pytest.mark.asyncio
async def test_discarded_start_with_drop_policy_discards_its_messages(store: Store) -> None:
    h = Harness(store, orphan_policy="drop")
    try:
        local_id = h.start_tx()
        h.meter(local_id, 1500)
        other = h.start_tx(2, "TAG2")
        h.meter(local_id, 1600)  # queued after the other transaction's Start
        h.stop_tx(local_id)
        h.cs.script["StartTransaction"] = [CallErrorReceived("InternalError")] * 3
        h.sender.set_online(True)
        h.start()
        await wait_until(lambda: h.sender.pending() == 0)
        assert [a for a, _ in h.cs.calls] == ["StartTransaction"] * 4  # 3 failed + the other transaction's
        tx = store.transactions.get(local_id)
        assert tx is not None and tx.start_dropped and tx.stop_dropped and tx.resolved
        assert store.transactions.get(other) is not None
        assert all(p.get("transactionId") != -1 for p in h.cs.sent())
    finally:
        await h.stop()


@pytest.mark.asyncio
async def test_not_connected_is_not_counted_as_an_attempt(h: Harness) -> None:
    h.attempts = 1  # a single counted failure would discard the message
    local_id = h.start_tx()
    h.cs.script["StartTransaction"] = [NotConnected("link down")] * 3
    h.sender.set_online(True)
    h.start()
    await wait_until(lambda: h.sender.pending() == 0)
    tx = h.store.transactions.get(local_id)
    assert tx is not None and tx.start_acked and not tx.start_dropped
    assert len(h.cs.sent("StartTransaction")) == 4


@pytest.mark.asyncio
async def test_not_connected_waits_until_online_again(h: Harness) -> None:
    h.start_tx()

    def link_lost() -> dict[str, Any]:
        h.sender.set_online(False)  # what the connection manager does when the socket drops
        raise NotConnected("connection lost while waiting for StartTransaction")

    h.cs.script["StartTransaction"] = [link_lost]
    h.sender.set_online(True)
    h.start()
    await wait_until(lambda: len(h.cs.calls) == 1)
    await asyncio.sleep(0.02)
    assert len(h.cs.calls) == 1 and h.sender.pending() == 1
    h.sender.set_online(True)
    await wait_until(lambda: h.sender.pending() == 0)
    assert len(h.cs.sent("StartTransaction")) == 2
    assert h.store.queue.peek() is None


@pytest.mark.asyncio
async def test_pre_sync_timestamps_wait_for_the_clock_and_are_restamped_at_send_time(store: Store) -> None:
    h = Harness(store, clock_poll_s=60.0)
    try:
        h.synced = False
        t_unsynced = EventTime("boot-a", 3.5, None)
        local_id = h.start_tx(t=t_unsynced)
        h.meter(local_id, 1200, t=EventTime("boot-a", 63.5, None))
        h.sender.set_online(True)
        h.start()
        await wait_until(lambda: h.sender.status().waiting_for_clock)
        assert h.cs.calls == []  # never sent with an unknown time (no 1970)
        h.synced = True
        h.sender.notify()  # the clock service calls this when NTP (or the central system) sets the time
        await wait_until(lambda: h.sender.pending() == 0)
        assert h.cs.sent("StartTransaction")[0]["timestamp"] == "restamped:boot-a:3.5"
        assert h.cs.sent("MeterValues")[0]["meterValue"][0]["timestamp"] == "restamped:boot-a:63.5"
    finally:
        await h.stop()


@pytest.mark.asyncio
async def test_message_in_flight_at_a_crash_is_sent_again_and_acked_ones_are_not(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = Store(state)
    first = Harness(store)
    local_id = first.start_tx()
    first.meter(local_id, 1100)
    first.stop_tx(local_id)
    never: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    first.cs.script["MeterValues"] = [lambda: never]  # the power goes before MeterValues.conf
    first.sender.set_online(True)
    first.start()
    await wait_until(lambda: len(first.cs.calls) == 2)
    await first.stop()
    store.close()

    store = Store(state)
    second = Harness(store)
    try:
        second.sender.set_online(True)
        second.start()
        await wait_until(lambda: second.sender.pending() == 0)
        assert [a for a, _ in second.cs.calls] == ["MeterValues", "StopTransaction"]
        assert [p["transactionId"] for p in second.cs.sent()] == [4711, 4711]  # the id from before the crash
        assert len(first.cs.sent("StartTransaction")) == 1
    finally:
        await second.stop()
        store.close()


@pytest.mark.asyncio
async def test_attempt_count_survives_a_restart(h: Harness) -> None:
    h.security_event()
    head = h.store.queue.peek()
    assert head is not None
    h.store.queue.bump_attempts(head.seq)
    h.store.queue.bump_attempts(head.seq)  # two failures before the reboot
    h.cs.script["SecurityEventNotification"] = [CallErrorReceived("InternalError")] * 3
    h.sender.set_online(True)
    h.start()
    await wait_until(lambda: h.sender.pending() == 0)
    assert len(h.cs.sent()) == 1  # the third and last attempt


@pytest.mark.asyncio
async def test_start_conf_not_accepted_is_reported_and_the_id_still_used(h: Harness) -> None:
    local_id = h.start_tx()
    h.meter(local_id, 1100)
    h.cs.script["StartTransaction"] = [{"transactionId": 55, "idTagInfo": {"status": "Blocked"}}]
    h.sender.set_online(True)
    h.start()
    await wait_until(lambda: h.sender.pending() == 0)
    assert h.started == [(local_id, {"transactionId": 55, "idTagInfo": {"status": "Blocked"}})]
    tx = h.store.transactions.get(local_id)
    assert tx is not None and tx.id_tag_status == "Blocked" and tx.transaction_id == 55
    assert h.cs.sent("MeterValues")[0]["transactionId"] == 55


@pytest.mark.asyncio
async def test_start_conf_without_transaction_id_counts_as_a_failure(h: Harness) -> None:
    local_id = h.start_tx()
    h.cs.script["StartTransaction"] = [{"idTagInfo": {"status": "Accepted"}}]
    h.sender.set_online(True)
    h.start()
    await wait_until(lambda: h.sender.pending() == 0)
    assert len(h.cs.sent("StartTransaction")) == 2 and h.sleeps == [7.0]
    tx = h.store.transactions.get(local_id)
    assert tx is not None and tx.transaction_id == 4711


@pytest.mark.asyncio
async def test_new_messages_wake_an_idle_sender(h: Harness) -> None:
    h.sender.set_online(True)
    h.start()
    await asyncio.sleep(0.01)
    local_id = h.start_tx()
    await wait_until(lambda: h.sender.pending() == 0)
    h.meter(local_id, 1234)
    await wait_until(lambda: len(h.cs.calls) == 2 and h.sender.pending() == 0)
    assert h.cs.sent("MeterValues")[0]["transactionId"] == 4711


def test_clock_resolver_restamps_this_boots_events_and_waits_while_unsynced() -> None:
    mono = [100.0]
    clock = Clock(monotonic=lambda: mono[0], wall=lambda: mono[0], boot_id="this-boot")  # an RTC-less board at 1970
    resolve = clock_time_resolver(clock)
    before_sync = clock.event_time()
    earlier_boot = EventTime("earlier-boot", 50.0, None)
    assert resolve(before_sync) is None and resolve(earlier_boot) is None  # unknown: wait, never 1970
    mono[0] = 160.0
    clock.apply_offset(WALL0, "ntp", stepped=False)  # true time = system time + WALL0
    # Recorded 60 s before the sync: re-stamped from the monotonic clock.
    assert resolve(before_sync) == _iso(WALL0 + 100.0)
    # An unsynced event of an earlier boot: this boot's start, the latest it can have happened.
    assert resolve(earlier_boot) == _iso(WALL0)
    assert resolve(EventTime("x", 1.0, WALL0 + 5)) == _iso(WALL0 + 5)


def _iso(wall_s: float) -> str:
    return Clock.iso8601(datetime.fromtimestamp(wall_s, UTC))
