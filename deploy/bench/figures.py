"""What a bench stage reports: figures (ours vs. a baseline measured in the same run), their ratio and target.

Every figure keeps its raw samples (one per repetition) and reports their median, so one disturbed
repetition on a shared machine does not decide the result. The ratio always reads "higher is better":
ours / baseline for rates, baseline / ours for costs (latency, memory, milliseconds per change).
"""

from __future__ import annotations

import enum
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Figure", "Goal", "Target", "median", "percentile"]


def median(values: Sequence[float]) -> float:
    """The median (NaN for no values)."""
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile by nearest rank (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return float(ordered[rank])


class Goal(enum.Enum):
    """What a target bounds."""

    RATIO_AT_LEAST = "ratio_at_least"  # ours relative to the baseline
    OURS_AT_LEAST = "ours_at_least"  # an absolute figure (events/s)
    OURS_AT_MOST = "ours_at_most"  # an absolute cost (milliseconds)


@dataclass(frozen=True)
class Target:
    """The issue's goal for a figure."""

    goal: Goal
    value: float

    def describe(self, unit: str) -> str:
        """The target in words, e.g. "ratio ≥ 0.8" or "≥ 20,000 events/s"."""
        if self.goal is Goal.RATIO_AT_LEAST:
            return f"ratio ≥ {self.value:.3g}"
        sign = "≥" if self.goal is Goal.OURS_AT_LEAST else "≤"
        return f"{sign} {self.value:,.0f} {unit}"


@dataclass
class Figure:
    """One measured figure: our median, the baseline's median (same run), their ratio, and the target."""

    key: str  # stable id, e.g. "produce.gateway_in_process"
    what: str  # what "ours" measures
    unit: str  # of ours and the baseline
    ours: list[float]  # one sample per repetition
    baseline: list[float]
    baseline_what: str
    higher_is_better: bool = True
    target: Target | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # supporting numbers (p50, CPU split, sizes)

    @property
    def ours_median(self) -> float:
        """Median of our samples."""
        return median(self.ours)

    @property
    def baseline_median(self) -> float:
        """Median of the baseline's samples."""
        return median(self.baseline)

    @property
    def ratio(self) -> float:
        """Ours / baseline for rates, baseline / ours for costs: above 1 means better than the baseline."""
        ours, base = self.ours_median, self.baseline_median
        if not (math.isfinite(ours) and math.isfinite(base)) or ours <= 0 or base <= 0:
            return math.nan
        return ours / base if self.higher_is_better else base / ours

    @property
    def met(self) -> bool | None:
        """Whether the target is met (None: no target)."""
        if self.target is None:
            return None
        if self.target.goal is Goal.RATIO_AT_LEAST:
            return bool(self.ratio >= self.target.value)
        if self.target.goal is Goal.OURS_AT_LEAST:
            return bool(self.ours_median >= self.target.value)
        return bool(self.ours_median <= self.target.value)

    def as_dict(self) -> dict[str, Any]:
        """JSON form (medians, samples, ratio, target and whether it is met)."""
        return {
            "what": self.what,
            "unit": self.unit,
            "ours": _finite(self.ours_median),
            "baseline": _finite(self.baseline_median),
            "baseline_what": self.baseline_what,
            "ratio": _finite(self.ratio),
            "higher_is_better": self.higher_is_better,
            "target": self.target.describe(self.unit) if self.target else None,
            "met": self.met,
            "samples": {"ours": [_finite(v) for v in self.ours], "baseline": [_finite(v) for v in self.baseline]},
            "notes": self.notes,
            "extra": self.extra,
        }


def _finite(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None
