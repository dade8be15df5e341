"""Enrolment from an event's face and guided capture, on synthetic vectors, faces and frames (no models).

Vectors are mixes of a fixed orthonormal basis (exact cosines, as in test_corrections.py); faces are landmark sets
whose yaw is known by construction (agent/vision/quality.py ``estimate_pose``) on noise (sharp) or flat (blurred)
images.
The real-model, through-the-CLI tests are test_enroll_event.py and test_enroll_capture.py.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import mix, orthonormal_basis

from facelite.errors import ConfigError, FaceliteError, GalleryError
from facelite.recognition.capture import POSES, Capture, CaptureSettings, enrolment_gate, parse_poses, run_capture
from facelite.recognition.enrolment import EventEnrollment, enroll_from_event
from facelite.recognition.eventfaces import EventFace, EventFaceStore, StorePolicy
from facelite.recognition.gallery import Gallery, Hygiene
from facelite.recognition.matching import Matcher
from facelite.service.sources import Frame, SourceState, SourceStatus
from facelite.vision.geometry import BBox, Face
from facelite.vision.quality import BLAZEFACE_FRONTAL_NOSE_RATIO, DEFAULT_GATE, NOSE_DEPTH_YAW, QualityGate

DIM = 64
SHA = hashlib.sha256(b"embedder").hexdigest()
HYGIENE = Hygiene(max_templates_per_person=10, threshold_for=lambda n: 0.5)


@pytest.fixture(scope="module")
def basis() -> np.ndarray:
    return orthonormal_basis(DIM, 20261203)


class Clock:
    def __init__(self, t: float = 1000.0, step: float = 0.0) -> None:
        self.t, self.step = t, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


@pytest.fixture
def world(tmp_path: Path, basis: np.ndarray) -> Iterator[tuple[Gallery, EventFaceStore]]:
    """ada = e0 in the gallery; event 1 unknown (e5), event 2 announced as ada (e6), event 3 another model's."""
    store = EventFaceStore(tmp_path / "faces.sqlite", key=None, policy=StorePolicy(keep_s=100.0), clock=Clock())
    store.put(EventFace(str(uuid.UUID(int=1)), 1000.0, None, "door", SHA, basis[5]))
    store.put(EventFace(str(uuid.UUID(int=2)), 1000.0, "ada", "door", SHA, basis[6]))
    store.put(EventFace(str(uuid.UUID(int=3)), 1000.0, None, "door", "0" * 64, basis[7]))
    store.put(EventFace(str(uuid.UUID(int=4)), 1000.0, None, "door", SHA, mix(basis, e0=0.9, e9=0.43)))
    matcher = Matcher(0.5, 0.05)
    with Gallery.open(tmp_path / "g.db", embedder_sha256=SHA, embedding_size=DIM, matcher=matcher) as g, store:
        g.enroll("ada", [basis[0]], ["ada.jpg"])
        yield g, store


def enrol(world: tuple[Gallery, EventFaceStore], event: int | str, name: str) -> EventEnrollment:
    gallery, store = world
    event_id = str(uuid.UUID(int=event)) if isinstance(event, int) else event
    return enroll_from_event(gallery, store, event_id=event_id, name=name, embedder_sha256=SHA, hygiene=HYGIENE)


# -- the event face store keeps unknown faces --------------------------------------------------------------------
def test_unknown_faces_are_kept_without_a_name_apart_from_expired_ids_and_survive_forget(
    world: tuple[Gallery, EventFaceStore], basis: np.ndarray
) -> None:
    _, store = world
    got = store.get(str(uuid.UUID(int=1)))
    assert got.person is None and np.array_equal(got.vector, basis[5])
    assert store.forget(["ada"]) == 1  # erases the face announced as ada, not the unknown one
    assert store.get(str(uuid.UUID(int=1))).person is None
    store._clock = Clock(1101.0)  # past keep_s: the unknown face becomes a tombstone, which says "expired"
    store.put(EventFace(str(uuid.UUID(int=9)), 1101.0, None, "door", SHA, basis[8]))
    with pytest.raises(GalleryError, match="has expired"):
        store.get(str(uuid.UUID(int=1)))


# -- enroll_from_event -------------------------------------------------------------------------------------------
def test_an_unknown_event_becomes_a_template_and_a_replay_changes_nothing(
    world: tuple[Gallery, EventFaceStore], basis: np.ndarray
) -> None:
    gallery, _ = world
    done = enrol(world, 1, "Lee")
    assert done.added == 1 and done.announced_as is None
    assert gallery.match(basis[5]).person == "Lee"
    version = gallery.version
    again = enrol(world, 1, "Lee")
    assert again.outcome is None and "already a template of Lee" in again.line()
    assert gallery.version == version and {p.name: p.templates for p in gallery.people()}["Lee"] == 1


