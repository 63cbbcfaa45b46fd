"""Transactions end to end: cards, plugs and remote commands against the bundled central system.

The charger runs in-process on the simulated board; the central system is strict
(schemas, timestamps, one CALL in flight, unknown or double StopTransaction,
meterStop below meterStart) and every test ends with `assert_no_violations()`.
OCPP 1.6 §3.4, §3.10, §4.1, §4.8, §4.9, §4.10, §5.11, §5.12, errata 3.17, 3.32, 3.33,
3.41, 3.77; §9.1 ConnectionTimeOut, AuthorizeRemoteTxRequests,
StopTransactionOnEVSideDisconnect, StopTransactionOnInvalidId.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chargepoint.app import ChargePointApp
from chargepoint.csms.server import Received
from tests.support.harness import CP_ID, ChargerEnv, charger_env, eventually, split_log_lines

pytestmark = pytest.mark.asyncio

WAIT_S = 15.0


# --------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def running(env: ChargerEnv) -> AsyncIterator[ChargePointApp]:
    """The charger, registered, with connector 1 reported."""
    async with env.app() as app:
        await env.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1, timeout_s=20)
        yield app


async def status_of(env: ChargerEnv, status: str, *, after: int = 0, timeout_s: float = WAIT_S) -> Received:
    return await env.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1 and p["status"] == status,
                                   after_index=after, timeout_s=timeout_s)


def calls(env: ChargerEnv, action: str) -> list[Received]:
    return [r for r in env.csms.received if r.action == action]


def mark(env: ChargerEnv) -> int:
    return len(env.csms.received)


async def connector(env: ChargerEnv) -> dict[str, Any]:
    entry: dict[str, Any] = (await env.astatus())["connectors"][0]
    return entry


async def charge_some(app: ChargePointApp, *, at_least_wh: float = 5.0) -> float:
    """Wait until the meter register has grown by `at_least_wh` (the sim EV draws 22 kW)."""
    start = await app.meters.read_now(1)
    assert start is not None

    async def grown() -> float | None:
        now = await app.meters.read_now(1)
        return now.energy_wh if now is not None and now.energy_wh >= start.energy_wh + at_least_wh else None

    value: float = await eventually(grown, timeout_s=WAIT_S, message="energy delivered while Charging")
    return value


async def plug_and_swipe(env: ChargerEnv, id_tag: str) -> Received:
    await env.asim("sim.plug", connector=1)
    await status_of(env, "Preparing")
    await env.asim("sim.swipe", id_tag=id_tag, connector=1)
    return await env.csms.wait_for("StartTransaction", lambda p: p["idTag"] == id_tag, timeout_s=WAIT_S)


# --------------------------------------------------------------------------- local starts and stops


async def test_plug_first_card_starts_and_same_card_stops_without_authorize(tmp_path: Path) -> None:
    """§4.8 / §4.10 / §3.4: plug, card, charge; the same card stops with no second Authorize.req;
    meterStart/meterStop are the meter's register in Wh; Finishing until unplugged."""
    async with charger_env(tmp_path) as env, running(env) as app:
        register_before = (await app.meters.read_now(1)).energy_wh
        start = await plug_and_swipe(env, "TAG1")
        assert start.payload["connectorId"] == 1
        assert start.payload["meterStart"] == math.floor(register_before)
        assert len(calls(env, "Authorize")) == 1
        assert calls(env, "Authorize")[0].index < start.index
        await status_of(env, "Charging", after=start.index)
        transaction_id = start.response["transactionId"]  # type: ignore[index]
        entry = await eventually(lambda: app.transactions.active(1) and app.transactions.active(1).transaction_id,
                                 message="transaction confirmed")
        assert entry == transaction_id
        view = await connector(env)
        assert view["transaction_id"] == transaction_id and view["id_tag"] == "TAG1"
        await charge_some(app)

        await env.asim("sim.swipe", id_tag="tag1", connector=1)   # idTags are case-insensitive (§7.28)
        stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
        register_after = (await app.meters.read_now(1)).energy_wh
        assert stop.payload["transactionId"] == transaction_id
        assert stop.payload["reason"] == "Local" and stop.payload["idTag"] == "tag1"
        assert start.payload["meterStart"] + 5 <= stop.payload["meterStop"] <= register_after
        assert len(calls(env, "Authorize")) == 1   # §3.4: MUST NOT authorize the same idTag to stop
        await status_of(env, "Finishing", after=stop.index)
        view = await connector(env)
        assert view["transaction_id"] is None and view["id_tag"] is None

        await env.asim("sim.unplug", connector=1)
        await status_of(env, "Available", after=stop.index)
        assert env.csms.transactions[transaction_id].stop is not None
    env.csms.assert_no_violations()


