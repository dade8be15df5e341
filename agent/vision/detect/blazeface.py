"""BlazeFace (MediaPipe face detection, short and full range) over the agent's TFLite runtime.

The pipeline follows MediaPipe's FaceDetection graph (modules/face_detection/face_detection.pbtxt):
ImageToTensor (aspect-preserving letterbox, zero border, [-1, 1]) -> model -> SsdAnchors +
TensorsToDetections (anchor-relative box and keypoint decoding, clipped sigmoid scores) ->
NonMaxSuppression (WEIGHTED, IoU 0.3) -> projection back to the original image.

Every per-model constant (anchor options, decoder scales, score threshold, keypoint names) comes from
the manifest's ``extra``, written by converter/models/blazeface.py, so this module holds none of them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facelite.errors import ImageError, ModelError
from facelite.model.manifest import Manifest, Preprocessing
from facelite.model.runtime import Network
from facelite.vision.detect.base import load_detector_graphs
from facelite.vision.geometry import BBox, Face
from facelite.vision.imageio import to_bgr

log = logging.getLogger(__name__)

GRAPH = "model"
RETRY_GRAPH = "retry"

# The full-range model is trained for faces at a distance: a face that fills the frame (a headshot or ID
# photo, what people enrol from; someone right at the camera) scores near zero once it fills the 192 px
# input (9 of 500 LFW tight crops found). So when a frame gives no face it is looked at once more, shrunk
# inside the input. The artifact's own retry (manifest extra.retry + graph "retry": the short-range model,
# trained for near faces, at 1/2.5) finds 499 of 500; an artifact without one retries its own model at a
# third of the input, 493 of 500 (x2: 463, x2.5: 485), and fewer as crops get tighter (facelite.tools.bench.
# detect_eval). Only frames without a face pay the second inference.
LARGE_FACE_ZOOM_OUT = 3.0


# -- settings read from manifest.extra ----------------------------------------------------------
@dataclass(frozen=True)
class AnchorOptions:
    """MediaPipe's SsdAnchorsCalculatorOptions (the fields BlazeFace uses)."""

    input_size_width: int
    input_size_height: int
    num_layers: int
    min_scale: float
    max_scale: float
    anchor_offset_x: float
    anchor_offset_y: float
    strides: tuple[int, ...]
    aspect_ratios: tuple[float, ...]
    fixed_anchor_size: bool
    interpolated_scale_aspect_ratio: float
    reduce_boxes_in_lowest_layer: bool


@dataclass(frozen=True)
class DecoderOptions:
    """MediaPipe's TensorsToDetectionsCalculatorOptions plus the NMS overlap threshold."""

    num_boxes: int
    num_coords: int
    box_coord_offset: int
    keypoint_coord_offset: int
    num_keypoints: int
    num_values_per_keypoint: int
    x_scale: float
    y_scale: float
    w_scale: float
    h_scale: float
    sigmoid_score: bool
    score_clipping_thresh: float
    reverse_output_order: bool
    min_score_thresh: float
    min_suppression_threshold: float


