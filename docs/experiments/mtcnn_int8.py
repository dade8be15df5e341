"""MTCNN int8, which graphs and layers to keep float (issue 11 item 3; docs/experiments/mtcnn_int8.md).

Each policy says, per graph, how it is converted: fp32, fp16, int8 (full integer, float I/O, calibrated
as the converter calibrates: 100 real samples), ``int8@N`` (N samples), ``deny:OP+OP`` (integer but those
op types float), ``node:NAME+NAME`` (integer but those P-Net layers float) or ``int16x8`` (16-bit
activations, 8-bit weights). Recall is against the float source cascade, on the converter's photos
(faces/people + faces/scenes: calibration = verification, as
`make convert` gates) and on the WIDER slice (never used for calibration).

    PYTHONPATH=. python docs/experiments/mtcnn_int8.py --data-dir ../shared [policy ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from facelite.converter.api import _photos
from facelite.converter.build import detector_agreement
from facelite.converter.models.mtcnn import PNET_DEFAULT_SHAPE, MTCNNRecipe, with_default_input_shape
from facelite.model.runtime import TFLiteModel

# P-Net's layers by output tensor name (as the converter names them in the int8 graph).
NODES = {
    "c1": "pnet_1/conv1_1/BiasAdd;pnet_1/conv1_1/convolution;pnet_1/conv1_1/Squeeze1",
    "c2": "pnet_1/conv2_1/BiasAdd;pnet_1/conv2_1/convolution;pnet_1/conv2_1/Squeeze1",
    "c3": "pnet_1/conv3_1/BiasAdd;pnet_1/conv3_1/convolution;pnet_1/conv3_1/Squeeze1",
    "c41": "Identity1",  # box regression head
    "c42": "pnet_1/conv4_2_1/BiasAdd;pnet_1/conv4_2_1/convolution;pnet_1/conv4_2_1/Squeeze1",  # face logits
}
R_O_INT8 = {"rnet": "int8", "onet": "int8"}
POLICIES: dict[str, dict[str, str]] = {
    "fp16 (reference)": {"pnet": "fp16", "rnet": "fp16", "onet": "fp16"},
    "all-int8": {"pnet": "int8", **R_O_INT8},
    "pnet-fp32 (shipped)": {"pnet": "fp32", **R_O_INT8},
    "rnet-fp32": {"pnet": "int8", "rnet": "fp32", "onet": "int8"},
    "onet-fp32": {"pnet": "int8", "rnet": "int8", "onet": "fp32"},
    "prelu-float": {g: "deny:PRELU" for g in ("pnet", "rnet", "onet")},
    "pnet-softmax-float": {"pnet": "deny:SOFTMAX", **R_O_INT8},
    "pnet-convs-float": {"pnet": "deny:CONV_2D", **R_O_INT8},
    "pnet-heads-float": {"pnet": "node:c41+c42", **R_O_INT8},
    "pnet-conv1-float": {"pnet": "node:c1", **R_O_INT8},
    "pnet-conv1-2-float": {"pnet": "node:c1+c2", **R_O_INT8},
    "pnet-400-samples": {"pnet": "int8@400", **R_O_INT8},
    "pnet-int16x8": {"pnet": "int16x8", **R_O_INT8},
}


def convert(recipe: MTCNNRecipe, graph: str, mode: str, images: list[np.ndarray]) -> bytes:
    source = next(g for g in recipe.graphs() if g.name == graph)
    conv = source.make_converter()
    inner = getattr(conv, "_converter", conv)  # P-Net's DefaultShapeConverter wraps the TF converter
    count = 100
    if "@" in mode:
        mode, n = mode.split("@")
        count = int(n)
    if mode == "fp32":
        return bytes(conv.convert())
    inner.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "fp16":
        inner.target_spec.supported_types = [tf.float16]
        data = inner.convert()
    else:
        samples = recipe.calibration_samples(graph, images, count)

        def representative():  # type: ignore[no-untyped-def]
            for s in samples:
                yield [np.asarray(x, np.float32) for x in s]

        inner.representative_dataset = representative
        if mode == "int8":
            inner.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            data = inner.convert()
        elif mode == "int16x8":  # 16-bit activations, 8-bit weights
            ops = tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            inner.target_spec.supported_ops = [ops]
            data = inner.convert()
        else:
            kind, what = mode.split(":")
            names = what.split("+")
            inner.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
            kw = {"denylisted_ops": names} if kind == "deny" else {"denylisted_nodes": [NODES[n] for n in names]}
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=inner,
                debug_dataset=representative,
                debug_options=tf.lite.experimental.QuantizationDebugOptions(**kw),
            )
            data = debugger.get_nondebug_quantized_model()
    return with_default_input_shape(data, PNET_DEFAULT_SHAPE) if conv is not inner else bytes(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("build/experiments/mtcnn_int8"))
    ap.add_argument("policies", nargs="*", help=f"default: all of {list(POLICIES)}")
    args = ap.parse_args()
    faces = args.data_dir / "faces"
    images = _photos(faces / "people") + _photos(faces / "scenes")
    wider = _photos(faces / "wider" / "images")
    recipe = MTCNNRecipe()
    source = recipe.detector({g.name: g.reference for g in recipe.graphs()})
    ref, ref_wider = [source.detect(i) for i in images], [source.detect(i) for i in wider]
    args.out.mkdir(parents=True, exist_ok=True)
    print("| policy | recall (converter photos) | mean IoU | extra | recall (WIDER, held out) | extra | MB |")
    print("|---|---|---|---|---|---|---|")
    for name in args.policies or list(POLICIES):
        paths = {}
        for graph, mode in POLICIES[name].items():
            paths[graph] = args.out / f"{graph}-{mode.replace(':', '_').replace('+', '-').replace('@', '_n')}.tflite"
            if not paths[graph].exists():
                try:
                    paths[graph].write_bytes(convert(recipe, graph, mode, images))
                except Exception as exc:  # the converter's refusal is the finding (int16x8: PRELU)
                    print(f"| {name} | {graph} {mode} not converted: {str(exc).strip().splitlines()[-1]} |||||")
                    break
        if len(paths) < len(POLICIES[name]) or not all(p.exists() for p in paths.values()):
            continue
        t0 = time.perf_counter()
        det = recipe.detector({g: TFLiteModel(p, runtime="ai-edge-litert") for g, p in paths.items()})
        a = detector_agreement(ref, [det.detect(i) for i in images])
        w = detector_agreement(ref_wider, [det.detect(i) for i in wider])
        size = sum(p.stat().st_size for p in paths.values()) / 1e6
        print(
            f"| {name} | {a['matched']}/{a['source_faces']} = {a['recall']:.3f} | {a['mean_iou']:.3f} | "
            f"{a['extra_faces']} | {w['matched']}/{w['source_faces']} = {w['recall']:.3f} | {w['extra_faces']} | "
            f"{size:.2f} |",
            flush=True,
        )
        (args.out / f"{name.split()[0]}.json").write_text(
            json.dumps({"policy": POLICIES[name], "converter": a, "wider": w, "s": time.perf_counter() - t0})
        )


if __name__ == "__main__":
    main()
