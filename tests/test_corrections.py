"""Corrections (negatives), template hygiene and the event face store, on synthetic unit vectors.

Every cosine is known exactly: vectors are mixes of a fixed orthonormal basis (as in test_gallery.py).
The real-model, through-the-CLI test of ``facelite gallery reject`` is in test_gallery_reject.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import mix, orthonormal_basis

from facelite.errors import ConfigError, GalleryError
from facelite.recognition.eventfaces import EventFace, EventFaceStore, StorePolicy, check_event_id
from facelite.recognition.gallery import Gallery, Hygiene
from facelite.recognition.galleryfile import GALLERY_SCHEMA
from facelite.recognition.matching import Matcher

DIM = 64
SHA = hashlib.sha256(b"embedder").hexdigest()
KEY = bytes(range(32))


@pytest.fixture(scope="module")
def basis() -> np.ndarray:
    return orthonormal_basis(DIM, 20261203)


def file_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


@pytest.fixture
def gallery(tmp_path: Path, basis: np.ndarray) -> Iterator[Gallery]:
    """ada = e0, bob = e1; threshold 0.5."""
    with Gallery.open(tmp_path / "g.db", embedder_sha256=SHA, embedding_size=DIM, matcher=Matcher(0.5, 0.05)) as g:
        g.enroll("ada", [basis[0]], ["ada.jpg"])
        g.enroll("bob", [basis[1]], ["bob.jpg"])
        yield g


# -- the correction rule ---------------------------------------------------------------------------
def test_look_alike_closer_to_a_negative_than_to_the_templates_is_not_announced(
    gallery: Gallery, basis: np.ndarray
) -> None:
    carl = mix(basis, e0=0.7, e2=0.7)  # a look-alike of ada: 0.7 to her template
    assert gallery.match(carl).person == "ada"  # before the correction: a false accept
    assert gallery.add_negative("ada", carl, source="event 1", event_id=str(uuid.uuid4())) is True
    other_carl = mix(basis, e0=0.65, e2=0.72)  # another photo of carl: 0.65 to ada, ~0.99 to the negative
    m = gallery.match(other_carl)
    assert (m.person, m.decision, m.refused) == (None, "unknown", "ada")
    # ada herself is still ada: 0.9 to her template beats 0.63 to the negative
    m = gallery.match(mix(basis, e0=0.9, e2=0.1))
    assert (m.person, m.decision, m.refused) == ("ada", "known", None)


def test_refused_person_leaves_the_running_and_the_rule_decides_among_the_others(
    gallery: Gallery, basis: np.ndarray
) -> None:
    gallery.add_negative("ada", mix(basis, e0=0.6, e1=0.6, e3=0.5), source="s", event_id=None)
    probe = mix(basis, e0=0.62, e1=0.58, e3=0.5)  # closest to ada's negative, then ada, then bob
    m = gallery.match(probe)
    assert m.refused == "ada" and m.person == "bob" and m.decision == "known" and m.runner_up is None
    assert m.similarity == pytest.approx(0.58, abs=1e-5)


def test_equal_similarity_to_negative_and_template_is_not_refused(gallery: Gallery, basis: np.ndarray) -> None:
    gallery.add_negative("ada", mix(basis, e2=1.0), source="s", event_id=None)
    probe = mix(basis, e0=0.6, e2=0.6)  # 0.6 to both: "closer to a negative" is strict
    assert gallery.match(probe).person == "ada"


def test_negatives_are_listed_persist_and_rejecting_an_event_twice_writes_once(
    gallery: Gallery, basis: np.ndarray, tmp_path: Path
) -> None:
    eid = str(uuid.uuid4())
    v = gallery.version
    assert gallery.add_negative("ada", basis[5], source="event", event_id=eid) is True
    assert gallery.add_negative("ada", basis[5], source="event", event_id=eid) is False
    assert gallery.version == v + 1
    assert {p.name: p.negatives for p in gallery.people()} == {"ada": 1, "bob": 0}
    with Gallery.open(tmp_path / "g.db", embedder_sha256=SHA, embedding_size=DIM) as again:
        assert again.index.negatives_of("ada").shape == (1, DIM)
    with pytest.raises(GalleryError, match="no person 'zoe'"):
        gallery.add_negative("zoe", basis[5], source="event", event_id=None)


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_forget_erases_negatives_from_the_file(tmp_path: Path, basis: np.ndarray, key: bytes | None) -> None:
    path = tmp_path / "g.db"
    negative = mix(basis, e0=0.5, e7=0.8)
    with Gallery.open(path, embedder_sha256=SHA, embedding_size=DIM, key=key) as g:
        g.enroll("ada", [basis[0]], ["ada.jpg"])
        g.enroll("bob", [basis[1]], ["bob.jpg"])
        g.add_negative("ada", negative, source="event secret-camera-xyz", event_id="e1")
        assert b"secret-camera-xyz" in file_bytes(path)  # control: the search works
        if key is None:
            assert negative.astype("<f4").tobytes() in file_bytes(path)
        assert g.forget("ada") is True
        raw = file_bytes(path)
        assert b"secret-camera-xyz" not in raw and negative.astype("<f4").tobytes() not in raw
        assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM negatives").fetchone()[0] == 0


def test_encrypted_negatives_are_not_in_clear_and_cannot_pass_for_templates(tmp_path: Path, basis: np.ndarray) -> None:
    path = tmp_path / "g.db"
    with Gallery.open(path, embedder_sha256=SHA, embedding_size=DIM, key=KEY) as g:
        g.enroll("ada", [basis[0]], ["ada.jpg"])
        g.add_negative("ada", basis[9], source="s", event_id=None)
    assert basis[9].astype("<f4").tobytes() not in file_bytes(path)
    con = sqlite3.connect(path)
    con.execute("UPDATE templates SET vector = (SELECT vector FROM negatives), nonce = (SELECT nonce FROM negatives)")
    con.commit()
    con.close()
    with pytest.raises(GalleryError, match="cannot be decrypted"):
        Gallery.open(path, embedder_sha256=SHA, embedding_size=DIM, key=KEY)


def test_export_import_carries_negatives_and_schema_1_exports_still_import(
    gallery: Gallery, basis: np.ndarray, tmp_path: Path
) -> None:
    gallery.add_negative("ada", basis[6], source="event x", event_id="e-x")
    export = tmp_path / "export.json"
    gallery.export(export)
    doc = json.loads(export.read_text())
    assert doc["schema"] == 2 and [len(p["negatives"]) for p in doc["people"]] == [1, 0]
    with Gallery.open(tmp_path / "copy.db", embedder_sha256=SHA, embedding_size=DIM, key=KEY) as copy:
        copy.import_(export)
        assert np.array_equal(copy.index.negatives_of("ada"), gallery.index.negatives_of("ada"))
        version = copy.version
        copy.import_(export)  # idempotent, negatives too
        assert copy.version == version and copy.people()[0].negatives == 1
    old = {**doc, "schema": 1, "people": [{k: v for k, v in p.items() if k != "negatives"} for p in doc["people"]]}
    export.write_text(json.dumps(old))
    with Gallery.open(tmp_path / "old.db", embedder_sha256=SHA, embedding_size=DIM) as g:
        g.import_(export)
        assert [(p.name, p.templates, p.negatives) for p in g.people()] == [("ada", 1, 0), ("bob", 1, 0)]
    bad = {**doc, "people": [{**doc["people"][0], "negatives": [{"vector": "!!"}]}]}
    export.write_text(json.dumps(bad))
    with Gallery.open(tmp_path / "bad.db", embedder_sha256=SHA, embedding_size=DIM) as g:
        with pytest.raises(GalleryError, match=r"people\[0\]\.negatives\[0\]"):
            g.import_(export)
        assert len(g) == 0


def test_schema_1_gallery_is_migrated_and_keeps_its_templates(tmp_path: Path, basis: np.ndarray) -> None:
    path = tmp_path / "old.db"
    with Gallery.open(path, embedder_sha256=SHA, embedding_size=DIM) as g:
        g.enroll("ada", [basis[0]], ["ada.jpg"])
    con = sqlite3.connect(path)
    con.execute("DROP TABLE negatives")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    con.commit()
    con.close()
    with Gallery.open(path, embedder_sha256=SHA, embedding_size=DIM, matcher=Matcher(0.5, 0.05)) as g:
        assert g.match(basis[0]).person == "ada"
        g.add_negative("ada", basis[3], source="s", event_id=None)
    con = sqlite3.connect(path)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == str(GALLERY_SCHEMA)
    con.close()


# -- template hygiene ------------------------------------------------------------------------------
def hygiene(limit: int = 10, threshold: float | None = 0.5) -> Hygiene:
    return Hygiene(max_templates_per_person=limit, threshold_for=None if threshold is None else lambda n: threshold)


def test_template_closer_to_another_person_is_refused_naming_both(gallery: Gallery, basis: np.ndarray) -> None:
    own = mix(basis, e0=0.8, e4=0.5)
    stray = mix(basis, e1=0.9, e0=0.3)  # bob's face in ada's folder
    out = gallery.add_templates("ada", [own, stray], ["ok.jpg", "stray.jpg"], hygiene=hygiene())
    assert out.added == 1 and [r.source for r in out.refused] == ["stray.jpg"]
    line = out.refused[0].line()
    assert "\n" not in line and "ada" in line and "bob" in line and "stray.jpg" in line
    assert gallery.people()[0].templates == 2


def test_lone_template_of_a_new_person_matching_someone_else_is_refused(gallery: Gallery, basis: np.ndarray) -> None:
    out = gallery.add_templates("cleo", [mix(basis, e0=0.8, e5=0.6)], ["cleo.jpg"], hygiene=hygiene())
    assert out.added == 0 and out.refused[0].other == "ada" and out.refused[0].own_similarity is None
    assert "cleo" not in [p.name for p in gallery.people()]
    out = gallery.add_templates("cleo", [basis[5]], ["cleo.jpg"], hygiene=hygiene())
    assert out.added == 1 and not out.refused


def test_per_person_limit_keeps_the_most_central_templates(gallery: Gallery, basis: np.ndarray) -> None:
    faces = [mix(basis, e10=0.9, e11=0.3), mix(basis, e10=0.9, e12=0.3), mix(basis, e10=0.9, e13=0.3)]
    outlier = mix(basis, e10=0.5, e14=0.8)
    out = gallery.add_templates("dan", [*faces, outlier], ["a", "b", "c", "odd"], hygiene=hygiene(limit=3))
    assert out.added == 3 and out.dropped == ("odd",)
    more = mix(basis, e10=0.95, e15=0.1)  # more central than any: an old one goes
    out = gallery.add_templates("dan", [more], ["best"], hygiene=hygiene(limit=3))
    assert out.added == 1 and len(out.dropped) == 1 and out.dropped[0] in ("a", "b", "c")
    assert [p.templates for p in gallery.people() if p.name == "dan"] == [3]


def test_look_alikes_are_reported_at_the_threshold_for_the_gallery_size(gallery: Gallery, basis: np.ndarray) -> None:
    sizes: list[int] = []

    def threshold_for(n: int) -> float:
        sizes.append(n)
        return 0.5

    twin = mix(basis, e0=0.55, e8=0.8)  # 0.55 to ada: above 0.5, but closer to its own second photo
    out = gallery.add_templates(
        "eve", [twin, mix(basis, e0=0.5, e8=0.85)], ["1", "2"], hygiene=Hygiene(10, threshold_for)
    )
    assert out.added == 2 and [(x.person, x.other) for x in out.lookalikes] == [("eve", "ada")]
    assert out.lookalikes[0].similarity == pytest.approx(0.55, abs=1e-5) and sizes[-1] == len(gallery)
    assert "look alike" in out.lookalikes[0].line() and "\n" not in out.lookalikes[0].line()
    out = gallery.add_templates("fay", [basis[20]], ["f"], hygiene=hygiene())
    assert out.lookalikes == ()


def test_hygiene_limit_is_checked() -> None:
    with pytest.raises(ConfigError, match="max_templates_per_person"):
        Hygiene(max_templates_per_person=0)


# -- the event face store --------------------------------------------------------------------------
class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def face(basis: np.ndarray, i: int, ts: float, person: str = "ada") -> EventFace:
    return EventFace(str(uuid.UUID(int=i + 1)), ts, person, "door", SHA, basis[i])


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_store_round_trip_is_private_and_encrypted_when_keyed(
    tmp_path: Path, basis: np.ndarray, key: bytes | None
) -> None:
    path = tmp_path / "faces.sqlite"
    with EventFaceStore(path, key=key, policy=StorePolicy(), clock=Clock(100.0)) as store:
        assert store.put(face(basis, 3, 100.0)) is True
        got = store.get(str(uuid.UUID(int=4)).upper())  # ids are case-insensitive
        assert (got.person, got.camera, got.ts) == ("ada", "door", 100.0)
        assert np.array_equal(got.vector, basis[3])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (basis[3].astype("<f4").tobytes() in file_bytes(path)) is (key is None)
    if key is not None:
        with EventFaceStore(path, key=bytes(32), policy=StorePolicy(), clock=Clock(100.0)) as store:
            with pytest.raises(GalleryError, match="cannot be decrypted"):
                store.get(str(uuid.UUID(int=4)))


def test_store_expires_faces_but_remembers_their_ids_and_is_bounded(tmp_path: Path, basis: np.ndarray) -> None:
    clock = Clock(1000.0)
    path = tmp_path / "faces.sqlite"
    with EventFaceStore(path, key=None, policy=StorePolicy(keep_s=100.0, max_faces=3), clock=clock) as store:
        store.put(face(basis, 0, 1000.0))
        clock.t = 1101.0
        with pytest.raises(GalleryError, match="has expired") as info:
            store.get(str(uuid.UUID(int=1)))  # past its time, not yet pruned
        assert "\n" not in str(info.value)
        for i in range(1, 6):
            store.put(face(basis, i, 1101.0 + i))
        with pytest.raises(GalleryError, match="has expired"):  # pruned: the id is kept, the face is gone
            store.get(str(uuid.UUID(int=1)))
        with pytest.raises(GalleryError, match="has expired"):  # beyond the 3 most recent
            store.get(str(uuid.UUID(int=2)))
        assert store.get(str(uuid.UUID(int=6))).person == "ada"
        with pytest.raises(GalleryError, match="unknown event"):
            store.get(str(uuid.uuid4()))
    con = sqlite3.connect(path)
    assert con.execute("SELECT COUNT(*) FROM faces WHERE vector IS NOT NULL").fetchone()[0] == 3
    assert con.execute("SELECT COUNT(*) FROM faces WHERE vector IS NULL AND person IS NOT NULL").fetchone()[0] == 0
    raw = file_bytes(path)
    assert basis[0].astype("<f4").tobytes() not in raw and basis[1].astype("<f4").tobytes() not in raw


def test_store_forget_erases_the_persons_faces_from_the_file(tmp_path: Path, basis: np.ndarray) -> None:
    path = tmp_path / "faces.sqlite"
    with EventFaceStore(path, key=None, policy=StorePolicy(), clock=Clock(10.0)) as store:
        store.put(face(basis, 0, 10.0, person="Zelda Quimby"))
        store.put(face(basis, 1, 10.0, person="bob"))
        assert store.forget(["Zelda Quimby"]) == 1
        with pytest.raises(GalleryError, match="unknown event"):
            store.get(str(uuid.UUID(int=1)))
        assert store.get(str(uuid.UUID(int=2))).person == "bob"
    raw = file_bytes(path)
    assert b"Zelda Quimby" not in raw and basis[0].astype("<f4").tobytes() not in raw


def test_store_keeps_nothing_when_disabled_and_says_so(tmp_path: Path, basis: np.ndarray) -> None:
    path = tmp_path / "faces.sqlite"
    with EventFaceStore(path, key=None, policy=StorePolicy(keep_s=0), clock=Clock(10.0)) as store:
        assert store.put(face(basis, 0, 10.0)) is False
        with pytest.raises(GalleryError, match="no event faces are kept"):
            store.get(str(uuid.UUID(int=1)))


def test_store_write_failure_is_logged_once_and_returns_false(
    tmp_path: Path, basis: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    store = EventFaceStore(tmp_path / "missing" / "faces.sqlite", key=None, policy=StorePolicy(), clock=Clock(1.0))
    assert store.put(face(basis, 0, 1.0)) is False
    assert store.put(face(basis, 1, 1.0)) is False
    assert sum("cannot be written" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("text", ["", "abc", "../../etc/passwd", "1234", "g" * 36, "x\n" + str(uuid.uuid4())])
def test_bad_event_ids_are_one_line_errors(text: str) -> None:
    with pytest.raises(GalleryError) as info:
        check_event_id(text)
    assert "\n" not in str(info.value) and "not an event id" in str(info.value)


# -- the look-alike measurement's selection (agent/tools/bench/corrections.py) --------------------------------------
def test_bench_people_hold_out_photos_and_pairs_are_the_closest_different_people(basis: np.ndarray) -> None:
    from facelite.tools.bench.corrections import lookalike_pairs, people_of

    nan = np.full(DIM, np.nan, np.float32)
    rows = {
        "ada": [basis[0], mix(basis, e0=0.9, e1=0.4), nan, mix(basis, e0=0.95, e2=0.3)],
        "lee": [basis[3], mix(basis, e0=0.7, e3=0.7)],  # lee's second photo: 0.7 to ada's template
        "solo": [basis[5]],  # one photo: neither enrolled nor a look-alike
        "zed": [basis[6], mix(basis, e6=0.9, e0=0.2)],
    }
    names = [n for n, vs in rows.items() for _ in vs]
    vectors = np.stack([v for vs in rows.values() for v in vs])
    people = people_of(names, vectors, enroll=5)
    assert [(p.name, p.enrolled, p.held_out) for p in people] == [
        ("ada", [0], [1, 3]),
        ("lee", [4], [5]),
        ("zed", [7], [8]),
    ]
    pairs = lookalike_pairs(people, vectors, threshold=0.5)
    assert [(people[a].name, people[b].name) for a, b, _ in pairs] == [("ada", "lee")]
    assert pairs[0][2] == pytest.approx(0.7, abs=1e-5)


def test_store_files_are_0600_even_with_an_open_umask(tmp_path: Path, basis: np.ndarray) -> None:
    old = os.umask(0)
    try:
        with EventFaceStore(tmp_path / "faces.sqlite", key=None, policy=StorePolicy(), clock=Clock(1.0)) as store:
            assert store.put(face(basis, 0, 1.0))
            files = [p for p in tmp_path.iterdir() if p.name.startswith("faces.sqlite")]
            assert len(files) >= 2  # the database and its WAL, while open
            for p in files:
                assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    finally:
        os.umask(old)


# -- the pipeline hands the visit's best face to the agent --------------------------------------------------------
class _Detector:
    def __init__(self, faces: list[list[object]]) -> None:
        self.frames = iter(faces)

    def detect(self, image: np.ndarray) -> list[object]:
        return next(self.frames)


class _Embedder:
    """The frame's first pixel value picks the basis vector: frame i embeds to its own known vector."""

    def __init__(self, vectors: list[np.ndarray]) -> None:
        self.vectors = vectors
        self.manifest = type("M", (), {"embedding_size": DIM})()

    def align(self, image: np.ndarray, face: object) -> np.ndarray:
        return image

    def embed_crop(self, crop: np.ndarray) -> object:
        return type("E", (), {"vector": self.vectors[int(crop[0, 0, 0])]})()


