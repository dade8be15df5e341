"""A float TensorFlow function rebuilt op by op from a small float .tflite file, so it can be re-quantised.

MediaPipe ships BlazeFace only as .tflite (fp16 weights behind DEQUANTIZE ops, float compute): there is
no float TensorFlow graph to hand TFLiteConverter. The flatbuffer, read with the schema module that
ai-edge-litert ships (no extra dependency), holds every weight and op option, and BlazeFace needs only
a dozen builtin ops; each becomes the TensorFlow op TFLiteConverter lowers back to that builtin.
Weights are taken exactly as the source computes with them (fp16 widened to fp32), so the rebuilt
function equals the source up to float rounding order (tests/test_blazeface_int8.py).

An op outside ``SUPPORTED`` is refused with its name and index: silently approximating one would
make a graph that differs from its source in ways only the gates could catch.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from facelite.converter.formats import FormatError

log = logging.getLogger(__name__)

SUPPORTED = (
    "ADD",
    "CONCATENATION",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "DEQUANTIZE",
    "MAX_POOL_2D",
    "PAD",
    "RELU",
    "RESHAPE",
    "RESIZE_BILINEAR",
)


# What a damaged flatbuffer raises while it is read or its weights are laid out (fuzzed in tests/test_fuzz.py).
_CORRUPT = (OSError, ValueError, IndexError, KeyError, TypeError, AttributeError, struct.error)


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _enum_names(enum_cls: Any) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


class FloatTFLiteGraph:
    """One subgraph of a .tflite file as a float TensorFlow computation (batch 1, NHWC)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._load()
        except _CORRUPT as exc:
            raise self._corrupt(exc) from None

    def _corrupt(self, exc: BaseException) -> FormatError:
        what = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return FormatError(f"cannot read the TFLite flatbuffer (truncated or corrupt): {what}", str(self.path))

    def _load(self) -> None:
        schema = _schema()
        buf = self.path.read_bytes()
        if buf[4:8] != b"TFL3":
            raise ValueError("no TFL3 identifier")
        self.model = schema.ModelT.InitFromPackedBuf(buf, 0)
        if len(self.model.subgraphs or []) != 1:
            raise FormatError(f"expected one subgraph, found {len(self.model.subgraphs or [])}", str(self.path))
        self.graph = self.model.subgraphs[0]
        op_names = _enum_names(schema.BuiltinOperator)
        self.ops: list[tuple[str, Any]] = []
        for i, op in enumerate(self.graph.operators or []):
            code = self.model.operatorCodes[op.opcodeIndex]
            name = op_names.get(max(int(code.builtinCode), int(code.deprecatedBuiltinCode)), "CUSTOM")
            if name not in SUPPORTED:
                raise FormatError(f"op {i} is {name}, which the float rebuild does not support", str(self.path))
            self.ops.append((name, op))
        self.padding = _enum_names(schema.Padding)
        self.activation = _enum_names(schema.ActivationFunctionType)
        (self.input_index,) = [int(i) for i in self.graph.inputs]
        self.output_indices = [int(i) for i in self.graph.outputs]

    # -- tensors -------------------------------------------------------------------------------
    def tensor_name(self, index: int) -> str:
        name = self.graph.tensors[index].name
        return name.decode() if isinstance(name, bytes) else str(name)

    def input_shape(self) -> list[int]:
        return [int(s) for s in self.graph.tensors[self.input_index].shape]

    def constant(self, index: int) -> np.ndarray | None:
        """The tensor's stored value (its buffer), or None for an activation."""
        tensor = self.graph.tensors[index]
        data = self.model.buffers[tensor.buffer].data
        if data is None or len(data) == 0:
            return None
        dtypes = {0: np.float32, 1: np.float16, 2: np.int32, 4: np.int64, 9: np.int8, 3: np.uint8}
        if tensor.type not in dtypes:
            raise FormatError(f"tensor {self.tensor_name(index)!r} has unsupported type {tensor.type}", str(self.path))
        if tensor.quantization is not None and tensor.quantization.scale is not None:
            raise FormatError(f"tensor {self.tensor_name(index)!r} is quantised; need a float source", str(self.path))
        raw = np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtypes[tensor.type])
        return raw.reshape([int(s) for s in tensor.shape])

    def _constants(self) -> dict[int, np.ndarray]:
        consts: dict[int, np.ndarray] = {}
        for _, op in self.ops:
            for i in op.inputs:
                if i >= 0 and int(i) not in consts:
                    value = self.constant(int(i))
                    if value is not None:
                        consts[int(i)] = value
        # DEQUANTIZE of a constant is a constant: fold it now (fp16 -> fp32, exactly).
        for name, op in self.ops:
            if name == "DEQUANTIZE" and int(op.inputs[0]) in consts:
                consts[int(op.outputs[0])] = consts[int(op.inputs[0])].astype(np.float32)
        return consts

    # -- the computation -----------------------------------------------------------------------
    def function(self) -> Callable[[Any], list[Any]]:
        """``f(x) -> outputs`` in TensorFlow ops, outputs in the source's order."""
        import tensorflow as tf

        try:
            consts = self._constants()
        except _CORRUPT as exc:
            raise self._corrupt(exc) from None
        act = self.activation

        def fused(y: Any, code: int) -> Any:
            kind = act.get(int(code), str(code))
            if kind == "NONE":
                return y
            if kind == "RELU":
                return tf.nn.relu(y)
            if kind == "RELU6":
                return tf.nn.relu6(y)
            raise FormatError(f"fused activation {kind} is not supported", str(self.path))

        def run(x: Any) -> list[Any]:
            values: dict[int, Any] = {self.input_index: x}

            def get(i: int) -> Any:
                return values[i] if i in values else tf.constant(consts[i])

            for name, op in self.ops:
                ins = [int(i) for i in op.inputs]
                opts = op.builtinOptions
                out = int(op.outputs[0])
                if name == "DEQUANTIZE":
                    if ins[0] in consts:
                        continue
                    y = tf.cast(get(ins[0]), tf.float32)
                elif name == "CONV_2D":
                    w = np.transpose(consts[ins[1]], (1, 2, 3, 0))  # OHWI -> HWIO
                    y = tf.nn.conv2d(
                        get(ins[0]),
                        tf.constant(w),
                        strides=[1, opts.strideH, opts.strideW, 1],
                        padding=self.padding[opts.padding],
                        dilations=[1, opts.dilationHFactor, opts.dilationWFactor, 1],
                    )
                    if len(ins) > 2 and ins[2] >= 0:
                        y = tf.nn.bias_add(y, tf.constant(consts[ins[2]]))
                    y = fused(y, opts.fusedActivationFunction)
                elif name == "DEPTHWISE_CONV_2D":
                    w = consts[ins[1]]  # [1, H, W, C*M]
                    channels = int(self.graph.tensors[ins[0]].shape[-1])
                    w = w.reshape(w.shape[1], w.shape[2], channels, w.shape[3] // channels)
                    y = tf.nn.depthwise_conv2d(
                        get(ins[0]),
                        tf.constant(w),
                        strides=[1, opts.strideH, opts.strideW, 1],
                        padding=self.padding[opts.padding],
                        dilations=[opts.dilationHFactor, opts.dilationWFactor],
                    )
                    if len(ins) > 2 and ins[2] >= 0:
                        y = tf.nn.bias_add(y, tf.constant(consts[ins[2]]))
                    y = fused(y, opts.fusedActivationFunction)
                elif name == "ADD":
                    y = fused(tf.add(get(ins[0]), get(ins[1])), opts.fusedActivationFunction)
                elif name == "RELU":
                    y = tf.nn.relu(get(ins[0]))
                elif name == "PAD":
                    y = tf.pad(get(ins[0]), tf.constant(consts[ins[1]]))
                elif name == "MAX_POOL_2D":
                    y = tf.nn.max_pool2d(
                        get(ins[0]),
                        ksize=[1, opts.filterHeight, opts.filterWidth, 1],
                        strides=[1, opts.strideH, opts.strideW, 1],
                        padding=self.padding[opts.padding],
                    )
                    y = fused(y, opts.fusedActivationFunction)
                elif name == "RESIZE_BILINEAR":
                    y = tf.compat.v1.image.resize_bilinear(
                        get(ins[0]),
                        [int(s) for s in consts[ins[1]]],
                        align_corners=bool(opts.alignCorners),
                        half_pixel_centers=bool(opts.halfPixelCenters),
                    )
                elif name == "RESHAPE":
                    shape = [int(s) for s in self.graph.tensors[out].shape]
                    y = tf.reshape(get(ins[0]), shape)
                elif name == "CONCATENATION":
                    y = fused(tf.concat([get(i) for i in ins], axis=opts.axis), opts.fusedActivationFunction)
                else:  # pragma: no cover - refused in __init__
                    raise FormatError(f"op {name} is not supported", str(self.path))
                values[out] = y
            return [values[i] for i in self.output_indices]

        return run


class RebuiltNetwork:
    """facelite.model.runtime.Network over the rebuilt ops, run eagerly by TensorFlow (the proof it equals its source).

    Eager, not through the traced function: TF 2.21's oneDNN graph rewrites crash (SIGSEGV) executing the
    traced BlazeFace graph on x86; eager kernels run the same ops without those rewrites.
    """

    def __init__(self, graph: FloatTFLiteGraph) -> None:
        self._run = graph.function()

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        import tensorflow as tf

        outs = self._run(tf.constant(np.asarray(inputs[0], np.float32)))
        return [np.asarray(o) for o in outs]

    def resize_input(self, shape: Any, i: int = 0) -> None:
        """Fixed input size: the agent only ever feeds the model's own."""


def concrete_function(path: Path) -> tuple[Any, FloatTFLiteGraph]:
    """The rebuilt graph as a tf ConcreteFunction with a fixed [1, H, W, C] float input."""
    import tensorflow as tf

    graph = FloatTFLiteGraph(path)
    run = graph.function()
    try:
        spec = tf.TensorSpec(graph.input_shape(), tf.float32, name=graph.tensor_name(graph.input_index))
        concrete = tf.function(lambda x: run(x)).get_concrete_function(spec)
    except (*_CORRUPT, tf.errors.OpError) as exc:
        # Shapes that do not fit together (a damaged file that still parses) fail when TensorFlow traces.
        raise graph._corrupt(exc) from None
    log.info("rebuilt %s: %d ops as a float TensorFlow function", path.name, len(graph.ops))
    return concrete, graph


def make_converter_factory(path: Path) -> Callable[[], Any]:
    """A GraphSource.make_converter for the rebuilt graph (fresh converter each call)."""
    import tensorflow as tf

    concrete, _ = concrete_function(path)

    def make_converter() -> Any:
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete])

    return make_converter
