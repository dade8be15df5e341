"""MTCNN end to end: the real weights, the real build, both device runtimes, real photos.

The artifact is built once per module through facelite.converter.build (fp32, on the group scenes and a few
single-face photos, to stay quick) and then judged against the PyPI ``mtcnn`` package itself, run
with its defaults, and against the face counts in faces/README.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

from facelite.converter.build import BuildOptions, ModelBuild, ModelReport
from facelite.converter.models.mtcnn import GRAPHS, MTCNNRecipe
from facelite.converter.runtimes import check_legacy
from facelite.errors import FaceliteError, ModelError
from facelite.model.manifest import Manifest
from facelite.model.runtime import TFLiteModel
from facelite.vision.detect import create_detector
from facelite.vision.detect.mtcnn import (
    LANDMARKS,
    MTCNNDetector,
    crop_and_resize,
    pyramid_scales,
    resize_level,
)
from facelite.vision.geometry import BBox, Face
from facelite.vision.imageio import read_image

pytestmark = pytest.mark.slow  # builds MTCNN with TensorFlow and both runtimes (.venv-legacy): not in make test-fast

PEOPLE_PHOTOS = 6  # single-face photos added to the scenes for the build's calibration/verification


@dataclass(frozen=True)
class Built:
    report: ModelReport
    fp32: Path  # the installed fp32 artifact directory


@dataclass(frozen=True)
class SceneResult:
    name: str
    listed: int  # faces a person can see, per faces/README.md
    reference: list[BBox]  # mtcnn package, defaults
    ours: list[Face]


def _by_last_dim(outputs: list[np.ndarray], dims: tuple[int, ...]) -> list[np.ndarray]:
    return [next(o for o in outputs if o.shape[-1] == d) for d in dims]


DIMS = {"pnet": (4, 2), "rnet": (4, 2), "onet": (4, 10, 2)}


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene_paths(faces_dir: Path) -> list[Path]:
    return sorted((faces_dir / "scenes").glob("*.jpg"))


@pytest.fixture(scope="module")
def listed_counts(faces_dir: Path) -> dict[str, int]:
    """Per-scene face counts from faces/README.md ("couple.jpg 2, ...")."""
    text = (faces_dir / "README.md").read_text()
    counts = {name: int(n) for name, n in re.findall(r"([\w-]+\.jpg) (\d+)", text)}
    assert len(counts) >= 5, counts
    return counts


@pytest.fixture(scope="module")
def recipe() -> MTCNNRecipe:
    return MTCNNRecipe()


@pytest.fixture(scope="module")
def built(
    recipe: MTCNNRecipe, scene_paths: list[Path], faces_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Built:
    people = sorted((faces_dir / "people").glob("*/*.jpg"), key=lambda p: (p.stat().st_size, p.name))
    images = [read_image(p) for p in [*scene_paths, *people[:PEOPLE_PHOTOS]]]
    out = tmp_path_factory.mktemp("models")
    report = ModelBuild(recipe, BuildOptions(out, detector_images=images, variants=["fp32"], latency_runs=4)).run()
    return Built(report, out / "mtcnn" / "fp32")


@pytest.fixture(scope="module")
def scenes(built: Built, scene_paths: list[Path], listed_counts: dict[str, int]) -> list[SceneResult]:
    from mtcnn import MTCNN

    package = MTCNN()
    ours = create_detector(built.fp32)
    results = []
    for path in scene_paths:
        image = read_image(path)
        ref = package.detect_faces(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        boxes = [BBox(r["box"][0], r["box"][1], r["box"][0] + r["box"][2], r["box"][1] + r["box"][3]) for r in ref]
        results.append(SceneResult(path.name, listed_counts[path.name], boxes, ours.detect(image)))
    print("\nscene                     README  mtcnn-pkg  facelite-fp32")
    for r in results:
        print(f"{r.name:<26}{r.listed:>6}{len(r.reference):>11}{len(r.ours):>15}")
    return results


# -- the build -----------------------------------------------------------------------------------
def test_build_installs_verified_fp32_artifact(built: Built) -> None:
    (variant,) = built.report.variants
    assert variant.passed, variant.reason
    assert variant.accuracy["recall"] >= 0.95 and variant.accuracy["mean_iou"] >= 0.85
    # Both device runtimes were checked and gated (tflite-runtime 2.14 runs the same graphs).
    assert isinstance(variant.runtimes["tflite-runtime"], dict), variant.runtimes
    assert any(k.startswith("tflite_runtime") for k in variant.gates), variant.gates
    manifest = Manifest.load(built.fp32)
    assert manifest.detector_type == "mtcnn" and sorted(manifest.graphs) == sorted(GRAPHS)
    assert manifest.graphs["pnet"].inputs[0].shape == [1, -1, -1, 3]
    assert manifest.graphs["rnet"].inputs[0].shape == [1, 24, 24, 3]
    assert manifest.graphs["onet"].inputs[0].shape == [1, 48, 48, 3]
    assert manifest.preprocessing.color == "RGB" and manifest.preprocessing.mean == 127.5
    assert manifest.extra["thresholds"] == [0.6, 0.7, 0.7]
    manifest.verify_files(built.fp32)


def test_keras_networks_equal_the_package_networks(recipe: MTCNNRecipe, scene_paths: list[Path]) -> None:
    """Our layer-by-layer rebuild with the real weights computes what the package's own models compute."""
    from mtcnn import MTCNN

    package = {g: s.model for g, s in zip(GRAPHS, MTCNN().stages)}
    det = recipe.detector(recipe.references())
    trace = det.trace(read_image(scene_paths[0]))
    inputs = {
        "pnet": trace.pyramid[len(trace.pyramid) // 2].image,
        "rnet": crop_and_resize(trace.normalized, trace.rnet_candidates.boxes[:64], 24),
        "onet": crop_and_resize(trace.normalized, trace.onet_candidates.boxes, 48),
    }
    for g in GRAPHS:
        ours = recipe.references()[g].run(inputs[g])
        theirs = [np.asarray(o) for o in package[g](inputs[g])]
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_fp32_tflite_matches_keras_and_runs_in_both_runtimes(
    built: Built, recipe: MTCNNRecipe, scene_paths: list[Path]
) -> None:
    """P-Net at several pyramid sizes; R-Net/O-Net on all candidates as one resized batch."""
    det = recipe.detector(recipe.references())
    trace = det.trace(read_image(scene_paths[-1]))
    samples = {
        "pnet": [lvl.image for lvl in trace.pyramid[:3]],
        "rnet": [crop_and_resize(trace.normalized, trace.rnet_candidates.boxes[:40], 24)],
        "onet": [crop_and_resize(trace.normalized, trace.onet_candidates.boxes, 48)],
    }
    for g in GRAPHS:
        path = built.fp32 / f"{g}.tflite"
        model = TFLiteModel(path, runtime="ai-edge-litert")
        expected = []
        for x in samples[g]:
            model.resize_input(x.shape)
            got = model.run(x)
            expected.append(got)
            for a, b in zip(_by_last_dim(got, DIMS[g]), _by_last_dim(recipe.references()[g].run(x), DIMS[g])):
                np.testing.assert_allclose(a, b, atol=1e-4)
            if g != "pnet":  # the batch equals one crop at a time
                single = [model.run(c[None]) if model.resize_input((1, *c.shape)) is None else [] for c in x]
                for k in range(len(got)):
                    np.testing.assert_allclose(got[k], np.concatenate([s[k] for s in single]), atol=1e-6)
                model.resize_input(x.shape)
        agreement = check_legacy(path, samples[g], expected)
        assert agreement.min_cosine >= 0.9999 and agreement.max_abs_diff < 1e-3, (g, agreement)


# -- against the reference package and the README ------------------------------------------------
def test_finds_at_least_the_reference_packages_faces(scenes: list[SceneResult]) -> None:
    for s in scenes:
        assert len(s.ours) >= len(s.reference), (s.name, len(s.ours), len(s.reference))
        # Never more faces than a person can see.
        assert len(s.ours) <= s.listed, (s.name, len(s.ours), s.listed)
    assert sum(len(s.ours) for s in scenes) >= 0.85 * sum(s.listed for s in scenes)


def test_boxes_agree_with_the_reference_package(scenes: list[SceneResult]) -> None:
    ious = []
    for s in scenes:
        for ref in s.reference:
            best = max((f.bbox.iou(ref) for f in s.ours), default=0.0)
            assert best >= 0.85, (s.name, ref, best)
            ious.append(best)
    assert float(np.mean(ious)) >= 0.97, ious


def test_landmarks_are_named_in_image_terms(scenes: list[SceneResult]) -> None:
    for s in scenes:
        for face in s.ours:
            assert set(face.landmarks) == set(LANDMARKS)
            lm = face.landmarks
            # Upright faces: the image-left eye and mouth corner have the smaller x; eyes above the mouth.
            assert lm["left_eye"][0] < lm["right_eye"][0], (s.name, lm)
            assert lm["mouth_left"][0] < lm["mouth_right"][0], (s.name, lm)
            assert max(lm["left_eye"][1], lm["right_eye"][1]) < min(lm["mouth_left"][1], lm["mouth_right"][1])
            box = face.bbox
            assert all(box.x1 - 2 <= x <= box.x2 + 2 and box.y1 - 2 <= y <= box.y2 + 2 for x, y in lm.values())


def test_results_are_sorted_by_score(scenes: list[SceneResult]) -> None:
    for s in scenes:
        scores = [f.score for f in s.ours]
        assert scores == sorted(scores, reverse=True) and all(0.7 < v <= 1.0 for v in scores)


def test_score_threshold_overrides_the_last_stage(built: Built, scene_paths: list[Path]) -> None:
    image = read_image(next(p for p in scene_paths if p.name.startswith("selfie")))
    default = MTCNNDetector.from_model_dir(built.fp32).detect(image)
    strict = MTCNNDetector.from_model_dir(built.fp32, score_threshold=0.99).detect(image)
    assert strict and len(strict) < len(default)  # the selfie has a face cut by the edge, scored below 0.99
    assert all(f.score > 0.99 for f in strict)
    assert {(round(f.bbox.x1), round(f.bbox.y1)) for f in strict} <= {
        (round(f.bbox.x1), round(f.bbox.y1)) for f in default
    }


# -- the package's image arithmetic ----------------------------------------------------------------
def test_pyramid_and_crops_match_the_package(recipe: MTCNNRecipe, scene_paths: list[Path]) -> None:
    from mtcnn.utils.images import build_scale_pyramid

    image = read_image(scene_paths[0])
    det = recipe.detector(recipe.references())
    trace = det.trace(image)
    h, w = image.shape[:2]
    package_scales = build_scale_pyramid(w, h, min_face_size=20, scale_factor=0.709)
    ours = pyramid_scales(h, w, 20, 0.709)
    np.testing.assert_allclose(ours, [s for s in package_scales if int(h * s) >= 12 and int(w * s) >= 12])
    norm = trace.normalized
    expected_norm = (cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) - 127.5) / 128
    np.testing.assert_array_equal(norm, expected_norm)
    for s in ours[:3]:
        theirs = tf.image.resize(norm[None], np.asarray([h, w]) * s, method="area").numpy()[0]
        mine = resize_level(norm, s)
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(mine, theirs, atol=1e-3)
    boxes = np.concatenate(
        [trace.rnet_candidates.boxes, [[-30.0, -20.0, 50.0, 60.0], [w - 40, h - 40, w + 40, h + 40]]]
    )
    theirs = tf.image.crop_and_resize(
        norm[None], boxes[:, [1, 0, 3, 2]] / np.array([h, w, h, w]), np.zeros(len(boxes), np.int32), (24, 24)
    ).numpy()
    np.testing.assert_allclose(crop_and_resize(norm, boxes, 24), theirs, atol=1e-3)


