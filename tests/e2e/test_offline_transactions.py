"""Transactions while the central system is unreachable, and across power cuts.

OCPP 1.6 §3.5.1 (cache), §3.5.4 (unknown offline authorization), §3.7 (queued
transaction messages, delivered in order), §4.8 + errata 3.18 (never a provisional
transactionId; -1 only for a discarded Start), §5.4 ClearCache, §7.36 Reason
PowerLoss / HardReset / SoftReset, field-notes §6 (power-cut recovery, never a
second StopTransaction). The central system is stopped and started again on the
same port; a power cut is a SIGKILL of the real daemon process.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chargepoint.app import ChargePointApp
from chargepoint.csms.server import Received
from tests.support.harness import CP_ID, ChargerEnv, calls, charger_env, come_back, eventually, go_offline

pytestmark = pytest.mark.asyncio

WAIT_S = 20.0


@contextlib.asynccontextmanager
async def running(env: ChargerEnv) -> AsyncIterator[ChargePointApp]:
    async with env.app() as app:
        await env.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1, timeout_s=WAIT_S)
        yield app


async def status_of(env: ChargerEnv, status: str, *, after: int = 0, timeout_s: float = WAIT_S) -> Received:
    return await env.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == status,
                                   after_index=after, timeout_s=timeout_s)











async def connector(env: ChargerEnv) -> dict[str, Any]:
    entry: dict[str, Any] = (await env.astatus())["connectors"][0]
    return entry


async def test_offline_start_for_unknown_id_is_delivered_in_order_with_the_real_id(tmp_path: Path) -> None:
    """§3.5.4 AllowOfflineTxForUnknownId; §3.7: Start then Stop once back, the Stop with the
    central system's transactionId (never -1, never a provisional id)."""
    async with charger_env(tmp_path, AllowOfflineTxForUnknownId=True) as env, running(env) as app:
        await env.asim("sim.plug", connector=1)
        await status_of(env, "Preparing")
        await go_offline(env, app)

        await env.asim("sim.swipe", id_tag="UNKNOWN1", connector=1)
        await eventually(lambda: app.transactions.active(1) is not None, message="offline start")
        view = await connector(env)
        assert view["transaction_id"] is None and view["id_tag"] == "UNKNOWN1"
        start_wh = (await app.meters.read_now(1)).energy_wh
        await eventually(lambda: app.meters.latest(1).energy_wh >= start_wh + 5, message="energy while offline")
        await env.asim("sim.swipe", id_tag="UNKNOWN1", connector=1)
        await eventually(lambda: app.transactions.active(1) is None, message="offline stop")
        queued = [m.action for m in app.store.queue.items() if m.local_tx_id is not None]
        assert queued[0] == "StartTransaction" and queued[-1] == "StopTransaction"
        assert (await env.astatus())["queue"]["pending"] >= len(queued)

        back = await come_back(env, app)
        stop = await env.csms.wait_for("StopTransaction", after_index=back, timeout_s=WAIT_S)
        start = await env.csms.wait_for("StartTransaction", after_index=back)
        assert start.index < stop.index
        transaction_id = start.response["transactionId"]  # type: ignore[index]
        assert stop.payload["transactionId"] == transaction_id != -1
        assert start.payload["timestamp"] < stop.payload["timestamp"]
        assert stop.payload["meterStop"] >= start.payload["meterStart"] + 5
        assert not calls(env, "Authorize")   # offline: decided locally, the same card stops
        await eventually(lambda: app.store.queue.pending_count() == 0, message="queue drained")
    env.csms.assert_no_violations()


async def test_cached_card_starts_offline_and_unknown_card_is_refused_3_5_1(tmp_path: Path) -> None:
    """LocalAuthorizeOffline: a card the central system accepted before (cached) starts while
    offline; an unknown one is refused (AllowOfflineTxForUnknownId false)."""
    async with charger_env(tmp_path, LocalAuthorizeOffline=True, AllowOfflineTxForUnknownId=False,
                           ConnectionTimeOut=60) as env, running(env) as app:
        await env.asim("sim.swipe", id_tag="CACHED")
        await eventually(lambda: app.transactions.pending_id_tag(1) == "CACHED", message="authorized online")
        await env.asim("sim.swipe", id_tag="CACHED")   # presented again: cancelled (§4.9 B1)
        await eventually(lambda: app.transactions.pending_id_tag(1) is None, message="cancelled")
        assert app.store.auth_cache.get("CACHED") == {"status": "Accepted"}
        await go_offline(env, app)

        await env.asim("sim.swipe", id_tag="STRANGER")
        await env.asim("sim.swipe", id_tag="CACHED")
        # Cards are handled in order: had STRANGER been accepted it would hold the connector.
        await eventually(lambda: app.transactions.pending_id_tag(1) == "CACHED", message="cached card offline")
        await env.asim("sim.plug", connector=1)
        await eventually(lambda: app.transactions.active(1) is not None, message="offline start")
        assert app.transactions.active(1).id_tag == "CACHED"
        await env.asim("sim.swipe", id_tag="CACHED")
        await eventually(lambda: app.transactions.active(1) is None, message="offline stop")

        back = await come_back(env, app)
        stop = await env.csms.wait_for("StopTransaction", after_index=back, timeout_s=WAIT_S)
        assert stop.payload["idTag"] == "CACHED"
        assert [r.payload["idTag"] for r in calls(env, "StartTransaction")] == ["CACHED"]
        assert [r.payload["idTag"] for r in calls(env, "Authorize")] == ["CACHED"]
    env.csms.assert_no_violations()


