"""Core operations end to end: Reset, ChangeAvailability, UnlockConnector, DataTransfer.

The charger runs in-process (or as the real daemon for Reset) on the simulated board
against the strict bundled central system; every test ends with `assert_no_violations()`.
OCPP 1.6 §5.2 ChangeAvailability, §5.14 Reset (errata 3.36 / 3.82), §5.18 UnlockConnector
(errata 3.87), §4.3 / §5.6 DataTransfer, §7.36 stop reasons.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from chargepoint.app import ChargePointApp
from chargepoint.csms.server import Received
from chargepoint.evse.status import ChargePointStatus, check_transition
from chargepoint.services.operations import AvailabilityService, DataTransferService
from tests.support.harness import CP_ID, ChargerEnv, charger_env, eventually, mark, running

pytestmark = pytest.mark.asyncio

WAIT_S = 15.0
TWO_CONNECTORS = [{"max_current_a": 32, "phases": 3}, {"max_current_a": 16, "phases": 1}]








async def status_of(env: ChargerEnv, connector_id: int, status: str, *, after: int = 0) -> Received:
    return await env.csms.wait_for(
        "StatusNotification", lambda p: p["connectorId"] == connector_id and p["status"] == status,
        after_index=after, timeout_s=WAIT_S)


async def call(env: ChargerEnv, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    return await env.csms.call(CP_ID, action, payload, timeout_s=WAIT_S)


async def start_transaction(env: ChargerEnv, id_tag: str = "TAG1", connector_id: int = 1) -> Received:
    """Plug first, then the card: a confirmed transaction (the central system answered)."""
    after = mark(env)
    await env.asim("sim.plug", connector=connector_id)
    await status_of(env, connector_id, "Preparing", after=after)
    await env.asim("sim.swipe", id_tag=id_tag, connector=connector_id)
    start = await env.csms.wait_for("StartTransaction", lambda p: p["idTag"] == id_tag, after_index=after,
                                    timeout_s=WAIT_S)
    await status_of(env, connector_id, "Charging", after=after)
    return start


def avail(app: ChargePointApp) -> AvailabilityService:
    service: AvailabilityService = app.service(AvailabilityService)
    return service


def data_transfer(app: ChargePointApp) -> DataTransferService:
    service: DataTransferService = app.service(DataTransferService)
    return service


def availability(app: ChargePointApp, connector_id: int) -> Any:
    return app.store.kv_get("availability", str(connector_id), "Operative")


# --------------------------------------------------------------------------- ChangeAvailability


async def test_connector_inoperative_is_unavailable_refuses_starts_and_persists_5_2(tmp_path: Path) -> None:
    """§5.2: Inoperative -> Accepted, StatusNotification Unavailable, no new transaction (RemoteStart
    Rejected); the state persists across a restart; Operative -> Available again; the same
    state twice is Accepted."""
    async with charger_env(tmp_path) as env:
        async with running(env) as app:
            after = mark(env)
            assert await call(env, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}) == \
                {"status": "Accepted"}
            await status_of(env, 1, "Unavailable", after=after)
            assert availability(app, 1) == "Inoperative"
            assert avail(app).is_operative(1) is False
            assert (await env.astatus())["connectors"][0]["availability"] == "Inoperative"
            assert await call(env, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}) == \
                {"status": "Accepted"}    # already in the requested state
            assert await call(env, "RemoteStartTransaction", {"idTag": "TAG1", "connectorId": 1}) == \
                {"status": "Rejected"}

        # A reboot keeps it (§5.2 "Persistent states").
        after = mark(env)
        async with running(env) as app:
            first = await env.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1,
                                            after_index=after, timeout_s=WAIT_S)
            assert first.payload["status"] == "Unavailable"
            after = mark(env)
            assert await call(env, "ChangeAvailability", {"connectorId": 1, "type": "Operative"}) == \
                {"status": "Accepted"}
            await status_of(env, 1, "Available", after=after)
            assert avail(app).is_operative(1) is True
    env.csms.assert_no_violations()


async def test_connector_0_changes_the_charge_point_and_every_connector_5_2(tmp_path: Path) -> None:
    """§5.2: connectorId 0 applies to the charge point and all its connectors; each reports
    Unavailable, connector 0 included; Operative brings them all back."""
    async with charger_env(tmp_path) as env:
        env.doc["connector"] = TWO_CONNECTORS
        async with running(env, last_connector=2) as app:
            after = mark(env)
            assert await call(env, "ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}) == \
                {"status": "Accepted"}
            for cid in (0, 1, 2):
                await status_of(env, cid, "Unavailable", after=after)
            assert [availability(app, cid) for cid in (0, 1, 2)] == ["Inoperative"] * 3
            # A triggered report of connector 0 agrees (core reads the same persisted state).
            after = mark(env)
            assert await call(env, "TriggerMessage", {"requestedMessage": "StatusNotification",
                                                      "connectorId": 0}) == {"status": "Accepted"}
            await status_of(env, 0, "Unavailable", after=after)

            after = mark(env)
            assert await call(env, "ChangeAvailability", {"connectorId": 0, "type": "Operative"}) == \
                {"status": "Accepted"}
            for cid in (0, 1, 2):
                await status_of(env, cid, "Available", after=after)
    env.csms.assert_no_violations()


async def test_unknown_connector_is_rejected_5_2(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env, running(env) as app:
        assert await call(env, "ChangeAvailability", {"connectorId": 2, "type": "Inoperative"}) == \
            {"status": "Rejected"}
        assert availability(app, 2) == "Operative" and avail(app).is_operative(1)
    env.csms.assert_no_violations()


async def test_inoperative_during_a_transaction_is_scheduled_until_it_ends_5_2(tmp_path: Path) -> None:
    """§5.2: with a transaction in progress the answer is Scheduled; the transaction goes on, and
    the connector becomes Unavailable once it has ended (here: the card stops it)."""
    async with charger_env(tmp_path) as env, running(env) as app:
        await start_transaction(env)
        after = mark(env)
        assert await call(env, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}) == \
            {"status": "Scheduled"}
        assert app.transactions.active(1) is not None
        assert (await env.astatus())["connectors"][0]["availability_scheduled"] == "Inoperative"
        assert availability(app, 1) == "Operative"
        await env.asim("sim.swipe", id_tag="TAG1", connector=1)
        stop = await env.csms.wait_for("StopTransaction", after_index=after, timeout_s=WAIT_S)
        unavailable = await status_of(env, 1, "Unavailable", after=stop.index)
        assert unavailable.index > stop.index
        assert availability(app, 1) == "Inoperative"
        assert avail(app).scheduled() == {}
    env.csms.assert_no_violations()


def statuses_since(env: ChargerEnv, connector_id: int, after: int) -> list[ChargePointStatus]:
    return [ChargePointStatus(r.payload["status"]) for r in env.csms.received_of("StatusNotification")
            if r.index >= after and r.payload["connectorId"] == connector_id]


def illegal(sequence: list[ChargePointStatus]) -> list[str]:
    return [str(bad) for a, b in itertools.pairwise(sequence) if (bad := check_transition(a, b)) is not None]


async def test_inoperative_while_preparing_is_scheduled_until_the_preparing_ends_4_9_5_2(
        tmp_path: Path) -> None:
    """§4.9: the table has no Preparing -> Unavailable (B8). Inoperative on a connector that
    is Preparing (a RemoteStartTransaction waiting for the plug) is Scheduled; the connector
    stays Preparing until ConnectionTimeOut ends it (B1 -> Available), then becomes Unavailable
    (A8). It went Preparing -> Unavailable at once (found by the schema fuzz)."""
    async with charger_env(tmp_path, AuthorizeRemoteTxRequests=False, ConnectionTimeOut=2) as env, \
            running(env) as app:
        after = mark(env)
        assert await call(env, "RemoteStartTransaction", {"idTag": "TAG1"}) == {"status": "Accepted"}
        await status_of(env, 1, "Preparing", after=after)
        assert await call(env, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}) == \
            {"status": "Scheduled"}
        assert avail(app).scheduled() == {1: "Inoperative"} and availability(app, 1) == "Operative"
        assert (await env.astatus())["connectors"][0]["status"] == "Preparing"
        await status_of(env, 1, "Unavailable", after=after)   # after ConnectionTimeOut
        assert statuses_since(env, 1, after) == [ChargePointStatus.PREPARING, ChargePointStatus.AVAILABLE,
                                                 ChargePointStatus.UNAVAILABLE]
        assert availability(app, 1) == "Inoperative" and avail(app).scheduled() == {}
    env.csms.assert_no_violations()


async def test_inoperative_with_an_ev_plugged_and_no_idtag_waits_for_the_unplug_4_9_5_2(tmp_path: Path) -> None:
    """§4.9 (no B8): plugged, waiting for an idTag (Preparing, no time-out on this charger), the
    connector 0 request is Scheduled for that connector; the other one changes now. Unplugged:
    Available (B1), then Unavailable (A8)."""
    async with charger_env(tmp_path) as env:
        env.doc["connector"] = TWO_CONNECTORS
        async with running(env, last_connector=2) as app:
            after = mark(env)
            await env.asim("sim.plug", connector=1)
            await status_of(env, 1, "Preparing", after=after)
            assert await call(env, "ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}) == \
                {"status": "Scheduled"}
            await status_of(env, 2, "Unavailable", after=after)
            assert set(avail(app).scheduled()) == {0, 1}
            await env.asim("sim.unplug", connector=1)
            await status_of(env, 1, "Unavailable", after=after)
            await status_of(env, 0, "Unavailable", after=after)
            assert statuses_since(env, 1, after) == [ChargePointStatus.PREPARING, ChargePointStatus.AVAILABLE,
                                                     ChargePointStatus.UNAVAILABLE]
            assert [availability(app, cid) for cid in (0, 1, 2)] == ["Inoperative"] * 3
    env.csms.assert_no_violations()


async def test_operative_on_the_connector_drops_a_scheduled_charge_point_inoperative_5_2(
        tmp_path: Path) -> None:
    """Inoperative for the charge point is Scheduled behind the transaction; Operative for
    its connector then keeps the charge point operative too (the scheduled change of
    connector 0 is dropped): the transaction's end leaves the connector Finishing, and a
    new EV's Preparing is never cut to Unavailable (§4.9 has no B8; found by the schema fuzz)."""
    async with charger_env(tmp_path) as env, running(env) as app:
        await start_transaction(env)
        after = mark(env)
        assert await call(env, "ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}) == \
            {"status": "Scheduled"}
        assert await call(env, "ChangeAvailability", {"connectorId": 1, "type": "Operative"}) == \
            {"status": "Accepted"}
        assert avail(app).scheduled() == {}
        await env.asim("sim.swipe", id_tag="TAG1", connector=1)
        stop = await env.csms.wait_for("StopTransaction", after_index=after, timeout_s=WAIT_S)
        await status_of(env, 1, "Finishing", after=stop.index)
        await env.asim("sim.unplug", connector=1)
        await status_of(env, 1, "Available", after=stop.index)
        await env.asim("sim.plug", connector=1)
        await status_of(env, 1, "Preparing", after=stop.index)
        assert [availability(app, cid) for cid in (0, 1)] == ["Operative", "Operative"]
        assert not illegal(statuses_since(env, 1, after))
        assert ChargePointStatus.UNAVAILABLE not in statuses_since(env, 1, after)
    env.csms.assert_no_violations()


async def test_operative_again_with_the_cable_still_in_is_preparing_4_9_h2(tmp_path: Path) -> None:
    """§4.9: a Scheduled Inoperative takes effect when the transaction ends (UnlockConnector,
    cable still in the EV: Finishing -> Unavailable, F8 "all user actions completed"); set
    Operative again with the EV still plugged, the connector is Preparing (H2). It reported
    Unavailable -> Finishing, which the table does not have (H6; found by the schema fuzz)."""
    async with charger_env(tmp_path) as env, running(env):
        await start_transaction(env)
        after = mark(env)
        assert await call(env, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}) == \
            {"status": "Scheduled"}
        assert await call(env, "UnlockConnector", {"connectorId": 1}) == {"status": "Unlocked"}
        await status_of(env, 1, "Unavailable", after=after)
        operative = mark(env)
        assert await call(env, "ChangeAvailability", {"connectorId": 1, "type": "Operative"}) == \
            {"status": "Accepted"}
        await status_of(env, 1, "Preparing", after=operative)
        sequence = statuses_since(env, 1, after)
        assert sequence[-2:] == [ChargePointStatus.UNAVAILABLE, ChargePointStatus.PREPARING]
        assert not illegal(sequence), sequence
        # Preparing means what it says: the plugged EV starts with a card.
        await env.asim("sim.swipe", id_tag="TAG2", connector=1)
        await env.csms.wait_for("StartTransaction", lambda p: p["idTag"] == "TAG2", after_index=operative,
                                timeout_s=WAIT_S)
    env.csms.assert_no_violations()


