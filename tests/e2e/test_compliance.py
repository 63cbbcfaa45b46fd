"""Compliance sweep: behaviours the OCPP 1.6 specification (edition 2 + errata) and the OCA
compliance test cases for a charge point check, end to end.

Each test names the behaviour and the clause / OCTT test case family it comes from. The
charger runs in-process on the simulated board against the strict bundled central
system; every test also checks that each connector's StatusNotification sequence only
takes transitions of the §4.9 table (with errata 3.20's B6), and ends with
`assert_no_violations()`.

Findings of the sweep (what was wrong and fixed, or why it stays) are listed in the
commit messages and in the docstrings of the tests below.
"""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import pytest

from chargepoint.csms.server import Received
from chargepoint.evse.status import ChargePointStatus, check_transition
from tests.support.harness import CP_ID, WAIT_S, ChargerEnv, calls, charger_env, eventually, mark, running

pytestmark = pytest.mark.asyncio

TWO_CONNECTORS = [{"max_current_a": 32, "phases": 3}, {"max_current_a": 16, "phases": 1}]


# --------------------------------------------------------------------------- helpers


def statuses(env: ChargerEnv, connector_id: int = 1, after: int = 0) -> list[str]:
    return [r.payload["status"] for r in calls(env, "StatusNotification", after)
            if r.payload["connectorId"] == connector_id]


def assert_legal_transitions(env: ChargerEnv, connector_id: int = 1) -> None:
    """OCPP 1.6 §4.9: every reported change is a cell of the transition table."""
    sequence = statuses(env, connector_id)
    for before, after in itertools.pairwise(sequence):
        illegal = check_transition(ChargePointStatus(before), ChargePointStatus(after), connector_id=connector_id)
        assert illegal is None, f"{illegal}; connector {connector_id} reported {sequence}"


async def status_of(env: ChargerEnv, status: str, *, connector_id: int = 1, after: int = 0) -> Received:
    return await env.csms.wait_for(
        "StatusNotification", lambda p: p["connectorId"] == connector_id and p["status"] == status,
        after_index=after, timeout_s=WAIT_S)


