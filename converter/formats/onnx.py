"""ONNX sources: onnx2tf (in its own venv) writes a SavedModel; the main venv converts that.

onnx2tf 1.29 pins TensorFlow 2.19 / numpy<2 / protobuf 4 (docs/toolchain.md), so it runs as a subprocess
of the venv made by ``make setup-onnx`` (converter/onnx-requirements.txt). Everything after the
SavedModel (variants, verification) happens in the TF 2.21 venv like any other source, with the
SavedModel as the float reference; onnxruntime (same onnx venv) checks that SavedModel against ONNX.

onnx2tf rewrites its input file in place and, offline, would try to download a sample-image .npy for
its internal per-op checks: it gets a copy of the model and real photos under that file name instead.
The result is cached per ONNX sha256 under the facelite cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facelite.converter.formats import FormatError
from facelite.converter.recipe import GraphSource
from facelite.model.manifest import sha256_file

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
ONNX_PYTHON_ENV = "FACELITE_ONNX_PYTHON"
ONNX2TF_VERSION = "1.29.24"
# The name onnx2tf looks for in its working directory before trying to download it.
SAMPLE_NPY = "calibration_image_sample_data_20x128x128x3_float32.npy"
SETUP_HINT = "run `make setup-onnx` (a separate venv from converter/onnx-requirements.txt)"

# Runs inside the onnx venv. Reads the I/O names before onnx2tf rewrites the file.
_CONVERT_SCRIPT = """
import json, sys
import onnx
model_path, out_dir = sys.argv[1], sys.argv[2]
m = onnx.load(model_path)
inits = {i.name for i in m.graph.initializer}
def dims(v):
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or -1) for d in v.type.tensor_type.shape.dim]
io = {
    "inputs": [{"name": v.name, "shape": dims(v)} for v in m.graph.input if v.name not in inits],
    "outputs": [{"name": v.name, "shape": dims(v)} for v in m.graph.output],
}
import onnx2tf
onnx2tf.convert(
    input_onnx_file_path=model_path, output_folder_path=out_dir, output_signaturedefs=True,
    batch_size=1, non_verbose=True,
)
json.dump(io, open("onnx_io.json", "w"))
"""

_ORT_SCRIPT = """
import sys
import numpy as np, onnxruntime as ort
model_path, npz_in, npz_out = sys.argv[1:4]
sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
data = np.load(npz_in)
results = {}
for s in range(int(data["count"])):
    feeds = {i.name: data[f"s{s}_x{k}"] for k, i in enumerate(sess.get_inputs())}
    for k, y in enumerate(sess.run(None, feeds)):
        results[f"s{s}_y{k}"] = y
np.savez(npz_out, **results)
"""


@dataclass(frozen=True)
class OnnxTensor:
    name: str
    shape: list[int | str]  # ONNX layout (NCHW for images); symbolic dimensions stay strings


@dataclass(frozen=True)
class OnnxConversion:
    """What onnx2tf produced: a SavedModel whose outputs ``output_<i>`` are the ONNX outputs in order."""

    saved_model: Path
    inputs: list[OnnxTensor]
    outputs: list[OnnxTensor]

    def signature_output(self, name: str) -> str:
        """ONNX output name (or ``output_<i>``) -> the SavedModel signature key."""
        names = [o.name for o in self.outputs]
        return f"output_{names.index(name)}" if name in names else name


def onnx_python() -> Path:
    """The onnx venv's interpreter: $FACELITE_ONNX_PYTHON, else .venv-onnx in the repo."""
    env = os.environ.get(ONNX_PYTHON_ENV)
    path = Path(env) if env else REPO / ".venv-onnx" / "bin" / "python"
    if not path.is_file():
        raise FormatError("ONNX sources need the onnx2tf venv, which is missing", str(path), SETUP_HINT)
    return path


def _run(cmd: Sequence[str], cwd: Path, what: str, where: str) -> str:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()]
        tail = lines[-1].strip()[:300] if lines else f"exit code {proc.returncode}"
        fix = SETUP_HINT if "ModuleNotFoundError" in tail or "ImportError" in tail else None
        raise FormatError(f"{what} failed: {tail}", where, fix)
    return proc.stdout


