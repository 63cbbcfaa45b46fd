"""Charging profiles as frozen values: parse, validate, serialise (OCPP 1.6 §7.8-7.14).

`parse_profile` takes the `csChargingProfiles` object of a schema-valid
SetChargingProfile.req (or the `chargingProfile` of RemoteStartTransaction.req)
and applies the semantic rules the JSON schema cannot express, raising
`ProfileRejected(reason)`; the caller answers `Rejected` (§5.16) and logs the reason.

Limits arrive as `float` from our own parser, or as `Decimal` from a parser that
keeps decimals (the `ocpp` library's, field notes §1); both become `float` here
(any real `numbers.Number` is accepted, so `decimal` need not be imported). Datetimes are
aware UTC `datetime`s. `to_json` / `from_json` round-trip a profile for the
store (the shape is a SetChargingProfile.req payload).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

Purpose = Literal["ChargePointMaxProfile", "TxDefaultProfile", "TxProfile"]
Kind = Literal["Absolute", "Recurring", "Relative"]
RecurrencyKind = Literal["Daily", "Weekly"]
RateUnit = Literal["A", "W"]

PURPOSES: tuple[Purpose, ...] = ("ChargePointMaxProfile", "TxDefaultProfile", "TxProfile")
KINDS: tuple[Kind, ...] = ("Absolute", "Recurring", "Relative")
RECURRENCY_KINDS: tuple[RecurrencyKind, ...] = ("Daily", "Weekly")
RATE_UNITS: tuple[RateUnit, ...] = ("A", "W")

# Errata 3.79: Daily restarts every 24 h, Weekly every 7 days, at the time of startSchedule.
RECURRENCE_PERIOD_S: dict[str, int] = {"Daily": 86_400, "Weekly": 7 * 86_400}

# §7.14 / errata 3.69: numberPhases absent means 3.
DEFAULT_NUMBER_PHASES = 3


class ProfileRejected(Exception):
    """A schema-valid profile that breaks a semantic rule; answer Rejected (§5.16)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ChargingSchedulePeriod:
    start_period_s: int
    limit: float                    # in the schedule's rate unit: A per phase, or W total (§7.12)
    number_phases: int | None = None  # None: absent on the wire (3 assumed, §7.14)


@dataclass(frozen=True)
class ChargingSchedule:
    rate_unit: RateUnit
    periods: tuple[ChargingSchedulePeriod, ...]
    duration_s: int | None = None
    start_schedule: datetime | None = None
    min_charging_rate: float | None = None


@dataclass(frozen=True)
class ChargingProfile:
    id: int
    stack_level: int
    purpose: Purpose
    kind: Kind
    schedule: ChargingSchedule
    connector_id: int
    recurrency_kind: RecurrencyKind | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    transaction_id: int | None = None


@dataclass(frozen=True)
class TxInfo:
    """The transaction running on a connector: Relative profiles start at `start` (§7.9)."""

    transaction_id: int
    start: datetime


# --------------------------------------------------------------------------- datetimes


