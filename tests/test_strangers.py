"""Recurring strangers (agent/recognition/strangers.py, agent/recognition/unknowns.py) on synthetic unit vectors
with known cosines.

The real-model, real-agent, real-broker test is test_strangers_e2e.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import mix, orthonormal_basis

from facelite.errors import GalleryError
from facelite.recognition.gallery import Gallery, Hygiene
from facelite.recognition.matching import Matcher
from facelite.recognition.strangers import (
    StrangerPolicy,
    StrangerStore,
    Visit,
    check_cluster_id,
    nearest_cluster,
    separate_visits,
)
from facelite.recognition.unknowns import drop_unknown, enroll_from_unknown
from facelite.service.events import Topics

DIM = 64
SHA = hashlib.sha256(b"embedder").hexdigest()
KEY = bytes(range(32))
TOPICS = Topics("door1", "facelite")
POLICY = StrangerPolicy(threshold=0.6, keep_s=1000.0, max_visits=50)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def basis() -> np.ndarray:
    return orthonormal_basis(DIM, 20261203)


def file_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def visit(vector: np.ndarray, first: float, last: float | None = None, camera: str = "door", q: float = 0.8) -> Visit:
    crop = np.full((8, 8, 3), 7, np.uint8)
    return Visit(first, first + 5.0 if last is None else last, camera, SHA, vector, q, crop)


def payloads(messages: list) -> dict[str, object]:
    return {m.topic: (json.loads(m.payload) if m.payload else None) for m in messages}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StrangerStore]:
    with StrangerStore(tmp_path / "strangers.sqlite", key=None, policy=POLICY, clock=Clock(10_000.0)) as s:
        yield s


# -- the clustering rule -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_nearest_cluster_is_the_cluster_of_the_most_similar_face_at_the_threshold(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(0, 12))
    vectors = rng.standard_normal((m, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
    owners = rng.integers(1, 4, m)
    probe = rng.standard_normal(8).astype(np.float32)
    probe /= np.linalg.norm(probe)
    threshold = float(rng.uniform(-0.5, 0.9))
    # Brute force: every face, one at a time.
    best_score, best_owner = -np.inf, None
    for v, o in zip(vectors, owners, strict=True):
        score = float(sum(float(a) * float(b) for a, b in zip(v, probe, strict=True)))
        if score > best_score:
            best_score, best_owner = score, int(o)
    expected = best_owner if best_score >= threshold - 1e-6 else None
    if abs(best_score - threshold) > 1e-5:  # exactly at the threshold float rounding decides: not a case to test
        assert nearest_cluster(vectors, owners, probe, threshold) == expected


def test_separate_visits_count_overlaps_once_and_respect_the_gap() -> None:
    assert separate_visits([]) == 0
    assert separate_visits([(0, 10), (20, 30)]) == 2
    assert separate_visits([(0, 10), (5, 30)]) == 1  # one person on two cameras at once
    assert separate_visits([(20, 30), (0, 10), (9, 12)]) == 2
    assert separate_visits([(0, 10), (20, 30)], min_gap_s=15) == 1
    assert separate_visits([(0, 10), (25, 30)], min_gap_s=15) == 2


@pytest.mark.parametrize("text", ["", "x", "0", "-1", "1.5", "1e3", " ", "1\n2", "9" * 20, True, None, 0])
def test_bad_cluster_numbers_are_one_line_errors(text: object) -> None:
    with pytest.raises(GalleryError) as info:
        check_cluster_id(text)
    assert "\n" not in str(info.value) and "not an unknown person's number" in str(info.value)


def test_good_cluster_numbers_parse() -> None:
    assert check_cluster_id("3") == 3 and check_cluster_id(" 12 ") == 12 and check_cluster_id(7) == 7


# -- the store -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_store_is_private_and_encrypts_faces_and_crops_when_keyed(
    tmp_path: Path, basis: np.ndarray, key: bytes | None
) -> None:
    path = tmp_path / "strangers.sqlite"
    with StrangerStore(path, key=key, policy=POLICY, clock=Clock(10_000.0)) as s:
        assert s.add(visit(basis[3], 9000.0)) == 1
        assert s.add(visit(mix(basis, e3=0.9), 9100.0)) == 1
        faces = s.faces(1)
        assert faces.vectors.shape == (2, DIM) and faces.embedder_sha256 == SHA
        assert len(s.crops(1)) == 2 and s.crops(1)[0].startswith(b"\x89PNG")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (basis[3].astype("<f4").tobytes() in file_bytes(path)) is (key is None)
    if key is not None:
        with StrangerStore(path, key=bytes(32), policy=POLICY, clock=Clock(10_000.0)) as s:
            with pytest.raises(GalleryError, match="cannot be decrypted"):
                s.faces(1)


def test_second_separate_visit_announces_once_and_other_people_start_their_own_cluster(
    store: StrangerStore, basis: np.ndarray
) -> None:
    assert store.add(visit(mix(basis, e0=0.95), 9000.0)) == 1
    assert store.sync(TOPICS) == []  # one visit: nothing announced
    assert store.add(visit(mix(basis, e1=0.95), 9010.0)) == 2  # another face: another cluster
    assert store.add(visit(mix(basis, e0=0.9, e2=0.2), 9100.0, camera="yard")) == 1
    got = payloads(store.sync(TOPICS))
    assert got == {
        "facelite/door1/unknown/1": {
            "k": 1,
            "visits": 2,
            "first_seen": "1970-01-01T02:30:00.000Z",
            "last_seen": "1970-01-01T02:31:45.000Z",
            "cameras": ["door", "yard"],
        }
    }
    assert store.sync(TOPICS) == []  # unchanged: not re-published
    again = store.sync(TOPICS, republish=True)  # the agent's start: every current announcement again
    assert [(m.topic, m.retain) for m in again] == [("facelite/door1/unknown/1", True)]


def test_overlapping_visits_are_one_visit_and_are_not_announced(store: StrangerStore, basis: np.ndarray) -> None:
    store.add(visit(basis[0], 9000.0, 9050.0, camera="door"))
    store.add(visit(mix(basis, e0=0.97), 9020.0, 9030.0, camera="yard"))  # the same moment, another camera
    assert store.sync(TOPICS) == []
    with pytest.raises(GalleryError, match="seen on 1 visit"):
        store.require(1)


def test_expired_cluster_is_cleared_and_named_expired(tmp_path: Path, basis: np.ndarray) -> None:
    clock = Clock(10_000.0)
    path = tmp_path / "strangers.sqlite"
    with StrangerStore(path, key=None, policy=POLICY, clock=clock) as s:
        s.add(visit(basis[0], 9000.0))
        s.add(visit(mix(basis, e0=0.95), 9100.0))
        assert payloads(s.sync(TOPICS))["facelite/door1/unknown/1"] is not None
        clock.t = 9105.0 + POLICY.keep_s + 1
        assert payloads(s.sync(TOPICS)) == {"facelite/door1/unknown/1": None}  # the clear
        with pytest.raises(GalleryError, match="has expired"):
            s.require(1)
        assert s.add(visit(basis[5], clock.t)) == 2  # a number is never reused
    assert basis[0].astype("<f4").tobytes() not in file_bytes(path)


def test_store_is_bounded_oldest_visits_first(tmp_path: Path, basis: np.ndarray) -> None:
    policy = StrangerPolicy(threshold=0.6, keep_s=1e6, max_visits=3)
    with StrangerStore(tmp_path / "s.sqlite", key=None, policy=policy, clock=Clock(10_000.0)) as s:
        for i in range(5):
            assert s.add(visit(basis[i], 9000.0 + i * 10)) == i + 1
        assert [c.k for c in s.clusters()] == [3, 4, 5]
        with pytest.raises(GalleryError, match="has expired"):
            s.require(1)


def test_write_failure_is_logged_once_and_the_visit_is_not_kept(
    tmp_path: Path, basis: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    s = StrangerStore(tmp_path / "missing" / "s.sqlite", key=None, policy=POLICY, clock=Clock(1.0))
    assert s.add(visit(basis[0], 1.0)) is None
    assert s.add(visit(basis[1], 2.0)) is None
    assert s.sync(TOPICS) == []
    assert sum("cannot be written" in r.message for r in caplog.records) == 1


def test_corrupt_store_is_one_line_for_the_cli_and_a_logged_skip_for_the_agent(
    tmp_path: Path, basis: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database, but random junk " * 200)
    with StrangerStore(path, key=None, policy=POLICY, clock=Clock(1.0)) as s:
        assert s.add(visit(basis[0], 1.0)) is None
        with pytest.raises(GalleryError) as info:
            s.require(1)
        assert "\n" not in str(info.value) and "cannot be read" in str(info.value)


# -- enrolment, drop, forget ---------------------------------------------------------------------------------------


@pytest.fixture
def gallery(tmp_path: Path, basis: np.ndarray) -> Iterator[Gallery]:
    """bob = e1; threshold 0.5."""
    with Gallery.open(tmp_path / "g.db", embedder_sha256=SHA, embedding_size=DIM, matcher=Matcher(0.5, 0.05)) as g:
        g.enroll("bob", [basis[1]], ["bob.jpg"])
        yield g


def test_enrolling_a_recurring_stranger_adds_their_faces_and_erases_the_cluster(
    tmp_path: Path, store: StrangerStore, gallery: Gallery, basis: np.ndarray
) -> None:
    store.add(visit(mix(basis, e0=0.95), 9000.0, q=0.5))
    store.add(visit(mix(basis, e0=0.9, e2=0.3), 9100.0, q=0.9))
    store.sync(TOPICS)
    done = enroll_from_unknown(store, gallery, "Cleo", "1", embedder_sha256=SHA, hygiene=Hygiene())
    assert (done.outcome.person, done.outcome.added, done.erased) == ("Cleo", 2, 2)
    assert gallery.match(basis[0]).person == "Cleo"
    assert payloads(store.sync(TOPICS)) == {"facelite/door1/unknown/1": None}
    with pytest.raises(GalleryError, match="already enrolled as Cleo"):
        enroll_from_unknown(store, gallery, "Cleo", 1, embedder_sha256=SHA, hygiene=Hygiene())
    assert mix(basis, e0=0.95).astype("<f4").tobytes() not in file_bytes(store.path)


def test_enrolment_is_refused_for_one_visit_unknown_k_other_model_or_someone_enrolled(
    store: StrangerStore, gallery: Gallery, basis: np.ndarray
) -> None:
    store.add(visit(basis[0], 9000.0))
    with pytest.raises(GalleryError, match="seen on 1 visit"):
        enroll_from_unknown(store, gallery, "Cleo", 1, embedder_sha256=SHA, hygiene=Hygiene())
    with pytest.raises(GalleryError, match="no unknown person 9"):
        enroll_from_unknown(store, gallery, "Cleo", 9, embedder_sha256=SHA, hygiene=Hygiene())
    with pytest.raises(GalleryError, match="not an unknown person's number"):
        enroll_from_unknown(store, gallery, "Cleo", "x", embedder_sha256=SHA, hygiene=Hygiene())
    store.add(visit(mix(basis, e0=0.95), 9100.0))
    with pytest.raises(GalleryError, match="embedded by model"):
        enroll_from_unknown(store, gallery, "Cleo", 1, embedder_sha256="0" * 64, hygiene=Hygiene())
    # Bob's face seen twice as a stranger (e.g. before his enrolment): naming it Cleo is refused, nothing changes.
    # Each face is closer to Bob's template (0.95) than to the other (0.91).
    store.add(visit(mix(basis, e1=0.95, e2=0.3), 9200.0))
    store.add(visit(mix(basis, e1=0.95, e3=0.3), 9300.0))
    with pytest.raises(GalleryError, match="match bob better"):
        enroll_from_unknown(store, gallery, "Cleo", 2, embedder_sha256=SHA, hygiene=Hygiene())
    assert [p.name for p in gallery.people()] == ["bob"] and store.require(2).visits == 2


def test_drop_and_forget_erase_clusters(store: StrangerStore, gallery: Gallery, basis: np.ndarray) -> None:
    store.add(visit(basis[0], 9000.0))
    store.add(visit(mix(basis, e1=0.9), 9100.0))
    store.add(visit(mix(basis, e1=0.92), 9200.0))
    store.sync(TOPICS)
    assert drop_unknown(store, "1") == 1
    with pytest.raises(GalleryError, match="was dropped"):
        drop_unknown(store, "1")
    assert store.forget_like(gallery.index.rows_of("bob"), SHA, "bob") == 2
    assert store.clusters() == []
    assert payloads(store.sync(TOPICS)) == {"facelite/door1/unknown/2": None}
    assert mix(basis, e1=0.9).astype("<f4").tobytes() not in file_bytes(store.path)


# -- the LFW measurement's bookkeeping (agent/tools/bench/strangers.py) ------------------------------------------------


def test_bench_groups_keep_a_person_whole_and_bound_visits() -> None:
    from facelite.tools.bench.strangers import split

    people = np.array([0, 1, 0, 2, 0, 1, 3, 0, 2, 0])
    rows, groups = split(people, window=4, per_person=3, seed=1)
    assert rows.tolist() == [0, 1, 2, 3, 4, 5, 6, 8]  # person 0's 4th and 5th visits are left out
    kept = people[rows]
    for p in set(kept.tolist()):
        assert len(set(groups[kept == p].tolist())) == 1  # a person never spans two memories
    assert max(np.bincount(groups)) <= 4


def test_bench_scores_merges_false_announcements_and_completeness() -> None:
    from facelite.tools.bench.strangers import score

    # Clusters: 1 = {a, a} (pure, announced), 2 = {b, c} (merged, no one twice: a false announcement),
    # 3 = {d}, 4 = {d} (d split in two, never announced), 5 = {e, e, f} (merged, but e really recurs).
    people = np.array([0, 0, 1, 2, 3, 3, 4, 4, 5])
    owners = np.array([1, 1, 2, 2, 3, 4, 5, 5, 5])
    o = score(people, owners, 1e-5, 0.6, min_visits=2, seed=0)
    assert (o.clusters, o.announced) == (5, 3)
    assert (o.merged.count, o.merged.trials) == (2, 3)
    assert o.false_announcements.count == 1
    assert o.recurring_people == 3  # a, d, e
    assert o.complete.count == 2 and o.announced_people.count == 2  # a and e; d split
    assert o.purity == pytest.approx(7 / 9)  # c and f are not their cluster's majority