def sample_npy(images: Sequence[np.ndarray] | None) -> np.ndarray:
    """20 RGB 128x128 images in [0, 1] for onnx2tf's per-op ONNX-vs-TF checks (its own sample is the same shape)."""
    if not images:
        # Without photos onnx2tf still needs the file: a flat mid-grey image still runs its checks.
        log.warning("onnx2tf gets no sample photos: its per-op checks run on flat grey images")
        return np.full((20, 128, 128, 3), 0.5, np.float32)
    picks = [images[i % len(images)] for i in range(20)]
    rgb = [cv2.cvtColor(cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB) for img in picks]
    return np.stack(rgb).astype(np.float32) / 255.0


def _cache_root() -> Path:
    from facelite.converter.sources import cache_dir

    return cache_dir() / "onnx2tf"


def convert_to_saved_model(
    path: Path, *, sample_images: Sequence[np.ndarray] | None = None, cache: Path | None = None
) -> OnnxConversion:
    """Run onnx2tf on a copy of ``path`` (cached by its sha256) and describe the SavedModel it wrote."""
    from facelite.converter.formats.detect import check_onnx

    path = Path(path)
    where = str(path)
    try:
        check_onnx(path, path.read_bytes())
    except OSError as exc:
        raise FormatError(f"cannot read ONNX file: {exc.strerror}", where) from None
    python = onnx_python()
    root = cache or _cache_root()
    dest = root / f"{sha256_file(path)[:24]}-onnx2tf-{ONNX2TF_VERSION}"
    if not (dest / "onnx_io.json").is_file():
        try:
            root.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=root))
        except OSError as exc:
            raise FormatError(f"onnx2tf cache is not writable: {exc.strerror}", str(root)) from None
        try:
            shutil.copyfile(path, work / "model.onnx")  # onnx2tf rewrites its input in place
            np.save(work / SAMPLE_NPY, sample_npy(sample_images))
            log.info("onnx2tf %s: converting %s (its own venv)", ONNX2TF_VERSION, path.name)
            _run([str(python), "-c", _CONVERT_SCRIPT, "model.onnx", "saved_model"], work, "onnx2tf conversion", where)
            for extra in (work / "saved_model").glob("*.tflite"):
                extra.unlink()  # onnx2tf's own .tflite files: the build makes every variant itself
            shutil.rmtree(dest, ignore_errors=True)
            work.replace(dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    io = json.loads((dest / "onnx_io.json").read_text())
    return OnnxConversion(
        saved_model=dest / "saved_model",
        inputs=[OnnxTensor(t["name"], list(t["shape"])) for t in io["inputs"]],
        outputs=[OnnxTensor(t["name"], list(t["shape"])) for t in io["outputs"]],
    )


def run_onnxruntime(path: Path, samples: Sequence[Sequence[np.ndarray]]) -> list[list[np.ndarray]]:
    """The ONNX model itself, run by onnxruntime in the onnx venv: one output list per input tuple.

    Inputs are float32 in the ONNX layout (NCHW images). One subprocess for all samples.
    """
    python = onnx_python()
    with tempfile.TemporaryDirectory(prefix="facelite-ort-") as tmp:
        work = Path(tmp)
        # Any, not ndarray: numpy types savez(**kwds) as if a key could be its allow_pickle flag.
        arrays: dict[str, Any] = {
            f"s{s}_x{k}": np.asarray(x, np.float32) for s, xs in enumerate(samples) for k, x in enumerate(xs)
        }
        np.savez(work / "in.npz", count=np.array(len(samples)), **arrays)
        model = str(Path(path).resolve())
        _run([str(python), "-c", _ORT_SCRIPT, model, "in.npz", "out.npz"], work, "onnxruntime", str(path))
        with np.load(work / "out.npz") as data:
            per = [
                sorted((k for k in data.files if k.startswith(f"s{s}_")), key=lambda k: int(k.split("_y")[1]))
                for s in range(len(samples))
            ]
            return [[data[k] for k in keys] for keys in per]


def load_graph(
    path: Path,
    *,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
    sample_images: Sequence[np.ndarray] | None = None,
    cache: Path | None = None,
    name: str = "model",
) -> GraphSource:
    """An ONNX file as a GraphSource: onnx2tf's SavedModel, NHWC input, batch 1.

    ``outputs`` may use the ONNX output names; ``input_shape`` is in the converted NHWC layout.
    """
    from facelite.converter.formats import saved_model

    conv = convert_to_saved_model(path, sample_images=sample_images, cache=cache)
    out_keys = [conv.signature_output(o) for o in outputs] if outputs else None
    return saved_model.load_graph(conv.saved_model, inputs=inputs, outputs=out_keys, input_shape=input_shape, name=name)
