"""Property test: the compiled validators accept and reject exactly what the
`jsonschema` library does on the official OCPP 1.6 schemas (Draft4Validator or
Draft6Validator as each file's $schema says), and report an OCPP-J error code that
matches one of jsonschema's failing keywords.

What is compared, deliberately:
- Payloads travel as JSON text, like on the wire. Draft-04 schemas are checked the
  way the `ocpp` package does (schema and payload parsed with Decimal floats), so
  multipleOf is decided on the decimal as written; draft-06 schemas (no multipleOf)
  with plain floats, so 1.0 counts as an integer there as Draft6Validator says.
- jsonschema checks "date-time" only with an optional package installed; the oracle
  gets an independent checker with our documented rule (RFC 3339 §5.6, offset
  optional per OCPP 1.6 §3.15, no leap second) built on datetime.strptime.
"""

import json
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargepoint.ocppj import frames, schemas

KEYWORD_CODES = {
    "type": frames.TYPE_CONSTRAINT_VIOLATION,
    "enum": frames.PROPERTY_CONSTRAINT_VIOLATION,
    "maxLength": frames.PROPERTY_CONSTRAINT_VIOLATION,
    "format": frames.PROPERTY_CONSTRAINT_VIOLATION,
    "multipleOf": frames.PROPERTY_CONSTRAINT_VIOLATION,
    "required": frames.OCCURENCE_CONSTRAINT_VIOLATION,
    "minItems": frames.OCCURENCE_CONSTRAINT_VIOLATION,
    "additionalProperties": frames.FORMATION_VIOLATION,
}

_ORACLE_DT = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?", re.ASCII | re.IGNORECASE)


def oracle_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    m = _ORACLE_DT.fullmatch(value)
    if m is None:
        return False
    try:
        datetime.strptime(m[1].upper(), "%Y-%m-%dT%H:%M:%S")
        if m[3] and m[3] not in "Zz":
            datetime.strptime(m[3][1:], "%H:%M")
    except ValueError:
        return False
    return True


FORMAT_CHECKER = jsonschema.FormatChecker(formats=())
FORMAT_CHECKER.checks("date-time")(oracle_date_time)


def oracle(action: str, response: bool) -> tuple[jsonschema.protocols.Validator, bool]:
    schema = schemas.load_schema(action, response)
    if "draft-06" in schema["$schema"]:
        return jsonschema.Draft6Validator(schema, format_checker=FORMAT_CHECKER), False
    decimal_schema = json.loads(json.dumps(schema), parse_float=Decimal)
    return jsonschema.Draft4Validator(decimal_schema, format_checker=FORMAT_CHECKER), True


# ------------------------------------------------------------ payload strategies driven by the schema

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.text(max_size=4),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2),
)

MINUTE_OFFSETS = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
VALID_DATE_TIMES = st.one_of(
    st.datetimes(timezones=st.none() | MINUTE_OFFSETS).map(lambda d: d.isoformat(timespec="milliseconds")),
    st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")),
)
BAD_DATE_TIMES = st.one_of(
    st.sampled_from(
        [
            "2024-02-29T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-24T24:00:00Z",
            "2026-11-24T23:59:60Z",
            "2026-11-24 10:00:00Z",
            "2026-11-24T10:00Z",
            "2026-11-24",
            "2026-11-24t10:00:00.5z",
            "2026-11-24T10:00:00+01:60",
            "2026-11-24T10:00:00.Z",
            "0000-01-01T00:00:00Z",
        ]
    ),
    st.datetimes(timezones=st.builds(timezone, st.timedeltas(timedelta(hours=-23), timedelta(hours=23)))).map(
        lambda d: d.isoformat()  # offsets with seconds, e.g. +05:30:15, are not RFC 3339
    ),
    st.text(max_size=25),
)


def resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = root
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def mostly(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any] = JUNK) -> st.SearchStrategy[Any]:
    """`valid` most of the time; now and then something likely (not surely) invalid,
    so that whole payloads come out both accepted and rejected."""
    # Hypothesis favours small integers and shrinks towards 0: keep 0 the valid end.
    return st.integers(0, 24).flatmap(lambda i: valid if i < 23 else (invalid if i == 23 else JUNK))


