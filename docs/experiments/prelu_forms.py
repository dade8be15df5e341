"""Scratch (issue 11 item 3, not the converter's output): MobileFaceNet with its 33 PReLUs written in other forms.

    PYTHONPATH=. FACELITE_MODELS_DIR=... python docs/experiments/prelu_forms.py --out build/prelu-forms

Forms, all after the converter's own defect fixes and cross-layer equalization (exact in real arithmetic):
  native      one TFLite PRELU (the converter's default today)
  decomposed  the tfjs form relu(x) + m * (x - |x|), m = alpha / 2 (ABS, SUB, MUL, ADD)
  relu_minus  relu(x) - alpha * relu(-x) (NEG, RELU, MUL, SUB)
  affine      alpha * x + (1 - alpha) * relu(x) (MUL, RELU, MUL, ADD: no NEG, which has no int8 kernel)
  max         max(x, alpha * x) (MUL, MAXIMUM; exact only when 0 <= alpha <= 1)
  split       where a conv W feeds the PReLU and a full conv V consumes it: W emits [W, -W] with a fused ReLU (free in
              int8) and V becomes [V, -V diag(alpha)] (depthwise W: depth multiplier 2, interleaved); native PRELU
              where the consumer is a depthwise conv (the two halves would need summing back)
  split2      the same pairs without a depth multiplier or a doubled conv: W + ReLU and -W + ReLU as two convs, V
              and -V diag(alpha) as two convs, then ADD (all XNNPACK int8 ops); native PRELU elsewhere
  split_concat  the same pairs: W + ReLU and -W + ReLU as two convs, CONCATENATION, one conv [V, -V diag(alpha)]
  relu_bound  NOT exact: plain ReLU in place of every PReLU; the cost floor any exact form could reach
Each form: fp32 and full int8 (the converter's int8 variant settings, calibrated on faces aligned by the device's
detector), cosine to the fp32 native embedding on held-out faces, x86 ms (ai-edge-litert, one thread) and guest
instructions per inference on Cortex-A72 and A76 (make bench-arm's counter; needs its setup once).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from facelite.converter.faceset import build_faceset
from facelite.converter.formats.tfjs import load_graph
from facelite.converter.models import mobilefacenet as mfn
from facelite.converter.sources import source_files
from facelite.converter.variants import get_variant
from facelite.tools.bench import arm
from facelite.vision.detect.blazeface import BlazeFaceDetector

log = logging.getLogger("prelu-forms")
FORMS = ("native", "decomposed", "relu_minus", "affine", "max", "split", "split2", "split_concat", "relu_bound")


# -- graph rewrites (on the repaired, equalized, unfolded tfjs GraphDef) ---------------------------------------------
def _const(gd: Any, name: str, value: np.ndarray, dtype_from: Any) -> str:
    import tensorflow as tf

    node = gd.node.add()
    node.name, node.op = name, "Const"
    node.attr["dtype"].CopyFrom(dtype_from.attr["dtype"])
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value.astype(np.float32)))
    return name


def _op(gd: Any, name: str, op: str, inputs: list[str], t_attr: Any) -> str:
    node = gd.node.add()
    node.name, node.op = name, op
    node.input.extend(inputs)
    node.attr["T"].CopyFrom(t_attr)
    return name


def _alpha(gd: Any, p: mfn.PreluPattern) -> np.ndarray:
    import tensorflow as tf

    nodes = {n.name: n for n in gd.node}
    return 2.0 * tf.make_ndarray(nodes[p.multiplier].attr["value"].tensor)


def rewrite_elementwise(gd: Any, form: str) -> int:
    """relu_minus / max: replace each PReLU's Add by the form's ops, in place."""
    nodes = {n.name: n for n in gd.node}
    count = 0
    for p in mfn.find_prelus(gd):
        add = nodes[p.add]
        t_attr = type(add.attr["T"])()
        t_attr.CopyFrom(add.attr["T"])
        alpha = _alpha(gd, p)
        a = _const(gd, f"{p.add}/form_alpha", alpha, nodes[p.multiplier])
        if form == "relu_bound":
            inputs, op = [p.x], "Relu"
        elif form == "affine":
            b = _const(gd, f"{p.add}/form_one_minus_alpha", 1.0 - alpha, nodes[p.multiplier])
            ax = _op(gd, f"{p.add}/form_ax", "Mul", [p.x, a], t_attr)
            br = _op(gd, f"{p.add}/form_br", "Mul", [p.relu_branch, b], t_attr)
            inputs, op = [ax, br], "AddV2"
        elif form == "relu_minus":
            neg = _op(gd, f"{p.add}/form_neg", "Neg", [p.x], t_attr)
            rn = _op(gd, f"{p.add}/form_relu_neg", "Relu", [neg], t_attr)
            m = _op(gd, f"{p.add}/form_mul", "Mul", [rn, a], t_attr)
            inputs, op = [p.relu_branch, m], "Sub"
        else:
            if alpha.min() < 0 or alpha.max() > 1:
                raise ValueError(f"max form is not exact: alpha in [{alpha.min():.3f}, {alpha.max():.3f}] at {p.add}")
            m = _op(gd, f"{p.add}/form_mul", "Mul", [p.x, a], t_attr)
            inputs, op = [p.x, m], "Maximum"
        add.op = op
        del add.input[:]
        add.input.extend(inputs)
        add.attr.clear()
        add.attr["T"].CopyFrom(t_attr)
        count += 1
    return count


def rewrite_split(gd: Any) -> tuple[int, int]:
    """conv W -> PReLU -> full conv V  becomes  conv [W, -W] + ReLU -> conv [V, -V diag(alpha)], in place."""
    import tensorflow as tf

    nodes = {n.name: n for n in gd.node}
    consumers = mfn._consumers(gd)
    value = lambda name: tf.make_ndarray(nodes[name].attr["value"].tensor)  # noqa: E731

    def store(name: str, v: np.ndarray) -> None:
        nodes[name].attr["value"].tensor.CopyFrom(tf.make_tensor_proto(v.astype(np.float32)))

    split = kept = 0
    for p in mfn.find_prelus(gd):
        x = nodes[p.x]
        users = consumers.get(p.add, set())
        y = nodes[next(iter(users))] if len(users) == 1 else None
        ok = (
            x.op in mfn._FUSED_CONVS
            and mfn._fused_ops(x) == ["BiasAdd"]
            and not consumers.get(p.x, set()) - {p.relu_branch, p.abs, p.sub}
            and y is not None
            and y.op == "_FusedConv2D"
            and mfn._src(y.input[0]) == p.add
        )
        names = (mfn._src(x.input[1]), mfn._src(x.input[2]), mfn._src(y.input[1])) if ok else ()
        if not ok or any(nodes[n].op != "Const" or len(consumers.get(n, ())) != 1 for n in names):
            kept += 1
            continue
        w1, b1, w2 = (value(n) for n in names)
        alpha = _alpha(gd, p)
        if x.op == "_FusedConv2D":  # [kh, kw, in, C] -> [kh, kw, in, 2C]: positive half, then negative half
            store(names[0], np.concatenate([w1, -w1], axis=3))
            store(names[1], np.concatenate([b1, -b1]))
            store(names[2], np.concatenate([w2, -alpha[None, None, :, None] * w2], axis=2))
        else:  # depthwise [kh, kw, C, 1] -> [kh, kw, C, 2]: output channel 2c + m, interleaved
            store(names[0], np.stack([w1[..., 0], -w1[..., 0]], axis=-1))
            store(names[1], np.stack([b1, -b1], axis=1).reshape(-1))
            w2s = np.empty((*w2.shape[:2], 2 * w2.shape[2], w2.shape[3]), w2.dtype)
            w2s[:, :, 0::2], w2s[:, :, 1::2] = w2, -alpha[None, None, :, None] * w2
            store(names[2], w2s)
        x.attr["fused_ops"].list.s.append(b"Relu")
        y.input[0] = p.x
        split += 1
    mfn.fold_prelus(gd)  # the rest (and the now unconsumed patterns, pruned on import) become native PRELU
    return split, kept


def _copy(gd: Any, node: Any, name: str) -> Any:
    new = gd.node.add()
    new.CopyFrom(node)
    new.name = name
    return new


def rewrite_split2(gd: Any, concat: bool = False) -> tuple[int, int]:
    """conv W -> PReLU -> conv V  becomes  V(relu(W x)) + (-V diag(alpha))(relu(-W x)), two convs each side + ADD."""
    import tensorflow as tf

    nodes = {n.name: n for n in gd.node}
    consumers = mfn._consumers(gd)
    value = lambda name: tf.make_ndarray(nodes[name].attr["value"].tensor)  # noqa: E731
    split = kept = 0
    for p in mfn.find_prelus(gd):
        x = nodes[p.x]
        users = consumers.get(p.add, set())
        y = nodes[next(iter(users))] if len(users) == 1 else None
        ok = (
            x.op in mfn._FUSED_CONVS
            and mfn._fused_ops(x) == ["BiasAdd"]
            and not consumers.get(p.x, set()) - {p.relu_branch, p.abs, p.sub}
            and y is not None
            and y.op == "_FusedConv2D"
            and mfn._fused_ops(y) == ["BiasAdd"]
            and mfn._src(y.input[0]) == p.add
        )
        names = (mfn._src(x.input[1]), mfn._src(x.input[2]), mfn._src(y.input[1]), mfn._src(y.input[2])) if ok else ()
        if not ok or any(nodes[n].op != "Const" for n in names):
            kept += 1
            continue
        w1, b1, w2, b2 = (value(n) for n in names)
        alpha = _alpha(gd, p)
        xn = _copy(gd, x, f"{x.name}/neg")
        xn.input[1] = _const(gd, f"{x.name}/neg_w", -w1, nodes[names[0]])
        xn.input[2] = _const(gd, f"{x.name}/neg_b", -b1, nodes[names[1]])
        x.attr["fused_ops"].list.s.append(b"Relu")
        xn.attr["fused_ops"].list.s.append(b"Relu")
        if concat:
            axis_node = gd.node.add()
            axis_node.name, axis_node.op = f"{x.name}/concat_axis", "Const"
            axis_node.attr["dtype"].type = tf.int32.as_datatype_enum
            axis_node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.array(3, np.int32)))
            axis = axis_node.name
            cat = gd.node.add()
            cat.name, cat.op = f"{x.name}/concat", "ConcatV2"
            cat.input.extend([x.name, xn.name, axis])
            cat.attr["T"].CopyFrom(y.attr["T"])
            cat.attr["N"].i = 2
            cat.attr["Tidx"].type = tf.int32.as_datatype_enum
            y.input[0] = cat.name
            stacked = np.concatenate([w2, -alpha[None, None, :, None] * w2], axis=2)
            y.input[1] = _const(gd, f"{y.name}/split_w", stacked, nodes[names[2]])
            split += 1
            continue
        y_name = y.name
        y.name = f"{y_name}/pos"
        y.input[0] = x.name
        yn = _copy(gd, y, f"{y_name}/neg")
        yn.input[0] = xn.name
        yn.input[1] = _const(gd, f"{y_name}/neg_w", -alpha[None, None, :, None] * w2, nodes[names[2]])
        yn.input[2] = _const(gd, f"{y_name}/neg_b", np.zeros_like(b2), nodes[names[3]])
        t_attr = type(y.attr["T"])()
        t_attr.CopyFrom(y.attr["T"])
        _op(gd, y_name, "AddV2", [y.name, yn.name], t_attr)
        split += 1
    mfn.fold_prelus(gd)
    return split, kept


def graph_for(form: str) -> Any:
    def fixes(gd: Any) -> Any:
        mfn.fix_graph(gd, fold_prelu=form == "native", equalize=True)
        if form in ("relu_minus", "affine", "max", "relu_bound"):
            log.info("%s: rewrote %d PReLUs", form, rewrite_elementwise(gd, form))
        elif form == "split":
            log.info("split: %d PReLUs split into their convs, %d kept native", *rewrite_split(gd))
        elif form == "split2":
            log.info("split2: %d PReLUs split into two conv pairs + ADD, %d kept native", *rewrite_split2(gd))
        elif form == "split_concat":
            log.info("split_concat: %d PReLUs split, %d kept native", *rewrite_split2(gd, concat=True))
        return gd

    return load_graph(source_files(mfn.SOURCE)[0], inputs=[mfn.INPUT], outputs=[mfn.OUTPUT], graph_fixes=fixes)


# -- faces, conversion, measurement ----------------------------------------------------------------------------------
def known_keys_only(model_dir: Path, out: Path) -> Path:
    """A copy of a model dir whose manifest keeps only the keys this branch's agent knows (main's is newer)."""
    import dataclasses
    import shutil

    from facelite.model.manifest import Manifest

    shutil.copytree(model_dir, out)
    data = json.loads((out / "manifest.json").read_text())
    known = {f.name for f in dataclasses.fields(Manifest)}
    (out / "manifest.json").write_text(json.dumps({k: v for k, v in data.items() if k in known}))
    return out


def aligned_faces(data_dir: Path, models_dir: Path, per_person: int) -> list[np.ndarray]:
    """Real faces, aligned by the device's detector (BlazeFace) onto the ArcFace 112 template."""
    with tempfile.TemporaryDirectory() as tmp:
        people = Path(tmp) / "people"
        for person in sorted((data_dir / "faces" / "people").iterdir()):
            (people / person.name).mkdir(parents=True)
            for photo in sorted(person.glob("*.jpg"))[:per_person]:
                (people / person.name / photo.name).symlink_to(photo)
        det = BlazeFaceDetector.from_model_dir(known_keys_only(models_dir / "blazeface" / "fp32", Path(tmp) / "bf"))
        return build_faceset(people, det).crops("arcface", (112, 112))


