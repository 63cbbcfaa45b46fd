"""The charger stays connected: registration, Basic auth, NTP time, credentials rotation,
malformed frames. End to end against the bundled central system over wss on loopback.

OCPP 1.6 §4.2 (BootNotification, errata 3.11 / 3.22), §5.3/§5.8 (configuration),
Security Whitepaper §2.4 / §7.2 / A01 (Basic auth, AuthorizationKey), OCPP-J §4.2.3 (CALLERROR).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from pathlib import Path

import pytest

from tests.support.harness import CP_ID, PASSWORD, ChargerEnv, charger_env, eventually

pytestmark = pytest.mark.asyncio


def _ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_registration_accepted_then_status_of_connector_0_and_every_connector(tmp_path: Path) -> None:
    """Errata 3.22: after BootNotification Accepted, StatusNotification for 0 and every connector."""
    async with charger_env(tmp_path) as env:
        env.doc["connector"] = [{"max_current_a": 32, "phases": 3}, {"max_current_a": 16, "phases": 1}]
        async with env.app():
            boot = await env.csms.wait_for("BootNotification", timeout_s=20)
            assert boot.payload["chargePointSerialNumber"] == "SN-1"
            for connector_id in (0, 1, 2):
                await env.csms.wait_for("StatusNotification", lambda p, c=connector_id: p["connectorId"] == c)
            # Nothing but BootNotification before the Accepted answer (§4.2).
            first = [r.action for r in env.csms.received]
            assert first[0] == "BootNotification"
            status = await env.astatus()
            assert status["registration"] == "Accepted"
            assert status["connection"] == "connected"
            assert status["link"] == "wifi"
        env.csms.assert_no_violations()


async def test_basic_auth_header_is_exact_and_url_carries_the_id(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        async with env.app():
            info = await env.csms.wait_connected(CP_ID, timeout_s=20)
        expected = "Basic " + base64.b64encode(f"{CP_ID}:{PASSWORD}".encode()).decode()
        assert info.authorization == expected
        assert info.path.endswith("/" + CP_ID)
        assert info.subprotocol == "ocpp1.6"


async def test_pending_answers_the_central_system_and_sends_nothing_else(tmp_path: Path) -> None:
    """§4.2: while Pending the charger answers GetConfiguration/ChangeConfiguration, refuses
    RemoteStart, and sends no request except a triggered one; then Accepted."""
    async with charger_env(tmp_path, csms_kwargs={"boot_status": "Pending"}) as env:
        env.csms.boot_retry_interval_s = 1
        async with env.app() as app:
            await env.csms.wait_for("BootNotification", timeout_s=20)
            await eventually(lambda: app.registration.status == "Pending")
            conf = await env.csms.call(CP_ID, "GetConfiguration", {"key": ["HeartbeatInterval"]})
            assert conf["configurationKey"][0]["value"] == "300"
            changed = await env.csms.call(CP_ID, "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "120"})
            assert changed == {"status": "Accepted"}
            refused = await env.csms.call(CP_ID, "RemoteStartTransaction", {"idTag": "TAG1"})
            assert refused == {"status": "Rejected"}
            assert not any(r.action == "StatusNotification" for r in env.csms.received)
            # The central system accepts: the next BootNotification (after `interval`) is Accepted.
            env.csms.boot_status = "Accepted"
            await env.csms.wait_for("StatusNotification", timeout_s=20)
            assert app.registration.status == "Accepted"
            # The heartbeat interval of the Accepted answer wins (§4.2).
            assert app.config.get_int("HeartbeatInterval") == env.csms.heartbeat_interval_s
        env.csms.assert_no_violations()


async def test_rejected_sends_nothing_until_the_interval_and_does_not_answer(tmp_path: Path) -> None:
    async with charger_env(tmp_path, csms_kwargs={"boot_status": "Rejected"}) as env:
        env.csms.boot_retry_interval_s = 2
        async with env.app() as app:
            await env.csms.wait_for("BootNotification", timeout_s=20)
            await eventually(lambda: app.registration.status == "Rejected")
            with pytest.raises(TimeoutError):
                await env.csms.call(CP_ID, "GetConfiguration", {}, timeout_s=1.0)
            boots_before = sum(1 for r in env.csms.received if r.action == "BootNotification")
            env.csms.boot_status = "Accepted"
            await env.csms.wait_for("StatusNotification", timeout_s=20)
            boots = [r for r in env.csms.received if r.action == "BootNotification"]
            assert len(boots) == boots_before + 1
            # Retried no earlier than the interval the central system gave.
            assert boots[-1].time_monotonic - boots[-2].time_monotonic >= 2 - 0.05


async def test_timestamps_follow_ntp_time_when_the_clock_may_not_be_set(tmp_path: Path) -> None:
    """[ntp] set_clock = false: the system clock is left alone, OCPP timestamps use NTP time."""
    async with charger_env(tmp_path) as env:
        env.ntp.offset_s = 3 * 3600.0
        async with env.app() as app:
            status = await env.csms.wait_for("StatusNotification", timeout_s=20)
            stamp = _ts(status.payload["timestamp"])
            skew_s = (stamp - dt.datetime.now(dt.UTC)).total_seconds()
            assert abs(skew_s - 3 * 3600) < 60
            assert app.clock.synced and app.clock.sync_source == "ntp"
            clock = (await env.astatus())["clock"]
            assert clock["synced"] is True and abs(clock["offset_s"] - 3 * 3600) < 60


async def test_ntp_is_queried_before_every_handshake(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        async with env.app():
            await env.csms.wait_connected(CP_ID, timeout_s=20)
            for reconnect in range(1, 3):
                queries_before = env.ntp.queries
                index = len(env.csms.connections)
                await env.csms.drop(CP_ID)
                await env.csms.wait_connected(CP_ID, timeout_s=30, after_index=index)
                assert env.ntp.queries > queries_before, f"no NTP query before reconnect {reconnect}"


async def test_authorization_key_change_reconnects_with_the_new_password_and_is_never_shown(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Security WP A01: Accepted, then reconnect with the new key; AuthorizationKey is write-only."""
    new_key = "fedcba9876543210fedcba98"
    caplog.set_level(logging.DEBUG)  # frames are logged at DEBUG: the key must not be among them
    async with charger_env(tmp_path) as env:
        async with env.app() as app:
            await env.csms.wait_for("StatusNotification", timeout_s=20)
            index = len(env.csms.connections)
            env.csms.set_password(CP_ID, new_key)
            answer = await env.csms.call(CP_ID, "ChangeConfiguration", {"key": "AuthorizationKey", "value": new_key})
            assert answer == {"status": "Accepted"}
            info = await env.csms.wait_connected(CP_ID, timeout_s=30, after_index=index)
            assert info.authorization == "Basic " + base64.b64encode(
                f"{CP_ID}:{new_key}".encode()).decode()
            everything = await env.csms.call(CP_ID, "GetConfiguration", {})
            keys = {k["key"] for k in everything["configurationKey"]}
            assert "AuthorizationKey" not in keys and "HeartbeatInterval" in keys
            listed = await env.csms.call(CP_ID, "GetConfiguration", {"key": ["AuthorizationKey"]})
            assert "configurationKey" not in listed or listed["configurationKey"] == []
            assert new_key not in json.dumps(everything) + json.dumps(listed)
            # A too-short key is Rejected and changes nothing.
            short = await env.csms.call(CP_ID, "ChangeConfiguration", {"key": "AuthorizationKey", "value": "short"})
            assert short == {"status": "Rejected"}
            assert app.password() == new_key
        # Survives a restart: the stored key wins over the configured one.
        async with env.app():
            info = await env.csms.wait_connected(CP_ID, timeout_s=30, after_index=len(env.csms.connections))
            assert new_key in base64.b64decode(info.authorization.split()[1]).decode()
    assert "AuthorizationKey" in caplog.text, "the DEBUG frame log was not captured"
    assert new_key not in caplog.text and PASSWORD not in caplog.text
    secrets_db = (tmp_path / "state" / "chargepoint.db")
    assert secrets_db.stat().st_mode & 0o077 == 0, "the store holds the key: owner-only"


