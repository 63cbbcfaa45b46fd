"""Charging profile parsing, semantic validation and the persistence round trip (OCPP 1.6 §7.8-7.14, errata)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest

from chargepoint.smartcharging.model import (
    ChargingSchedulePeriod,
    ProfileRejected,
    format_datetime,
    from_json,
    parse_datetime,
    parse_profile,
    to_json,
)

# Loaded as the ocpp library does: multipleOf 0.1 as Decimal, so Decimal limits compare exactly.
SCHEMA = json.loads((Path(ocpp.__file__).parent / "v16" / "schemas" / "SetChargingProfile.json").read_text(),
                    parse_float=Decimal)

# OCPP 1.6 §3.13.7: a daily default profile limiting to 6 kW between 08:00 and 20:00.
SPEC_EXAMPLE = """{
  "chargingProfileId": 100, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
  "chargingProfileKind": "Recurring", "recurrencyKind": "Daily",
  "chargingSchedule": {"duration": 86400, "startSchedule": "2013-01-01T00:00Z", "chargingRateUnit": "W",
    "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000.0, "numberPhases": 3},
                               {"startPeriod": 28800, "limit": 6000.0, "numberPhases": 3},
                               {"startPeriod": 72000, "limit": 11000.0, "numberPhases": 3}]}}"""


def schema_valid(connector_id: int, profile: dict[str, Any]) -> dict[str, Any]:
    """Validate like the wire does (limits parsed as Decimal) and return the profile as the handler sees it."""
    text = json.dumps({"connectorId": connector_id, "csChargingProfiles": profile})
    payload = json.loads(text, parse_float=Decimal)
    jsonschema.Draft4Validator(SCHEMA).validate(payload)
    return dict(payload["csChargingProfiles"])


def tx_profile(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {"chargingRateUnit": "A",
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}]},
    }
    schedule_changes = changes.pop("schedule", {})
    doc.update(changes)
    doc["chargingSchedule"].update(schedule_changes)
    return {k: v for k, v in doc.items() if v is not None}


def test_spec_example_3_13_7_parses_with_decimal_and_float_limits_alike() -> None:
    as_decimal = parse_profile(schema_valid(0, json.loads(SPEC_EXAMPLE)), connector_id=0)
    as_float = parse_profile(json.loads(SPEC_EXAMPLE), connector_id=0)
    assert as_decimal == as_float
    assert as_float.schedule.start_schedule == datetime(2013, 1, 1, tzinfo=UTC)
    assert as_float.schedule.periods[1] == ChargingSchedulePeriod(28800, 6000.0, 3)
    assert isinstance(as_decimal.schedule.periods[0].limit, float)


def test_decimal_tenths_become_the_same_float_as_json_floats() -> None:
    profile = parse_profile(schema_valid(1, tx_profile(schedule={"chargingSchedulePeriod": [
        {"startPeriod": 0, "limit": 8.1}, {"startPeriod": 60, "limit": 0.3}]})), connector_id=1)
    assert [p.limit for p in profile.schedule.periods] == [8.1, 0.3]


def test_round_trip_through_json_keeps_every_field() -> None:
    doc = {
        "chargingProfileId": 7, "transactionId": 42, "stackLevel": 3, "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Absolute", "validFrom": "2026-11-24T10:00:00.250+02:00",
        "validTo": "2026-11-25T10:00:00Z",
        "chargingSchedule": {"duration": 3600, "startSchedule": "2026-11-24T08:00:00Z", "chargingRateUnit": "W",
                             "minChargingRate": 1380.0,
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7360.0, "numberPhases": 1},
                                                        {"startPeriod": 900, "limit": 3680.5}]},
    }
    profile = parse_profile(schema_valid(2, doc), connector_id=2)
    stored = json.loads(json.dumps(to_json(profile)))  # what a JSON store gives back
    assert from_json(stored) == profile
    assert stored["chargingProfileId"] == 7 and stored["connectorId"] == 2
    assert profile.valid_from == datetime(2026, 11, 24, 8, 0, 0, 250000, tzinfo=UTC)
    assert profile.schedule.periods[1].number_phases is None  # absent stays absent
    # The stored payload is itself a schema-valid SetChargingProfile.req.
    schema_valid(stored["connectorId"], stored["csChargingProfiles"])


def test_datetimes_without_zone_are_utc_and_are_formatted_with_z() -> None:
    assert parse_datetime("2026-01-02T03:04:05") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert format_datetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05Z"


def test_datetimes_whose_utc_instant_is_beyond_datetime_are_clamped_not_a_crash() -> None:
    """Valid RFC 3339 at the edge of the calendar: "9999-12-31T23:59:59-01:00" is year 10000
    in UTC, "0001-01-01T00:00:00+01:00" year 0. astimezone() raised OverflowError, so a
    SetChargingProfile with such a validTo was answered InternalError (found by the schema
    fuzz, tests/e2e/test_fuzz_actions.py). The nearest representable instant is meant."""
    assert parse_datetime("9999-12-31T23:59:59-01:00") == datetime.max.replace(tzinfo=UTC)
    assert parse_datetime("0001-01-01T00:00:00+01:00") == datetime.min.replace(tzinfo=UTC)
    assert parse_datetime("9999-12-31T23:59:59+01:00") == datetime(9999, 12, 31, 22, 59, 59, tzinfo=UTC)
    doc = schema_valid(1, tx_profile(validFrom="0001-01-01T00:00:00+01:00", validTo="9999-12-31T23:59:59-01:00"))
    profile = parse_profile(doc, connector_id=1)
    assert profile.valid_from is not None and profile.valid_to is not None
    assert profile.valid_from < datetime(2000, 1, 1, tzinfo=UTC) < profile.valid_to
    assert from_json(json.loads(json.dumps(to_json(profile)))) == profile   # the store round trip


REJECTED = {
    "first period not at 0 (errata 3.45)": (1, tx_profile(schedule={"chargingSchedulePeriod": [
        {"startPeriod": 10, "limit": 6.0}]})),
    "periods not increasing (§7.14)": (1, tx_profile(schedule={"chargingSchedulePeriod": [
        {"startPeriod": 0, "limit": 6.0}, {"startPeriod": 600, "limit": 8.0}, {"startPeriod": 600, "limit": 9.0}]})),
    "negative limit": (1, tx_profile(schedule={"chargingSchedulePeriod": [{"startPeriod": 0, "limit": -1.0}]})),
    "numberPhases 4": (1, tx_profile(schedule={"chargingSchedulePeriod": [
        {"startPeriod": 0, "limit": 6.0, "numberPhases": 4}]})),
    "negative stackLevel (§7.8)": (1, tx_profile(stackLevel=-1)),
    "zero duration": (1, tx_profile(schedule={"duration": 0})),
    "negative minChargingRate": (1, tx_profile(schedule={"minChargingRate": -6.0})),
    "Relative with startSchedule (§7.9)": (1, tx_profile(schedule={"startSchedule": "2026-01-01T00:00:00Z"})),
    "Absolute without startSchedule": (1, tx_profile(chargingProfileKind="Absolute")),
    "Recurring without recurrencyKind": (1, tx_profile(chargingProfileKind="Recurring", schedule={
        "startSchedule": "2026-01-01T00:00:00Z"})),
    "Recurring without startSchedule": (1, tx_profile(chargingProfileKind="Recurring", recurrencyKind="Daily")),
    "recurrencyKind on Absolute (errata 3.56)": (1, tx_profile(chargingProfileKind="Absolute", recurrencyKind="Daily",
                                                               schedule={"startSchedule": "2026-01-01T00:00:00Z"})),
    "TxProfile on connector 0 (§3.13.1)": (0, tx_profile()),
    "ChargePointMaxProfile on connector 1 (§3.13.1)": (1, tx_profile(chargingProfilePurpose="ChargePointMaxProfile")),
    "transactionId on TxDefaultProfile (§7.8)": (1, tx_profile(chargingProfilePurpose="TxDefaultProfile",
                                                               transactionId=5)),
    "validTo before validFrom": (1, tx_profile(validFrom="2026-01-02T00:00:00Z", validTo="2026-01-01T00:00:00Z")),
    "unparseable date-time": (1, tx_profile(validFrom="yesterday")),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_semantic_rules_reject_schema_valid_profiles(case: str) -> None:
    connector_id, doc = REJECTED[case]
    if case != "unparseable date-time":
        doc = schema_valid(connector_id, copy.deepcopy(doc))  # the schema lets each of these through
    with pytest.raises(ProfileRejected) as info:
        parse_profile(doc, connector_id=connector_id)
    assert info.value.reason


def test_empty_period_list_is_rejected_without_a_schema() -> None:
    with pytest.raises(ProfileRejected):
        parse_profile(tx_profile(schedule={"chargingSchedulePeriod": []}), connector_id=1)


def test_from_json_rejects_a_damaged_document() -> None:
    with pytest.raises(ProfileRejected):
        from_json({"chargingProfileId": 3})


def _periods(*periods: dict[str, Any]) -> dict[str, Any]:
    return tx_profile(schedule={"chargingSchedulePeriod": list(periods)})


@pytest.mark.parametrize(("start", "limit", "expected"), [
    (0, 16.0, (0, 16.0)),                   # the plain wire types
    (0, 16, (0, 16.0)),                     # an integer limit is a number like any other
    (0, Decimal("13.2"), (0, 13.2)),        # a decimal-keeping parser (field notes §1)
    (0.0, 16.0, (0, 16.0)),                 # an integral float startPeriod is an integer
])
def test_period_numbers_of_any_real_type_become_int_start_and_float_limit(start: Any, limit: Any,
                                                                          expected: tuple[int, float]) -> None:
    period = parse_profile(_periods({"startPeriod": start, "limit": limit}), connector_id=1).schedule.periods[0]
    assert (period.start_period_s, period.limit) == expected
    assert type(period.start_period_s) is int and type(period.limit) is float


@pytest.mark.parametrize("period", [
    {"startPeriod": 0, "limit": float("inf")},
    {"startPeriod": 0, "limit": float("nan")},
    {"startPeriod": 0, "limit": "16"},
    {"startPeriod": 0, "limit": True},
    {"startPeriod": False, "limit": 16.0},
    {"startPeriod": 0.5, "limit": 16.0},
    {"startPeriod": "0", "limit": 16.0},
])
def test_period_values_that_are_not_real_finite_numbers_are_rejected_without_a_schema(period: dict[str, Any]) -> None:
    # parse_profile also reads stored documents (from_json), which no schema checked.
    with pytest.raises(ProfileRejected):
        parse_profile(_periods(period), connector_id=1)
