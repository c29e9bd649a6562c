"""Bootstrap confidence intervals over scenes (images), paired across strategies.

Every strategy answers the same scenes, so one set of resampled scene indices serves all
of them: the interval of a strategy's figure, and of its difference to a baseline, come
from the same resamples (a paired bootstrap; Efron & Tibshirani 1993, ch. 13, percentile
intervals).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def pct(self) -> str:
        """``12.3 [8.1, 16.0]`` in percent."""
        return f"{100 * self.value:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def resamples(n_units: int, rounds: int, seed: int = 0) -> list[list[int]]:
    """``rounds`` draws of ``n_units`` unit indices with replacement (seeded)."""
    rng = random.Random(seed)
    return [[rng.randrange(n_units) for _ in range(n_units)] for _ in range(rounds)]


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    pos = q * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def interval(
    units: Sequence[T],
    statistic: Callable[[list[T]], float],
    draws: list[list[int]],
    level: float = 0.95,
) -> Interval:
    """The statistic on ``units`` and its percentile interval over ``draws``."""
    stats = [statistic([units[i] for i in d]) for d in draws]
    tail = (1 - level) / 2
    return Interval(statistic(list(units)), _percentile(stats, tail), _percentile(stats, 1 - tail))
