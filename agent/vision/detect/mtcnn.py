"""MTCNN (P-Net -> R-Net -> O-Net cascade) over the agent's TFLite runtime.

The cascade follows the PyPI ``mtcnn==1.0.0`` package, whose weights the converter ships, step by step:
the image is normalised once ((rgb - 127.5) / 128), each pyramid level is an area resize of that
normalised image, R-Net and O-Net crops are bilinear ``crop_and_resize`` samples of it (0 outside the
image), and boxes, landmarks and NMS use the package's arithmetic. Any other resize or crop rule would
feed the networks inputs they were not trained on. The package's numpy helpers are ported, not imported:
they need TensorFlow, and the agent never loads TensorFlow.

Two deliberate differences from the package: NMS is the greedy one (facelite.vision.geometry.nms; the package
suppresses a box even when the box that overlaps it was itself suppressed, so it keeps a subset of
ours), and R-Net / O-Net run all candidates of a frame as one batch when the converter says the graph
allows it (``manifest.extra["batched_graphs"]``), else one crop at a time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facelite.errors import ImageError, ModelError
from facelite.model.manifest import Manifest, Preprocessing
from facelite.model.runtime import Network
from facelite.vision.detect.base import load_detector_graphs
from facelite.vision.geometry import BBox, Face, nms
from facelite.vision.imageio import to_bgr

log = logging.getLogger(__name__)

GRAPHS = ("pnet", "rnet", "onet")
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")  # O-Net order, image terms
PNET_CELL = 12  # P-Net's receptive field: the smallest face one pyramid level can see, in level pixels
PNET_STRIDE = 2
RNET_SIZE = 24
ONET_SIZE = 48
MAX_BATCH = 256  # bound the interpreter's arena when a crowded frame yields many candidates

DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
DEFAULT_SCALE_FACTOR = 0.709
# IoU thresholds: P-Net within a scale, P-Net across scales, R-Net, O-Net ("min" mode) - the package's defaults.
DEFAULT_NMS = (0.5, 0.7, 0.7, 0.7)


@dataclass(frozen=True)
class MTCNNSettings:
    """Cascade settings; the manifest's ``extra`` holds the converter's defaults."""

    thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS
    scale_factor: float = DEFAULT_SCALE_FACTOR
    nms: tuple[float, float, float, float] = DEFAULT_NMS
    batched_graphs: tuple[str, ...] = ()

    @classmethod
    def from_extra(cls, extra: dict[str, Any], where: str) -> MTCNNSettings:
        known = {"thresholds", "scale_factor", "nms", "batched_graphs"}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ModelError(f"manifest extra has unknown MTCNN key(s) {unknown}", where, "re-run `make convert`")
        try:
            thresholds = tuple(float(v) for v in extra.get("thresholds", DEFAULT_THRESHOLDS))
            nms_values = tuple(float(v) for v in extra.get("nms", DEFAULT_NMS))
            scale_factor = float(extra.get("scale_factor", DEFAULT_SCALE_FACTOR))
            batched = tuple(str(v) for v in extra.get("batched_graphs", ()))
        except (TypeError, ValueError) as exc:
            raise ModelError(f"manifest extra has a bad MTCNN value: {exc}", where) from None
        if len(thresholds) != 3:
            raise ModelError(f"manifest extra.thresholds needs 3 values (P/R/O-Net), got {len(thresholds)}", where)
        if len(nms_values) != 4:
            raise ModelError(f"manifest extra.nms needs 4 IoU values, got {len(nms_values)}", where)
        if any(g not in GRAPHS for g in batched):
            raise ModelError(f"manifest extra.batched_graphs {list(batched)} names unknown graphs", where)
        settings = cls(thresholds, scale_factor, nms_values, batched)
        settings.check(where)
        return settings

    def check(self, where: str) -> None:
        if not all(0.0 <= t <= 1.0 for t in self.thresholds):
            raise ModelError(f"MTCNN thresholds must be within 0..1, got {list(self.thresholds)}", where)
        if not all(0.0 <= t <= 1.0 for t in self.nms):
            raise ModelError(f"MTCNN NMS thresholds must be within 0..1, got {list(self.nms)}", where)
        if not 0.1 <= self.scale_factor < 1.0:
            # Below 0.1 the pyramid skips whole face sizes; 1.0 or more never ends.
            raise ModelError(f"MTCNN scale_factor must be within 0.1..1 (exclusive), got {self.scale_factor}", where)


@dataclass(frozen=True)
class PyramidLevel:
    scale: float
    image: np.ndarray  # [1, h, w, 3] float32, normalised: the P-Net input


@dataclass(frozen=True)
class Candidates:
    """Boxes (x1, y1, x2, y2 in image pixels) with scores, between stages."""

    boxes: np.ndarray  # [N, 4] float64
    scores: np.ndarray  # [N] float64

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.zeros((0, 4)), np.zeros(0))

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, index: Any) -> Candidates:
        return Candidates(self.boxes[index], self.scores[index])


@dataclass(frozen=True)
class CascadeTrace:
    """What each stage saw: the converter calibrates R-Net/O-Net on these real candidates."""

    normalized: np.ndarray  # [H, W, 3] float32, the image every stage samples from
    pyramid: tuple[PyramidLevel, ...]
    rnet_candidates: Candidates  # squared P-Net proposals, the R-Net inputs
    onet_candidates: Candidates  # squared R-Net survivors, the O-Net inputs
    faces: tuple[Face, ...]


# -- the package's image arithmetic ---------------------------------------------------------------
def normalize(image_bgr: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """[H, W, 3] float32 in the networks' range ((rgb - 127.5) / 128 for the shipped weights)."""
    image = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB) if pre.color == "RGB" else image_bgr
    return (image.astype(np.float32) - np.float32(pre.mean)) / np.float32(pre.std)


