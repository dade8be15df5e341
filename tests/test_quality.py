"""The quality gate on real photos, with faces found by the real BlazeFace full-range model."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from facelite.converter.models.blazeface import BlazeFaceRecipe
from facelite.errors import ConfigError
from facelite.tools.dataset import people_tree
from facelite.vision.align import template_points
from facelite.vision.detect.blazeface import BlazeFaceDetector
from facelite.vision.geometry import BBox, Face
from facelite.vision.imageio import read_image
from facelite.vision.quality import DEFAULT_GATE, REASONS, QualityGate, estimate_pose

pytestmark = pytest.mark.slow  # the real detector over every photo of the data directory (~15 s): not test-fast


@pytest.fixture(scope="module")
def detector() -> BlazeFaceDetector:
    recipe = BlazeFaceRecipe("full")
    return recipe.detector({"model": recipe.graphs()[0].reference})


@pytest.fixture(scope="module")
def photos(faces_dir: Path) -> list[Path]:
    return [p for ps in people_tree(faces_dir / "people").values() for p in ps]


@pytest.fixture(scope="module")
def people_faces(detector: BlazeFaceDetector, photos: list[Path]) -> dict[Path, Face]:
    found = {}
    for p in photos:
        faces = detector.detect(read_image(p))
        assert faces, f"BlazeFace found no face in {p.name}"
        found[p] = faces[0]
    return found


def blur_around(image: np.ndarray, face: Face, sigma: float) -> np.ndarray:
    """Gaussian-blur the face and 4 sigma around it. Large sigmas are applied at a reduced scale
    (shrink, blur by sigma/f, enlarge): a Gaussian of sigma 100 on a 12 MP photo takes seconds."""
    h, w = image.shape[:2]
    m = 4 * sigma
    b = face.bbox
    x1, y1 = max(0, int(b.x1 - m)), max(0, int(b.y1 - m))
    x2, y2 = min(w, int(b.x2 + m) + 1), min(h, int(b.y2 + m) + 1)
    roi = image[y1:y2, x1:x2]
    f = max(1.0, sigma / 4)
    small = cv2.resize(roi, None, fx=1 / f, fy=1 / f, interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / f)
    out = image.copy()
    out[y1:y2, x1:x2] = cv2.resize(small, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    return out


def with_landmarks(face: Face, **moved: tuple[float, float]) -> Face:
    return replace(face, landmarks={**face.landmarks, **moved})


# -- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [
        ("min_size", 0),
        ("min_sharpness", -1.0),
        ("max_yaw", 0.0),
        ("max_yaw", 120.0),
        ("max_pitch", float("nan")),
        ("max_pitch", True),
        ("min_size", "40"),
    ],
)
def test_gate_refuses_out_of_range_settings(field: str, value: object) -> None:
    settings = {"min_size": 40, "min_sharpness": 15.0, "max_yaw": 45.0, "max_pitch": 30.0, field: value}
    with pytest.raises(ConfigError, match=f"quality.{field}") as err:
        QualityGate(**settings)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


# -- real photos -------------------------------------------------------------------------------
def test_default_gate_passes_every_people_photo(people_faces: dict[Path, Face]) -> None:
    failed = {}
    for path, face in people_faces.items():
        q = DEFAULT_GATE.assess(read_image(path), face)
        if q.passed:
            assert q.reason is None and 0.0 < q.score <= 1.0
        else:
            failed[path.name] = (q.reason, round(q.size), round(q.sharpness, 1), round(q.yaw), round(q.pitch))
    assert failed == {}


def test_heavily_blurred_copy_is_rejected_as_blurry(people_faces: dict[Path, Face]) -> None:
    for path, face in people_faces.items():
        image = read_image(path)
        sharp = DEFAULT_GATE.assess(image, face)
        blurred = DEFAULT_GATE.assess(blur_around(image, face, sigma=face.bbox.width / 15), face)
        assert (blurred.passed, blurred.reason) == (False, "blurry"), (path.name, blurred)
        assert blurred.sharpness < sharp.sharpness / 10
        assert blurred.score < sharp.score


def test_tiny_downscaled_copy_is_rejected_as_too_small(people_faces: dict[Path, Face]) -> None:
    for path, face in people_faces.items():
        image = read_image(path)
        k = (DEFAULT_GATE.min_size / 2) / face.bbox.width  # face about half the minimum size
        tiny = cv2.resize(image, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
        q = DEFAULT_GATE.assess(tiny, face.scaled(k))
        assert (q.passed, q.reason) == (False, "too_small"), (path.name, q)
        assert q.size < DEFAULT_GATE.min_size


def test_turned_head_is_rejected_for_pose(people_faces: dict[Path, Face]) -> None:
    """The real landmarks of each face, with the nose moved sideways (a head turned by ~60 degrees)
    or down towards the mouth (a bowed head)."""
    for path, face in people_faces.items():
        image = read_image(path)
        lm = face.landmarks
        half_iod = math.dist(lm["left_eye"], lm["right_eye"]) / 2
        nose_x, nose_y = lm["nose"]
        eyes_x = (lm["left_eye"][0] + lm["right_eye"][0]) / 2
        eyes_y = (lm["left_eye"][1] + lm["right_eye"][1]) / 2
        turned = with_landmarks(face, nose=(eyes_x + 1.2 * half_iod, nose_y))
        bowed = with_landmarks(face, nose=(nose_x, eyes_y + 0.95 * (lm["mouth_center"][1] - eyes_y)))
        for moved, angle in ((turned, "yaw"), (bowed, "pitch")):
            q = DEFAULT_GATE.assess(image, moved)
            assert (q.passed, q.reason) == (False, "pose"), (path.name, angle, q)
        assert DEFAULT_GATE.assess(image, turned).yaw > 45
        assert DEFAULT_GATE.assess(image, bowed).pitch < -30


def test_mirrored_photo_mirrors_the_yaw_sign(people_faces: dict[Path, Face], detector: BlazeFaceDetector) -> None:
    """Mirroring flips the sign of a clearly turned head; BlazeFace's coarse keypoints make small
    angles noisy, so only faces estimated beyond 15 degrees are compared."""
    compared = 0
    for path, face in people_faces.items():
        yaw, _ = estimate_pose(face)
        if abs(yaw) < 15:
            continue
        (mirrored,) = detector.detect(cv2.flip(read_image(path), 1))
        m_yaw, _ = estimate_pose(mirrored)
        assert np.sign(m_yaw) == -np.sign(yaw), (path.name, yaw, m_yaw)
        compared += 1
    assert compared >= 10


# -- pose geometry -----------------------------------------------------------------------------
def template_face(names: tuple[str, ...], roll_degrees: float = 0.0) -> Face:
    """A face whose landmarks are the ArcFace template (frontal by definition), optionally rolled."""
    pts = template_points("arcface", (112, 112), names)
    a = math.radians(roll_degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = (pts - 56.0) @ rot.T + 56.0
    return Face(BBox(0, 0, 112, 112), 1.0, {n: (float(x), float(y)) for n, (x, y) in zip(names, pts)})


@pytest.mark.parametrize("roll", [0.0, 25.0, -40.0])
def test_template_face_is_frontal_whatever_its_roll(roll: float) -> None:
    yaw, pitch = estimate_pose(template_face(("left_eye", "right_eye", "nose", "mouth_left", "mouth_right"), roll))
    assert abs(yaw) < 2.0 and abs(pitch) < 2.0


def test_yaw_sign_follows_the_nose() -> None:
    face = template_face(("left_eye", "right_eye", "nose", "mouth_left", "mouth_right"))
    x, y = face.landmarks["nose"]
    right, _ = estimate_pose(with_landmarks(face, nose=(x + 8, y)))
    left, _ = estimate_pose(with_landmarks(face, nose=(x - 8, y)))
    assert right > 10 and left < -10 and right == pytest.approx(-left, abs=0.5)


def test_missing_or_degenerate_landmarks_fail_as_pose(people_faces: dict[Path, Face], photos: list[Path]) -> None:
    image = read_image(photos[0])
    face = people_faces[photos[0]]
    for broken in (
        replace(face, landmarks={}),
        with_landmarks(face, right_eye=face.landmarks["left_eye"]),
        with_landmarks(face, mouth_center=(face.landmarks["nose"][0], face.bbox.y1 - 50)),
    ):
        q = DEFAULT_GATE.assess(image, broken)
        assert (q.passed, q.reason) == (False, "pose") and math.isnan(q.yaw)


def test_odd_frames_and_boxes_never_raise(people_faces: dict[Path, Face], photos: list[Path]) -> None:
    image = read_image(photos[0])
    face = people_faces[photos[0]]
    h, w = image.shape[:2]
    cases = [
        (None, face),
        (np.zeros((0, 0, 3), np.uint8), face),
        (image, replace(face, bbox=BBox(w + 10, h + 10, w + 200, h + 200))),  # off the frame
        (image, replace(face, bbox=BBox(float("nan"), 0, 10, 10))),
        (cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), face),
        (cv2.cvtColor(image, cv2.COLOR_BGR2BGRA), face),
    ]
    for frame, f in cases:
        q = DEFAULT_GATE.assess(frame, f)  # type: ignore[arg-type]
        assert q.reason in (*REASONS, None)
    assert DEFAULT_GATE.assess(cases[2][0], cases[2][1]).reason == "too_small"
    assert DEFAULT_GATE.assess(cases[4][0], face).passed  # a grey frame is still a sharp face
