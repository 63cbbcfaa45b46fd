"""IEC 61851-1 pilot mapping and the pure decide/step functions (field-notes section 4)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chargepoint.evse.iec61851 import (
    MIN_CURRENT_A,
    Inputs,
    Memory,
    Timing,
    current_for_duty_percent,
    decide,
    duty_percent_for_current,
    offered_current_a,
    step,
    stopping_faults,
)
from hal.interfaces import CpState, Fault

# --------------------------------------------------------------------------- duty cycle


@pytest.mark.parametrize(("current_a", "duty_percent"), [
    (0.0, 100.0),          # pause: no PWM
    (-3.0, 100.0),
    (5.9, 100.0),          # below 6 A: never signal < 10 %
    (6.0, 10.0),           # 6 A -> 10 %
    (10.0, 10.0 / 0.6),
    (16.0, 16.0 / 0.6),    # 26.67 %
    (32.0, 32.0 / 0.6),    # 53.33 %
    (51.0, 85.0),          # top of the A / 0.6 range
    (52.0, 52.0 / 2.5 + 64),
    (63.0, 89.2),          # A / 2.5 + 64
    (80.0, 96.0),          # top of the table
    (81.0, 96.0),          # clamps to 80 A
    (200.0, 96.0),
    (math.nan, 100.0),
])
def test_duty_percent_for_current_field_notes_4_table(current_a: float, duty_percent: float) -> None:
    assert duty_percent_for_current(current_a) == pytest.approx(duty_percent)


@pytest.mark.parametrize(("duty_percent", "current_a"), [
    (100.0, 0.0), (5.0, 0.0), (7.9, 0.0), (8.0, 6.0), (9.9, 6.0), (10.0, 6.0), (50.0, 30.0),
    (85.0, 51.0), (89.2, 63.0), (96.0, 80.0), (96.5, 80.0), (97.5, 0.0),
])
def test_current_for_duty_percent_iec61851_annex_a_ev_side(duty_percent: float, current_a: float) -> None:
    assert current_for_duty_percent(duty_percent) == pytest.approx(current_a)


@given(st.floats(min_value=6.0, max_value=80.0))
def test_duty_round_trip_never_offers_more_than_asked(current_a: float) -> None:
    # An EV decoding our duty never reads more than we meant; exact outside 51..52.5 A,
    # where the two IEC formulas overlap and the EV reads slightly less.
    duty = duty_percent_for_current(current_a)
    assert 10.0 <= duty <= 96.0
    decoded = current_for_duty_percent(duty)
    assert decoded <= current_a + 1e-9
    if not 51.0 < current_a < 52.5:
        assert decoded == pytest.approx(current_a)


@given(st.floats(min_value=6.0, max_value=79.5))
def test_duty_is_monotonic_within_each_formula_range(current_a: float) -> None:
    # The two field-notes formulas meet with a dip at 51 A (85 % vs 84.4 %); each is monotonic.
    higher_a = current_a + 0.5
    if (current_a <= 51.0) == (higher_a <= 51.0):
        assert duty_percent_for_current(current_a) < duty_percent_for_current(higher_a)


def test_duty_mapping_agrees_with_the_hal_pilot_drivers() -> None:
    # The sim's EV decodes with hal.pilot_duty: both tables must say the same thing.
    pilot_duty = pytest.importorskip("hal.pilot_duty")
    for tenth_a in range(0, 900, 3):
        current_a = tenth_a / 10
        assert duty_percent_for_current(current_a) == pytest.approx(pilot_duty.duty_percent_for_current(current_a))


# --------------------------------------------------------------------------- offered current


@pytest.mark.parametrize(("args", "expected_a"), [
    ((32.0, None, None, None), 32.0),
    ((32.0, 20.0, None, None), 20.0),       # cable rating
    ((32.0, None, 16.0, None), 16.0),       # OCPP limit
    ((32.0, 63.0, 16.0, 10.0), 10.0),       # station limit
    ((32.0, 13.0, 16.0, 20.0), 13.0),
    ((32.0, None, 6.0, None), 6.0),
    ((32.0, None, 5.9, None), 0.0),         # below 6 A: pause
    ((32.0, None, 0.0, None), 0.0),
    ((32.0, 0.0, None, None), 0.0),         # invalid cable
    ((100.0, None, None, None), 80.0),      # top of the pilot table
])
def test_offered_current_is_min_of_limits_present_field_notes_4(args: tuple[float, float | None, float | None,
                                                                            float | None], expected_a: float) -> None:
    assert offered_current_a(*args) == expected_a


# --------------------------------------------------------------------------- decide: safety invariants

ALL_FAULT_SETS = [frozenset(c) for n in range(3) for c in itertools.combinations(list(Fault), n)]


def _check_invariants(inputs: Inputs, relay_closed: bool, offer_a: float) -> None:
    if relay_closed:
        assert inputs.cp_state in (CpState.C, CpState.D), "contactor closed without an EV asking (A/B/E/F)"
        assert not stopping_faults(inputs.faults), "contactor closed with a fault that stops charging"
        assert offer_a >= MIN_CURRENT_A, "contactor closed without PWM"
        assert inputs.energy_allowed and inputs.available
    assert offer_a == 0.0 or offer_a >= MIN_CURRENT_A, "never offer between 0 and 6 A"
    if offer_a > 0:
        assert inputs.cp_state in (CpState.B, CpState.C, CpState.D)
        assert inputs.energy_allowed and inputs.available and not stopping_faults(inputs.faults)
        assert offer_a <= min(x for x in (inputs.connector_max_a, inputs.limit_a, inputs.cable_rating_a,
                                          inputs.station_limit_a) if x is not None)


@pytest.mark.parametrize("cp_state", list(CpState))
@pytest.mark.parametrize("faults", ALL_FAULT_SETS, ids=lambda f: "+".join(sorted(f)) or "none")
def test_decide_safety_invariants_all_states_and_faults(cp_state: CpState, faults: frozenset[Fault]) -> None:
    for energy_allowed, available, limit_a in itertools.product((False, True), (False, True), (None, 5.9, 6, 16)):
        inputs = Inputs(cp_state=cp_state, faults=faults, energy_allowed=energy_allowed, available=available,
                        limit_a=limit_a, connector_max_a=32.0)
        out = decide(inputs)
        _check_invariants(inputs, out.relay_closed, out.offer_current_a)
        if stopping_faults(faults) or not available:
            assert out.offer_current_a == 0.0 and not out.relay_closed


def test_decide_charges_in_c_with_energy_allowed() -> None:
    out = decide(Inputs(cp_state=CpState.C, energy_allowed=True, limit_a=16.0))
    assert (out.offer_current_a, out.relay_closed, out.fault_signal, out.lock) == (16.0, True, False, True)
    assert out.duty_percent == pytest.approx(16 / 0.6)


def test_decide_b_offers_pwm_but_keeps_contactor_open_iec61851_a3() -> None:
    out = decide(Inputs(cp_state=CpState.B, energy_allowed=True))
    assert out.offer_current_a == 32.0 and not out.relay_closed and out.lock


def test_decide_limit_below_6a_pauses_pwm_and_opens_contactor() -> None:
    out = decide(Inputs(cp_state=CpState.C, energy_allowed=True, limit_a=4.0))
    assert out.offer_current_a == 0.0 and out.duty_percent == 100.0 and not out.relay_closed


def test_decide_ground_fault_drives_state_f_and_opens() -> None:
    out = decide(Inputs(cp_state=CpState.C, faults=frozenset({Fault.GROUND_FAULT}), energy_allowed=True))
    assert out.fault_signal and not out.relay_closed and out.offer_current_a == 0.0


def test_decide_pilot_fault_stops_without_driving_f() -> None:
    out = decide(Inputs(cp_state=CpState.E, faults=frozenset({Fault.PILOT_FAULT}), energy_allowed=True))
    assert not out.fault_signal and not out.relay_closed and out.offer_current_a == 0.0


def test_decide_unavailable_drives_state_f() -> None:
    out = decide(Inputs(cp_state=CpState.B, available=False))
    assert out.fault_signal and out.offer_current_a == 0.0


def test_decide_state_d_needs_ventilation() -> None:
    assert decide(Inputs(cp_state=CpState.D, energy_allowed=True)).relay_closed
    assert not decide(Inputs(cp_state=CpState.D, energy_allowed=True, ventilation_available=False)).relay_closed


def test_decide_lock_follows_session_and_welded_contactor() -> None:
    assert not decide(Inputs(cp_state=CpState.A, energy_allowed=True)).lock
    assert not decide(Inputs(cp_state=CpState.B, energy_allowed=False)).lock
    assert decide(Inputs(cp_state=CpState.B, energy_allowed=True)).lock
    # A welded contactor may keep the socket live: keep the cable locked.
    assert decide(Inputs(cp_state=CpState.B, faults=frozenset({Fault.RELAY_WELD}))).lock


# --------------------------------------------------------------------------- step: timed rules

TIMING = Timing(raise_min_interval_s=5.0, relay_open_grace_s=3.0)


def _run(inputs: Inputs, memory: Memory, now_s: float):
    out, memory = step(inputs, memory, now_s, TIMING)
    _check_invariants_step(inputs, out.relay_closed, out.offer_current_a, memory)
    return out, memory


def _check_invariants_step(inputs: Inputs, relay_closed: bool, offer_a: float, memory: Memory) -> None:
    assert offer_a == 0.0 or offer_a >= MIN_CURRENT_A
    if relay_closed:
        assert inputs.cp_state in (CpState.C, CpState.D)
        assert not stopping_faults(inputs.faults)


def test_step_first_offer_is_immediate_then_raises_rate_limited() -> None:
    charging = Inputs(cp_state=CpState.C, energy_allowed=True, limit_a=10.0)
    out, mem = _run(charging, Memory(), 100.0)
    assert out.offer_current_a == 10.0 and out.relay_closed
    out, mem = _run(Inputs(cp_state=CpState.C, energy_allowed=True, limit_a=20.0), mem, 101.0)
    assert out.offer_current_a == 10.0, "raise within 5 s of the last one is deferred"
    out, mem = _run(Inputs(cp_state=CpState.C, energy_allowed=True, limit_a=20.0), mem, 105.0)
    assert out.offer_current_a == 20.0
    out, mem = _run(Inputs(cp_state=CpState.C, energy_allowed=True, limit_a=8.0), mem, 105.1)
    assert out.offer_current_a == 8.0, "a lowering is never delayed"


def test_step_resume_from_pause_is_a_raise_and_keeps_contactor_open_until_applied() -> None:
    _, mem = _run(Inputs(cp_state=CpState.C, energy_allowed=True, limit_a=16.0), Memory(), 0.0)
    out, mem = _run(Inputs(cp_state=CpState.B, energy_allowed=True, limit_a=0.0), mem, 1.0)
    assert out.offer_current_a == 0.0 and not out.relay_closed
    # The EV would go to C only with PWM; if it were in C anyway, no PWM -> no contactor.
    out, mem = _run(Inputs(cp_state=CpState.C, energy_allowed=True, limit_a=16.0), mem, 2.0)
    assert out.offer_current_a == 0.0 and not out.relay_closed
    out, mem = _run(Inputs(cp_state=CpState.C, energy_allowed=True, limit_a=16.0), mem, 5.0)
    assert out.offer_current_a == 16.0 and out.relay_closed


def test_step_pwm_off_then_contactor_after_ev_leaves_c_or_grace() -> None:
    _, mem = _run(Inputs(cp_state=CpState.C, energy_allowed=True), Memory(), 0.0)
    # Authorization ends: PWM off at once, contactor still closed while the EV is in C.
    out, mem = _run(Inputs(cp_state=CpState.C, energy_allowed=False), mem, 10.0)
    assert out.offer_current_a == 0.0 and out.relay_closed
    out, mem = _run(Inputs(cp_state=CpState.C, energy_allowed=False), mem, 12.9)
    assert out.relay_closed
    out, mem = _run(Inputs(cp_state=CpState.C, energy_allowed=False), mem, 13.0)
    assert not out.relay_closed, "grace over: opened even though the EV is still in C"
    # The EV that does react: opens as soon as it reads B.
    _, mem = _run(Inputs(cp_state=CpState.C, energy_allowed=True), Memory(), 0.0)
    out, mem = _run(Inputs(cp_state=CpState.C, energy_allowed=False), mem, 10.0)
    assert out.relay_closed
    out, mem = _run(Inputs(cp_state=CpState.B, energy_allowed=False), mem, 10.1)
    assert not out.relay_closed


def test_step_fault_and_unplug_open_contactor_without_grace() -> None:
    _, mem = _run(Inputs(cp_state=CpState.C, energy_allowed=True), Memory(), 0.0)
    out, _ = _run(Inputs(cp_state=CpState.C, energy_allowed=True, faults=frozenset({Fault.OVERCURRENT})), mem, 0.1)
    assert not out.relay_closed and out.fault_signal
    out, _ = _run(Inputs(cp_state=CpState.A, energy_allowed=True), mem, 0.1)
    assert not out.relay_closed


@given(st.lists(st.tuples(
    st.sampled_from(list(CpState)),
    st.sets(st.sampled_from(list(Fault)), max_size=2),
    st.booleans(), st.booleans(),
    st.one_of(st.none(), st.floats(min_value=0, max_value=100)),
    st.floats(min_value=0.0, max_value=4.0)), max_size=40))
def test_step_invariants_hold_over_any_sequence(seq) -> None:
    memory, now_s = Memory(), 0.0
    for cp_state, faults, energy_allowed, available, limit_a, dt_s in seq:
        now_s += dt_s
        inputs = Inputs(cp_state=cp_state, faults=frozenset(faults), energy_allowed=energy_allowed,
                        available=available, limit_a=limit_a)
        prev = memory
        out, memory = step(inputs, memory, now_s, TIMING)
        _check_invariants_step(inputs, out.relay_closed, out.offer_current_a, memory)
        if out.relay_closed and not prev.relay_closed:
            assert out.offer_current_a >= MIN_CURRENT_A, "the contactor never closes without PWM"
        if out.relay_closed and out.offer_current_a == 0.0:
            # Only the grace keeps a contactor closed without PWM, and only briefly.
            assert prev.relay_closed and memory.offer_withdrawn_s is not None
            assert now_s - memory.offer_withdrawn_s < TIMING.relay_open_grace_s
        if out.offer_current_a > prev.offer_current_a and prev.last_raise_s is not None:
            assert now_s - prev.last_raise_s >= TIMING.raise_min_interval_s
        assert out.offer_current_a <= max(decide(inputs).offer_current_a, 0.0) or \
            out.offer_current_a == prev.offer_current_a
