"""Verification and open-set metrics over similarity scores. Pure numpy, sort once, cumulative sums.

One comparison rule everywhere: a comparison is **accepted when score >= threshold**. The gallery
(``Matcher``), the calibration curve, ``threshold_at_far`` and ``best_accuracy`` all use it, so a
threshold computed here means the same thing wherever it is applied.

Used by the converter (verification and calibration), by ``facelite eval`` and by the benchmarks, so
all of them quote the same figures computed the same way. ``tests/test_metrics.py`` checks every
function here against a brute-force loop on small cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The least number of impostor scores at or above a threshold for an empirical false-accept rate to be
# trusted: a rate of f is measured, not extrapolated, only when f * n_diff >= MIN_EVENTS (the issue's
# "at least 30 / FAR comparisons"). Below that, the curve uses the fitted tail (``ExponentialTail``).
MIN_EVENTS = 30


def _as_scores(values: np.ndarray | Sequence[float]) -> np.ndarray:
    return np.asarray(values, np.float64).ravel()


def roc_auc(same: np.ndarray | Sequence[float], diff: np.ndarray | Sequence[float]) -> float:
    """Probability that a random same-person pair scores above a random different pair (ties count half)."""
    same, diff = _as_scores(same), _as_scores(diff)
    if same.size == 0 or diff.size == 0:
        raise ValueError("ROC AUC needs at least one same and one different pair")
    scores = np.concatenate([same, diff])
    order = scores.argsort(kind="mergesort")
    sorted_scores = scores[order]
    # Average rank of each run of equal scores: ranks are 1-based, a run [i, j] gets (i + j) / 2 + 1.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size] - 1
    run_rank = (starts + ends) / 2 + 1
    ranks = np.empty(scores.size, np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts + 1)
    r_same = ranks[: same.size].sum()
    return float((r_same - same.size * (same.size + 1) / 2) / (same.size * diff.size))


def threshold_at_far(diff: np.ndarray | Sequence[float], far: float) -> float:
    """Smallest threshold whose false-accept rate on ``diff`` is <= ``far`` (accept when score >= threshold).

    With ``k = floor(far * n)`` impostors allowed, the threshold is the smallest float above the
    ``k+1``-th highest impostor score, so that one and all below it are refused.
    """
    diff = _as_scores(diff)
    if diff.size == 0:
        raise ValueError("a threshold needs at least one different-person score")
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"false-accept rate must be in [0, 1], got {far}")
    allowed = math.floor(far * diff.size + 1e-9)
    if allowed >= diff.size:
        return float(diff.min())
    kth = -np.partition(-diff, allowed)[allowed]  # the (allowed+1)-th highest score
    return float(np.nextafter(kth, np.inf))


def roc_points(
    same: np.ndarray | Sequence[float], diff: np.ndarray | Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, FAR, TAR) at every distinct score, accepting at score >= threshold."""
    same, diff = _as_scores(same), _as_scores(diff)
    if same.size == 0 or diff.size == 0:
        raise ValueError("a ROC curve needs at least one same and one different pair")
    scores = np.concatenate([same, diff])
    is_same = np.concatenate([np.ones(same.size, bool), np.zeros(diff.size, bool)])
    order = np.argsort(-scores, kind="mergesort")
    s, lab = scores[order], is_same[order]
    last_of_run = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    tar = np.cumsum(lab)[last_of_run] / same.size
    far = np.cumsum(~lab)[last_of_run] / diff.size
    return s[last_of_run], far, tar


def accept_rate(scores: np.ndarray | Sequence[float], threshold: float) -> float:
    scores = _as_scores(scores)
    return float((scores >= threshold).mean()) if scores.size else 0.0


def tar_at_far(same: np.ndarray | Sequence[float], diff: np.ndarray | Sequence[float], far: float) -> float:
    return accept_rate(same, threshold_at_far(diff, far))


