"""OCPP-J 1.6 §4 RPC frames: parsing, error codes, encoding, message ids."""

import json

import pytest

from chargepoint.ocppj import frames
from chargepoint.ocppj.frames import Call, CallError, CallResult, FrameError


def parse_error(text: str | bytes) -> FrameError:
    with pytest.raises(FrameError) as info:
        frames.parse(text)
    return info.value


def test_parse_call_ocppj_4_2_1_example() -> None:
    text = '[2,"19223201","BootNotification",{"chargePointVendor":"VendorX","chargePointModel":"SingleSocketCharger"}]'
    assert frames.parse(text) == Call(
        "19223201", "BootNotification", {"chargePointVendor": "VendorX", "chargePointModel": "SingleSocketCharger"}
    )


def test_parse_callresult_ocppj_4_2_2_example() -> None:
    text = (
        '[3, "19223201", {"status": "Accepted", "currentTime": "2013-02-01T20:53:32.486Z", "heartbeatInterval": 300}]'
    )
    frame = frames.parse(text)
    assert isinstance(frame, CallResult)
    assert frame.message_id == "19223201"
    assert frame.payload["heartbeatInterval"] == 300


def test_parse_callerror_ocppj_errata_3_9_example() -> None:
    frame = frames.parse('[4, "162376037", "NotSupported", "SendLocalList.req not implemented", {}]')
    assert frame == CallError("162376037", "NotSupported", "SendLocalList.req not implemented", {})


@pytest.mark.parametrize("text", ['[2,"a","ClearCache",null]', '[3,"a",null]'])
def test_null_payload_is_an_empty_object_ocppj_4_2_tables_4_5(text: str) -> None:
    frame = frames.parse(text)
    assert isinstance(frame, Call | CallResult)
    assert frame.payload == {}


def test_callerror_with_missing_or_null_details_is_accepted_leniently() -> None:
    assert frames.parse('[4,"a","GenericError","x"]') == CallError("a", "GenericError", "x", {})
    assert frames.parse('[4,"a","GenericError",null,null]') == CallError("a", "GenericError", "", {})


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '[2,"a","Reset",{"type":"Hard"}',  # truncated
        '[2,"a","Reset",{"x":NaN}]',  # NaN/Infinity are not JSON
        '[2,"a","Reset",{"x":Infinity}]',
        '{"messageTypeId":2}',
        '"hello"',
        "[]",
    ],
)
def test_frame_without_readable_id_is_not_answerable(text: str) -> None:
    err = parse_error(text)
    assert err.message_id is None
    assert not err.answerable
    assert err.error_code in (frames.FORMATION_VIOLATION, frames.PROTOCOL_ERROR)


def test_invalid_json_is_formation_violation() -> None:
    assert parse_error("[2,").error_code == frames.FORMATION_VIOLATION
    assert parse_error(b"\xff\xfe").error_code == frames.FORMATION_VIOLATION


@pytest.mark.parametrize("text", [
    "[" * 100_000,
    '[2,"id-1","DataTransfer",{"vendorId":"v","data":' + "[" * 50_000 + "]" * 50_000 + "}]",
])
def test_a_frame_nested_beyond_the_decoder_is_dropped_not_raised(text: str) -> None:
    # A hostile central system cannot crash the parser with RecursionError.
    error = parse_error(text)
    assert error.error_code == frames.FORMATION_VIOLATION and error.message_id is None


def test_bytes_frame_is_decoded_as_utf8() -> None:
    assert frames.parse('[3,"é",{}]'.encode()) == CallResult("é", {})


@pytest.mark.parametrize(
    "text", ['[5,"a",{}]', '[0,"a"]', '["2","a","Reset",{}]', '[true,"a","Reset",{}]', '[2.0,"a"]']
)
def test_unknown_message_type_is_ignored_ocppj_4_1_3(text: str) -> None:
    err = parse_error(text)
    assert not err.answerable
    assert err.message_type is None


