"""Face quality gate: decide whether a detected face is worth embedding.

Three checks, in this order (the first failure is the reason, so the agent can count them):
``too_small`` (shorter side of the visible box below ``min_size`` px), ``blurry`` (sharpness below
``min_sharpness``), ``pose`` (|yaw| > ``max_yaw`` or |pitch| > ``max_pitch`` degrees, or no landmarks
to estimate them from).

Sharpness is the variance of the Laplacian of the grey face crop resized to a fixed
``SHARPNESS_SIZE`` square: fixing the size makes faces of any resolution comparable, and the size is
that of a typical embedder input, so the number measures the blur the embedder will see.

Yaw and pitch come from the landmarks under a weak-perspective model of a rigid face (see
``estimate_pose``). They are rough (+-10 to 20 degrees with BlazeFace's landmarks): enough to keep
profiles and heads bowed over a phone out of the gallery, not a head-pose estimator.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from facelite.errors import ConfigError, ImageError
from facelite.vision.align import TEMPLATES
from facelite.vision.geometry import Face
from facelite.vision.imageio import to_bgr

log = logging.getLogger(__name__)

Reason = Literal["too_small", "blurry", "pose"]
REASONS: tuple[Reason, ...] = ("too_small", "blurry", "pose")

SHARPNESS_SIZE = 112  # px, side of the square the face crop is resized to before the Laplacian

# Depth of the nose tip in front of the eyes, relative to half the inter-ocular distance (YAW) and
# to the eye-to-mouth height (PITCH). From a generic adult head (pupils 63 mm apart, nose tip about
# 20 mm in front of them, eyes to mouth about 70 mm); individual faces differ, hence "rough".
NOSE_DEPTH_YAW = 0.65
NOSE_DEPTH_PITCH = 0.30


def _template_nose_ratio() -> float:
    """Where the nose tip sits between eye line (0) and mouth line (1) in a frontal face, for the
    5-point (mouth corners) landmarks: taken from the ArcFace alignment template, so the gate and the
    aligner agree on what 'frontal' is."""
    pts, _ = TEMPLATES["arcface"]
    eye_y = (pts["left_eye"][1] + pts["right_eye"][1]) / 2
    return (pts["nose"][1] - eye_y) / (pts["mouth_center"][1] - eye_y)


FRONTAL_NOSE_RATIO = _template_nose_ratio()  # 0.494
# BlazeFace's nose keypoint sits lower on the nose than the 5-point detectors' one: over the 85
# people photos (mostly frontal portraits) its median ratio is 0.569, which with the template value
# would read as ~12 degrees of chin-down pitch on every face.
BLAZEFACE_FRONTAL_NOSE_RATIO = 0.57


@dataclass(frozen=True)
class Quality:
    score: float  # 0..1, higher is better: for picking the best face of a track under one gate
    size: float  # px, shorter side of the box clipped to the image
    sharpness: float  # variance of the Laplacian at SHARPNESS_SIZE
    yaw: float  # degrees, + = nose towards image right; NaN when it cannot be estimated
    pitch: float  # degrees, + = chin up (nose towards the eye line); NaN when it cannot be estimated
    passed: bool
    reason: Reason | None  # first failed check, None when passed


@dataclass(frozen=True)
class QualityGate:
    min_size: int  # px
    min_sharpness: float
    max_yaw: float  # degrees
    max_pitch: float  # degrees

    def __post_init__(self) -> None:
        checks = (
            ("min_size", self.min_size, 1, 10_000),
            ("min_sharpness", self.min_sharpness, 0.0, 1e6),
            ("max_yaw", self.max_yaw, 1.0, 90.0),
            ("max_pitch", self.max_pitch, 1.0, 90.0),
        )
        for name, value, lo, hi in checks:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"quality.{name} must be a number, got {value!r}")
            if not lo <= value <= hi:
                raise ConfigError(f"quality.{name} = {value} is outside {lo}..{hi}")

    def assess(self, image_bgr: np.ndarray, face: Face) -> Quality:
        """Measure ``face`` in ``image_bgr`` and apply the checks; never raises on odd frames/faces."""
        size, sharpness = measure_crop(image_bgr, face)
        yaw, pitch = estimate_pose(face)
        reason: Reason | None = None
        if size < self.min_size:
            reason = "too_small"
        elif sharpness < self.min_sharpness:
            reason = "blurry"
        elif not (abs(yaw) <= self.max_yaw and abs(pitch) <= self.max_pitch):  # NaN fails here
            reason = "pose"
        return Quality(self._score(size, sharpness, yaw, pitch), size, sharpness, yaw, pitch, reason is None, reason)

    def _score(self, size: float, sharpness: float, yaw: float, pitch: float) -> float:
        """Product of three terms in 0..1; each is 0.5 exactly at its limit and 1 at twice the margin
        (size, sharpness) or frontal (pose)."""
        s_size = min(1.0, size / (2.0 * self.min_size))
        s_sharp = 1.0 if self.min_sharpness == 0 else min(1.0, sharpness / (2.0 * self.min_sharpness))
        if math.isnan(yaw) or math.isnan(pitch):
            s_pose = 0.0
        else:
            worst = max(abs(yaw) / self.max_yaw, abs(pitch) / self.max_pitch)
            s_pose = min(1.0, max(0.0, 1.0 - 0.5 * worst))
        return float(s_size * s_sharp * s_pose)


# Chosen from the 85 people photos (portraits) with BlazeFace full range: their faces are >= 113 px,
# sharpness >= 83 (median 700), |yaw| <= 42, |pitch| <= 30. Gaussian blur of sigma = face/50 brings
# sharpness to 7-26 (median 13), face/25 to <= 9; the same faces shrunk to 40 px measure 18-121, to
# 24 px 8-35, so 15 rejects clearly blurred faces and keeps sharp 40 px ones. BlazeFace landmarks are
# coarse (yaw of a photo and of its mirror image disagree by up to 21 degrees, pitch by up to 17),
# so the pose limits leave that much margin over real portraits.
DEFAULT_GATE = QualityGate(min_size=40, min_sharpness=15.0, max_yaw=50.0, max_pitch=40.0)


def measure_crop(image_bgr: np.ndarray, face: Face) -> tuple[float, float]:
    """(size, sharpness) of the face box clipped to the image; (0, 0) when nothing of it is visible."""
    if image_bgr is None or image_bgr.ndim not in (2, 3) or image_bgr.size == 0:
        return 0.0, 0.0
    h, w = image_bgr.shape[:2]
    box = face.bbox.clip(w, h)
    if not np.isfinite(box.as_array()).all():  # a broken box must not crash the frame loop
        return 0.0, 0.0
    size = min(box.width, box.height)
    x1, y1 = math.floor(box.x1), math.floor(box.y1)
    x2, y2 = math.ceil(box.x2), math.ceil(box.y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return float(size), 0.0
    try:  # to_bgr copes with grey, BGRA and 16-bit frames, so the crop is always 8-bit BGR here
        crop = cv2.cvtColor(to_bgr(image_bgr[y1:y2, x1:x2]), cv2.COLOR_BGR2GRAY)
    except ImageError:
        return float(size), 0.0
    shrink = crop.shape[0] > SHARPNESS_SIZE or crop.shape[1] > SHARPNESS_SIZE
    crop = cv2.resize(
        crop, (SHARPNESS_SIZE, SHARPNESS_SIZE), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    )
    return float(size), float(cv2.Laplacian(crop.astype(np.float32), cv2.CV_32F).var())


def estimate_pose(face: Face) -> tuple[float, float]:
    """(yaw, pitch) in degrees from eyes, nose and mouth (MTCNN's 5 points or BlazeFace's 4).

    1. Undo roll: rotate the points about the eye midpoint so the eyes lie on the x axis at +-a,
       with a = half the inter-ocular distance; the mouth point is the mean of the two corners, or
       mouth_center when there are no corners.
    2. Yaw: a rigid face turned by yaw moves the nose tip (depth D in front of the eyes) sideways by
       D*sin(yaw) while a shrinks to a*cos(yaw), so nose_x / a = (D/a) * tan(yaw):
       yaw = atan(nose_x / a / NOSE_DEPTH_YAW).
    3. Pitch: with t = nose_y / mouth_y (0 at the eye line, 1 at the mouth), tilting by pitch moves
       the nose tip up by D*sin(pitch) relative to a line scaled by cos(pitch), so
       t = t0 - (D/m) * tan(pitch): pitch = atan((t0 - t) / NOSE_DEPTH_PITCH), with t0 the frontal
       ratio of the landmark set (FRONTAL_NOSE_RATIO for mouth corners, BLAZEFACE_FRONTAL_NOSE_RATIO
       for BlazeFace's mouth_center).
    Mouth depth is ignored (it would shift the midline slightly). NaN when the points are missing
    or degenerate.
    """
    lm = face.landmarks
    try:
        left = np.array(lm["left_eye"], np.float64)
        right = np.array(lm["right_eye"], np.float64)
        nose = np.array(lm["nose"], np.float64)
        if "mouth_left" in lm and "mouth_right" in lm:
            mouth = (np.array(lm["mouth_left"], np.float64) + np.array(lm["mouth_right"], np.float64)) / 2
            t0 = FRONTAL_NOSE_RATIO
        else:
            mouth = np.array(lm["mouth_center"], np.float64)
            t0 = BLAZEFACE_FRONTAL_NOSE_RATIO
    except (KeyError, TypeError, ValueError):
        return math.nan, math.nan
    eyes = right - left
    half = float(np.hypot(*eyes)) / 2
    if not math.isfinite(half) or half < 1e-6:
        return math.nan, math.nan
    c, s = eyes / (2 * half)  # cos, sin of the roll angle
    derot = np.array([[c, s], [-s, c]])
    mid = (left + right) / 2
    nx, ny = derot @ (nose - mid)
    _, my = derot @ (mouth - mid)
    if not my > 1e-6:  # mouth above or on the eye line: upside down or broken landmarks
        return math.nan, math.nan
    yaw = math.degrees(math.atan(nx / half / NOSE_DEPTH_YAW))
    pitch = math.degrees(math.atan((t0 - ny / my) / NOSE_DEPTH_PITCH))
    return yaw, pitch
