"""MTCNN P-Net, R-Net and O-Net from the weight files of PyPI ``mtcnn==1.0.0`` (the seeds' detector).

The package ships its weights as joblib/lz4 lists for its own Keras subclassed models. The networks are
rebuilt here layer for layer (the package's network code is not imported: it is read for the layout
only), the real weights are loaded by layer, and each network becomes one GraphSource:

- ``pnet`` is fully convolutional, converted with input [1, -1, -1, 3]: the agent resizes H/W per
  pyramid level (resize_tensor_input; both device runtimes accept it).
- ``rnet`` [1, 24, 24, 3] and ``onet`` [1, 48, 48, 3] flatten with a batch-free reshape (-1, features),
  so the converted graphs, although converted with batch 1, also run every candidate of a frame as one
  batch when the agent resizes their batch dimension (tests/test_mtcnn.py checks this numerically).

Like the package, the networks see RGB normalised as (x - 127.5) / 128 in NHWC, and flatten
after a (W, H) permute: the weights come from Caffe, whose fully-connected layers read the feature map
column-major. Keeping the Permute keeps the weights as shipped.

int8 (`--variants fp32,fp16,int8`, not in the default set; docs/experiments/mtcnn_int8.md) is mixed
precision: R-Net and O-Net full integer, P-Net kept float (PNET_FLOAT_IN). Fully integer, P-Net's
probability map loses the source's borderline faces (recall 0.948 of the source's faces on the converter's
photos, gate 0.95; 0.913 on WIDER photos it was not calibrated on); kept float, 0.965 and 0.942.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facelite.converter.formats import FormatError
from facelite.converter.recipe import GraphSource
from facelite.converter.sources import CATALOGUE, source_files
from facelite.converter.variants import INTEGER_VARIANTS
from facelite.errors import ImageError
from facelite.model.manifest import Alignment, Manifest, Preprocessing, Source
from facelite.model.runtime import Network
from facelite.vision.detect.mtcnn import (
    DEFAULT_NMS,
    DEFAULT_SCALE_FACTOR,
    DEFAULT_THRESHOLDS,
    GRAPHS,
    ONET_SIZE,
    RNET_SIZE,
    CascadeTrace,
    MTCNNDetector,
    crop_and_resize,
)

log = logging.getLogger(__name__)

INPUT_SHAPES: dict[str, list[int]] = {
    "pnet": [1, -1, -1, 3],
    "rnet": [1, RNET_SIZE, RNET_SIZE, 3],
    "onet": [1, ONET_SIZE, ONET_SIZE, 3],
}
# Integer variants carry P-Net in float: its integer form fails the recall gate, and every float-kept
# layer set tried inside it (PReLU, softmax, the convolutions) recovered less (docs/experiments/mtcnn_int8.md).
PNET_FLOAT_IN = INTEGER_VARIANTS
# P-Net's starting shape before the agent resizes it per pyramid level: its smallest valid input.
PNET_DEFAULT_SHAPE = (1, 12, 12, 3)
# Layers holding weights, in the order the package's set_weights lists them.
WEIGHT_LAYERS: dict[str, tuple[str, ...]] = {
    "pnet": ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4_1", "conv4_2"),
    "rnet": ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "fc4", "prelu4", "fc5_1", "fc5_2"),
    "onet": (
        "conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4",
        "fc5", "prelu5", "fc6_1", "fc6_2", "fc6_3",
    ),
}  # fmt: skip


# -- the networks ----------------------------------------------------------------------------------
def _conv(keras: Any, x: Any, filters: int, kernel: int, name: str, prelu: str) -> Any:
    x = keras.layers.Conv2D(filters, kernel, padding="valid", name=name)(x)
    return keras.layers.PReLU(shared_axes=[1, 2], name=prelu)(x)


def _flatten(keras: Any, x: Any) -> Any:
    """Caffe's column-major flatten, with the batch left free (-1) so a batch-1 conversion still
    accepts a resized batch (Keras' Flatten would bake the traced batch size into the reshape)."""
    x = keras.layers.Permute((2, 1, 3), name="permute")(x)
    features = int(np.prod(x.shape[1:]))
    return keras.layers.Lambda(
        lambda t: keras.ops.reshape(t, (-1, features)), output_shape=(features,), name="flatten"
    )(x)


def build_network(name: str) -> Any:
    """The Keras model of one stage, laid out as mtcnn/network/{pnet,rnet,onet}.py (weights not loaded)."""
    import keras

    layers = keras.layers
    if name == "pnet":
        inp = keras.Input((None, None, 3), name="image")
        x = _conv(keras, inp, 10, 3, "conv1", "prelu1")
        x = layers.MaxPooling2D(2, 2, padding="same", name="pool1")(x)
        x = _conv(keras, x, 16, 3, "conv2", "prelu2")
        x = _conv(keras, x, 32, 3, "conv3", "prelu3")
        reg = layers.Conv2D(4, 1, name="conv4_1")(x)
        prob = layers.Conv2D(2, 1, activation="softmax", name="conv4_2")(x)
        return keras.Model(inp, [reg, prob], name="pnet")
    if name == "rnet":
        inp = keras.Input((RNET_SIZE, RNET_SIZE, 3), name="image")
        x = _conv(keras, inp, 28, 3, "conv1", "prelu1")
        x = layers.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
        x = _conv(keras, x, 48, 3, "conv2", "prelu2")
        x = layers.MaxPooling2D(3, 2, padding="valid", name="pool2")(x)
        x = _conv(keras, x, 64, 2, "conv3", "prelu3")
        x = _flatten(keras, x)
        x = layers.PReLU(name="prelu4")(layers.Dense(128, name="fc4")(x))
        reg = layers.Dense(4, name="fc5_1")(x)
        prob = layers.Dense(2, activation="softmax", name="fc5_2")(x)
        return keras.Model(inp, [reg, prob], name="rnet")
    if name == "onet":
        inp = keras.Input((ONET_SIZE, ONET_SIZE, 3), name="image")
        x = _conv(keras, inp, 32, 3, "conv1", "prelu1")
        x = layers.MaxPooling2D(3, 2, padding="same", name="pool1")(x)
        x = _conv(keras, x, 64, 3, "conv2", "prelu2")
        x = layers.MaxPooling2D(3, 2, padding="valid", name="pool2")(x)
        x = _conv(keras, x, 64, 3, "conv3", "prelu3")
        x = layers.MaxPooling2D(2, 2, padding="same", name="pool3")(x)
        x = _conv(keras, x, 128, 2, "conv4", "prelu4")
        x = _flatten(keras, x)
        x = layers.PReLU(name="prelu5")(layers.Dense(256, name="fc5")(x))
        reg = layers.Dense(4, name="fc6_1")(x)
        lmk = layers.Dense(10, name="fc6_2")(x)
        prob = layers.Dense(2, activation="softmax", name="fc6_3")(x)
        return keras.Model(inp, [reg, lmk, prob], name="onet")
    raise ValueError(f"unknown MTCNN network {name!r}")


def read_weights(path: Path) -> list[np.ndarray]:
    """The package's weight file: a joblib pickle (lz4) of the arrays set_weights takes.
    Only ever called on the sha256-pinned file from facelite.converter.sources."""
    import joblib

    try:
        weights = joblib.load(path)
    except Exception as exc:
        raise FormatError(f"cannot read MTCNN weights: {type(exc).__name__}: {exc}", str(path)) from None
    if not isinstance(weights, list) or not all(isinstance(w, np.ndarray) for w in weights):
        raise FormatError("MTCNN weight file does not hold a list of arrays", str(path))
    return weights


def load_network(name: str, path: Path) -> Any:
    """Build one stage and load its real weights layer by layer, refusing any shape mismatch."""
    model = build_network(name)
    weights = read_weights(path)
    pos = 0
    for lname in WEIGHT_LAYERS[name]:
        layer = model.get_layer(lname)
        n = len(layer.weights)
        chunk = weights[pos : pos + n]
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(w.shape) for w in chunk]
        if got != expected:
            raise FormatError(f"{name} layer {lname} expects weights {expected}, file has {got}", str(path))
        layer.set_weights(chunk)
        pos += n
    if pos != len(weights):
        raise FormatError(f"{name} weight file has {len(weights) - pos} array(s) no layer takes", str(path))
    return model


