"""Reconnect delays: a few seconds plus random jitter, doubling a few times, then
constant (field-notes section 6). The jitter spreads a fleet of chargers that all
lost a restarting central system at the same moment. Pure: randomness is injected.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

INITIAL_DELAY_S = 2.0
MAX_DELAY_S = 60.0    # 2, 4, 8, 16, 32, 60, 60, ... before jitter
FACTOR = 2.0
JITTER = 0.5          # up to +50 %


def backoff_delay_s(attempt: int, r: float, *, initial_s: float = INITIAL_DELAY_S, max_s: float = MAX_DELAY_S,
                    factor: float = FACTOR, jitter: float = JITTER) -> float:
    """Delay before reconnect attempt `attempt` (0 = first retry after a failure).

    base = min(initial_s * factor**attempt, max_s); the delay is base * (1 + jitter * r)
    for r in [0, 1), so it lies in [base, base * (1 + jitter)) and never exceeds
    max_s * (1 + jitter).
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    exponent = 0
    if factor > 1 and max_s > initial_s:
        # Past this exponent the base is at the cap anyway; factor**attempt would overflow
        # for a charger that has been offline for months.
        exponent = min(attempt, math.ceil(math.log(max_s / initial_s, factor)))
    base_s = min(initial_s * factor**exponent, max_s)
    return base_s * (1.0 + jitter * min(max(r, 0.0), 1.0))


class Backoff:
    """The attempt counter around backoff_delay_s; reset() after a connection that stayed up."""

    def __init__(self, *, initial_s: float = INITIAL_DELAY_S, max_s: float = MAX_DELAY_S,
                 factor: float = FACTOR, jitter: float = JITTER,
                 rand: Callable[[], float] = random.random) -> None:
        if not 0 < initial_s <= max_s or factor < 1 or jitter < 0:
            raise ValueError("need 0 < initial_s <= max_s, factor >= 1, jitter >= 0")
        self.initial_s, self.max_s, self.factor, self.jitter = initial_s, max_s, factor, jitter
        self._rand = rand
        self.attempt = 0

    def next_delay_s(self) -> float:
        delay_s = backoff_delay_s(self.attempt, self._rand(), initial_s=self.initial_s, max_s=self.max_s,
                                  factor=self.factor, jitter=self.jitter)
        self.attempt += 1
        return delay_s

    def reset(self) -> None:
        self.attempt = 0