class _Gate:
    def __init__(self, scores: list[float]) -> None:
        self.scores = iter(scores)

    def assess(self, image: np.ndarray, face: object) -> object:
        return type("Q", (), {"score": next(self.scores), "passed": True, "reason": None})()


def test_recognized_event_carries_the_best_quality_face_and_ended_tracks_are_dropped(
    gallery: Gallery, basis: np.ndarray
) -> None:
    from facelite.recognition.pipeline import Pipeline
    from facelite.recognition.track import Tracker, TrackerConfig
    from facelite.vision.frames import Frame
    from facelite.vision.geometry import BBox, Face

    face = Face(BBox(10, 10, 110, 110), 0.99, {})
    faces = [mix(basis, e0=0.9, e9=0.1), mix(basis, e0=0.92, e9=0.2), mix(basis, e0=0.91, e9=0.3)]
    qualities = [0.5, 0.9, 0.7]  # the second face is the best
    pipeline = Pipeline(
        _Detector([[face], [face], [face], [], [], []]),  # type: ignore[arg-type]
        _Embedder(faces),  # type: ignore[arg-type]
        gallery,
        Matcher(0.5, 0.05),
        Tracker(TrackerConfig(min_votes=3, max_missed_frames=0, max_missed_seconds=0.0)),
        _Gate(qualities),  # type: ignore[arg-type]
    )
    events = []
    for i in range(6):
        image = np.full((120, 120, 3), min(i, 2), np.uint8)
        events += pipeline.process(Frame(image, float(i), "door", i)).events
    assert [(e.type, e.person) for e in events] == [("recognized", "ada"), ("left", "ada")]
    assert np.array_equal(events[0].embedding, faces[1]) and events[1].embedding is None
    assert pipeline._best_face == {}  # the visit ended: its face is not kept by the pipeline


