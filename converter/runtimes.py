"""Prove a .tflite file loads and agrees in both device runtimes.

ai-edge-litert runs in-process; tflite-runtime 2.14 needs numpy<2, so it runs in its own interpreter
(``.venv-legacy`` made by ``make setup``) through ``python -m facelite.model.runcheck``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facelite.errors import FaceliteError
from facelite.model.runtime import TFLiteModel

LEGACY_PYTHON_ENV = "FACELITE_LEGACY_PYTHON"
REPO = Path(__file__).resolve().parents[1]


class RuntimeCheckError(FaceliteError):
    """A variant does not load or run in one of the device runtimes."""


def legacy_python() -> Path | None:
    value = os.environ.get(LEGACY_PYTHON_ENV)
    if value:
        return Path(value)
    default = REPO / ".venv-legacy" / "bin" / "python"
    return default if default.exists() else None


@dataclass(frozen=True)
class RuntimeAgreement:
    runtime: str
    max_abs_diff: float
    min_cosine: float
    median_ms: float
    outputs: list[list[np.ndarray]]  # tflite-runtime's outputs, per input


def run_litert(path: Path, inputs: list[np.ndarray], threads: int = 1) -> list[list[np.ndarray]]:
    model = TFLiteModel(path, runtime="ai-edge-litert", num_threads=threads)
    outs = []
    for x in inputs:
        model.resize_input(x.shape)
        outs.append(model.run(x))
    return outs


def check_legacy(path: Path, inputs: list[np.ndarray], expected: list[list[np.ndarray]]) -> RuntimeAgreement:
    """Run the graph in tflite-runtime 2.14 and compare with ai-edge-litert's outputs."""
    python = legacy_python()
    if python is None or not python.exists():
        raise RuntimeCheckError(
            "tflite-runtime 2.14 interpreter not found",
            str(python or REPO / ".venv-legacy"),
            f"run `make setup` (creates .venv-legacy) or set {LEGACY_PYTHON_ENV}",
        )
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        # Any, not ndarray: numpy types savez(**kwds) as if a key could be its allow_pickle flag.
        arrays: dict[str, Any] = {f"in_{i}": x for i, x in enumerate(inputs)}
        np.savez(src, **arrays)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.run(
            [
                str(python),
                "-m",
                "facelite.model.runcheck",
                "--runtime",
                "tflite-runtime",
                "--model",
                str(path),
                "--inputs",
                str(src),
                "--out",
                str(dst),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
        if proc.returncode != 0:
            lines = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()
            raise RuntimeCheckError(f"tflite-runtime 2.14 cannot run it: {lines[-1]}", str(path))
        got = np.load(dst)
        max_abs, min_cos = 0.0, 1.0
        outputs: list[list[np.ndarray]] = []
        for i, outs in enumerate(expected):
            outputs.append([])
            for j, y in enumerate(outs):
                z = got[f"in_{i}_out{j}"]
                outputs[-1].append(z)
                if z.shape != y.shape:
                    raise RuntimeCheckError(
                        f"tflite-runtime output {j} has shape {z.shape}, ai-edge-litert {y.shape}", str(path)
                    )
                max_abs = max(max_abs, float(np.max(np.abs(z - y))) if y.size else 0.0)
                a, b = z.reshape(-1).astype(np.float64), y.reshape(-1).astype(np.float64)
                denom = np.linalg.norm(a) * np.linalg.norm(b)
                if denom > 0:
                    min_cos = min(min_cos, float(a @ b / denom))
        median = float(proc.stdout.strip().split("median_ms=")[-1]) if "median_ms=" in proc.stdout else 0.0
        return RuntimeAgreement("tflite-runtime", max_abs, min_cos, median, outputs)
