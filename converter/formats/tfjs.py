"""TF.js *graph* models (``model.json`` + ``.bin`` shards) read without the ``tensorflowjs`` package.

The official package pulls in jax and TF-DF and does not import here (docs/toolchain.md), and the format is
simple: ``modelTopology`` is a TensorFlow GraphDef written as protobuf JSON, and ``weightsManifest``
lists the Const tensors' bytes in order across the shard files. What TensorFlow cannot import as is are
the ops tfjs-converter fuses for its own kernels (``_FusedConv2D``, ``FusedDepthwiseConv2dNative``,
``_FusedMatMul`` with a ``fused_ops`` list, and a standalone ``Prelu``): they are split back into
plain TF ops here. PReLU is written as ``relu(x) + (-alpha) * relu(-x)``, the pattern the TFLite
converter turns into one native PRELU op.

Order of work in ``load_graph``: parse JSON -> fill Consts from the shards -> ``graph_fixes`` (a
model's own repairs, seeing the graph as tfjs shipped it, fused ops included) -> split fused ops ->
check every op is known to TensorFlow -> import with batch 1 (facelite.converter.formats.graphdef).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facelite.converter.formats import FormatError
from facelite.converter.recipe import GraphSource

log = logging.getLogger(__name__)

GraphDef = Any  # tensorflow.compat.v1.GraphDef; TF is imported lazily (only the converter needs it)

# Bytes per element as stored in a shard; quantized weights use the quantization dtype instead.
_STORED_BYTES = {"float32": 4, "int32": 4, "bool": 1, "uint8": 1, "uint16": 2, "float16": 2}
_NUMPY = {
    "float32": np.float32,
    "int32": np.int32,
    "bool": np.bool_,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "float16": np.float16,
}

# tfjs fused op -> (plain TF op, attributes of the fused node the plain op keeps)
_FUSED_BASE = {
    "_FusedConv2D": "Conv2D",
    "FusedDepthwiseConv2dNative": "DepthwiseConv2dNative",
    "_FusedMatMul": "MatMul",
}
# Extra inputs each fused op takes from the fused node's argument list, in order.
_FUSED_ARGS = {"BiasAdd": 1, "Add": 1, "FusedBatchNorm": 4, "Prelu": 1}
_UNARY_ACTIVATIONS = ("Relu", "Relu6", "Elu", "Selu", "Sigmoid", "Tanh", "LeakyRelu")


@dataclass(frozen=True)
class WeightSpec:
    """One entry of a weights group: where it lies in the group's bytes and how to decode it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # dtype of the tensor in the graph
    stored_dtype: str  # dtype of the bytes in the shard (differs when quantized)
    scale: float | None = None  # uint8/uint16 affine quantization: value = q * scale + min
    minimum: float | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _STORED_BYTES[self.stored_dtype]

    def decode(self, raw: bytes) -> np.ndarray:
        q: np.ndarray = np.frombuffer(raw, dtype=_NUMPY[self.stored_dtype]).reshape(self.shape)
        if self.stored_dtype in ("uint8", "uint16") and self.dtype != self.stored_dtype:
            value = q.astype(np.float32) * np.float32(self.scale or 0.0) + np.float32(self.minimum or 0.0)
            # Integer tensors quantized by tfjs-converter must come back as exact integers.
            return np.round(value).astype(_NUMPY[self.dtype]) if self.dtype == "int32" else value
        return q.astype(_NUMPY[self.dtype])


def _read_model_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FormatError("TF.js model.json not found", str(path)) from None
    except OSError as exc:
        raise FormatError(f"cannot read TF.js model.json: {exc.strerror}", str(path)) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"model.json is not valid JSON (line {exc.lineno}: {exc.msg})", str(path)) from None
    if not isinstance(data, dict):
        raise FormatError("model.json is not a JSON object", str(path))
    topology = data.get("modelTopology")
    if not isinstance(topology, dict) or "node" not in topology:
        fmt = data.get("format", "unknown")
        raise FormatError(
            f"model.json has no graph topology (format {fmt!r}); only TF.js graph models are supported",
            str(path),
            "layers-format models need their network written in Keras",
        )
    if not isinstance(data.get("weightsManifest"), list):
        raise FormatError("model.json has no weightsManifest list", str(path))
    return data


