"""The metrics against brute force on small cases (random, with ties), as scikit-learn tests its ranking metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facelite.model.metrics import (
    CURVE_FARS,
    ExponentialTail,
    accept_rate,
    best_accuracy,
    bootstrap_rate_ci,
    calibration_curve,
    latency_summary,
    per_comparison_far,
    roc_auc,
    roc_points,
    threshold_at_far,
    visit_far,
    wilson_interval,
)

# Scores on a coarse grid, so ties between and within the classes are common.
scores = st.lists(st.integers(-5, 5).map(lambda v: v / 5), min_size=1, max_size=25)


def brute_auc(same: list[float], diff: list[float]) -> float:
    wins = sum((s > d) + 0.5 * (s == d) for s in same for d in diff)
    return wins / (len(same) * len(diff))


def brute_best_accuracy(same: list[float], diff: list[float]) -> float:
    candidates = [*sorted(set(same) | set(diff)), math.inf]
    n = len(same) + len(diff)
    return max((sum(s >= t for s in same) + sum(d < t for d in diff)) / n for t in candidates)


@settings(max_examples=300, deadline=None)
@given(scores, scores)
def test_auc_equals_pairwise_count(same: list[float], diff: list[float]) -> None:
    assert roc_auc(same, diff) == pytest.approx(brute_auc(same, diff), abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(scores, scores)
def test_best_accuracy_equals_exhaustive_search(same: list[float], diff: list[float]) -> None:
    acc, thr = best_accuracy(same, diff)
    assert acc == pytest.approx(brute_best_accuracy(same, diff), abs=1e-12)
    # The threshold it returns achieves that accuracy under the one rule (accept at >=).
    n = len(same) + len(diff)
    achieved = (sum(s >= thr for s in same) + sum(d < thr for d in diff)) / n
    assert achieved == pytest.approx(acc, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(scores, scores)
def test_roc_points_equal_rates_at_each_threshold(same: list[float], diff: list[float]) -> None:
    thresholds, far, tar = roc_points(same, diff)
    assert list(thresholds) == sorted(set(same) | set(diff), reverse=True)
    for t, f, r in zip(thresholds, far, tar):
        assert f == pytest.approx(np.mean(np.array(diff) >= t))
        assert r == pytest.approx(np.mean(np.array(same) >= t))


@settings(max_examples=300, deadline=None)
@given(scores, st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.5, 1.0]))
def test_threshold_at_far_is_the_smallest_that_keeps_the_rate(diff: list[float], far: float) -> None:
    thr = threshold_at_far(diff, far)
    assert np.mean(np.array(diff) >= thr) <= far + 1e-12
    # Any candidate threshold below it (each distinct score) lets more than `far` through.
    lower = [d for d in set(diff) if d < thr]
    for t in lower:
        assert np.mean(np.array(diff) >= t) > far


def test_best_accuracy_with_one_class_or_none() -> None:
    assert best_accuracy([0.2, 0.5], []) == (1.0, 0.2)  # all same: accept everything
    assert best_accuracy([], [0.2, 0.5]) == (1.0, float("inf"))  # all different: accept nothing
    with pytest.raises(ValueError, match="at least one pair"):
        best_accuracy([], [])


def test_threshold_at_far_refuses_the_kth_score_itself() -> None:
    diff = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    thr = threshold_at_far(diff, 0.1)  # one of ten may pass: 0.9 passes, 0.8 must not
    assert accept_rate(diff, thr) == 0.1
    assert 0.8 < thr < 0.9


def test_threshold_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one"):
        threshold_at_far([], 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        threshold_at_far([0.1], 1.5)


def test_curve_is_empirical_where_counts_allow_and_monotone() -> None:
    rng = np.random.default_rng(1)
    diff = rng.normal(0.0, 0.1, 200_000)
    same = rng.normal(0.6, 0.1, 2_000)
    curve = calibration_curve(same, diff)
    assert [p.far for p in curve] == sorted(CURVE_FARS, reverse=True)
    thresholds = [p.threshold for p in curve]
    assert thresholds == sorted(thresholds)  # stricter rate, never a lower threshold
    for p in curve:
        if p.far * diff.size >= 30:
            assert p.method == "empirical"
            assert accept_rate(diff, p.threshold) <= p.far
            assert p.threshold == threshold_at_far(diff, p.far)
        else:
            assert p.method == "exponential-tail"
        assert p.tar == accept_rate(same, p.threshold)


def test_exponential_tail_is_conservative_on_a_gaussian() -> None:
    """A Gaussian tail is lighter than exponential: the fit's thresholds sit above the true quantiles."""
    from statistics import NormalDist

    rng = np.random.default_rng(2)
    diff = rng.normal(0.0, 0.1, 1_000_000)
    tail = ExponentialTail.fit(diff, 300)
    for far in (1e-5, 1e-6, 1e-7):
        true_threshold = NormalDist(0.0, 0.1).inv_cdf(1 - far)
        assert tail.threshold(far) >= true_threshold
        assert tail.far(tail.threshold(far)) == pytest.approx(far)
    # At the anchor the fit agrees with the data it was fitted on.
    assert tail.p_u == pytest.approx(np.mean(diff >= tail.u))


