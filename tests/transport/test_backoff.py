"""Reconnect back-off: bounds, a monotone envelope, the cap (field-notes section 6)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chargepoint.transport.backoff import Backoff, backoff_delay_s

params = st.fixed_dictionaries({
    "initial_s": st.floats(0.01, 10.0),
    "factor": st.floats(1.0, 4.0),
    "jitter": st.floats(0.0, 1.0),
}).flatmap(lambda p: st.fixed_dictionaries({
    "initial_s": st.just(p["initial_s"]), "factor": st.just(p["factor"]), "jitter": st.just(p["jitter"]),
    "max_s": st.floats(p["initial_s"], 600.0)}))


@given(params, st.integers(0, 10_000), st.floats(0.0, 1.0, exclude_max=True))
def test_delay_lies_within_base_and_base_plus_jitter(p: dict[str, float], attempt: int, r: float) -> None:
    delay = backoff_delay_s(attempt, r, **p)
    base = p["initial_s"]
    for _ in range(attempt):  # the definition: multiply until the cap
        if base >= p["max_s"] or p["factor"] == 1:
            break
        base *= p["factor"]
    base = min(base, p["max_s"])
    assert base * (1 - 1e-9) <= delay <= base * (1 + p["jitter"]) * (1 + 1e-9)


@given(params, st.integers(0, 10_000))
def test_envelope_never_shrinks_with_more_attempts(p: dict[str, float], attempt: int) -> None:
    for r in (0.0, 0.999):
        assert backoff_delay_s(attempt + 1, r, **p) >= backoff_delay_s(attempt, r, **p)


@given(params, st.integers(0, 10**9), st.floats(0.0, 1.0))
def test_delay_is_capped_even_after_months_offline(p: dict[str, float], attempt: int, r: float) -> None:
    assert backoff_delay_s(attempt, r, **p) <= p["max_s"] * (1 + p["jitter"]) * (1 + 1e-9)


def test_defaults_start_at_a_few_seconds_double_then_stay_constant() -> None:
    lows = [backoff_delay_s(n, 0.0) for n in range(8)]
    assert lows == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert backoff_delay_s(0, 0.999) > 2.9  # jitter adds up to 50 %


def test_jitter_comes_from_the_injected_random_source() -> None:
    draws = iter([0.0, 1.0, 0.5])
    b = Backoff(initial_s=2.0, max_s=60.0, jitter=0.5, rand=lambda: next(draws))
    assert [b.next_delay_s() for _ in range(3)] == [2.0, 6.0, 10.0]


def test_reset_after_a_connection_that_stayed_up_starts_again_from_the_initial_delay() -> None:
    b = Backoff(initial_s=1.0, max_s=8.0, jitter=0.0, rand=lambda: 0.0)
    assert [b.next_delay_s() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    b.reset()
    assert b.next_delay_s() == 1.0


@pytest.mark.parametrize(("initial_s", "max_s", "factor", "jitter"),
                         [(0.0, 60.0, 2.0, 0.5), (5.0, 1.0, 2.0, 0.5), (2.0, 60.0, 0.5, 0.5), (2.0, 60.0, 2.0, -0.1)])
def test_nonsense_parameters_are_refused(initial_s: float, max_s: float, factor: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial_s=initial_s, max_s=max_s, factor=factor, jitter=jitter)
