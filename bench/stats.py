"""Small statistics for the benchmarks: percentiles and medians of a list of figures."""

from __future__ import annotations

import math
import statistics


def pct(values, p: float) -> float:
    """The p-th percentile (nearest rank) of values; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def median(values) -> float:
    return statistics.median(values) if values else 0.0
