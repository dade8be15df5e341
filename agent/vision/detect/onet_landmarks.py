"""Five-point landmarks from MTCNN's O-Net, run on another detector's boxes.

BlazeFace finds faces fast, but its landmarks (eyes, nose tip, mouth centre) are coarse and miss the mouth
corners the ArcFace template aligns on. O-Net, MTCNN's last stage, regresses all five points from a 48x48
crop of a square box around the face. Run on BlazeFace's boxes it lifts LFW 10-fold accuracy of BlazeFace +
MobileFaceNet by about half a point for one small network per face (docs/experiments/onet_landmarks.md).

The detector's box and score are kept: O-Net only places the landmarks. Its box regression is used to
re-centre the square crop before a final pass, because O-Net was trained on R-Net's boxes, not
BlazeFace's, and its landmarks are best when the crop is the box it would have drawn itself.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from facelite.errors import ImageError, ModelError
from facelite.model.manifest import Manifest, Preprocessing
from facelite.model.runtime import Network
from facelite.vision.detect.base import Detector, load_detector_graphs
from facelite.vision.detect.mtcnn import (
    LANDMARKS,
    ONET_SIZE,
    Candidates,
    crop_and_resize,
    normalize,
    regress,
    square,
)
from facelite.vision.geometry import Face
from facelite.vision.imageio import to_bgr

log = logging.getLogger(__name__)

ONET_OUTPUT_DIMS = (4, 10, 2)  # box offsets, landmarks (x1..x5, y1..y5), face probability
DEFAULT_PASSES = 2
MAX_PASSES = 4


def onet_outputs(net: Network, crops: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(box offsets [N, 4], landmark fractions [N, 10]) for ``crops`` [N, 48, 48, 3], one crop at a time.

    One at a time because the converted O-Net has a fixed batch of one unless resized, and a resize per
    frame costs more than the one or two faces a frame holds.
    """
    regs, marks = [], []
    for crop in crops:
        resize = getattr(net, "resize_input", None)
        if resize is not None:
            resize(crop[None].shape)
        by_dim: dict[int, np.ndarray] = {}
        for out in net.run(crop[None]):
            arr = np.asarray(out).reshape(1, -1)
            by_dim[arr.shape[1]] = arr
        if sorted(by_dim) != sorted(ONET_OUTPUT_DIMS):
            raise ModelError(f"O-Net outputs have sizes {sorted(by_dim)}, expected {sorted(ONET_OUTPUT_DIMS)}", where)
        regs.append(by_dim[4])
        marks.append(by_dim[10])
    return np.concatenate(regs), np.concatenate(marks)


def _span(lo: float, hi: float, n: int) -> tuple[int, int] | None:
    """First and last pixel (at least two) that crop_and_resize's samples between ``lo`` and ``hi`` touch in
    an axis of ``n`` pixels; None when every sample falls outside it, or when the axis is a single pixel (no
    detector finds a face in a one-pixel-high frame; the crop is left blank rather than divided by zero)."""
    a, b = lo * (n - 1) / n, hi * (n - 1) / n
    if n < 2 or max(a, b) < 0 or min(a, b) > n - 1:
        return None
    first = int(np.clip(np.floor(min(a, b)), 0, n - 1))
    last = int(np.clip(np.ceil(max(a, b)), 0, n - 1))
    if last == first:
        first, last = (first - 1, last) if last == n - 1 else (first, last + 1)
    return first, last


def onet_crops(image_bgr: np.ndarray, boxes: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """``crop_and_resize(normalize(image), boxes, 48)``, computed on the pixels each box covers only.

    The cascade normalises the whole frame once; here one or two faces of a frame need their 48x48 crops,
    and a float copy of a 12-megapixel photo is 150 MB. crop_and_resize samples the full image at
    ``y1 * (H - 1) / H + i * (y2 - y1) * (H - 1) / H / 47``, so each box is re-expressed in its region's
    coordinates such that the samples fall on the same pixels (equal up to float rounding; tested).
    """
    height, width = image_bgr.shape[:2]
    crops = np.zeros((len(boxes), ONET_SIZE, ONET_SIZE, image_bgr.shape[2]), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64)):
        rows, cols = _span(y1, y2, height), _span(x1, x2, width)
        if rows is None or cols is None:
            continue  # every sample outside the image: zeros, as crop_and_resize writes there
        (r0, r1), (c0, c1) = rows, cols
        region = normalize(image_bgr[r0 : r1 + 1, c0 : c1 + 1], pre)
        h, w = region.shape[:2]
        ry, rx = (height - 1) / height * h / (h - 1), (width - 1) / width * w / (w - 1)
        sy, sx = y1 * (height - 1) / height - r0, x1 * (width - 1) / width - c0
        local = np.array([[sx * w / (w - 1), sy * h / (h - 1), 0.0, 0.0]])
        local[0, 2] = local[0, 0] + (x2 - x1) * rx
        local[0, 3] = local[0, 1] + (y2 - y1) * ry
        crops[k] = crop_and_resize(region, local, ONET_SIZE)[0]
    return crops