async def test_inoperative_while_the_cable_is_held_for_its_user_waits_for_the_user_4_9_f8(
        tmp_path: Path) -> None:
    """§4.10 / errata 3.5: UnlockConnectorOnEVSideDisconnect false keeps the cable locked for its
    user after the EV side left (Finishing). F8 is "all user actions completed": Inoperative is
    Scheduled until the user's card frees the cable (F1 -> Available, then A8). Made
    Unavailable at once, it came back Finishing when set Operative (H6, not in the table)."""
    async with charger_env(tmp_path, UnlockConnectorOnEVSideDisconnect=False) as env, running(env) as app:
        await start_transaction(env)
        after = mark(env)
        await env.asim("sim.unplug", connector=1)
        stop = await env.csms.wait_for("StopTransaction", after_index=after, timeout_s=WAIT_S)
        assert stop.payload["reason"] == "EVDisconnected"
        await status_of(env, 1, "Finishing", after=after)
        assert await call(env, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}) == \
            {"status": "Scheduled"}
        assert (await env.astatus())["connectors"][0]["status"] == "Finishing"
        await env.asim("sim.swipe", id_tag="TAG1", connector=1)   # the user takes the cable
        await status_of(env, 1, "Unavailable", after=after)
        assert availability(app, 1) == "Inoperative"
        operative = mark(env)
        assert await call(env, "ChangeAvailability", {"connectorId": 1, "type": "Operative"}) == \
            {"status": "Accepted"}
        await status_of(env, 1, "Available", after=operative)
        sequence = statuses_since(env, 1, after)
        assert sequence[-4:] == [ChargePointStatus.FINISHING, ChargePointStatus.AVAILABLE,
                                 ChargePointStatus.UNAVAILABLE, ChargePointStatus.AVAILABLE]
        assert not illegal(sequence), sequence
    env.csms.assert_no_violations()