@dataclass(frozen=True)
class BlazeFaceConfig:
    anchors: AnchorOptions
    decoder: DecoderOptions
    keypoints: tuple[str, ...]  # landmark name per model keypoint, in model order (image terms)

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the model input."""
        return (self.anchors.input_size_width, self.anchors.input_size_height)

    @classmethod
    def from_extra(cls, extra: dict[str, Any], where: str) -> BlazeFaceConfig:
        """Parse ``manifest.extra``; a missing, unknown or mistyped key is one ModelError naming it."""
        anchors = _section(AnchorOptions, extra, "anchors", where)
        decoder = _section(DecoderOptions, extra, "decoder", where)
        names = extra.get("keypoints")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ModelError("manifest extra.keypoints must be a list of landmark names", where)
        if len(names) != decoder.num_keypoints:
            raise ModelError(
                f"manifest extra.keypoints names {len(names)} points, decoder.num_keypoints is {decoder.num_keypoints}",
                where,
            )
        if len(anchors.strides) != anchors.num_layers:
            raise ModelError(
                f"manifest extra.anchors.strides has {len(anchors.strides)} entries for {anchors.num_layers} layers",
                where,
            )
        need = decoder.keypoint_coord_offset + decoder.num_keypoints * decoder.num_values_per_keypoint
        if decoder.num_coords < max(need, decoder.box_coord_offset + 4):
            raise ModelError(f"manifest extra.decoder.num_coords {decoder.num_coords} < {need} values used", where)
        return cls(anchors, decoder, tuple(names))


def _section(cls: type, extra: dict[str, Any], key: str, where: str) -> Any:
    data = extra.get(key)
    if not isinstance(data, dict):
        raise ModelError(f"manifest extra.{key} must be an object (BlazeFace settings)", where, "re-run `make convert`")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    missing = sorted(set(names) - set(data))
    if unknown or missing:
        raise ModelError(
            f"manifest extra.{key} has unknown key(s) {unknown} / is missing key(s) {missing}",
            where,
            "re-run `make convert` with this facelite version",
        )
    values: dict[str, Any] = {}
    for f in fields(cls):
        raw = data[f.name]
        try:
            if f.type in ("int", int):
                values[f.name] = int(raw)
            elif f.type in ("float", float):
                values[f.name] = float(raw)
            elif f.type in ("bool", bool):
                if not isinstance(raw, bool):
                    raise TypeError("expected true/false")
                values[f.name] = raw
            elif f.type == "tuple[int, ...]":
                values[f.name] = tuple(int(v) for v in raw)
            elif f.type == "tuple[float, ...]":
                values[f.name] = tuple(float(v) for v in raw)
            else:  # pragma: no cover - a field type this parser does not know is a programming error
                raise TypeError(f"unsupported field type {f.type}")
        except (TypeError, ValueError) as exc:
            raise ModelError(f"manifest extra.{key}.{f.name} has a bad value {raw!r}: {exc}", where) from None
    return cls(**values)


# -- anchors ------------------------------------------------------------------------------------
def _calculate_scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    if count == 1:
        return (min_scale + max_scale) * 0.5
    return min_scale + (max_scale - min_scale) * index / (count - 1.0)


def ssd_anchors(opts: AnchorOptions) -> np.ndarray:
    """[N, 4] anchors as (x_center, y_center, w, h) in 0..1, in the model's output order.

    A port of MediaPipe's SsdAnchorsCalculator (without explicit feature-map sizes, which BlazeFace
    does not use): layers sharing a stride share one feature map with all their anchors per cell.
    """
    out: list[tuple[float, float, float, float]] = []
    n = len(opts.strides)
    layer = 0
    while layer < opts.num_layers:
        ratios: list[float] = []
        scales: list[float] = []
        last = layer
        while last < n and opts.strides[last] == opts.strides[layer]:
            scale = _calculate_scale(opts.min_scale, opts.max_scale, last, n)
            if last == 0 and opts.reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                for ratio in opts.aspect_ratios:
                    ratios.append(ratio)
                    scales.append(scale)
                if opts.interpolated_scale_aspect_ratio > 0.0:
                    nxt = 1.0 if last == n - 1 else _calculate_scale(opts.min_scale, opts.max_scale, last + 1, n)
                    scales.append(math.sqrt(scale * nxt))
                    ratios.append(opts.interpolated_scale_aspect_ratio)
            last += 1
        sizes = [(s * math.sqrt(r), s / math.sqrt(r)) for s, r in zip(scales, ratios)]  # (w, h)
        stride = opts.strides[layer]
        fm_h = math.ceil(opts.input_size_height / stride)
        fm_w = math.ceil(opts.input_size_width / stride)
        for y in range(fm_h):
            for x in range(fm_w):
                cx = (x + opts.anchor_offset_x) / fm_w
                cy = (y + opts.anchor_offset_y) / fm_h
                for w, h in sizes:
                    out.append((cx, cy, 1.0, 1.0) if opts.fixed_anchor_size else (cx, cy, w, h))
        layer = last
    return np.array(out, np.float32).reshape(-1, 4)


# -- letterbox ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Letterbox:
    """How an image was placed in the model input: input = image * scale + pad (per axis, pixels)."""

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    input_width: int
    input_height: int

    def to_image(self, xy_norm: np.ndarray) -> np.ndarray:
        """Map [..., 2] points normalised to the model input back to original image pixels."""
        x = (xy_norm[..., 0] * self.input_width - self.pad_x) / self.scale_x
        y = (xy_norm[..., 1] * self.input_height - self.pad_y) / self.scale_y
        return np.stack([x, y], axis=-1)


def letterbox(
    image_bgr: np.ndarray, input_size: tuple[int, int], zoom_out: float = 1.0
) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and centre on a black canvas, as MediaPipe's ImageToTensor
    (keep_aspect_ratio, BORDER_ZERO) does. INTER_AREA when shrinking: MediaPipe's bilinear warp
    aliases large camera frames down to 192 px, which costs small faces.

    ``zoom_out`` > 1 shrinks the image that much further inside the canvas (more black border), the
    same as padding it first but without building the larger image."""
    if not zoom_out >= 1.0:
        raise ValueError(f"zoom_out must be >= 1, got {zoom_out}")
    in_w, in_h = input_size
    h, w = image_bgr.shape[:2]
    scale = min(in_w / w, in_h / h) / zoom_out
    new_w = min(in_w, max(1, round(w * scale)))
    new_h = min(in_h, max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    resized = cv2.resize(image_bgr, (new_w, new_h), interpolation=interp)
    pad_x, pad_y = (in_w - new_w) // 2, (in_h - new_h) // 2
    canvas = np.zeros((in_h, in_w, 3), np.uint8)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return canvas, Letterbox(new_w / w, new_h / h, pad_x, pad_y, in_w, in_h)


def prepare_input(
    image_bgr: np.ndarray, input_size: tuple[int, int], pre: Preprocessing, zoom_out: float = 1.0
) -> tuple[np.ndarray, Letterbox]:
    """The model's [1, H, W, 3] float input for a BGR uint8 image, and the letterbox to undo."""
    canvas, box = letterbox(image_bgr, input_size, zoom_out)
    if pre.color == "RGB":
        canvas = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
    x = (canvas.astype(np.float32) - np.float32(pre.mean)) / np.float32(pre.std)
    if pre.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return x[None], box


# -- decoding -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawDetections:
    """Decoded candidates before NMS, normalised to the model input (0..1)."""

    boxes: np.ndarray  # [N, 4] xmin, ymin, xmax, ymax
    keypoints: np.ndarray  # [N, K, 2] x, y
    scores: np.ndarray  # [N]


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, d: DecoderOptions) -> RawDetections:
    """TensorsToDetections: scores (clipped, sigmoid) and anchor-relative boxes/keypoints."""
    boxes = np.asarray(raw_boxes, np.float32).reshape(-1, d.num_coords)
    logits = np.asarray(raw_scores, np.float64).reshape(boxes.shape[0], -1)[:, 0]
    if d.score_clipping_thresh > 0:
        logits = np.clip(logits, -d.score_clipping_thresh, d.score_clipping_thresh)
    # float64 so exp(+-100) cannot overflow; NaN logits stay NaN and fail the threshold below.
    scores = 1.0 / (1.0 + np.exp(-logits)) if d.sigmoid_score else logits
    o = d.box_coord_offset
    if d.reverse_output_order:  # x, y, w, h
        cx, cy, w, h = boxes[:, o], boxes[:, o + 1], boxes[:, o + 2], boxes[:, o + 3]
    else:  # y, x, h, w
        cy, cx, h, w = boxes[:, o], boxes[:, o + 1], boxes[:, o + 2], boxes[:, o + 3]
    ax, ay, aw, ah = anchors[:, 0], anchors[:, 1], anchors[:, 2], anchors[:, 3]
    cx = cx / d.x_scale * aw + ax
    cy = cy / d.y_scale * ah + ay
    w = w / d.w_scale * aw
    h = h / d.h_scale * ah
    out_boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    k0 = d.keypoint_coord_offset
    kp = boxes[:, k0 : k0 + d.num_keypoints * d.num_values_per_keypoint]
    kp = kp.reshape(-1, d.num_keypoints, d.num_values_per_keypoint)[:, :, :2]
    if not d.reverse_output_order:
        kp = kp[:, :, ::-1]
    kx = kp[:, :, 0] / d.x_scale * aw[:, None] + ax[:, None]
    ky = kp[:, :, 1] / d.y_scale * ah[:, None] + ay[:, None]
    return RawDetections(out_boxes, np.stack([kx, ky], axis=2), scores.astype(np.float32))


