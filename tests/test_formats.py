"""Source formats on real networks: SavedModel, .keras, .h5 (the real MTCNN R-Net/O-Net with the weights of
PyPI mtcnn 1.0.0), format detection on every kind, one-line errors, and the --source recipe on FaceNet.

The Keras layers are rebuilt here as the mtcnn package builds them (network/rnet.py, onet.py) so the test
does not depend on the package's own code; the weights come from the pinned, sha256-checked package.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from facelite.converter.formats import FormatError
from facelite.converter.formats.detect import detect_format, load_any
from facelite.converter.formats.user import user_recipe
from facelite.converter.sources import source_files
from facelite.converter.variants import get_variant
from facelite.model.manifest import Preprocessing, sha256_file
from facelite.model.runtime import TFLiteModel
from facelite.vision.imageio import list_images, read_image

pytestmark = pytest.mark.slow  # converts real networks with TensorFlow (tens of seconds): not in make test-fast

MTCNN_PRE = Preprocessing("RGB", 127.5, 128.0)  # mtcnn.utils.images.normalize_images


# -- the real MTCNN R-Net / O-Net ----------------------------------------------------------------


def _rnet() -> Any:
    import keras

    L = keras.layers
    x = inp = keras.Input((24, 24, 3), name="input")
    x = L.Conv2D(28, 3, padding="valid", name="conv1")(x)
    x = L.PReLU(shared_axes=[1, 2], name="prelu1")(x)
    x = L.MaxPooling2D(3, 2, padding="same", name="maxpooling1")(x)
    x = L.Conv2D(48, 3, padding="valid", name="conv2")(x)
    x = L.PReLU(shared_axes=[1, 2], name="prelu2")(x)
    x = L.MaxPooling2D(3, 2, padding="valid", name="maxpooling2")(x)
    x = L.Conv2D(64, 2, padding="valid", name="conv3")(x)
    x = L.PReLU(shared_axes=[1, 2], name="prelu3")(x)
    x = L.Permute((2, 1, 3), name="permute")(x)  # the weights come from a column-major (Caffe) network
    x = L.Flatten(name="flatten3")(x)
    x = L.Dense(128, name="fc4")(x)
    x = L.PReLU(name="prelu4")(x)
    bbox = L.Dense(4, name="fc5-1")(x)
    prob = L.Dense(2, activation="softmax", name="fc5-2")(x)
    return keras.Model(inp, [bbox, prob], name="rnet")


def _onet() -> Any:
    import keras

    L = keras.layers
    x = inp = keras.Input((48, 48, 3), name="input")
    x = L.Conv2D(32, 3, padding="valid", name="conv1")(x)
    x = L.PReLU(shared_axes=[1, 2], name="prelu1")(x)
    x = L.MaxPooling2D(3, 2, padding="same", name="maxpooling1")(x)
    x = L.Conv2D(64, 3, padding="valid", name="conv2")(x)
    x = L.PReLU(shared_axes=[1, 2], name="prelu2")(x)
    x = L.MaxPooling2D(3, 2, padding="valid", name="maxpooling2")(x)
    x = L.Conv2D(64, 3, padding="valid", name="conv3")(x)
    x = L.PReLU(shared_axes=[1, 2], name="prelu3")(x)
    x = L.MaxPooling2D(2, 2, padding="same", name="maxpooling3")(x)
    x = L.Conv2D(128, 2, padding="valid", name="conv4")(x)
    x = L.PReLU(shared_axes=[1, 2], name="prelu4")(x)
    x = L.Permute((2, 1, 3), name="permute")(x)
    x = L.Flatten(name="flatten4")(x)
    x = L.Dense(256, name="fc5")(x)
    x = L.PReLU(name="prelu5")(x)
    bbox = L.Dense(4, name="fc6-1")(x)
    marks = L.Dense(10, name="fc6-2")(x)
    prob = L.Dense(2, activation="softmax", name="fc6-3")(x)
    return keras.Model(inp, [bbox, marks, prob], name="onet")


# Layer order of the package's weight lists (its subclassed models create the layers in this order).
WEIGHT_LAYERS = {
    "rnet": ["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "fc4", "prelu4", "fc5-1", "fc5-2"],
    "onet": [
        *["conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4"],
        *["fc5", "prelu5", "fc6-1", "fc6-2", "fc6-3"],
    ],
}


def _load_mtcnn(net: str) -> Any:
    import joblib

    files = {p.stem: p for p in source_files("mtcnn")}
    weights = list(joblib.load(files[net]))
    model = _rnet() if net == "rnet" else _onet()
    for name in WEIGHT_LAYERS[net]:
        layer = model.get_layer(name)
        n = len(layer.get_weights())
        layer.set_weights(weights[:n])
        weights = weights[n:]
    assert not weights, f"{len(weights)} {net} weight arrays left over"
    return model


@pytest.fixture(scope="module")
def face_boxes(data_dir: Path, faces_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(photo, square face box x0,y0,x1,y1) for real single-face photos, found by OpenCV's YuNet."""
    yunet = str(data_dir / "models" / "yunet_s_640_640.onnx")
    found = []
    for person in sorted((faces_dir / "people").iterdir()):
        img = read_image(list_images(person)[0])
        det = cv2.FaceDetectorYN.create(yunet, "", (img.shape[1], img.shape[0]), 0.8)
        _, faces = det.detect(img)
        if faces is None:
            continue
        x, y, w, h = faces[int(np.argmax(faces[:, -1]))][:4]
        side, cx, cy = max(w, h), x + w / 2, y + h / 2
        box = np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]).round().astype(int)
        found.append((img, box))
    assert len(found) >= 8, "too few faces found in the data dir photos"
    return found


