"""The one table of export variants, their converter settings and the options each accepts.

An option that does not apply to a variant is refused, never silently rewritten (Ultralytics-style).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from facelite.errors import FaceliteError
from facelite.model.manifest import DEVICE_CHECKED_VARIANTS

MIN_CALIBRATION_IMAGES = 32


class VariantError(FaceliteError):
    """A variant was asked for with options it cannot honour."""


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    calibrated: bool  # needs a representative data set of real aligned faces
    io_dtype: str  # float32 | uint8
    options: frozenset[str]  # option names this variant accepts

    @property
    def checked_on_device(self) -> bool:
        """Its arithmetic on the device differs from this machine's (manifest.DEVICE_CHECKED_VARIANTS)."""
        return self.name in DEVICE_CHECKED_VARIANTS

    def configure(self, converter: Any, representative: Callable[[], Iterable[list[Any]]] | None) -> None:
        """Set a fresh ``tf.lite.TFLiteConverter`` up for this variant."""
        import tensorflow as tf

        if self.calibrated and representative is None:
            raise VariantError(f"variant {self.name} needs calibration images", fix="pass --calibration DIR")
        if self.name == "fp32":
            return
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if self.name in ("fp16", "fp16-arith"):
            converter.target_spec.supported_types = [tf.float16]
            if self.name == "fp16-arith":
                # Writes the `reduced_precision_support` metadata ("fp16 accumulation"), which lets XNNPACK compute
                # in float16 on cores with FP16 vector arithmetic (ARMv8.2 asimdhp: Cortex-A55/A76, the Pi 5) and in
                # float32 elsewhere (A53/A72, x86). docs/experiments/fp16_arith.md measured it: 0.52-0.58x the
                # instructions of fp32 on the A76, embeddings at cosine 0.99996 to fp32's.
                converter.target_spec._experimental_supported_accumulation_type = tf.float16
        elif self.name == "dynamic-int8":
            # tflite-runtime 2.14 does not know FULLY_CONNECTED v12 (per-channel dense): see docs/toolchain.md.
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        else:  # int8, uint8-io: full integer
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if self.io_dtype == "uint8":
                converter.inference_input_type = tf.uint8
                converter.inference_output_type = tf.uint8
            # int8 keeps float I/O: the agent passes preprocessed floats and reads float embeddings.


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", "float32 weights and activations", False, "float32", frozenset()),
        Variant("fp16", "float16 weights, float32 compute", False, "float32", frozenset()),
        Variant(
            "fp16-arith",
            "float16 weights, float16 compute on cores with FP16 arithmetic (Cortex-A55/A76), float32 elsewhere",
            False,
            "float32",
            frozenset(),
        ),
        Variant("dynamic-int8", "int8 weights, float activations (dynamic range)", False, "float32", frozenset()),
        Variant(
            "int8",
            "full integer, float32 I/O, calibrated on real faces",
            True,
            "float32",
            frozenset({"calibration", "calibration_count"}),
        ),
        Variant(
            "uint8-io",
            "full integer, uint8 I/O (the seeds' QUANTIZED_UINT8)",
            True,
            "uint8",
            frozenset({"calibration", "calibration_count"}),
        ),
    )
}


def quantize_keeping_float(
    converter: Any, representative: Callable[[], Iterable[list[Any]]], float_ops: Iterable[str]
) -> bytes:
    """A converter set up by ``Variant.configure`` for int8, converted with ``float_ops`` left float: the TF
    quantization debugger's denylist, the one converter API that quantizes a graph selectively."""
    import tensorflow as tf

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter,
        debug_dataset=representative,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=sorted(float_ops)),
    )
    return bytes(debugger.get_nondebug_quantized_model())


# Full-integer variants (calibrated on real data): the ones a graph may opt out of with float_variants.
INTEGER_VARIANTS = frozenset(v.name for v in VARIANTS.values() if v.calibrated)


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise VariantError(f"unknown variant {name!r}", fix=f"choose from {', '.join(VARIANTS)}")
    return VARIANTS[name]


def validate_options(variant: Variant, options: dict[str, Any], available_calibration: int | None = None) -> None:
    """Refuse options the variant does not accept and calibration sets that are too small."""
    extra = sorted(k for k, v in options.items() if v is not None and k not in variant.options)
    if extra:
        raise VariantError(
            f"variant {variant.name} does not accept option(s) {extra}",
            fix=f"it accepts {sorted(variant.options) or 'no options'}",
        )
    if variant.calibrated and available_calibration is not None:
        wanted = int(options.get("calibration_count") or MIN_CALIBRATION_IMAGES)
        if wanted < MIN_CALIBRATION_IMAGES:
            raise VariantError(
                f"calibration_count {wanted} is below the minimum of {MIN_CALIBRATION_IMAGES}",
            )
        if available_calibration < MIN_CALIBRATION_IMAGES:
            raise VariantError(
                f"variant {variant.name} needs at least {MIN_CALIBRATION_IMAGES} calibration faces, "
                f"found {available_calibration}",
                fix="point --calibration at a folder with more face photos",
            )