async def test_identification_first_then_plug_starts(tmp_path: Path) -> None:
    """§4.9 A2 -> B3: card first (Preparing while waiting for the cable), then the plug starts."""
    async with charger_env(tmp_path, ConnectionTimeOut=30) as env, running(env) as app:
        await env.asim("sim.swipe", id_tag="TAG2")
        await env.csms.wait_for("Authorize", timeout_s=WAIT_S)
        preparing = await status_of(env, "Preparing")
        assert (await connector(env))["authorized_id_tag"] == "TAG2"
        assert not calls(env, "StartTransaction")
        await env.asim("sim.plug", connector=1)
        start = await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
        assert start.payload["idTag"] == "TAG2" and start.index > preparing.index
        await status_of(env, "Charging", after=start.index)
        await app.transactions.stop(1, "Local")
        stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
        assert stop.payload["reason"] == "Local" and "idTag" not in stop.payload
    env.csms.assert_no_violations()


async def test_connection_timeout_cancels_the_authorization_9_1_6(tmp_path: Path) -> None:
    """ConnectionTimeOut (errata 3.77): no plug in time -> back to Available, nothing started,
    and a later plug does not start on the expired authorization."""
    async with charger_env(tmp_path, ConnectionTimeOut=1) as env, running(env):
        await env.asim("sim.swipe", id_tag="TAG3")
        preparing = await status_of(env, "Preparing")
        available = await status_of(env, "Available", after=preparing.index)
        assert (await connector(env)).get("authorized_id_tag") is None
        await env.asim("sim.plug", connector=1)
        await status_of(env, "Preparing", after=available.index)
        assert not calls(env, "StartTransaction")
    env.csms.assert_no_violations()


async def test_authorization_with_an_earlier_deadline_than_a_waiting_one_still_times_out_9_1_6(
        tmp_path: Path) -> None:
    """The transaction loop sleeps until the earliest ConnectionTimeOut deadline: an authorization
    made meanwhile with an earlier one (the key was lowered) wakes it and lapses on time (back to
    Available, errata 3.77), while the first keeps waiting for its plug."""
    async with charger_env(tmp_path, ConnectionTimeOut=600) as env:
        env.doc["connector"] = [{"max_current_a": 32, "phases": 3}, {"max_current_a": 16, "phases": 1}]
        async with env.app():
            await env.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 2, timeout_s=20)
            after = mark(env)
            await env.asim("sim.swipe", id_tag="TAG1", connector=1)
            await status_of(env, "Preparing", after=after)
            assert await env.csms.call(CP_ID, "ChangeConfiguration", {"key": "ConnectionTimeOut", "value": "1"}) \
                == {"status": "Accepted"}
            await env.asim("sim.swipe", id_tag="TAG2", connector=2)
            preparing = await env.csms.wait_for(
                "StatusNotification", lambda p: p["connectorId"] == 2 and p["status"] == "Preparing",
                after_index=after, timeout_s=WAIT_S)
            await env.csms.wait_for("StatusNotification",
                                    lambda p: p["connectorId"] == 2 and p["status"] == "Available",
                                    after_index=preparing.index, timeout_s=WAIT_S)
            connectors = (await env.astatus())["connectors"]
            assert connectors[0].get("authorized_id_tag") == "TAG1"
            assert connectors[1].get("authorized_id_tag") is None
            assert not calls(env, "StartTransaction")
    env.csms.assert_no_violations()


async def test_free_vend_starts_on_plug_without_authorize(tmp_path: Path) -> None:
    """[authorization] free_vend_id_tag: plugging in starts a transaction with that idTag."""
    async with charger_env(tmp_path) as env:
        env.doc["authorization"] = {"free_vend_id_tag": "FREEVEND"}
        async with running(env) as app:
            await env.asim("sim.plug", connector=1)
            start = await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
            assert start.payload["idTag"] == "FREEVEND"
            await status_of(env, "Charging", after=start.index)
            assert not calls(env, "Authorize")
            await charge_some(app)
            await env.asim("sim.unplug", connector=1)
            stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
            assert stop.payload["reason"] == "EVDisconnected"
            assert stop.payload["meterStop"] > start.payload["meterStart"]
    env.csms.assert_no_violations()


