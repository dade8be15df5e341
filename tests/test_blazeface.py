"""BlazeFace on the real shipped .tflite files and the real photos of the data directory."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from facelite.converter.models.blazeface import BlazeFaceRecipe
from facelite.errors import ModelError
from facelite.model.manifest import GraphSpec, Manifest, TensorSpec, sha256_file
from facelite.model.runtime import TFLiteModel
from facelite.tools.dataset import people_tree
from facelite.vision.detect import create_detector
from facelite.vision.detect.blazeface import (
    LARGE_FACE_ZOOM_OUT,
    BlazeFaceDetector,
    RawDetections,
    letterbox,
    ssd_anchors,
    weighted_nms,
)
from facelite.vision.geometry import BBox, Face
from facelite.vision.imageio import read_image

pytestmark = pytest.mark.slow  # the real detector over every photo of the data directory (~20 s): not test-fast

# Image-terms mirror of each landmark: flipping the image swaps left and right.
MIRROR = {
    "left_eye": "right_eye",
    "right_eye": "left_eye",
    "left_ear": "right_ear",
    "right_ear": "left_ear",
    "nose": "nose",
    "mouth_center": "mouth_center",
}
CORE = ("left_eye", "right_eye", "nose", "mouth_center")

# Scenes where a person sees faces the full-range model does not report at its MediaPipe threshold
# (0.6): the child in obama_and_biden (small, looking down; scores 0.34) and, in the selfie, the
# faces cut by the frame edge (three of the seven, scoring below 0.15).
KNOWN_SHORTFALL = {"obama_and_biden.jpg": 1, "selfie-many-people.jpg": 3}


# -- helpers ------------------------------------------------------------------------------------
def write_model_dir(recipe: BlazeFaceRecipe, directory: Path, extra: dict | None = None) -> Path:
    """A model dir the way the build lays it out: the shipped files plus a manifest built by hand."""
    directory.mkdir(parents=True, exist_ok=True)

    def spec(port, shape) -> TensorSpec:
        return TensorSpec(port.name, list(shape), np.dtype(port.dtype).name)

    graphs = {}
    for source in recipe.graphs():
        dst = directory / f"{source.name}.tflite"
        shutil.copyfile(source.tflite_file, dst)
        model = TFLiteModel(dst)
        graphs[source.name] = GraphSpec(
            file=dst.name,
            sha256=sha256_file(dst),
            size_bytes=dst.stat().st_size,
            inputs=[spec(model.inputs[0], model.input_shape())],
            outputs=[spec(p, s) for p, s in zip(model.outputs, model.output_shapes())],
            ops=model.op_names(),
        )
    manifest = Manifest(
        name=recipe.name,
        kind="detector",
        variant="fp32",
        graphs=graphs,
        source=recipe.source(),
        preprocessing=recipe.preprocessing,
        detector_type="blazeface",
        extra=recipe.extra if extra is None else extra,
    )
    manifest.save(directory)
    return directory


def people_photos(faces_dir: Path) -> list[Path]:
    return [p for photos in people_tree(faces_dir / "people").values() for p in photos]


def readme_scene_counts(faces_dir: Path) -> dict[str, int]:
    """Faces per scene as listed in faces/README.md ('couple.jpg 2, ...')."""
    text = (faces_dir / "README.md").read_text()
    section = text[text.index("`scenes/`") :].split("\n- ", 1)[0]
    counts = {name: int(n) for name, n in re.findall(r"([\w.-]+\.jpg) (\d+)", section)}
    assert counts, "faces/README.md lists no scene counts"
    return counts


def eye_angle(face: Face) -> float:
    (lx, ly), (rx, ry) = face.landmarks["left_eye"], face.landmarks["right_eye"]
    return math.degrees(math.atan2(ry - ly, rx - lx))


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_dir(BlazeFaceRecipe("full"), tmp_path_factory.mktemp("blazeface-full"))


@pytest.fixture(scope="module")
def short_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_dir(BlazeFaceRecipe("short"), tmp_path_factory.mktemp("blazeface-short"))


@pytest.fixture(scope="module")
def full(full_dir: Path) -> BlazeFaceDetector:
    return BlazeFaceDetector.from_model_dir(full_dir)


@pytest.fixture(scope="module")
def people_faces(full: BlazeFaceDetector, faces_dir: Path) -> dict[Path, list[Face]]:
    """Full-range detections of every people photo, computed once for the tests that only read them."""
    return {p: full.detect(read_image(p)) for p in people_photos(faces_dir)}


# -- model settings -----------------------------------------------------------------------------
@pytest.mark.parametrize("range_", ["full", "short"])
def test_anchor_options_give_one_anchor_per_model_output_row(range_: str) -> None:
    recipe = BlazeFaceRecipe(range_)  # type: ignore[arg-type]
    det = recipe.detector({"model": recipe.graphs()[0].reference})
    anchors = ssd_anchors(det.config.anchors)
    rows = {shape[1] for shape in TFLiteModel(recipe.tflite_file()).output_shapes()}
    assert rows == {len(anchors)}
    assert ((anchors[:, :2] > 0) & (anchors[:, :2] < 1)).all()
    # Extra is what travels in manifest.json: it must survive JSON unchanged.
    assert json.loads(json.dumps(recipe.extra)) == recipe.extra


def test_recipe_exposes_the_shipped_file_and_its_float_rebuild() -> None:
    recipe = BlazeFaceRecipe("full")
    assert (recipe.kind, recipe.detector_type, tuple(recipe.default_variants)) == (
        "detector",
        "blazeface",
        ("fp32", "fp16-arith"),
    )
    graphs = recipe.graphs()
    # The full-range model, and the short-range one for the second look at frames without faces.
    assert [g.name for g in graphs] == ["model", "retry"]
    assert [g.tflite_file for g in graphs] == [recipe.tflite_file(), BlazeFaceRecipe("short").tflite_file()]
    assert [g.name for g in BlazeFaceRecipe("short").graphs()] == ["model"]
    # Integer variants quantise the full-range model and carry the retry graph as shipped.
    assert [bool(g.float_variants) for g in graphs] == [False, True]
    assert {"int8", "fp16"} <= graphs[1].float_variants and "fp32" not in graphs[1].float_variants
    for graph in graphs:
        assert graph.tflite_file is not None and graph.tflite_file.is_file()
        assert graph.input_shape == list(TFLiteModel(graph.tflite_file).input_shape())
    # The converter works on the graph rebuilt from the file's own weights (tests/test_blazeface_int8.py).
    import tensorflow as tf

    assert isinstance(graphs[0].make_converter(), tf.lite.TFLiteConverter)
    samples = recipe.calibration_samples("retry", [np.zeros((50, 80, 3), np.uint8)], 1)
    assert samples[0][0].shape == (1, 128, 128, 3)


def test_calibration_samples_are_letterboxed_inputs_in_model_range(faces_dir: Path) -> None:
    recipe = BlazeFaceRecipe("full")
    photos = people_photos(faces_dir)[:3]
    samples = recipe.calibration_samples("model", [read_image(p) for p in photos], count=2)
    assert len(samples) == 2
    for (x,) in samples:
        assert x.shape == tuple(recipe.input_shape) and x.dtype == np.float32
        assert -1.0 <= x.min() and x.max() <= 1.0


def test_manifest_extra_errors_name_the_key(full_dir: Path, tmp_path: Path) -> None:
    recipe = BlazeFaceRecipe("full")
    extra = json.loads(json.dumps(recipe.extra))
    del extra["anchors"]["strides"]
    bad = write_model_dir(recipe, tmp_path / "bad", extra)
    with pytest.raises(ModelError, match=r"extra\.anchors .*strides") as err:
        BlazeFaceDetector.from_model_dir(bad)
    assert "\n" not in str(err.value)

    extra = json.loads(json.dumps(recipe.extra))
    extra["decoder"]["num_boxes"] = 896
    with pytest.raises(ModelError, match="2304 anchors, decoder expects 896"):
        BlazeFaceDetector.from_model_dir(write_model_dir(recipe, tmp_path / "bad2", extra))


def test_create_detector_loads_blazeface_from_its_manifest(full_dir: Path) -> None:
    det = create_detector(full_dir, min_face=30, score_threshold=0.7)
    assert isinstance(det, BlazeFaceDetector)
    assert (det.min_face, det.score_threshold, det.input_size) == (30, 0.7, (192, 192))


# -- real photos --------------------------------------------------------------------------------
def test_full_range_finds_the_one_face_in_every_people_photo(people_faces: dict[Path, list[Face]]) -> None:
    assert len(people_faces) >= 80
    misses = [p.name for p, faces in people_faces.items() if not faces]
    extras = {p.name: len(faces) for p, faces in people_faces.items() if len(faces) > 1}
    assert misses == [], f"no face found in {misses}"
    assert extras == {}, f"more than one face in {extras}"


def test_keypoints_fall_inside_their_boxes_and_are_ordered(
    people_faces: dict[Path, list[Face]], full: BlazeFaceDetector
) -> None:
    for path, faces in people_faces.items():
        (face,) = faces
        b = face.bbox
        assert full.score_threshold <= face.score <= 1.0
        assert set(face.landmarks) == set(MIRROR)
        for name in CORE:
            x, y = face.landmarks[name]
            assert b.x1 <= x <= b.x2 and b.y1 <= y <= b.y2, f"{path.name}: {name} ({x:.0f},{y:.0f}) outside {b}"
        lm = face.landmarks
        assert lm["left_eye"][0] < lm["right_eye"][0], path.name
        assert lm["left_ear"][0] < lm["right_ear"][0], path.name
        eyes_y = (lm["left_eye"][1] + lm["right_eye"][1]) / 2
        assert eyes_y < lm["nose"][1] < lm["mouth_center"][1], path.name


def test_mirrored_image_gives_mirrored_box_and_landmarks(
    people_faces: dict[Path, list[Face]], full: BlazeFaceDetector
) -> None:
    errors = []
    for path, faces in people_faces.items():
        image = read_image(path)
        width = image.shape[1]
        (face,), flipped = faces, full.detect(cv2.flip(image, 1))
        assert len(flipped) == 1, path.name
        other = flipped[0]
        size = face.bbox.width
        assert abs((width - face.bbox.x2) - other.bbox.x1) < 0.15 * size, path.name
        assert abs(face.bbox.y1 - other.bbox.y1) < 0.15 * size, path.name
        for name, (x, y) in face.landmarks.items():
            mx, my = other.landmarks[MIRROR[name]]
            err = math.hypot(width - x - mx, y - my) / size
            assert err < 0.15, f"{path.name}: {name} moved {err:.2f} box widths under mirroring"
            errors.append(err)
    assert float(np.median(errors)) < 0.05


def test_rolled_face_rolls_the_eye_line(faces_dir: Path, full: BlazeFaceDetector) -> None:
    photos = [ps[0] for ps in people_tree(faces_dir / "people").values()]
    found, tried, residuals = 0, 0, []
    for path in photos:
        image = read_image(path)
        (face,) = full.detect(image)
        for angle in (20.0, -20.0):
            # cv2's positive angle turns the picture counter-clockwise: the eye line's angle in image
            # coordinates (y down) drops by the same amount.
            matrix = cv2.getRotationMatrix2D(face.bbox.center, angle, 1.0)
            rolled = full.detect(cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0])))
            tried += 1
            if rolled:
                found += 1
                residuals.append(abs(eye_angle(rolled[0]) - (eye_angle(face) - angle)))
    assert found >= 0.95 * tried
    assert max(residuals) < 15.0 and float(np.median(residuals)) < 5.0


def test_scenes_have_the_faces_listed_in_the_readme(full: BlazeFaceDetector, faces_dir: Path) -> None:
    listed = readme_scene_counts(faces_dir)
    found = {name: len(full.detect(read_image(faces_dir / "scenes" / name))) for name in listed}
    print("BlazeFace full range faces per scene (found/listed):", {n: f"{found[n]}/{listed[n]}" for n in listed})
    for name, count in listed.items():
        assert found[name] <= count, f"{name}: {found[name]} faces, a person sees {count}"
        assert found[name] >= count - KNOWN_SHORTFALL.get(name, 0), f"{name}: {found[name]} of {count} faces"


def test_the_child_in_obama_and_biden_is_found_below_the_default_threshold(full_dir: Path, faces_dir: Path) -> None:
    image = read_image(faces_dir / "scenes" / "obama_and_biden.jpg")
    height, width = image.shape[:2]
    lenient = BlazeFaceDetector.from_model_dir(full_dir, score_threshold=0.3)
    faces = lenient.detect(image)
    bottom_right = [f for f in faces if f.bbox.center[0] > 0.75 * width and f.bbox.center[1] > 0.6 * height]
    assert len(bottom_right) == 1, [(round(f.score, 2), f.bbox) for f in faces]
    assert len(faces) == 3
    assert bottom_right[0].score < lenient.config.decoder.min_score_thresh  # why the default run misses it


def test_short_range_agrees_with_full_range_on_people_photos(
    short_dir: Path, people_faces: dict[Path, list[Face]]
) -> None:
    short = BlazeFaceDetector.from_model_dir(short_dir)
    assert short.input_size == (128, 128)
    for path, (face,) in people_faces.items():
        faces = short.detect(read_image(path))
        assert faces, f"short range found no face in {path.name}"
        assert faces[0].bbox.iou(face.bbox) > 0.5, path.name


def test_colour_order_matches_the_model(people_faces: dict[Path, list[Face]], full_dir: Path) -> None:
    """The manifest's RGB input scores the people faces higher than the same pixels as BGR would."""
    full = BlazeFaceDetector.from_model_dir(full_dir, score_threshold=0.05)
    as_rgb, as_bgr = [], []
    for path in list(people_faces)[::4]:
        image = read_image(path)
        as_rgb.append(full.detect(image)[0].score)
        swapped = full.detect(image[:, :, ::-1].copy())  # BGR pixels fed where RGB is expected
        as_bgr.append(swapped[0].score if swapped else 0.0)
    assert np.mean(as_rgb) > np.mean(as_bgr)