def weighted_nms(det: RawDetections, threshold: float) -> RawDetections:
    """MediaPipe's WEIGHTED non-max suppression: each cluster of boxes overlapping the best remaining
    one by IoU > threshold becomes one detection whose box and keypoints are the score-weighted mean
    of the cluster, keeping the best score. Blending steadies boxes and landmarks frame to frame."""
    order = np.argsort(-det.scores, kind="stable")
    boxes, kps, scores = det.boxes[order], det.keypoints[order], det.scores[order]
    areas = np.maximum(0.0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0.0, boxes[:, 3] - boxes[:, 1])
    remaining = np.arange(len(scores))
    out_b, out_k, out_s = [], [], []
    while remaining.size:
        top = remaining[0]
        rest = boxes[remaining]
        iw = np.maximum(0.0, np.minimum(rest[:, 2], boxes[top, 2]) - np.maximum(rest[:, 0], boxes[top, 0]))
        ih = np.maximum(0.0, np.minimum(rest[:, 3], boxes[top, 3]) - np.maximum(rest[:, 1], boxes[top, 1]))
        inter = iw * ih
        union = areas[remaining] + areas[top] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        in_cluster = iou > threshold
        in_cluster[0] = True  # a degenerate (zero-area) top box still forms its own cluster
        members = remaining[in_cluster]
        weights = scores[members].astype(np.float64)
        total = weights.sum()
        if total > 0:
            out_b.append((boxes[members] * weights[:, None]).sum(0) / total)
            out_k.append((kps[members] * weights[:, None, None]).sum(0) / total)
        else:
            out_b.append(boxes[top])
            out_k.append(kps[top])
        out_s.append(scores[top])
        remaining = remaining[~in_cluster]
    if not out_s:
        return RawDetections(np.zeros((0, 4), np.float32), det.keypoints[:0], np.zeros(0, np.float32))
    return RawDetections(np.array(out_b, np.float32), np.array(out_k, np.float32), np.array(out_s, np.float32))