class KerasNetwork:
    """Runs a stage's Keras model (any batch; P-Net any H/W): the float source every variant is checked against."""

    def __init__(self, model: Any, input_shape: Sequence[int]) -> None:
        import tensorflow as tf

        self.model = model
        spec = tf.TensorSpec([None, *[None if s < 0 else s for s in input_shape[1:]]], tf.float32)
        self._fn = tf.function(lambda x: model(x, training=False), input_signature=[spec], reduce_retracing=True)

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        (x,) = inputs
        return [np.asarray(o) for o in self._fn(np.asarray(x, np.float32))]


def with_default_input_shape(tflite: bytes, shape: Sequence[int]) -> bytes:
    """Give a dynamic input (shape_signature -1) a default shape the graph can run at.

    The converter writes 1 for every unknown dimension, and a 1x1 image is too small for P-Net's 3x3
    convolutions: XNNPACK then refuses to prepare the graph, so the interpreter cannot even be created
    before the agent resizes it. The signature stays [1, -1, -1, 3]; only the starting shape changes.
    """
    import numpy as np
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    for subgraph in model.subgraphs:
        for index in subgraph.inputs:
            tensor = subgraph.tensors[index]
            signature = list(tensor.shapeSignature) if tensor.shapeSignature is not None else []
            if any(s < 0 for s in signature):
                tensor.shape = np.asarray(shape, np.int32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


class DefaultShapeConverter:
    """A TFLiteConverter whose output gets ``with_default_input_shape``; every setting the variants make
    (optimizations, target_spec, representative_dataset, I/O types) goes to the wrapped converter."""

    def __init__(self, converter: Any, shape: Sequence[int]) -> None:
        object.__setattr__(self, "_converter", converter)
        object.__setattr__(self, "_shape", list(shape))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._converter, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._converter, name, value)

    def convert(self) -> bytes:
        return with_default_input_shape(self._converter.convert(), self._shape)