async def test_operative_cancels_a_scheduled_inoperative_5_2(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env, running(env) as app:
        await start_transaction(env)
        assert await call(env, "ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}) == \
            {"status": "Scheduled"}
        assert set(avail(app).scheduled()) == {0, 1}
        assert await call(env, "ChangeAvailability", {"connectorId": 0, "type": "Operative"}) == \
            {"status": "Accepted"}
        assert avail(app).scheduled() == {}
        after = mark(env)
        await env.asim("sim.swipe", id_tag="TAG1", connector=1)
        stop = await env.csms.wait_for("StopTransaction", after_index=after, timeout_s=WAIT_S)
        await status_of(env, 1, "Finishing", after=stop.index)
        assert avail(app).is_operative(1) and availability(app, 0) == "Operative"
    env.csms.assert_no_violations()


async def test_scheduled_change_survives_a_restart_5_2(tmp_path: Path) -> None:
    """The promise of a Scheduled answer is kept across a restart: the interrupted transaction
    is ended at boot (PowerLoss) and the connector comes up Unavailable."""
    async with charger_env(tmp_path) as env:
        async with running(env) as app:
            await start_transaction(env)
            assert await call(env, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}) == \
                {"status": "Scheduled"}
            app.simulate_power_cut()
        after = mark(env)
        async with running(env) as app:
            stop = await env.csms.wait_for("StopTransaction", after_index=after, timeout_s=WAIT_S)
            assert stop.payload["reason"] == "PowerLoss"
            await status_of(env, 1, "Unavailable", after=after)
            await eventually(lambda: availability(app, 1) == "Inoperative", timeout_s=WAIT_S)
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- Reset


async def test_soft_reset_stops_the_transaction_with_soft_reset_then_restarts_5_14(tmp_path: Path) -> None:
    """§5.14 / errata 3.36: Accepted; StopTransaction (reason SoftReset) before the restart;
    then the daemon asks to be re-executed."""
    async with charger_env(tmp_path) as env, running(env) as app:
        start = await start_transaction(env)
        assert await call(env, "Reset", {"type": "Soft"}) == {"status": "Accepted"}
        stop = await env.csms.wait_for("StopTransaction", after_index=start.index, timeout_s=WAIT_S)
        assert stop.payload["reason"] == "SoftReset"
        assert stop.payload["transactionId"] == start.response["transactionId"]  # type: ignore[index]
        await eventually(lambda: app.restart_requested, timeout_s=WAIT_S, message="restart requested")
        assert app.store.queue.pending_count() == 0   # delivered before restarting
        assert (await env.astatus())["reset"] == "Soft"
    env.csms.assert_no_violations()


@pytest.mark.slow
async def test_hard_reset_restarts_the_daemon_and_the_stop_is_delivered_once_5_14(tmp_path: Path) -> None:
    """§5.14 / errata 3.82: the real daemon re-executes itself (same process id) and registers
    again; the transaction ends with one StopTransaction (the central system flags a second),
    reason HardReset."""
    async with charger_env(tmp_path, ConnectionTimeOut=30) as env:
        with env.daemon() as proc:
            await env.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1, timeout_s=30)
            assert proc.proc is not None
            pid = proc.proc.pid
            start = await start_transaction(env)
            boots = len(env.csms.received_of("BootNotification"))
            assert await call(env, "Reset", {"type": "Hard"}) == {"status": "Accepted"}
            await eventually(lambda: len(env.csms.received_of("BootNotification")) > boots, timeout_s=40,
                             message="BootNotification after the reset")
            assert proc.proc.poll() is None and proc.proc.pid == pid   # re-executed in place
            stop = await env.csms.wait_for("StopTransaction", after_index=start.index, timeout_s=WAIT_S)
            assert stop.payload["reason"] == "HardReset"
            # Back in service: the EV still plugged, no transaction.
            await status_of(env, 1, "Preparing", after=stop.index)
            status = await eventually(lambda: _daemon_status(env), timeout_s=WAIT_S)
            assert status["registration"] == "Accepted" and "reset" not in status
            assert status["connectors"][0]["transaction_id"] is None
    env.csms.assert_no_violations()


