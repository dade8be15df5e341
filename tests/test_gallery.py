"""Gallery: SQLite storage, encryption at rest, erasure, export/import and open-set matching.

Real embeddings need converted models (built by others); the logic here is exercised with
synthetic unit vectors from a fixed orthonormal basis, so every cosine is known exactly.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import mix, orthonormal_basis

from facelite.errors import ConfigError, GalleryError
from facelite.recognition.gallery import Gallery
from facelite.recognition.galleryfile import GALLERY_SCHEMA
from facelite.recognition.matching import Match, Matcher

DIM = 128
SHA_A = hashlib.sha256(b"embedder A").hexdigest()
SHA_B = hashlib.sha256(b"embedder B").hexdigest()
KEY = bytes(range(32))


@pytest.fixture(scope="module")
def basis() -> np.ndarray:
    return orthonormal_basis(DIM, 20261125)


@pytest.fixture
def gallery_path(tmp_path: Path) -> Path:
    return tmp_path / "gallery.db"


@pytest.fixture
def people_gallery(gallery_path: Path, basis: np.ndarray) -> Iterator[Gallery]:
    """alice = e0 and e3 (two templates), bob = e1, carol = e2."""
    with Gallery.open(
        gallery_path, embedder_sha256=SHA_A, embedding_size=DIM, matcher=Matcher(threshold=0.5, margin=0.1)
    ) as g:
        g.enroll("alice", [basis[0], basis[3]], ["alice/1.jpg", "alice/2.jpg"])
        g.enroll("bob", [basis[1]], ["bob/1.jpg"])
        g.enroll("carol", [basis[2]], ["carol/1.jpg"])
        yield g


def file_bytes(path: Path) -> bytes:
    """The database file plus its WAL and shared-memory files: everything SQLite keeps on disk."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


# -- matching --------------------------------------------------------------------------------------
def test_known_match_names_person_runner_up_and_margin(people_gallery: Gallery, basis: np.ndarray) -> None:
    m = people_gallery.match(mix(basis, e0=0.9, e1=0.3))
    assert (m.person, m.decision, m.runner_up) == ("alice", "known", "bob")
    assert m.similarity == pytest.approx(0.9, abs=1e-5)
    assert m.margin == pytest.approx(0.6, abs=1e-5)


def test_below_threshold_is_unknown_without_person(people_gallery: Gallery, basis: np.ndarray) -> None:
    m = people_gallery.match(mix(basis, e0=0.4, e1=0.2))
    assert (m.person, m.decision, m.runner_up) == (None, "unknown", "bob")
    assert m.similarity == pytest.approx(0.4, abs=1e-5)
    assert m.margin == pytest.approx(0.2, abs=1e-5)


def test_two_people_above_threshold_within_margin_is_ambiguous(people_gallery: Gallery, basis: np.ndarray) -> None:
    m = people_gallery.match(mix(basis, e0=0.7, e1=0.65))
    assert (m.person, m.decision, m.runner_up) == ("alice", "ambiguous", "bob")
    assert m.margin == pytest.approx(0.05, abs=1e-5)


def test_two_people_above_threshold_beyond_margin_is_known(people_gallery: Gallery, basis: np.ndarray) -> None:
    m = people_gallery.match(mix(basis, e1=0.75, e0=0.6))
    assert (m.person, m.decision, m.runner_up) == ("bob", "known", "alice")
    assert m.margin == pytest.approx(0.15, abs=1e-5)


def test_best_template_of_a_person_counts(people_gallery: Gallery, basis: np.ndarray) -> None:
    # e3 is alice's second template; her first (e0) is orthogonal to the query.
    m = people_gallery.match(mix(basis, e3=0.8, e2=0.55))
    assert (m.person, m.decision, m.runner_up) == ("alice", "known", "carol")
    assert m.similarity == pytest.approx(0.8, abs=1e-5)
    assert m.margin == pytest.approx(0.25, abs=1e-5)


def test_runner_up_is_another_person_not_another_template(people_gallery: Gallery, basis: np.ndarray) -> None:
    # Both of alice's templates score high; the runner-up must still be a different person.
    m = people_gallery.match(mix(basis, e0=0.7, e3=0.6, e1=0.2))
    assert (m.person, m.runner_up) == ("alice", "bob")
    assert m.margin == pytest.approx(0.5, abs=1e-5)


def test_query_is_normalised_before_matching(people_gallery: Gallery, basis: np.ndarray) -> None:
    m = people_gallery.match(7.5 * mix(basis, e0=0.9, e1=0.3))
    assert m.similarity == pytest.approx(0.9, abs=1e-5)


