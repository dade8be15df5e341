"""What every detector backend is and how its artifact is loaded (the backends import this, never the package)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Protocol

import numpy as np

from facelite.errors import ModelError
from facelite.model.manifest import Manifest
from facelite.model.runtime import Network, load_graphs
from facelite.vision.geometry import Face


class Detector(Protocol):
    """``detect(image_bgr) -> faces`` in pixel coordinates, sorted by score (highest first).

    ``pipeline`` names the path from image to landmarks ("blazeface", "mtcnn", "blazeface+onet"): the
    embedders' calibration curves are measured, and looked up, per pipeline.
    """

    manifest: Manifest
    pipeline: str

    def detect(self, image: np.ndarray) -> list[Face]: ...


def load_detector_graphs(
    model_dir: str | Path,
    detector_type: str,
    *,
    runtime: str = "auto",
    num_threads: int = 1,
    graphs: Collection[str] | None = None,
) -> tuple[Manifest, dict[str, Network]]:
    """A detector artifact's manifest and verified graphs (all, or only ``graphs``), refusing an artifact of
    another detector type."""
    manifest = Manifest.load(model_dir)
    if manifest.detector_type != detector_type:
        raise ModelError(
            f"{manifest.name} is a {manifest.detector_type!r} detector, not {detector_type}", str(model_dir)
        )
    return manifest, dict(load_graphs(manifest, model_dir, num_threads=num_threads, runtime=runtime, only=graphs))


def detection_key(detector: Detector) -> str:
    """What identifies a detector's output for caches: its pipeline and the sha256 of every model on it
    (a pipeline of two models, such as OnetLandmarks, says so with a ``sha256`` of its own)."""
    return f"{detector.pipeline}:{getattr(detector, 'sha256', None) or detector.manifest.sha256}"


def pipeline_label(detector: Detector) -> str:
    """The pipeline as a model name: blazeface/fp32, or blazeface/fp32+onet when O-Net places the landmarks."""
    m = detector.manifest
    return f"{m.name}/{m.variant}{detector.pipeline.removeprefix(m.name)}"
