"""The composite charging schedule: a pure function of profiles, a transaction and a window.

No clock is read here and nothing is imported from asyncio; every instant is
passed in. Time is handled in whole seconds (datetimes are floored).

Rules (OCPP 1.6 edition 2 + errata; the errata win):

* Within one purpose, the prevailing profile at instant t is the one with the
  highest stackLevel that is valid at t (validFrom <= t < validTo, §3.13.2) and
  whose schedule covers t. A schedule whose duration has elapsed, or that has
  not started, yields to the next lower level (errata 3.43: "use a
  ChargingProfile with a lower stackLevel if available").
* TxProfile applies only while a transaction runs on its connector, and only
  to that transaction when it names a transactionId (§3.13.1, §7.8). Where a
  TxProfile prevails it overrules TxDefaultProfile; elsewhere TxDefaultProfile
  applies (§3.13.1; errata 3.8: transactions without a TxProfile follow the
  current TxDefaultProfile).
* A connector-specific TxDefaultProfile replaces, for that connector only, the
  connector-0 TxDefaultProfile of the same stackLevel (§3.13.1: "replaced only
  for that specific connector"); connector-0 profiles at other levels still stack.
* Per connector, the limit is min(ChargePointMaxProfile, TxProfile or
  TxDefaultProfile) (§3.13.3), and the local connector maximum when given
  (§5.7: local limits may be taken into account).
* Connector 0 (GetCompositeSchedule with connectorId 0) reports what the charge
  point may draw from the grid (errata 3.30): the ChargePointMaxProfile, capped
  by the station maximum when given. A TxDefaultProfile on connector 0 is a
  default for each transaction on each connector (errata 3.53), not a grid
  total, so it is not part of the connector-0 composite.
* Absolute schedules start at startSchedule. Recurring schedules restart every
  24 h / 7 days at the time of startSchedule (errata 3.79), in both directions
  (validFrom, not startSchedule, says from when the profile applies); the part
  of a schedule beyond the recurrence period is not executed (errata 3.43, 3.44).
  Relative schedules start at the transaction start (§7.9, §7.13); with no
  transaction they start at the beginning of the evaluated window, as if a
  transaction started now (the charge point determines the start, §7.9).
* A <-> W: P = V * I * phases (§7.12, errata 3.69), V the nominal line voltage
  (230 V by default). The phases are the connector's: the charger cannot switch
  phases (ConnectorSwitch3to1PhaseSupported = false), so converting with the
  phases that actually carry current keeps a W limit a limit on TOTAL power, and
  an A limit given for more phases than the connector has is used as given
  (errata 3.34).
* minChargingRate is a hint for load balancing (§3.13.4), never a limit; the
  composite reports the one of the Tx/TxDefault profile prevailing at its start.
* Reported limits are rounded DOWN to 0.1 (the schema's multipleOf 0.1,
  field notes §1): a limit must never be exceeded by rounding.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from chargepoint.smartcharging.model import (
    RECURRENCE_PERIOD_S,
    ChargingProfile,
    ChargingSchedulePeriod,
    Purpose,
    RateUnit,
    TxInfo,
    format_datetime,
)

DEFAULT_VOLTAGE_V = 230.0
WEEK_S = 7 * 86_400
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def epoch_s(dt: datetime) -> int:
    """Whole seconds since the epoch, floored (aware datetimes only)."""
    return (dt - _EPOCH) // _SECOND


def from_epoch_s(seconds: int) -> datetime:
    return _EPOCH + timedelta(seconds=seconds)


def floor_tenth(value: float) -> float:
    """Round down to 0.1; the tiny epsilon keeps 16.0 computed as 15.99999999 at 16.0."""
    return math.floor(value * 10 + 1e-6) / 10


def convert(value: float, from_unit: RateUnit, to_unit: RateUnit, *, voltage_v: float, phases: int) -> float:
    """A per phase <-> W total: P = V * I * phases (§7.12)."""
    if from_unit == to_unit:
        return value
    if from_unit == "A":
        return value * voltage_v * phases
    return value / (voltage_v * phases)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Limit:
    """The effective limit at one instant and where it comes from."""

    current_a: float           # per phase
    power_w: float             # total over `phases`
    phases: int
    profile_id: int
    purpose: Purpose
    rate_unit: RateUnit        # the source profile's unit
    limit: float               # the source period's limit, in rate_unit
    min_charging_rate_a: float | None = None   # from the prevailing Tx/TxDefault profile

    @property
    def source(self) -> str:
        return f"{self.purpose}#{self.profile_id}"


@dataclass(frozen=True)
class CompositePeriod:
    start_period_s: int
    limit: float | None        # None: no constraint (only without a connector maximum)
    number_phases: int


@dataclass(frozen=True)
class CompositeSchedule:
    connector_id: int
    schedule_start: datetime
    duration_s: int
    rate_unit: RateUnit
    periods: tuple[CompositePeriod, ...]
    min_charging_rate: float | None = None

    def to_conf(self) -> dict[str, Any]:
        """The GetCompositeSchedule.conf payload (§6.22; errata 3.57: no startSchedule inside)."""
        periods = []
        for period in self.periods:
            if period.limit is None:
                raise ValueError("unconstrained period: compute the composite with a connector maximum")
            periods.append({"startPeriod": period.start_period_s, "limit": period.limit,
                            "numberPhases": period.number_phases})
        schedule: dict[str, Any] = {
            "duration": self.duration_s,
            "chargingRateUnit": self.rate_unit,
            "chargingSchedulePeriod": periods,
        }
        if self.min_charging_rate is not None:
            schedule["minChargingRate"] = self.min_charging_rate
        return {
            "status": "Accepted",
            "connectorId": self.connector_id,
            "scheduleStart": format_datetime(self.schedule_start),
            "chargingSchedule": schedule,
        }


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class _Prepared:
    """A profile with its instants in epoch seconds, ready for repeated evaluation."""

    profile: ChargingProfile
    valid_from_s: int | None
    valid_to_s: int | None
    anchor_s: int              # start of the schedule (first occurrence for Recurring)
    recurrence_s: int | None
    length_s: int | None       # how long the schedule covers from each start; None: forever
    starts: tuple[int, ...]

    def period_at(self, t: int) -> ChargingSchedulePeriod | None:
        if self.valid_from_s is not None and t < self.valid_from_s:
            return None
        if self.valid_to_s is not None and t >= self.valid_to_s:
            return None
        offset = t - self.anchor_s
        if self.recurrence_s is not None:
            offset %= self.recurrence_s
        elif offset < 0:
            return None
        if self.length_s is not None and offset >= self.length_s:
            return None
        # The last period that has started (starts[0] == 0 <= offset).
        return self.profile.schedule.periods[bisect_right(self.starts, offset) - 1]

    def validity_points(self) -> list[int]:
        return [x for x in (self.valid_from_s, self.valid_to_s) if x is not None]

    def schedule_points(self, lo: int, hi: float) -> list[int]:
        """Instants in (lo, hi) where this profile's schedule starts, changes period or ends."""
        points: list[int] = []
        if self.recurrence_s is None:
            points.extend(self.anchor_s + s for s in self.starts)
            if self.length_s is not None:
                points.append(self.anchor_s + self.length_s)
        else:
            assert self.length_s is not None
            first = (lo - self.anchor_s) // self.recurrence_s
            cycle = first
            while True:
                base = self.anchor_s + cycle * self.recurrence_s
                if base >= hi:
                    break
                points.extend(base + s for s in self.starts if s < self.length_s)
                points.append(base + self.length_s)
                cycle += 1
        return [x for x in points if lo < x < hi]


