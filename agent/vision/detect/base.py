"""What every detector backend is and how its artifact is loaded (the backends import this, never the package)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from facelite.errors import ModelError
from facelite.model.manifest import Manifest
from facelite.model.runtime import Network, load_graphs
from facelite.vision.geometry import Face


class Detector(Protocol):
    """``detect(image_bgr) -> faces`` in pixel coordinates, sorted by score (highest first)."""

    manifest: Manifest

    def detect(self, image: np.ndarray) -> list[Face]: ...


def load_detector_graphs(
    model_dir: str | Path, detector_type: str, *, runtime: str = "auto", num_threads: int = 1
) -> tuple[Manifest, dict[str, Network]]:
    """A detector artifact's manifest and verified graphs, refusing an artifact of another detector type."""
    manifest = Manifest.load(model_dir)
    if manifest.detector_type != detector_type:
        raise ModelError(
            f"{manifest.name} is a {manifest.detector_type!r} detector, not {detector_type}", str(model_dir)
        )
    return manifest, dict(load_graphs(manifest, model_dir, num_threads=num_threads, runtime=runtime))
