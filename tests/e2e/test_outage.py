"""The central system unreachable during a charging transaction, then back.

OCPP 1.6 §3.7 (transaction-related messages are queued and delivered in chronological
order once the connection is back, before anything sampled later), §4.7 MeterValues,
§4.8 / §4.10 (the offline Start and Stop carry the central system's transactionId once
it is known, errata 3.18: never -1 here), store/queue.py (the queue's cap and thinning
policy), docs/ARCHITECTURE.md (timestamps only from a synchronised clock: events recorded
before the first sync are re-stamped). The charger runs in-process against the bundled
central system, which is stopped and started again on the same port; the transaction is
started by free vend (plugging the simulated EV in).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from chargepoint.app import ChargePointApp
from chargepoint.csms.server import Received
from chargepoint.services.tx_delivery import clock_time_resolver
from chargepoint.store.queue import QueuedMessage, resolve_payload
from tests.support.harness import ChargerEnv, charger_env, come_back, eventually, go_offline

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

WAIT_S = 20.0
FREE_VEND = "FREEVEND"
REGISTER = "Energy.Active.Import.Register"
TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")


# --------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def running(env: ChargerEnv, *, wait_online: bool = True) -> AsyncIterator[ChargePointApp]:
    env.doc["authorization"] = {"free_vend_id_tag": FREE_VEND}
    async with env.app() as app:
        if wait_online:
            await eventually(lambda: app.online, timeout_s=WAIT_S, message="registered")
        yield app






async def pending(env: ChargerEnv) -> int:
    value: int = (await env.astatus())["queue"]["pending"]
    return value


def queued(app: ChargePointApp, action: str = "MeterValues") -> list[QueuedMessage]:
    return [m for m in app.store.queue.items() if m.action == action]


def as_sent(app: ChargePointApp, message: QueuedMessage) -> dict[str, Any]:
    """The queued payload with its timestamps resolved, as the sender will put them on the wire."""
    payload = resolve_payload(message.payload, clock_time_resolver(app.clock))
    assert payload is not None, "clock not synchronised"
    result: dict[str, Any] = payload
    return result


def stamp(rec: Received | dict[str, Any]) -> str:
    payload = rec.payload if isinstance(rec, Received) else rec
    value: str = payload["meterValue"][0]["timestamp"] if "meterValue" in payload else payload["timestamp"]
    return value


def tx_messages(env: ChargerEnv, after: int = 0) -> list[Received]:
    return [r for r in env.csms.received[after:] if r.action in TX_ACTIONS]


def strictly_increasing(values: list[str]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


# --------------------------------------------------------------------------- tests


async def test_queued_meter_values_arrive_in_order_before_later_samples_3_7(tmp_path: Path) -> None:
    """§3.7: samples taken during the outage are delivered oldest first, all of them before any
    sample taken after the reconnection; `status` shows them pending meanwhile, 0 once delivered."""
    async with charger_env(tmp_path, MeterValueSampleInterval=1, MeterValuesSampledData=REGISTER) as env, \
            running(env) as app:
        await env.asim("sim.plug", connector=1)
        start = await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
        assert start.response is not None
        transaction_id = start.response["transactionId"]
        await env.csms.wait_for("MeterValues", timeout_s=WAIT_S)   # sampling while online
        await go_offline(env, app)

        await eventually(lambda: len(queued(app)) >= 4, timeout_s=WAIT_S, message="samples queued in the outage")
        assert await pending(env) >= 4
        # What the outage left in the queue, as it must arrive: oldest first.
        held = [stamp(as_sent(app, m)) for m in queued(app)]
        back = await come_back(env, app)

        await eventually(lambda: len([r for r in tx_messages(env, back) if r.action == "MeterValues"])
                         >= len(held) + 2, timeout_s=WAIT_S, message="queued and new samples delivered")
        await eventually(lambda: app.store.queue.pending_count() == 0, timeout_s=WAIT_S, message="drained")
        assert await pending(env) == 0
        after = [r for r in tx_messages(env, back) if r.action == "MeterValues"]
        assert [stamp(r) for r in after[:len(held)]] == held
        assert all(r.payload["transactionId"] == transaction_id for r in after)
        # The sample in flight when the link went may be sent again (§3.7: resent until confirmed).
        every = [stamp(r) for r in env.csms.received_of("MeterValues")]
        assert strictly_increasing(list(dict.fromkeys(every))) and every == sorted(every), every
    env.csms.assert_no_violations()


async def test_offline_start_samples_and_stop_are_delivered_in_order_with_the_real_id_3_7(tmp_path: Path) -> None:
    """A transaction entirely inside the outage: once back, Start, its samples and Stop arrive in
    that order, every one after the Start with the transactionId the central system gave it
    (never -1, errata 3.18; never a provisional id)."""
    async with charger_env(tmp_path, MeterValueSampleInterval=1, MeterValuesSampledData=REGISTER) as env, \
            running(env) as app:
        await go_offline(env, app)
        await env.asim("sim.plug", connector=1)
        await eventually(lambda: len(queued(app)) >= 3, timeout_s=WAIT_S, message="samples queued offline")
        await env.asim("sim.unplug", connector=1)   # StopTransactionOnEVSideDisconnect: stops
        await eventually(lambda: queued(app, "StopTransaction"), timeout_s=WAIT_S, message="stop queued")
        held = [(m.action, as_sent(app, m)) for m in app.store.queue.items() if m.local_tx_id is not None]
        assert await pending(env) >= len(held) > 0
        assert held[0][0] == "StartTransaction" and held[-1][0] == "StopTransaction"
        assert not tx_messages(env)   # nothing of it reached the central system yet

        back = await come_back(env, app)
        await eventually(lambda: app.store.queue.pending_count() == 0, timeout_s=WAIT_S, message="drained")
        assert await pending(env) == 0
        got = tx_messages(env, back)
        assert [r.action for r in got] == [a for a, _ in held]
        assert got[0].response is not None
        transaction_id = got[0].response["transactionId"]
        assert transaction_id != -1
        assert all(r.payload["transactionId"] == transaction_id for r in got[1:])
        # Exactly what was queued (timestamps of the outage, not of the delivery), in order.
        for rec, (_, payload) in zip(got, held, strict=True):
            assert stamp(rec) == stamp(payload)
        assert strictly_increasing([stamp(r) for r in got])
        stop = env.csms.transactions[transaction_id].stop
        assert stop is not None and stop["reason"] == "EVDisconnected"
    env.csms.assert_no_violations()


async def test_long_outage_thins_samples_under_the_cap_and_keeps_start_first_last_stop(
        tmp_path: Path) -> None:
    """store/queue.py thinning: over its cap the queue drops every other periodic sample, never
    the Start, the Stop, nor a transaction's first and last sample; the survivors are delivered in
    order. The cap is the daemon's [storage] queue_cap, lowered here so a short outage exceeds it."""
    cap = 4
    async with charger_env(tmp_path, MeterValueSampleInterval=1, MeterValuesSampledData=REGISTER) as env:
        env.doc["storage"]["queue_cap"] = cap
        async with running(env) as app:
            assert app.store.queue.cap == cap
            await go_offline(env, app)
            await env.asim("sim.plug", connector=1)

            seen: set[int] = set()
            most = 0

            def watch() -> bool:
                nonlocal most
                items = app.store.queue.items()
                most = max(most, len(items))
                samples = [m for m in items if m.action == "MeterValues"]
                seen.update(m.seq for m in samples)
                # Wait until at least twice the cap of samples were taken (some thinned away).
                return len(seen) >= 2 * cap
            await eventually(watch, timeout_s=60, interval_s=0.02, message="many samples in the outage")
            first_sample = min(seen)
            await env.asim("sim.unplug", connector=1)
            await eventually(lambda: queued(app, "StopTransaction"), timeout_s=WAIT_S, message="stop queued")
            items = app.store.queue.items()
            seen.update(m.seq for m in items if m.action == "MeterValues")
            assert most <= cap and len(items) <= cap
            kept = [m.seq for m in items if m.action == "MeterValues"]
            assert len(kept) < len(seen)   # thinned
            assert kept[0] == first_sample and kept[-1] == max(seen)   # the first and the last sample stay
            assert items[0].action == "StartTransaction" and items[-1].action == "StopTransaction"
            held = [(m.action, stamp(as_sent(app, m))) for m in items]

            back = await come_back(env, app)
            await eventually(lambda: app.store.queue.pending_count() == 0, timeout_s=WAIT_S, message="drained")
            got = tx_messages(env, back)
            assert [(r.action, stamp(r)) for r in got] == held
            assert got[0].response is not None
            transaction_id = got[0].response["transactionId"]
            assert all(r.payload["transactionId"] == transaction_id for r in got[1:])
        env.csms.assert_no_violations()


