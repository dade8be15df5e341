"""Run .tflite graphs on saved inputs with a chosen runtime and save the outputs.

The converter calls this in a second interpreter (tflite-runtime 2.14 needs numpy<2, so it lives in its
own venv) to prove every variant loads and agrees in both runtimes. The device self-test uses it too.

    python -m facelite.model.runcheck --runtime tflite-runtime --model a.tflite --inputs in.npz --out out.npz
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from facelite.errors import FaceliteError
from facelite.model.runtime import TFLiteModel


def run(model_path: str, inputs_path: str, out_path: str, runtime: str, threads: int) -> dict[str, float]:
    model = TFLiteModel(model_path, runtime=runtime, num_threads=threads)
    data = np.load(inputs_path)
    # Any, not ndarray: numpy types savez(**kwds) as if a key could be its allow_pickle flag.
    outputs: dict[str, Any] = {}
    times = []
    for key in sorted(data.files, key=lambda k: int(k.split("_")[1])):
        x = data[key]
        model.resize_input(x.shape)
        t0 = time.perf_counter()
        ys = model.run(x)
        times.append((time.perf_counter() - t0) * 1000)
        for j, y in enumerate(ys):
            outputs[f"{key}_out{j}"] = y
    np.savez(out_path, **outputs)
    return {"median_ms": float(np.median(times)) if times else 0.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m facelite.model.runcheck", description=__doc__)
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True, help=".npz with arrays in_0, in_1, ... (one input each)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        stats = run(args.model, args.inputs, args.out, args.runtime, args.threads)
    except FaceliteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        print(
            f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
            file=sys.stderr,
        )
        return 1
    print(f"ok median_ms={stats['median_ms']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