async def test_invalid_card_is_refused_and_nothing_starts(tmp_path: Path) -> None:
    """§4.1: only supply energy after authorization; an Invalid idTag leaves the connector Preparing."""
    async with charger_env(tmp_path) as env, running(env) as app:
        env.csms.authorize["BAD"] = "Invalid"
        await env.asim("sim.plug", connector=1)
        await status_of(env, "Preparing")
        await env.asim("sim.swipe", id_tag="BAD", connector=1)
        auth = await env.csms.wait_for("Authorize", timeout_s=WAIT_S)
        assert auth.response == {"idTagInfo": {"status": "Invalid"}}
        await eventually(lambda: app.store.auth_cache.get("BAD") is not None, message="cache updated")
        view = await connector(env)
        assert view["status"] == "Preparing" and not view["energy_allowed"] and view["transaction_id"] is None
        assert app.transactions.active(1) is None
        assert not calls(env, "StartTransaction")
    env.csms.assert_no_violations()


async def test_card_of_the_same_parent_group_stops_3_10(tmp_path: Path) -> None:
    """§3.10 / §4.10: a different card of the same parentIdTag stops (after an Authorize.req);
    a card of another group does not."""
    async with charger_env(tmp_path) as env, running(env):
        env.csms.authorize.update({
            "CARD-A": {"status": "Accepted", "parentIdTag": "FAMILY"},
            "CARD-B": {"status": "Accepted", "parentIdTag": "FAMILY"},
            "CARD-C": {"status": "Accepted", "parentIdTag": "OTHER"},
        })
        start = await plug_and_swipe(env, "CARD-A")
        await status_of(env, "Charging", after=start.index)
        before = mark(env)
        await env.asim("sim.swipe", id_tag="CARD-C", connector=1)
        await env.csms.wait_for("Authorize", lambda p: p["idTag"] == "CARD-C", after_index=before)
        await env.asim("sim.swipe", id_tag="CARD-B", connector=1)
        auth_b = await env.csms.wait_for("Authorize", lambda p: p["idTag"] == "CARD-B", after_index=before)
        stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
        assert stop.index > auth_b.index
        assert stop.payload["idTag"] == "CARD-B" and stop.payload["reason"] == "Local"
        assert len(calls(env, "StartTransaction")) == 1
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- StartTransaction.conf not Accepted


async def test_start_conf_invalid_stops_with_deauthorized_errata_3_17(tmp_path: Path) -> None:
    async with charger_env(tmp_path, StopTransactionOnInvalidId=True) as env, running(env) as app:
        env.csms.start_status["TAG4"] = "Invalid"
        start = await plug_and_swipe(env, "TAG4")
        stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
        assert stop.payload["transactionId"] == start.response["transactionId"]  # type: ignore[index]
        assert stop.payload["reason"] == "DeAuthorized" and "idTag" not in stop.payload
        await status_of(env, "Finishing", after=start.index)
        assert app.store.auth_cache.get("TAG4") == {"status": "Invalid"}   # §4.8: cache updated
    env.csms.assert_no_violations()


async def test_start_conf_invalid_suspends_energy_when_not_stopping_errata_3_17(tmp_path: Path) -> None:
    async with charger_env(tmp_path, StopTransactionOnInvalidId=False) as env, running(env) as app:
        env.csms.start_status["TAG5"] = "Blocked"
        start = await plug_and_swipe(env, "TAG5")
        await status_of(env, "SuspendedEVSE", after=start.index)
        view = await connector(env)
        assert not view["energy_allowed"] and view["transaction_id"] == start.response["transactionId"]  # type: ignore[index]
        assert not calls(env, "StopTransaction")
        await app.transactions.stop(1, "Local", id_tag="TAG5")
        stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
        assert stop.payload["reason"] == "Local"   # the only stop: the suspension did not end it
    env.csms.assert_no_violations()