@pytest.mark.parametrize("text", ['[2,19223201,"Reset",{}]', '[2,null,"Reset",{}]', "[2]", '[3,["a"],{}]'])
def test_call_without_string_message_id_cannot_be_answered(text: str) -> None:
    err = parse_error(text)
    assert err.message_id is None
    assert not err.answerable


def test_message_id_of_36_characters_is_accepted_ocppj_4_1_4() -> None:
    message_id = "x" * 36
    assert frames.parse(json.dumps([2, message_id, "ClearCache", {}])) == Call(message_id, "ClearCache", {})


def test_call_with_message_id_over_36_characters_is_answered_formation_violation_ocppj_4_1_4() -> None:
    message_id = "x" * 37
    err = parse_error(json.dumps([2, message_id, "ClearCache", {}]))
    assert err.error_code == frames.FORMATION_VIOLATION
    assert err.message_id == message_id
    assert err.answerable


def test_callresult_with_too_long_id_is_never_answered() -> None:
    err = parse_error(json.dumps([3, "x" * 37, {}]))
    assert err.message_id == "x" * 37
    assert not err.answerable


def test_call_with_too_few_elements_is_protocol_error_ocppj_4_2_3() -> None:
    err = parse_error('[2,"abc","Reset"]')
    assert (err.error_code, err.message_id, err.answerable) == (frames.PROTOCOL_ERROR, "abc", True)


def test_callresult_with_too_few_elements_is_protocol_error_but_not_answerable() -> None:
    err = parse_error('[3,"abc"]')
    assert (err.error_code, err.message_id, err.message_type, err.answerable) == (
        frames.PROTOCOL_ERROR,
        "abc",
        3,
        False,
    )


@pytest.mark.parametrize(
    "text",
    [
        '[2,"abc","Reset",{},{}]',  # too many elements
        '[2,"abc",7,{}]',  # action not a string
        '[2,"abc","Reset",[]]',  # payload not an object
        '[2,"abc","Reset","Hard"]',
    ],
)
def test_call_not_conform_the_pdu_structure_is_formation_violation_ocppj_4_2_3(text: str) -> None:
    err = parse_error(text)
    assert (err.error_code, err.message_id, err.answerable) == (frames.FORMATION_VIOLATION, "abc", True)


@pytest.mark.parametrize("text", ['[3,"abc",[]]', '[3,"abc",{},{}]', '[4,"abc",5,"",{}]', '[4,"abc","X","",[]]'])
def test_malformed_answer_keeps_its_id_for_matching_but_is_not_answerable(text: str) -> None:
    err = parse_error(text)
    assert err.message_id == "abc"
    assert err.message_type in (3, 4)
    assert not err.answerable


def test_error_code_wire_spellings_errata_5_1_and_5_2() -> None:
    assert frames.OCCURENCE_CONSTRAINT_VIOLATION == "OccurenceConstraintViolation"
    assert frames.FORMATION_VIOLATION == "FormationViolation"
    assert len(frames.ERROR_CODES) == 10


def test_encode_is_compact_utf8_and_round_trips() -> None:
    text = frames.encode_call("id1", "DataTransfer", {"vendorId": "Ünïcödé", "data": "a b"})
    assert text == '[2,"id1","DataTransfer",{"vendorId":"Ünïcödé","data":"a b"}]'
    assert frames.parse(text) == Call("id1", "DataTransfer", {"vendorId": "Ünïcödé", "data": "a b"})
    assert frames.encode_result("id1", {}) == '[3,"id1",{}]'


def test_encode_error_always_has_details_object_ocppj_4_2_3_table_6() -> None:
    assert frames.encode_error("id1", frames.GENERIC_ERROR) == '[4,"id1","GenericError","",{}]'
    frame = CallError("id2", frames.NOT_SUPPORTED, "no", {"k": 1})
    assert frames.parse(frames.encode(frame)) == frame


def test_encode_refuses_nan_which_is_not_json() -> None:
    with pytest.raises(ValueError):
        frames.encode_call("id", "MeterValues", {"x": float("nan")})


def test_new_message_ids_are_unique_and_at_most_36_characters() -> None:
    ids = {frames.new_message_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) <= frames.MESSAGE_ID_MAX_LEN for i in ids)
