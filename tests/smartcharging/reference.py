"""A brute-force reference for the composite schedule, written from the spec, not from composite.py.

Every second of a window is evaluated on its own: which profiles are valid,
which schedule covers the second, which stack level wins, then the minimum
over the purposes. Slow and simple on purpose; the tests compare
chargepoint.smartcharging.composite against it second by second.
"""

from __future__ import annotations

import math
from datetime import datetime
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from chargepoint.smartcharging.model import ChargingProfile, ChargingSchedulePeriod, TxInfo

DAY = 24 * 60 * 60


def secs(dt: datetime) -> int:
    return math.floor(dt.timestamp())


def floor_to_tenth(x: float) -> float:
    # Snap float noise (15.999999999 for 16) first, then round down to 0.1.
    snapped = Decimal(repr(x)).quantize(Decimal("0.00001"), ROUND_HALF_EVEN)
    return float(snapped.quantize(Decimal("0.1"), ROUND_FLOOR))


def period_in_force(p: ChargingProfile, t: int, tx: TxInfo | None, window_start: int) -> ChargingSchedulePeriod | None:
    """The period of p in force at second t, or None when p does not apply at t."""
    if p.valid_from is not None and t < secs(p.valid_from):
        return None
    if p.valid_to is not None and t >= secs(p.valid_to):
        return None
    if p.kind == "Absolute":
        assert p.schedule.start_schedule is not None
        begin = secs(p.schedule.start_schedule)
    elif p.kind == "Relative":
        begin = secs(tx.start) if tx is not None else window_start
    else:
        assert p.schedule.start_schedule is not None
        every = DAY if p.recurrency_kind == "Daily" else 7 * DAY
        begin = secs(p.schedule.start_schedule)
        # Walk to the latest occurrence that has begun by t.
        while begin > t:
            begin -= every
        while begin + every <= t:
            begin += every
    elapsed = t - begin
    if elapsed < 0:
        return None
    if p.schedule.duration_s is not None and elapsed >= p.schedule.duration_s:
        return None
    found = None
    for period in p.schedule.periods:
        if period.start_period_s <= elapsed:
            found = period
    return found


def winner(profiles: list[ChargingProfile], t: int, tx: TxInfo | None,
           window_start: int) -> tuple[ChargingProfile, ChargingSchedulePeriod] | None:
    for p in sorted(profiles, key=lambda q: -q.stack_level):
        period = period_in_force(p, t, tx, window_start)
        if period is not None:
            return p, period
    return None


def purpose_winners(profiles: list[ChargingProfile], t: int, *, connector_id: int, tx: TxInfo | None,
                    window_start: int) -> list[tuple[ChargingProfile, ChargingSchedulePeriod]]:
    """The prevailing ChargePointMax and Tx-or-TxDefault (profile, period) at t."""
    out = []
    cp_max = winner([p for p in profiles if p.purpose == "ChargePointMaxProfile"], t, tx, window_start)
    if cp_max is not None:
        out.append(cp_max)
    if connector_id != 0:
        tx_profiles = [p for p in profiles if p.purpose == "TxProfile" and p.connector_id == connector_id
                       and tx is not None and p.transaction_id in (None, tx.transaction_id)]
        own = [p for p in profiles if p.purpose == "TxDefaultProfile" and p.connector_id == connector_id]
        station = [p for p in profiles if p.purpose == "TxDefaultProfile" and p.connector_id == 0
                   and p.stack_level not in {q.stack_level for q in own}]
        chosen = winner(tx_profiles, t, tx, window_start) or winner(own + station, t, tx, window_start)
        if chosen is not None:
            out.append(chosen)
    return out


def in_unit(value: float, unit: str, wanted: str, voltage_v: float, phases: int) -> float:
    if unit == wanted:
        return value
    return value * voltage_v * phases if unit == "A" else value / (voltage_v * phases)


def reference_periods(profiles: list[ChargingProfile], *, connector_id: int, start: datetime, duration_s: int,
                      unit: str, tx: TxInfo | None, voltage_v: float, phases: int,
                      max_current_a: float | None) -> list[tuple[int, float | None, int]]:
    """[(startPeriod, limit, numberPhases)] of the composite, computed second by second."""
    t0 = secs(start)
    out: list[tuple[int, float | None, int]] = []
    for offset in range(duration_s):
        values = [in_unit(period.limit, p.schedule.rate_unit, unit, voltage_v, phases)
                  for p, period in purpose_winners(profiles, t0 + offset, connector_id=connector_id, tx=tx,
                                                   window_start=t0)]
        if max_current_a is not None:
            values.append(in_unit(max_current_a, "A", unit, voltage_v, phases))
        limit = floor_to_tenth(min(values)) if values else None
        if not out or out[-1][1] != limit:
            out.append((offset, limit, phases))
    return out


def reference_current_a(profiles: list[ChargingProfile], t: int, *, connector_id: int, tx: TxInfo | None,
                        window_start: int, voltage_v: float, phases: int) -> float | None:
    values = [in_unit(period.limit, p.schedule.rate_unit, "A", voltage_v, phases)
              for p, period in purpose_winners(profiles, t, connector_id=connector_id, tx=tx,
                                               window_start=window_start)]
    return min(values) if values else None