def _daemon_status(env: ChargerEnv) -> dict[str, Any] | None:
    try:
        return env.status()
    except OSError:
        return None


# --------------------------------------------------------------------------- UnlockConnector


async def test_unlock_without_transaction_and_unknown_connector_5_18_errata_3_87(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env, running(env) as app:
        assert await call(env, "UnlockConnector", {"connectorId": 1}) == {"status": "Unlocked"}
        assert await call(env, "UnlockConnector", {"connectorId": 2}) == {"status": "NotSupported"}
        assert app.board.connector(1).lock.is_locked() is False
    env.csms.assert_no_violations()


async def test_unlock_stops_the_transaction_first_with_unlock_command_5_18(tmp_path: Path) -> None:
    """§5.18: a transaction on the connector is finished first (StopTransaction reason
    UnlockCommand, §7.36), then the cable is released: Unlocked."""
    async with charger_env(tmp_path) as env, running(env) as app:
        start = await start_transaction(env)
        assert app.board.connector(1).lock.is_locked() is True
        assert await call(env, "UnlockConnector", {"connectorId": 1}) == {"status": "Unlocked"}
        assert app.transactions.active(1) is None
        assert app.board.connector(1).lock.is_locked() is False
        stop = await env.csms.wait_for("StopTransaction", after_index=start.index, timeout_s=WAIT_S)
        assert stop.payload["reason"] == "UnlockCommand"
        await status_of(env, 1, "Finishing", after=stop.index)
    env.csms.assert_no_violations()


async def test_unlock_failure_is_reported_unlock_failed_7_46(tmp_path: Path) -> None:
    """errata 3.87: UnlockFailed when the lock's feedback says it is still locked."""
    async with charger_env(tmp_path) as env, running(env) as app:
        await start_transaction(env)
        await env.asim("sim.fault", connector=1, kind="lock_failure")
        assert await call(env, "UnlockConnector", {"connectorId": 1}) == {"status": "UnlockFailed"}
        assert app.board.connector(1).lock.is_locked() is True
        assert app.transactions.active(1) is None
        # Repaired: the next attempt succeeds.
        await env.asim("sim.clear", connector=1)
        assert await call(env, "UnlockConnector", {"connectorId": 1}) == {"status": "Unlocked"}
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- DataTransfer


async def test_data_transfer_vendor_registry_4_3(tmp_path: Path) -> None:
    """§4.3: unknown vendorId -> UnknownVendorId without data; a known vendor with an unknown
    messageId -> UnknownMessageId; vendorId is case-insensitive; a registered handler answers."""
    async with charger_env(tmp_path) as env, running(env) as app:
        assert await call(env, "DataTransfer", {"vendorId": "com.example", "data": "x"}) == \
            {"status": "UnknownVendorId"}
        assert await call(env, "DataTransfer", {"vendorId": "ORG.chargepoint", "messageId": "Ping"}) == \
            {"status": "Accepted", "data": "Pong"}
        assert await call(env, "DataTransfer", {"vendorId": "org.chargepoint", "messageId": "Nope"}) == \
            {"status": "UnknownMessageId"}

        async def handler(message_id: str | None, data: str | None) -> tuple[str, str | None]:
            return ("Accepted", f"{message_id}:{data}") if message_id == "Echo" else ("Rejected", None)

        data_transfer(app).register("com.example", handler)
        assert await call(env, "DataTransfer", {"vendorId": "com.example", "messageId": "Echo", "data": "hi"}) == \
            {"status": "Accepted", "data": "Echo:hi"}
        assert await call(env, "DataTransfer", {"vendorId": "com.example", "messageId": "Other"}) == \
            {"status": "Rejected"}
    env.csms.assert_no_violations()


async def test_data_transfer_to_the_central_system_4_3(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env, running(env) as app:
        assert await data_transfer(app).send("org.chargepoint", "Hello", "42") == {"status": "UnknownVendorId"}
        env.csms.data_transfer_status = "Accepted"
        assert await data_transfer(app).send("org.chargepoint") == {"status": "Accepted"}
        sent = env.csms.received_of("DataTransfer")
        assert [r.payload for r in sent] == [{"vendorId": "org.chargepoint", "messageId": "Hello", "data": "42"},
                                             {"vendorId": "org.chargepoint"}]
    env.csms.assert_no_violations()