# -- the detector -------------------------------------------------------------------------------
class BlazeFaceDetector:
    """``detect(image_bgr) -> list[Face]`` in original-image pixels, sorted by score (highest first).

    Needs only ``manifest.extra`` and ``manifest.preprocessing`` (plus its name for messages), so the
    converter can wire it to a provisional manifest and the TF/TFLite networks it is verifying.
    """

    def __init__(
        self,
        manifest: Manifest,
        networks: dict[str, Network],
        *,
        min_face: int = 20,
        score_threshold: float | None = None,
        retry: bool = True,
    ) -> None:
        where = f"model {manifest.name}"
        if GRAPH not in networks:
            raise ModelError(f"BlazeFace needs one graph named {GRAPH!r}, got {sorted(networks)}", where)
        if min_face < 0:
            raise ModelError(f"min_face must be >= 0 pixels, got {min_face}", where)
        if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
            raise ModelError(f"score_threshold must be within 0..1, got {score_threshold}", where)
        self.manifest = manifest
        self.pipeline = manifest.name
        self.config = BlazeFaceConfig.from_extra(manifest.extra, where)
        self.anchors = ssd_anchors(self.config.anchors)
        if len(self.anchors) != self.config.decoder.num_boxes:
            raise ModelError(
                f"anchor options give {len(self.anchors)} anchors, decoder expects {self.config.decoder.num_boxes}",
                where,
            )
        self.network = networks[GRAPH]
        self.preprocessing = manifest.preprocessing
        self.min_face = int(min_face)
        self.score_threshold = (
            float(score_threshold) if score_threshold is not None else self.config.decoder.min_score_thresh
        )
        self.retry = self._retry_pass(manifest, networks, where) if retry else None

    def _retry_pass(
        self, manifest: Manifest, networks: dict[str, Network], where: str
    ) -> tuple[BlazeFaceDetector, float]:
        """The detector and zoom-out of the second look at a frame without faces (see LARGE_FACE_ZOOM_OUT)."""
        settings = manifest.extra.get("retry")
        if settings is None or RETRY_GRAPH not in networks:
            # An artifact built before the retry graph existed, or a caller wiring only the main graph
            # (the converter's checks of one graph): the model's own zoomed-out second look.
            return self, LARGE_FACE_ZOOM_OUT
        if not isinstance(settings, dict) or not isinstance(settings.get("zoom_out"), int | float):
            raise ModelError("manifest extra.retry must be an object with a number zoom_out", where)
        zoom_out = float(settings["zoom_out"])
        if not 1.0 <= zoom_out <= 10.0:
            raise ModelError(f"manifest extra.retry.zoom_out must be within 1..10, got {zoom_out}", where)
        inner = dataclasses.replace(manifest, name=f"{manifest.name} retry", extra=settings)
        # The same min_face and score threshold as the first look: one setting means one thing to the user.
        retry = BlazeFaceDetector(
            inner,
            {GRAPH: networks[RETRY_GRAPH]},
            min_face=self.min_face,
            score_threshold=self.score_threshold,
            retry=False,
        )
        return retry, zoom_out

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path,
        *,
        runtime: str = "auto",
        num_threads: int = 1,
        min_face: int = 20,
        score_threshold: float | None = None,
        retry: bool = True,
    ) -> BlazeFaceDetector:
        manifest, networks = load_detector_graphs(model_dir, "blazeface", runtime=runtime, num_threads=num_threads)
        return cls(manifest, networks, min_face=min_face, score_threshold=score_threshold, retry=retry)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.config.input_size

    def _split_outputs(self, outputs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Pick regressors and scores by their last dimension, not by output order, which differs
        between the shipped files (regressors first) and converted graphs."""
        d = self.config.decoder
        boxes = next((o for o in outputs if o.shape[-1] == d.num_coords and o.size == d.num_boxes * d.num_coords), None)
        scores = next((o for o in outputs if o.size == d.num_boxes), None)
        if boxes is None or scores is None:
            shapes = [list(o.shape) for o in outputs]
            raise ModelError(
                f"BlazeFace outputs {shapes} do not hold {d.num_boxes}x{d.num_coords} boxes and {d.num_boxes} scores",
                f"model {self.manifest.name}",
            )
        return boxes, scores

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """Faces in ``image_bgr``; an empty or unusable frame gives no faces rather than an exception."""
        try:
            image = to_bgr(image_bgr)
        except ImageError as exc:
            log.debug("skipping frame: %s", exc)
            return []
        faces = self.detect_once(image)
        if not faces and self.retry is not None:
            # Only when nothing was found, so frames with faces cost one inference as before.
            detector, zoom_out = self.retry
            faces = detector.detect_once(image, zoom_out)
        return faces

    def detect_once(self, image_bgr: np.ndarray, zoom_out: float = 1.0) -> list[Face]:
        """One model pass, no retry, with the image shrunk ``zoom_out`` times inside the input (1: fit the
        input, as MediaPipe does); faces in original-image pixels, sorted by score."""
        try:
            image = to_bgr(image_bgr)
        except ImageError as exc:
            log.debug("skipping frame: %s", exc)
            return []
        x, box = prepare_input(image, self.input_size, self.preprocessing, zoom_out)
        raw_boxes, raw_scores = self._split_outputs(self.network.run(x))
        det = decode(raw_boxes, raw_scores, self.anchors, self.config.decoder)
        keep = det.scores >= self.score_threshold  # NaN scores compare False and are dropped
        det = RawDetections(det.boxes[keep], det.keypoints[keep], det.scores[keep])
        if det.scores.size == 0:
            return []
        det = weighted_nms(det, self.config.decoder.min_suppression_threshold)
        corners = box.to_image(det.boxes.reshape(-1, 2, 2)).reshape(-1, 4)
        points = box.to_image(det.keypoints)
        faces = []
        for (x1, y1, x2, y2), pts, score in zip(corners, points, det.scores):
            if not np.isfinite([x1, y1, x2, y2]).all() or min(x2 - x1, y2 - y1) < self.min_face:
                continue
            landmarks = {name: (float(px), float(py)) for name, (px, py) in zip(self.config.keypoints, pts)}
            faces.append(Face(BBox(float(x1), float(y1), float(x2), float(y2)), float(score), landmarks))
        faces.sort(key=lambda f: -f.score)
        return faces