async def test_max_energy_on_invalid_id_is_delivered_before_the_stop_9_1_14(tmp_path: Path) -> None:
    async with charger_env(tmp_path, StopTransactionOnInvalidId=True, MaxEnergyOnInvalidId=10) as env, \
            running(env):
        env.csms.start_status["TAG12"] = "Invalid"
        start = await plug_and_swipe(env, "TAG12")
        await status_of(env, "Charging", after=start.index)
        stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
        assert stop.payload["reason"] == "DeAuthorized"
        assert stop.payload["meterStop"] >= start.payload["meterStart"] + 10
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- EV side disconnect


async def test_ev_disconnect_stops_with_ev_disconnected(tmp_path: Path) -> None:
    async with charger_env(tmp_path, StopTransactionOnEVSideDisconnect=True) as env, running(env):
        start = await plug_and_swipe(env, "TAG6")
        await status_of(env, "Charging", after=start.index)
        await env.asim("sim.unplug", connector=1)
        stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
        assert stop.payload["reason"] == "EVDisconnected" and "idTag" not in stop.payload
        await status_of(env, "Available", after=start.index)
    env.csms.assert_no_violations()


async def test_ev_disconnect_keeps_the_transaction_when_configured_4_10(tmp_path: Path) -> None:
    """StopTransactionOnEVSideDisconnect false: SuspendedEV "EV side disconnected" (§4.9); plugged
    back in, energy flows again in the same transaction."""
    async with charger_env(tmp_path, StopTransactionOnEVSideDisconnect=False) as env, running(env) as app:
        start = await plug_and_swipe(env, "TAG7")
        charging = await status_of(env, "Charging", after=start.index)
        await env.asim("sim.unplug", connector=1)
        suspended = await status_of(env, "SuspendedEV", after=charging.index)
        assert suspended.payload.get("info") == "EV side disconnected"
        await env.asim("sim.plug", connector=1)
        await status_of(env, "Charging", after=suspended.index)
        assert not calls(env, "StopTransaction") and len(calls(env, "StartTransaction")) == 1
        await env.asim("sim.swipe", id_tag="TAG7", connector=1)
        stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
        assert stop.payload["reason"] == "Local"
        assert app.transactions.active(1) is None
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- remote start / stop


async def test_remote_start_authorizes_first_then_remote_stop_5_11_5_12(tmp_path: Path) -> None:
    async with charger_env(tmp_path, AuthorizeRemoteTxRequests=True) as env, running(env):
        await env.asim("sim.plug", connector=1)
        await status_of(env, "Preparing")
        conf = await env.csms.call(CP_ID, "RemoteStartTransaction", {"idTag": "REMOTE1", "connectorId": 1})
        assert conf == {"status": "Accepted"}
        start = await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
        auth = calls(env, "Authorize")
        assert [a.payload["idTag"] for a in auth] == ["REMOTE1"] and auth[0].index < start.index
        transaction_id = start.response["transactionId"]  # type: ignore[index]
        await status_of(env, "Charging", after=start.index)

        assert await env.csms.call(CP_ID, "RemoteStopTransaction", {"transactionId": transaction_id + 100}) == {
            "status": "Rejected"}
        conf = await env.csms.call(CP_ID, "RemoteStopTransaction", {"transactionId": transaction_id})
        assert conf == {"status": "Accepted"}
        stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
        assert stop.payload["transactionId"] == transaction_id and stop.payload["reason"] == "Remote"
        await status_of(env, "Finishing", after=stop.index)
        # errata 3.33: Accepted only while the transaction is ongoing.
        assert await env.csms.call(CP_ID, "RemoteStopTransaction", {"transactionId": transaction_id}) == {
            "status": "Rejected"}
    env.csms.assert_no_violations()


async def test_remote_start_without_authorize_waits_for_the_plug(tmp_path: Path) -> None:
    """AuthorizeRemoteTxRequests false: no Authorize.req (§5.11); no connectorId: the charger
    picks one; unplugged: Preparing until the cable comes."""
    async with charger_env(tmp_path, AuthorizeRemoteTxRequests=False, ConnectionTimeOut=30) as env, running(env):
        conf = await env.csms.call(CP_ID, "RemoteStartTransaction", {"idTag": "REMOTE2"})
        assert conf == {"status": "Accepted"}
        preparing = await status_of(env, "Preparing")
        await env.asim("sim.plug", connector=1)
        start = await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
        assert start.index > preparing.index
        assert start.payload["idTag"] == "REMOTE2" and start.payload["connectorId"] == 1
        assert not calls(env, "Authorize")
        await status_of(env, "Charging", after=start.index)
    env.csms.assert_no_violations()


