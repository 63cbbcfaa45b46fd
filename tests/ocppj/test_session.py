"""OCPP-J 1.6 §4 RPC session, driven by feeding frames (no sockets): one CALL in
flight, results matched by id, timeouts, disconnects, handlers and CALLERRORs."""

import asyncio
import json
import logging
from typing import Any

import pytest

from chargepoint.ocppj import frames
from chargepoint.ocppj.schemas import SchemaViolation
from chargepoint.ocppj.session import (
    CallErrorReceived,
    CallTimeout,
    NoReply,
    NotConnected,
    OcppError,
    Reply,
    ResponseInvalid,
    Session,
)

pytestmark = pytest.mark.asyncio

WAIT_S = 5.0  # generous: only bounds a hang, never asserts speed
BOOT = {"chargePointVendor": "VendorX", "chargePointModel": "Model"}
BOOT_CONF = {"status": "Accepted", "currentTime": "2026-11-24T10:00:00Z", "interval": 300}
STATUS = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}


class Wire:
    """The far end of the websocket: records what the session sends, in order."""

    def __init__(self) -> None:
        self.sent: list[list[Any]] = []
        self._queue: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.fail = False

    async def send(self, text: str) -> None:
        if self.fail:
            raise ConnectionError("socket closed")
        frame = json.loads(text)
        self.sent.append(frame)
        self._queue.put_nowait(frame)

    async def next(self) -> list[Any]:
        return await asyncio.wait_for(self._queue.get(), WAIT_S)

    async def settle(self) -> None:
        # Let every ready task run to its next real wait.
        for _ in range(20):
            await asyncio.sleep(0)

    def empty(self) -> bool:
        return self._queue.empty()


def make(handlers: dict[str, Any] | None = None, **kwargs: Any) -> tuple[Session, Wire]:
    kwargs.setdefault("validate_outbound", True)
    session = Session(handlers or {}, **kwargs)
    wire = Wire()
    session.attach(wire.send)
    return session, wire


async def feed(session: Session, text: str | bytes) -> None:
    # feed() must never wait for a handler; the timeout turns a regression into a failure, not a hang.
    await asyncio.wait_for(session.feed(text), WAIT_S)


async def answer(session: Session, frame: list[Any], payload: dict[str, Any]) -> None:
    await feed(session, json.dumps([3, frame[1], payload]))


async def call_error_for(session: Session, wire: Wire, frame: object) -> list[Any]:
    await feed(session, frame if isinstance(frame, str) else json.dumps(frame))
    reply = await wire.next()
    assert reply[0] == 4
    return reply


# ------------------------------------------------------------ outbound CALLs


async def test_call_returns_the_result_matched_by_message_id() -> None:
    session, wire = make()
    task = asyncio.create_task(session.call("BootNotification", BOOT))
    frame = await wire.next()
    assert frame[0] == 2 and frame[2:] == ["BootNotification", BOOT]
    assert len(frame[1]) <= 36
    await answer(session, frame, BOOT_CONF)
    assert await asyncio.wait_for(task, WAIT_S) == BOOT_CONF


async def test_only_one_call_in_flight_ocppj_4_1_1() -> None:
    session, wire = make()
    first = asyncio.create_task(session.call("BootNotification", BOOT))
    second = asyncio.create_task(session.call("Heartbeat", {}))
    frame1 = await wire.next()
    await wire.settle()
    assert frame1[2] == "BootNotification"
    assert wire.empty(), "second CALL sent before the first was answered"
    await answer(session, frame1, BOOT_CONF)
    frame2 = await wire.next()
    assert frame2[2] == "Heartbeat" and frame2[1] != frame1[1]
    await answer(session, frame2, {"currentTime": "2026-11-24T10:00:01Z"})
    assert await asyncio.wait_for(first, WAIT_S) == BOOT_CONF
    assert (await asyncio.wait_for(second, WAIT_S))["currentTime"] == "2026-11-24T10:00:01Z"


