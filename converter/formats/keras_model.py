"""Keras model files: ``.keras`` (Keras 3) and ``.h5`` (Keras 2 lineage).

Keras 3 cannot read most Keras-2 ``.h5`` files (the Keras FaceNet port in docs/models.md is one). Those load
with ``tf_keras`` when it is installed; without it the error says so rather than guessing.
The model call is wrapped in a batch-1 concrete function and converted without the model argument
(with Keras 3 that argument silently leaves the weights out, docs/toolchain.md).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facelite.converter.formats import FormatError
from facelite.converter.formats.saved_model import batch_one_converter, pinned_shape, tensor_key
from facelite.converter.recipe import GraphSource

log = logging.getLogger(__name__)

TF_KERAS_HINT = "pip install --no-deps tf-keras==2.21.0 (Keras 2 for TF 2.21)"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def load_model(path: Path) -> Any:
    """The Keras model in ``path`` (``.keras`` via Keras 3; ``.h5`` via tf_keras if installed, else Keras 3)."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise FormatError("Keras model file not found", where)
    suffix = path.suffix.lower()
    if suffix not in (".keras", ".h5", ".hdf5"):
        raise FormatError(f"not a Keras model file (suffix {suffix!r}; expected .keras or .h5)", where)
    if suffix == ".keras":
        import keras

        try:
            return keras.saving.load_model(str(path), compile=False)
        except Exception as exc:  # zip, JSON and deserialisation errors all mean "cannot use this file"
            raise FormatError(f"Keras 3 cannot load the model: {_first_line(exc)}", where) from None
    if importlib.util.find_spec("tf_keras") is not None:
        import tf_keras

        try:
            return tf_keras.models.load_model(str(path), compile=False)
        except Exception as exc:
            raise FormatError(f"tf_keras cannot load the .h5 model: {_first_line(exc)}", where) from None
    import keras

    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as exc:
        raise FormatError(
            f"Keras 3 cannot load this .h5 model ({_first_line(exc)}); it is probably a Keras 2 file and "
            "tf_keras is not installed",
            where,
            TF_KERAS_HINT,
        ) from None


def _names(tensors: Sequence[Any]) -> list[str]:
    return [tensor_key(str(getattr(t, "name", ""))).split("/")[0] for t in tensors]


def load_graph(
    path: Path,
    *,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
    name: str = "model",
) -> GraphSource:
    """A Keras model file as a GraphSource (batch 1); ``outputs`` selects and orders outputs by name."""
    path = Path(path)
    where = str(path)
    model = load_model(path)
    model_inputs = list(getattr(model, "inputs", None) or [])
    if not model_inputs:
        raise FormatError(
            "the Keras model has no defined inputs (a subclassed model saved unbuilt)",
            where,
            "save a functional model or export a SavedModel (model.export(dir))",
        )
    if len(model_inputs) != 1:
        raise FormatError(f"expected one image input, the model has {len(model_inputs)}", where)
    in_names = _names(model_inputs)
    if inputs and [tensor_key(i) for i in inputs] != in_names:
        raise FormatError(f"input(s) {list(inputs)} not the model's input", where, f"model input: {in_names}")
    model_outputs = list(getattr(model, "outputs", None) or [])
    out_names = list(getattr(model, "output_names", None) or _names(model_outputs))
    if outputs:
        wanted = [tensor_key(o) for o in outputs]
        missing = [o for o in wanted if o not in out_names]
        if missing:
            raise FormatError(f"output(s) {missing} not in the model", where, f"model outputs: {out_names}")
        picks = [out_names.index(o) for o in wanted]
    else:
        picks = list(range(len(out_names) or 1))
    shape = pinned_shape(list(model_inputs[0].shape), input_shape, where)
    log.info("Keras model %s: input %s %s, outputs %s", path.name, in_names[0], shape, [out_names[i] for i in picks])

    def call(x: Any) -> list[Any]:
        y = model(x, training=False)
        if isinstance(y, dict):
            y = [y[k] for k in out_names]
        y = list(y) if isinstance(y, (list, tuple)) else [y]
        return [y[i] for i in picks]

    make_converter, reference = batch_one_converter(call, shape, model)
    return GraphSource(name=name, make_converter=make_converter, reference=reference, input_shape=shape)
