"""Order statistics of timing samples: quantiles and the median with its quartiles."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence


def quantile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile of an ascending sample, by linear interpolation."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclasses.dataclass(frozen=True)
class Spread:
    """Median and quartiles of a sample (quartiles by linear interpolation)."""

    median: float
    q25: float
    q75: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = sorted(float(v) for v in values)
        if not values:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(quantile(values, 0.5), quantile(values, 0.25), quantile(values, 0.75), len(values))

    @property
    def iqr(self) -> float:
        return self.q75 - self.q25