async def test_unknown_or_stale_result_ids_are_ignored() -> None:
    session, wire = make()
    task = asyncio.create_task(session.call("BootNotification", BOOT))
    frame = await wire.next()
    await feed(session, json.dumps([3, "not-our-id", {"status": "Rejected"}]))
    await feed(session, json.dumps([4, "not-our-id", "GenericError", "", {}]))
    await wire.settle()
    assert not task.done()
    assert wire.empty(), "an unmatched answer must not be answered"
    await answer(session, frame, BOOT_CONF)
    assert await asyncio.wait_for(task, WAIT_S) == BOOT_CONF


async def test_timeout_raises_call_timeout_and_frees_the_slot() -> None:
    session, wire = make()
    with pytest.raises(CallTimeout):
        await session.call("Heartbeat", {}, timeout_s=0.05)
    late = await wire.next()
    await answer(session, late, {"currentTime": "2026-11-24T10:00:00Z"})  # late: dropped, no error
    task = asyncio.create_task(session.call("Heartbeat", {}))
    frame = await wire.next()
    assert frame[1] != late[1]
    await answer(session, frame, {"currentTime": "2026-11-24T10:00:01Z"})
    assert await asyncio.wait_for(task, WAIT_S) == {"currentTime": "2026-11-24T10:00:01Z"}


async def test_default_timeout_comes_from_call_timeout_s() -> None:
    session, _wire = make(call_timeout_s=0.05)
    with pytest.raises(CallTimeout):
        await session.call("Heartbeat", {})


async def test_detach_fails_the_pending_call_with_not_connected() -> None:
    session, wire = make()
    task = asyncio.create_task(session.call("BootNotification", BOOT))
    frame = await wire.next()
    session.detach()
    assert not session.connected
    with pytest.raises(NotConnected):
        await asyncio.wait_for(task, WAIT_S)
    # A result arriving on the next connection for the old call is ignored.
    new_wire = Wire()
    session.attach(new_wire.send)
    await answer(session, frame, BOOT_CONF)
    await new_wire.settle()
    assert new_wire.sent == []


async def test_call_while_detached_raises_not_connected() -> None:
    session = Session({})
    with pytest.raises(NotConnected):
        await session.call("Heartbeat", {})


async def test_send_failure_raises_not_connected() -> None:
    session, wire = make()
    wire.fail = True
    with pytest.raises(NotConnected):
        await session.call("Heartbeat", {})


async def test_call_error_answer_raises_call_error_received() -> None:
    session, wire = make()
    task = asyncio.create_task(session.call("BootNotification", BOOT))
    frame = await wire.next()
    await feed(session, json.dumps([4, frame[1], "NotSupported", "nope", {"why": "test"}]))
    with pytest.raises(CallErrorReceived) as info:
        await asyncio.wait_for(task, WAIT_S)
    assert (info.value.error_code, info.value.description, info.value.details) == (
        "NotSupported",
        "nope",
        {"why": "test"},
    )
    assert not isinstance(info.value, ResponseInvalid)


@pytest.mark.parametrize(
    ("conf", "code"),
    [
        ({"status": "Accepted", "interval": 300}, frames.OCCURENCE_CONSTRAINT_VIOLATION),
        ({**BOOT_CONF, "interval": "300"}, frames.TYPE_CONSTRAINT_VIOLATION),
        ({**BOOT_CONF, "status": "Maybe"}, frames.PROPERTY_CONSTRAINT_VIOLATION),
        ({**BOOT_CONF, "extra": 1}, frames.FORMATION_VIOLATION),
    ],
)
async def test_result_breaking_its_schema_raises_response_invalid(conf: dict[str, Any], code: str) -> None:
    session, wire = make()
    task = asyncio.create_task(session.call("BootNotification", BOOT))
    await answer(session, await wire.next(), conf)
    with pytest.raises(ResponseInvalid) as info:
        await asyncio.wait_for(task, WAIT_S)
    assert info.value.error_code == code
    await wire.settle()
    assert wire.empty(), "a CALLRESULT is never answered"