def _prepare(profile: ChargingProfile, *, tx_start_s: int | None, relative_anchor_s: int) -> _Prepared:
    schedule = profile.schedule
    if profile.kind == "Relative":
        anchor = tx_start_s if tx_start_s is not None else relative_anchor_s
    else:
        assert schedule.start_schedule is not None  # model.check_profile
        anchor = epoch_s(schedule.start_schedule)
    recurrence = None
    length = schedule.duration_s
    if profile.kind == "Recurring":
        assert profile.recurrency_kind is not None
        recurrence = RECURRENCE_PERIOD_S[profile.recurrency_kind]
        # Errata 3.43 / 3.44: nothing beyond the recurrence period is executed.
        length = recurrence if length is None else min(length, recurrence)
    return _Prepared(
        profile=profile,
        valid_from_s=None if profile.valid_from is None else epoch_s(profile.valid_from),
        valid_to_s=None if profile.valid_to is None else epoch_s(profile.valid_to),
        anchor_s=anchor,
        recurrence_s=recurrence,
        length_s=length,
        starts=tuple(p.start_period_s for p in schedule.periods),
    )


def _precedence(p: ChargingProfile) -> tuple[int, int, int]:
    # Highest stackLevel first; at equal level a connector-specific profile first.
    return (-p.stack_level, 1 if p.connector_id == 0 else 0, p.id)


