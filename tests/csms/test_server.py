"""The bundled central system over real TLS websockets on loopback, driven by a raw client."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from chargepoint.csms import CallErrorResponse, CentralSystem, make_server_ssl_context
from chargepoint.csms.checks import parse_rfc3339

from .conftest import BOOT, CP_ID, PASSWORD, RawClient, basic_auth, open_client

NOW = "2025-06-01T12:00:00Z"


def start_tx(connector: int = 1, id_tag: str = "TAG1", meter_wh: int = 1000) -> dict[str, Any]:
    return {"connectorId": connector, "idTag": id_tag, "meterStart": meter_wh, "timestamp": NOW}


def stop_tx(tx_id: int, meter_wh: int = 2000) -> dict[str, Any]:
    return {"transactionId": tx_id, "meterStop": meter_wh, "timestamp": NOW, "reason": "Local"}


def meter_values(tx_id: int) -> dict[str, Any]:
    return {"connectorId": 1, "transactionId": tx_id,
            "meterValue": [{"timestamp": NOW, "sampledValue": [{"value": "1500", "unit": "Wh"}]}]}


def kinds(cs: CentralSystem) -> list[str]:
    return [v.kind for v in cs.violations]


# --- handshake (OCPP-J 3, 6.2) -------------------------------------------------------


@pytest.mark.asyncio
async def test_accepts_a_correct_client_and_records_the_handshake(cs: CentralSystem, client: RawClient) -> None:
    answer = await client.boot()
    assert answer[2]["interval"] == 300
    assert parse_rfc3339(answer[2]["currentTime"]) is not None
    rec = await cs.wait_for("BootNotification", cp_id=CP_ID)
    assert rec.payload == BOOT and rec.response == answer[2] and rec.index == 0
    info = cs.connections[-1]
    assert info.path == f"/ocpp/{CP_ID}" and info.cp_id == CP_ID and info.username == CP_ID
    assert info.authorization == basic_auth(CP_ID, PASSWORD)
    assert info.subprotocol == "ocpp1.6" and info.http_status == 101 and info.accepted
    assert info.tls_version in ("TLSv1.2", "TLSv1.3") and info.cipher
    assert cs.registration[CP_ID] == "Accepted" and cs.is_connected(CP_ID)
    assert cs.url.startswith("wss://127.0.0.1:") and cs.ca_file.exists()
    assert [f.direction for f in cs.frames] == ["in", "out"]
    cs.assert_no_violations()


@pytest.mark.asyncio
@pytest.mark.parametrize(("user", "password"), [(CP_ID, "wrong-password-0000"), ("CP-2", PASSWORD), (CP_ID, None)])
async def test_wrong_or_missing_credentials_get_401_with_basic_challenge_ocppj_6_2_2(
        cs: CentralSystem, user: str, password: str | None) -> None:
    headers = {} if password is None else {"Authorization": basic_auth(user, password)}
    with pytest.raises(InvalidStatus) as info:
        await open_client(cs, password=None, headers=headers)
    assert info.value.response.status_code == 401
    assert info.value.response.headers["WWW-Authenticate"] == 'Basic realm="ocpp", charset="UTF-8"'
    assert cs.connections[-1].http_status == 401 and not cs.is_connected(CP_ID)


@pytest.mark.asyncio
async def test_passwords_change_at_runtime(cs: CentralSystem) -> None:
    cs.set_password(CP_ID, "a-brand-new-password")
    with pytest.raises(InvalidStatus):
        await open_client(cs, password=PASSWORD)
    ws = await open_client(cs, password="a-brand-new-password")
    await ws.close()


@pytest.mark.asyncio
async def test_own_ssl_context_restricts_tls_version_and_cipher() -> None:
    plain = CentralSystem()
    context = make_server_ssl_context(plain.pki, maximum_version=ssl.TLSVersion.TLSv1_2,
                                      ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    async with CentralSystem(ssl_context=context, pki_dir=plain.pki.ca_cert.parent) as cs:
        ws = await open_client(cs, password=None)
        info = await cs.wait_connected(CP_ID)
        assert (info.tls_version, info.cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")
        await ws.close()


@pytest.mark.asyncio
async def test_unknown_charge_point_gets_404_ocppj_3_2(cs: CentralSystem) -> None:
    with pytest.raises(InvalidStatus) as info:
        await open_client(cs, cp_id="CP-UNKNOWN")
    assert info.value.response.status_code == 404


@pytest.mark.asyncio
@pytest.mark.parametrize("offered", [[], ["ocpp2.0.1"]])
async def test_a_client_without_ocpp16_subprotocol_is_rejected_with_400(cs: CentralSystem, offered: list[str]) -> None:
    with pytest.raises(InvalidStatus) as info:
        await open_client(cs, subprotocols=offered)
    assert info.value.response.status_code == 400
    assert cs.connections[-1].reject_reason is not None and not cs.connections[-1].accepted


@pytest.mark.asyncio
async def test_answer_without_subprotocol_completes_handshake_then_closes_ocppj_3_2(cs: CentralSystem) -> None:
    cs.answer_without_subprotocol = True
    ws = await open_client(cs)
    assert ws.subprotocol is None
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1002


@pytest.mark.asyncio
async def test_percent_encoded_identity_and_accept_any_without_passwords() -> None:
    async with CentralSystem() as cs:
        ws = await open_client(cs, cp_id="RDAM%20123", password=None)
        await cs.wait_connected("RDAM 123")
        assert cs.connections[-1].authorization is None
        await ws.close()
        await cs.wait_disconnected("RDAM 123")
        assert cs.connections[-1].close_code == 1000 and cs.connections[-1].closed_by == "peer"


# --- strictness --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_invalid_boot_notification_gets_callerror_and_a_violation(cs: CentralSystem, client: RawClient) -> None:
    answer = await client.call("BootNotification", {"chargePointVendor": "VendorX"})
    assert answer[0] == 4 and answer[2] == "OccurenceConstraintViolation" and answer[4] == {}
    assert "chargePointModel" in answer[3]
    assert kinds(cs) == ["schema"] and cs.violations[0].action == "BootNotification"
    assert cs.received[0].error_code == "OccurenceConstraintViolation"
    assert CP_ID not in cs.registration   # an invalid boot registers nothing
    with pytest.raises(AssertionError):
        cs.assert_no_violations()


@pytest.mark.asyncio
async def test_malformed_frame_from_charger_is_answered_when_its_id_is_readable(
        cs: CentralSystem, client: RawClient) -> None:
    await client.send('[2, "bad1", "Heartbeat"]')
    answer = await client.recv()
    assert answer[:3] == [4, "bad1", "FormationViolation"]
    await client.send("this is not json")
    await client.boot()   # still served; the garbage got no answer
    assert kinds(cs) == ["frame", "frame"]


@pytest.mark.asyncio
async def test_timestamp_before_2020_is_a_violation_but_answered(cs: CentralSystem, client: RawClient) -> None:
    await client.boot()
    answer = await client.call("StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                                      "status": "Available", "timestamp": "1970-01-01T00:00:00Z"})
    assert answer[0] == 3
    assert kinds(cs) == ["timestamp"]
    assert cs.connector_status(CP_ID, 1) == "Available"


@pytest.mark.asyncio
async def test_call_before_accepted_boot_gets_security_error_ocppj_errata_3_10(
        cs: CentralSystem, client: RawClient) -> None:
    answer = await client.call("Heartbeat", {})
    assert answer[0] == 4 and answer[2] == "SecurityError"
    assert kinds(cs) == ["not-accepted"]


@pytest.mark.asyncio
async def test_pending_allows_only_triggered_messages_and_no_early_reboot_ocpp16_4_2(
        cs: CentralSystem, client: RawClient) -> None:
    cs.boot_status = "Pending"
    cs.boot_retry_interval_s = 60
    answer = await client.call("BootNotification", BOOT)
    assert answer[2]["status"] == "Pending" and answer[2]["interval"] == 60
    trigger = asyncio.ensure_future(cs.call(CP_ID, "TriggerMessage", {"requestedMessage": "Heartbeat"}))
    request = await client.recv()
    assert request[2] == "TriggerMessage"
    # Answer, then send the triggered message at once: the central system must
    # already know it was allowed (no race with call() returning).
    await client.send([3, request[1], {"status": "Accepted"}])
    heartbeat = await client.call("Heartbeat", {})
    assert await trigger == {"status": "Accepted"}
    assert heartbeat[0] == 3
    assert kinds(cs) == []
    status = await client.call("StatusNotification", {"connectorId": 0, "errorCode": "NoError", "status": "Available"})
    assert status[2] == "SecurityError"
    early = await client.call("BootNotification", BOOT)
    assert early[0] == 3
    assert kinds(cs) == ["not-accepted", "boot-too-early"]


@pytest.mark.asyncio
async def test_concurrent_call_from_charger_is_a_violation_ocppj_4_1_1(cs: CentralSystem, client: RawClient) -> None:
    release = asyncio.Event()

    async def slow_heartbeat(cp_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return {"currentTime": "2025-06-01T12:00:00.000Z"}

    await client.boot()
    cs.responders["Heartbeat"] = slow_heartbeat
    await client.send([2, "h1", "Heartbeat", {}])
    status = await client.call("StatusNotification", {"connectorId": 0, "errorCode": "NoError",
                                                      "status": "Available"})
    assert status[0] == 3
    release.set()
    assert (await client.recv())[:2] == [3, "h1"]   # the held Heartbeat is still answered
    assert kinds(cs) == ["concurrent-call"]


@pytest.mark.asyncio
async def test_delay_answers_late_but_answers(cs: CentralSystem, client: RawClient) -> None:
    await client.boot()
    cs.delay("Heartbeat", 0.2)
    answer = await client.call("Heartbeat", {})
    assert answer[0] == 3 and cs.received[-1].response == answer[2]
    cs.assert_no_violations()


@pytest.mark.asyncio
async def test_message_id_reuse_is_a_violation_unless_identical_retry_ocppj_errata_3_1(
        cs: CentralSystem, client: RawClient) -> None:
    await client.boot()
    first = await client.call("StartTransaction", start_tx(), message_id="tx-1")
    retry = await client.call("StartTransaction", start_tx(), message_id="tx-1")
    assert retry[2] == first[2] and len(cs.transactions) == 1   # idempotent, no second transaction
    assert cs.received[-1].retry
    assert kinds(cs) == []
    await client.call("Heartbeat", {}, message_id="tx-1")
    assert kinds(cs) == ["duplicate-message-id"]


@pytest.mark.asyncio
async def test_message_ids_must_stay_unique_across_reconnects(cs: CentralSystem, client: RawClient) -> None:
    boot = await client.boot()
    await client.ws.close()
    await cs.wait_disconnected(CP_ID)
    again = RawClient(await open_client(cs))
    await again.call("Heartbeat", {}, message_id=boot[1])
    assert kinds(cs) == ["duplicate-message-id"]
    await again.ws.close()


# --- transactions -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_transaction_bookkeeping_catches_double_and_unknown_stops(cs: CentralSystem, client: RawClient) -> None:
    cs.start_status["BLOCKED"] = "Blocked"
    await client.boot()
    start = await client.call("StartTransaction", start_tx())
    tx_id = start[2]["transactionId"]
    assert tx_id == 1 and start[2]["idTagInfo"] == {"status": "Accepted"}
    await client.call("MeterValues", meter_values(tx_id))
    await client.call("StopTransaction", stop_tx(tx_id))
    tx = cs.transactions[tx_id]
    assert tx.start["meterStart"] == 1000 and tx.stop is not None and tx.stop["meterStop"] == 2000
    assert len(tx.meter_values) == 1
    cs.assert_no_violations()

    await client.call("StopTransaction", {**stop_tx(tx_id), "reason": "PowerLoss"})   # stopped twice
    await client.call("StopTransaction", stop_tx(-1))           # offline start never resolved
    await client.call("MeterValues", meter_values(tx_id))       # after its stop
    assert kinds(cs) == ["double-stop", "unknown-transaction", "meter-values-after-stop"]
    blocked = await client.call("StartTransaction", start_tx(connector=2, id_tag="BLOCKED"))
    assert blocked[2] == {"transactionId": 2, "idTagInfo": {"status": "Blocked"}}


@pytest.mark.asyncio
async def test_identical_resends_under_new_ids_are_not_new_transactions_or_double_stops(
        cs: CentralSystem, client: RawClient) -> None:
    await client.boot()
    first = await client.call("StartTransaction", start_tx())
    again = await client.call("StartTransaction", start_tx())      # .conf lost, resent with a new id
    assert again[2]["transactionId"] == first[2]["transactionId"] and list(cs.transactions) == [1]
    await client.call("MeterValues", meter_values(1))
    await client.call("MeterValues", meter_values(1))
    await client.call("StopTransaction", stop_tx(1))
    await client.call("StopTransaction", stop_tx(1))
    assert len(cs.transactions[1].meter_values) == 1
    cs.assert_no_violations()
    await client.call("StopTransaction", {**stop_tx(1), "reason": "PowerLoss"})   # a different second stop
    assert kinds(cs) == ["double-stop"]
    assert [r.message_id for r in cs.received_of("StopTransaction")] == [r.message_id for r in cs.received[-3:]]


@pytest.mark.asyncio
async def test_second_open_transaction_on_a_connector_and_meter_going_backwards(
        cs: CentralSystem, client: RawClient) -> None:
    await client.boot()
    await client.call("StartTransaction", start_tx())
    second = await client.call("StartTransaction", start_tx(meter_wh=5000))
    await client.call("StopTransaction", stop_tx(second[2]["transactionId"], meter_wh=10))
    assert kinds(cs) == ["transaction-already-open", "meter-decreased"]


@pytest.mark.asyncio
async def test_authorize_answers_from_the_table(cs: CentralSystem, client: RawClient) -> None:
    cs.authorize["BAD"] = "Invalid"
    cs.authorize["KID"] = {"status": "Accepted", "parentIdTag": "PARENT"}
    await client.boot()
    assert (await client.call("Authorize", {"idTag": "ANY"}))[2] == {"idTagInfo": {"status": "Accepted"}}
    assert (await client.call("Authorize", {"idTag": "BAD"}))[2] == {"idTagInfo": {"status": "Invalid"}}
    assert (await client.call("Authorize", {"idTag": "KID"}))[2]["idTagInfo"]["parentIdTag"] == "PARENT"


# --- fault injection ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fail_next_answers_callerror_n_times_then_succeeds(cs: CentralSystem, client: RawClient) -> None:
    await client.boot()
    cs.fail_next("StartTransaction", 2, "InternalError", "database down")
    for _ in range(2):
        answer = await client.call("StartTransaction", start_tx())
        assert answer[0] == 4 and answer[2:4] == ["InternalError", "database down"]
    answer = await client.call("StartTransaction", start_tx())
    assert answer[0] == 3 and answer[2]["transactionId"] == 1   # failures consumed no ids
    assert list(cs.transactions) == [1]
    assert [r.error_code for r in cs.received[1:]] == ["InternalError", "InternalError", None]
    cs.assert_no_violations()


@pytest.mark.asyncio
async def test_responder_override_and_callerror_from_responder(cs: CentralSystem, client: RawClient) -> None:
    def data_transfer(cp_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("messageId") == "boom":
            raise CallErrorResponse("NotSupported", "no such message")
        return {"status": "Accepted", "data": f"hello {cp_id}"}

    async def heartbeat(cp_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"currentTime": "2030-01-01T00:00:00.000Z"}

    cs.responders["DataTransfer"] = data_transfer
    cs.responders["Heartbeat"] = heartbeat
    await client.boot()
    ok = await client.call("DataTransfer", {"vendorId": "X"})
    assert ok[2] == {"status": "Accepted", "data": f"hello {CP_ID}"}
    err = await client.call("DataTransfer", {"vendorId": "X", "messageId": "boom"})
    assert err[2:4] == ["NotSupported", "no such message"]
    assert (await client.call("Heartbeat", {}))[2] == {"currentTime": "2030-01-01T00:00:00.000Z"}


@pytest.mark.asyncio
async def test_blackhole_stops_reading_answers_and_pongs(cs: CentralSystem, client: RawClient) -> None:
    await client.boot()
    cs.blackhole(CP_ID)
    await client.send([2, "hb", "Heartbeat", {}])
    pong = asyncio.ensure_future(await client.ws.ping())
    done, _ = await asyncio.wait({pong}, timeout=0.5)
    assert not done                                     # no pong: the link looks half-open
    with pytest.raises(TimeoutError):
        await client.recv(timeout_s=0.3)
    assert [r.action for r in cs.received] == ["BootNotification"] and cs.is_connected(CP_ID)
    cs.blackhole(CP_ID, enabled=False)                  # the bytes were only held back
    assert (await client.recv())[:2] == [3, "hb"]
    await asyncio.wait_for(pong, 10)


@pytest.mark.asyncio
async def test_drop_closes_without_close_frame(cs: CentralSystem, client: RawClient) -> None:
    await client.boot()
    await cs.drop(CP_ID)
    assert not cs.is_connected(CP_ID)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(client.ws.recv(), 10)
    assert client.ws.close_code == 1006
    assert cs.connections[-1].closed_by == "drop"


@pytest.mark.asyncio
async def test_a_new_connection_replaces_the_old_one(cs: CentralSystem, client: RawClient) -> None:
    await client.boot()
    n = len(cs.connections)
    second = RawClient(await open_client(cs))
    info = await cs.wait_connected(CP_ID, after_index=n)
    assert info is cs.connections[n] and cs.connections[n - 1].closed_by == "replaced"
    assert (await second.call("Heartbeat", {}))[0] == 3   # still registered: no new boot needed (OCPP-J 5.4)
    await second.ws.close()


# --- calls to the charger ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_call_round_trip_callerror_timeout_and_response_validation(cs: CentralSystem, client: RawClient) -> None:
    await client.boot()
    pending = asyncio.ensure_future(cs.call(CP_ID, "GetConfiguration", {"key": ["HeartbeatInterval"]}))
    request = await client.recv()
    assert request[0] == 2 and request[2:] == ["GetConfiguration", {"key": ["HeartbeatInterval"]}]
    assert len(request[1]) <= 36
    result = {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]}
    await client.send([3, request[1], result])
    assert await pending == result

    pending = asyncio.ensure_future(cs.call(CP_ID, "Reset", {"type": "Hard"}))
    request = await client.recv()
    await client.send([4, request[1], "NotSupported", "no reset here", {}])
    with pytest.raises(CallErrorResponse) as info:
        await pending
    assert info.value.code == "NotSupported" and info.value.description == "no reset here"

    pending = asyncio.ensure_future(cs.call(CP_ID, "ClearCache", {}))
    request = await client.recv()
    await client.send([3, request[1], {"status": "Maybe"}])
    assert await pending == {"status": "Maybe"}
    assert kinds(cs) == ["response-schema"]

    with pytest.raises(TimeoutError):
        await cs.call(CP_ID, "ClearCache", {}, timeout_s=0.2)
    await client.recv()   # the unanswered request


@pytest.mark.asyncio
async def test_call_fails_fast_when_the_charger_disconnects(cs: CentralSystem, client: RawClient) -> None:
    await client.boot()
    pending = asyncio.ensure_future(cs.call(CP_ID, "ClearCache", {}, timeout_s=30))
    await client.recv()
    await client.ws.close()
    with pytest.raises(ConnectionError):
        await pending
    with pytest.raises(ConnectionError):
        await cs.call(CP_ID, "ClearCache", {})


@pytest.mark.asyncio
async def test_accepted_authorization_key_change_replaces_the_password_ocppj_6_2_2(
        cs: CentralSystem, client: RawClient) -> None:
    await client.boot()
    new_key = "fedcba9876543210fedc"
    pending = asyncio.ensure_future(cs.call(CP_ID, "ChangeConfiguration",
                                            {"key": "AuthorizationKey", "value": new_key}))
    request = await client.recv()
    await client.send([3, request[1], {"status": "Accepted"}])
    await pending
    await client.ws.close()
    with pytest.raises(InvalidStatus):
        await open_client(cs, password=PASSWORD)
    ws = await open_client(cs, password=new_key)
    await ws.close()


@pytest.mark.asyncio
async def test_send_raw_and_read_the_chargers_answer(cs: CentralSystem, client: RawClient) -> None:
    await client.boot()
    await cs.send_raw(CP_ID, '[2, "raw-1", "Reset"]')
    got = await client.recv()
    assert got == [2, "raw-1", "Reset"]
    await client.send([4, "raw-1", "FormationViolation", "missing payload", {}])
    frame = await cs.recv_next_frame(CP_ID)
    assert frame.parsed == [4, "raw-1", "FormationViolation", "missing payload", {}]
    await cs.send_raw(CP_ID, "{oops")
    assert await asyncio.wait_for(client.ws.recv(), 10) == "{oops"
    await client.send([4, "-1", "FormationViolation", "", {}])
    assert json.loads((await cs.recv_next_frame(CP_ID)).text)[1] == "-1"
    cs.assert_no_violations()   # answers to raw frames are not "unexpected results"


# --- restart ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_restart_on_the_same_port_keeps_state(cs: CentralSystem, client: RawClient) -> None:
    await client.boot()
    await client.call("StartTransaction", start_tx())
    port = cs.port
    await cs.stop()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(client.ws.recv(), 10)
    assert client.ws.close_code == 1001
    assert not cs.is_connected(CP_ID) and not cs.running
    await cs.start()
    assert cs.port == port
    again = RawClient(await open_client(cs))
    assert (await again.call("Heartbeat", {}))[0] == 3        # registration survives the restart
    second = await again.call("StartTransaction", start_tx(connector=2))
    assert second[2]["transactionId"] == 2                    # ids keep increasing
    await again.ws.close()
    cs.assert_no_violations()


@pytest.mark.asyncio
async def test_client_keepalive_detects_blackhole_and_its_reconnect_replaces_the_dead_link(
        cs: CentralSystem, client: RawClient) -> None:
    await client.boot()
    pinging = await open_client(cs, ping_interval=0.2, ping_timeout=0.5, close_timeout=0.5)
    n = len(cs.connections)
    await cs.wait_connected(CP_ID, after_index=n - 1)
    cs.blackhole(CP_ID)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(pinging.recv(), 20)   # no pong: the client gives up on the link
    assert cs.is_connected(CP_ID)                    # the server still believes in it (half-open)
    fresh = RawClient(await open_client(cs))
    await cs.wait_connected(CP_ID, after_index=n)
    assert cs.connections[n - 1].closed_by == "replaced"
    assert (await fresh.call("Heartbeat", {}))[0] == 3
    await fresh.ws.close()

