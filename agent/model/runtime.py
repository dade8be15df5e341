"""One interpreter wrapper over ai-edge-litert or tflite-runtime.

Quantised I/O is handled here, so callers always pass float32 in the model's preprocessed range and
get float32 back, whatever the variant (fp32, int8 with float I/O, uint8-io). The converter uses the
same class for verification, so "verified" means "verified the way the device runs it".
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from facelite.errors import ModelError

log = logging.getLogger(__name__)

RuntimeName = Literal["auto", "ai-edge-litert", "tflite-runtime"]
_MODULES = {"ai-edge-litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter"}


def resolve_runtime(choice: str = "auto") -> str:
    """Pick the runtime: explicit choice, else FACELITE_RUNTIME, else ai-edge-litert, else tflite-runtime."""
    choice = os.environ.get("FACELITE_RUNTIME", choice) if choice == "auto" else choice
    if choice not in ("auto", *_MODULES):
        raise ValueError(f"runtime {choice!r} is not one of auto, ai-edge-litert, tflite-runtime")
    names = [choice] if choice != "auto" else list(_MODULES)
    errors = []
    for name in names:
        try:
            importlib.import_module(_MODULES[name])
            return name
        except Exception as exc:
            errors.append(f"{name}: {exc}")
    raise ModelError(
        "no tflite runtime can be imported (" + "; ".join(errors) + ")",
        fix="pip install 'facelite[device]' (ai-edge-litert) or 'facelite[device-legacy]' (tflite-runtime, numpy<2)",
    )


@contextlib.contextmanager
def _native_stderr(lines: list[str]) -> Iterator[None]:
    """Collect what the runtime's C++ code prints on fd 2 while loading (e.g. "INFO: Created TensorFlow Lite
    XNNPACK delegate"), so it goes to our log at debug level, or into the error message, instead of the
    user's terminal or journal. Only around loading, before the agent starts its threads."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): leave it alone
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(line for line in tmp.read().decode(errors="replace").splitlines() if line.strip())


def _replay(runtime: str, lines: list[str]) -> None:
    for line in lines:
        # The runtime's own INFO chatter is debug for us; anything else someone may need to see.
        log.log(logging.DEBUG if line.startswith("INFO:") else logging.WARNING, "%s: %s", runtime, line)


def _interpreter_class(runtime: str) -> Any:
    return importlib.import_module(_MODULES[runtime]).Interpreter


class Network(Protocol):
    """Anything that maps float inputs to float outputs: a TFLiteModel, or a TF source model in the converter."""

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class _Port:
    index: int
    name: str
    dtype: Any
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.dtype in (np.int8, np.uint8, np.int16) and self.scale > 0


def _port(detail: dict[str, Any]) -> _Port:
    scale, zp = detail.get("quantization", (0.0, 0))
    return _Port(detail["index"], detail["name"], detail["dtype"], float(scale), int(zp))


class TFLiteModel:
    """A loaded .tflite graph. ``run`` takes/returns float32 numpy arrays, batch dimension included."""

    def __init__(self, path: str | Path, *, num_threads: int = 1, runtime: str = "auto") -> None:
        self.path = Path(path)
        self.runtime = resolve_runtime(runtime)
        if not self.path.is_file():
            raise ModelError("model file not found", str(self.path))
        native: list[str] = []
        try:
            with _native_stderr(native):
                self._interp = _interpreter_class(self.runtime)(model_path=str(self.path), num_threads=num_threads)
                self._interp.allocate_tensors()
        except Exception as exc:  # runtimes raise ValueError/RuntimeError with C++ text
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            detail = next((n for n in native if "ERROR" in n), "")
            raise ModelError(
                f"{self.runtime} cannot load the model: {first}{'; ' + detail if detail else ''}", str(self.path)
            ) from None
        _replay(self.runtime, native)
        self._first_invoke = True
        self._refresh_ports()

    def _refresh_ports(self) -> None:
        self.inputs = [_port(d) for d in self._interp.get_input_details()]
        self.outputs = [_port(d) for d in self._interp.get_output_details()]

    # -- shapes ----------------------------------------------------------------------------------
    def input_shape(self, i: int = 0) -> tuple[int, ...]:
        return tuple(int(s) for s in self._interp.get_input_details()[i]["shape"])

    def output_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(int(s) for s in d["shape"]) for d in self._interp.get_output_details()]

    def resize_input(self, shape: Sequence[int], i: int = 0) -> None:
        """Resize an input (MTCNN P-Net per pyramid scale); a no-op when the shape is already right."""
        if tuple(shape) == self.input_shape(i):
            return
        self._interp.resize_tensor_input(self.inputs[i].index, list(shape), strict=False)
        self._interp.allocate_tensors()
        self._first_invoke = True
        self._refresh_ports()

    def op_names(self) -> list[str]:
        try:
            return sorted({op["op_name"] for op in self._interp._get_ops_details()})
        except Exception:
            return []

    # -- inference -------------------------------------------------------------------------------
    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        if len(inputs) != len(self.inputs):
            raise ValueError(f"{self.path.name} takes {len(self.inputs)} input(s), got {len(inputs)}")
        for port, x in zip(self.inputs, inputs):
            x = np.asarray(x)
            if port.quantized:
                x = np.clip(np.round(x / port.scale + port.zero_point), *_range(port.dtype)).astype(port.dtype)
            elif x.dtype != port.dtype:
                x = x.astype(port.dtype)
            expected = tuple(self._interp.get_input_details()[self.inputs.index(port)]["shape"])
            if x.shape != expected:
                raise ValueError(
                    f"{self.path.name} input {port.name!r} expects shape {expected}, got {x.shape}"
                    " (call resize_input first for variable-size inputs)"
                )
            self._interp.set_tensor(port.index, x)
        if self._first_invoke:  # the XNNPACK delegate is applied (and announced) on the first invoke
            self._first_invoke = False
            native: list[str] = []
            with _native_stderr(native):
                self._interp.invoke()
            _replay(self.runtime, native)
        else:
            self._interp.invoke()
        out = []
        for port in self.outputs:
            y = self._interp.get_tensor(port.index)
            out.append((y.astype(np.float32) - port.zero_point) * port.scale if port.quantized else y.copy())
        return out


def _range(dtype: Any) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def load_graphs(
    manifest: Any,
    directory: str | Path,
    *,
    num_threads: int = 1,
    runtime: str = "auto",
    verify: bool = True,
    only: Collection[str] | None = None,
) -> dict[str, TFLiteModel]:
    """Load every graph of an artifact (or those named in ``only``) after checking files against its manifest."""
    directory = Path(directory)
    if verify:
        manifest.verify_files(directory)
    unknown = sorted(set(only or ()) - set(manifest.graphs))
    if unknown:
        raise ModelError(f"{manifest.name} has no graph {unknown}; it has {sorted(manifest.graphs)}", str(directory))
    models = {}
    for gname in manifest.graphs:
        if only is not None and gname not in only:
            continue
        model = TFLiteModel(manifest.graph_path(directory, gname), num_threads=num_threads, runtime=runtime)
        spec = manifest.graphs[gname].inputs[0]
        actual = model.input_shape()
        if len(actual) != len(spec.shape) or any(s != -1 and s != a for s, a in zip(spec.shape, actual)):
            raise ModelError(
                f"graph {gname!r} input shape {list(actual)} does not match manifest {spec.shape}",
                str(manifest.graph_path(directory, gname)),
                "wrong model for this manifest; re-run `make convert`",
            )
        models[gname] = model
    log.debug("loaded %s/%s with %s", manifest.name, manifest.variant, runtime)
    return models
