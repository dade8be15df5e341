"""Face detectors, one backend per module, chosen by the manifest's ``detector_type``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from agent.geometry import Face
from agent.manifest import Manifest
from agent.runtime import Network

if TYPE_CHECKING:
    from agent.detect.blazeface import BlazeFaceDetector
    from agent.detect.mtcnn import MTCNNDetector


class Detector(Protocol):
    """``detect(image_bgr) -> faces`` in pixel coordinates, sorted by score (highest first)."""

    manifest: Manifest

    def detect(self, image: np.ndarray) -> list[Face]: ...


def load_detector_graphs(
    model_dir: str | Path, detector_type: str, *, runtime: str = "auto", num_threads: int = 1
) -> tuple[Manifest, dict[str, Network]]:
    """A detector artifact's manifest and verified graphs, refusing an artifact of another detector type."""
    from agent.errors import ModelError
    from agent.runtime import load_graphs

    manifest = Manifest.load(model_dir)
    if manifest.detector_type != detector_type:
        raise ModelError(
            f"{manifest.name} is a {manifest.detector_type!r} detector, not {detector_type}", str(model_dir)
        )
    return manifest, dict(load_graphs(manifest, model_dir, num_threads=num_threads, runtime=runtime))


def create_detector(
    model_dir: str | Path,
    *,
    runtime: str = "auto",
    num_threads: int = 1,
    min_face: int = 20,
    score_threshold: float | None = None,
) -> Detector:
    """Load the detector described by ``model_dir/manifest.json``."""
    from agent.errors import ModelError

    manifest = Manifest.load(model_dir)
    if manifest.kind != "detector":
        raise ModelError(f"{manifest.name} is a {manifest.kind}, not a detector", str(model_dir))
    cls: type[MTCNNDetector] | type[BlazeFaceDetector]
    if manifest.detector_type == "mtcnn":
        from agent.detect.mtcnn import MTCNNDetector as cls
    elif manifest.detector_type == "blazeface":
        from agent.detect.blazeface import BlazeFaceDetector as cls
    else:
        raise ModelError(f"unknown detector_type {manifest.detector_type!r}", str(model_dir))
    return cls.from_model_dir(
        model_dir, runtime=runtime, num_threads=num_threads, min_face=min_face, score_threshold=score_threshold
    )