async def call(env: ChargerEnv, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    return await env.csms.call(CP_ID, action, payload, timeout_s=WAIT_S)


async def sim_locked(env: ChargerEnv, connector_id: int = 1) -> bool:
    """The simulated lock's actual position (its feedback), not what the charger thinks."""
    state = await env.asim("sim.state")
    return bool(state["result"]["connectors"][connector_id - 1]["locked"])


async def connector_view(env: ChargerEnv, connector_id: int = 1) -> dict[str, Any]:
    entry: dict[str, Any] = (await env.astatus())["connectors"][connector_id - 1]
    return entry


async def plug_and_swipe(env: ChargerEnv, id_tag: str, connector_id: int = 1) -> Received:
    """Plug first, then the card (§4.9 A2 -> B3); returns the StartTransaction."""
    after = mark(env)
    await env.asim("sim.plug", connector=connector_id)
    await status_of(env, "Preparing", connector_id=connector_id, after=after)
    await env.asim("sim.swipe", id_tag=id_tag, connector=connector_id)
    start = await env.csms.wait_for("StartTransaction", lambda p: p["idTag"] == id_tag, after_index=after,
                                    timeout_s=WAIT_S)
    await status_of(env, "Charging", connector_id=connector_id, after=after)
    return start


async def wait_plugged(env: ChargerEnv, plugged: bool, connector_id: int = 1) -> None:
    async def check() -> bool:
        return bool((await connector_view(env, connector_id))["plugged"]) == plugged

    await eventually(check, timeout_s=WAIT_S, message=f"{'plugged' if plugged else 'unplugged'}")


async def wait_locked(env: ChargerEnv, locked: bool, connector_id: int = 1) -> None:
    async def check() -> bool:
        return await sim_locked(env, connector_id) == locked

    await eventually(check, timeout_s=WAIT_S, message=f"lock {'closed' if locked else 'open'}")


# --------------------------------------------------------------------------- the cable lock (§4.10, §9.1.33)


async def test_ev_side_disconnect_keeps_the_cable_locked_until_the_same_idtag_9_1_33_tc_005(tmp_path: Path) -> None:
    """§4.10 / §9.1.33 (OCTT TC_005 family, UnlockConnectorOnEVSideDisconnect false): the EV side
    is unplugged, the transaction stops with EVDisconnected (no idTag, the charger stopped it),
    but the cable stays locked -- Finishing, not available to another user's card -- until the
    same idTag is presented; then it unlocks and the connector is Available.
    Found: the lock opened on every unplug whatever the key said."""
    async with charger_env(tmp_path, UnlockConnectorOnEVSideDisconnect=False) as env, running(env):
        start = await plug_and_swipe(env, "TAG1")
        assert await sim_locked(env)
        after = mark(env)
        await env.asim("sim.unplug", connector=1)
        stop = await env.csms.wait_for("StopTransaction", after_index=after, timeout_s=WAIT_S)
        assert stop.payload["transactionId"] == start.response["transactionId"]  # type: ignore[index]
        assert stop.payload["reason"] == "EVDisconnected" and "idTag" not in stop.payload   # §6.49
        await status_of(env, "Finishing", after=after)
        assert await sim_locked(env)
        assert (await connector_view(env))["cable_held_for"] == "TAG1"

        # Another user's card neither frees the cable nor starts a transaction on it.
        await env.asim("sim.swipe", id_tag="TAG2", connector=1)
        await env.csms.wait_for("Authorize", lambda p: p["idTag"] == "TAG2", after_index=after, timeout_s=WAIT_S)
        await env.asim("sim.plug", connector=1)
        await wait_plugged(env, True)
        assert await sim_locked(env)
        assert len(calls(env, "StartTransaction")) == 1

        await env.asim("sim.unplug", connector=1)
        released = mark(env)
        await env.asim("sim.swipe", id_tag="tag1", connector=1)   # the same idTag, any case (§7.28)
        await status_of(env, "Available", after=released)
        await wait_locked(env, False)
        assert len(calls(env, "StartTransaction")) == 1
        assert "cable_held_for" not in await connector_view(env)
        assert_legal_transitions(env)
    env.csms.assert_no_violations()


async def test_cable_stays_locked_while_the_transaction_outlives_an_ev_side_disconnect_4_10(
        tmp_path: Path) -> None:
    """§4.10: StopTransactionOnEVSideDisconnect false has priority -- the transaction goes on
    (SuspendedEV) and the cable stays locked even with UnlockConnectorOnEVSideDisconnect true;
    the user's card then stops it (reason Local with the idTag) and the cable is unlocked.
    Found: the lock opened on the unplug while the transaction was still running."""
    async with charger_env(tmp_path, StopTransactionOnEVSideDisconnect=False) as env, running(env):
        await plug_and_swipe(env, "TAG1")
        after = mark(env)
        await env.asim("sim.unplug", connector=1)
        await status_of(env, "SuspendedEV", after=after)
        assert await sim_locked(env)
        assert not calls(env, "StopTransaction")

        await env.asim("sim.swipe", id_tag="TAG1", connector=1)
        stop = await env.csms.wait_for("StopTransaction", after_index=after, timeout_s=WAIT_S)
        assert stop.payload["reason"] == "Local" and stop.payload["idTag"] == "TAG1"
        await status_of(env, "Available", after=after)
        await wait_locked(env, False)
        assert_legal_transitions(env)
    env.csms.assert_no_violations()


async def test_ev_side_disconnect_unlocks_by_default_9_1_33(tmp_path: Path) -> None:
    """§9.1.33 true (the default): the EVDisconnected stop also unlocks the cable; Available."""
    async with charger_env(tmp_path) as env, running(env):
        await plug_and_swipe(env, "TAG1")
        after = mark(env)
        await env.asim("sim.unplug", connector=1)
        stop = await env.csms.wait_for("StopTransaction", after_index=after, timeout_s=WAIT_S)
        assert stop.payload["reason"] == "EVDisconnected"
        await status_of(env, "Available", after=after)
        await wait_locked(env, False)
        assert_legal_transitions(env)
    env.csms.assert_no_violations()


async def test_deauthorized_stop_keeps_the_cable_locked_for_the_same_idtag_across_a_restart_errata_3_5(
        tmp_path: Path) -> None:
    """Errata 3.5 / 3.17: StartTransaction.conf Invalid with StopTransactionOnInvalidId true
    stops with DeAuthorized and SHOULD keep the cable locked until the same idTag is presented
    -- also once the EV side is unplugged, and across a restart of the charger. The card
    releases it although it is not valid (no Authorize.req needed to unlock).
    Found: the cable was unlocked at once."""
    async with charger_env(tmp_path) as env:
        env.csms.start_status["TAG1"] = "Invalid"
        async with running(env):
            await env.asim("sim.plug", connector=1)
            await status_of(env, "Preparing")
            await env.asim("sim.swipe", id_tag="TAG1", connector=1)
            stop = await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
            assert stop.payload["reason"] == "DeAuthorized" and "idTag" not in stop.payload
            await status_of(env, "Finishing", after=stop.index)
            await env.asim("sim.unplug", connector=1)
            await wait_plugged(env, False)
            assert await sim_locked(env)
            assert (await connector_view(env))["status"] == "Finishing"

        rebooted = mark(env)
        async with running(env):
            await status_of(env, "Finishing", after=rebooted)
            assert await sim_locked(env)
            authorizations = len(calls(env, "Authorize"))
            await env.asim("sim.swipe", id_tag="TAG1", connector=1)
            await status_of(env, "Available", after=rebooted)
            await wait_locked(env, False)
            assert len(calls(env, "Authorize")) == authorizations
        assert_legal_transitions(env)
    env.csms.assert_no_violations()


async def test_unlock_connector_releases_a_held_cable_5_18(tmp_path: Path) -> None:
    """§5.18: UnlockConnector frees a cable held for its user (the operator's remedy when the
    user has no card at hand): Unlocked, then Available."""
    async with charger_env(tmp_path, UnlockConnectorOnEVSideDisconnect=False) as env, running(env):
        await plug_and_swipe(env, "TAG1")
        after = mark(env)
        await env.asim("sim.unplug", connector=1)
        await status_of(env, "Finishing", after=after)
        assert await sim_locked(env)
        assert await call(env, "UnlockConnector", {"connectorId": 1}) == {"status": "Unlocked"}
        await status_of(env, "Available", after=after)
        assert not await sim_locked(env)
        assert_legal_transitions(env)
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- §4.9 transitions


async def test_new_transaction_from_finishing_passes_through_preparing_4_9_f2(tmp_path: Path) -> None:
    """§4.9 F2 (errata: "thereby creating a new Transaction"): after a stop with the EV still
    plugged (Finishing), a RemoteStartTransaction -- the platform restarting a session -- goes
    Finishing -> Preparing -> SuspendedEV/Charging. Found: Finishing -> SuspendedEV (F4, not in
    the table)."""
    async with charger_env(tmp_path) as env, running(env):
        start = await plug_and_swipe(env, "TAG1")
        after = mark(env)
        await call(env, "RemoteStopTransaction", {"transactionId": start.response["transactionId"]})  # type: ignore[index]
        await status_of(env, "Finishing", after=after)
        restart = mark(env)
        assert await call(env, "RemoteStartTransaction", {"idTag": "TAG2", "connectorId": 1}) == {
            "status": "Accepted"}
        await env.csms.wait_for("StartTransaction", lambda p: p["idTag"] == "TAG2", after_index=restart,
                                timeout_s=WAIT_S)
        await status_of(env, "Charging", after=restart)
        assert statuses(env, after=restart)[0] == "Preparing"
        assert_legal_transitions(env)
    env.csms.assert_no_violations()


def expiry(seconds: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_reserved_connector_starts_via_preparing_4_9_g2_tc_046(tmp_path: Path) -> None:
    """§4.9 G2 (OCTT TC_046, reservation then local start): the EV is plugged into the Reserved
    connector, the reservation's idTag is presented: Reserved -> Preparing -> Charging, and
    StartTransaction carries the reservationId (§4.8). Found: Reserved -> SuspendedEV (G4)."""
    async with charger_env(tmp_path) as env, running(env):
        reserved = {"connectorId": 1, "expiryDate": expiry(600), "idTag": "TAG3", "reservationId": 7}
        assert await call(env, "ReserveNow", reserved) == {"status": "Accepted"}
        await status_of(env, "Reserved")
        await env.asim("sim.plug", connector=1)
        await wait_plugged(env, True)
        after = mark(env)
        await env.asim("sim.swipe", id_tag="TAG3", connector=1)
        start = await env.csms.wait_for("StartTransaction", after_index=after, timeout_s=WAIT_S)
        assert start.payload["reservationId"] == 7
        await status_of(env, "Charging", after=after)
        assert statuses(env, after=after)[0] == "Preparing"
        assert_legal_transitions(env)
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- meter values (§9.1.17)


async def test_sampled_measurands_combined_with_a_phase_are_accepted_and_reported_per_phase_9_1_17(
        tmp_path: Path) -> None:
    """§9.1.17: "Where applicable, the Measurand is combined with the optional phase; for
    instance: Voltage.L1". Such items are Accepted and report that phase only; a phase the
    measurand does not have (or a per-phase Power we cannot measure) is Rejected and changes
    nothing (errata 3.14.4). Found: "Voltage.L1" was Rejected."""
    async with charger_env(tmp_path) as env, running(env):
        sampled = "Energy.Active.Import.Register,Voltage.L1,Current.Import.L2"
        assert await call(env, "ChangeConfiguration", {"key": "MeterValuesSampledData", "value": sampled}) == {
            "status": "Accepted"}
        for bad in ("Voltage.L4", "Power.Active.Import.L1", "Current.Import.N"):
            answer = await call(env, "ChangeConfiguration", {"key": "MeterValuesSampledData", "value": bad})
            assert answer == {"status": "Rejected"}, bad
        conf = await call(env, "GetConfiguration", {"key": ["MeterValuesSampledData"]})
        assert conf["configurationKey"][0]["value"] == sampled

        await env.asim("sim.plug", connector=1)
        after = mark(env)
        answer = await call(env, "TriggerMessage", {"requestedMessage": "MeterValues", "connectorId": 1})
        assert answer == {"status": "Accepted"}
        values = (await env.csms.wait_for("MeterValues", after_index=after, timeout_s=WAIT_S)).payload
        sampled_values = values["meterValue"][0]["sampledValue"]
        by_measurand = {(v.get("measurand"), v.get("phase")) for v in sampled_values}
        assert by_measurand == {("Energy.Active.Import.Register", None), ("Voltage", "L1-N"),
                                ("Current.Import", "L2")}
        assert all(v["context"] == "Trigger" for v in sampled_values)
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- heartbeat (§4.6, §9.1.10)


async def test_heartbeat_interval_change_takes_effect_without_a_reboot_4_6_9_1_10(tmp_path: Path) -> None:
    """§4.6 / §9.1.10: HeartbeatInterval is the interval of inactivity after which a Heartbeat
    is sent (the charger MAY skip it after other traffic). A ChangeConfiguration applies to the
    running connection: Accepted (not RebootRequired), then Heartbeats with nothing else sent."""
    async with charger_env(tmp_path) as env, running(env):
        assert await call(env, "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "1"}) == {
            "status": "Accepted"}
        after = mark(env)
        first = await env.csms.wait_for("Heartbeat", after_index=after, timeout_s=WAIT_S)
        await env.csms.wait_for("Heartbeat", after_index=first.index + 1, timeout_s=WAIT_S)
        assert await call(env, "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "-1"}) == {
            "status": "Rejected"}
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- authorization (§4.1, TC_023)


@pytest.mark.parametrize("status", ["Invalid", "Blocked", "Expired", "ConcurrentTx"])
async def test_card_refused_by_authorize_starts_nothing_and_stays_preparing_4_1_tc_023(
        tmp_path: Path, status: str) -> None:
    """§4.1 / §7.2 (OCTT TC_023 family): an Authorize.conf other than Accepted -- Invalid,
    Blocked, Expired or ConcurrentTx (the idTag is in another transaction) -- starts nothing;
    the plugged connector stays Preparing and is Available once unplugged."""
    async with charger_env(tmp_path) as env, running(env):
        env.csms.authorize["BAD"] = status
        after = mark(env)
        await env.asim("sim.plug", connector=1)
        await status_of(env, "Preparing", after=after)
        await env.asim("sim.swipe", id_tag="BAD", connector=1)
        await env.csms.wait_for("Authorize", lambda p: p["idTag"] == "BAD", after_index=after, timeout_s=WAIT_S)
        await env.asim("sim.unplug", connector=1)
        await status_of(env, "Available", after=after)
        assert not calls(env, "StartTransaction")
        assert statuses(env, after=after) == ["Preparing", "Available"]
        assert_legal_transitions(env)
    env.csms.assert_no_violations()


async def test_cached_card_starts_without_authorize_with_local_pre_authorize_3_5_1_tc_007(tmp_path: Path) -> None:
    """§3.5.1 / §9.1.13 (OCTT TC_007, regular start with a cached id): the first use asks the
    central system and caches the answer; with LocalPreAuthorize the next use starts from the
    cache without an Authorize.req, and StartTransaction still goes to the central system."""
    async with charger_env(tmp_path, LocalPreAuthorize=True, AuthorizationCacheEnabled=True) as env, running(env):
        await plug_and_swipe(env, "TAG1")
        await env.asim("sim.swipe", id_tag="TAG1", connector=1)
        await env.csms.wait_for("StopTransaction", timeout_s=WAIT_S)
        unplugged = mark(env)
        await env.asim("sim.unplug", connector=1)
        await status_of(env, "Available", after=unplugged)
        await plug_and_swipe(env, "TAG1")
        assert len(calls(env, "Authorize")) == 1
        assert len(calls(env, "StartTransaction")) == 2
        assert_legal_transitions(env)
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- plug first, no card (errata 3.20)


async def test_plugged_without_identification_stays_preparing_for_a_later_remote_start_errata_3_20(
        tmp_path: Path) -> None:
    """Errata 3.20 allows (MAY) B6 -- Preparing -> Finishing when no idTag comes within
    ConnectionTimeOut after a plug. Kept Preparing on purpose: the platform starts sessions
    remotely, later (requirements.md), and reads Preparing as "plugged, not charging". The
    connector stays Preparing past ConnectionTimeOut, then a RemoteStartTransaction starts
    at once (B3/B4) with legal transitions."""
    async with charger_env(tmp_path, ConnectionTimeOut=1) as env, running(env) as app:
        after = mark(env)
        await env.asim("sim.plug", connector=1)
        await status_of(env, "Preparing", after=after)
        waited_s = app.clock.monotonic_s() + 3.0
        await eventually(lambda: app.clock.monotonic_s() >= waited_s, timeout_s=WAIT_S, interval_s=0.2)
        assert statuses(env, after=after) == ["Preparing"]
        assert await call(env, "RemoteStartTransaction", {"idTag": "APP", "connectorId": 1}) == {
            "status": "Accepted"}
        await env.csms.wait_for("StartTransaction", lambda p: p["idTag"] == "APP", timeout_s=WAIT_S)
        await status_of(env, "Charging", after=after)
        assert_legal_transitions(env)
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- remote start / stop (§5.11, §5.12)


async def test_remote_start_without_connector_id_picks_the_plugged_connector_5_11(tmp_path: Path) -> None:
    """§5.11: "When no connector id is provided, the Charge Point is in control of the connector
    selection": with two connectors and the EV plugged into the second, it starts there.
    A connectorId that does not exist (0 included) is Rejected; RemoteStopTransaction for an
    unknown transactionId is Rejected (errata 3.33)."""
    async with charger_env(tmp_path) as env:
        env.doc["connector"] = TWO_CONNECTORS
        async with running(env, last_connector=2):
            after = mark(env)
            await env.asim("sim.plug", connector=2)
            await status_of(env, "Preparing", connector_id=2, after=after)
            for connector_id in (0, 3):
                answer = await call(env, "RemoteStartTransaction", {"idTag": "APP", "connectorId": connector_id})
                assert answer == {"status": "Rejected"}, connector_id
            assert await call(env, "RemoteStopTransaction", {"transactionId": 4242}) == {"status": "Rejected"}
            assert await call(env, "RemoteStartTransaction", {"idTag": "APP"}) == {"status": "Accepted"}
            start = await env.csms.wait_for("StartTransaction", after_index=after, timeout_s=WAIT_S)
            assert start.payload["connectorId"] == 2
            await status_of(env, "Charging", connector_id=2, after=after)
            assert statuses(env, 1, after=after) == []
            assert len(calls(env, "StartTransaction")) == 1
            assert_legal_transitions(env, 1)
            assert_legal_transitions(env, 2)
    env.csms.assert_no_violations()


async def test_remote_start_without_a_plug_times_out_back_to_available_9_1_6_tc_011(tmp_path: Path) -> None:
    """§9.1.6 / errata 3.77 (OCTT TC_011_2, remote start time-out): Accepted, Preparing while
    waiting for the cable, nothing plugged within ConnectionTimeOut: back to Available (B1),
    no StartTransaction."""
    async with charger_env(tmp_path, ConnectionTimeOut=1) as env, running(env):
        after = mark(env)
        assert await call(env, "RemoteStartTransaction", {"idTag": "APP", "connectorId": 1}) == {
            "status": "Accepted"}
        await status_of(env, "Preparing", after=after)
        await status_of(env, "Available", after=after)
        assert not calls(env, "StartTransaction")
        assert (await connector_view(env)).get("authorized_id_tag") is None
        assert_legal_transitions(env)
    env.csms.assert_no_violations()


# --------------------------------------------------------------------------- StopTransaction (§6.49, §7.36)


async def test_stop_transaction_carries_the_idtag_only_when_a_card_stopped_it_6_49(tmp_path: Path) -> None:
    """§6.49 / §4.10: idTag is present when an idTag stopped the transaction and omitted when the
    charger (or the central system) did; reason is set for every stop that is not the user's
    (§7.36): Local + idTag for the card, Remote for RemoteStopTransaction, UnlockCommand for
    UnlockConnector -- each with the unplug then Available (Finishing in between)."""
    async with charger_env(tmp_path) as env, running(env):
        expected: list[tuple[str, str | None]] = []
        for how in ("card", "remote", "unlock"):
            start = await plug_and_swipe(env, "TAG1")
            transaction_id = start.response["transactionId"]  # type: ignore[index]
            after = mark(env)
            if how == "card":
                await env.asim("sim.swipe", id_tag="TAG1", connector=1)
                expected.append(("Local", "TAG1"))
            elif how == "remote":
                await call(env, "RemoteStopTransaction", {"transactionId": transaction_id})
                expected.append(("Remote", None))
            else:
                assert await call(env, "UnlockConnector", {"connectorId": 1}) == {"status": "Unlocked"}
                expected.append(("UnlockCommand", None))
            stop = await env.csms.wait_for("StopTransaction", after_index=after, timeout_s=WAIT_S)
            assert stop.payload["transactionId"] == transaction_id
            assert (stop.payload["reason"], stop.payload.get("idTag")) == expected[-1]
            await status_of(env, "Finishing", after=after)
            await env.asim("sim.unplug", connector=1)
            await status_of(env, "Available", after=after)
        assert_legal_transitions(env)
    env.csms.assert_no_violations()