def test_empty_gallery_is_unknown(gallery_path: Path, basis: np.ndarray) -> None:
    with Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM) as g:
        assert g.match(basis[0], Matcher(0.5, 0.1)) == Match(None, -1.0, 0.0, "unknown", None)


def test_single_person_margin_is_measured_against_minus_one(gallery_path: Path, basis: np.ndarray) -> None:
    with Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM, matcher=Matcher(0.5, 0.1)) as g:
        g.enroll("alice", [basis[0]], ["a.jpg"])
        m = g.match(mix(basis, e0=0.9))
    assert (m.person, m.decision, m.runner_up) == ("alice", "known", None)
    assert m.margin == pytest.approx(1.9, abs=1e-5)


@pytest.mark.parametrize(("threshold", "margin"), [(1.5, 0.1), (float("nan"), 0.1), (0.5, -0.1), (0.5, 3.0)])
def test_matcher_refuses_out_of_range_settings(threshold: float, margin: float) -> None:
    with pytest.raises(ConfigError) as info:
        Matcher(threshold, margin)
    assert "\n" not in str(info.value)


def test_match_without_matcher_is_refused(gallery_path: Path, basis: np.ndarray) -> None:
    with Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM) as g, pytest.raises(GalleryError):
        g.match(basis[0])


# -- input sanity ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("vector", "says"),
    [
        (np.ones(DIM - 1, np.float32), "shape (127,)"),
        (np.full(DIM, np.nan, np.float32), "NaN"),
        (np.r_[np.ones(DIM - 1), np.inf].astype(np.float32), "NaN or infinity"),
        (np.zeros(DIM, np.float32), "all zeros"),
    ],
)
def test_bad_vectors_refused_in_one_line(people_gallery: Gallery, vector: np.ndarray, says: str) -> None:
    before = people_gallery.version
    with pytest.raises(GalleryError) as info:
        people_gallery.enroll("dave", [vector], ["dave.jpg"])
    assert says in str(info.value) and "dave.jpg" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(GalleryError, match="query embedding"):
        people_gallery.match(vector)
    assert people_gallery.version == before
    assert "dave" not in [p.name for p in people_gallery.people()]


def test_mismatched_sources_refused(people_gallery: Gallery, basis: np.ndarray) -> None:
    with pytest.raises(GalleryError, match="2 embeddings but 1 source"):
        people_gallery.enroll("dave", [basis[5], basis[6]], ["dave.jpg"])


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "x" * 65])
def test_bad_names_refused(people_gallery: Gallery, basis: np.ndarray, name: str) -> None:
    with pytest.raises(GalleryError):
        people_gallery.enroll(name, [basis[5]], ["x.jpg"])


# -- the file --------------------------------------------------------------------------------------
def test_files_created_0600_even_with_open_umask(gallery_path: Path, basis: np.ndarray) -> None:
    old = os.umask(0)
    try:
        with Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM) as g:
            g.enroll("alice", [basis[0]], ["a.jpg"])
            wal = Path(f"{gallery_path}-wal")
            assert wal.exists(), "WAL mode expected"
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (gallery_path, wal)}
    finally:
        os.umask(old)
    assert modes == {gallery_path.name: 0o600, wal.name: 0o600}


def test_existing_world_readable_file_is_tightened(gallery_path: Path, basis: np.ndarray) -> None:
    with Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM) as g:
        g.enroll("alice", [basis[0]], ["a.jpg"])
    gallery_path.chmod(0o644)
    with Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM):
        assert stat.S_IMODE(gallery_path.stat().st_mode) == 0o600


