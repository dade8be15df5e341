"""Frozen TF1 GraphDef (.pb): the FaceNet lineage's deployment format."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from facelite.converter.formats.graphdef import graph_source, read_graph_def
from facelite.converter.recipe import GraphSource


def load_graph(
    path: Path,
    *,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
) -> GraphSource:
    return graph_source(read_graph_def(path), inputs, outputs, input_shape, where=str(path))