async def test_malformed_answer_with_our_id_fails_the_call_at_once() -> None:
    session, wire = make()
    task = asyncio.create_task(session.call("Heartbeat", {}))
    frame = await wire.next()
    await feed(session, json.dumps([3, frame[1]]))
    with pytest.raises(ResponseInvalid) as info:
        await asyncio.wait_for(task, WAIT_S)
    assert info.value.error_code == frames.PROTOCOL_ERROR


async def test_outbound_validation_in_debug_mode_refuses_before_sending() -> None:
    session, wire = make(validate_outbound=True)
    with pytest.raises(SchemaViolation):
        await session.call("BootNotification", {"chargePointVendor": "VendorX"})
    assert wire.sent == []


# ------------------------------------------------------------ inbound CALLs


async def test_inbound_call_is_answered_with_handler_result() -> None:
    seen: list[dict[str, Any]] = []

    async def reset(payload: dict[str, Any]) -> dict[str, Any]:
        seen.append(payload)
        return {"status": "Accepted"}

    session, wire = make({"Reset": reset})
    await feed(session, '[2,"m1","Reset",{"type":"Soft"}]')
    assert await wire.next() == [3, "m1", {"status": "Accepted"}]
    assert seen == [{"type": "Soft"}]


async def test_null_payload_reaches_the_handler_as_empty_object() -> None:
    async def clear_cache(payload: dict[str, Any]) -> dict[str, Any]:
        assert payload == {}
        return {"status": "Accepted"}

    session, wire = make({"ClearCache": clear_cache})
    await feed(session, '[2,"m1","ClearCache",null]')
    assert await wire.next() == [3, "m1", {"status": "Accepted"}]


async def test_unknown_action_is_answered_not_implemented_ocppj_4_2_3() -> None:
    session, wire = make()
    reply = await call_error_for(session, wire, [2, "m1", "FlyToTheMoon", {}])
    assert reply[1:3] == ["m1", "NotImplemented"]


async def test_known_action_without_handler_is_answered_not_supported_ocppj_4_2_3() -> None:
    session, wire = make()
    reply = await call_error_for(session, wire, [2, "m1", "ReserveNow", {}])
    assert reply[1:3] == ["m1", "NotSupported"]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"type": 1}, frames.TYPE_CONSTRAINT_VIOLATION),
        ({"type": "Medium"}, frames.PROPERTY_CONSTRAINT_VIOLATION),
        ({}, frames.OCCURENCE_CONSTRAINT_VIOLATION),
        ({"type": "Soft", "delay_s": 5}, frames.FORMATION_VIOLATION),
    ],
)
async def test_schema_violations_are_answered_with_their_error_code(payload: dict[str, Any], code: str) -> None:
    called = False

    async def reset(payload: dict[str, Any]) -> dict[str, Any]:
        nonlocal called
        called = True
        return {"status": "Accepted"}

    session, wire = make({"Reset": reset})
    reply = await call_error_for(session, wire, [2, "m1", "Reset", payload])
    assert reply[1:3] == ["m1", code]
    assert isinstance(reply[3], str) and reply[4] == {}
    assert not called


@pytest.mark.parametrize(
    ("text", "code", "message_id"),
    [
        ('[2,"m1","Reset"]', frames.PROTOCOL_ERROR, "m1"),
        ('[2,"m1","Reset",[]]', frames.FORMATION_VIOLATION, "m1"),
        ('[2,"m1",7,{}]', frames.FORMATION_VIOLATION, "m1"),
        (json.dumps([2, "x" * 37, "Reset", {"type": "Soft"}]), frames.FORMATION_VIOLATION, "x" * 37),
    ],
)
async def test_malformed_call_with_readable_id_is_answered(text: str, code: str, message_id: str) -> None:
    session, wire = make()
    reply = await call_error_for(session, wire, text)
    assert reply[1:3] == [message_id, code]


@pytest.mark.parametrize(
    "text",
    ['[2,"m1","Reset",{"type":', "hello", "{}", "[]", '[9,"m1",{}]', '[2,17,"Reset",{}]', b"\xff", '[3,"x",[]]'],
)
async def test_frames_without_answerable_id_are_dropped_and_feed_never_raises(text: str | bytes) -> None:
    session, wire = make()
    await feed(session, text)
    await wire.settle()
    assert wire.sent == []
    assert session.connected