def best_accuracy(same: np.ndarray | Sequence[float], diff: np.ndarray | Sequence[float]) -> tuple[float, float]:
    """(accuracy, threshold) maximising (TP + TN) / N when accepting at score >= threshold.

    Every candidate threshold (each distinct score, and +inf for "accept nothing") is evaluated from the
    cumulative counts of ``roc_points``: O(N log N), not O(N^2).
    """
    same, diff = _as_scores(same), _as_scores(diff)
    n = same.size + diff.size
    if n == 0:
        raise ValueError("best accuracy needs at least one pair")
    if same.size == 0 or diff.size == 0:
        # One class only: accept everything (all same) or nothing (all different) is exact.
        return 1.0, (float(same.min()) if same.size else float(np.inf))
    thresholds, far, tar = roc_points(same, diff)
    acc = (np.rint(tar * same.size) + diff.size - np.rint(far * diff.size)) / n
    best = int(np.argmax(acc))
    accept_none = diff.size / n
    if accept_none > acc[best]:
        return float(accept_none), float(np.inf)
    return float(acc[best]), float(thresholds[best])


@dataclass(frozen=True)
class VerificationScores:
    auc: float
    tar_at_far: dict[str, float]
    thresholds: dict[str, float]
    n_same: int
    n_diff: int


FARS = {"1e-2": 1e-2, "1e-3": 1e-3}


def verification_scores(same: np.ndarray, diff: np.ndarray) -> VerificationScores:
    return VerificationScores(
        auc=roc_auc(same, diff),
        tar_at_far={k: tar_at_far(same, diff, v) for k, v in FARS.items()},
        thresholds={k: threshold_at_far(diff, v) for k, v in FARS.items()},
        n_same=int(np.size(same)),
        n_diff=int(np.size(diff)),
    )


# -- calibration curve -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExponentialTail:
    """Impostor tail above ``u``: P(score >= t) = p_u * exp(-(t - u) / beta), fitted by maximum likelihood.

    Cosine similarities are bounded above, so their true tail is lighter than exponential: thresholds
    from this fit are at or above the real ones (conservative), which the evaluation then checks on
    people the fit never saw.
    """

    u: float
    p_u: float  # share of impostor scores >= u
    beta: float

    @classmethod
    def fit(cls, diff: np.ndarray, exceedances: int) -> ExponentialTail:
        diff = _as_scores(diff)
        k = min(max(exceedances, 2), diff.size - 1)
        top = -np.partition(-diff, k)[: k + 1]
        u = float(top.min())  # the (k+1)-th highest score
        excess = top[top > u] - u
        beta = float(excess.mean()) if excess.size else 1e-6
        return cls(u=u, p_u=float((diff >= u).mean()), beta=max(beta, 1e-6))

    def threshold(self, far: float) -> float:
        if far >= self.p_u:
            return self.u
        return self.u + self.beta * math.log(self.p_u / far)

    def far(self, threshold: float) -> float:
        if threshold <= self.u:
            return self.p_u
        return self.p_u * math.exp(-(threshold - self.u) / self.beta)


# Points of the stored curve: 1, 2, 5 per decade from 1e-1 down to 1e-6.
CURVE_FARS = (0.1, *tuple(float(f"{m}e-{e}") for e in range(2, 7) for m in (5, 2, 1)))


@dataclass(frozen=True)
class CurvePoint:
    far: float  # per-comparison false-accept rate
    threshold: float  # accept at score >= threshold
    tar: float  # true-accept rate of same-person comparisons at that threshold
    method: str  # "empirical" | "exponential-tail"