@dataclass(frozen=True)
class _Sets:
    cp_max: tuple[_Prepared, ...]
    tx: tuple[_Prepared, ...]
    tx_default: tuple[_Prepared, ...]

    def all(self) -> Iterable[_Prepared]:
        yield from self.cp_max
        yield from self.tx
        yield from self.tx_default


def applicable_profiles(profiles: Iterable[ChargingProfile], *, connector_id: int,
                        transaction: TxInfo | None) -> tuple[list[ChargingProfile], list[ChargingProfile],
                                                             list[ChargingProfile]]:
    """(ChargePointMax, Tx, TxDefault) profiles that apply to the connector, highest precedence first."""
    profiles = list(profiles)
    cp_max = [p for p in profiles if p.purpose == "ChargePointMaxProfile" and p.connector_id == 0]
    if connector_id == 0:
        return sorted(cp_max, key=_precedence), [], []
    own_default = [p for p in profiles if p.purpose == "TxDefaultProfile" and p.connector_id == connector_id]
    own_levels = {p.stack_level for p in own_default}
    station_default = [p for p in profiles if p.purpose == "TxDefaultProfile" and p.connector_id == 0
                       and p.stack_level not in own_levels]
    tx: list[ChargingProfile] = []
    if transaction is not None:
        tx = [p for p in profiles if p.purpose == "TxProfile" and p.connector_id == connector_id
              and (p.transaction_id is None or p.transaction_id == transaction.transaction_id)]
    return (sorted(cp_max, key=_precedence), sorted(tx, key=_precedence),
            sorted(own_default + station_default, key=_precedence))


def _sets(profiles: Iterable[ChargingProfile], *, connector_id: int, transaction: TxInfo | None,
          relative_anchor_s: int) -> _Sets:
    tx_start = None if transaction is None else epoch_s(transaction.start)
    cp_max, tx, tx_default = applicable_profiles(profiles, connector_id=connector_id, transaction=transaction)

    def prep(items: list[ChargingProfile]) -> tuple[_Prepared, ...]:
        return tuple(_prepare(p, tx_start_s=tx_start, relative_anchor_s=relative_anchor_s) for p in items)

    return _Sets(prep(cp_max), prep(tx), prep(tx_default))


def _prevailing(items: Sequence[_Prepared], t: int) -> tuple[ChargingProfile, ChargingSchedulePeriod] | None:
    for item in items:
        period = item.period_at(t)
        if period is not None:
            return item.profile, period
    return None


def _tx_limit(sets: _Sets, t: int) -> tuple[ChargingProfile, ChargingSchedulePeriod] | None:
    return _prevailing(sets.tx, t) or _prevailing(sets.tx_default, t)


def _limit(sets: _Sets, t: int, *, voltage_v: float, phases: int, cp_max_divisor: int) -> Limit | None:
    best: Limit | None = None
    tx_hit = _tx_limit(sets, t)
    min_rate_a: float | None = None
    if tx_hit is not None:
        rate = tx_hit[0].schedule.min_charging_rate
        if rate is not None:
            min_rate_a = convert(rate, tx_hit[0].schedule.rate_unit, "A", voltage_v=voltage_v, phases=phases)
    for hit, divisor in ((tx_hit, 1), (_prevailing(sets.cp_max, t), cp_max_divisor)):
        if hit is None:
            continue
        profile, period = hit
        unit = profile.schedule.rate_unit
        share = period.limit / divisor
        current_a = convert(share, unit, "A", voltage_v=voltage_v, phases=phases)
        if best is None or current_a < best.current_a:
            best = Limit(
                current_a=current_a,
                power_w=convert(share, unit, "W", voltage_v=voltage_v, phases=phases),
                phases=phases,
                profile_id=profile.id,
                purpose=profile.purpose,
                rate_unit=unit,
                limit=period.limit,
                min_charging_rate_a=min_rate_a,
            )
    return best


def limit_at(profiles: Iterable[ChargingProfile], t: datetime, *, connector_id: int,
             transaction: TxInfo | None = None, voltage_v: float = DEFAULT_VOLTAGE_V, phases: int = 3,
             relative_start: datetime | None = None, cp_max_divisor: int = 1) -> Limit | None:
    """The effective profile limit on `connector_id` at instant `t`; None when no profile limits it.

    `relative_start` anchors Relative profiles when there is no transaction
    (default: `t`). `cp_max_divisor` shares the ChargePointMaxProfile between
    that many connectors (§3.13.3: it limits all connectors combined).
    """
    ts = epoch_s(t)
    anchor = ts if relative_start is None else epoch_s(relative_start)
    sets = _sets(profiles, connector_id=connector_id, transaction=transaction, relative_anchor_s=anchor)
    return _limit(sets, ts, voltage_v=voltage_v, phases=phases, cp_max_divisor=max(1, cp_max_divisor))