def test_the_correction_benchmark_fails_when_a_correction_does_too_little_or_costs_too_much() -> None:
    """agent/tools/bench/corrections.py exits 1 on a missed target: these are the rules, on counts made up here."""
    from dataclasses import asdict

    from facelite.tools.bench.common import Rate
    from facelite.tools.bench.corrections import targets

    def report(fa_before: int, fa_after: int, tar_before: int, tar_after: int) -> dict:
        return {
            "lookalike_false_accepts_before": asdict(Rate.of(fa_before, 100)),
            "lookalike_false_accepts_after": asdict(Rate.of(fa_after, 100)),
            "person_true_accepts_before": asdict(Rate.of(tar_before, 80)),
            "person_true_accepts_after": asdict(Rate.of(tar_after, 80)),
        }

    assert [t["passed"] for t in targets(report(20, 0, 76, 75))] == [True, True]
    assert [t["passed"] for t in targets(report(20, 10, 76, 75))] == [True, True]  # exactly half removed
    assert [t["passed"] for t in targets(report(20, 11, 76, 75))] == [False, True]
    assert [t["passed"] for t in targets(report(20, 0, 76, 71))] == [True, False]  # 6.25 points of TAR lost
    assert [t["passed"] for t in targets(report(0, 0, 76, 76))] == [False, True]  # nothing to correct: no evidence
