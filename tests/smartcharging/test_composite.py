"""Worked examples and compliance-style compositions for the pure composite functions (OCPP 1.6 §3.13, §5.7)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest

from chargepoint.smartcharging.composite import composite_schedule, limit_at, next_limit_change
from chargepoint.smartcharging.model import ChargingProfile, RateUnit, TxInfo, format_datetime, parse_profile

T0 = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)  # a Tuesday
RESPONSE_SCHEMA = json.loads(
    (Path(ocpp.__file__).parent / "v16" / "schemas" / "GetCompositeScheduleResponse.json").read_text(),
    parse_float=Decimal)


def make(pid: int, purpose: str, periods: list[tuple[int, float]], *, connector: int = 0, stack: int = 0,
         kind: str = "Absolute", start: datetime | None = T0, unit: str = "A", duration: int | None = None,
         recurrency: str | None = None, valid_from: datetime | None = None, valid_to: datetime | None = None,
         transaction_id: int | None = None, min_rate: float | None = None,
         phases: int | None = None) -> ChargingProfile:
    schedule: dict[str, Any] = {"chargingRateUnit": unit, "chargingSchedulePeriod": [
        {"startPeriod": s, "limit": lim, **({"numberPhases": phases} if phases else {})} for s, lim in periods]}
    if kind != "Relative" and start is not None:
        schedule["startSchedule"] = format_datetime(start)
    if duration is not None:
        schedule["duration"] = duration
    if min_rate is not None:
        schedule["minChargingRate"] = min_rate
    doc: dict[str, Any] = {"chargingProfileId": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
                           "chargingProfileKind": kind, "chargingSchedule": schedule}
    for key, value in (("recurrencyKind", recurrency), ("transactionId", transaction_id),
                       ("validFrom", valid_from and format_datetime(valid_from)),
                       ("validTo", valid_to and format_datetime(valid_to))):
        if value is not None:
            doc[key] = value
    return parse_profile(doc, connector_id=connector)


def periods_of(profiles: list[ChargingProfile], *, connector: int = 1, start: datetime = T0, duration: int = 3600,
               unit: RateUnit = "A", tx: TxInfo | None = None, phases: int = 3,
               max_a: float | None = None) -> list[tuple[int, float | None]]:
    result = composite_schedule(profiles, connector_id=connector, start=start, duration_s=duration, rate_unit=unit,
                                transaction=tx, connector_phases=phases, connector_max_current_a=max_a)
    return [(p.start_period_s, p.limit) for p in result.periods]


TX = TxInfo(transaction_id=42, start=T0 - timedelta(minutes=10))


def test_spec_3_13_7_daily_default_limits_to_6kw_between_08_and_20() -> None:
    default = make(100, "TxDefaultProfile", [(0, 11000), (28800, 6000), (72000, 11000)], kind="Recurring",
                   recurrency="Daily", start=datetime(2013, 1, 1, tzinfo=UTC), duration=86400, unit="W")
    assert periods_of([default], unit="W", duration=86400) == [(0, 11000.0), (7200, 6000.0), (50400, 11000.0)]
    # In A on a 3-phase 230 V connector: 11000 / 690 = 15.94 -> 15.9; 6000 / 690 = 8.69 -> 8.6 (rounded down).
    assert periods_of([default], unit="A", duration=86400) == [(0, 15.9), (7200, 8.6), (50400, 15.9)]


def test_tx_profile_overrules_tx_default_and_is_capped_by_charge_point_max_3_13_3() -> None:
    default = make(1, "TxDefaultProfile", [(0, 6)], kind="Relative")
    tx = make(2, "TxProfile", [(0, 20), (1800, 10)], connector=1, kind="Relative", start=None)
    cp_max = make(3, "ChargePointMaxProfile", [(0, 32), (2400, 16)], start=T0)
    # The transaction started 10 minutes before T0: the TxProfile's 1800 s period boundary is at T0 + 1200.
    assert periods_of([default, tx, cp_max], tx=TX) == [(0, 20.0), (1200, 10.0)]
    cp_low = make(3, "ChargePointMaxProfile", [(0, 32), (600, 8)], start=T0)
    assert periods_of([default, tx, cp_low], tx=TX) == [(0, 20.0), (600, 8.0)]
    # Without a transaction the TxProfile does not apply: TxDefault, capped.
    assert periods_of([default, tx, cp_low], tx=None) == [(0, 6.0)]


def test_tx_profile_for_another_transaction_is_ignored() -> None:
    default = make(1, "TxDefaultProfile", [(0, 6)], kind="Relative")
    other = make(2, "TxProfile", [(0, 20)], connector=1, kind="Relative", transaction_id=41)
    mine = make(3, "TxProfile", [(0, 12)], connector=1, kind="Relative", stack=1, transaction_id=42, duration=300)
    assert periods_of([default, other], tx=TX) == [(0, 6.0)]
    # Once the matching TxProfile's duration ends (300 s after the transaction start, before T0) TxDefault applies.
    assert periods_of([default, other, mine], tx=TX, start=TX.start) == [(0, 12.0), (300, 6.0)]


def test_stacked_tx_default_falls_back_to_the_lower_level_when_duration_elapses_errata_3_43() -> None:
    base = make(1, "TxDefaultProfile", [(0, 16)], kind="Relative")
    high = make(2, "TxDefaultProfile", [(0, 6), (300, 10)], stack=1, duration=900, start=T0 + timedelta(minutes=5))
    assert periods_of([base, high]) == [(0, 16.0), (300, 6.0), (600, 10.0), (1200, 16.0)]


def test_highest_stack_level_without_duration_never_falls_back_errata_3_7() -> None:
    base = make(1, "TxDefaultProfile", [(0, 16)], kind="Relative")
    high = make(2, "TxDefaultProfile", [(0, 6), (300, 10)], stack=1, start=T0)
    assert periods_of([base, high], duration=86400) == [(0, 6.0), (300, 10.0)]


def test_replaced_profile_with_future_valid_from_reverts_to_default_until_then_3_13_2() -> None:
    base = make(1, "TxDefaultProfile", [(0, 16)], kind="Relative")
    updated = make(2, "TxDefaultProfile", [(0, 8)], stack=1, kind="Relative",
                   valid_from=T0 + timedelta(minutes=20), valid_to=T0 + timedelta(minutes=40))
    assert periods_of([base, updated]) == [(0, 16.0), (1200, 8.0), (2400, 16.0)]


def test_duration_longer_than_periods_keeps_the_last_period_and_shorter_cuts_them_5_16_4() -> None:
    long = make(1, "TxDefaultProfile", [(0, 6), (600, 10)], duration=1800)
    assert periods_of([long], max_a=32) == [(0, 6.0), (600, 10.0), (1800, 32.0)]
    short = make(1, "TxDefaultProfile", [(0, 6), (600, 10), (1200, 12)], duration=900)
    assert periods_of([short], max_a=32) == [(0, 6.0), (600, 10.0), (900, 32.0)]


def test_connector_specific_tx_default_replaces_connector_0_only_at_its_stack_level_3_13_1() -> None:
    station = make(1, "TxDefaultProfile", [(0, 10)], kind="Relative", stack=0)
    station_high = make(2, "TxDefaultProfile", [(0, 8)], stack=1, start=T0 + timedelta(minutes=30))
    own = make(3, "TxDefaultProfile", [(0, 20)], connector=1, stack=0, start=T0 + timedelta(minutes=10),
               duration=600)
    profiles = [station, station_high, own]
    # Connector 1: its own level-0 profile replaces the station's level 0 (a gap, not a fallback to 10 A),
    # the station's level 1 still stacks on top.
    assert periods_of(profiles, connector=1, max_a=32) == [(0, 32.0), (600, 20.0), (1200, 32.0), (1800, 8.0)]
    # Connector 2 keeps the station defaults.
    assert periods_of(profiles, connector=2, max_a=32) == [(0, 10.0), (1800, 8.0)]


def test_connector_0_reports_the_charge_point_max_only_errata_3_30_3_53() -> None:
    cp_max = make(1, "ChargePointMaxProfile", [(0, 40), (900, 20)])
    station_default = make(2, "TxDefaultProfile", [(0, 6)], kind="Relative")
    assert periods_of([cp_max, station_default], connector=0, max_a=64) == [(0, 40.0), (900, 20.0)]
    assert periods_of([station_default], connector=0, max_a=64) == [(0, 64.0)]


def test_relative_profile_starts_at_transaction_start_or_at_the_window_without_one_7_9() -> None:
    relative = make(1, "TxDefaultProfile", [(0, 6), (1800, 16)], kind="Relative")
    assert periods_of([relative], tx=TX) == [(0, 6.0), (1200, 16.0)]
    assert periods_of([relative], tx=None) == [(0, 6.0), (1800, 16.0)]


def test_weekly_recurrence_restarts_at_the_same_weekday_and_time_errata_3_79() -> None:
    # Started on a Monday 22:00, 8 hours at 10 A; the window is the next Monday.
    weekly = make(1, "TxDefaultProfile", [(0, 10)], kind="Recurring", recurrency="Weekly",
                  start=datetime(2026, 11, 2, 22, 0, tzinfo=UTC), duration=8 * 3600)
    monday = datetime(2026, 11, 30, 21, 0, tzinfo=UTC)
    assert periods_of([weekly], start=monday, duration=10 * 3600, max_a=32) == [
        (0, 32.0), (3600, 10.0), (9 * 3600, 32.0)]


def test_recurring_periods_beyond_the_day_are_not_executed_errata_3_44() -> None:
    daily = make(1, "TxDefaultProfile", [(0, 10), (90000, 5)], kind="Recurring", recurrency="Daily",
                 start=datetime(2026, 1, 1, 0, 0, tzinfo=UTC), duration=100000)
    assert periods_of([daily], start=datetime(2026, 11, 24, 23, 0, tzinfo=UTC), duration=7200) == [(0, 10.0)]


def test_watts_and_amps_convert_with_the_connector_phases_7_12_errata_3_34() -> None:
    watts = make(1, "TxDefaultProfile", [(0, 7360)], unit="W", kind="Relative", phases=3)
    assert periods_of([watts], phases=1) == [(0, 32.0)]   # 7360 W on one phase
    assert periods_of([watts], phases=3) == [(0, 10.6)]   # 7360 / 690 = 10.67, rounded down
    amps = make(1, "TxDefaultProfile", [(0, 16)], kind="Relative", phases=1)
    assert periods_of([amps], unit="W", phases=3) == [(0, 11040.0)]
    # A power cap and a current limit meet in either unit.
    cp_max = make(2, "ChargePointMaxProfile", [(0, 9000), (600, 20000)], unit="W")
    assert periods_of([amps, cp_max], unit="A") == [(0, 13.0), (600, 16.0)]
    assert periods_of([amps, cp_max], unit="W") == [(0, 9000.0), (600, 11040.0)]


def test_limit_at_reports_both_units_and_its_source() -> None:
    cp_max = make(1, "ChargePointMaxProfile", [(0, 11000)], unit="W")
    tx = make(2, "TxProfile", [(0, 20)], connector=1, kind="Relative", min_rate=6)
    found = limit_at([cp_max, tx], T0, connector_id=1, transaction=TX)
    assert found is not None
    assert (found.purpose, found.profile_id, found.source) == ("ChargePointMaxProfile", 1, "ChargePointMaxProfile#1")
    assert found.power_w == 11000.0 and found.current_a == pytest.approx(15.942, abs=1e-3)
    assert found.min_charging_rate_a == 6.0
    assert limit_at([tx], T0, connector_id=1, transaction=None) is None


def test_charge_point_max_is_shared_between_busy_connectors_3_13_3() -> None:
    cp_max = make(1, "ChargePointMaxProfile", [(0, 32)])
    tx = make(2, "TxProfile", [(0, 20)], connector=1, kind="Relative")
    alone = limit_at([cp_max, tx], T0, connector_id=1, transaction=TX)
    shared = limit_at([cp_max, tx], T0, connector_id=1, transaction=TX, cp_max_divisor=2)
    assert alone is not None and (alone.current_a, alone.purpose) == (20.0, "TxProfile")
    assert shared is not None and (shared.current_a, shared.purpose) == (16.0, "ChargePointMaxProfile")


def test_gaps_without_a_connector_maximum_are_unconstrained() -> None:
    short = make(1, "TxDefaultProfile", [(0, 6)], duration=600)
    result = composite_schedule([short], connector_id=1, start=T0, duration_s=1200, rate_unit="A")
    assert [(p.start_period_s, p.limit) for p in result.periods] == [(0, 6.0), (600, None)]
    with pytest.raises(ValueError):
        result.to_conf()


def test_conf_payload_is_schema_valid_and_starts_at_the_request_second_5_7() -> None:
    default = make(100, "TxDefaultProfile", [(0, 11000), (28800, 6000)], kind="Recurring", recurrency="Daily",
                   start=datetime(2013, 1, 1, tzinfo=UTC), unit="W", min_rate=1380)
    start = T0 + timedelta(microseconds=700_000)
    conf = composite_schedule([default], connector_id=1, start=start, duration_s=7200, rate_unit="A",
                              connector_max_current_a=32).to_conf()
    assert conf["scheduleStart"] == "2026-11-24T06:00:00Z"
    assert conf["chargingSchedule"] == {
        "duration": 7200, "chargingRateUnit": "A", "minChargingRate": 2.0,
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 15.9, "numberPhases": 3}],
    }
    assert "startSchedule" not in conf["chargingSchedule"]  # errata 3.57
    wire = json.loads(json.dumps(conf), parse_float=Decimal)
    jsonschema.Draft4Validator(RESPONSE_SCHEMA).validate(wire)


def test_next_change_finds_period_boundaries_and_far_validity_changes() -> None:
    default = make(1, "TxDefaultProfile", [(0, 16)], kind="Recurring", recurrency="Daily",
                   start=datetime(2026, 1, 1, tzinfo=UTC))
    assert next_limit_change([default], T0, connector_id=1) is None
    later = make(2, "TxDefaultProfile", [(0, 6)], stack=1, start=T0 + timedelta(days=30), duration=3600)
    profiles = [default, later]
    assert next_limit_change(profiles, T0, connector_id=1) == T0 + timedelta(days=30)
    assert next_limit_change(profiles, T0 + timedelta(days=30), connector_id=1) == T0 + timedelta(days=30, hours=1)
    weekly = make(3, "TxDefaultProfile", [(0, 10)], stack=2, kind="Recurring", recurrency="Weekly",
                  start=T0 + timedelta(days=6, hours=12), duration=3600)
    assert next_limit_change([default, weekly], T0, connector_id=1) == T0 + timedelta(days=6, hours=12)
