"""Figures read "higher is better" whatever they measure, and say whether their target is met."""

from __future__ import annotations

import math

from deploy.bench.figures import Figure, Goal, Target, median, percentile


def figure(ours: list[float], baseline: list[float], *, higher: bool = True, target: Target | None = None) -> Figure:
    return Figure("s.f", "ours", "u", ours, baseline, "base", higher_is_better=higher, target=target)


def test_the_ratio_of_medians_compares_rates_directly_and_costs_inversely() -> None:
    rate = figure([100, 300, 200], [400, 400, 1_000])
    assert (rate.ours_median, rate.baseline_median, rate.ratio) == (200, 400, 0.5)
    cost = figure([20], [10], higher=False)
    assert cost.ratio == 0.5


def test_targets_bound_the_ratio_or_our_own_figure() -> None:
    assert figure([50], [100], target=Target(Goal.RATIO_AT_LEAST, 0.5)).met is True
    assert figure([49], [100], target=Target(Goal.RATIO_AT_LEAST, 0.5)).met is False
    assert figure([20_000], [1], target=Target(Goal.OURS_AT_LEAST, 20_000)).met is True
    assert figure([101], [5], higher=False, target=Target(Goal.OURS_AT_MOST, 100)).met is False
    assert figure([1], [1]).met is None


def test_a_missing_or_zero_sample_gives_no_ratio_and_no_crash() -> None:
    assert math.isnan(figure([], [1]).ratio)
    assert math.isnan(figure([0], [1]).ratio)
    assert figure([], [1]).as_dict()["ours"] is None


def test_medians_and_nearest_rank_percentiles() -> None:
    assert median([3, 1, 2]) == 2
    assert math.isnan(median([]))
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (50, 99, 100)
    assert math.isnan(percentile([], 0.5))


def test_targets_describe_themselves_in_words() -> None:
    assert Target(Goal.RATIO_AT_LEAST, 0.8).describe("events/s") == "ratio ≥ 0.8"
    assert Target(Goal.OURS_AT_LEAST, 25_000).describe("rows/s") == "≥ 25,000 rows/s"
    assert Target(Goal.OURS_AT_MOST, 100).describe("ms") == "≤ 100 ms"