def test_calibration_samples_are_real_pyramid_levels_and_candidates(
    recipe: MTCNNRecipe, scene_paths: list[Path]
) -> None:
    images = [read_image(p) for p in scene_paths[:3]]
    traces = [recipe.detector(recipe.references()).trace(im) for im in images]
    pnet = recipe.calibration_samples("pnet", images, 8)
    levels = [lvl.image for t in traces for lvl in t.pyramid]
    assert len(pnet) == 8 and len({s[0].shape for s in pnet}) > 3
    assert all(any(s[0].shape == lv.shape and np.array_equal(s[0], lv) for lv in levels) for s in pnet)
    for graph, size, attr in (("rnet", 24, "rnet_candidates"), ("onet", 48, "onet_candidates")):
        pool = np.concatenate([crop_and_resize(t.normalized, getattr(t, attr).boxes, size) for t in traces])
        samples = recipe.calibration_samples(graph, images, 20)
        assert len(samples) == min(20, len(pool))
        assert all(s[0].shape == (1, size, size, 3) for s in samples)
        assert all(np.any(np.all(pool == s[0], axis=(1, 2, 3))) for s in samples)
        again = recipe.calibration_samples(graph, images, 20)
        assert all(np.array_equal(a[0], b[0]) for a, b in zip(samples, again))  # deterministic