def landmarks_in_box(boxes: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """O-Net's landmark fractions of its input boxes as pixels [N, 5, 2] (the mtcnn package's arithmetic)."""
    w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    xs = w * fractions[:, 0:5] + boxes[:, 0:1] - 1
    ys = h * fractions[:, 5:10] + boxes[:, 1:2] - 1
    return np.stack([xs, ys], axis=2)


class OnetLandmarks:
    """A detector whose faces carry O-Net's five landmarks: ``detect(image) -> list[Face]``.

    ``pipeline`` ("blazeface+onet") names the detection-and-landmark path, which is what the embedder's
    calibration curves are measured through (``calibration.<pipeline>`` in its manifest).
    """

    def __init__(self, base: Detector, onet_manifest: Manifest, onet: Network, *, passes: int = DEFAULT_PASSES):
        if not 1 <= passes <= MAX_PASSES:
            raise ValueError(f"passes must be 1..{MAX_PASSES}, got {passes}")
        if onet_manifest.detector_type != "mtcnn":
            raise ModelError(
                f"{onet_manifest.name} is a {onet_manifest.detector_type!r} detector; O-Net landmarks need mtcnn",
                onet_manifest.name,
            )
        self.base = base
        self.manifest = base.manifest
        self.onet_manifest = onet_manifest
        self.onet = onet
        self.passes = passes
        self.pipeline = f"{base.pipeline}+onet"
        self._where = f"model {onet_manifest.name}/{onet_manifest.variant} (onet)"

    @classmethod
    def from_model_dirs(
        cls, base: Detector, mtcnn_dir: str | Path, *, runtime: str = "auto", num_threads: int = 1
    ) -> OnetLandmarks:
        manifest, networks = load_detector_graphs(
            mtcnn_dir, "mtcnn", runtime=runtime, num_threads=num_threads, graphs=("onet",)
        )
        return cls(base, manifest, networks["onet"])

    @property
    def sha256(self) -> str:
        """One key for the pair of models (caches of detections are keyed on it)."""
        digest = hashlib.sha256()
        for part in (self.base.manifest.sha256, self.onet_manifest.sha256, str(self.passes)):
            digest.update(part.encode())
        return digest.hexdigest()

    def refine(self, image_bgr: np.ndarray, faces: list[Face]) -> list[Face]:
        """``faces`` with their landmarks replaced by O-Net's (boxes and scores unchanged)."""
        if not faces:
            return faces
        image = to_bgr(image_bgr)
        boxes = np.array([[f.bbox.x1, f.bbox.y1, f.bbox.x2, f.bbox.y2] for f in faces], np.float64)
        cands = square(Candidates(boxes, np.array([f.score for f in faces], np.float64)))
        for step in range(self.passes):
            crops = onet_crops(image, cands.boxes, self.onet_manifest.preprocessing)
            reg, fractions = onet_outputs(self.onet, crops, self._where)
            if step < self.passes - 1:
                cands = square(Candidates(regress(cands.boxes, reg), cands.scores))
        points = landmarks_in_box(cands.boxes, fractions)
        return [
            Face(f.bbox, f.score, {name: (float(p[k, 0]), float(p[k, 1])) for k, name in enumerate(LANDMARKS)})
            for f, p in zip(faces, points)
        ]

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        faces = self.base.detect(image_bgr)
        try:
            return self.refine(image_bgr, faces)
        except ImageError as exc:  # the frame loop never raises: the base found faces on this frame
            log.debug("O-Net landmarks skipped: %s", exc)
            return faces
