"""Scratch (issue 11, not the converter's output): float16 arithmetic on cores that have it (ARMv8.2 FP16).

    PYTHONPATH=. FACELITE_DATA_DIR=../shared python docs/experiments/fp16_arith.py --models build/models \
        --out build/fp16-arith

The fp16 variant stores float16 weights and computes in float32. A model that also carries the converter's
`reduced_precision_support` metadata ("fp16 accumulation": target_spec._experimental_supported_accumulation_type)
lets XNNPACK compute in float16 where the CPU has FP16 vector arithmetic (Cortex-A55/A76, not the A53/A72; on x86
it runs in float32). This script builds that form of BlazeFace's full-range graph and of MobileFaceNet, counts
guest instructions per inference on emulated Cortex-A72 and A76 (make bench-arm's counter and rootfs; run
`make bench-arm` once for its setup), and compares the outputs of the fp16-arithmetic and fp32 files, both run on
the emulated A76 (qemu, ai-edge-litert), on real faces and photos.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from facelite.tools.bench import arm

GUEST = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
net = Interpreter(model_path=sys.argv[1], num_threads=1)
net.allocate_tensors()
i = net.get_input_details()[0]["index"]
outs = [[] for _ in net.get_output_details()]
for x in np.load(sys.argv[2]):
    net.set_tensor(i, x[None])
    net.invoke()
    for k, d in enumerate(net.get_output_details()):
        outs[k].append(net.get_tensor(d["index"])[0].copy())
np.savez(sys.argv[3], *[np.stack(o) for o in outs])
"""


def build(graph: object, path: Path) -> Path:
    import tensorflow as tf

    converter = graph.make_converter()  # type: ignore[attr-defined]
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    converter.target_spec._experimental_supported_accumulation_type = tf.dtypes.float16
    path.write_bytes(converter.convert())
    return path


def inputs(data_dir: Path, models_dir: Path, out: Path) -> tuple[Path, Path]:
    """Faces aligned by BlazeFace (2 per person of faces/people) and letterboxed 192 px photos (scenes + people)."""
    import cv2

    sys.path.insert(0, str(Path(__file__).parent))
    from prelu_forms import aligned_faces

    faces = aligned_faces(data_dir, models_dir, 2)
    x = np.stack([(f[..., ::-1].astype(np.float32) - 127.5) / 128.0 for f in faces])
    photos = (
        sorted((data_dir / "faces" / "scenes").glob("*.jpg"))
        + sorted((data_dir / "faces" / "people").glob("*/*.jpg"))[:30]
    )
    frames = []
    for p in photos:
        im = cv2.imread(str(p))[..., ::-1]
        side = max(im.shape[:2])
        pad = np.zeros((side, side, 3), np.uint8)
        pad[: im.shape[0], : im.shape[1]] = im
        frames.append(cv2.resize(pad, (192, 192)).astype(np.float32) / 127.5 - 1.0)
    np.save(out / "faces.npy", x)
    np.save(out / "frames.npy", np.stack(frames))
    return out / "faces.npy", out / "frames.npy"


def run_on(env: arm.Env, cpu: str, model: Path, batch: Path, out: Path) -> list[np.ndarray]:
    view = env.views[cpu]
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(GUEST)
    cmd = [
        env.qemu,
        "-cpu",
        cpu,
        "-L",
        view,
        f"{view}/usr/bin/python3.11",
        "-P",
        "-B",
        f.name,
        str(model),
        str(batch),
        str(out),
    ]
    proc = subprocess.run(cmd, env=arm.guest_env(env.sites["ai-edge-litert"]), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    data = np.load(out)
    return [data[f"arr_{k}"] for k in range(len(data.files))]


def compare(a: list[np.ndarray], b: list[np.ndarray]) -> list[dict[str, float]]:
    rows = []
    for x, y in zip(a, b, strict=True):
        x2, y2 = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
        cos = (x2 * y2).sum(1) / np.linalg.norm(x2, axis=1) / np.linalg.norm(y2, axis=1)
        diff = float(np.abs(x2 - y2).max())
        rows.append(
            {
                "cos_mean": float(cos.mean()),
                "cos_min": float(cos.min()),
                "max_abs": diff,
                "range": float(np.abs(x2).max()),
            }
        )
    return rows


def main() -> None:
    from facelite.converter.models.blazeface import BlazeFaceRecipe
    from facelite.converter.models.mobilefacenet import MobileFaceNetRecipe

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--data-dir", type=Path, default=Path("../shared"))
    ap.add_argument("--out", type=Path, default=Path("build/fp16-arith"))
    ap.add_argument("--bench-arm", type=Path, default=Path("build/bench-arm"), help="make bench-arm's output (setup)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = arm.parse_setup((args.bench_arm / "setup.txt").read_text())
    faces, frames = inputs(args.data_dir, args.models, args.out)
    bf_graph = next(g for g in BlazeFaceRecipe().graphs() if g.name == "model")
    pairs = {
        "blazeface (full-range graph)": (args.models / "blazeface/fp32/model.tflite",
                                         build(bf_graph, args.out / "blazeface-fp16arith.tflite"), frames,
                                         [1, 192, 192, 3]),
        "mobilefacenet": (args.models / "mobilefacenet/fp32/model.tflite",
                          build(MobileFaceNetRecipe().graphs()[0], args.out / "mobilefacenet-fp16arith.tflite"), faces,
                          [1, 112, 112, 3]),
    }  # fmt: skip
    report = {}
    for name, (fp32, fp16, batch, shape) in pairs.items():
        counts = {}
        for label, path in (("fp32", fp32), ("fp16-arith", fp16)):
            job = arm.Job(name, label, "model", "inference", [arm.Step("model", str(path.resolve()), shape)],
                          str(path.stat().st_mtime_ns), 0.0)  # fmt: skip
            for cpu in ("cortex-a72", "cortex-a76"):
                counts[f"{label} {cpu}"] = arm.count(env, arm.Run(job, cpu, "ai-edge-litert", 3), args.out).per_invoke
        a = run_on(env, "cortex-a76", fp32, batch, args.out / "a.npz")
        b = run_on(env, "cortex-a76", fp16, batch, args.out / "b.npz")
        report[name] = {"inputs": len(np.load(batch)), "instructions": counts, "outputs": compare(a, b)}
        print(name, json.dumps(report[name], indent=1))
    (args.out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