def test_open_set_conversion_against_simulation() -> None:
    """1 - (1 - f)^N by simulation: N independent uniform comparisons, accept if any is below f."""
    rng = np.random.default_rng(3)
    for visit, n in ((1e-1, 10), (5e-2, 100)):
        f = per_comparison_far(visit, n)
        assert visit_far(f, n) == pytest.approx(visit, rel=1e-9)
        assert f == pytest.approx(visit / n, rel=0.06)  # about P / N for small P
        hits = (rng.random((40_000, n)) < f).any(axis=1).mean()
        lo, hi = wilson_interval(int(hits * 40_000), 40_000, z=4)
        assert lo <= visit <= hi
    assert per_comparison_far(1e-3, 1) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        per_comparison_far(0.0, 10)


def test_wilson_interval_brackets_the_rate() -> None:
    lo, hi = wilson_interval(0, 1000)
    assert lo == pytest.approx(0.0, abs=1e-15) and 0.002 < hi < 0.005  # "rule of three" territory: 3/1000
    lo, hi = wilson_interval(50, 100)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.19, abs=0.01)


def test_bootstrap_over_people_is_wider_for_clustered_errors() -> None:
    """Errors concentrated in a few people give a wider interval than the same count spread evenly."""
    trials = np.full(100, 20)
    spread = np.full(100, 1)  # 100 errors, one per person
    clustered = np.zeros(100, int)
    clustered[:5] = 20  # 100 errors, all from five people
    lo_s, hi_s = bootstrap_rate_ci(spread, trials, seed=0)
    lo_c, hi_c = bootstrap_rate_ci(clustered, trials, seed=0)
    assert lo_s <= 0.05 <= hi_s and lo_c <= 0.05 <= hi_c
    assert hi_c - lo_c > 2 * (hi_s - lo_s)
    assert bootstrap_rate_ci([0, 0, 0], [10, 10, 10])[1] > 0.0  # zero events is not "exactly zero"
    with pytest.raises(ValueError, match="one entry per person"):
        bootstrap_rate_ci([1, 2], [3])


def test_latency_summary_matches_linear_interpolation_of_the_sorted_times() -> None:
    """p50/p95 by linear interpolation between order statistics (numpy's default), whatever the input order."""
    times = [float(x) for x in range(100, 0, -1)]  # 100 .. 1, reversed on purpose
    ordered = sorted(times)

    def brute(q: float) -> float:
        pos = q * (len(ordered) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    lat = latency_summary(times)
    assert (lat.p50_ms, lat.p95_ms, lat.runs) == (round(brute(0.50), 3), round(brute(0.95), 3), 100)
    assert lat.as_manifest() == {"p50": lat.p50_ms, "p95": lat.p95_ms}
    assert lat.fps == pytest.approx(1000.0 / lat.p50_ms)
    with pytest.raises(ValueError, match="at least one run"):
        latency_summary([])