def parse_datetime(value: Any) -> datetime:
    """ISO 8601 text (or a datetime) -> aware UTC datetime. A missing zone means UTC (§3.14)."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ProfileRejected(f"not an ISO 8601 date-time: {value!r}") from None
    else:
        raise ProfileRejected(f"not a date-time: {value!r}")
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        # Valid RFC 3339 whose UTC instant lies outside what datetime holds, e.g.
        # "9999-12-31T23:59:59-01:00" (year 10000 in UTC) or "0001-01-01T00:00:00+01:00":
        # the nearest representable instant, less than a day away, means the same to any
        # schedule ("for ever" / "since ever"). Found by tests/e2e/test_fuzz_actions.py.
        return (datetime.max if dt.year > 1 else datetime.min).replace(tzinfo=UTC)


def format_datetime(dt: datetime) -> str:
    """Aware datetime -> "2026-11-24T10:00:00Z" (fraction kept only when non-zero)."""
    dt = dt.astimezone(UTC)
    text = dt.replace(tzinfo=None).isoformat(timespec="microseconds" if dt.microsecond else "seconds")
    return text + "Z"


# --------------------------------------------------------------------------- parsing


def _is_real(value: Any) -> bool:
    # int, float, and Decimal (registered as numbers.Number, not numbers.Real).
    return isinstance(value, numbers.Number) and not isinstance(value, (bool, complex))


def _number(value: Any, what: str) -> float:
    if not _is_real(value):
        raise ProfileRejected(f"{what} is not a number")
    result = float(value)
    if not math.isfinite(result):
        raise ProfileRejected(f"{what} is not finite")
    return result


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ProfileRejected(f"{what} is not an integer")
    if isinstance(value, int):
        return value
    if _is_real(value) and value == int(value):
        return int(value)
    raise ProfileRejected(f"{what} is not an integer")


def _choice(value: Any, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ProfileRejected(f"{what} must be one of {', '.join(allowed)}")
    return cast(str, value)


def _parse_schedule(doc: Any) -> ChargingSchedule:
    if not isinstance(doc, dict):
        raise ProfileRejected("chargingSchedule is missing")
    rate_unit = cast(RateUnit, _choice(doc.get("chargingRateUnit"), RATE_UNITS, "chargingRateUnit"))
    raw_periods = doc.get("chargingSchedulePeriod")
    if not isinstance(raw_periods, list) or not raw_periods:
        raise ProfileRejected("chargingSchedulePeriod must hold at least one period")  # §7.13: 1..*
    periods: list[ChargingSchedulePeriod] = []
    for index, raw in enumerate(raw_periods):
        if not isinstance(raw, dict):
            raise ProfileRejected(f"period {index} is not an object")
        # The common types take no conversion (and build no error text): this loop runs for
        # every period of every SetChargingProfile, re-sent defaults included.
        start = raw.get("startPeriod")
        if type(start) is not int:
            start = _integer(start, f"period {index} startPeriod")
        if index == 0 and start != 0:
            # Errata 3.45 / 3.70 / 4.13: the first period starts at 0.
            raise ProfileRejected("the first period must have startPeriod 0")
        if periods and start <= periods[-1].start_period_s:
            # §7.14: each startPeriod ends the previous period, so they must increase.
            raise ProfileRejected(f"period {index} startPeriod does not increase")
        limit = raw.get("limit")
        if type(limit) is not float or not math.isfinite(limit):
            limit = _number(limit, f"period {index} limit")
        if limit < 0:
            raise ProfileRejected(f"period {index} limit is negative")
        phases_raw = raw.get("numberPhases")
        phases = None if phases_raw is None else _integer(phases_raw, f"period {index} numberPhases")
        if phases is not None and not 1 <= phases <= 3:
            raise ProfileRejected(f"period {index} numberPhases must be 1, 2 or 3")
        periods.append(ChargingSchedulePeriod(start, limit, phases))
    duration = doc.get("duration")
    duration_s = None if duration is None else _integer(duration, "duration")
    if duration_s is not None and duration_s <= 0:
        raise ProfileRejected("duration must be positive")
    start_schedule = doc.get("startSchedule")
    min_rate_raw = doc.get("minChargingRate")
    min_rate = None if min_rate_raw is None else _number(min_rate_raw, "minChargingRate")
    if min_rate is not None and min_rate < 0:
        raise ProfileRejected("minChargingRate is negative")
    return ChargingSchedule(
        rate_unit=rate_unit,
        periods=tuple(periods),
        duration_s=duration_s,
        start_schedule=None if start_schedule is None else parse_datetime(start_schedule),
        min_charging_rate=min_rate,
    )


def parse_profile(payload: dict[str, Any], *, connector_id: int) -> ChargingProfile:
    """A `csChargingProfiles` object (already schema-valid) for `connector_id` -> ChargingProfile.

    Raises ProfileRejected naming the broken rule.
    """
    if not isinstance(payload, dict):
        raise ProfileRejected("charging profile is not an object")
    profile_id = _integer(payload.get("chargingProfileId"), "chargingProfileId")
    stack_level = _integer(payload.get("stackLevel"), "stackLevel")
    if stack_level < 0:
        raise ProfileRejected("stackLevel must be >= 0")  # §7.8: lowest level is 0
    purpose = cast(Purpose, _choice(payload.get("chargingProfilePurpose"), PURPOSES, "chargingProfilePurpose"))
    kind = cast(Kind, _choice(payload.get("chargingProfileKind"), KINDS, "chargingProfileKind"))
    recurrency_raw = payload.get("recurrencyKind")
    recurrency = (None if recurrency_raw is None
                  else cast(RecurrencyKind, _choice(recurrency_raw, RECURRENCY_KINDS, "recurrencyKind")))
    tx_raw = payload.get("transactionId")
    transaction_id = None if tx_raw is None else _integer(tx_raw, "transactionId")
    schedule = _parse_schedule(payload.get("chargingSchedule"))
    valid_from = payload.get("validFrom")
    valid_to = payload.get("validTo")
    profile = ChargingProfile(
        id=profile_id,
        stack_level=stack_level,
        purpose=purpose,
        kind=kind,
        schedule=schedule,
        connector_id=connector_id,
        recurrency_kind=recurrency,
        valid_from=None if valid_from is None else parse_datetime(valid_from),
        valid_to=None if valid_to is None else parse_datetime(valid_to),
        transaction_id=transaction_id,
    )
    check_profile(profile)
    return profile


def check_profile(p: ChargingProfile) -> None:
    """The semantic rules of §3.13, §7.8-7.14 and the errata; raises ProfileRejected."""
    if p.connector_id < 0:
        raise ProfileRejected("connectorId must be >= 0")
    if p.purpose == "ChargePointMaxProfile" and p.connector_id != 0:
        raise ProfileRejected("ChargePointMaxProfile can only be set at connectorId 0")  # §3.13.1
    if p.purpose == "TxProfile" and p.connector_id == 0:
        raise ProfileRejected("TxProfile can only be set at connectorId > 0")  # §3.13.1
    if p.transaction_id is not None and p.purpose != "TxProfile":
        raise ProfileRejected("transactionId is only valid for TxProfile")  # §7.8
    start = p.schedule.start_schedule
    if p.kind == "Absolute" and start is None:
        raise ProfileRejected("an Absolute profile needs startSchedule")  # §7.9
    if p.kind == "Relative" and start is not None:
        # §7.9 / §7.13: a Relative schedule starts at a point the charge point
        # determines (the transaction start); a startSchedule contradicts that.
        raise ProfileRejected("a Relative profile must not carry startSchedule")
    if p.kind == "Recurring":
        if p.recurrency_kind is None:
            raise ProfileRejected("a Recurring profile needs recurrencyKind")
        if start is None:
            raise ProfileRejected("a Recurring profile needs startSchedule")  # errata 3.79: it anchors the recurrence
    elif p.recurrency_kind is not None:
        raise ProfileRejected("recurrencyKind is only allowed with a Recurring profile")  # errata 3.56
    if p.valid_from is not None and p.valid_to is not None and p.valid_to <= p.valid_from:
        raise ProfileRejected("validTo is not after validFrom")


# --------------------------------------------------------------------------- serialising


def schedule_to_json(schedule: ChargingSchedule) -> dict[str, Any]:
    periods = []
    for period in schedule.periods:
        item: dict[str, Any] = {"startPeriod": period.start_period_s, "limit": period.limit}
        if period.number_phases is not None:
            item["numberPhases"] = period.number_phases
        periods.append(item)
    doc: dict[str, Any] = {"chargingRateUnit": schedule.rate_unit, "chargingSchedulePeriod": periods}
    if schedule.duration_s is not None:
        doc["duration"] = schedule.duration_s
    if schedule.start_schedule is not None:
        doc["startSchedule"] = format_datetime(schedule.start_schedule)
    if schedule.min_charging_rate is not None:
        doc["minChargingRate"] = schedule.min_charging_rate
    return doc


def profile_to_cs_json(profile: ChargingProfile) -> dict[str, Any]:
    """The `csChargingProfiles` object of a SetChargingProfile.req."""
    doc: dict[str, Any] = {
        "chargingProfileId": profile.id,
        "stackLevel": profile.stack_level,
        "chargingProfilePurpose": profile.purpose,
        "chargingProfileKind": profile.kind,
        "chargingSchedule": schedule_to_json(profile.schedule),
    }
    if profile.transaction_id is not None:
        doc["transactionId"] = profile.transaction_id
    if profile.recurrency_kind is not None:
        doc["recurrencyKind"] = profile.recurrency_kind
    if profile.valid_from is not None:
        doc["validFrom"] = format_datetime(profile.valid_from)
    if profile.valid_to is not None:
        doc["validTo"] = format_datetime(profile.valid_to)
    return doc


def to_json(profile: ChargingProfile) -> dict[str, Any]:
    """JSON for persistence: a SetChargingProfile.req payload, plus the id at top level for the store."""
    return {
        "chargingProfileId": profile.id,
        "connectorId": profile.connector_id,
        "csChargingProfiles": profile_to_cs_json(profile),
    }


def from_json(doc: dict[str, Any]) -> ChargingProfile:
    """Inverse of to_json. Raises ProfileRejected for a document that no longer validates."""
    if not isinstance(doc, dict) or "csChargingProfiles" not in doc:
        raise ProfileRejected("not a stored charging profile")
    return parse_profile(doc["csChargingProfiles"], connector_id=_integer(doc.get("connectorId"), "connectorId"))