def _weight_spec(entry: Any, where: str) -> WeightSpec:
    try:
        name = str(entry["name"])
        shape = tuple(int(s) for s in entry["shape"])
        dtype = str(entry["dtype"])
    except (KeyError, TypeError, ValueError):
        raise FormatError(f"weightsManifest entry {str(entry)[:80]} lacks name/shape/dtype", where) from None
    quant = entry.get("quantization")
    if quant is None:
        stored, scale, minimum = dtype, None, None
    else:
        stored = str(quant.get("dtype"))
        scale, minimum = quant.get("scale"), quant.get("min")
        if stored in ("uint8", "uint16") and (scale is None or minimum is None):
            raise FormatError(f"weight {name!r} is {stored}-quantized without scale/min", where)
    if stored not in _STORED_BYTES or dtype not in _NUMPY:
        raise FormatError(f"weight {name!r} has unsupported dtype {dtype!r} (stored as {stored!r})", where)
    return WeightSpec(name, shape, dtype, stored, scale, minimum)


def read_weights(model_json: Path, manifest: Sequence[Any]) -> dict[str, np.ndarray]:
    """Decode every weight of a TF.js ``weightsManifest``; shard paths are relative to ``model_json``."""
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        paths = [model_json.parent / str(p) for p in group.get("paths", [])]
        specs = [_weight_spec(w, str(model_json)) for w in group.get("weights", [])]
        if not paths:
            raise FormatError("a weightsManifest group lists no shard files", str(model_json))
        chunks = []
        for shard in paths:
            try:
                chunks.append(shard.read_bytes())
            except FileNotFoundError:
                raise FormatError("weight shard not found", str(shard), "copy every .bin next to model.json") from None
            except OSError as exc:
                raise FormatError(f"cannot read weight shard: {exc.strerror}", str(shard)) from None
        # A group's weights are one byte stream split across its shards (tfjs-converter's 4 MB chunks).
        data = b"".join(chunks)
        need = sum(s.nbytes for s in specs)
        if len(data) < need:
            raise FormatError(
                f"weight shard is truncated: the group needs {need} bytes, its shards hold {len(data)}",
                str(paths[-1]),
                "the .bin file is incomplete; fetch it again",
            )
        if len(data) > need:
            log.debug("%s: %d bytes beyond the listed weights ignored", paths[-1].name, len(data) - need)
        offset = 0
        for spec in specs:
            weights[spec.name] = spec.decode(data[offset : offset + spec.nbytes])
            offset += spec.nbytes
    return weights


def read_graph_def(path: Path) -> GraphDef:
    """``model.json`` -> GraphDef with every Const filled from the shards (fused ops still fused)."""
    path = Path(path)
    return _graph_def(path, _read_model_json(path))


