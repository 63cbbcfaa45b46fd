"""Stateful property test of the durable queue against a plain Python model.

Rules: enqueue (every kind), ack the head, drop any message, count a failed
attempt, a write block that crashes before its commit, and a power cut (close
and reopen the database from disk). After every step: order preserved; nothing
lost except periodic MeterValues thinned over the cap, and never a transaction's
first or last periodic sample, a Start, a Stop or any other kind (OCPP 1.6 §3.7,
queue.py thinning policy).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from chargepoint.clock import EventTime
from chargepoint.store import Store
from chargepoint.store.queue import KINDS

CAP = 6
T = EventTime("boot-x", 1.0, None)


class _Crash(Exception):
    pass


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="queue-sm-"))
        self.store = self._open()
        self.txs = [self.store.transactions.begin(connector_id=c, id_tag="T", start_meter_wh=0, start_time=T)
                    for c in (1, 2, 3)]
        self.model: list[dict[str, Any]] = []
        self.counter = 0
        self.thinned = 0

    def _open(self) -> Store:
        store = Store(self.dir, queue_cap=CAP)
        # This test checks the queue's logic; skipping the per-commit fsync keeps it fast on a
        # shared disk. Surviving a killed process is test_crash.py's job, with fsync on.
        store.connection.execute("PRAGMA synchronous=OFF")
        return store

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _actual(self) -> list[dict[str, Any]]:
        return [{"seq": m.seq, "kind": m.kind, "tx": m.local_tx_id, "payload": m.payload, "attempts": m.attempts}
                for m in self.store.queue.items()]

    @rule(kind=st.sampled_from(KINDS), tx_index=st.integers(0, 2))
    def enqueue(self, kind: str, tx_index: int) -> None:
        self._enqueue(kind, tx_index)

    @rule(tx_index=st.integers(0, 2), count=st.integers(1, 6))
    def outage_samples(self, tx_index: int, count: int) -> None:
        for _ in range(count):
            self._enqueue("meter_periodic", tx_index)

    def _enqueue(self, kind: str, tx_index: int) -> None:
        tx = None if kind == "security_event" else self.txs[tx_index]
        self.counter += 1
        payload = {"n": self.counter, "timestamp": {"$eventTime": ["boot-x", float(self.counter), None]}}
        seq = self.store.queue.enqueue("X", payload, local_tx_id=tx, kind=kind, event_time=T)
        expected = [*self.model, {"seq": seq, "kind": kind, "tx": tx, "payload": payload, "attempts": 0}]
        actual = self._actual()
        kept = {m["seq"] for m in actual}
        assert seq in kept
        assert [m for m in expected if m["seq"] in kept] == actual  # a subsequence, in order, unchanged
        for gone in (m for m in expected if m["seq"] not in kept):
            assert gone["kind"] == "meter_periodic", gone
            group = [m["seq"] for m in actual if m["kind"] == "meter_periodic" and m["tx"] == gone["tx"]]
            # Thinned from the inside: a kept periodic sample of its transaction before and after it.
            assert group and group[0] < gone["seq"] < group[-1], (gone, group)
        if len(actual) < len(expected):
            self.thinned += 1
        if len(actual) > CAP:
            for tx_id in {m["tx"] for m in actual}:
                assert sum(1 for m in actual if m["kind"] == "meter_periodic" and m["tx"] == tx_id) <= 2
        self.model = actual

    @precondition(lambda self: bool(self.model))
    @rule()
    def ack_head(self) -> None:
        head = self.store.queue.peek()
        assert head is not None and head.seq == self.model[0]["seq"]
        assert self.store.queue.ack(head.seq)
        self.model.pop(0)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def drop_any(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.model) - 1))
        assert self.store.queue.drop(self.model[index]["seq"], "test")
        self.model.pop(index)

    @precondition(lambda self: bool(self.model))
    @rule()
    def failed_attempt(self) -> None:
        self.model[0]["attempts"] += 1
        assert self.store.queue.bump_attempts(self.model[0]["seq"]) == self.model[0]["attempts"]

    @rule(kind=st.sampled_from(KINDS))
    def crash_before_commit(self, kind: str) -> None:
        try:
            with self.store.transaction():
                self.store.queue.enqueue("X", {"n": -1}, local_tx_id=self.txs[0], kind=kind)
                if self.model:
                    self.store.queue.ack(self.model[0]["seq"])
                raise _Crash()
        except _Crash:
            pass

    @rule()
    def power_cut(self) -> None:
        self.store.close()
        self.store = self._open()

    @invariant()
    def queue_matches_model(self) -> None:
        assert self._actual() == self.model
        assert self.store.queue.pending_count() == len(self.model)
        head = self.store.queue.peek()
        assert (head.seq if head else None) == (self.model[0]["seq"] if self.model else None)


QueueMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestQueueAgainstModel = QueueMachine.TestCase
