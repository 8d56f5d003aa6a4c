"""Statistics over repeated runs: warm-up runs are discarded; median and spread of what is left."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """Median, minimum, maximum and relative spread ((max - min) / median) of a sample."""

    n: int
    median: float
    min: float
    max: float

    @property
    def spread(self) -> float:
        return (self.max - self.min) / self.median if self.median > 0 else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "median": self.median, "min": self.min, "max": self.max,
                "spread": round(self.spread, 6)}


def summarise(values: Sequence[float]) -> Summary | None:
    """The summary of ``values`` (None for an empty sample)."""
    if not values:
        return None
    return Summary(n=len(values), median=float(statistics.median(values)), min=float(min(values)),
                   max=float(max(values)))