async def test_events_before_the_first_clock_sync_are_restamped_not_sent_as_1970(tmp_path: Path) -> None:
    """docs/ARCHITECTURE.md (time), §4.8: NTP silent and the central system unreachable at start;
    the transaction and its samples are recorded without a wall time, then stamped from the
    monotonic clock once BootNotification.conf's currentTime (§6.3) sets the clock. The central
    system's clock runs an hour ahead of the system clock, so the stamps must follow its time."""
    offset_s = 3600.0
    async with charger_env(tmp_path, MeterValueSampleInterval=1, MeterValuesSampledData=REGISTER) as env:
        env.ntp.silent = True
        await env.csms.stop()
        async with running(env, wait_online=False) as app:
            before_s = time.time()
            await env.asim("sim.plug", connector=1)
            await eventually(lambda: app.transactions.active(1) is not None, timeout_s=WAIT_S, message="started")
            after_s = time.time()
            await eventually(lambda: len(queued(app)) >= 2, timeout_s=WAIT_S, message="samples queued")
            assert not app.clock.synced
            assert all(m.event_time is not None and m.event_time.wall_s is None
                       for m in app.store.queue.items() if m.local_tx_id is not None)

            env.csms.time_offset_s = offset_s
            back = await come_back(env, app)
            start = await env.csms.wait_for("StartTransaction", after_index=back, timeout_s=WAIT_S)
            assert app.clock.synced and app.clock.sync_source is not None
            started_s = datetime.fromisoformat(start.payload["timestamp"].replace("Z", "+00:00")).timestamp()
            # Re-stamped on the central system's time; a margin for the offset measurement only.
            assert before_s + offset_s - 2 <= started_s <= after_s + offset_s + 2, (before_s, started_s, after_s)
            await eventually(lambda: len(env.csms.received_of("MeterValues")) >= 3, timeout_s=WAIT_S,
                             message="samples delivered")
            stamps = [stamp(r) for r in tx_messages(env, back)]
            assert strictly_increasing(stamps), stamps
            assert stamps[0] == start.payload["timestamp"]
    env.csms.assert_no_violations()