def convert(form: str, variant: str, samples: list[np.ndarray], out: Path) -> Path:
    path = out / f"{form}-{variant}.tflite"
    if path.is_file():
        return path
    converter = graph_for(form).make_converter()
    get_variant(variant).configure(converter, (lambda: ([s] for s in samples)) if variant == "int8" else None)
    path.write_bytes(converter.convert())
    return path


def embed(path: Path, xs: list[np.ndarray]) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    net = Interpreter(model_path=str(path), num_threads=1)
    net.allocate_tensors()
    i, o = net.get_input_details()[0]["index"], net.get_output_details()[0]["index"]
    out = []
    for x in xs:
        net.set_tensor(i, x)
        net.invoke()
        e = net.get_tensor(o)[0].astype(np.float64)
        out.append(e / np.linalg.norm(e))
    return np.stack(out)


def x86_ms(path: Path, x: np.ndarray, runs: int = 40) -> float:
    from ai_edge_litert.interpreter import Interpreter

    net = Interpreter(model_path=str(path), num_threads=1)
    net.allocate_tensors()
    i = net.get_input_details()[0]["index"]
    times = []
    for k in range(runs + 3):
        net.set_tensor(i, x)
        t0 = time.perf_counter()
        net.invoke()
        if k >= 3:
            times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def op_counts(path: Path) -> dict[str, int]:
    from ai_edge_litert.interpreter import Interpreter

    ops: dict[str, int] = {}
    for d in Interpreter(model_path=str(path))._get_ops_details():
        ops[d["op_name"]] = ops.get(d["op_name"], 0) + 1
    return ops


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("build/prelu-forms"))
    ap.add_argument("--models", type=Path, default=Path(os.environ.get("FACELITE_MODELS_DIR", "build/models")))
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("FACELITE_DATA_DIR", "../shared")))
    ap.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    ap.add_argument("--cpus", nargs="+", default=["cortex-a72", "cortex-a76"])
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    crops = aligned_faces(args.data_dir, args.models, 3)
    recipe = mfn.MobileFaceNetRecipe()
    xs = [s[0] for s in recipe.calibration_samples("model", crops, len(crops))]
    calib, held = xs[: len(xs) // 2], xs[len(xs) // 2 :]
    log.info("%d aligned faces: %d to calibrate, %d held out (%.0f s)", len(xs), len(calib), len(held),
             time.monotonic() - t0)  # fmt: skip
    env = arm.parse_setup((Path("build/bench-arm") / "setup.txt").read_text())
    rows = []
    reference = None
    for form in args.forms:
        for variant in ("fp32", "int8"):
            t = time.monotonic()
            try:
                path = convert(form, variant, calib, args.out)
            except Exception as exc:  # a form the converter or the identity cannot take: say so, go on
                log.warning("%s/%s: %s", form, variant, str(exc).splitlines()[0][:300])
                break
            emb = embed(path, held)
            if reference is None:
                reference = emb  # native fp32
            cos = np.sum(emb * reference, axis=1)
            row: dict[str, Any] = {"form": form, "variant": variant, "cos_mean": float(cos.mean()),
                                   "cos_min": float(cos.min()), "x86_ms": x86_ms(path, held[0]),
                                   "ops": op_counts(path), "kb": path.stat().st_size // 1024}  # fmt: skip
            job = arm.Job("mobilefacenet", f"{form}-{variant}", "embedder", "inference",
                          [arm.Step("model", str(path.resolve()), [1, 112, 112, 3])], str(path.stat().st_mtime_ns),
                          row["x86_ms"])  # fmt: skip
            for cpu in args.cpus:
                m = arm.count(env, arm.Run(job, cpu, "ai-edge-litert", args.passes), args.out.resolve())
                row[cpu] = m.per_invoke
                row[f"{cpu}_dot"] = m.classes.get("dot", 0.0)
            rows.append(row)
            log.info("%s/%s: cos %.4f (min %.4f), x86 %.2f ms, %s (%.0f s)", form, variant, row["cos_mean"],
                     row["cos_min"], row["x86_ms"], ", ".join(f"{c} {arm.mega(row[c])}" for c in args.cpus),
                     time.monotonic() - t)  # fmt: skip
    (args.out / "forms.json").write_text(json.dumps(rows, indent=2))
    base = {r["variant"]: r for r in rows if r["form"] == "native"}
    print("| form | variant | cos mean (min) | x86 ms | " + " | ".join(args.cpus) + " | ops |")
    print("|---|---|---|---|" + "---|" * len(args.cpus) + "---|")
    for r in rows:
        ref = base.get("fp32")
        cells = [f"{arm.mega(r[c])} ({r[c] / ref[c]:.2f}x)" if ref else arm.mega(r[c]) for c in args.cpus]
        ops = ", ".join(f"{k} {v}" for k, v in sorted(r["ops"].items(), key=lambda kv: -kv[1]))
        print(f"| {r['form']} | {r['variant']} | {r['cos_mean']:.4f} ({r['cos_min']:.4f}) | {r['x86_ms']:.2f} | "
              + " | ".join(cells) + f" | {ops} |")  # fmt: skip
    print(f"next: less {args.out / 'forms.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
