"""Value objects for faces in an image: boxes and landmarks in pixel coordinates."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Landmark names, in image terms ("left" = smaller x in the image, i.e. the subject's right eye).
# Detectors fill what they have: MTCNN/YuNet give the five; BlazeFace gives eyes, nose, mouth_center.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right", "mouth_center")


@dataclass(frozen=True)
class BBox:
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return max(0.0, self.x2 - self.x1)

    @property
    def height(self) -> float:
        return max(0.0, self.y2 - self.y1)

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x1 + self.x2) / 2, (self.y1 + self.y2) / 2)

    def iou(self, other: BBox) -> float:
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def scale(self, sx: float, sy: float | None = None) -> BBox:
        sy = sx if sy is None else sy
        return BBox(self.x1 * sx, self.y1 * sy, self.x2 * sx, self.y2 * sy)

    def clip(self, width: int, height: int) -> BBox:
        return BBox(
            min(max(self.x1, 0.0), width),
            min(max(self.y1, 0.0), height),
            min(max(self.x2, 0.0), width),
            min(max(self.y2, 0.0), height),
        )

    def normalized(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(x, y, w, h) in 0..1 of the frame, as published in events."""
        c = self.clip(width, height)
        return (c.x1 / width, c.y1 / height, c.width / width, c.height / height)

    def as_array(self) -> np.ndarray:
        return np.array([self.x1, self.y1, self.x2, self.y2], np.float32)


@dataclass(frozen=True)
class Face:
    """One detected face: box, detector score and named landmarks (pixels)."""

    bbox: BBox
    score: float
    landmarks: dict[str, tuple[float, float]] = field(default_factory=dict)

    def landmark_array(self, names: tuple[str, ...]) -> np.ndarray:
        return np.array([self.landmarks[n] for n in names], np.float32)

    def scaled(self, sx: float, sy: float | None = None) -> Face:
        sy = sx if sy is None else sy
        return Face(self.bbox.scale(sx, sy), self.score, {k: (x * sx, y * sy) for k, (x, y) in self.landmarks.items()})


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, mode: str = "union") -> list[int]:
    """Greedy non-maximum suppression over [N,4] x1y1x2y2 boxes; returns kept indices by score.

    mode "min" divides by the smaller area (MTCNN's last stage uses it to drop boxes inside boxes).
    """
    if len(boxes) == 0:
        return []
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        denom = np.minimum(areas[i], areas[rest]) if mode == "min" else areas[i] + areas[rest] - inter
        overlap = np.where(denom > 0, inter / np.maximum(denom, 1e-9), 0)
        order = rest[overlap <= iou_threshold]
    return keep