def pyramid_scales(height: int, width: int, min_face: float, scale_factor: float) -> list[float]:
    """The package's ``build_scale_pyramid``, keeping only levels P-Net can run on (>= 12 px).

    Its level count ignores the first scale (12 / min_face), so the package can produce levels that are
    too small; those would find nothing and are skipped here.
    """
    min_dim = min(height, width)
    if min_dim < PNET_CELL or min_face <= 0:
        return []
    count = round(-(math.log(min_dim / PNET_CELL) / math.log(scale_factor) + 1))
    first = PNET_CELL / min_face
    scales = [first * scale_factor**i for i in range(max(0, count))]
    return [s for s in scales if int(height * s) >= PNET_CELL and int(width * s) >= PNET_CELL]


def resize_level(normalized: np.ndarray, scale: float) -> np.ndarray:
    """One pyramid level: ``tf.image.resize(..., method=AREA)`` to floor(size * scale), as the package does.

    OpenCV's INTER_AREA computes the same fractional-area average when shrinking (the only case with
    min_face >= 12); when enlarging it interpolates bilinearly where TF's area resize repeats pixels.
    """
    h, w = normalized.shape[:2]
    out_h, out_w = int(h * scale), int(w * scale)
    return cv2.resize(normalized, (out_w, out_h), interpolation=cv2.INTER_AREA)


