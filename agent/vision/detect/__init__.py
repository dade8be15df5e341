"""Face detectors, one backend per module (agent/vision/detect/<type>.py on agent/vision/detect/base.py), chosen by
the manifest's ``detector_type``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from facelite.model.manifest import Manifest
from facelite.vision.detect.base import Detector, detection_key, load_detector_graphs, pipeline_label

__all__ = [
    "Detector",
    "create_detector",
    "detection_key",
    "device_pipelines",
    "load_detector_graphs",
    "pipeline_label",
]

if TYPE_CHECKING:
    from facelite.vision.detect.blazeface import BlazeFaceDetector
    from facelite.vision.detect.mtcnn import MTCNNDetector


def create_detector(
    model_dir: str | Path,
    *,
    runtime: str = "auto",
    num_threads: int = 1,
    min_face: int = 20,
    score_threshold: float | None = None,
) -> Detector:
    """Load the detector described by ``model_dir/manifest.json``."""
    from facelite.errors import ModelError

    manifest = Manifest.load(model_dir)
    if manifest.kind != "detector":
        raise ModelError(f"{manifest.name} is a {manifest.kind}, not a detector", str(model_dir))
    cls: type[MTCNNDetector] | type[BlazeFaceDetector]
    if manifest.detector_type == "mtcnn":
        from facelite.vision.detect.mtcnn import MTCNNDetector as cls
    elif manifest.detector_type == "blazeface":
        from facelite.vision.detect.blazeface import BlazeFaceDetector as cls
    else:
        raise ModelError(f"unknown detector_type {manifest.detector_type!r}", str(model_dir))
    return cls.from_model_dir(
        model_dir, runtime=runtime, num_threads=num_threads, min_face=min_face, score_threshold=score_threshold
    )


def device_pipelines(detectors: Mapping[str, str | Path], *, min_face: int = 20) -> list[Detector]:
    """Every detection pipeline a device can run from these built detectors (name -> model folder): each
    detector, then BlazeFace with MTCNN's O-Net placing the landmarks when both are built.

    The one list that ``make convert`` calibrates and ``make eval-lfw`` / ``facelite eval`` measure, so a
    pipeline a device can be configured with never lacks its calibration curve.
    """
    pipelines = [create_detector(d, min_face=min_face) for d in detectors.values()]
    if "blazeface" in detectors and "mtcnn" in detectors:
        # Imported here: the agent's start path loads only what its config names (RSS budget, make bench).
        from facelite.vision.detect.onet_landmarks import OnetLandmarks

        base = pipelines[list(detectors).index("blazeface")]
        pipelines.append(OnetLandmarks.from_model_dirs(base, detectors["mtcnn"]))
    return pipelines
