"""Face detectors, one backend per module (agent/vision/detect/<type>.py on agent/vision/detect/base.py), chosen by
the manifest's ``detector_type``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from facelite.model.manifest import Manifest
from facelite.vision.detect.base import Detector, detection_key, load_detector_graphs, pipeline_label

__all__ = ["Detector", "create_detector", "detection_key", "load_detector_graphs", "pipeline_label"]

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
