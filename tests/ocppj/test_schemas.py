"""Compiled OCPP 1.6 schema validation: OCPP-J §4.2.3 error-code mapping, every
shipped schema compiles, unsupported keywords are refused, date-time format."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chargepoint.ocppj import frames, schemas
from chargepoint.ocppj.schemas import SchemaCompileError, SchemaViolation

TYPE = frames.TYPE_CONSTRAINT_VIOLATION
PROPERTY = frames.PROPERTY_CONSTRAINT_VIOLATION
OCCURENCE = frames.OCCURENCE_CONSTRAINT_VIOLATION
FORMATION = frames.FORMATION_VIOLATION


def boot() -> dict[str, Any]:
    return {"chargePointVendor": "VendorX", "chargePointModel": "SingleSocketCharger"}


def charging_profile(*limits: Any) -> dict[str, Any]:
    return {
        "connectorId": 1,
        "csChargingProfiles": {
            "chargingProfileId": 7,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 60 * i, "limit": lim} for i, lim in enumerate(limits)],
            },
        },
    }


def violation(action: str, payload: object, response: bool = False) -> SchemaViolation:
    with pytest.raises(SchemaViolation) as info:
        schemas.validate(action, payload, response)
    return info.value


# ------------------------------------------------------------ all schemas


def test_every_shipped_schema_compiles() -> None:
    assert schemas.compile_all() == 78
    assert len(schemas.known_actions()) == 39
    # Core and the security-whitepaper extensions are both known.
    assert {"BootNotification", "SetChargingProfile", "SignedUpdateFirmware", "ExtendedTriggerMessage"} <= (
        schemas.known_actions()
    )


def test_valid_examples_pass() -> None:
    schemas.validate_request("BootNotification", boot())
    schemas.validate_response(
        "BootNotification", {"status": "Accepted", "currentTime": "2013-02-01T20:53:32.486Z", "interval": 300}
    )
    schemas.validate_request("SetChargingProfile", charging_profile(16, 16.3, 0.3, 32.0))
    schemas.validate_request("Heartbeat", {})


def test_unknown_action_is_not_implemented_ocppj_4_2_3() -> None:
    assert violation("FooBar", {}).error_code == frames.NOT_IMPLEMENTED
    assert not schemas.is_known_action("FooBar")
    assert not schemas.is_known_action("BootNotificationResponse")
    assert not schemas.is_known_action("../BootNotification")


# ------------------------------------------------------------ error-code mapping (OCPP-J §4.2.3 Table 7)


def test_wrong_field_type_is_type_constraint_violation() -> None:
    err = violation("BootNotification", {**boot(), "chargePointVendor": 12})
    assert err.error_code == TYPE
    assert err.path == ["chargePointVendor"]


def test_wrong_type_of_nested_object_and_array_is_type_constraint_violation() -> None:
    payload = charging_profile(16)
    payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"] = {"startPeriod": 0}
    assert violation("SetChargingProfile", payload).error_code == TYPE
    assert violation("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": "x"}).error_code == TYPE


def test_integer_field_rejects_bool_and_string_number() -> None:
    assert violation("ChangeAvailability", {"connectorId": True, "type": "Operative"}).error_code == TYPE
    assert violation("ChangeAvailability", {"connectorId": "1", "type": "Operative"}).error_code == TYPE


def test_draft04_integer_rejects_1_point_0_like_jsonschema() -> None:
    assert violation("ChangeAvailability", {"connectorId": 1.0, "type": "Operative"}).error_code == TYPE


def test_draft06_integer_accepts_1_point_0_like_jsonschema() -> None:
    # SignedUpdateFirmware.json is a draft-06 schema (security whitepaper extension).
    firmware = {
        "location": "https://fw.example.com/1.bin",
        "retrieveDateTime": "2026-11-24T10:00:00Z",
        "signingCertificate": "-----BEGIN CERTIFICATE-----",
        "signature": "c2ln",
    }
    schemas.validate_request("SignedUpdateFirmware", {"requestId": 1.0, "firmware": firmware})
    err = violation("SignedUpdateFirmware", {"requestId": 1.5, "firmware": firmware})
    assert err.error_code == TYPE


def test_enum_mismatch_is_property_constraint_violation() -> None:
    err = violation("ChangeAvailability", {"connectorId": 1, "type": "Sideways"})
    assert (err.error_code, err.path) == (PROPERTY, ["type"])


def test_max_length_exceeded_is_property_constraint_violation() -> None:
    schemas.validate_request("BootNotification", {**boot(), "chargePointVendor": "v" * 20})
    err = violation("BootNotification", {**boot(), "chargePointVendor": "v" * 21})
    assert err.error_code == PROPERTY


def test_max_length_counts_characters_not_bytes() -> None:
    schemas.validate_request("BootNotification", {**boot(), "chargePointVendor": "é" * 20})


def test_invalid_date_time_is_property_constraint_violation() -> None:
    payload = {"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": "yesterday"}
    assert violation("StatusNotification", payload).error_code == PROPERTY


def test_multiple_of_0_1_violation_is_property_constraint_violation_with_path() -> None:
    err = violation("SetChargingProfile", charging_profile(16, 16.35))
    assert err.error_code == PROPERTY
    assert err.path == ["csChargingProfiles", "chargingSchedule", "chargingSchedulePeriod", 1, "limit"]
    assert err.description.startswith("csChargingProfiles.chargingSchedule.chargingSchedulePeriod[1].limit: ")


@pytest.mark.parametrize("limit", [0.3, 0.7, 16.3, 1.1, 2.2, 123456.7, 6, -0.1, 1e20])
def test_multiple_of_0_1_is_decided_on_the_decimal_as_written(limit: float) -> None:
    # 0.3 / 0.1 == 2.9999999999999996 in binary floating point; the peer wrote 0.3.
    schemas.validate_request("SetChargingProfile", charging_profile(limit))


def test_additional_property_is_formation_violation() -> None:
    assert violation("BootNotification", {**boot(), "colour": "red"}).error_code == FORMATION
    payload = charging_profile(16)
    payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["x"] = 1
    err = violation("SetChargingProfile", payload)
    assert err.error_code == FORMATION
    assert err.path == ["csChargingProfiles", "chargingSchedule", "chargingSchedulePeriod", 0]


def test_missing_required_property_is_occurence_constraint_violation() -> None:
    assert violation("BootNotification", {"chargePointVendor": "VendorX"}).error_code == OCCURENCE
    payload = charging_profile(16)
    del payload["csChargingProfiles"]["chargingSchedule"]["chargingRateUnit"]
    err = violation("SetChargingProfile", payload)
    assert (err.error_code, err.path) == (OCCURENCE, ["csChargingProfiles", "chargingSchedule"])
    assert "chargingRateUnit" in err.description


def test_too_few_items_is_occurence_constraint_violation() -> None:
    err = violation("GetInstalledCertificateIds", {"status": "Accepted", "certificateHashData": []}, response=True)
    assert err.error_code == OCCURENCE


def test_payload_that_is_not_an_object_is_formation_violation() -> None:
    payloads: list[object] = [[], "x", None, 3]
    for payload in payloads:
        assert violation("Heartbeat", payload).error_code == FORMATION


def test_response_schema_is_used_for_responses() -> None:
    assert violation("BootNotification", {"status": "Accepted"}, response=True).error_code == OCCURENCE
    with pytest.raises(SchemaViolation):
        schemas.validate_response("BootNotification", boot())


@pytest.mark.parametrize(
    ("schema", "good", "bad", "code"),
    [
        ({"type": "integer", "minimum": 0}, 0, -1, PROPERTY),
        ({"type": "number", "maximum": 1.5}, 1.5, 1.6, PROPERTY),
        ({"type": "string", "minLength": 2}, "ab", "a", PROPERTY),
        ({"type": "array", "maxItems": 1}, [1], [1, 2], OCCURENCE),
        ({"type": "array", "minItems": 1, "items": {"type": "string"}}, ["a"], ["a", 1], TYPE),
        ({"type": ["string", "null"], "maxLength": 1}, None, "ab", PROPERTY),
        ({"type": ["string", "null"]}, "x", 1, TYPE),
        ({"enum": ["A", "B"]}, "A", ["A"], PROPERTY),
        ({"type": "object", "additionalProperties": {"type": "integer"}}, {"a": 1}, {"a": "1"}, TYPE),
        ({"type": "number", "multipleOf": 0.25}, 0.75, 0.3, PROPERTY),
        ({"type": "integer", "multipleOf": 5}, 10, 11, PROPERTY),
        ({}, {"anything": [1]}, None, None),
    ],
)
def test_keyword_error_codes_on_synthetic_schemas(
    schema: dict[str, Any], good: Any, bad: Any, code: str | None
) -> None:
    check = schemas.compile_schema(schema)
    check(good)
    if code is None:
        check(bad)
        return
    with pytest.raises(SchemaViolation) as info:
        check(bad)
    assert info.value.error_code == code


def test_errata_fixes_are_in_the_shipped_schemas() -> None:
    # errata 2.6: StopTransaction.reason is optional.
    stop = {"meterStop": 100, "timestamp": "2026-11-24T10:00:00Z", "transactionId": 1}
    schemas.validate_request("StopTransaction", stop)
    # errata 2.1: both spellings of Celsius in MeterValues and StopTransaction.
    for unit in ("Celsius", "Celcius"):
        sampled = [{"value": "21.5", "measurand": "Temperature", "unit": unit}]
        meter_value = [{"timestamp": "2026-11-24T10:00:00Z", "sampledValue": sampled}]
        schemas.validate_request("MeterValues", {"connectorId": 1, "meterValue": meter_value})
        schemas.validate_request("StopTransaction", {**stop, "transactionData": meter_value})
    # errata 2.4: BootNotification.conf interval is an integer.
    conf = {"status": "Accepted", "currentTime": "2026-11-24T10:00:00Z", "interval": 300.5}
    assert violation("BootNotification", conf, response=True).error_code == TYPE
    # errata 2.3: SendLocalList idTagInfo is a valid schema with expiryDate inside properties.
    entry = {"idTag": "TAG1", "idTagInfo": {"status": "Accepted", "expiryDate": "2027-01-01T00:00:00Z"}}
    schemas.validate_request(
        "SendLocalList", {"listVersion": 2, "updateType": "Full", "localAuthorizationList": [entry]}
    )


def test_description_is_short_even_for_huge_peer_values() -> None:
    err = violation("BootNotification", {**boot(), "chargePointVendor": ["x" * 10000]})
    assert len(err.description) < 200


# ------------------------------------------------------------ refusing what is not implemented


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^a$"},
        {"type": "object", "properties": {"a": {"type": "string", "format": "email"}}},
        {"type": "object", "properties": {"a": {"$ref": "http://example.com/x.json"}}},
        {"type": "array", "items": [{"type": "string"}]},
        {"enum": [1, 2]},
        {"type": "object", "properties": {"a": {"$ref": "#/definitions/A", "maxLength": 2}}, "definitions": {"A": {}}},
        {"type": "object", "properties": {"a": {"$ref": "#/definitions/A"}}, "definitions": {"A": {"$ref": "#"}}},
        {"type": "object", "definitions": {"Unused": {"type": "string", "uniqueItems": True}}},
        {"definitions": {"A": {"type": "object", "properties": {"a": {"$ref": "#/definitions/A"}}}}},
        {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
        {"type": "integer", "exclusiveMinimum": 0},
        {"type": "strnig"},
        {"type": "string", "maxLength": -1},
        {"type": "number", "multipleOf": 0},
        {"type": "object", "properties": {"a": {"$ref": "#/definitions/Missing"}}},
        {"anyOf": [{"type": "string"}]},
    ],
)
def test_unsupported_schema_constructs_fail_at_compile_time(schema: dict[str, Any]) -> None:
    with pytest.raises(SchemaCompileError):
        schemas.compile_schema(schema)


def test_refs_to_definitions_are_resolved() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-06/schema#",
        "definitions": {"E": {"type": "string", "enum": ["A"]}},
        "type": "object",
        "properties": {"e": {"$ref": "#/definitions/E"}, "l": {"type": "array", "items": {"$ref": "#/definitions/E"}}},
    }
    check = schemas.compile_schema(schema)
    check({"e": "A", "l": ["A"]})
    with pytest.raises(SchemaViolation) as info:
        check({"l": ["A", "B"]})
    assert (info.value.error_code, info.value.path) == (PROPERTY, ["l", 1])


# ------------------------------------------------------------ date-time


@pytest.mark.parametrize(
    "text",
    [
        "2013-02-01T20:53:32.486Z",
        "2013-02-01T20:53:32Z",
        "2013-02-01t20:53:32z",
        "2024-02-29T00:00:00Z",
        "2000-02-29T23:59:59.999999999+14:00",
        "2026-11-24T10:00:00-05:30",
        "2026-11-24T10:00:00",  # OCPP 1.6 §3.15: ISO 8601, offset optional -> UTC
    ],
)
def test_date_time_accepts_rfc3339_and_offsetless_iso8601(text: str) -> None:
    assert schemas.is_date_time(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2023-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-00-10T00:00:00Z",
        "2026-11-24T24:00:00Z",
        "2026-11-24T10:60:00Z",
        "2026-11-24T23:59:60Z",
        "2026-11-24 10:00:00Z",
        "2026-11-24T10:00Z",
        "2026-11-24",
        "2026-11-24T10:00:00.Z",
        "2026-11-24T10:00:00+0100",
        "2026-11-24T10:00:00+01:60",
        "2026-11-24T10:00:00+24:00",
        "0000-01-01T00:00:00Z",
        "٢٠٢٦-11-24T10:00:00Z",  # non-ASCII digits
        "2026-11-24T10:00:00Z\n",
        "20261124T100000Z",
    ],
)
def test_date_time_rejects_invalid(text: str) -> None:
    assert not schemas.is_date_time(text)


def test_parse_date_time_returns_aware_utc() -> None:
    assert schemas.parse_date_time("2026-11-24T10:00:00.1234567+01:30") == datetime(
        2026, 11, 24, 8, 30, 0, 123456, tzinfo=UTC
    )
    naive = schemas.parse_date_time("2026-11-24T10:00:00")
    assert naive == datetime(2026, 11, 24, 10, tzinfo=UTC)
    assert naive.utcoffset() == timedelta(0)
    with pytest.raises(ValueError):
        schemas.parse_date_time("2026-11-24T24:00:00Z")


def test_parse_date_time_at_the_edges_of_the_calendar_is_clamped_not_an_overflow() -> None:
    """Valid RFC 3339 whose UTC instant datetime cannot hold: astimezone() raised
    OverflowError (found by the schema fuzz, tests/support/schema_fuzz.py date-times)."""
    for text in ("9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"):
        assert schemas.is_date_time(text)
    assert schemas.parse_date_time("9999-12-31T23:59:59-01:00") == datetime.max.replace(tzinfo=UTC)
    assert schemas.parse_date_time("0001-01-01T00:00:00+01:00") == datetime.min.replace(tzinfo=UTC)
    assert schemas.parse_date_time("9999-12-31T23:59:59.999999Z") == datetime.max.replace(tzinfo=UTC)
    assert schemas.parse_date_time("0001-01-01T01:00:00+01:00") == datetime.min.replace(tzinfo=UTC)