def next_limit_change(profiles: Iterable[ChargingProfile], after: datetime, *, connector_id: int,
                      transaction: TxInfo | None = None, voltage_v: float = DEFAULT_VOLTAGE_V, phases: int = 3,
                      relative_start: datetime | None = None, cp_max_divisor: int = 1) -> datetime | None:
    """The first instant after `after` where the effective limit (current_a) changes; None: never.

    Relative profiles without a transaction are anchored at `relative_start`
    (default `after`), as limit_at is when called with the same anchor.
    """
    lo = epoch_s(after)
    anchor = lo if relative_start is None else epoch_s(relative_start)
    divisor = max(1, cp_max_divisor)
    sets = _sets(profiles, connector_id=connector_id, transaction=transaction, relative_anchor_s=anchor)

    def value(t: int) -> float | None:
        found = _limit(sets, t, voltage_v=voltage_v, phases=phases, cp_max_divisor=divisor)
        return None if found is None else found.current_a

    current = value(lo)
    finite: set[int] = set()
    for item in sets.all():
        finite.update(x for x in item.validity_points() if x > lo)
        if item.recurrence_s is None:
            finite.update(item.schedule_points(lo, math.inf))
    recurring = [item for item in sets.all() if item.recurrence_s is not None]
    # Between two finite breakpoints only recurring schedules move, and they
    # repeat every week at most: if nothing changes within a week, nothing
    # changes until the next finite breakpoint.
    segment_start = lo
    for segment_end in [*sorted(finite), None]:
        horizon = segment_start + WEEK_S
        if segment_end is not None:
            horizon = min(horizon, segment_end)
        candidates: set[int] = set()
        for item in recurring:
            candidates.update(item.schedule_points(segment_start, horizon))
        for t in sorted(candidates):
            if value(t) != current:
                return from_epoch_s(t)
        if segment_end is None:
            return None
        if value(segment_end) != current:
            return from_epoch_s(segment_end)
        segment_start = segment_end
    return None


def composite_schedule(profiles: Iterable[ChargingProfile], *, connector_id: int, start: datetime,
                       duration_s: int, rate_unit: RateUnit, transaction: TxInfo | None = None,
                       voltage_v: float = DEFAULT_VOLTAGE_V, connector_phases: int = 3,
                       connector_max_current_a: float | None = None) -> CompositeSchedule:
    """The composite schedule of `connector_id` over [start, start + duration_s) (§5.7, errata 3.28/3.29).

    Periods are merged where the limit does not change; start is floored to
    the second and is the reported scheduleStart. For connector 0,
    `connector_phases` and `connector_max_current_a` describe the station's grid connection.
    """
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    lo = epoch_s(start)
    hi = lo + duration_s
    sets = _sets(profiles, connector_id=connector_id, transaction=transaction, relative_anchor_s=lo)
    points = {lo}
    for item in sets.all():
        points.update(x for x in item.validity_points() if lo < x < hi)
        points.update(item.schedule_points(lo, hi))

    def value(t: int) -> float | None:
        candidates: list[float] = []
        for hit in (_prevailing(sets.cp_max, t), _tx_limit(sets, t)):
            if hit is not None:
                profile, period = hit
                candidates.append(convert(period.limit, profile.schedule.rate_unit, rate_unit,
                                          voltage_v=voltage_v, phases=connector_phases))
        if connector_max_current_a is not None:
            candidates.append(convert(connector_max_current_a, "A", rate_unit,
                                      voltage_v=voltage_v, phases=connector_phases))
        return floor_tenth(min(candidates)) if candidates else None

    periods: list[CompositePeriod] = []
    for t in sorted(points):
        limit = value(t)
        if periods and periods[-1].limit == limit:
            continue
        periods.append(CompositePeriod(t - lo, limit, connector_phases))

    min_rate: float | None = None
    first = _tx_limit(sets, lo)
    if first is not None and first[0].schedule.min_charging_rate is not None:
        min_rate = floor_tenth(convert(first[0].schedule.min_charging_rate, first[0].schedule.rate_unit, rate_unit,
                                       voltage_v=voltage_v, phases=connector_phases))
    return CompositeSchedule(
        connector_id=connector_id,
        schedule_start=from_epoch_s(lo),
        duration_s=duration_s,
        rate_unit=rate_unit,
        periods=tuple(periods),
        min_charging_rate=min_rate,
    )