def value_for(node: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy[Any]:
    node = resolve(node, root)
    kind = node.get("type")
    if "enum" in node:
        values = node["enum"]
        near_misses = [v.lower() for v in values] + [v + " " for v in values]
        return mostly(st.sampled_from(values), st.sampled_from(near_misses))
    if kind == "string":
        if node.get("format") == "date-time":
            return mostly(VALID_DATE_TIMES, BAD_DATE_TIMES)
        max_len = node.get("maxLength")
        if max_len is None:
            return mostly(st.text(max_size=10))
        fitting = st.one_of(st.text(max_size=min(max_len, 12)), st.just("é" * max_len))
        return mostly(fitting, st.integers(max_len + 1, max_len + 2).map(lambda n: "é" * n))
    if kind == "integer":
        return mostly(st.integers(-(10**9), 10**9), st.one_of(st.integers(-5, 5).map(float), st.booleans()))
    if kind == "number":
        tenths = st.integers(-100000, 100000).map(lambda i: i / 10)
        hundredths = st.integers(-100000, 100000).map(lambda i: i / 100)
        anything = st.floats(-1e9, 1e9, allow_nan=False)
        return mostly(st.one_of(tenths, st.integers(-1000, 1000)), st.one_of(hundredths, anything, st.booleans()))
    if kind == "boolean":
        return mostly(st.booleans())
    if kind == "array":
        items = value_for(node["items"], root)
        min_items = node.get("minItems", 0)
        too_few = st.just([]) if min_items else JUNK
        return mostly(st.lists(items, min_size=min_items, max_size=min_items + 3), too_few)
    if kind == "object":
        props = node.get("properties", {})
        required = [name for name in node.get("required", []) if name in props]
        optional = {name: value_for(sub, root) for name, sub in props.items() if name not in required}
        valid = st.fixed_dictionaries({name: value_for(props[name], root) for name in required}, optional=optional)

        def mutate(payload: dict[str, Any], drop: bool, extra: Any) -> dict[str, Any]:
            if drop and required:
                payload = dict(payload)
                del payload[required[len(payload) % len(required)]]
                return payload
            return {**payload, "unexpectedField": extra}

        return mostly(valid, st.builds(mutate, valid, st.booleans(), JUNK))
    raise AssertionError(f"no strategy for {node}")


def oracle_code(error: jsonschema.ValidationError) -> str:
    if error.validator == "type" and not error.absolute_path:
        return frames.FORMATION_VIOLATION  # the payload itself is not an object: not the PDU
    return KEYWORD_CODES[str(error.validator)]


def check_against_oracle(action: str, response: bool, payload: Any) -> None:
    text = json.dumps(payload)
    validator, decimal_floats = oracle(action, response)
    oracle_payload = json.loads(text, parse_float=Decimal) if decimal_floats else json.loads(text)
    oracle_errors = list(validator.iter_errors(oracle_payload))
    try:
        schemas.validate(action, json.loads(text), response)
    except schemas.SchemaViolation as exc:
        assert oracle_errors, f"compiled rejects ({exc}) what jsonschema accepts: {text}"
        oracle_codes = {oracle_code(e) for e in oracle_errors}
        assert exc.error_code in oracle_codes, f"{exc} vs jsonschema {[e.message for e in oracle_errors]}"
    else:
        assert not oracle_errors, f"compiled accepts what jsonschema rejects: {oracle_errors[0].message}: {text}"


CASES = [
    ("SetChargingProfile", False),
    ("MeterValues", False),
    ("BootNotification", False),
    ("StartTransaction", False),
    ("ChangeConfiguration", False),
    ("SendLocalList", False),
    ("BootNotification", True),
    ("GetCompositeSchedule", True),
    ("StopTransaction", False),
    ("SignedUpdateFirmware", False),  # draft-06
    ("GetInstalledCertificateIds", True),  # draft-06, $ref, minItems
]


@pytest.mark.parametrize(("action", "response"), CASES)
def test_compiled_validator_agrees_with_jsonschema(action: str, response: bool) -> None:
    schema = schemas.load_schema(action, response)

    @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(payload=value_for(schema, schema))
    def agree(payload: Any) -> None:
        check_against_oracle(action, response, payload)

    agree()


ALL = sorted((action, response) for action in schemas.known_actions() for response in (False, True))


@pytest.mark.parametrize(("action", "response"), ALL)
def test_every_schema_agrees_with_jsonschema_briefly(action: str, response: bool) -> None:
    schema = schemas.load_schema(action, response)

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    @given(payload=value_for(schema, schema))
    def agree(payload: Any) -> None:
        check_against_oracle(action, response, payload)

    agree()


def test_oracle_and_generator_see_both_outcomes() -> None:
    # Guard against a vacuous comparison: the generator must produce accepted and rejected payloads.
    schema = schemas.load_schema("SetChargingProfile")
    seen: set[bool] = set()

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(payload=value_for(schema, schema))
    def collect(payload: Any) -> None:
        validator, _ = oracle("SetChargingProfile", False)
        seen.add(validator.is_valid(json.loads(json.dumps(payload), parse_float=Decimal)))

    collect()
    assert seen == {True, False}


def edgy(boundaries: list[Any], valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a valid field, often a boundary value (valid or not)."""
    return st.integers(0, 3).flatmap(lambda i: valid if i < 3 else st.sampled_from(boundaries))


@settings(max_examples=500, deadline=None)
@given(
    fields=st.tuples(
        edgy([0, 1, 1900, 2000, 2100, 9999], st.integers(1, 9999)),
        edgy([0, 2, 12, 13, 99], st.integers(1, 12)),
        edgy([0, 28, 29, 30, 31, 32], st.integers(1, 28)),
        edgy([0, 23, 24, 99], st.integers(0, 23)),
        edgy([0, 59, 60, 99], st.integers(0, 59)),
        edgy([0, 59, 60, 61], st.integers(0, 59)),
    ),
    fraction=edgy(["."], st.sampled_from(["", ".5", ".123456789"])),
    offset=edgy(["+24:00", "+05:60", "+0100", "+5:00"], st.sampled_from(["", "Z", "z", "+00:00", "-23:59", "+05:30"])),
    t=edgy([" ", "_"], st.sampled_from(["T", "t"])),
)
def test_date_time_check_agrees_with_strptime_oracle(
    fields: tuple[int, ...], fraction: str, offset: str, t: str
) -> None:
    year, month, day, hour, minute, second = fields
    text = f"{year:04d}-{month:02d}-{day:02d}{t}{hour:02d}:{minute:02d}:{second:02d}{fraction}{offset}"
    assert schemas.is_date_time(text) == oracle_date_time(text), text


@settings(max_examples=300, deadline=None)
@given(limit=st.one_of(st.decimals(-10000, 10000, places=1), st.decimals(-1000, 1000, places=3)).map(float))
def test_charging_limits_agree_with_jsonschema_decimal_multiple_of(limit: float) -> None:
    payload = {
        "connectorId": 1,
        "csChargingProfiles": {
            "chargingProfileId": 1,
            "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
                "minChargingRate": limit,
            },
        },
    }
    check_against_oracle("SetChargingProfile", False, payload)
