"""composite_schedule, limit_at and next_limit_change against the per-second reference.

Random profile sets (every purpose, stack levels, Absolute / Relative /
Recurring Daily and Weekly, validFrom/validTo, durations, A and W) are
evaluated both ways; the composite must equal the reference at every second
of the window (OCPP 1.6 §3.13.2, §3.13.3, §5.7, errata 3.43, 3.44, 3.79).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargepoint.smartcharging.composite import composite_schedule, limit_at, next_limit_change
from chargepoint.smartcharging.model import ChargingProfile, ProfileRejected, TxInfo, format_datetime, parse_profile
from tests.smartcharging.reference import reference_current_a, reference_periods, secs

DAY = 86_400
WINDOW_START = datetime(2026, 3, 11, 13, 27, 5, tzinfo=UTC)
MAX_WINDOW_S = 2400


def at(offset_s: int) -> str:
    return format_datetime(WINDOW_START + timedelta(seconds=offset_s))


@st.composite
def offsets_near(draw: st.DrawFn, period_s: int) -> int:
    """An offset that often lands a recurrence boundary inside the window."""
    return draw(st.integers(-8, 1)) * period_s + draw(st.integers(-3000, 3000))


@st.composite
def schedule_payload(draw: st.DrawFn, kind: str, recurrence_s: int | None) -> dict[str, Any]:
    unit = draw(st.sampled_from(["A", "W"]))
    count = draw(st.integers(1, 4))
    if recurrence_s is None:
        later = st.integers(1, 4000)
        durations = st.none() | st.integers(1, 6000)
    else:
        later = st.integers(1, 4000) | st.integers(recurrence_s - 3000, recurrence_s + 3000)
        durations = st.none() | st.integers(1, 6000) | st.integers(recurrence_s - 3000, recurrence_s + 3000)
    starts = sorted({0, *draw(st.lists(later, max_size=count - 1))})
    tenths = st.integers(0, 400) if unit == "A" else st.integers(0, 2500) .map(lambda x: x * 100)
    periods = []
    for start in starts:
        period: dict[str, Any] = {"startPeriod": start, "limit": draw(tenths) / 10}
        if draw(st.booleans()):
            period["numberPhases"] = draw(st.integers(1, 3))
        periods.append(period)
    doc: dict[str, Any] = {"chargingRateUnit": unit, "chargingSchedulePeriod": periods}
    duration = draw(durations)
    if duration is not None:
        doc["duration"] = duration
    if kind == "Absolute":
        doc["startSchedule"] = at(draw(st.integers(-5000, MAX_WINDOW_S)))
    elif kind == "Recurring":
        assert recurrence_s is not None
        doc["startSchedule"] = at(draw(offsets_near(recurrence_s)))
    if draw(st.booleans()):
        doc["minChargingRate"] = draw(st.integers(0, 100)) / 10
    return doc


@st.composite
def profile(draw: st.DrawFn, profile_id: int) -> ChargingProfile:
    purpose = draw(st.sampled_from(["ChargePointMaxProfile", "TxDefaultProfile", "TxDefaultProfile", "TxProfile"]))
    if purpose == "ChargePointMaxProfile":
        connector = 0
    elif purpose == "TxProfile":
        connector = draw(st.sampled_from([1, 2]))
    else:
        connector = draw(st.sampled_from([0, 1, 2]))
    kind = draw(st.sampled_from(["Absolute", "Relative", "Recurring"]))
    recurrency = draw(st.sampled_from(["Daily", "Weekly"])) if kind == "Recurring" else None
    recurrence_s = None if recurrency is None else (DAY if recurrency == "Daily" else 7 * DAY)
    payload: dict[str, Any] = {
        "chargingProfileId": profile_id,
        "stackLevel": draw(st.integers(0, 2)),
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": draw(schedule_payload(kind, recurrence_s)),
    }
    if recurrency is not None:
        payload["recurrencyKind"] = recurrency
    if purpose == "TxProfile" and draw(st.booleans()):
        payload["transactionId"] = draw(st.sampled_from([7, 8]))
    valid_from = draw(st.none() | st.integers(-3000, MAX_WINDOW_S))
    valid_to = draw(st.none() | st.integers(-1000, MAX_WINDOW_S + 1000))
    if valid_from is not None:
        payload["validFrom"] = at(valid_from)
    if valid_to is not None and (valid_from is None or valid_to > valid_from):
        payload["validTo"] = at(valid_to)
    try:
        return parse_profile(payload, connector_id=connector)
    except ProfileRejected as exc:  # the strategy only builds valid profiles
        raise AssertionError(f"{exc.reason}: {payload}") from None


@st.composite
def scenario(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(0, 6))
    profiles: list[ChargingProfile] = []
    keys: set[tuple[int, str, int]] = set()
    for i in range(count):
        p = draw(profile(i + 1))
        key = (p.connector_id, p.purpose, p.stack_level)
        if key not in keys:  # the manager never keeps two profiles with one key (§3.13.2)
            keys.add(key)
            profiles.append(p)
    tx = None
    if draw(st.booleans()):
        tx = TxInfo(draw(st.sampled_from([7, 8])), WINDOW_START - timedelta(seconds=draw(st.integers(0, 4000))))
    return {
        "profiles": profiles,
        "connector_id": draw(st.sampled_from([0, 1, 1, 2])),
        "tx": tx,
        "duration_s": draw(st.integers(1, MAX_WINDOW_S)),
        "unit": draw(st.sampled_from(["A", "W"])),
        "phases": draw(st.sampled_from([1, 3])),
        "max_a": draw(st.none() | st.sampled_from([16.0, 32.0])),
        "voltage_v": draw(st.sampled_from([230.0, 120.0])),
    }


COMMON = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(COMMON, max_examples=400)
@given(scenario())
def test_composite_equals_per_second_reference_spec_3_13(s: dict[str, Any]) -> None:
    tx = s["tx"] if s["connector_id"] != 0 else None
    got = composite_schedule(s["profiles"], connector_id=s["connector_id"], start=WINDOW_START,
                             duration_s=s["duration_s"], rate_unit=s["unit"], transaction=tx,
                             voltage_v=s["voltage_v"], connector_phases=s["phases"],
                             connector_max_current_a=s["max_a"])
    expected = reference_periods(s["profiles"], connector_id=s["connector_id"], start=WINDOW_START,
                                 duration_s=s["duration_s"], unit=s["unit"], tx=tx, voltage_v=s["voltage_v"],
                                 phases=s["phases"], max_current_a=s["max_a"])
    assert [(p.start_period_s, p.limit, p.number_phases) for p in got.periods] == expected
    assert got.schedule_start == WINDOW_START
    assert got.duration_s == s["duration_s"]


@COMMON
@given(scenario(), st.lists(st.integers(0, MAX_WINDOW_S - 1), min_size=1, max_size=8))
def test_limit_at_equals_reference_at_sampled_instants(s: dict[str, Any], offsets: list[int]) -> None:
    tx = s["tx"] if s["connector_id"] != 0 else None
    for offset in offsets:
        t = WINDOW_START + timedelta(seconds=offset)
        got = limit_at(s["profiles"], t, connector_id=s["connector_id"], transaction=tx,
                       voltage_v=s["voltage_v"], phases=s["phases"], relative_start=WINDOW_START)
        expected = reference_current_a(s["profiles"], secs(t), connector_id=s["connector_id"], tx=tx,
                                       window_start=secs(WINDOW_START), voltage_v=s["voltage_v"],
                                       phases=s["phases"])
        assert (None if got is None else got.current_a) == expected


@COMMON
@given(scenario())
def test_next_limit_change_is_the_first_second_the_reference_changes(s: dict[str, Any]) -> None:
    tx = s["tx"] if s["connector_id"] != 0 else None
    t0 = secs(WINDOW_START)

    def ref(t: int) -> float | None:
        return reference_current_a(s["profiles"], t, connector_id=s["connector_id"], tx=tx, window_start=t0,
                                   voltage_v=s["voltage_v"], phases=s["phases"])

    first = ref(t0)
    change = next((t for t in range(t0 + 1, t0 + s["duration_s"]) if ref(t) != first), None)
    got = next_limit_change(s["profiles"], WINDOW_START, connector_id=s["connector_id"], transaction=tx,
                            voltage_v=s["voltage_v"], phases=s["phases"])
    if change is None:
        assert got is None or secs(got) >= t0 + s["duration_s"]
    else:
        assert got is not None and secs(got) == change
