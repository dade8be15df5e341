"""TF1 GraphDef plumbing shared by the frozen-graph and checkpoint formats.

The seeds' path for TF1 models: pin training switches to inference (``phase_train=False``), keep only
what the outputs need, drop training-only nodes, then convert a concrete function with batch 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facelite.converter.formats import FormatError
from facelite.converter.recipe import GraphSource

log = logging.getLogger(__name__)

# Boolean placeholders that select the training branch in the FaceNet / MTCNN lineage.
TRAINING_SWITCHES = ("phase_train", "is_training", "training", "keep_probability", "keep_prob")


def read_graph_def(path: Path) -> Any:
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FormatError(f"cannot read frozen graph: {exc.strerror}", str(path)) from None
    gd = tf.compat.v1.GraphDef()
    try:
        gd.ParseFromString(data)
    except (DecodeError, RuntimeError) as exc:
        raise FormatError(f"not a TensorFlow GraphDef (protobuf parse failed: {exc})", str(path)) from None
    if not gd.node:
        raise FormatError("GraphDef has no nodes (empty or wrong file)", str(path))
    return gd


def _strip(name: str) -> str:
    return name.split(":")[0].lstrip("^")


def placeholders(graph_def: Any) -> list[Any]:
    return [n for n in graph_def.node if n.op in ("Placeholder", "PlaceholderWithDefault")]


def discover_io(graph_def: Any) -> tuple[list[str], list[str]]:
    """Inputs = float placeholders that are not training switches; outputs = nodes nobody consumes."""
    consumed = {_strip(i) for n in graph_def.node for i in n.input}
    inputs = [
        n.name
        for n in placeholders(graph_def)
        if n.name.split("/")[-1] not in TRAINING_SWITCHES and n.attr["dtype"].type == 1  # DT_FLOAT
    ]
    outputs = [n.name for n in graph_def.node if n.name not in consumed and n.op not in ("Const", "NoOp", "Assert")]
    outputs = [o for o in outputs if o not in inputs and not o.startswith("save/")]
    return inputs, outputs


def pin_training_switches(graph_def: Any) -> list[str]:
    """Replace boolean training placeholders with constants False (in place); return their names."""
    import tensorflow as tf

    pinned = []
    for node in graph_def.node:
        if node.op in ("Placeholder", "PlaceholderWithDefault") and node.name.split("/")[-1] in TRAINING_SWITCHES:
            if node.attr["dtype"].type != tf.bool.as_datatype_enum:
                # keep_prob-style float switches: dropout off means 1.0
                value = tf.make_tensor_proto(1.0, dtype=tf.float32)
            else:
                value = tf.make_tensor_proto(False, dtype=tf.bool)
            dtype = node.attr["dtype"]
            del node.input[:]
            node.op = "Const"
            node.attr.clear()
            node.attr["dtype"].CopyFrom(dtype)
            node.attr["value"].tensor.CopyFrom(value)
            pinned.append(node.name)
    return pinned


def inference_graph(graph_def: Any, outputs: Sequence[str]) -> Any:
    """Keep what ``outputs`` need and drop training-only nodes (Identity chains, CheckNumerics, ...)."""
    import tensorflow as tf

    names = {n.name for n in graph_def.node}
    missing = [o for o in outputs if _strip(o) not in names]
    if missing:
        raise FormatError(f"output tensor(s) {missing} not in the graph", fix="check --outputs names")
    sub = tf.compat.v1.graph_util.extract_sub_graph(graph_def, [_strip(o) for o in outputs])
    return tf.compat.v1.graph_util.remove_training_nodes(sub, protected_nodes=[_strip(o) for o in outputs])


class _ConcreteNetwork:
    """Runs the float TF graph: the verification baseline."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        import tensorflow as tf

        out = self._fn(*[tf.constant(np.asarray(x, np.float32)) for x in inputs])
        out = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o) for o in out]


def graph_source(
    graph_def: Any,
    inputs: Sequence[str] | None,
    outputs: Sequence[str] | None,
    input_shape: Sequence[int] | None,
    where: str,
    name: str = "model",
) -> GraphSource:
    """A GraphSource from a frozen GraphDef: batch pinned to 1, training switches pinned to inference."""
    import tensorflow as tf

    pinned = pin_training_switches(graph_def)
    if pinned:
        log.info("pinned training switches to inference: %s", ", ".join(pinned))
    found_in, found_out = discover_io(graph_def)
    inputs = list(inputs or found_in)
    outputs = list(outputs or found_out)
    if len(inputs) != 1:
        raise FormatError(f"expected one image input, found {inputs or 'none'}", where, "name it with --inputs")
    if not outputs:
        raise FormatError("no output tensor found", where, "name it with --outputs")
    names = {n.name: n for n in graph_def.node}
    if _strip(inputs[0]) not in names:
        raise FormatError(f"input tensor {inputs[0]!r} not in the graph", where, f"graph inputs: {found_in}")
    graph_def = inference_graph(graph_def, outputs)
    node = names[_strip(inputs[0])]
    shape = list(input_shape) if input_shape else [d.size for d in node.attr["shape"].shape.dim]
    if not shape:
        raise FormatError(f"input {inputs[0]!r} has no static shape", where, "pass --input-shape 1,H,W,3")
    shape = [1, *[(-1 if s is None or s < 0 else int(s)) for s in shape[1:]]]
    tensor_in = [i if ":" in i else f"{i}:0" for i in inputs]
    tensor_out = [o if ":" in o else f"{o}:0" for o in outputs]

    def _import() -> None:
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(_import, [])
    try:
        fn = wrapped.prune(
            [wrapped.graph.get_tensor_by_name(t) for t in tensor_in],
            [wrapped.graph.get_tensor_by_name(t) for t in tensor_out],
        )
    except (KeyError, ValueError) as exc:
        raise FormatError(f"cannot select inputs/outputs: {exc}", where) from None
    spec = tf.TensorSpec([1, *[None if s < 0 else s for s in shape[1:]]], tf.float32)
    concrete = tf.function(lambda x: fn(x)).get_concrete_function(spec)

    def make_converter() -> Any:
        # No model argument: with Keras 3 it silently drops weights (docs/toolchain.md).
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete])

    return GraphSource(
        name=name, make_converter=make_converter, reference=_ConcreteNetwork(concrete), input_shape=shape
    )