async def test_security_profile_can_only_be_raised(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        async with env.app():
            await env.csms.wait_for("StatusNotification", timeout_s=20)
            lower = await env.csms.call(CP_ID, "ChangeConfiguration", {"key": "SecurityProfile", "value": "1"})
            assert lower == {"status": "Rejected"}
            same = await env.csms.call(CP_ID, "ChangeConfiguration", {"key": "SecurityProfile", "value": "2"})
            assert same == {"status": "Rejected"}
            # Profile 3 needs a client certificate, which this charger is not configured with.
            higher = await env.csms.call(CP_ID, "ChangeConfiguration", {"key": "SecurityProfile", "value": "3"})
            assert higher == {"status": "Rejected"}


@pytest.mark.parametrize(
    ("frame", "expected_code"),
    [
        ('[2, "m-1", "NoSuchAction", {}]', "NotImplemented"),
        ('[2, "m-2", "ChangeConfiguration", {"key": "HeartbeatInterval"}]', "OccurenceConstraintViolation"),
        ('[2, "m-3", "ChangeConfiguration", {"key": 5, "value": "1"}]', "TypeConstraintViolation"),
        ('[2, "m-4", "TriggerMessage", {"requestedMessage": "Sideways"}]', "PropertyConstraintViolation"),
        ('[2, "m-5", "GetConfiguration", {"key": ["HeartbeatInterval"], "extra": 1}]', "FormationViolation"),
        ('[2, "m-6", "GetConfiguration"]', "ProtocolError"),
    ],
)
async def test_malformed_frames_get_the_right_callerror_and_the_charger_carries_on(
        tmp_path: Path, frame: str, expected_code: str) -> None:
    async with charger_env(tmp_path) as env:
        async with env.app():
            await env.csms.wait_for("StatusNotification", timeout_s=20)
            message_id = json.loads(frame)[1]
            await env.csms.send_raw(CP_ID, frame)
            answer = (await env.csms.recv_next_frame(CP_ID, message_id=message_id)).parsed
            assert answer[0] == 4 and answer[1] == message_id
            assert answer[2] == expected_code
            # Unparsable garbage is dropped without an answer; the charger keeps serving.
            await env.csms.send_raw(CP_ID, "this is not json")
            conf = await env.csms.call(CP_ID, "GetConfiguration", {"key": ["HeartbeatInterval"]})
            assert conf["configurationKey"][0]["key"] == "HeartbeatInterval"
            assert env.csms.is_connected(CP_ID)


async def test_server_restart_is_ridden_out(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        async with env.app() as app:
            await env.csms.wait_for("StatusNotification", timeout_s=20)
            await env.csms.stop()
            await eventually(lambda: app.link.state != "connected", timeout_s=20)
            index = len(env.csms.connections)
            await env.csms.start()
            await env.csms.wait_connected(CP_ID, timeout_s=60, after_index=index)
            # After a reconnect the registration is not repeated; the status picture is re-sent.
            boots = [r for r in env.csms.received if r.action == "BootNotification"]
            assert len(boots) == 1
            await env.csms.wait_for("StatusNotification", after_index=len(env.csms.received) - 1, timeout_s=20)


async def test_half_open_connection_is_detected_and_replaced(tmp_path: Path) -> None:
    """A server that vanishes without a close (WAN change) is found by the ping/pong liveness
    check within WebSocketPingInterval + timeout and replaced."""
    async with charger_env(tmp_path, WebSocketPingInterval=1) as env:
        async with env.app():
            await env.csms.wait_for("StatusNotification", timeout_s=20)
            index = len(env.csms.connections)
            env.csms.blackhole(CP_ID)
            await env.csms.wait_connected(CP_ID, timeout_s=60, after_index=index)


async def test_link_failover_reconnects_over_the_next_link(tmp_path: Path) -> None:
    async with charger_env(tmp_path) as env:
        async with env.app():
            await env.csms.wait_for("StatusNotification", timeout_s=20)
            index = len(env.csms.connections)
            assert (await env.asim("sim.link", name="wifi", up=False))["ok"]
            await env.csms.wait_connected(CP_ID, timeout_s=30, after_index=index)
            await eventually(lambda: _status_field_is(env, "link", "gsm"), timeout_s=10)
            await env.asim("sim.link", name="gsm", up=False)
            await eventually(lambda: _status_field_is(env, "connection", "offline", "connecting"), timeout_s=10)
            assert (await env.astatus())["link"] is None
            index = len(env.csms.connections)
            await env.asim("sim.link", name="wifi", up=True)
            await env.csms.wait_connected(CP_ID, timeout_s=60, after_index=index)


async def _status_field_is(env: ChargerEnv, name: str, *expected: object) -> bool:
    return (await env.astatus())[name] in expected


async def test_websocket_ping_interval_change_applies_to_the_live_connection(tmp_path: Path) -> None:
    """§9.1.34: a new interval applies at once; switching pings off (0) means a new connection."""
    async with charger_env(tmp_path, WebSocketPingInterval=5) as env:
        async with env.app() as app:
            await env.csms.wait_for("StatusNotification", timeout_s=20)
            answer = await env.csms.call(CP_ID, "ChangeConfiguration", {"key": "WebSocketPingInterval", "value": "2"})
            assert answer == {"status": "Accepted"}
            assert app.link._ws is not None and app.link._ws.ping_interval == 2
            index = len(env.csms.connections)
            await env.csms.call(CP_ID, "ChangeConfiguration", {"key": "WebSocketPingInterval", "value": "0"})
            await env.csms.wait_connected(CP_ID, timeout_s=30, after_index=index)
            await eventually(lambda: app.link._ws is not None and app.link._ws.ping_interval is None)


async def test_heartbeat_switched_off_and_on_again_resumes_4_6(tmp_path: Path) -> None:
    """HeartbeatInterval 0 sends no Heartbeat, so the heartbeat loop has no deadline to wait for;
    setting an interval again (ChangeConfiguration, no reconnect) brings the Heartbeats back."""
    async with charger_env(tmp_path) as env:
        async with env.app() as app:
            await env.csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1, timeout_s=20)
            off = await env.csms.call(CP_ID, "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "0"})
            assert off == {"status": "Accepted"} and app.config.get_int("HeartbeatInterval") == 0
            after = len(env.csms.received)
            on = await env.csms.call(CP_ID, "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "1"})
            assert on == {"status": "Accepted"}
            first = await env.csms.wait_for("Heartbeat", after_index=after, timeout_s=15)
            await env.csms.wait_for("Heartbeat", after_index=first.index + 1, timeout_s=15)
        env.csms.assert_no_violations()
