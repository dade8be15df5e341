"""The program `make bench-arm` runs under qemu-aarch64: load graphs in one runtime, run them N times.

Standalone on purpose (the aarch64 interpreter has only numpy and one runtime on its path, no facelite):

    python3.11 arm_guest.py SPEC.json

SPEC: {"runtime": "ai-edge-litert" | "tflite-runtime", "invokes": N, "marks": bool,
       "steps": [{"graph": "/path/model.tflite", "shape": [1, 112, 112, 3]}, ...]}
or, to keep what a graph computes on this core (make bench-arm's device check, arm_gate.py):
      {"runtime": ..., "graph": "/path/model.tflite", "inputs": "/path/x.npy", "save": "/path/out.npz"}
which runs the graph once per row of X (batch of one) and saves each output stacked over the rows, in output order.

One pass = every step in order (a step whose shape differs from its graph's current input is resized first, as
the agent does for MTCNN's P-Net pyramid). With "marks", the counting plugin is asked for its running total
after loading (tag 0) and after step s of pass p (tag p * 1000 + s, s from 1), by a syscall no program makes
otherwise (see arm_mix.c). One thread, inputs fixed (seed 0) and made before the first mark.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

MARK_MAGIC = 0xFACE0000


def mark(tag: int) -> None:
    try:
        os.lseek(-1, MARK_MAGIC, tag)
    except OSError:
        pass


def interpreter_class(runtime: str):
    if runtime == "ai-edge-litert":
        from ai_edge_litert.interpreter import Interpreter
    elif runtime == "tflite-runtime":
        from tflite_runtime.interpreter import Interpreter
    else:
        raise SystemExit(f"unknown runtime {runtime!r}")
    return Interpreter


def example(detail: dict, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return rng.uniform(-1.0, 1.0, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def outputs(spec: dict) -> int:
    net = interpreter_class(spec["runtime"])(model_path=spec["graph"], num_threads=1)
    net.allocate_tensors()
    index = net.get_input_details()[0]["index"]
    kept: list[list[np.ndarray]] = [[] for _ in net.get_output_details()]
    for x in np.load(spec["inputs"]):
        net.set_tensor(index, x[None])
        net.invoke()
        for k, out in enumerate(net.get_output_details()):
            kept[k].append(net.get_tensor(out["index"])[0].copy())
    np.savez(spec["save"], *[np.stack(k) for k in kept])
    return 0


def main(spec_path: str) -> int:
    spec = json.loads(open(spec_path).read())
    if "save" in spec:
        return outputs(spec)
    interpreter = interpreter_class(spec["runtime"])
    rng = np.random.default_rng(0)
    graphs, steps = {}, []
    for step in spec["steps"]:
        path = step["graph"]
        if path not in graphs:
            graphs[path] = interpreter(model_path=path, num_threads=1)
            graphs[path].allocate_tensors()
        net = graphs[path]
        detail = net.get_input_details()[0]
        steps.append((net, detail["index"], list(step["shape"]), example(detail, step["shape"], rng)))
    if spec["marks"]:
        mark(0)
    for n in range(1, int(spec["invokes"]) + 1):
        for s, (net, index, shape, x) in enumerate(steps, 1):
            if list(net.get_input_details()[0]["shape"]) != shape:
                net.resize_tensor_input(index, shape)
                net.allocate_tensors()
            net.set_tensor(index, x)
            net.invoke()
            for out in net.get_output_details():
                net.get_tensor(out["index"])
            if spec["marks"]:
                mark(n * 1000 + s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