# -- robustness ------------------------------------------------------------------------------------
def test_never_raises_on_tiny_or_odd_frames(built: Built, scene_paths: list[Path]) -> None:
    det = MTCNNDetector.from_model_dir(built.fp32)
    photo = read_image(scene_paths[0])
    for frame in (
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((5, 5, 3), np.uint8),
        np.zeros((11, 400, 3), np.uint8),
        np.zeros((1, 1000), np.uint8),
        np.full((480, 640, 3), 255, np.uint8),
        np.zeros((48, 48, 5), np.uint8),
        None,
    ):
        assert det.detect(frame) == []  # type: ignore[arg-type]
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA)
    wide = (photo.astype(np.uint16) << 8).astype(np.uint16)
    for frame in (gray, bgra, wide):
        assert len(det.detect(frame)) >= 1


def test_bad_setup_is_one_line_model_error(built: Built, recipe: MTCNNRecipe) -> None:
    manifest = Manifest.load(built.fp32)
    nets = {g: TFLiteModel(built.fp32 / f"{g}.tflite") for g in GRAPHS}
    cases = [
        lambda: MTCNNDetector(manifest, {"pnet": nets["pnet"]}),
        lambda: MTCNNDetector(manifest, nets, min_face=4),
        lambda: MTCNNDetector(manifest, nets, score_threshold=1.5),
        lambda: MTCNNDetector(Manifest.from_dict({**manifest.to_dict(), "extra": {"thresholds": [0.6]}}), nets),
        lambda: MTCNNDetector(Manifest.from_dict({**manifest.to_dict(), "extra": {"scale_factor": 1.2}}), nets),
        lambda: MTCNNDetector(Manifest.from_dict({**manifest.to_dict(), "extra": {"anchors": []}}), nets),
    ]
    for make in cases:
        with pytest.raises(ModelError) as exc:
            make()
        assert "\n" not in str(exc.value) and "mtcnn" in str(exc.value).lower()


def test_from_model_dir_refuses_another_detector_type(built: Built, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "fp32"
    shutil.copytree(built.fp32, copy)
    data = Manifest.load(copy).to_dict()
    data["detector_type"] = "blazeface"
    Manifest.from_dict(data).save(copy)
    with pytest.raises(FaceliteError) as exc:
        MTCNNDetector.from_model_dir(copy)
    assert "not mtcnn" in str(exc.value)