def crop_and_resize(normalized: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """``tf.image.crop_and_resize`` exactly as the package calls it: [N, size, size, 3] float32.

    The package normalises boxes by the image size (not size - 1), samples bilinearly on the grid
    y = y1n * (H - 1) + i * (y2n - y1n) * (H - 1) / (size - 1), and writes 0 (mid-grey after
    normalisation) where a sample row or column falls outside the image.
    """
    h, w = normalized.shape[:2]
    n = len(boxes)
    if n == 0:
        return np.zeros((0, size, size, normalized.shape[2]), np.float32)
    b = np.asarray(boxes, np.float64)
    steps = np.arange(size, dtype=np.float64) / (size - 1)
    y1, y2 = b[:, 1] / h * (h - 1), b[:, 3] / h * (h - 1)
    x1, x2 = b[:, 0] / w * (w - 1), b[:, 2] / w * (w - 1)
    ys = (y1[:, None] + steps[None, :] * (y2 - y1)[:, None]).astype(np.float32)  # TF samples in float32
    xs = (x1[:, None] + steps[None, :] * (x2 - x1)[:, None]).astype(np.float32)
    valid_y = (ys >= 0) & (ys <= h - 1)
    valid_x = (xs >= 0) & (xs <= w - 1)
    top, left = np.floor(ys), np.floor(xs)
    y_lerp = (ys - top)[:, :, None, None]
    x_lerp = (xs - left)[:, None, :, None]
    t = np.clip(top, 0, h - 1).astype(np.intp)[:, :, None]
    bt = np.clip(np.ceil(ys), 0, h - 1).astype(np.intp)[:, :, None]
    lf = np.clip(left, 0, w - 1).astype(np.intp)[:, None, :]
    rt = np.clip(np.ceil(xs), 0, w - 1).astype(np.intp)[:, None, :]
    top_row = normalized[t, lf] + (normalized[t, rt] - normalized[t, lf]) * x_lerp
    bottom_row = normalized[bt, lf] + (normalized[bt, rt] - normalized[bt, lf]) * x_lerp
    out = top_row + (bottom_row - top_row) * y_lerp
    mask = (valid_y[:, :, None] & valid_x[:, None, :])[..., None]
    return np.where(mask, out, np.float32(0)).astype(np.float32)


def square(c: Candidates) -> Candidates:
    """The package's ``resize_to_square``: grow the shorter side around the centre."""
    b = c.boxes.copy()
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = np.maximum(w, h)
    b[:, 0] = b[:, 0] + w * 0.5 - side * 0.5
    b[:, 1] = b[:, 1] + h * 0.5 - side * 0.5
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return Candidates(b, c.scores)


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The package's ``adjust_bboxes``: offsets are fractions of the (+1 pixel) box size."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + offsets.astype(np.float64) * np.stack([w, h, w, h], axis=1)


def pnet_boxes(reg: np.ndarray, prob: np.ndarray, scale: float, threshold: float) -> Candidates:
    """The package's ``generate_bounding_box`` + ``upscale_bboxes`` for one level: every P-Net cell
    above threshold is a 12x12 window at stride 2, regressed, then mapped back to image pixels."""
    score = prob[0, :, :, 1]
    ys, xs = np.nonzero(score > threshold)
    if ys.size == 0:
        return Candidates.empty()
    r = reg[0, ys, xs].astype(np.float64)
    # The package's window runs from stride * i + 1 to stride * i + 12, so offsets scale by 11 px.
    x1, y1 = xs * PNET_STRIDE + 1.0, ys * PNET_STRIDE + 1.0
    x2, y2 = xs * PNET_STRIDE + float(PNET_CELL), ys * PNET_STRIDE + float(PNET_CELL)
    side = float(PNET_CELL - 1)
    boxes = np.stack([x1 + r[:, 0] * side, y1 + r[:, 1] * side, x2 + r[:, 2] * side, y2 + r[:, 3] * side], axis=1)
    boxes = boxes / scale
    scores = score[ys, xs].astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    return Candidates(boxes[order], scores[order])


def suppress(c: Candidates, threshold: float, mode: str = "union") -> Candidates:
    if len(c) == 0:
        return c
    return c.take(np.asarray(nms(c.boxes, c.scores, threshold, mode=mode), np.intp))


def _by_last_dim(outputs: Sequence[np.ndarray], dims: Sequence[int], graph: str, where: str) -> list[np.ndarray]:
    """Pick outputs by their last dimension (box offsets 4, landmarks 10, face probability 2): converted
    graphs do not keep the Keras output order."""
    found = []
    for d in dims:
        match = [o for o in outputs if o.shape[-1] == d]
        if len(match) != 1:
            shapes = [list(o.shape) for o in outputs]
            raise ModelError(f"MTCNN {graph} outputs {shapes} do not hold exactly one of last size {d}", where)
        found.append(match[0])
    return found


# -- the detector ---------------------------------------------------------------------------------
class MTCNNDetector:
    """``detect(image_bgr) -> list[Face]`` in image pixels with five named landmarks, best first.

    Needs only ``manifest.extra`` and ``manifest.preprocessing`` (plus its name for messages), so the
    converter can wire it to the Keras source networks or to the .tflite files it is verifying.
    """

    def __init__(
        self,
        manifest: Manifest,
        networks: dict[str, Network],
        *,
        min_face: int = 20,
        score_threshold: float | None = None,
        thresholds: tuple[float, float, float] | None = None,
        scale_factor: float | None = None,
    ) -> None:
        where = f"model {manifest.name}"
        missing = [g for g in GRAPHS if g not in networks]
        if missing:
            raise ModelError(f"MTCNN needs graphs {list(GRAPHS)}, missing {missing}", where)
        if min_face < PNET_CELL:
            # Smaller faces need an enlarged image, where the device's resize no longer matches the source's.
            raise ModelError(f"min_face must be >= {PNET_CELL} pixels for MTCNN, got {min_face}", where)
        base = MTCNNSettings.from_extra(manifest.extra, where)
        chosen = list(thresholds if thresholds is not None else base.thresholds)
        if len(chosen) != 3:
            raise ModelError(f"MTCNN thresholds need 3 values (P/R/O-Net), got {len(chosen)}", where)
        if score_threshold is not None:
            chosen[2] = float(score_threshold)
        self.settings = MTCNNSettings(
            (float(chosen[0]), float(chosen[1]), float(chosen[2])),
            float(scale_factor if scale_factor is not None else base.scale_factor),
            base.nms,
            base.batched_graphs,
        )
        self.settings.check(where)
        self.manifest = manifest
        self.pipeline = manifest.name
        self.networks = networks
        self.preprocessing = manifest.preprocessing
        self.min_face = int(min_face)
        self._where = where

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        *,
        runtime: str = "auto",
        num_threads: int = 1,
        min_face: int = 20,
        score_threshold: float | None = None,
    ) -> MTCNNDetector:
        manifest, networks = load_detector_graphs(model_dir, "mtcnn", runtime=runtime, num_threads=num_threads)
        return cls(manifest, networks, min_face=min_face, score_threshold=score_threshold)

    # -- running the graphs --------------------------------------------------------------------
    def _run(self, graph: str, x: np.ndarray) -> list[np.ndarray]:
        net = self.networks[graph]
        resize = getattr(net, "resize_input", None)  # TFLiteModel: fixed shapes until resized
        if resize is not None:
            resize(x.shape)
        return [np.asarray(o) for o in net.run(x)]

    def _run_crops(self, graph: str, crops: np.ndarray, dims: Sequence[int]) -> list[np.ndarray]:
        """All crops of a stage; one batch (in chunks) where the graph takes it, else one at a time."""
        net = self.networks[graph]
        batched = graph in self.settings.batched_graphs or getattr(net, "resize_input", None) is None
        step = MAX_BATCH if batched else 1
        parts: list[list[np.ndarray]] = []
        for i in range(0, len(crops), step):
            outs = _by_last_dim(self._run(graph, crops[i : i + step]), dims, graph, self._where)
            parts.append([o.reshape(o.shape[0], -1) for o in outs])
        return [np.concatenate([p[k] for p in parts]) for k in range(len(dims))]

    # -- stages ----------------------------------------------------------------------------------
    def pyramid(self, normalized: np.ndarray) -> tuple[PyramidLevel, ...]:
        h, w = normalized.shape[:2]
        return tuple(
            PyramidLevel(s, resize_level(normalized, s)[None])
            for s in pyramid_scales(h, w, self.min_face, self.settings.scale_factor)
        )

    def stage_pnet(self, levels: Sequence[PyramidLevel]) -> Candidates:
        per_scale = []
        for level in levels:
            reg, prob = _by_last_dim(self._run("pnet", level.image), (4, 2), "pnet", self._where)
            cands = pnet_boxes(reg, prob, level.scale, self.settings.thresholds[0])
            per_scale.append(suppress(cands, self.settings.nms[0]))
        if not per_scale:
            return Candidates.empty()
        merged = Candidates(np.concatenate([c.boxes for c in per_scale]), np.concatenate([c.scores for c in per_scale]))
        return square(suppress(merged, self.settings.nms[1]))

    def stage_rnet(self, normalized: np.ndarray, cands: Candidates) -> Candidates:
        if len(cands) == 0:
            return cands
        crops = crop_and_resize(normalized, cands.boxes, RNET_SIZE)
        reg, prob = self._run_crops("rnet", crops, (4, 2))
        refined = Candidates(regress(cands.boxes, reg), prob[:, 1].astype(np.float64))
        refined = refined.take(refined.scores > self.settings.thresholds[1])
        return square(suppress(refined, self.settings.nms[2]))

    def stage_onet(self, normalized: np.ndarray, cands: Candidates) -> list[Face]:
        if len(cands) == 0:
            return []
        crops = crop_and_resize(normalized, cands.boxes, ONET_SIZE)
        reg, lmk, prob = self._run_crops("onet", crops, (4, 10, 2))
        b = cands.boxes
        w = (b[:, 2] - b[:, 0] + 1)[:, None]
        h = (b[:, 3] - b[:, 1] + 1)[:, None]
        # The package's adjust_landmarks: fractions of the O-Net input box (x1..x5, then y1..y5).
        lx = w * lmk[:, 0:5] + b[:, 0:1] - 1
        ly = h * lmk[:, 5:10] + b[:, 1:2] - 1
        scores = prob[:, 1].astype(np.float64)
        boxes = regress(b, reg)
        keep = np.nonzero(scores > self.settings.thresholds[2])[0]
        order = nms(boxes[keep], scores[keep], self.settings.nms[3], mode="min")
        height, width = normalized.shape[:2]
        faces = []
        for i in keep[order]:
            # Clipped like the package's limit_bboxes (to the last pixel row/column); landmarks are not.
            x1, x2 = np.clip(boxes[i, [0, 2]], 0, width - 1)
            y1, y2 = np.clip(boxes[i, [1, 3]], 0, height - 1)
            if x2 <= x1 or y2 <= y1:
                continue
            marks = {name: (float(lx[i, k]), float(ly[i, k])) for k, name in enumerate(LANDMARKS)}
            faces.append(Face(BBox(float(x1), float(y1), float(x2), float(y2)), float(scores[i]), marks))
        faces.sort(key=lambda f: -f.score)
        return faces

    # -- public ----------------------------------------------------------------------------------
    def trace(self, image_bgr: np.ndarray) -> CascadeTrace:
        """Run the cascade and keep every stage's inputs (raises ImageError on an unusable frame)."""
        image = to_bgr(image_bgr)
        normalized = normalize(image, self.preprocessing)
        levels = self.pyramid(normalized)
        to_rnet = self.stage_pnet(levels)
        to_onet = self.stage_rnet(normalized, to_rnet)
        faces = self.stage_onet(normalized, to_onet)
        return CascadeTrace(normalized, levels, to_rnet, to_onet, tuple(faces))

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """Faces in ``image_bgr``; an empty, tiny or unusable frame gives no faces rather than an exception."""
        try:
            return list(self.trace(image_bgr).faces)
        except ImageError as exc:
            log.debug("skipping frame: %s", exc)
            return []
