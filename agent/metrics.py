"""Verification metrics over similarity scores: ROC AUC, TAR at FAR, thresholds. Pure numpy.

Used by the converter's verification report, by ``facelite eval`` and by the benchmarks, so
all three quote the same figures computed the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def roc_auc(same: np.ndarray, diff: np.ndarray) -> float:
    """Probability that a random same-person pair scores above a random different pair (ties count half)."""
    same = np.asarray(same, np.float64)
    diff = np.asarray(diff, np.float64)
    if same.size == 0 or diff.size == 0:
        raise ValueError("ROC AUC needs at least one same and one different pair")
    scores = np.concatenate([same, diff])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # average ranks for ties
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r_same = ranks[: same.size].sum()
    return float((r_same - same.size * (same.size + 1) / 2) / (same.size * diff.size))


def threshold_at_far(diff: np.ndarray, far: float) -> float:
    """Smallest threshold whose false-accept rate on ``diff`` is <= far (accept when score > threshold)."""
    diff = np.sort(np.asarray(diff, np.float64))[::-1]
    allowed = int(np.floor(far * diff.size))  # how many impostors may score above the threshold
    if allowed >= diff.size:
        return float(diff[-1])
    return float(diff[allowed])


def tar_at_far(same: np.ndarray, diff: np.ndarray, far: float) -> float:
    thr = threshold_at_far(diff, far)
    return float((np.asarray(same) > thr).mean())


def best_accuracy(same: np.ndarray, diff: np.ndarray) -> tuple[float, float]:
    """(accuracy, threshold) maximising (TP + TN) / N; accept when score >= threshold."""
    same = np.asarray(same, np.float64)
    diff = np.asarray(diff, np.float64)
    cands = np.unique(np.concatenate([same, diff]))
    best = (0.0, 0.0)
    n = same.size + diff.size
    for t in cands:
        acc = ((same >= t).sum() + (diff < t).sum()) / n
        if acc > best[0]:
            best = (float(acc), float(t))
    return best


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