def _converter_factory(model: Any, input_shape: Sequence[int]) -> Callable[[], Any]:
    import tensorflow as tf

    spec = tf.TensorSpec([1, *[None if s < 0 else s for s in input_shape[1:]]], tf.float32)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    dynamic = any(s < 0 for s in input_shape)

    def make_converter() -> Any:
        # Without the model argument: with Keras 3, from_concrete_functions([cf], model) silently drops
        # the weights (docs/toolchain.md). tests/test_mtcnn.py checks the .tflite outputs against Keras.
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
        return DefaultShapeConverter(converter, PNET_DEFAULT_SHAPE) if dynamic else converter

    return make_converter


# -- the recipe ------------------------------------------------------------------------------------
@dataclass
class MTCNNRecipe:
    name: str = "mtcnn"
    kind: str = "detector"
    # RGB, (x - 127.5) / 128: mtcnn/utils/images.py normalize_images on decode_image's RGB.
    preprocessing: Preprocessing = field(default_factory=lambda: Preprocessing("RGB", 127.5, 128.0))
    alignment: Alignment | None = None
    embedding_size: int | None = None
    detector_type: str | None = "mtcnn"
    extra: dict[str, Any] = field(
        default_factory=lambda: {
            "thresholds": list(DEFAULT_THRESHOLDS),
            "scale_factor": DEFAULT_SCALE_FACTOR,
            "nms": list(DEFAULT_NMS),
            # R/O-Net flatten with a batch-free reshape: a resized batch is valid (see module docstring).
            "batched_graphs": ["rnet", "onet"],
        }
    )
    default_variants: Sequence[str] = ("fp32", "fp16")
    calibration_seed: int = 0
    _models: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _references: dict[str, KerasNetwork] = field(default_factory=dict, init=False, repr=False)
    _traces: dict[str, CascadeTrace] = field(default_factory=dict, init=False, repr=False)

    def source(self) -> Source:
        return CATALOGUE["mtcnn"].manifest_source(file=";".join(CATALOGUE["mtcnn"].files))

    def models(self) -> dict[str, Any]:
        """The three Keras stages with the package's real weights (loaded once per recipe)."""
        if not self._models:
            paths = {Path(p).stem: Path(p) for p in source_files("mtcnn")}
            for g in GRAPHS:
                self._models[g] = load_network(g, paths[g])
        return self._models

    def references(self) -> dict[str, KerasNetwork]:
        """The float networks (one traced function each, shared by the build and calibration)."""
        if not self._references:
            self._references = {g: KerasNetwork(m, INPUT_SHAPES[g]) for g, m in self.models().items()}
        return self._references

    def graphs(self) -> list[GraphSource]:
        models = self.models()
        references = self.references()
        return [
            GraphSource(
                name=g,
                make_converter=_converter_factory(models[g], INPUT_SHAPES[g]),
                reference=references[g],
                input_shape=list(INPUT_SHAPES[g]),
                float_variants=PNET_FLOAT_IN if g == "pnet" else frozenset(),
            )
            for g in GRAPHS
        ]

    def detector_manifest(self) -> Manifest:
        """What the detector reads (extra, preprocessing); graphs are unknown until the build writes them."""
        return Manifest(
            name=self.name,
            kind="detector",
            variant="fp32",
            graphs={},
            source=self.source(),
            preprocessing=self.preprocessing,
            detector_type=self.detector_type,
            extra=dict(self.extra),
        )

    def detector(self, networks: dict[str, Network], *, min_face: int = 20) -> MTCNNDetector:
        return MTCNNDetector(self.detector_manifest(), networks, min_face=min_face)

    # -- calibration -----------------------------------------------------------------------------
    def _trace(self, image: np.ndarray) -> CascadeTrace | None:
        """The float cascade's intermediate inputs for one photo (cached: every graph and variant reuses them)."""
        key = hashlib.sha1(np.ascontiguousarray(image).data).hexdigest() + str(image.shape)
        if key not in self._traces:
            det = self.detector(dict(self.references()))
            try:
                self._traces[key] = det.trace(image)
            except ImageError as exc:
                log.warning("calibration: skipped a photo: %s", exc.one_line())
                return None
        return self._traces[key]

    def calibration_samples(self, graph: str, images: Sequence[np.ndarray], count: int) -> list[list[np.ndarray]]:
        """Real inputs of ``graph``: P-Net gets real pyramid levels of the photos, R-Net/O-Net real crops of
        the candidates the float cascade hands them on these photos.

        P-Net levels are spread evenly over the photos' levels in order, so every photo and scale is
        represented. Candidate crops are mostly background the stage rejects; half the R-Net/O-Net
        samples are drawn from the candidates the float stage accepts, so the quantisation ranges also
        fit the faces whose scores and box offsets the detector keeps.
        """
        if graph not in GRAPHS:
            raise ValueError(f"MTCNN has no graph {graph!r}")
        if count <= 0:
            return []
        if graph == "pnet":
            levels = [lvl.image for im in images if (t := self._trace(im)) is not None for lvl in t.pyramid]
            if not levels:
                return []
            picks = np.unique(np.linspace(0, len(levels) - 1, min(count, len(levels))).round().astype(int))
            return [[np.asarray(levels[i], np.float32)] for i in picks]
        size = RNET_SIZE if graph == "rnet" else ONET_SIZE
        stage = GRAPHS.index(graph)
        crops = []
        for im in images:
            trace = self._trace(im)
            if trace is not None:
                cands = trace.rnet_candidates if graph == "rnet" else trace.onet_candidates
                crops.append(crop_and_resize(trace.normalized, cands.boxes, size))
        if not crops:
            return []
        pool = np.concatenate(crops)
        prob = self.references()[graph].run(pool)[-1][:, 1]
        accepted = np.nonzero(prob > DEFAULT_THRESHOLDS[stage])[0]
        rejected = np.nonzero(prob <= DEFAULT_THRESHOLDS[stage])[0]
        rng = np.random.default_rng(self.calibration_seed)
        n_acc = min(len(accepted), (count + 1) // 2)
        n_rej = min(len(rejected), count - n_acc)
        n_acc = min(len(accepted), count - n_rej)
        picks = np.sort(
            np.concatenate(
                [rng.choice(accepted, n_acc, replace=False), rng.choice(rejected, n_rej, replace=False)]
            ).astype(int)
        )
        return [[pool[i : i + 1]] for i in picks]