def _crops(face_boxes: list[tuple[np.ndarray, np.ndarray]], side: int) -> np.ndarray:
    from facelite.vision.embed import preprocess

    out = []
    for img, (x0, y0, x1, y1) in face_boxes:
        pad = cv2.copyMakeBorder(img, side * 4, side * 4, side * 4, side * 4, cv2.BORDER_CONSTANT)
        o = side * 4
        crop = cv2.resize(pad[y0 + o : y1 + o, x0 + o : x1 + o], (side, side), interpolation=cv2.INTER_AREA)
        out.append(preprocess(crop, MTCNN_PRE))
    return np.concatenate(out)


@pytest.fixture(scope="module")
def onet() -> Any:
    return _load_mtcnn("onet")


@pytest.fixture(scope="module")
def rnet() -> Any:
    return _load_mtcnn("rnet")


@pytest.fixture(scope="module")
def onet_faces(face_boxes: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return _crops(face_boxes, 48)


@pytest.fixture(scope="module")
def rnet_faces(face_boxes: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return _crops(face_boxes, 24)


def _keras_outputs(model: Any, x: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(y) for y in model(x, training=False)]


def _fp32(graph: Any, tmp: Path) -> TFLiteModel:
    converter = graph.make_converter()
    get_variant("fp32").configure(converter, None)
    path = tmp / "model.tflite"
    path.write_bytes(converter.convert())
    return TFLiteModel(path, runtime="ai-edge-litert")


def _assert_same_as_keras(graph: Any, model: Any, faces: np.ndarray, tmp: Path) -> float:
    """Reference and fp32 .tflite of ``graph`` give the Keras model's outputs on every real face crop."""
    tfl = _fp32(graph, tmp)
    assert tfl.input_shape()[0] == 1  # batch pinned to 1
    worst = 0.0
    for x in faces:
        expected = _keras_outputs(model, x[None])
        for got in (graph.reference.run(x[None]), tfl.run(x[None])):
            assert [g.shape for g in got] == [e.shape for e in expected]
            worst = max(worst, *(float(np.max(np.abs(g - e))) for g, e in zip(got, expected)))
    assert worst < 1e-4, f"converted model differs from Keras by {worst}"
    return worst


def test_rebuilt_mtcnn_with_real_weights_recognises_real_faces(
    onet: Any, rnet: Any, onet_faces: np.ndarray, rnet_faces: np.ndarray
) -> None:
    # Guards the rebuild (layer order, Permute): wrong wiring gives chance-level face probabilities.
    assert float(np.mean(_keras_outputs(onet, onet_faces)[2][:, 1])) > 0.9
    assert float(np.mean(_keras_outputs(rnet, rnet_faces)[1][:, 1])) > 0.8


def test_saved_model_converts_to_the_same_outputs(onet: Any, onet_faces: np.ndarray, tmp_path: Path) -> None:
    sm = tmp_path / "onet_saved_model"
    onet.export(str(sm), verbose=False)
    assert detect_format(sm) == "saved_model"
    graph = load_any(sm)
    assert graph.input_shape == [1, 48, 48, 3]
    _assert_same_as_keras(graph, onet, onet_faces, tmp_path)


def test_saved_model_outputs_flag_selects_and_orders(onet: Any, onet_faces: np.ndarray, tmp_path: Path) -> None:
    sm = tmp_path / "onet_saved_model"
    onet.export(str(sm), verbose=False)
    graph = load_any(sm, outputs=["output_2", "output_1"])
    prob, marks = graph.reference.run(onet_faces[:1])
    _, k_marks, k_prob = _keras_outputs(onet, onet_faces[:1])
    np.testing.assert_allclose(prob, k_prob, atol=1e-5)
    np.testing.assert_allclose(marks, k_marks, atol=1e-5)
    with pytest.raises(FormatError, match="not in signature") as err:
        load_any(sm, outputs=["landmarks"])
    assert "\n" not in err.value.one_line()


def test_keras3_file_converts_to_the_same_outputs(rnet: Any, rnet_faces: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "rnet.keras"
    rnet.save(path)
    assert detect_format(path) == "keras"
    graph = load_any(path)
    assert graph.input_shape == [1, 24, 24, 3]
    _assert_same_as_keras(graph, rnet, rnet_faces, tmp_path)


def test_h5_file_converts_to_the_same_outputs(onet: Any, onet_faces: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "onet.h5"
    onet.save(path)  # Keras' HDF5 format
    assert detect_format(path) == "keras"
    graph = load_any(path, outputs=["fc6-3"])
    (prob,) = graph.reference.run(onet_faces[:1])
    np.testing.assert_allclose(prob, _keras_outputs(onet, onet_faces[:1])[2], atol=1e-5)
    _assert_same_as_keras(load_any(path), onet, onet_faces, tmp_path)


def test_weights_only_h5_is_refused_in_one_line(rnet: Any, tmp_path: Path) -> None:
    path = tmp_path / "rnet.weights.h5"
    rnet.save_weights(path)
    assert detect_format(path) == "keras"  # HDF5 by content; the loader finds no model in it
    with pytest.raises(FormatError) as err:
        load_any(path)
    line = err.value.one_line()
    assert str(path) in line and "\n" not in line


# -- detection ----------------------------------------------------------------------------------


def test_detects_frozen_graph_tfjs_tflite_onnx_and_checkpoint(rnet: Any, data_dir: Path, tmp_path: Path) -> None:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: rnet(x, training=False)).get_concrete_function(tf.TensorSpec([1, 24, 24, 3]))
    pb = tmp_path / "rnet_frozen.pb"
    pb.write_bytes(convert_variables_to_constants_v2(fn).graph.as_graph_def().SerializeToString())
    assert detect_format(pb) == "frozen_pb"
    # Also without the suffix: decided by content.
    shutil.copyfile(pb, tmp_path / "rnet_graph")
    assert detect_format(tmp_path / "rnet_graph") == "frozen_pb"

    (model_json, _) = source_files("mobilefacenet")
    assert detect_format(model_json) == "tfjs"
    (blazeface,) = source_files("blazeface")
    assert detect_format(blazeface) == "tflite"
    assert detect_format(data_dir / "models" / "yunet_s_640_640.onnx") == "onnx"

    ckpt = tmp_path / "ckpt"
    graph = tf.Graph()
    with graph.as_default():
        v = tf.compat.v1.get_variable("w", initializer=np.ones((3,), np.float32))
        saver = tf.compat.v1.train.Saver([v])
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(sess, str(ckpt / "model.ckpt"))
    assert detect_format(Path(prefix + ".meta")) == "tf1_checkpoint"
    assert detect_format(ckpt) == "tf1_checkpoint"


def test_tflite_source_is_used_as_is(tmp_path: Path) -> None:
    (blazeface,) = source_files("blazeface")
    graph = load_any(blazeface)
    assert graph.tflite_file == blazeface
    assert graph.input_shape == [1, 192, 192, 3]
    out = graph.reference.run(np.zeros(graph.input_shape, np.float32))
    assert len(out) == 2
    # A user's .tflite is refused for re-quantisation, never silently copied under another variant's name
    # (the catalogued BlazeFace is re-quantised through its own float rebuild: tests/test_blazeface_int8.py).
    with pytest.raises(FormatError, match="cannot be re-converted") as err:
        graph.make_converter()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("case", ["text_as_pb", "truncated_onnx", "empty_onnx", "junk_tflite", "empty_dir", "plain"])
def test_bad_files_give_one_line_naming_the_file(case: str, data_dir: Path, tmp_path: Path) -> None:
    if case == "text_as_pb":
        path = tmp_path / "model.pb"
        path.write_text("this is a README, not a graph\nsecond line\n")
    elif case == "truncated_onnx":
        data = (data_dir / "models" / "yunet_s_640_640.onnx").read_bytes()
        path = tmp_path / "cut.onnx"
        path.write_bytes(data[: len(data) // 2])
    elif case == "empty_onnx":
        path = tmp_path / "empty.onnx"
        path.write_bytes(b"")
    elif case == "junk_tflite":
        path = tmp_path / "junk.tflite"
        path.write_bytes(b"\x00" * 64)
    elif case == "empty_dir":
        path = tmp_path / "nothing"
        path.mkdir()
    else:
        path = tmp_path / "notes.txt"
        path.write_text("hello")
    with pytest.raises(FormatError) as err:
        load_any(path)
    line = err.value.one_line()
    assert str(path) in line and "\n" not in line


def test_missing_path_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="not found"):
        detect_format(tmp_path / "absent.onnx")


# -- the --source recipe ------------------------------------------------------------------------


def _args(source: Path, **kw: Any) -> argparse.Namespace:
    base = dict(
        source=source,
        name="mynet",
        kind="embedder",
        inputs=None,
        outputs=None,
        input_shape=None,
        template="arcface",
        size=None,
        mean=127.5,
        std=128.0,
        color="RGB",
        variants=None,
        calibration=None,
        data_dir=None,
    )
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture(scope="module")
def facenet_pb() -> Path:
    (pb,) = source_files("facenet")
    return pb


def test_user_recipe_reads_embedder_facts_from_the_model(facenet_pb: Path, face_boxes: list[Any]) -> None:
    recipe = user_recipe(_args(facenet_pb, inputs=["input"], outputs=["embeddings"]))
    assert recipe.kind == "embedder" and recipe.name == "mynet"
    assert recipe.embedding_size == 512
    assert recipe.alignment is not None and recipe.alignment.size == [160, 160]
    assert recipe.alignment.template == "arcface"
    src = recipe.source()
    assert (src.registry, src.package, src.format) == ("file", facenet_pb.name, "frozen_pb")
    assert src.sha256 == sha256_file(facenet_pb)
    crops = [cv2.resize(img[max(y0, 0) : y1, max(x0, 0) : x1], (160, 160)) for img, (x0, y0, x1, y1) in face_boxes]
    samples = recipe.calibration_samples("model", crops, 3)
    assert len(samples) == 3 and samples[0][0].shape == (1, 160, 160, 3)
    emb = recipe.graphs()[0].reference.run(samples[0][0])[0]
    assert emb.shape == (1, 512) and abs(float(np.linalg.norm(emb)) - 1.0) < 1e-3


def test_user_recipe_refuses_bad_options_in_one_line(facenet_pb: Path, tmp_path: Path) -> None:
    bad = [
        _args(facenet_pb, kind="detector"),
        _args(facenet_pb, name=None),
        _args(facenet_pb, name="My Net!"),
        _args(facenet_pb, template="nope"),
        _args(facenet_pb, std=0.0),
        _args(tmp_path / "absent.pb"),
    ]
    for args in bad:
        with pytest.raises(FormatError) as err:
            user_recipe(args)
        assert "\n" not in err.value.one_line()
    wrong_size = user_recipe(_args(facenet_pb, size=[112, 112], inputs=["input"], outputs=["embeddings"]))
    with pytest.raises(FormatError, match="does not match the model input"):
        wrong_size.graphs()


def test_user_recipe_refuses_a_model_with_several_outputs(onet: Any, tmp_path: Path) -> None:
    path = tmp_path / "onet.keras"
    onet.save(path)
    recipe = user_recipe(_args(path))
    with pytest.raises(FormatError, match="--outputs"):
        recipe.graphs()
