"""The central system's pure strictness checks (chargepoint.csms.checks)."""

from __future__ import annotations

import datetime as dt

import pytest

from chargepoint.csms import checks

FLOOR = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def test_parse_frame_reads_the_three_message_types_ocppj_4_2() -> None:
    call = checks.parse_frame('[2, "a1", "Heartbeat", {}]')
    assert call == checks.Call("a1", "Heartbeat", {})
    assert checks.parse_frame('[3, "a1", {"x": 1}]') == checks.CallResult("a1", {"x": 1})
    err = checks.parse_frame('[4, "a1", "GenericError", "boom", {}]')
    assert err == checks.CallError("a1", "GenericError", "boom", {})


@pytest.mark.parametrize(("text", "answerable_id"), [
    ("not json", None),
    ('{"a": 1}', None),
    ('[5, "a1", {}]', None),
    ('[2, 7, "Heartbeat", {}]', None),
    ('[2, "a1", "Heartbeat"]', "a1"),                 # missing payload
    ('[2, "a1", "Heartbeat", []]', "a1"),             # payload must be an object
    ('[2, "a1", 12, {}]', "a1"),
    ('[2, "' + "x" * 37 + '", "Heartbeat", {}]', "x" * 37),   # OCPP-J 4.1.4: at most 36 characters
    ('[3, "a1", {}, {}]', None),
])
def test_parse_frame_rejects_malformed_frames_as_formation_violation(text: str, answerable_id: str | None) -> None:
    with pytest.raises(checks.FrameProblem) as info:
        checks.parse_frame(text)
    assert info.value.code == "FormationViolation"
    assert info.value.message_id == answerable_id


def test_callerror_codes_use_the_wire_spelling_ocppj_errata_5_1() -> None:
    assert checks.parse_frame('[4, "a", "OccurenceConstraintViolation", "", {}]').code == (  # type: ignore[union-attr]
        "OccurenceConstraintViolation")
    with pytest.raises(checks.FrameProblem):
        checks.parse_frame('[4, "a", "OccurrenceConstraintViolation", "", {}]')
    with pytest.raises(checks.FrameProblem):
        checks.parse_frame('[4, "a", "GenericError", "", null]')   # errorDetails must be {} when empty


def test_null_payload_is_flagged_but_parsed_ocppj_4_2_1() -> None:
    frame = checks.parse_frame('[2, "a1", "Heartbeat", null]')
    assert isinstance(frame, checks.Call) and frame.null_payload and frame.payload == {}


@pytest.mark.parametrize(("payload", "code"), [
    ({"chargePointVendor": "V"}, "OccurenceConstraintViolation"),
    ({"chargePointVendor": "V", "chargePointModel": "M", "colour": "red"}, "FormationViolation"),
    ({"chargePointVendor": 5, "chargePointModel": "M"}, "TypeConstraintViolation"),
    ({"chargePointVendor": "V" * 21, "chargePointModel": "M"}, "TypeConstraintViolation"),
])
def test_boot_notification_schema_errors_map_to_ocppj_table_7_codes(payload: dict[str, object], code: str) -> None:
    problem = checks.validate("BootNotification", payload)
    assert problem is not None and problem.code == code


def test_enum_and_datetime_violations() -> None:
    status = {"connectorId": 1, "errorCode": "NoError", "status": "Plugged"}
    assert checks.validate("StatusNotification", status).code == "PropertyConstraintViolation"  # type: ignore[union-attr]
    no_offset = {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2025-01-01T10:00:00"}
    problem = checks.validate("StartTransaction", no_offset)
    assert problem is not None and problem.code == "TypeConstraintViolation" and "timestamp" in problem.description


def test_integer_fields_refuse_floats_draft_4() -> None:
    payload = {"connectorId": 1, "idTag": "T", "meterStart": 10.0, "timestamp": "2025-01-01T10:00:00Z"}
    assert checks.validate("StartTransaction", payload).code == "TypeConstraintViolation"  # type: ignore[union-attr]


def test_errata_fixes_stop_reason_optional_and_both_celsius_spellings() -> None:
    stop = {"transactionId": 1, "meterStop": 10, "timestamp": "2025-01-01T10:00:00Z"}
    assert checks.validate("StopTransaction", stop) is None           # OCPP-J errata 2.6
    for unit in ("Celsius", "Celcius"):                                 # OCPP-J errata 2.1
        mv = {"connectorId": 1, "meterValue": [{"timestamp": "2025-01-01T10:00:00Z",
                                                 "sampledValue": [{"value": "21", "unit": unit,
                                                                   "measurand": "Temperature"}]}]}
        assert checks.validate("MeterValues", mv) is None


def test_multiple_of_one_tenth_is_checked_on_decimals() -> None:
    result = {"status": "Accepted", "connectorId": 1, "scheduleStart": "2025-01-01T10:00:00Z",
              "chargingSchedule": {"chargingRateUnit": "A",
                                   "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 21.4}]}}
    assert checks.validate("GetCompositeScheduleResponse", result) is None
    result["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] = 21.45  # type: ignore[index]
    assert checks.validate("GetCompositeScheduleResponse", result) is not None


def test_implausible_timestamps_finds_nested_1970_values() -> None:
    mv = {"connectorId": 1, "meterValue": [
        {"timestamp": "2025-01-01T10:00:00Z", "sampledValue": [{"value": "1"}]},
        {"timestamp": "1970-01-01T00:00:05.000Z", "sampledValue": [{"value": "2"}]}]}
    found = checks.implausible_timestamps("MeterValues", mv, FLOOR)
    assert found == ["meterValue/1/timestamp=1970-01-01T00:00:05.000Z"]
    mv["meterValue"].pop()  # type: ignore[attr-defined]
    assert checks.implausible_timestamps("MeterValues", mv, FLOOR) == []


def test_rfc3339_parsing() -> None:
    assert checks.parse_rfc3339("2025-01-01T10:00:00.5+02:00") == dt.datetime(
        2025, 1, 1, 8, 0, 0, 500000, tzinfo=dt.UTC)
    assert checks.parse_rfc3339("2025-02-30T10:00:00Z") is None
    assert checks.parse_rfc3339("2025-01-01 10:00:00Z") is None
    assert checks.iso8601(dt.datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=dt.UTC)) == "2026-11-24T10:00:00.123Z"