def calibration_curve(
    same: np.ndarray | Sequence[float],
    diff: np.ndarray | Sequence[float],
    fars: Sequence[float] = CURVE_FARS,
    min_events: int = MIN_EVENTS,
) -> list[CurvePoint]:
    """Threshold versus per-comparison FAR (with TAR), empirical where ``far * n_diff >= min_events``.

    Thresholds never decrease as the rate falls, so the curve can be interpolated.
    """
    same, diff = _as_scores(same), _as_scores(diff)
    if same.size == 0 or diff.size == 0:
        raise ValueError("a calibration curve needs same-person and different-person scores")
    tail = ExponentialTail.fit(diff, max(min_events * 10, int(1e-4 * diff.size)))
    points: list[CurvePoint] = []
    last = -np.inf
    for far in sorted(fars, reverse=True):
        if far * diff.size >= min_events:
            thr, method = threshold_at_far(diff, far), "empirical"
        else:
            thr, method = tail.threshold(far), "exponential-tail"
        thr = max(thr, last)
        last = thr
        points.append(CurvePoint(far=float(far), threshold=float(thr), tar=accept_rate(same, thr), method=method))
    return points


def per_comparison_far(visit_rate: float, templates: int) -> float:
    """Per-comparison false-accept rate that keeps a stranger's chance of matching any of ``templates`` at
    ``visit_rate``: a stranger is announced when the best of N scores passes, so with independent
    comparisons P = 1 - (1 - f)^N, hence f = 1 - (1 - P)^(1/N) (about P / N). Same-person templates are
    correlated, which only makes the true rate lower: the formula is conservative."""
    if not 0.0 < visit_rate < 1.0:
        raise ValueError(f"visit false-accept rate must be in (0, 1), got {visit_rate}")
    n = max(int(templates), 1)
    return -math.expm1(math.log1p(-visit_rate) / n)


def visit_far(per_comparison: float, templates: int) -> float:
    """The inverse of ``per_comparison_far``: a stranger's chance of passing one of N comparisons."""
    n = max(int(templates), 1)
    return -math.expm1(n * math.log1p(-min(per_comparison, 1.0 - 1e-15)))


# -- confidence intervals --------------------------------------------------------------------------


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial rate (sane at 0 and at n events, unlike the normal one)."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_rate_ci(
    successes: np.ndarray | Sequence[int],
    trials: np.ndarray | Sequence[int],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of sum(successes) / sum(trials) when the *people* are resampled with replacement.

    People, not comparisons, are the unit: comparisons of one person are not independent. The result
    is widened to cover the Wilson interval over comparisons too, because the bootstrap collapses where
    there is no event at all ("0 of n" must not read as "exactly 0").
    """
    k = np.asarray(successes, np.float64)
    n = np.asarray(trials, np.float64)
    if k.shape != n.shape or k.ndim != 1:
        raise ValueError("successes and trials must be 1-d arrays of the same length (one entry per person)")
    total_k, total_n = int(k.sum()), int(n.sum())
    if total_n == 0:
        return (0.0, 1.0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, k.size, size=(n_boot, k.size))
    num, den = k[idx].sum(axis=1), n[idx].sum(axis=1)
    rates = num[den > 0] / den[den > 0]
    alpha = (1 - level) / 2
    lo, hi = (float(np.quantile(rates, alpha)), float(np.quantile(rates, 1 - alpha))) if rates.size else (0.0, 1.0)
    w_lo, w_hi = wilson_interval(total_k, total_n)
    return (min(lo, w_lo), max(hi, w_hi))


@dataclass(frozen=True)
class Latency:
    """Milliseconds of one operation over ``runs`` timed repetitions: the one latency summary (p50 / p95) used by
    the converter's manifests and every benchmark."""

    p50_ms: float
    p95_ms: float
    runs: int

    @property
    def fps(self) -> float:
        return 1000.0 / self.p50_ms if self.p50_ms > 0 else 0.0

    def as_manifest(self) -> dict[str, float]:
        """The manifest's ``latency_ms`` form."""
        return {"p50": self.p50_ms, "p95": self.p95_ms}


def latency_summary(times_ms: Sequence[float]) -> Latency:
    if len(times_ms) == 0:
        raise ValueError("no timings to summarise: time at least one run")
    arr = np.asarray(times_ms, np.float64)
    return Latency(round(float(np.percentile(arr, 50)), 3), round(float(np.percentile(arr, 95)), 3), len(arr))
