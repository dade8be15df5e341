"""Box matching for detector accuracy (facelite.tools.bench.boxmatch): pure functions, no models, fast."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from facelite.tools.bench.boxmatch import SIZE_BINS, greedy_match, iou_matrix, score_photo, size_bin
from facelite.vision.geometry import BBox


# -- brute-force references -----------------------------------------------------------------------
def brute_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU through the agent's own BBox, one pair at a time."""
    return np.array([[BBox(*map(float, p)).iou(BBox(*map(float, q))) for q in b] for p in a]).reshape(len(a), len(b))


def brute_greedy(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Greedy by definition: repeatedly take the free pair with the highest IoU (ties: lower det, lower gt)."""
    pairs: list[tuple[int, int]] = []
    free_d, free_g = set(range(iou.shape[0])), set(range(iou.shape[1]))
    while True:
        cands = [(-iou[d, g], d, g) for d in free_d for g in free_g if iou[d, g] >= threshold]
        if not cands:
            return pairs
        _, d, g = min(cands)
        pairs.append((d, g))
        free_d.discard(d)
        free_g.discard(g)


def max_matching_size(iou: np.ndarray, threshold: float) -> int:
    """The most pairs any one-to-one assignment can make (every permutation; small cases only)."""
    if iou.shape[0] > iou.shape[1]:
        iou = iou.T  # assign the shorter side into the longer one
    best = 0
    for perm in itertools.permutations(range(iou.shape[1]), iou.shape[0]):
        best = max(best, sum(1 for i, j in enumerate(perm) if iou[i, j] >= threshold))
    return best


def box(x: float, y: float, side: float) -> list[float]:
    return [x, y, x + side, y + side]


# -- hand-made cases ------------------------------------------------------------------------------
def test_iou_matrix_matches_bbox_iou_and_handles_empty_and_degenerate_boxes() -> None:
    a = np.array([box(0, 0, 10), box(5, 5, 10), [3, 3, 3, 8], [0, 0, 0, 0]], np.float64)
    b = np.array([box(0, 0, 10), box(20, 20, 4), [3, 3, 3, 8]], np.float64)
    np.testing.assert_allclose(iou_matrix(a, b), brute_iou(a, b))
    assert iou_matrix(a, b)[0, 0] == 1.0
    assert iou_matrix(a, b)[1, 0] == pytest.approx(25 / 175)
    assert iou_matrix(a, b)[2, 2] == 0.0  # zero area: no union, no overlap
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)
    assert iou_matrix(a, np.zeros((0, 4))).shape == (4, 0)


def test_greedy_takes_the_best_pair_first_even_when_that_leaves_a_face_unmatched() -> None:
    # det 0 overlaps gt 0 (0.68) and gt 1 (0.9); det 1 only gt 1 (0.6). Greedy gives det 0 to gt 1, then
    # det 1 has nothing left: one pair, where the best assignment has two. That is what greedy means.
    iou = np.array([[0.68, 0.9], [0.0, 0.6]])
    assert greedy_match(iou, 0.5) == [(0, 1)]
    assert max_matching_size(iou, 0.5) == 2


def test_ties_go_to_the_lower_detection_then_the_lower_truth() -> None:
    iou = np.array([[0.7, 0.7], [0.7, 0.7]])
    assert greedy_match(iou, 0.5) == [(0, 0), (1, 1)]


def test_threshold_is_inclusive_and_empty_inputs_match_nothing() -> None:
    assert greedy_match(np.array([[0.5]]), 0.5) == [(0, 0)]
    assert greedy_match(np.array([[0.4999]]), 0.5) == []
    assert greedy_match(np.zeros((0, 3)), 0.5) == []
    assert greedy_match(np.zeros((2, 0)), 0.5) == []


def test_greedy_equals_brute_force_on_random_small_cases() -> None:
    rng = random.Random(7)
    for _ in range(300):
        n_det, n_gt = rng.randint(0, 5), rng.randint(0, 5)
        # Boxes on a coarse grid so overlaps, ties and exact 0.5 IoUs actually happen.
        dets = np.array([box(rng.randint(0, 6) * 5, rng.randint(0, 6) * 5, rng.choice([10, 20])) for _ in range(n_det)])
        gts = np.array([box(rng.randint(0, 6) * 5, rng.randint(0, 6) * 5, rng.choice([10, 20])) for _ in range(n_gt)])
        iou = iou_matrix(dets.reshape(-1, 4), gts.reshape(-1, 4))
        np.testing.assert_allclose(iou, brute_iou(dets.reshape(-1, 4), gts.reshape(-1, 4)), atol=1e-12)
        pairs = greedy_match(iou, 0.5)
        assert pairs == brute_greedy(iou, 0.5)
        assert len(pairs) <= max_matching_size(iou, 0.5)


def test_score_photo_counts_hits_misses_false_positives_and_ignores_invalid_faces() -> None:
    truth = np.array([box(0, 0, 20), box(100, 100, 20), box(200, 200, 20)], np.float64)
    invalid = [False, False, True]
    dets = np.array([box(1, 1, 20), box(202, 201, 20), box(400, 400, 20), box(0, 2, 20)], np.float64)
    out = score_photo(dets, truth, invalid)
    assert out.gt == ("hit", "miss", "ignored")
    # The duplicate on face 0 is a false positive; the detection on the invalid face is not.
    assert out.det == ("tp", "ignored", "fp", "fp")
    assert out.false_positives == 2


def test_score_photo_with_no_detections_or_no_faces() -> None:
    truth = np.array([box(0, 0, 20)], np.float64)
    assert score_photo(np.zeros((0, 4)), truth, [False]).gt == ("miss",)
    assert score_photo(np.zeros((0, 4)), truth, [True]).gt == ("ignored",)
    empty = score_photo(np.array([box(0, 0, 20)]), np.zeros((0, 4)), [])
    assert empty.det == ("fp",) and empty.gt == ()
    with pytest.raises(ValueError):
        score_photo(np.zeros((0, 4)), truth, [])


def test_size_bins_are_by_the_longer_side_with_closed_lower_bounds() -> None:
    assert [label for label, _, _ in SIZE_BINS] == ["<16", "16-32", "32-64", ">=64"]
    assert size_bin([0, 0, 15.9, 3]) == "<16"
    assert size_bin([0, 0, 4, 16]) == "16-32"
    assert size_bin([10, 10, 41.9, 20]) == "16-32"
    assert size_bin([0, 0, 32, 1]) == "32-64"
    assert size_bin([0, 0, 5, 64]) == ">=64"
    with pytest.raises(ValueError):
        size_bin([10, 10, 0, 0])
