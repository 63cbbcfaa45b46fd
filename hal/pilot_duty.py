"""Control-pilot PWM: current <-> duty cycle (IEC 61851-1 Annex A, tables A.7 and A.8).

Pure functions shared by every ControlPilot driver (the simulator's EV decodes
the duty cycle with the same table a real car uses).
"""

from __future__ import annotations

MIN_CURRENT_A = 6.0
MAX_CURRENT_A = 80.0
NO_PWM_DUTY_PERCENT = 100.0


def duty_percent_for_current(current_a: float) -> float:
    """The duty cycle an EVSE generates to offer current_a (IEC 61851-1 table A.7).

    6..51 A: duty = A / 0.6; 51..80 A: duty = A / 2.5 + 64. Below 6 A the EVSE
    must not signal a current at all (no PWM), never less than 10 %; above 80 A
    the table ends, so the offer is clamped.
    """
    if not current_a >= MIN_CURRENT_A:   # also catches NaN: a broken limit never reaches the PWM
        return NO_PWM_DUTY_PERCENT
    current_a = min(current_a, MAX_CURRENT_A)
    if current_a <= 51.0:
        return current_a / 0.6
    return current_a / 2.5 + 64.0


def current_for_duty(duty_percent: float) -> float:
    """The current an EV reads from the duty cycle (IEC 61851-1 table A.8); 0 when no current is offered.

    8 %..<10 %: 6 A; 10..85 %: duty x 0.6; 85..96 %: (duty - 64) x 2.5; 96..97 %: 80 A.
    Anything else (no PWM, digital communication at 5 %, out of range) offers nothing.
    Rounded to 0.01 A: a PWM generator has finite resolution, and the float
    round trip of A / 0.6 x 0.6 must not turn 16 A into 15.999999 A.
    """
    if 8.0 <= duty_percent < 10.0:
        return MIN_CURRENT_A
    if 10.0 <= duty_percent <= 85.0:
        return round(duty_percent * 0.6, 2)
    if 85.0 < duty_percent <= 96.0:
        return round((duty_percent - 64.0) * 2.5, 2)
    if 96.0 < duty_percent <= 97.0:
        return MAX_CURRENT_A
    return 0.0