def test_wal_mode_and_schema(people_gallery: Gallery, gallery_path: Path) -> None:
    con = sqlite3.connect(gallery_path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        meta = dict(con.execute("SELECT key, value FROM meta"))
        cols = [r[1] for r in con.execute("PRAGMA table_info(templates)")]
    finally:
        con.close()
    assert (
        meta["embedder_sha256"] == SHA_A
        and meta["embedding_size"] == str(DIM)
        and meta["schema"] == str(GALLERY_SCHEMA)
    )
    assert int(meta["version"]) == people_gallery.version == 3
    assert {"person_id", "vector", "source", "quality", "created"} <= set(cols)


def test_other_embedder_refused_naming_both_shas(people_gallery: Gallery, gallery_path: Path) -> None:
    people_gallery.close()
    with pytest.raises(GalleryError) as info:
        Gallery.open(gallery_path, embedder_sha256=SHA_B, embedding_size=DIM)
    line = str(info.value)
    assert SHA_A[:12] in line and SHA_B[:12] in line and "facelite enroll" in line and "\n" not in line


def test_not_a_gallery_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(GalleryError, match="not a gallery file"):
        Gallery.open(junk, embedder_sha256=SHA_A, embedding_size=DIM)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(GalleryError, match="not a facelite gallery"):
        Gallery.open(other, embedder_sha256=SHA_A, embedding_size=DIM)


def test_missing_directory_refused(tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match="directory does not exist"):
        Gallery.open(tmp_path / "nope" / "g.db", embedder_sha256=SHA_A, embedding_size=DIM)


# -- encryption ------------------------------------------------------------------------------------
def test_encrypted_round_trip_and_no_plaintext_vectors(gallery_path: Path, basis: np.ndarray) -> None:
    vectors = [basis[i] for i in range(6)]
    with Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM, key=KEY) as g:
        assert g.encrypted
        g.enroll("alice", vectors[:3], ["a1.jpg", "a2.jpg", "a3.jpg"])
        g.enroll("bob", vectors[3:], ["b1.jpg", "b2.jpg", "b3.jpg"])
        raw = file_bytes(gallery_path)
    for v in vectors:
        data = v.astype("<f4").tobytes()
        # Not the whole vector, nor any 16-byte window of it (4 consecutive floats).
        assert data not in raw
        assert not any(data[i : i + 16] in raw for i in range(0, len(data) - 16, 4))
    with Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM, key=KEY, matcher=Matcher(0.5, 0.1)) as g:
        assert len(g) == 6
        assert np.array_equal(g.index.rows_of("bob"), np.stack(vectors[3:]))
        m = g.match(mix(basis, e4=0.9, e0=0.2))
        assert (m.person, m.decision, m.runner_up) == ("bob", "known", "alice")


def test_plaintext_gallery_stores_raw_float32(gallery_path: Path, basis: np.ndarray) -> None:
    # The control for the test above: the byte search does find vectors when they are stored in clear.
    with Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM) as g:
        g.enroll("alice", [basis[0]], ["a.jpg"])
        assert basis[0].astype("<f4").tobytes() in file_bytes(gallery_path)


def test_key_mismatches_refused(gallery_path: Path, basis: np.ndarray) -> None:
    with Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM, key=KEY) as g:
        g.enroll("alice", [basis[0]], ["a.jpg"])
    with pytest.raises(GalleryError, match="encrypted but no key"):
        Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM)
    with pytest.raises(GalleryError, match="key does not match"):
        Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM, key=bytes(32))
    with pytest.raises(GalleryError, match="16, 24 or 32 bytes"):
        Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM, key=b"short")
    plain = gallery_path.with_name("plain.db")
    Gallery.open(plain, embedder_sha256=SHA_A, embedding_size=DIM).close()
    with pytest.raises(GalleryError, match="not encrypted but a key"):
        Gallery.open(plain, embedder_sha256=SHA_A, embedding_size=DIM, key=KEY)


# -- people, versions, erasure ---------------------------------------------------------------------
def test_people_listing(people_gallery: Gallery) -> None:
    infos = people_gallery.people()
    assert [(p.name, p.slug, p.templates) for p in infos] == [
        ("alice", "alice", 2),
        ("bob", "bob", 1),
        ("carol", "carol", 1),
    ]


def test_enrolment_timestamps_come_from_the_clock(gallery_path: Path, basis: np.ndarray) -> None:
    ticks = iter([1000.0, 2000.0])
    with Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM, clock=lambda: next(ticks)) as g:
        g.enroll("alice", [basis[0]], ["a.jpg"])
        g.enroll("alice", [basis[1]], ["b.jpg"])
        [info] = g.people()
    assert (info.created, info.last_enrolled, info.templates) == (1000.0, 2000.0, 2)


def test_version_bumps_once_per_change_and_not_on_failure(people_gallery: Gallery, basis: np.ndarray) -> None:
    v = people_gallery.version
    people_gallery.enroll("dave", [basis[5]], ["d.jpg"])
    assert people_gallery.version == v + 1
    people_gallery.rename("dave", "david")
    assert people_gallery.version == v + 2
    people_gallery.rename("david", "david")
    assert people_gallery.version == v + 2
    with pytest.raises(GalleryError, match="no person 'nobody'"):
        people_gallery.remove("nobody")
    assert people_gallery.version == v + 2
    people_gallery.remove("david")
    assert people_gallery.version == v + 3


def test_rename_moves_templates_and_refuses_clashes(people_gallery: Gallery, basis: np.ndarray) -> None:
    people_gallery.rename("bob", "Robert")
    m = people_gallery.match(mix(basis, e1=0.9))
    assert m.person == "Robert"
    with pytest.raises(GalleryError, match="already exists"):
        people_gallery.rename("Robert", "alice")
    people_gallery.enroll("José", [basis[5]], ["j.jpg"])
    with pytest.raises(GalleryError, match="same topic slug 'jose'"):
        people_gallery.enroll("Jose", [basis[6]], ["j2.jpg"])
    with pytest.raises(GalleryError, match="same topic slug"):
        people_gallery.rename("carol", "JOSE")