# -- robustness ---------------------------------------------------------------------------------
def test_odd_frames_give_a_list_never_an_exception(full: BlazeFaceDetector, faces_dir: Path) -> None:
    photo = read_image(people_photos(faces_dir)[0])
    frames = [
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((0, 17, 3), np.uint8),
        np.zeros((1, 1, 3), np.uint8),
        np.zeros((3, 500, 3), np.uint8),
        cv2.resize(photo, (12, 9), interpolation=cv2.INTER_AREA),
        cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY),
        cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA),
        photo.astype(np.uint16) * 257,
        np.zeros((4, 4, 2), np.uint8),
        None,
    ]
    for frame in frames:
        assert isinstance(full.detect(frame), list)  # type: ignore[arg-type]
    # Grey and BGRA copies still hold the face.
    assert len(full.detect(frames[5])) == 1 and len(full.detect(frames[6])) == 1


def test_min_face_drops_faces_smaller_than_it(full_dir: Path, faces_dir: Path) -> None:
    image = read_image(faces_dir / "scenes" / "multiface.jpg")
    every = BlazeFaceDetector.from_model_dir(full_dir, min_face=0).detect(image)
    cutoff = sorted(min(f.bbox.width, f.bbox.height) for f in every)[len(every) // 2]
    some = BlazeFaceDetector.from_model_dir(full_dir, min_face=math.ceil(cutoff)).detect(image)
    assert 0 < len(some) < len(every)
    assert all(min(f.bbox.width, f.bbox.height) >= cutoff for f in some)
    assert [f.score for f in some] == sorted((f.score for f in some), reverse=True)


def test_weighted_nms_blends_a_cluster_and_keeps_its_best_score() -> None:
    boxes = np.array([[0.10, 0.10, 0.30, 0.30], [0.12, 0.12, 0.32, 0.32], [0.60, 0.60, 0.80, 0.80]], np.float32)
    keypoints = boxes[:, None, :2].repeat(2, axis=1)
    scores = np.array([0.9, 0.6, 0.7], np.float32)
    out = weighted_nms(RawDetections(boxes, keypoints, scores), threshold=0.3)
    assert out.scores.tolist() == pytest.approx([0.9, 0.7])
    blended = (boxes[0] * 0.9 + boxes[1] * 0.6) / 1.5
    np.testing.assert_allclose(out.boxes[0], blended, rtol=1e-5)
    np.testing.assert_allclose(out.keypoints[0, 0], blended[:2], rtol=1e-5)
    np.testing.assert_allclose(out.boxes[1], boxes[2])


# -- faces that fill the frame (issue 10, item 5) -------------------------------------------------
def test_zoomed_out_letterbox_maps_input_points_back_to_the_image() -> None:
    image = np.zeros((100, 60, 3), np.uint8)
    for zoom in (1.0, 3.0):
        canvas, box = letterbox(image, (192, 192), zoom)
        assert canvas.shape == (192, 192, 3)
        # Where the image's corners landed in the input, normalised to 0..1, maps back to its corners.
        corners = np.array([[box.pad_x, box.pad_y], [box.pad_x + 60 * box.scale_x, box.pad_y + 100 * box.scale_y]])
        np.testing.assert_allclose(box.to_image(corners / 192.0), [[0, 0], [60, 100]], atol=1e-4)
    assert letterbox(image, (192, 192), 3.0)[1].scale_y == pytest.approx(192 / 100 / 3, rel=0.01)
    with pytest.raises(ValueError):
        letterbox(image, (192, 192), 0.5)


def test_a_face_filling_the_photo_is_found_by_the_retry_in_the_photos_own_pixels(
    full: BlazeFaceDetector, people_faces: dict[Path, list[Face]]
) -> None:
    """Crop each people photo tightly around its face (a headshot): the single pass mostly finds nothing, the
    detector's retry zoomed out finds the face, and its box maps back onto the face found in the whole photo."""
    retried = 0
    for path, (face,) in list(people_faces.items())[::3]:
        image = read_image(path)
        side = int(max(face.bbox.width, face.bbox.height) * 1.1)
        cx, cy = face.bbox.center
        x0, y0 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
        crop = image[y0 : y0 + side, x0 : x0 + side]
        k = 100 / crop.shape[1]
        small = cv2.resize(crop, (100, round(crop.shape[0] * k)), interpolation=cv2.INTER_AREA)
        if full.detect_once(small):
            continue
        retried += 1
        found = full.detect(small)
        assert found, path.name
        back = found[0].scaled(1 / k)
        moved = BBox(back.bbox.x1 + x0, back.bbox.y1 + y0, back.bbox.x2 + x0, back.bbox.y2 + y0)
        assert moved.iou(face.bbox) > 0.5, path.name
        (ex, ey), (fx, fy) = back.landmarks["left_eye"], face.landmarks["left_eye"]
        assert abs(ex + x0 - fx) < 0.1 * side and abs(ey + y0 - fy) < 0.1 * side, path.name
    assert retried >= 5  # the single pass must miss enough of them for this to test the retry


def test_the_full_range_artifact_retries_through_its_short_range_graph(
    full: BlazeFaceDetector, full_dir: Path, tmp_path: Path
) -> None:
    detector, zoom_out = full.retry  # type: ignore[misc]
    assert detector.input_size == (128, 128) and zoom_out == 2.5
    assert (detector.min_face, detector.score_threshold) == (full.min_face, full.score_threshold)
    strict = BlazeFaceDetector.from_model_dir(full_dir, min_face=33, score_threshold=0.7)
    assert (strict.retry[0].min_face, strict.retry[0].score_threshold) == (33, 0.7)  # type: ignore[index]
    assert BlazeFaceDetector.from_model_dir(full_dir, retry=False).retry is None

    # An artifact built before the retry graph existed (no extra.retry) takes its second look with its own model.
    recipe = BlazeFaceRecipe("full")
    extra = json.loads(json.dumps(recipe.extra))
    del extra["retry"]
    old = BlazeFaceDetector.from_model_dir(write_model_dir(recipe, tmp_path / "old", extra))
    assert old.retry == (old, LARGE_FACE_ZOOM_OUT)

    extra = json.loads(json.dumps(recipe.extra))
    extra["retry"]["zoom_out"] = 0.5
    with pytest.raises(ModelError, match=r"extra\.retry\.zoom_out"):
        BlazeFaceDetector.from_model_dir(write_model_dir(recipe, tmp_path / "bad", extra))