def _graph_def(path: Path, data: dict[str, Any]) -> GraphDef:
    import tensorflow as tf
    from google.protobuf import json_format

    graph_def = tf.compat.v1.GraphDef()
    try:
        json_format.ParseDict(data["modelTopology"], graph_def, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        first = str(exc).splitlines()[0][:200]
        raise FormatError(f"modelTopology is not a TensorFlow GraphDef: {first}", str(path)) from None
    if not graph_def.node:
        raise FormatError("modelTopology has no nodes", str(path))
    weights = read_weights(path, data["weightsManifest"])
    for node in graph_def.node:
        if node.op != "Const":
            continue
        tensor = node.attr["value"].tensor
        already = tensor.tensor_content or any(
            len(getattr(tensor, f)) for f in ("float_val", "int_val", "bool_val", "int64_val", "half_val")
        )
        if node.name in weights:
            dtype = tf.dtypes.as_dtype(node.attr["dtype"].type)
            tensor.CopyFrom(tf.make_tensor_proto(weights[node.name], dtype=dtype))
        elif not already:
            raise FormatError(f"Const node {node.name!r} has no value in the weightsManifest", str(path))
    return graph_def


def _decoded_list(attr: Any) -> list[str]:
    return [s.decode() if isinstance(s, bytes) else str(s) for s in attr.list.s]


def _node(graph_def: GraphDef, name: str, op: str, inputs: Sequence[str], dtype_attr: Any = None) -> Any:
    node = graph_def.node.add()
    node.name, node.op = name, op
    node.input.extend(inputs)
    if dtype_attr is not None:
        node.attr["T"].CopyFrom(dtype_attr)
    return node


def _prelu(out: GraphDef, consts: dict[str, Any], name: str, x: str, alpha: str, t_attr: Any, rank: int | None) -> None:
    """``relu(x) + (-alpha) * relu(-x)`` named ``name``: the TFLite converter folds it into one PRELU."""
    import tensorflow as tf

    alpha_node = consts.get(alpha.split(":")[0])
    if alpha_node is not None:
        value = tf.make_ndarray(alpha_node.attr["value"].tensor)
        if value.ndim == 1 and rank is not None and rank > 2:
            # TFLite matches PReLU only when alpha's rank is the input's minus one (Keras' [1, 1, C]).
            value = value.reshape((1,) * (rank - 2) + value.shape)
        neg = _node(out, f"{name}/neg_alpha", "Const", [])
        neg.attr["dtype"].CopyFrom(alpha_node.attr["dtype"])
        neg.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(-value))
    else:
        _node(out, f"{name}/neg_alpha", "Neg", [alpha], t_attr)
    _node(out, f"{name}/pos", "Relu", [x], t_attr)
    _node(out, f"{name}/neg_x", "Neg", [x], t_attr)
    _node(out, f"{name}/neg_relu", "Relu", [f"{name}/neg_x"], t_attr)
    _node(out, f"{name}/neg_part", "Mul", [f"{name}/neg_relu", f"{name}/neg_alpha"], t_attr)
    _node(out, name, "AddV2", [f"{name}/pos", f"{name}/neg_part"], t_attr)


_RANK4 = {"Conv2D", "DepthwiseConv2dNative", "_FusedConv2D", "FusedDepthwiseConv2dNative", "MaxPool", "AvgPool"}
_RANK2 = {"MatMul", "_FusedMatMul"}
_SAME_RANK = {"Add", "AddV2", "Sub", "Mul", "BiasAdd", "Relu", "Relu6", "Identity", "Prelu", "FusedBatchNormV3", "Abs"}


def _rank(nodes: dict[str, Any], name: str, depth: int = 32) -> int | None:
    """Rank of a tensor when the ops leading to it make it obvious; None when unsure."""
    node = nodes.get(name.split(":")[0].lstrip("^"))
    for _ in range(depth):
        if node is None:
            return None
        if node.op in _RANK4:
            return 4
        if node.op in _RANK2:
            return 2
        if node.op == "Placeholder" and "shape" in node.attr and not node.attr["shape"].shape.unknown_rank:
            return len(node.attr["shape"].shape.dim)
        if node.op not in _SAME_RANK or not node.input:
            return None
        node = nodes.get(node.input[0].split(":")[0].lstrip("^"))
    return None


