"""TF1 checkpoints: the real MTCNN O-Net, trained-graph style, saved with a Saver, frozen and converted.

The O-Net is written in tf.compat.v1 graph mode with variables (restored from the checkpoint, never
baked into the graph), a ``phase_train`` switch driving a dropout branch, a loss and an optimizer, as
the seeds' TF1 models were saved. Two flavours: TF1 control flow with reference variables (what the
seeds' checkpoints hold) and TF2's If with resource variables (what compat.v1 code builds today).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from facelite.converter.formats import FormatError
from facelite.converter.formats.tf1_checkpoint import RANDOM_OPS, VARIABLE_OPS, freeze, load_graph
from facelite.converter.models.mtcnn import MTCNNRecipe, read_weights
from facelite.converter.sources import source_files
from facelite.converter.variants import get_variant
from facelite.model.runtime import TFLiteModel
from facelite.vision.imageio import read_image

pytestmark = pytest.mark.slow  # trains, freezes and converts with TensorFlow: not in make test-fast

OUTPUTS = ["onet/reg", "onet/landmarks", "onet/prob"]
STYLES = ("tf1-switch-refvars", "tf2-if-resourcevars")
CALIBRATION_PHOTOS = 10  # photos whose float-cascade candidates calibrate int8
EVAL_PHOTOS = 8  # other photos whose O-Net candidates are compared


@dataclass(frozen=True)
class Checkpoint:
    directory: Path
    ops: frozenset[str]  # op types of the saved (training) graph


def _prelu(x: Any, alpha: Any) -> Any:
    # Keras' PReLU formula, so the graph computes what the Keras O-Net computes.
    return tf.nn.relu(x) - alpha * tf.nn.relu(-x)


def build_training_onet(weights: list[np.ndarray], use_resource: bool) -> tuple[Any, list[Any], Any]:
    """The O-Net as a TF1 training graph; returns (graph, variables in weight-file order, saver)."""
    graph = tf.Graph()
    variables: list[Any] = []
    with graph.as_default():

        def var(name: str, shape: tuple[int, ...]) -> Any:
            v = tf.compat.v1.get_variable(
                name, shape, initializer=tf.compat.v1.zeros_initializer(), use_resource=use_resource
            )
            variables.append(v)
            return v

        def conv(x: Any, idx: int, kernel: int, cin: int, cout: int) -> Any:
            w = var(f"conv{idx}/weights", (kernel, kernel, cin, cout))
            b = var(f"conv{idx}/biases", (cout,))
            a = var(f"prelu{idx}/alpha", (1, 1, cout))
            return _prelu(tf.nn.conv2d(x, w, 1, "VALID") + b, a)

        image = tf.compat.v1.placeholder(tf.float32, [None, 48, 48, 3], name="input")
        phase_train = tf.compat.v1.placeholder(tf.bool, [], name="phase_train")
        labels = tf.compat.v1.placeholder(tf.float32, [None, 2], name="labels")
        x = tf.nn.max_pool2d(conv(image, 1, 3, 3, 32), 3, 2, "SAME")
        x = tf.nn.max_pool2d(conv(x, 2, 3, 32, 64), 3, 2, "VALID")
        x = tf.nn.max_pool2d(conv(x, 3, 3, 64, 64), 2, 2, "SAME")
        x = conv(x, 4, 2, 64, 128)
        x = tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [-1, 1152])  # Caffe's column-major flatten
        w5, b5, a5 = var("fc5/weights", (1152, 256)), var("fc5/biases", (256,)), var("prelu5/alpha", (256,))
        x = _prelu(tf.matmul(x, w5) + b5, a5)
        # The training branch: dropout noise only while phase_train is true.
        x = tf.compat.v1.cond(phase_train, lambda: tf.compat.v1.nn.dropout(x, rate=0.25), lambda: tf.identity(x))
        heads = []
        for name, size in (("fc6_1", 4), ("fc6_2", 10), ("fc6_3", 2)):
            w, b = var(f"{name}/weights", (256, size)), var(f"{name}/biases", (size,))
            heads.append(tf.matmul(x, w) + b)
        tf.identity(heads[0], name=OUTPUTS[0])
        tf.identity(heads[1], name=OUTPUTS[1])
        tf.nn.softmax(heads[2], name=OUTPUTS[2])
        loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=heads[2]))
        tf.compat.v1.train.GradientDescentOptimizer(0.01).minimize(loss, name="train")
        saver = tf.compat.v1.train.Saver()
    shapes = [tuple(v.shape) for v in variables]
    assert shapes == [w.shape for w in weights], "graph layout differs from the O-Net weight file"
    return graph, variables, saver


def save_checkpoint(directory: Path, style: str) -> Checkpoint:
    from tensorflow.python.ops import control_flow_util

    weights = read_weights(next(p for p in source_files("mtcnn") if p.stem == "onet"))
    v2_before = control_flow_util.ENABLE_CONTROL_FLOW_V2
    # TF1 control flow is a process-wide switch: set it only while this graph is built.
    if style.startswith("tf1"):
        tf.compat.v1.disable_control_flow_v2()
    try:
        graph, variables, saver = build_training_onet(weights, use_resource=style.endswith("resourcevars"))
    finally:
        control_flow_util.ENABLE_CONTROL_FLOW_V2 = v2_before
    directory.mkdir(parents=True, exist_ok=True)
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for v, w in zip(variables, weights):
            v.load(w, sess)
        saver.save(sess, str(directory / "onet.ckpt"), global_step=1000)
    graph_def = graph.as_graph_def()
    # TF2 conditionals keep their branches as library functions: count their ops too.
    ops = {n.op for n in graph_def.node} | {n.op for f in graph_def.library.function for n in f.node_def}
    return Checkpoint(directory, frozenset(ops))


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recipe() -> MTCNNRecipe:
    return MTCNNRecipe()


@pytest.fixture(scope="module")
def photos(faces_dir: Path) -> list[np.ndarray]:
    # Smallest photos first keeps the float cascade quick; they are still real, varied faces.
    paths = sorted((faces_dir / "people").glob("*/*.jpg"), key=lambda p: (p.stat().st_size, p.name))
    return [read_image(p) for p in paths[: CALIBRATION_PHOTOS + EVAL_PHOTOS]]


@pytest.fixture(scope="module")
def calibration(recipe: MTCNNRecipe, photos: list[np.ndarray]) -> list[np.ndarray]:
    samples = [s[0] for s in recipe.calibration_samples("onet", photos[:CALIBRATION_PHOTOS], 64)]
    assert len(samples) >= 32
    return samples


@pytest.fixture(scope="module")
def eval_crops(recipe: MTCNNRecipe, photos: list[np.ndarray]) -> np.ndarray:
    """O-Net inputs the float cascade produces on photos not used for calibration."""
    crops = [s[0] for s in recipe.calibration_samples("onet", photos[CALIBRATION_PHOTOS:], 1000)]
    return np.concatenate(crops)


@pytest.fixture(scope="module")
def keras_out(recipe: MTCNNRecipe, eval_crops: np.ndarray) -> list[np.ndarray]:
    reg, lmk, prob = recipe.references()["onet"].run(eval_crops)
    assert (prob[:, 1] > 0.7).sum() >= EVAL_PHOTOS - 1, "the float O-Net should see most photos' faces"
    return [reg, lmk, prob]


@pytest.fixture(scope="module", params=STYLES)
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checkpoint]:
    yield save_checkpoint(tmp_path_factory.mktemp(request.param), request.param)


def _by_last_dim(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """reg (4), landmarks (10), prob (2): converted graphs do not keep output order."""
    return [next(o for o in outputs if o.shape[-1] == d) for d in (4, 10, 2)]


def _run_tflite(path: Path, crops: np.ndarray) -> list[np.ndarray]:
    model = TFLiteModel(path, runtime="ai-edge-litert")
    outs = [_by_last_dim(model.run(c[None])) for c in crops]
    return [np.concatenate([o[k] for o in outs]) for k in range(3)]


# -- tests ---------------------------------------------------------------------------------------
def test_saved_graph_really_has_a_training_branch(checkpoint: Checkpoint) -> None:
    """Guard for the next test: the checkpoint graph holds dropout noise, variables and a conditional."""
    assert checkpoint.ops & RANDOM_OPS
    assert checkpoint.ops & VARIABLE_OPS
    assert checkpoint.ops & {"Switch", "Merge", "If", "StatelessIf"}
    assert "ApplyGradientDescent" in checkpoint.ops or "ResourceApplyGradientDescent" in checkpoint.ops


def test_freeze_pins_switch_and_drops_training_branch(checkpoint: Checkpoint) -> None:
    frozen = freeze(checkpoint.directory)
    ops = {n.op for n in frozen.graph_def.node}
    assert frozen.pinned == ["phase_train"]
    assert frozen.folded >= 1
    assert not ops & RANDOM_OPS, ops
    assert not ops & VARIABLE_OPS, ops
    assert not ops & {"Switch", "Merge", "If", "StatelessIf"}, ops
    assert not any("dropout" in n.name or "gradients" in n.name for n in frozen.graph_def.node)
    # Discovered, not given: the image placeholder (not labels) and the three heads (not the train op).
    assert frozen.inputs == ["input"]
    assert sorted(frozen.outputs) == sorted(OUTPUTS)


def test_frozen_meta_file_and_directory_agree(checkpoint: Checkpoint) -> None:
    meta = next(checkpoint.directory.glob("*.meta"))
    a, b = freeze(checkpoint.directory), freeze(meta)
    assert a.prefix == b.prefix and a.prefix.endswith("onet.ckpt-1000")
    assert sorted(n.name for n in a.graph_def.node) == sorted(n.name for n in b.graph_def.node)


def test_converted_checkpoint_matches_keras_onet(
    checkpoint: Checkpoint,
    tmp_path: Path,
    eval_crops: np.ndarray,
    keras_out: list[np.ndarray],
    calibration: list[np.ndarray],
) -> None:
    source = load_graph(checkpoint.directory, input_shape=[1, 48, 48, 3])
    assert source.input_shape == [1, 48, 48, 3]
    # The float source graph itself equals the Keras O-Net (weights restored, dropout off).
    ref = _by_last_dim(source.reference.run(eval_crops[:1]))
    for got, want in zip(ref, keras_out):
        np.testing.assert_allclose(got, want[:1], atol=1e-5)

    def representative() -> Iterator[list[np.ndarray]]:
        for s in calibration:
            yield [s]

    for vname in ("fp32", "int8"):
        converter = source.make_converter()
        get_variant(vname).configure(converter, representative if vname == "int8" else None)
        path = tmp_path / f"onet-{vname}.tflite"
        path.write_bytes(converter.convert())
        reg, lmk, prob = _run_tflite(path, eval_crops)
        faces = keras_out[2][:, 1] > 0.7
        if vname == "fp32":
            for got, want in zip((reg, lmk, prob), keras_out):
                np.testing.assert_allclose(got, want, atol=1e-4)
        else:
            # Full int8 on real crops: the face decision and the geometry a detector uses survive.
            assert np.mean((prob[:, 1] > 0.7) == faces) >= 0.95
            assert np.abs(prob[faces, 1] - keras_out[2][faces, 1]).max() < 0.1
            assert np.abs(reg[faces] - keras_out[0][faces]).mean() < 0.02
            assert np.abs(lmk[faces] - keras_out[1][faces]).mean() < 0.02
            assert path.stat().st_size < (tmp_path / "onet-fp32.tflite").stat().st_size / 3


# -- bad input: one line naming what and where -----------------------------------------------------
def _one_line(exc: pytest.ExceptionInfo[FormatError]) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_directory_without_meta_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError) as exc:
        load_graph(tmp_path)
    assert "no .meta" in _one_line(exc) and str(tmp_path) in str(exc.value)


def test_garbage_meta_file_is_one_line_error(tmp_path: Path) -> None:
    meta = tmp_path / "model.ckpt.meta"
    meta.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    (tmp_path / "model.ckpt.index").write_bytes(b"")
    with pytest.raises(FormatError) as exc:
        load_graph(meta)
    assert str(meta) in _one_line(exc)


def test_checkpoint_missing_variables_is_one_line_error(checkpoint: Checkpoint, tmp_path: Path) -> None:
    """A meta graph that wants a variable the checkpoint never saved."""
    import shutil

    for f in checkpoint.directory.iterdir():
        shutil.copy(f, tmp_path / f.name)
    meta = next(tmp_path.glob("*.meta"))
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.train.import_meta_graph(str(meta))
        tf.compat.v1.get_variable("extra/weights", (3, 3), initializer=tf.compat.v1.zeros_initializer())
        tf.compat.v1.train.Saver()  # a saver that also wants the new variable
        tf.compat.v1.train.export_meta_graph(str(meta), saver_def=tf.compat.v1.train.Saver().as_saver_def())
    with pytest.raises(FormatError) as exc:
        load_graph(tmp_path)
    text = _one_line(exc)
    assert "extra/weights" in text and "does not match" in text


def test_wrong_tensor_names_are_one_line_errors(checkpoint: Checkpoint) -> None:
    with pytest.raises(FormatError) as exc:
        load_graph(checkpoint.directory, outputs=["onet/nope"])
    assert "onet/nope" in _one_line(exc)
    with pytest.raises(FormatError) as exc:
        load_graph(checkpoint.directory, inputs=["labels"], outputs=OUTPUTS)
    assert "labels" in _one_line(exc)