async def test_clear_cache_forgets_cards_for_offline_use_5_4(tmp_path: Path) -> None:
    async with charger_env(tmp_path, LocalAuthorizeOffline=True, AllowOfflineTxForUnknownId=False) as env, \
            running(env) as app:
        assert (await app.auth.check("CACHED")).accepted
        assert app.store.auth_cache.count() == 1
        assert await env.csms.call(CP_ID, "ClearCache", {}) == {"status": "Accepted"}
        assert app.store.auth_cache.count() == 0
        await go_offline(env, app)
        result = await app.auth.check("CACHED")
        assert not result.accepted and result.source == "offline_refused"
    env.csms.assert_no_violations()


async def test_power_cut_during_a_transaction_stops_it_once_with_power_loss(tmp_path: Path) -> None:
    """field-notes §6: SIGKILL while charging; on restart the StopTransaction (PowerLoss, the last
    persisted meter value, the central system's id) is sent exactly once; the EV still plugged
    shows Finishing (the transaction is not resumed)."""
    async with charger_env(tmp_path) as env:
        with env.daemon() as proc:
            proc.wait_socket(env.socket_path)
            await env.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1, timeout_s=30)
            await env.asim("sim.plug", connector=1)
            await status_of(env, "Preparing")
            await env.asim("sim.swipe", id_tag="TAG9", connector=1)
            start = await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
            await status_of(env, "Charging", after=start.index)
            proc.kill()

            back = len(env.csms.received)
            proc.start()
            stop = await env.csms.wait_for("StopTransaction", after_index=back, timeout_s=30)
            assert stop.payload["transactionId"] == start.response["transactionId"]  # type: ignore[index]
            assert stop.payload["reason"] == "PowerLoss" and "idTag" not in stop.payload
            await env.csms.wait_for("BootNotification", after_index=back)
            await status_of(env, "Finishing", after=back)
            view = await connector(env)
            assert view["transaction_id"] is None and view["status"] == "Finishing"
            assert start.payload["meterStart"] <= stop.payload["meterStop"] <= view["meter"]["energy_wh"]
            await eventually(lambda: env.status()["queue"]["pending"] == 0, message="queue drained")
        assert len(calls(env, "StopTransaction")) == 1
    env.csms.assert_no_violations()


async def test_reset_in_progress_at_the_power_cut_is_the_stop_reason(tmp_path: Path) -> None:
    """A Reset records its reason before stopping (kv reset/reason); a restart that finds the
    transaction still open stops it with that reason, and never stops it again."""
    async with charger_env(tmp_path) as env:
        async with running(env) as app:
            await env.asim("sim.plug", connector=1)
            await status_of(env, "Preparing")
            await env.asim("sim.swipe", id_tag="TAG10", connector=1)
            start = await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
            await eventually(lambda: app.store.queue.pending_count() == 0, message="start confirmed")
            app.store.kv_put("reset", "reason", "HardReset")
            app.simulate_power_cut()
        # The process ended with the transaction open, as a power cut in the middle of the reset.
        back = len(env.csms.received)
        async with env.app() as app:
            stop = await env.csms.wait_for("StopTransaction", after_index=back, timeout_s=WAIT_S)
            assert stop.payload["reason"] == "HardReset"
            assert stop.payload["transactionId"] == start.response["transactionId"]  # type: ignore[index]
            # The Reset service owns the flag and clears it once the restarted daemon runs.
            await eventually(lambda: app.store.kv_get("reset", "reason") is None, message="reset flag cleared")
            await eventually(lambda: app.store.queue.pending_count() == 0, message="stop confirmed")
        async with env.app() as app:
            assert app.store.transactions.open_transactions() == []
            assert [m for m in app.store.queue.items() if m.local_tx_id is not None] == []
        assert len(calls(env, "StopTransaction")) == 1
    env.csms.assert_no_violations()


async def test_stop_all_stops_with_the_reset_reason_and_records_it(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env, running(env) as app:
        await env.asim("sim.plug", connector=1)
        await status_of(env, "Preparing")
        await env.asim("sim.swipe", id_tag="TAG11", connector=1)
        await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
        await eventually(lambda: app.transactions.active(1) is not None)
        await app.transactions.stop_all("SoftReset")
        assert app.store.kv_get("reset", "reason") == "SoftReset"
        assert app.store.transactions.recent(1)[0].stop_queued   # durable before stop_all returns
        stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
        assert stop.payload["reason"] == "SoftReset" and "idTag" not in stop.payload
    env.csms.assert_no_violations()