def test_forgetting_a_person_erases_the_unknown_faces_they_were_enrolled_from(
    world: tuple[Gallery, EventFaceStore], basis: np.ndarray
) -> None:
    gallery, store = world
    assert enrol(world, 1, "Lee").added == 1
    gallery.forget("Lee")
    assert store.forget(["Lee"]) == 1
    with pytest.raises(GalleryError, match="unknown event"):
        store.get(str(uuid.UUID(int=1)))
    store.close()
    raw = b"".join(p.read_bytes() for p in (store.path, Path(f"{store.path}-wal")) if p.exists())
    assert basis[5].astype("<f4").tobytes() not in raw and b"Lee" not in raw
    with EventFaceStore(store.path, key=None, policy=store.policy, clock=Clock()) as again:  # other faces stay
        assert again.get(str(uuid.UUID(int=2))).person == "ada"


def test_an_event_announced_as_that_person_adds_a_view_of_them(world: tuple[Gallery, EventFaceStore]) -> None:
    assert enrol(world, 2, "ada").added == 1
    assert {p.name: p.templates for p in world[0].people()}["ada"] == 2


@pytest.mark.parametrize(
    ("event", "name", "says"),
    [
        (2, "Lee", "announced as ada, not Lee"),
        (3, "Lee", "was embedded by model 000000000000"),
        (str(uuid.UUID(int=77)), "Lee", "unknown event"),
        ("77", "Lee", "is not an event id (facelite enroll --from-event)"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(
    world: tuple[Gallery, EventFaceStore], event: int | str, name: str, says: str
) -> None:
    version = world[0].version
    with pytest.raises(FaceliteError) as info:
        enrol(world, event, name)
    line = info.value.one_line()
    assert says in line and "\n" not in line
    if event == 2:
        assert f"facelite gallery reject {uuid.UUID(int=2)}" in line
    assert world[0].version == version


def test_a_face_closer_to_someone_else_is_refused_by_template_hygiene(world: tuple[Gallery, EventFaceStore]) -> None:
    done = enrol(world, 4, "Lee")  # 0.9 to ada's template: the lone template of Lee would be announced as ada
    assert done.added == 0 and "it matches ada better" in done.line()
    assert "Lee" not in {p.name for p in world[0].people()}


# -- capture -----------------------------------------------------------------------------------------------------
def face_at(yaw: float, side: float = 80.0, x: float = 100.0, y: float = 100.0) -> Face:
    """A face whose landmarks give ``yaw`` degrees and no pitch (BlazeFace's 4 points)."""
    half = side / 4
    nose_x = x + math.tan(math.radians(yaw)) * NOSE_DEPTH_YAW * half
    eye_y, mouth_y = y - side / 6, y + side / 4
    return Face(
        BBox(x - side / 2, y - side / 2, x + side / 2, y + side / 2),
        0.9,
        {
            "left_eye": (x - half, eye_y),
            "right_eye": (x + half, eye_y),
            "nose": (nose_x, eye_y + BLAZEFACE_FRONTAL_NOSE_RATIO * (mouth_y - eye_y)),
            "mouth_center": (x, mouth_y),
        },
    )


SHARP = np.random.default_rng(3).integers(0, 256, (200, 200, 3), dtype=np.uint8)
FLAT = np.full((200, 200, 3), 90, np.uint8)


class FakeSource:
    name = "fake"

    def __init__(self, frames: list[tuple[np.ndarray, list[Face]]], detail: str = "end of source") -> None:
        self.frames = frames
        self.read_count = 0
        self.closed = False
        self._detail = detail

    @property
    def status(self) -> SourceStatus:
        return SourceStatus(SourceState.ENDED, detail=self._detail)

    def read(self) -> Frame | None:
        if self.read_count >= len(self.frames):
            return None
        image, _ = self.frames[self.read_count]
        self.read_count += 1
        return Frame(image, float(self.read_count), self.name, self.read_count - 1)

    def close(self) -> None:
        self.closed = True

    def detect(self, image: np.ndarray) -> list[Face]:
        """The faces of the frame read last (frames share image objects, so they cannot be looked up by image)."""
        return self.frames[self.read_count - 1][1]


def embed_yaw(image: np.ndarray, face: Face) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[0] = 1.0
    return v


def test_capture_sorts_faces_into_poses_keeps_the_best_and_counts_every_refusal() -> None:
    gate = QualityGate(min_size=40, min_sharpness=15.0, max_yaw=50.0, max_pitch=40.0)
    capture = Capture(CaptureSettings(per_pose=1), gate, embed_yaw)
    got = [
        capture.offer(FLAT, [], 0),
        capture.offer(SHARP, [face_at(0), face_at(0, x=150)], 1),
        capture.offer(FLAT, [face_at(0)], 2),
        capture.offer(SHARP, [face_at(0, side=30)], 3),
        capture.offer(SHARP, [face_at(70)], 4),
        capture.offer(SHARP, [face_at(5)], 5),
        capture.offer(SHARP, [face_at(1)], 6),  # more frontal: a better score replaces the first front face
        capture.offer(SHARP, [face_at(8)], 7),
        capture.offer(SHARP, [face_at(25)], 8),
    ]
    assert got == [
        *("no_face", "several", "blurry", "too_small", "pose"),
        *("kept:front", "kept:front", "spare", "kept:left"),
    ]
    assert capture.wanted() is POSES["right"] and not capture.complete
    assert capture.offer(SHARP, [face_at(-25)], 9) == "kept:right" and capture.complete
    r = capture.result("complete")
    assert [(k.pose, k.frame) for k in r.kept] == [("front", 6), ("left", 8), ("right", 9)]
    assert r.summary() == (
        "kept 3 template(s) (front 1, left 1, right 1); refused 3 face(s): 1 blurred, 1 turned too far, 1 too small; "
        "2 good face(s) not needed; 1 frame(s) without a face; 1 frame(s) with several faces "
        "(10 frame(s), stopped: complete)"
    )


def test_a_face_in_no_asked_pose_is_refused_as_such() -> None:
    capture = Capture(CaptureSettings(parse_poses("front")), DEFAULT_GATE, embed_yaw)
    assert capture.offer(SHARP, [face_at(30)], 0) == "off_pose"
    assert "1 in no pose asked for" in capture.result("end of source").summary()


def test_driver_prompts_each_pose_once_stops_when_complete_and_closes_the_source() -> None:
    frames = [(SHARP, [face_at(y)]) for y in (0, 0, 25, -25, 0, 0)]
    source = FakeSource(frames)
    said: list[str] = []
    capture = Capture(CaptureSettings(), DEFAULT_GATE, embed_yaw)
    r = run_capture(source, source.detect, capture, clock=Clock(), say=said.append)
    assert r.stopped == "complete" and source.read_count == 4 and source.closed
    assert [s.split(":")[0] for s in said] == ["front", "left", "right"]


def test_driver_stops_at_the_timeout_and_reports_the_missing_poses() -> None:
    source = FakeSource([(SHARP, [face_at(0)])] * 50)
    capture = Capture(CaptureSettings(timeout_s=5.0), DEFAULT_GATE, embed_yaw)
    r = run_capture(source, source.detect, capture, clock=Clock(step=1.0), say=lambda s: None)
    assert r.stopped == "timeout" and 0 < r.frames < 50
    assert r.summary().endswith("no face for: left, right")


def test_a_source_that_gives_no_frame_is_one_line_without_prompts() -> None:
    source = FakeSource([], detail="video /x.avi cannot be opened")
    said: list[str] = []
    with pytest.raises(FaceliteError) as info:
        run_capture(source, source.detect, Capture(CaptureSettings(), DEFAULT_GATE, embed_yaw), clock=Clock(),
                    say=said.append)  # fmt: skip
    assert info.value.one_line() == "no frame could be read: video /x.avi cannot be opened (camera fake)"
    assert said == [] and source.closed


def test_enrolment_gate_is_the_stricter_of_the_configured_and_the_default() -> None:
    assert enrolment_gate(None) == DEFAULT_GATE
    lax = enrolment_gate(QualityGate(min_size=60, min_sharpness=0.0, max_yaw=80.0, max_pitch=30.0))
    assert lax == QualityGate(min_size=60, min_sharpness=DEFAULT_GATE.min_sharpness, max_yaw=50.0, max_pitch=30.0)


@pytest.mark.parametrize("text", ["", "front,front", "up", "front,,sideways", ","])
def test_bad_poses_are_one_line(text: str) -> None:
    with pytest.raises(ConfigError, match="poses must be distinct names"):
        parse_poses(text)


@pytest.mark.parametrize(("per_pose", "timeout_s"), [(0, 60.0), (21, 60.0), (True, 60.0), (1, 0.0), (1, math.nan)])
def test_bad_capture_settings_are_one_line(per_pose: int, timeout_s: float) -> None:
    with pytest.raises(ConfigError):
        CaptureSettings(per_pose=per_pose, timeout_s=timeout_s)