async def test_remote_start_with_tx_profile_applies_its_limit_5_16_2(tmp_path: Path) -> None:
    profile = {"chargingProfileId": 7, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
               "chargingProfileKind": "Relative",
               "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0,
                                                                                         "limit": 10.0}]}}
    async with charger_env(tmp_path, AuthorizeRemoteTxRequests=False) as env, running(env):
        await env.asim("sim.plug", connector=1)
        await status_of(env, "Preparing")
        conf = await env.csms.call(CP_ID, "RemoteStartTransaction",
                                   {"idTag": "REMOTE3", "connectorId": 1, "chargingProfile": profile})
        assert conf == {"status": "Accepted"}
        start = await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
        await status_of(env, "Charging", after=start.index)

        async def limited() -> bool:
            return (await connector(env))["offered_current_a"] == 10.0

        await eventually(limited, timeout_s=WAIT_S, message="TxProfile limit on the pilot")
    env.csms.assert_no_violations()


async def test_remote_start_rejections_5_11(tmp_path: Path) -> None:
    """Rejected: a connector that does not exist, a profile that is not a TxProfile (§5.16.2),
    a TxProfile with a transactionId (errata 3.41), a connector with a transaction."""
    cp_max = {"chargingProfileId": 8, "stackLevel": 0, "chargingProfilePurpose": "ChargePointMaxProfile",
              "chargingProfileKind": "Relative",
              "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0,
                                                                                        "limit": 10.0}]}}
    with_tx = {**cp_max, "chargingProfilePurpose": "TxProfile", "transactionId": 5}
    async with charger_env(tmp_path) as env, running(env):
        await env.asim("sim.plug", connector=1)
        await status_of(env, "Preparing")
        refused: list[dict[str, Any]] = [{"idTag": "R", "connectorId": 2}, {"idTag": "R", "connectorId": 0},
                                         {"idTag": "R", "connectorId": 1, "chargingProfile": cp_max},
                                         {"idTag": "R", "connectorId": 1, "chargingProfile": with_tx}]
        for request in refused:
            assert await env.csms.call(CP_ID, "RemoteStartTransaction", request) == {"status": "Rejected"}, request
        await env.asim("sim.swipe", id_tag="TAG8", connector=1)
        await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
        occupied: list[dict[str, Any]] = [{"idTag": "R", "connectorId": 1}, {"idTag": "R"}]
        for request in occupied:
            assert await env.csms.call(CP_ID, "RemoteStartTransaction", request) == {"status": "Rejected"}, request
        assert len(calls(env, "StartTransaction")) == 1
    env.csms.assert_no_violations()


async def test_an_id_tag_with_line_breaks_stays_on_one_log_line(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """An idTag is the central system's text (CiString20 allows any character): logged raw, a
    CR/LF in it forged a log line ("RemoteStartTransaction for A\nINFO forged ..."); one line
    per event (docs/ARCHITECTURE.md). Found by the schema fuzz: accepted, waiting for the plug,
    then started, each logged with the idTag quoted."""
    caplog.set_level(logging.INFO, logger="chargepoint")
    tag = "A\nINFO forged\r"
    async with charger_env(tmp_path, AuthorizeRemoteTxRequests=False, ConnectionTimeOut=30) as env, running(env):
        assert await env.csms.call(CP_ID, "RemoteStartTransaction", {"idTag": tag}) == {"status": "Accepted"}
        await status_of(env, "Preparing")
        await env.asim("sim.plug", connector=1)
        start = await env.csms.wait_for("StartTransaction", timeout_s=WAIT_S)
        assert start.payload["idTag"] == tag
    lines = [r.getMessage() for r in caplog.records if r.name == "chargepoint.transactions"]
    assert any(repr(tag) in line and "waiting" in line for line in lines), lines
    assert any(repr(tag) in line and "started" in line for line in lines), lines
    split = split_log_lines(caplog.records)
    assert not split, split
    env.csms.assert_no_violations()