def split_fused_ops(graph_def: GraphDef, where: str = "model.json") -> GraphDef:
    """Rewrite tfjs-only ops as plain TF ops; the last op of each chain keeps the fused node's name."""
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry

    out = tf.compat.v1.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    nodes = {n.name: n for n in graph_def.node}
    consts = {k: n for k, n in nodes.items() if n.op == "Const"}
    float_attr = tf.compat.v1.AttrValue(type=tf.float32.as_datatype_enum)
    for node in graph_def.node:
        # Some tfjs-converter versions drop ``T`` from fused/Prelu nodes; their tensors are float32.
        t_attr = node.attr["T"] if "T" in node.attr else float_attr
        if node.op == "Prelu":
            data = [i for i in node.input if not i.startswith("^")]
            _prelu(out, consts, node.name, data[0], data[1], t_attr, _rank(nodes, data[0]))
            continue
        if node.op not in _FUSED_BASE:
            out.node.add().CopyFrom(node)
            continue
        base_op = _FUSED_BASE[node.op]
        data = [i for i in node.input if not i.startswith("^")]
        control = [i for i in node.input if i.startswith("^")]
        fused = _decoded_list(node.attr["fused_ops"]) if "fused_ops" in node.attr else []
        args = data[2:]
        name = node.name
        cur = name if not fused else f"{name}/{base_op}"
        base = _node(out, cur, base_op, [*data[:2], *control])
        base.device = node.device
        allowed = {a.name for a in op_def_registry.get(base_op).attr}
        for key, value in node.attr.items():
            if key in allowed:
                base.attr[key].CopyFrom(value)
        needed = sum(_FUSED_ARGS.get(op, 0) for op in fused)
        if needed > len(args):
            raise FormatError(
                f"node {name!r} ({node.op}) fuses {fused} but has {len(args)} of their {needed} argument(s)", where
            )
        used = 0
        for i, op in enumerate(fused):
            step = name if i == len(fused) - 1 else f"{name}/{op}"
            if op in ("BiasAdd", "Add"):
                n = _node(out, step, "BiasAdd", [cur, args[used]], t_attr)
                if "data_format" in node.attr and base_op != "MatMul":
                    n.attr["data_format"].CopyFrom(node.attr["data_format"])
            elif op == "FusedBatchNorm":
                n = _node(out, step, "FusedBatchNormV3", [cur, *args[used : used + 4]], t_attr)
                n.attr["U"].CopyFrom(t_attr)
                n.attr["epsilon"].CopyFrom(node.attr["epsilon"])
                n.attr["is_training"].b = False
                if "data_format" in node.attr:
                    n.attr["data_format"].CopyFrom(node.attr["data_format"])
            elif op in _UNARY_ACTIVATIONS:
                n = _node(out, step, op, [cur], t_attr)
                if op == "LeakyRelu":
                    n.attr["alpha"].f = node.attr["leakyrelu_alpha"].f if "leakyrelu_alpha" in node.attr else 0.2
            elif op == "Prelu":
                _prelu(out, consts, step, cur, args[used], t_attr, 2 if base_op == "MatMul" else 4)
            else:
                raise FormatError(f"node {name!r} ({node.op}) fuses an unknown op {op!r}", where)
            used += _FUSED_ARGS.get(op, 0)
            cur = step
    unknown = sorted({n.op for n in out.node if op_def_registry.get(n.op) is None})
    if unknown:
        first = next(n.name for n in out.node if n.op == unknown[0])
        raise FormatError(
            f"the graph uses op(s) TensorFlow does not know: {', '.join(unknown)} (e.g. node {first!r})", where
        )
    return out


def _signature_outputs(data: dict[str, Any]) -> list[str]:
    """Output names the converter recorded, if any (``signature`` or ``userDefinedMetadata.signature``)."""
    for sig in (data.get("signature"), (data.get("userDefinedMetadata") or {}).get("signature")):
        if isinstance(sig, dict) and isinstance(sig.get("outputs"), dict):
            names = [v.get("name", k) for k, v in sig["outputs"].items() if isinstance(v, dict)]
            if names:
                return [n.split(":")[0] for n in names]
    return []


def load_graph(
    path: Path,
    *,
    inputs: list[str] | None = None,
    outputs: list[str] | None = None,
    input_shape: list[int] | None = None,
    graph_fixes: Callable[[GraphDef], GraphDef] | None = None,
) -> GraphSource:
    """A TF.js graph model as a GraphSource named ``model`` (batch 1).

    ``graph_fixes`` sees the GraphDef as shipped (Consts filled, tfjs fused ops not yet split) and
    returns the repaired one. Inputs default to the float placeholders, outputs to the converter's
    recorded signature, else to the nodes nothing consumes.
    """
    from facelite.converter.formats.graphdef import graph_source

    path = Path(path)
    data = _read_model_json(path)
    graph_def = _graph_def(path, data)
    if graph_fixes is not None:
        graph_def = graph_fixes(graph_def)
    graph_def = split_fused_ops(graph_def, str(path))
    if outputs is None:
        names = {n.name for n in graph_def.node}
        recorded = [o for o in _signature_outputs(data) if o in names]
        outputs = recorded or None
    return graph_source(graph_def, inputs, outputs, input_shape, where=str(path))