async def test_duplicate_message_id_while_handled_is_answered_and_handler_not_rerun() -> None:
    release = asyncio.Event()
    calls = 0

    async def reset(payload: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await release.wait()
        return {"status": "Accepted"}

    session, wire = make({"Reset": reset})
    await feed(session, '[2,"dup","Reset",{"type":"Soft"}]')
    await wire.settle()
    reply = await call_error_for(session, wire, '[2,"dup","Reset",{"type":"Hard"}]')
    assert reply[1:3] == ["dup", frames.FORMATION_VIOLATION]
    release.set()
    assert await wire.next() == [3, "dup", {"status": "Accepted"}]
    assert calls == 1
    # Once answered, the id may come again (a new CALL on the same connection).
    await feed(session, '[2,"dup","Reset",{"type":"Soft"}]')
    assert await wire.next() == [3, "dup", {"status": "Accepted"}]


async def test_handler_exception_is_internal_error_without_leaking_internals(caplog: pytest.LogCaptureFixture) -> None:
    async def unlock(payload: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("secret: /var/lib/chargepoint/key.pem")

    session, wire = make({"UnlockConnector": unlock})
    with caplog.at_level(logging.ERROR, logger="chargepoint.ocppj"):
        reply = await call_error_for(session, wire, [2, "m1", "UnlockConnector", {"connectorId": 1}])
    assert reply[1:3] == ["m1", "InternalError"]
    assert "secret" not in json.dumps(reply) and "Traceback" not in json.dumps(reply)
    assert reply[4] == {}
    assert "secret" in caplog.text  # the log keeps the cause for the engineer


async def test_handler_ocpp_error_is_answered_with_its_code_and_details() -> None:
    async def data_transfer(payload: dict[str, Any]) -> dict[str, Any]:
        raise OcppError(frames.SECURITY_ERROR, "not allowed", {"vendorId": payload["vendorId"]})

    session, wire = make({"DataTransfer": data_transfer})
    reply = await call_error_for(session, wire, [2, "m1", "DataTransfer", {"vendorId": "acme"}])
    assert reply == [4, "m1", "SecurityError", "not allowed", {"vendorId": "acme"}]


async def test_ocpp_error_refuses_codes_outside_the_table() -> None:
    with pytest.raises(ValueError):
        OcppError("OccurrenceConstraintViolation")  # two r: not the wire spelling


async def test_invalid_handler_response_is_internal_error_in_debug_mode() -> None:
    async def reset(payload: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Sure"}

    session, wire = make({"Reset": reset}, validate_outbound=True)
    reply = await call_error_for(session, wire, [2, "m1", "Reset", {"type": "Soft"}])
    assert reply[2] == "InternalError"


async def test_receive_path_never_waits_for_a_handler() -> None:
    never = asyncio.Event()

    async def slow(payload: dict[str, Any]) -> dict[str, Any]:
        await never.wait()
        return {"status": "Accepted"}

    async def fast(payload: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted"}

    session, wire = make({"Reset": slow, "ClearCache": fast})
    task = asyncio.create_task(session.call("Heartbeat", {}))
    heartbeat = await wire.next()
    await feed(session, '[2,"slow","Reset",{"type":"Soft"}]')
    await feed(session, '[2,"fast","ClearCache",{}]')
    assert await wire.next() == [3, "fast", {"status": "Accepted"}]
    await answer(session, heartbeat, {"currentTime": "2026-11-24T10:00:00Z"})
    assert await asyncio.wait_for(task, WAIT_S) == {"currentTime": "2026-11-24T10:00:00Z"}
    await session.aclose()


async def test_handler_awaiting_session_call_does_not_deadlock() -> None:
    session: Session

    async def remote_start(payload: dict[str, Any]) -> dict[str, Any]:
        # A handler that needs the central system before it can answer.
        conf = await session.call("Authorize", {"idTag": payload["idTag"]})
        return {"status": "Accepted" if conf["idTagInfo"]["status"] == "Accepted" else "Rejected"}

    session, wire = make({"RemoteStartTransaction": remote_start})
    # Our own CALL is outstanding when the central system's CALL arrives (§4.1.1 NOTE: they cross).
    heartbeat_task = asyncio.create_task(session.call("Heartbeat", {}))
    heartbeat = await wire.next()
    await feed(session, '[2,"rs1","RemoteStartTransaction",{"idTag":"TAG1"}]')
    await wire.settle()
    assert wire.empty(), "the handler's CALL must wait for the outstanding one"
    await answer(session, heartbeat, {"currentTime": "2026-11-24T10:00:00Z"})
    authorize = await wire.next()
    assert authorize[2:] == ["Authorize", {"idTag": "TAG1"}]
    await answer(session, authorize, {"idTagInfo": {"status": "Accepted"}})
    assert await wire.next() == [3, "rs1", {"status": "Accepted"}]
    await asyncio.wait_for(heartbeat_task, WAIT_S)


async def test_reply_after_sent_runs_after_the_callresult_is_sent() -> None:
    session: Session
    results: list[dict[str, Any]] = []

    async def send_status() -> None:
        results.append(await session.call("StatusNotification", STATUS))

    async def trigger(payload: dict[str, Any]) -> Reply:
        return Reply({"status": "Accepted"}, after_sent=send_status)

    session, wire = make({"TriggerMessage": trigger})
    await feed(session, '[2,"t1","TriggerMessage",{"requestedMessage":"StatusNotification","connectorId":1}]')
    assert await wire.next() == [3, "t1", {"status": "Accepted"}]
    status = await wire.next()
    assert status[2:] == ["StatusNotification", STATUS]
    assert [f[0] for f in wire.sent] == [3, 2], "triggered message must follow the .conf (OCPP 1.6 §5.17)"
    await answer(session, status, {})
    await wire.settle()
    assert results == [{}]


async def test_sync_after_sent_callback_is_supported_and_skipped_when_reply_not_sent() -> None:
    ran: list[str] = []

    async def trigger(payload: dict[str, Any]) -> Reply:
        return Reply({"status": "Accepted"}, after_sent=lambda: ran.append("after"))

    session, wire = make({"TriggerMessage": trigger})
    await feed(session, '[2,"t1","TriggerMessage",{"requestedMessage":"Heartbeat"}]')
    await wire.next()
    await wire.settle()
    assert ran == ["after"]
    wire.fail = True
    await feed(session, '[2,"t2","TriggerMessage",{"requestedMessage":"Heartbeat"}]')
    await wire.settle()
    assert ran == ["after"]


async def test_reply_computed_for_a_lost_connection_is_not_sent_on_the_next_one() -> None:
    release = asyncio.Event()

    async def reset(payload: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return {"status": "Accepted"}

    session, wire = make({"Reset": reset})
    await feed(session, '[2,"m1","Reset",{"type":"Soft"}]')
    await wire.settle()
    session.detach()
    new_wire = Wire()
    session.attach(new_wire.send)
    release.set()
    await new_wire.settle()
    assert wire.sent == [] and new_wire.sent == []


async def test_handler_for_non_ocpp_action_is_refused_at_registration() -> None:
    async def handler(payload: dict[str, Any]) -> dict[str, Any]:
        return {}

    with pytest.raises(ValueError):
        Session({"MakeCoffee": handler})


async def test_on_activity_and_last_rx_use_the_injected_monotonic_clock() -> None:
    ticks: list[None] = []
    session, _wire = make(monotonic=lambda: 1234.5, on_activity=lambda: ticks.append(None))
    assert session.last_rx_s is None
    await feed(session, "garbage")
    await feed(session, '[3,"unknown",{}]')
    assert len(ticks) == 2
    assert session.last_rx_s == 1234.5


async def test_frames_are_logged_only_at_debug_and_one_info_line_per_error(caplog: pytest.LogCaptureFixture) -> None:
    async def reset(payload: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted"}

    session, wire = make({"Reset": reset})
    with caplog.at_level(logging.INFO, logger="chargepoint.ocppj"):
        await feed(session, '[2,"m1","Reset",{"type":"Soft"}]')
        await wire.next()
        assert caplog.records == []
        await feed(session, '[2,"m2","Reset",{"type":"Medium"}]')
        await wire.next()
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.INFO


async def test_after_sent_does_not_run_when_the_reply_became_internal_error() -> None:
    ran: list[str] = []

    async def trigger(payload: dict[str, Any]) -> Reply:
        # NaN cannot be encoded as JSON: the answer becomes InternalError, not this Reply.
        return Reply({"status": float("nan")}, after_sent=lambda: ran.append("after"))

    session, wire = make({"TriggerMessage": trigger}, validate_outbound=False)
    reply = await call_error_for(session, wire, [2, "t1", "TriggerMessage", {"requestedMessage": "Heartbeat"}])
    assert reply[2] == "InternalError"
    await wire.settle()
    assert ran == []


async def test_ocpp_error_with_unencodable_details_still_answers_its_code() -> None:
    async def reset(payload: dict[str, Any]) -> dict[str, Any]:
        raise OcppError(frames.GENERIC_ERROR, "busy", {"since": object()})

    session, wire = make({"Reset": reset})
    reply = await call_error_for(session, wire, [2, "m1", "Reset", {"type": "Soft"}])
    assert reply == [4, "m1", "GenericError", "busy", {}]


async def test_handler_raising_no_reply_sends_nothing_ocpp16_4_2_rejected() -> None:
    async def reset(payload: dict[str, Any]) -> dict[str, Any]:
        raise NoReply()

    async def clear_cache(payload: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted"}

    session, wire = make({"Reset": reset, "ClearCache": clear_cache})
    await feed(session, '[2,"m1","Reset",{"type":"Soft"}]')
    await feed(session, '[2,"m2","ClearCache",{}]')
    assert await wire.next() == [3, "m2", {"status": "Accepted"}]
    await wire.settle()
    assert wire.sent == [[3, "m2", {"status": "Accepted"}]]
    # The id is free again: the handler is finished.
    await feed(session, '[2,"m1","ClearCache",{}]')
    assert await wire.next() == [3, "m1", {"status": "Accepted"}]


async def test_the_peers_message_ids_actions_and_error_texts_stay_on_one_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    """Message ids, unknown action names and CALLERROR texts are the central system's text:
    logged raw, a CR/LF in one forged a log line (one line per event, docs/ARCHITECTURE.md)."""
    session, wire = make()
    with caplog.at_level(logging.INFO, logger="chargepoint.ocppj"):
        await call_error_for(session, wire, [2, "id\nINFO forged", "Reset", {"type": "Medium"}])
        await call_error_for(session, wire, [2, "id2\r\n", "Do\nINFO forged", {}])
        await feed(session, json.dumps([3, "late\nINFO forged", {}]))
        task = asyncio.create_task(session.call("BootNotification", BOOT))
        frame = await wire.next()
        await feed(session, json.dumps([4, frame[1], "Generic\nError", "no\r\nINFO forged", {}]))
        with pytest.raises(CallErrorReceived):
            await asyncio.wait_for(task, WAIT_S)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert not [line for line in lines if "\r" in line or "\n" in line], lines


async def test_an_inbound_frame_with_line_breaks_between_tokens_is_one_debug_line(
        caplog: pytest.LogCaptureFixture) -> None:
    # JSON allows CR/LF as whitespace between tokens: the DEBUG frame line escapes them.
    async def clear_cache(payload: dict[str, Any]) -> dict[str, Any]:
        return {"status": "Accepted"}

    session, wire = make({"ClearCache": clear_cache})
    with caplog.at_level(logging.DEBUG, logger="chargepoint.ocppj"):
        await feed(session, '[2,\n"cc-1",\r\n"ClearCache",\n{}]')
        assert (await wire.next())[:2] == [3, "cc-1"]
    inbound = [r.getMessage() for r in caplog.records if r.getMessage().startswith("<- ")]
    assert inbound == ['<- [2,\\n"cc-1",\\r\\n"ClearCache",\\n{}]']
