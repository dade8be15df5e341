"""MTCNN int8: mixed precision (R-Net and O-Net full integer, P-Net kept float) passes the detector gates in
both runtimes, where the fully integer cascade does not (docs/experiments/mtcnn_int8.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facelite.converter.build import BuildOptions, ModelBuild, detector_agreement
from facelite.converter.models.mtcnn import MTCNNRecipe
from facelite.converter.runtimes import legacy_python
from facelite.converter.variants import INTEGER_VARIANTS
from facelite.model.manifest import Manifest
from facelite.model.runtime import TFLiteModel
from facelite.vision.detect import create_detector
from facelite.vision.imageio import list_images, read_image

pytestmark = pytest.mark.slow  # an int8 conversion of three graphs and a detector run (~90 s)


@pytest.fixture(scope="module")
def photos(detector_photos: list[np.ndarray]) -> list[np.ndarray]:
    return detector_photos


@pytest.fixture(scope="module")
def recipe() -> MTCNNRecipe:
    return MTCNNRecipe()


@pytest.fixture(scope="module")
def built(recipe: MTCNNRecipe, photos: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    if legacy_python() is None or not legacy_python().exists():  # type: ignore[union-attr]
        pytest.fail("no tflite-runtime 2.14 interpreter (.venv-legacy): run `make setup` (the runtime gate needs it)")
    out = tmp_path_factory.mktemp("models")
    ModelBuild(recipe, BuildOptions(out, detector_images=photos, variants=["int8"])).run()
    return out / recipe.name


def _weights_dtypes(path: Path) -> set[type]:
    model = TFLiteModel(path)
    details = model._interp.get_tensor_details()
    return {d["dtype"] for d in details if len(d["shape"]) == 4 and "conv" in d["name"].lower() and d["shape"][0] > 1}


def test_pnet_alone_stays_float_in_integer_variants(recipe: MTCNNRecipe) -> None:
    graphs = {g.name: g for g in recipe.graphs()}
    assert graphs["pnet"].float_variants == INTEGER_VARIANTS
    assert "int8" in INTEGER_VARIANTS and "fp16" not in INTEGER_VARIANTS
    assert not graphs["rnet"].float_variants and not graphs["onet"].float_variants


def test_mixed_precision_int8_passes_the_gates_in_both_runtimes(built: Path) -> None:
    import json

    report = json.loads((built / "report.json").read_text())
    (int8,) = report["variants"]
    assert int8["passed"], int8["reason"]
    assert int8["accuracy"]["recall"] >= 0.95 and int8["accuracy"]["mean_iou"] >= 0.8
    assert int8["runtimes"]["tflite-runtime"]["min_cosine_to_litert"] >= 0.99
    assert any("pnet kept float" in f for f in int8["flags"])
    manifest = Manifest.load(built / "int8")
    ops = {g: TFLiteModel(built / "int8" / spec.file).op_names() for g, spec in manifest.graphs.items()}
    # R-Net and O-Net run integer kernels between a QUANTIZE and a DEQUANTIZE; P-Net has no integer tensor.
    for g in ("rnet", "onet"):
        assert {"QUANTIZE", "DEQUANTIZE"} <= set(ops[g])
        assert _weights_dtypes(built / "int8" / manifest.graphs[g].file) == {np.int8}
    assert "QUANTIZE" not in ops["pnet"]
    assert _weights_dtypes(built / "int8" / manifest.graphs["pnet"].file) == {np.float32}
    # Every graph keeps float I/O: the agent feeds the same preprocessed floats to each stage.
    assert {t.dtype for spec in manifest.graphs.values() for t in spec.inputs} == {"float32"}


def test_the_agent_loads_the_int8_artifact_and_finds_the_float_cascades_faces_in_group_photos(
    built: Path, recipe: MTCNNRecipe, faces_dir: Path
) -> None:
    detector = create_detector(built / "int8")
    source = recipe.detector({g.name: g.reference for g in recipe.graphs()})
    scenes = [read_image(p) for p in list_images(faces_dir / "scenes")]
    agreement = detector_agreement([source.detect(i) for i in scenes], [detector.detect(i) for i in scenes])
    assert agreement["source_faces"] >= 10
    assert agreement["recall"] >= 0.9 and agreement["mean_iou"] >= 0.8
