"""TF2 SavedModel directories: the serving signature tells the inputs and outputs.

The signature is wrapped in a concrete function with the batch pinned to 1 (a dynamic batch disables
XNNPACK on tflite-runtime 2.14, docs/toolchain.md) and converted with ``from_concrete_functions([cf])``:
no trackable argument, the closure keeps the loaded object (and so its variables) alive.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facelite.converter.formats import FormatError
from facelite.converter.recipe import GraphSource

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"


class TFFunctionNetwork:
    """Runs a float TF concrete function taking one image tensor: the verification baseline."""

    def __init__(self, fn: Any, keep_alive: Any = None) -> None:
        self._fn = fn
        # The loaded SavedModel / Keras model owns the variables the function reads.
        self._keep_alive = keep_alive

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        import tensorflow as tf

        out = self._fn(*[tf.constant(np.asarray(x, np.float32)) for x in inputs])
        out = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o) for o in out]


def tensor_key(name: str) -> str:
    """``serving_default_input_1:0`` / ``input_1:0`` -> ``input_1`` (the signature's own key)."""
    name = name.split(":")[0]
    return name.removeprefix(f"{DEFAULT_SIGNATURE}_")


def _natural(key: str) -> list[Any]:
    # output_10 after output_9: Keras export names outputs output_0, output_1, ...
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def pinned_shape(shape: Sequence[int | None], input_shape: Sequence[int] | None, where: str) -> list[int]:
    """Batch 1; other unknown dimensions become -1 (the agent resizes them) unless --input-shape says."""
    if input_shape:
        if len(input_shape) != len(shape):
            raise FormatError(
                f"--input-shape {list(input_shape)} has rank {len(input_shape)}, the model input has rank {len(shape)}",
                where,
            )
        for given, known in zip(list(input_shape)[1:], list(shape)[1:]):
            if known is not None and known >= 0 and given != known:
                raise FormatError(
                    f"--input-shape {list(input_shape)} contradicts the model input shape {list(shape)}", where
                )
        shape = list(input_shape)
    if not shape:
        raise FormatError("the model input has no known rank", where, "pass --input-shape 1,H,W,3")
    return [1, *[(-1 if s is None or s < 0 else int(s)) for s in list(shape)[1:]]]


def batch_one_converter(fn: Any, shape: Sequence[int], keep_alive: Any) -> tuple[Any, TFFunctionNetwork]:
    """(make_converter, reference) for a function of one float image tensor returning a list of tensors."""
    import tensorflow as tf

    spec = tf.TensorSpec([1, *[None if s < 0 else s for s in shape[1:]]], tf.float32)
    concrete = tf.function(fn).get_concrete_function(spec)

    def make_converter() -> Any:
        # Never from_concrete_functions([cf], model): with Keras 3 it silently drops the weights.
        _ = keep_alive
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete])

    return make_converter, TFFunctionNetwork(concrete, keep_alive)


def _signature(loaded: Any, key: str | None, where: str) -> tuple[str, Any]:
    sigs = dict(loaded.signatures)
    if not sigs:
        raise FormatError(
            "SavedModel has no signatures", where, "re-export it with a serving signature (model.export(dir))"
        )
    if key is None:
        key = DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in sigs else (next(iter(sigs)) if len(sigs) == 1 else None)
        if key is None:
            raise FormatError(
                f"SavedModel has no {DEFAULT_SIGNATURE!r} signature and several others {sorted(sigs)}", where
            )
    if key not in sigs:
        raise FormatError(f"SavedModel has no signature {key!r}", where, f"signatures: {sorted(sigs)}")
    return key, sigs[key]


def load_graph(
    path: Path,
    *,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
    signature: str | None = None,
    name: str = "model",
) -> GraphSource:
    """A SavedModel directory as a GraphSource (batch 1).

    ``inputs``/``outputs`` are signature keys (``input_1``; ``serving_default_input_1:0`` also accepted);
    by default the signature's single float input and all its outputs in natural key order.
    """
    import tensorflow as tf

    path = Path(path)
    where = str(path)
    if not (path / "saved_model.pb").is_file() and not (path / "saved_model.pbtxt").is_file():
        raise FormatError("not a SavedModel directory (no saved_model.pb)", where)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # TF raises a zoo of types for corrupt or incompatible files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FormatError(f"TensorFlow cannot load the SavedModel: {first}", where) from None
    key, sig = _signature(loaded, signature, where)
    _, in_specs = sig.structured_input_signature
    out_keys = sorted(sig.structured_outputs, key=_natural)

    float_inputs = [k for k, s in in_specs.items() if s.dtype == tf.float32]
    chosen_in = [tensor_key(i) for i in inputs] if inputs else float_inputs
    if len(chosen_in) != 1:
        raise FormatError(
            f"expected one image input in signature {key!r}, found {chosen_in or 'none'}",
            where,
            f"name it with --inputs (signature inputs: {sorted(in_specs)})",
        )
    (in_key,) = chosen_in
    if in_key not in in_specs:
        raise FormatError(f"input {in_key!r} not in signature {key!r}", where, f"signature inputs: {sorted(in_specs)}")
    others = sorted(set(in_specs) - {in_key})
    if others:
        raise FormatError(f"signature {key!r} needs more inputs than the image: {others}", where)
    chosen_out = [tensor_key(o) for o in outputs] if outputs else out_keys
    missing = [o for o in chosen_out if o not in sig.structured_outputs]
    if missing or not chosen_out:
        raise FormatError(
            f"output(s) {missing or 'none'} not in signature {key!r}", where, f"signature outputs: {out_keys}"
        )
    shape = pinned_shape(in_specs[in_key].shape.as_list(), input_shape, where)
    log.info("SavedModel %s: signature %s, input %s %s, outputs %s", path.name, key, in_key, shape, chosen_out)

    def call(x: Any) -> list[Any]:
        result = sig(**{in_key: x})
        return [result[o] for o in chosen_out]

    make_converter, reference = batch_one_converter(call, shape, loaded)
    return GraphSource(name=name, make_converter=make_converter, reference=reference, input_shape=shape)
