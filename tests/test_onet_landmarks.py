"""O-Net landmarks on another detector's boxes (facelite.vision.detect.onet_landmarks).

The fast tests drive the stage with a scripted O-Net, so the arithmetic (pixels from fractions, the
re-centred second pass, boxes and scores kept) is checked exactly; the slow ones run the converted
BlazeFace and MTCNN on the sample photos and the agent with ``[models] landmarks`` set.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from facelite.errors import ModelError
from facelite.model.manifest import Preprocessing
from facelite.vision.detect import create_detector, detection_key, pipeline_label
from facelite.vision.detect.mtcnn import LANDMARKS
from facelite.vision.detect.onet_landmarks import OnetLandmarks, landmarks_in_box
from facelite.vision.geometry import BBox, Face


class ScriptedOnet:
    """Returns the same outputs for every crop and records the crops it was given."""

    def __init__(self, reg: tuple[float, ...], fractions: tuple[float, ...]) -> None:
        self.reg = np.array([reg], np.float32)
        self.fractions = np.array([fractions], np.float32)
        self.crops: list[np.ndarray] = []

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        self.crops.append(x)
        # Converted graphs do not keep the Keras output order: the stage must pick outputs by size.
        return [np.array([[0.1, 0.9]], np.float32), self.fractions, self.reg]


class FixedDetector:
    def __init__(self, faces: list[Face]) -> None:
        self.faces = faces
        self.manifest = SimpleNamespace(name="blazeface", variant="fp32", sha256="b" * 64)
        self.pipeline = "blazeface"

    def detect(self, image: np.ndarray) -> list[Face]:
        return list(self.faces)


def onet_manifest(detector_type: str = "mtcnn") -> SimpleNamespace:
    return SimpleNamespace(
        name="mtcnn", variant="fp32", sha256="m" * 64, detector_type=detector_type, preprocessing=Preprocessing()
    )


FRACTIONS = (0.3, 0.7, 0.5, 0.35, 0.65, 0.4, 0.4, 0.6, 0.8, 0.8)  # x1..x5 then y1..y5 of the O-Net box
IMAGE = np.full((200, 200, 3), 128, np.uint8)


def test_landmarks_are_fractions_of_the_onet_box_as_the_mtcnn_package_computes_them() -> None:
    # A 48x48 box from (10, 20): the package adds one pixel to the size and subtracts one from the origin.
    boxes = np.array([[10.0, 20.0, 57.0, 67.0]])
    points = landmarks_in_box(boxes, np.array([FRACTIONS]))
    assert points.shape == (1, 5, 2)
    assert points[0, 0].tolist() == pytest.approx([48 * 0.3 + 9, 48 * 0.4 + 19])
    assert points[0, 4].tolist() == pytest.approx([48 * 0.65 + 9, 48 * 0.8 + 19])


def test_one_pass_places_onet_points_on_the_squared_detector_box_and_keeps_box_and_score() -> None:
    face = Face(BBox(50.0, 40.0, 90.0, 100.0), 0.93, {"left_eye": (60.0, 60.0), "mouth_center": (70.0, 90.0)})
    onet = ScriptedOnet((0.0, 0.0, 0.0, 0.0), FRACTIONS)
    refined = OnetLandmarks(FixedDetector([face]), onet_manifest(), onet, passes=1)  # type: ignore[arg-type]
    (out,) = refined.detect(IMAGE)
    assert out.bbox == face.bbox and out.score == face.score
    assert set(out.landmarks) == set(LANDMARKS)
    # The 40x60 box squared around its centre: (40, 40) to (100, 100), side 60 (+1 in the package's sizes).
    x0, y0, side = 40.0, 40.0, 61.0
    for k, name in enumerate(LANDMARKS):
        assert out.landmarks[name] == pytest.approx((side * FRACTIONS[k] + x0 - 1, side * FRACTIONS[5 + k] + y0 - 1))
    assert len(onet.crops) == 1 and onet.crops[0].shape == (1, 48, 48, 3)


def test_second_pass_runs_on_the_box_onet_regressed() -> None:
    face = Face(BBox(40.0, 40.0, 100.0, 100.0), 0.9, {})
    # O-Net says its face sits 10% of the box further right: the second crop moves there, and the
    # landmarks are read from that crop.
    onet = ScriptedOnet((0.1, 0.0, 0.1, 0.0), FRACTIONS)
    (one,) = OnetLandmarks(FixedDetector([face]), onet_manifest(), onet, passes=1).detect(IMAGE)  # type: ignore[arg-type]
    (two,) = OnetLandmarks(FixedDetector([face]), onet_manifest(), onet, passes=2).detect(IMAGE)  # type: ignore[arg-type]
    assert len(onet.crops) == 3  # one crop for the first detector, two passes for the second
    shift = 0.1 * 61.0
    for name in LANDMARKS:
        assert two.landmarks[name][0] == pytest.approx(one.landmarks[name][0] + shift)
        assert two.landmarks[name][1] == pytest.approx(one.landmarks[name][1])


def test_every_face_of_a_frame_gets_its_own_points_and_no_face_runs_nothing() -> None:
    faces = [Face(BBox(10.0, 10.0, 50.0, 50.0), 0.9, {}), Face(BBox(120.0, 60.0, 180.0, 120.0), 0.8, {})]
    onet = ScriptedOnet((0.0, 0.0, 0.0, 0.0), FRACTIONS)
    out = OnetLandmarks(FixedDetector(faces), onet_manifest(), onet, passes=1).detect(IMAGE)  # type: ignore[arg-type]
    assert [f.bbox for f in out] == [f.bbox for f in faces]
    assert out[0].landmarks["nose"] != out[1].landmarks["nose"]
    onet.crops.clear()
    assert OnetLandmarks(FixedDetector([]), onet_manifest(), onet).detect(IMAGE) == []  # type: ignore[arg-type]
    assert onet.crops == []


def test_misuse_is_refused_with_the_reason() -> None:
    onet = ScriptedOnet((0.0, 0.0, 0.0, 0.0), FRACTIONS)
    with pytest.raises(ValueError, match=r"passes must be 1\.\.4"):
        OnetLandmarks(FixedDetector([]), onet_manifest(), onet, passes=0)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="O-Net landmarks need mtcnn"):
        OnetLandmarks(FixedDetector([]), onet_manifest("blazeface"), onet)  # type: ignore[arg-type]
    bad = ScriptedOnet((0.0, 0.0, 0.0, 0.0), FRACTIONS[:6])
    face = Face(BBox(10.0, 10.0, 50.0, 50.0), 0.9, {})
    with pytest.raises(ModelError, match="O-Net outputs have sizes"):
        OnetLandmarks(FixedDetector([face]), onet_manifest(), bad).detect(IMAGE)  # type: ignore[arg-type]


def test_the_pipeline_has_its_own_name_label_and_cache_key() -> None:
    base = FixedDetector([])
    onet = ScriptedOnet((0.0, 0.0, 0.0, 0.0), FRACTIONS)
    refined = OnetLandmarks(base, onet_manifest(), onet)  # type: ignore[arg-type]
    assert refined.pipeline == "blazeface+onet"
    assert pipeline_label(base) == "blazeface/fp32"  # type: ignore[arg-type]
    assert pipeline_label(refined) == "blazeface/fp32+onet"
    assert detection_key(refined) != detection_key(base)  # type: ignore[arg-type]
    once_more = OnetLandmarks(base, onet_manifest(), onet, passes=1)  # type: ignore[arg-type]
    assert detection_key(once_more) != detection_key(refined)


# -- the converted models --------------------------------------------------------------------------------------
def _eye_error(face: Face, reference: Face) -> float:
    """Mean distance of the two eyes to the reference's, in units of the reference's eye distance."""
    ref = np.array([reference.landmarks["left_eye"], reference.landmarks["right_eye"]])
    got = np.array([face.landmarks["left_eye"], face.landmarks["right_eye"]])
    return float(np.linalg.norm(got - ref, axis=1).mean() / np.linalg.norm(ref[0] - ref[1]))


@pytest.mark.slow
def test_onet_on_blazeface_boxes_lands_where_the_full_mtcnn_cascade_puts_the_points(
    models_dir: Path, faces_dir: Path
) -> None:
    from facelite.vision.imageio import read_image

    blazeface = create_detector(models_dir / "blazeface" / "fp32")
    mtcnn = create_detector(models_dir / "mtcnn" / "fp32")
    refined = OnetLandmarks.from_model_dirs(blazeface, models_dir / "mtcnn" / "fp32")
    photos = sorted((faces_dir / "people").rglob("*.jpg"))
    assert len(photos) >= 60
    ours, theirs = [], []
    for photo in photos:
        image = read_image(photo)
        a, m = refined.detect(image), mtcnn.detect(image)
        if not a or not m:
            continue
        face, ref = max(a, key=lambda f: f.bbox.area), max(m, key=lambda f: f.bbox.area)
        if face.bbox.iou(ref.bbox) < 0.5:
            continue
        assert set(face.landmarks) == set(LANDMARKS)
        ours.append(_eye_error(face, ref))
        base = max(blazeface.detect(image), key=lambda f: f.bbox.area)
        theirs.append(_eye_error(base, ref))
    assert len(ours) >= 50
    # O-Net from BlazeFace's box agrees with O-Net from R-Net's box to a few percent of the eye distance,
    # closer than BlazeFace's own eye points are.
    assert float(np.median(ours)) < 0.05
    assert float(np.median(ours)) < float(np.median(theirs))


def _agent_config(path: Path, models_dir: Path, landmarks: Path | None) -> Path:
    path.write_text(
        'device_id = "door"\n[[cameras]]\nname = "door"\nsource = 0\n'
        f'[models]\ndetector = "{models_dir / "blazeface" / "fp32"}"\n'
        f'embedder = "{models_dir / "mobilefacenet" / "fp32"}"\n'
        + (f'landmarks = "{landmarks}"\n' if landmarks else "")
    )
    return path


@pytest.mark.slow
def test_agent_config_landmarks_runs_the_pipeline_and_takes_its_own_calibration(
    models_dir: Path, tmp_path: Path
) -> None:
    from facelite.service.app import load_models, open_set_threshold
    from facelite.service.config import load_config

    config = load_config(_agent_config(tmp_path / "onet.toml", models_dir, models_dir / "mtcnn" / "fp32"))
    models = load_models(config)
    assert isinstance(models.detector, OnetLandmarks) and models.detector.pipeline == "blazeface+onet"
    resolved = open_set_threshold(config, models, templates=10)
    cal = models.embedder.manifest.calibration["blazeface+onet"]
    assert "onet" in cal.detector and cal.detector in resolved.source
    plain = load_config(_agent_config(tmp_path / "plain.toml", models_dir, None))
    plain_models = load_models(plain)
    assert plain_models.detector.pipeline == "blazeface"
    assert open_set_threshold(plain, plain_models, templates=10).threshold != resolved.threshold
    # A landmarks folder that holds another detector is refused when the models load.
    wrong = load_config(_agent_config(tmp_path / "wrong.toml", models_dir, models_dir / "blazeface" / "fp32"))
    with pytest.raises(ModelError, match="not mtcnn"):
        load_models(wrong)


def test_crops_from_the_face_region_equal_crop_and_resize_of_the_whole_normalised_frame() -> None:
    from facelite.vision.detect.mtcnn import crop_and_resize, normalize
    from facelite.vision.detect.onet_landmarks import onet_crops

    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (123, 171, 3), dtype=np.uint8)
    pre = Preprocessing()
    boxes = np.array(
        [
            [20.3, 15.7, 80.9, 76.3],  # inside
            [-30.0, -12.5, 40.0, 57.5],  # over the top-left corner
            [140.0, 100.0, 200.0, 160.0],  # over the bottom-right corner
            [0.0, 0.0, 170.0, 122.0],  # the whole frame
            [169.6, 60.0, 170.4, 60.8],  # under a pixel, at the right edge
            [300.0, 10.0, 360.0, 70.0],  # wholly outside
        ]
    )
    ours = onet_crops(image, boxes, pre)
    full = crop_and_resize(normalize(image, pre), boxes, 48)
    assert ours.shape == full.shape == (6, 48, 48, 3)
    np.testing.assert_allclose(ours, full, atol=1e-4)
    assert not ours[5].any()


def test_a_one_pixel_high_frame_gives_a_blank_crop_not_an_error() -> None:
    from facelite.vision.detect.onet_landmarks import onet_crops

    crops = onet_crops(np.full((1, 40, 3), 200, np.uint8), np.array([[0.0, 0.0, 10.0, 10.0]]), Preprocessing())
    assert crops.shape == (1, 48, 48, 3) and not crops.any()


@pytest.mark.slow
def test_device_pipelines_are_each_detector_then_blazeface_with_onet_when_mtcnn_is_built(models_dir: Path) -> None:
    from facelite.vision.detect import device_pipelines

    both = {"blazeface": models_dir / "blazeface" / "fp32", "mtcnn": models_dir / "mtcnn" / "fp32"}
    pipelines = device_pipelines(both)
    assert [p.pipeline for p in pipelines] == ["blazeface", "mtcnn", "blazeface+onet"]
    refined = pipelines[2]
    assert isinstance(refined, OnetLandmarks) and refined.base is pipelines[0]
    assert refined.onet_manifest.name == "mtcnn"
    assert [p.pipeline for p in device_pipelines({"blazeface": both["blazeface"]})] == ["blazeface"]
    assert [p.pipeline for p in device_pipelines({"mtcnn": both["mtcnn"]})] == ["mtcnn"]


@pytest.mark.slow
def test_eval_refuses_a_pipeline_the_models_folder_cannot_make_and_names_the_ones_it_can(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import shutil

    from facelite.cli import main

    only = tmp_path / "models"
    only.mkdir()
    shutil.copytree(models_dir / "blazeface", only / "blazeface")
    index = json.loads((models_dir / "index.json").read_text())
    index["models"] = {k: v for k, v in index["models"].items() if k == "blazeface"}
    (only / "index.json").write_text(json.dumps(index))
    assert main(["eval", str(tmp_path), "--models", str(only), "--detector-model", "blazeface+onet"]) != 0
    err = capsys.readouterr().err
    assert "no built detector pipeline 'blazeface+onet'" in err and "built: blazeface;" in err
