"""What a model recipe gives the build: its graphs as TensorFlow sees them, and how to feed them.

A recipe (converter/models/<name>.py, or converter/formats/* for a user's own file) knows one model:
where its source is, how to turn it into TFLiteConverters, how to run the float source for
verification, what real inputs calibrate it, and the manifest fields the agent will need.
The build (converter/build.py) does the rest the same way for every model: variants, runtime
checks, verification, gates, manifests and reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from facelite.model.manifest import Alignment, Preprocessing, Source
from facelite.model.runtime import Network


@dataclass
class GraphSource:
    """One graph of a model (most models have one, named ``model``; MTCNN has pnet/rnet/onet)."""

    name: str
    # A fresh tf.lite.TFLiteConverter each call (variants mutate converter settings).
    make_converter: Callable[[], Any]
    # The float source model, run by TensorFlow: the baseline every variant is compared to.
    reference: Network
    input_shape: list[int]  # batch 1; -1 marks dimensions the agent resizes (P-Net H/W)
    # Sources that already are .tflite (BlazeFace): copied as the fp32 variant; other variants come from
    # make_converter (a float graph rebuilt from the file) or are refused by it.
    tflite_file: Path | None = None
    # Variants that carry this graph in float, as the fp32 variant has it (the shipped file when the source is
    # .tflite, else the fp32 conversion): a graph whose integer form fails the gates, so a mixed-precision
    # artifact keeps it float (BlazeFace's short-range retry, MTCNN's P-Net; see their recipes).
    float_variants: frozenset[str] = frozenset()
    # Op types the int8 variant keeps float inside an integer graph (QUANTIZE/DEQUANTIZE around each): ops whose
    # integer kernels are slower than float ones plus the conversions (MobileFaceNet's PReLU; see its recipe).
    # uint8-io stays fully integer: its uint8 inputs and outputs need the plain converter.
    int8_float_ops: frozenset[str] = frozenset()


class Recipe(Protocol):
    name: str
    kind: Literal["detector", "embedder"]
    preprocessing: Preprocessing
    detector_type: str | None  # detectors: "mtcnn" | "blazeface" | ...
    extra: dict[str, Any]  # model-specific manifest settings (anchors, P-Net scales, ...)
    default_variants: Sequence[str]

    # Read-only: a recipe may hold them as fields or derive them from the model (UserRecipe).
    @property
    def alignment(self) -> Alignment | None:  # embedders
        ...

    @property
    def embedding_size(self) -> int | None:  # embedders
        ...

    def source(self) -> Source:
        """Manifest ``source`` block (package, version, file, sha256, format, licence)."""
        ...

    def graphs(self) -> list[GraphSource]:
        """Load the source model (fetching it if needed) and expose its graphs."""
        ...

    def calibration_samples(self, graph: str, images: Sequence[np.ndarray], count: int) -> list[list[np.ndarray]]:
        """Up to ``count`` real input tuples for ``graph`` (float, preprocessed, batch 1).

        ``images`` are uint8 BGR arrays: for embedders, face crops already aligned onto the recipe's
        template by the build (with the device's own detector and aligner); for detectors, whole photos.
        """
        ...

    def detector(self, networks: dict[str, Network]) -> Any:
        """Detectors only: the agent's detector wired to these networks (TFLite or the TF reference),
        so verification compares boxes and landmarks the way the device computes them."""
        ...


@dataclass
class RecipeInfo:
    """Static facts a recipe fills in; a convenient base for dataclass recipes."""

    name: str
    kind: Literal["detector", "embedder"]
    preprocessing: Preprocessing
    alignment: Alignment | None = None
    embedding_size: int | None = None
    detector_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    default_variants: Sequence[str] = ("fp32", "int8")
