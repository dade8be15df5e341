"""Matching detections to ground-truth face boxes: pure numpy, no models (unit-tested against brute force).

Boxes are [N, 4] float arrays of (x1, y1, x2, y2) in pixels. Matching is greedy by IoU: the pair with the
highest IoU is taken first, then the next among boxes still free, down to the threshold. Ties go to the lower
detection index, then the lower ground-truth index, so a result never depends on sort stability.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

log = logging.getLogger(__name__)

IOU_THRESHOLD = 0.5
# Face size bins by the ground-truth box's longer side, in pixels: [lower, upper).
SIZE_BINS: tuple[tuple[str, float, float], ...] = (
    ("<16", 0.0, 16.0),
    ("16-32", 16.0, 32.0),
    ("32-64", 32.0, 64.0),
    (">=64", 64.0, float("inf")),
)

GtOutcome = Literal["hit", "miss", "ignored"]
DetOutcome = Literal["tp", "fp", "ignored"]


@dataclass(frozen=True)
class PhotoOutcome:
    """How one photo's detections and ground truth paired up."""

    gt: tuple[GtOutcome, ...]  # per ground-truth box: found, missed, or ignored (flagged invalid)
    det: tuple[DetOutcome, ...]  # per detection: on a valid face, false, or on an invalid face

    @property
    def false_positives(self) -> int:
        return sum(1 for d in self.det if d == "fp")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] IoU of every box of ``a`` with every box of ``b``; 0 where the union is empty."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0.0, None) * np.clip(a[:, 3] - a[:, 1], 0.0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0.0, None) * np.clip(b[:, 3] - b[:, 1], 0.0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def greedy_match(iou: np.ndarray, threshold: float = IOU_THRESHOLD) -> list[tuple[int, int]]:
    """(detection, ground truth) pairs, highest IoU first, each index used at most once, IoU >= threshold."""
    iou = np.asarray(iou, np.float64)
    if iou.size == 0:
        return []
    n_gt = iou.shape[1]
    # Row-major flat order is (det, gt) ascending, and a stable sort keeps it among equal IoUs.
    order = np.argsort(-iou.ravel(), kind="stable")
    used_det: set[int] = set()
    used_gt: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for flat in order:
        d, g = divmod(int(flat), n_gt)
        if iou[d, g] < threshold:
            break  # sorted: nothing further can pass
        if d in used_det or g in used_gt:
            continue
        used_det.add(d)
        used_gt.add(g)
        pairs.append((d, g))
    return pairs


def score_photo(
    detections: np.ndarray, truth: np.ndarray, invalid: Sequence[bool], threshold: float = IOU_THRESHOLD
) -> PhotoOutcome:
    """Outcome of one photo. Invalid ground-truth boxes take part in the matching (so a detection on one is
    not a false positive) but count neither as a hit nor as a miss, as WIDER FACE's own protocol does."""
    truth = np.asarray(truth, np.float64).reshape(-1, 4)
    detections = np.asarray(detections, np.float64).reshape(-1, 4)
    if len(invalid) != len(truth):
        raise ValueError(f"{len(invalid)} invalid flags for {len(truth)} ground-truth boxes")
    pairs = greedy_match(iou_matrix(detections, truth), threshold)
    gt: list[GtOutcome] = ["ignored" if bad else "miss" for bad in invalid]
    det: list[DetOutcome] = ["fp"] * len(detections)
    for d, g in pairs:
        if invalid[g]:
            det[d] = "ignored"
        else:
            det[d], gt[g] = "tp", "hit"
    return PhotoOutcome(tuple(gt), tuple(det))


def size_bin(box: Sequence[float]) -> str:
    """The SIZE_BINS label of a ground-truth box by its longer side."""
    side = max(float(box[2]) - float(box[0]), float(box[3]) - float(box[1]))
    for label, lower, upper in SIZE_BINS:
        if lower <= side < upper:
            return label
    raise ValueError(f"box {list(box)} has no size bin (negative side?)")