def test_remove_drops_person_from_matching(people_gallery: Gallery, basis: np.ndarray) -> None:
    people_gallery.remove("alice")
    m = people_gallery.match(mix(basis, e0=0.9, e1=0.3))
    assert m.person is None and m.decision == "unknown"
    assert [p.name for p in people_gallery.people()] == ["bob", "carol"]


@pytest.mark.parametrize("key", [None, KEY], ids=["plain", "encrypted"])
def test_forget_leaves_no_trace_in_the_file(gallery_path: Path, basis: np.ndarray, key: bytes | None) -> None:
    name = "Zelda Quimby"
    secret = [basis[10], basis[11]]
    with Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM, key=key, matcher=Matcher(0.5, 0.1)) as g:
        g.enroll("alice", [basis[0]], ["alice.jpg"])
        g.enroll(name, secret, ["zelda_quimby_1.jpg", "zelda_quimby_2.jpg"])
        g.enroll("bob", [basis[1]], ["bob.jpg"])
        before = file_bytes(gallery_path)
        assert name.encode() in before and b"zelda_quimby" in before  # control: the search works
        assert g.forget(name) is True
        after_open = file_bytes(gallery_path)
        assert g.match(mix(basis, e10=0.95)).decision == "unknown"
        assert g.match(mix(basis, e1=0.95)).person == "bob"
    for raw in (after_open, file_bytes(gallery_path)):
        assert name.encode() not in raw and b"zelda_quimby" not in raw
        for v in secret:
            assert v.astype("<f4").tobytes() not in raw


def test_other_connection_sees_changes_after_refresh(
    people_gallery: Gallery, gallery_path: Path, basis: np.ndarray
) -> None:
    with Gallery.open(gallery_path, embedder_sha256=SHA_A, embedding_size=DIM, matcher=Matcher(0.5, 0.1)) as agent:
        assert agent.refresh() is False
        people_gallery.enroll("dave", [basis[7]], ["d.jpg"])
        assert agent.match(mix(basis, e7=0.9)).person is None
        assert agent.refresh() is True
        assert agent.match(mix(basis, e7=0.9)).person == "dave"
        assert agent.version == people_gallery.version


# -- export / import -------------------------------------------------------------------------------
def test_export_import_round_trip_into_encrypted_gallery(
    people_gallery: Gallery, tmp_path: Path, basis: np.ndarray
) -> None:
    export = tmp_path / "export.json"
    assert people_gallery.export(export) == 4
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    with Gallery.open(
        tmp_path / "copy.db", embedder_sha256=SHA_A, embedding_size=DIM, key=KEY, matcher=Matcher(0.5, 0.1)
    ) as copy:
        assert copy.import_(export) == 4
        assert [(p.name, p.templates) for p in copy.people()] == [
            (p.name, p.templates) for p in people_gallery.people()
        ]
        for name in ("alice", "bob", "carol"):
            assert np.array_equal(copy.index.rows_of(name), people_gallery.index.rows_of(name))
        q = mix(basis, e0=0.7, e1=0.65)
        assert copy.match(q) == people_gallery.match(q)
        version = copy.version
        assert copy.import_(export) == 0  # idempotent
        assert copy.version == version


def test_import_from_other_embedder_refused(people_gallery: Gallery, tmp_path: Path) -> None:
    export = tmp_path / "export.json"
    people_gallery.export(export)
    with Gallery.open(tmp_path / "b.db", embedder_sha256=SHA_B, embedding_size=DIM) as other:
        with pytest.raises(GalleryError) as info:
            other.import_(export)
        assert SHA_A[:12] in str(info.value) and SHA_B[:12] in str(info.value)
        assert len(other) == 0


def test_corrupt_export_refused_before_writing(people_gallery: Gallery, tmp_path: Path) -> None:
    export = tmp_path / "export.json"
    people_gallery.export(export)
    text = export.read_text()
    first_vector = text.split('"vector": "')[1].split('"')[0]
    export.write_text(text.replace(first_vector, "!!notbase64!!"))
    with Gallery.open(tmp_path / "c.db", embedder_sha256=SHA_A, embedding_size=DIM) as g:
        with pytest.raises(GalleryError) as info:
            g.import_(export)
        assert "people[0].templates[0]" in str(info.value)
        assert len(g) == 0 and g.version == 0
        export.write_text("{not json")
        with pytest.raises(GalleryError, match="not valid JSON"):
            g.import_(export)
