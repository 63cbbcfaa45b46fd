"""Pilot PWM duty cycle <-> current (IEC 61851-1 tables A.7 and A.8)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hal.pilot_duty import current_for_duty, duty_percent_for_current


@pytest.mark.parametrize(("current_a", "duty"), [(6, 10.0), (16, 26.667), (32, 53.333), (51, 85.0),
                                                 (63, 89.2), (80, 96.0), (100, 96.0)])
def test_duty_for_current_iec61851_table_a7(current_a: float, duty: float) -> None:
    assert duty_percent_for_current(current_a) == pytest.approx(duty, abs=0.001)


@pytest.mark.parametrize("current_a", [0, 5.9, -1])
def test_below_6a_there_is_no_pwm(current_a: float) -> None:
    assert duty_percent_for_current(current_a) == 100.0
    assert current_for_duty(100.0) == 0.0


@pytest.mark.parametrize(("duty", "current_a"), [(5.0, 0.0), (8.0, 6.0), (9.9, 6.0), (50.0, 30.0), (90.0, 65.0),
                                                 (96.5, 80.0), (98.0, 0.0)])
def test_current_read_by_ev_iec61851_table_a8(duty: float, current_a: float) -> None:
    assert current_for_duty(duty) == pytest.approx(current_a)


@given(st.floats(min_value=6.0, max_value=51.0))
def test_round_trip_is_exact_to_a_hundredth_of_an_ampere_up_to_51a(current_a: float) -> None:
    assert current_for_duty(duty_percent_for_current(current_a)) == pytest.approx(current_a, abs=0.006)
