"""Enrolled people and their face templates in SQLite (the matching itself: agent/recognition/matching.py).

The file is the only place biometric data lives on the device, so it is created 0600, every write is
one transaction (WAL, so the agent can keep matching while ``facelite enroll`` writes), and
``forget`` erases a person from the file bytes, not just from the tables. Vectors may be encrypted at
rest (AES-GCM, one nonce per row); names and source file names stay readable so the gallery can be
listed without the key.

A gallery is stamped with the embedder's sha256: vectors from another model live in another space,
so matching them would silently produce nonsense. Opening it with another model is refused.

The gallery keeps the template matrix the matcher runs on (agent/recognition/matching.py) and rebuilds it on every
change;
how the file sits on disk (schema, migration, key check, export format) is agent/recognition/galleryfile.py.

Corrections ("that was not Ada", ``facelite gallery reject``) are stored as **negatives** of a person: faces
that were announced as them and were someone else. A probe is refused for a person when its best similarity to
any of that person's negatives is higher than its best similarity to their templates (it is closer to the known
impostor than to the person); a refused person is out of the running and the open-set rule decides among the
others. Negatives are encrypted like templates, listed, exported, and erased by ``forget``.

Size: one class, because every write shares one transaction discipline (a WAL write, the in-memory index rebuilt
after commit) and one encryption rule; the value objects it returns are beside it. Matching is
agent/recognition/matching.py,
the file format agent/recognition/galleryfile.py.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from facelite.errors import ConfigError, GalleryError
from facelite.recognition.galleryfile import (
    EXPORT_FORMAT,
    EXPORT_SCHEMA,
    F32,
    NONCE_BYTES,
    configure,
    create_private,
    init_or_check,
    make_aead,
    meta_int,
    read_export,
)
from facelite.recognition.matching import IndexBuilder, Match, Matcher, TemplateIndex, check_vector
from facelite.recognition.names import normalize_name, slugify

if TYPE_CHECKING:
    from facelite.vision.embed import Embedder

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# -- value objects -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PersonInfo:
    name: str
    slug: str  # the name as it appears in MQTT topics (facelite.recognition.names.slugify)
    templates: int
    created: float  # epoch seconds of the first enrolment
    last_enrolled: float | None  # epoch seconds of the newest template
    negatives: int = 0  # corrections: faces rejected as this person (`facelite gallery reject`)


@dataclass(frozen=True)
class Enrollment:
    """Templates for one person; ``sources`` name the image each embedding came from."""

    person: str
    embeddings: Sequence[np.ndarray]
    sources: Sequence[str]
    qualities: Sequence[float] | None = None


@dataclass(frozen=True)
class Hygiene:
    """Template hygiene at enrolment (README, "Template hygiene").

    At most ``max_templates_per_person`` templates per person: the most central ones are kept (highest mean
    similarity to the person's other templates), so an outlier photo (another face, a bad crop) goes first.
    ``threshold_for(n)`` is the open-set threshold for a gallery of n templates (agent/recognition/openset.py): a lone
    template of a new person that would be recognised as someone else is refused, and people whose closest
    templates reach it are reported as look-alikes.
    """

    max_templates_per_person: int = 10
    threshold_for: Callable[[int], float] | None = None

    def __post_init__(self) -> None:
        if int(self.max_templates_per_person) != self.max_templates_per_person or self.max_templates_per_person < 1:
            raise ConfigError(
                f"must be a whole number >= 1, got {self.max_templates_per_person!r}",
                "gallery.max_templates_per_person",
            )


@dataclass(frozen=True)
class Refusal:
    """A template refused because it matches another enrolled person better than its own."""

    person: str
    source: str
    other: str
    other_similarity: float
    own_similarity: float | None  # None: the person has no other template (compared with the threshold)

    def line(self) -> str:
        own = (
            f"than {self.person}'s own templates ({self.own_similarity:.3f})"
            if self.own_similarity is not None
            else "than the match threshold, and there is no other template of them"
        )
        return (
            f"refused {self.source} for {self.person}: it matches {self.other} better ({self.other_similarity:.3f}) "
            f"{own}; check the photo is of {self.person}"
        )


@dataclass(frozen=True)
class LookAlike:
    """Two people whose closest templates reach the open-set threshold: either may be taken for the other."""

    person: str
    other: str
    similarity: float
    threshold: float

    def line(self) -> str:
        return (
            f"warning: {self.person} and {self.other} look alike at the current threshold: their closest templates "
            f"score {self.similarity:.3f} >= {self.threshold:.3f}; one may be announced as the other (correct it with "
            "`facelite gallery reject EVENT_ID`)"
        )


@dataclass(frozen=True)
class EnrollOutcome:
    person: str
    added: int
    refused: tuple[Refusal, ...]
    dropped: tuple[str, ...]  # sources of templates left out or removed to stay within the per-person limit
    lookalikes: tuple[LookAlike, ...]
    version: int


# -- validation helpers --------------------------------------------------------------------------
# -- the gallery ---------------------------------------------------------------------------------
class Gallery:
    """One gallery file. Open it with ``Gallery.for_embedder(path, embedder)`` (or ``Gallery.open`` with the embedder's
    sha256 and size when there is no model at hand); also a context manager."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        embedder_sha256: str,
        embedding_size: int,
        aead: Any | None,
        matcher: Matcher | None,
        clock: Callable[[], float],
    ) -> None:
        self._conn = conn
        self.path = path
        self.embedder_sha256 = embedder_sha256
        self.embedding_size = embedding_size
        self._aead = aead
        self._aad = f"facelite-template:{embedder_sha256}".encode()
        # Another associated data for negatives: a template blob moved into the negatives table fails to decrypt.
        self._neg_aad = f"facelite-negative:{embedder_sha256}".encode()
        self.matcher = matcher
        self._clock = clock
        self._lock = threading.Lock()
        self._version = 0
        self._index = TemplateIndex.empty(embedding_size)
        self._reload()

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def for_embedder(
        cls, path: str | Path, embedder: Embedder, *, key: bytes | None = None, matcher: Matcher | None = None
    ) -> Gallery:
        """The gallery for this embedder's vectors (stamped with its sha256 and size): the one way the agent, the CLI
        and the Python API open a gallery file."""
        size = int(embedder.manifest.embedding_size or 0)
        return cls.open(path, embedder_sha256=embedder.sha256, embedding_size=size, key=key, matcher=matcher)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        embedder_sha256: str,
        embedding_size: int,
        key: bytes | None = None,
        matcher: Matcher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Gallery:
        """Open or create the gallery at ``path`` for the embedder with this sha256.

        ``key`` (16/24/32 bytes) encrypts vectors at rest; a gallery is encrypted or not for life.
        ``matcher`` is the default decision rule for ``match``; ``clock`` stamps enrolments.
        """
        path = Path(path)
        sha = str(embedder_sha256).lower()
        if not _SHA256.match(sha):
            raise GalleryError(f"embedder sha256 {embedder_sha256!r} is not 64 hex digits", str(path))
        if int(embedding_size) <= 0:
            raise GalleryError(f"embedding size must be positive, got {embedding_size}", str(path))
        aead = make_aead(key, path)
        if not path.parent.is_dir():
            raise GalleryError("gallery directory does not exist", str(path.parent), "create it or choose another path")
        create_private(path)
        try:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise GalleryError(f"cannot open gallery: {exc}", str(path)) from None
        try:
            configure(conn, path)
            init_or_check(conn, path, sha, int(embedding_size), aead, key is not None)
            return cls(
                conn,
                path,
                embedder_sha256=sha,
                embedding_size=int(embedding_size),
                aead=aead,
                matcher=matcher,
                clock=clock,
            )
        except sqlite3.Error as exc:
            conn.close()
            raise GalleryError(f"cannot open gallery: {exc}", str(path)) from None
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """Bumped by every change (enrol, remove, rename, forget, import); events carry it."""
        return self._version

    @property
    def index(self) -> TemplateIndex:
        return self._index

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    def __len__(self) -> int:
        """Number of templates."""
        return self._index.size

    def match(self, vector: np.ndarray, matcher: Matcher | None = None) -> Match:
        """Open-set match of one embedding against every template (vectorised, no SQL)."""
        rule = matcher or self.matcher
        if rule is None:
            raise GalleryError("no matcher (threshold, margin) given for matching", str(self.path))
        v = check_vector(vector, self.embedding_size, "query embedding")
        return rule.match(self._index, v)

    def people(self) -> list[PersonInfo]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT p.name, COUNT(t.id), p.created, MAX(t.created), "
                "(SELECT COUNT(*) FROM negatives n WHERE n.person_id = p.id) FROM people p "
                "LEFT JOIN templates t ON t.person_id = p.id GROUP BY p.id ORDER BY p.name"
            ).fetchall()
        return [
            PersonInfo(n, slugify(n), int(c), float(cr), None if last is None else float(last), int(neg))
            for n, c, cr, last, neg in rows
        ]

    def refresh(self) -> bool:
        """Reload templates if another process (``facelite enroll``) changed the file; True when it did."""
        with self._lock:
            stored = meta_int(self._conn, "version")
        if stored == self._version:
            return False
        with self._lock:
            self._reload()
        log.info("gallery %s changed (version %d), %d templates loaded", self.path, self._version, len(self))
        return True

    # -- writing ---------------------------------------------------------------------------------
    def enroll(
        self,
        person: str,
        embeddings: Sequence[np.ndarray],
        sources: Sequence[str],
        qualities: Sequence[float] | None = None,
    ) -> int:
        """Add templates for ``person`` (created if new); returns how many were added."""
        return self.enroll_many([Enrollment(person, embeddings, sources, qualities)])

    def enroll_many(self, batch: Sequence[Enrollment]) -> int:
        """Enrol several people in one transaction (all or nothing); returns templates added."""
        prepared = [self._prepare(e) for e in batch]
        if not any(vecs for _, vecs, _, _ in prepared):
            raise GalleryError("nothing to enroll: no embeddings given", str(self.path))
        now = float(self._clock())
        with self._write() as cur:
            for name, vecs, sources, qualities in prepared:
                person_id = self._person_id(cur, name) or self._insert_person(cur, name, now)
                cur.executemany(
                    "INSERT INTO templates (person_id, vector, nonce, source, quality, created) VALUES (?,?,?,?,?,?)",
                    [(person_id, *self._seal(v), s, q, now) for v, s, q in zip(vecs, sources, qualities)],
                )
        added = sum(len(vecs) for _, vecs, _, _ in prepared)
        log.info("enrolled %d template(s) for %d person(s)", added, len(prepared))
        return added

    def remove(self, person: str) -> None:
        """Delete a person and their templates (rows only; ``forget`` also erases the file traces)."""
        name = normalize_name(person)
        with self._write() as cur:
            person_id = self._person_id(cur, name)
            if person_id is None:
                raise GalleryError(f"no person {name!r} in the gallery", str(self.path), "see `facelite gallery list`")
            cur.execute("DELETE FROM people WHERE id = ?", (person_id,))

    def rename(self, old: str, new: str) -> None:
        old_name, new_name = normalize_name(old), normalize_name(new)
        with self._write() as cur:
            person_id = self._person_id(cur, old_name)
            if person_id is None:
                raise GalleryError(f"no person {old_name!r} in the gallery", str(self.path))
            if old_name == new_name:
                raise _NothingToDo
            if self._person_id(cur, new_name) is not None:
                raise GalleryError(f"person {new_name!r} already exists", str(self.path), "remove or rename it first")
            self._check_slug(cur, new_name, ignore=old_name)
            cur.execute("UPDATE people SET name = ?, slug = ? WHERE id = ?", (new_name, slugify(new_name), person_id))

    def forget(self, person: str) -> bool:
        """Remove a person and erase every trace from the file bytes (right to be forgotten).

        secure_delete zeroes freed cells, VACUUM rewrites the file without free pages, and a TRUNCATE
        checkpoint empties the WAL that still holds the old page images. Returns False when another
        connection kept the WAL from being truncated (the rows are gone, the WAL is cleaned when it closes).
        """
        self.remove(person)
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.execute("VACUUM")
            busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.warning(
                "gallery %s: another process holds it open; its WAL is erased when that process closes", self.path
            )
        return not busy

    def add_templates(
        self,
        person: str,
        embeddings: Sequence[np.ndarray],
        sources: Sequence[str],
        qualities: Sequence[float] | None = None,
        *,
        hygiene: Hygiene,
    ) -> EnrollOutcome:
        """Enrol with template hygiene: refuse templates closer to someone else, keep the most central up to the
        limit (removing older ones if new ones are better), report look-alikes. Nothing written if nothing changes."""
        name, vecs, srcs, quals = self._prepare(Enrollment(person, embeddings, sources, qualities))
        if not vecs:
            raise GalleryError("nothing to enroll: no embeddings given", str(self.path))
        self.refresh()
        index = self._index
        others = [i for i, n in enumerate(index.names) if n != name]
        cand = np.stack(vecs)
        refused: list[Refusal] = []
        accepted: list[int] = []
        if others:
            own_rows = index.rows_of(name)
            scores = cand @ index.matrix.T  # [k, N]
            per_person = np.maximum.reduceat(scores, index.starts, axis=1)  # [k, P]
            within = cand @ cand.T
            np.fill_diagonal(within, -np.inf)
            lone_threshold = hygiene.threshold_for(index.size + len(vecs)) if hygiene.threshold_for else None
            for j in range(len(vecs)):
                k = max(others, key=lambda i: float(per_person[j, i]))
                other_best = float(per_person[j, k])
                own_scores = [float(x) for x in (own_rows @ cand[j])] + [
                    float(x) for x in within[j] if math.isfinite(x)
                ]
                own = max(own_scores) if own_scores else None
                if (own is not None and other_best > own) or (
                    own is None and lone_threshold is not None and other_best >= lone_threshold
                ):
                    refused.append(Refusal(name, srcs[j], index.names[k], other_best, own))
                else:
                    accepted.append(j)
        else:
            accepted = list(range(len(vecs)))
        added = 0
        dropped: list[str] = []
        if accepted:
            now = float(self._clock())
            with self._write() as cur:
                person_id = self._person_id(cur, name)
                old = (
                    []
                    if person_id is None
                    else cur.execute(
                        "SELECT id, vector, nonce, source FROM templates WHERE person_id = ? ORDER BY id", (person_id,)
                    ).fetchall()
                )
                pool: list[tuple[int | None, np.ndarray, str]] = [
                    (int(i), self._open_blob(b, n), str(src)) for i, b, n, src in old
                ] + [(None, vecs[j], srcs[j]) for j in accepted]
                keep = _most_central([v for _, v, _ in pool], hygiene.max_templates_per_person)
                dropped = [pool[i][2] for i in range(len(pool)) if i not in keep]
                gone = [pool[i][0] for i in range(len(pool)) if i not in keep and pool[i][0] is not None]
                fresh = [accepted[i - len(old)] for i in sorted(keep) if i >= len(old)]
                if not fresh and not gone:
                    raise _NothingToDo
                if person_id is None:
                    person_id = self._insert_person(cur, name, now)
                cur.executemany("DELETE FROM templates WHERE id = ?", [(i,) for i in gone])
                cur.executemany(
                    "INSERT INTO templates (person_id, vector, nonce, source, quality, created) VALUES (?,?,?,?,?,?)",
                    [(person_id, *self._seal(vecs[j]), srcs[j], quals[j], now) for j in fresh],
                )
                added = len(fresh)
        return EnrollOutcome(name, added, tuple(refused), tuple(dropped), self.lookalikes(name, hygiene), self._version)

    def lookalikes(self, person: str, hygiene: Hygiene) -> tuple[LookAlike, ...]:
        """People whose closest template to ``person``'s reaches the open-set threshold for the gallery's size."""
        if hygiene.threshold_for is None:
            return ()
        index = self._index
        person = normalize_name(person)
        mine = index.rows_of(person)
        if not mine.shape[0]:
            return ()
        threshold = float(hygiene.threshold_for(index.size))
        out = []
        for other in index.names:
            if other == person:
                continue
            best = float(np.max(mine @ index.rows_of(other).T))
            if best >= threshold:
                out.append(LookAlike(person, other, best, threshold))
        return tuple(sorted(out, key=lambda x: -x.similarity))

    def add_negative(self, person: str, vector: np.ndarray, *, source: str, event_id: str | None) -> bool:
        """Store a face that was announced as ``person`` and was someone else (a correction).

        Returns False when this event was already rejected (nothing written)."""
        name = normalize_name(person)
        vec = check_vector(vector, self.embedding_size, f"negative for {name} ({source})")
        written = False
        with self._write() as cur:
            person_id = self._person_id(cur, name)
            if person_id is None:
                raise GalleryError(f"no person {name!r} in the gallery", str(self.path), "see `facelite gallery list`")
            if (
                event_id is not None
                and cur.execute("SELECT 1 FROM negatives WHERE event_id = ?", (event_id,)).fetchone()
            ):
                raise _NothingToDo
            cur.execute(
                "INSERT INTO negatives (person_id, vector, nonce, source, event_id, created) VALUES (?,?,?,?,?,?)",
                (person_id, *self._seal(vec, negative=True), str(source), event_id, float(self._clock())),
            )
            written = True
        if written:
            log.info("negative added for %s (%s)", name, source)
        return written

    # -- export / import -------------------------------------------------------------------------
    def export(self, path: str | Path) -> int:
        """Write every person and template to a portable JSON file (vectors in clear: keep it private)."""
        out = Path(path)
        with self._lock:
            people = self._conn.execute("SELECT id, name, created FROM people ORDER BY name").fetchall()
            templates = self._conn.execute(
                "SELECT person_id, vector, nonce, source, quality, created FROM templates ORDER BY person_id, id"
            ).fetchall()
            negatives = self._conn.execute(
                "SELECT person_id, vector, nonce, source, event_id, created FROM negatives ORDER BY person_id, id"
            ).fetchall()
        neg_by_person: dict[int, list[dict[str, Any]]] = {}
        for person_id, blob, nonce, source, event_id, created in negatives:
            vec = self._open_blob(blob, nonce, negative=True)
            neg_by_person.setdefault(person_id, []).append(
                {
                    "vector": base64.b64encode(vec.astype(F32).tobytes()).decode("ascii"),
                    "source": source,
                    "event_id": event_id,
                    "created": created,
                }
            )
        by_person: dict[int, list[dict[str, Any]]] = {}
        for person_id, blob, nonce, source, quality, created in templates:
            vec = self._open_blob(blob, nonce)
            by_person.setdefault(person_id, []).append(
                {
                    "vector": base64.b64encode(vec.astype(F32).tobytes()).decode("ascii"),
                    "source": source,
                    "quality": quality,
                    "created": created,
                }
            )
        doc = {
            "format": EXPORT_FORMAT,
            "schema": EXPORT_SCHEMA,
            "embedder_sha256": self.embedder_sha256,
            "embedding_size": self.embedding_size,
            "gallery_version": self._version,
            "people": [
                {
                    "name": name,
                    "created": created,
                    "templates": by_person.get(pid, []),
                    "negatives": neg_by_person.get(pid, []),
                }
                for pid, name, created in people
            ],
        }
        tmp = out.with_name(out.name + ".tmp")
        tmp.unlink(missing_ok=True)
        create_private(tmp)
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(out)
        count = sum(len(v) for v in by_person.values())
        log.info("exported %d people, %d templates to %s", len(people), count, out)
        return count

    def import_(self, path: str | Path) -> int:
        """Add people and templates from an export of the same embedder; returns templates added.

        Templates already present (same person, same vector) are skipped, so importing twice is harmless.
        """
        src = Path(path)
        people = read_export(src, self.embedder_sha256, self.embedding_size)
        added = added_negatives = 0
        with self._write() as cur:
            for name, created, templates, negatives in people:
                existing = {row.tobytes() for row in self._index.rows_of(name)}
                person_id = self._person_id(cur, name) or self._insert_person(cur, name, created)
                fresh = []
                for t in templates:
                    if t[0].tobytes() not in existing:
                        existing.add(t[0].tobytes())
                        fresh.append(t)
                cur.executemany(
                    "INSERT INTO templates (person_id, vector, nonce, source, quality, created) VALUES (?,?,?,?,?,?)",
                    [(person_id, *self._seal(v), s, q, c) for v, s, q, c in fresh],
                )
                added += len(fresh)
                known = {row.tobytes() for row in self._index.negatives_of(name)}
                for vec, source, event_id, created_n in negatives:
                    if vec.tobytes() in known or (
                        event_id is not None
                        and cur.execute("SELECT 1 FROM negatives WHERE event_id = ?", (event_id,)).fetchone()
                    ):
                        continue
                    known.add(vec.tobytes())
                    cur.execute(
                        "INSERT INTO negatives (person_id, vector, nonce, source, event_id, created) "
                        "VALUES (?,?,?,?,?,?)",
                        (person_id, *self._seal(vec, negative=True), source, event_id, created_n),
                    )
                    added_negatives += 1
            if added == 0 and added_negatives == 0:
                raise _NothingToDo
        log.info("imported %d template(s) and %d negative(s) from %s", added, added_negatives, src)
        return added

    # -- internals -------------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One IMMEDIATE transaction that bumps the version; the index is rebuilt after commit."""
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")  # waits busy_timeout for another writer (facelite enroll)
                yield cur
                cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")
                cur.execute("COMMIT")
            except _NothingToDo:
                self._rollback()
                return
            except sqlite3.Error as exc:
                self._rollback()
                raise GalleryError(f"gallery write failed: {exc}", str(self.path)) from None
            except BaseException:
                self._rollback()
                raise
            self._reload()

    def _rollback(self) -> None:
        # SQLite rolls back by itself on some errors (disk full); a second ROLLBACK would raise.
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _reload(self) -> None:
        """Rebuild the in-memory matrix from the file (caller holds the lock or is the constructor)."""
        # One read transaction: the version and the rows come from the same snapshot, so a commit by
        # another process in between cannot leave us with new rows under an old version (or vice versa).
        self._conn.execute("BEGIN")
        try:
            version = meta_int(self._conn, "version")
            rows = self._conn.execute(
                "SELECT p.name, t.vector, t.nonce FROM templates t JOIN people p ON p.id = t.person_id "
                "ORDER BY p.id, t.id"
            ).fetchall()
            negatives = self._conn.execute(
                "SELECT p.name, n.vector, n.nonce FROM negatives n JOIN people p ON p.id = n.person_id ORDER BY n.id"
            ).fetchall()
        finally:
            self._conn.execute("COMMIT")
        builder = IndexBuilder(self.embedding_size)
        for name, blob, nonce in rows:
            builder.add(name, self._open_blob(blob, nonce))
        self._index = builder.build(
            [(name, self._open_blob(blob, nonce, negative=True)) for name, blob, nonce in negatives]
        )
        self._version = version

    def _prepare(self, e: Enrollment) -> tuple[str, list[np.ndarray], list[str], list[float | None]]:
        name = normalize_name(e.person)
        if len(e.embeddings) != len(e.sources):
            raise GalleryError(f"{len(e.embeddings)} embeddings but {len(e.sources)} source names", name)
        qualities: list[float | None] = [None] * len(e.embeddings)
        if e.qualities is not None:
            if len(e.qualities) != len(e.embeddings):
                raise GalleryError(f"{len(e.embeddings)} embeddings but {len(e.qualities)} qualities", name)
            qualities = [float(q) for q in e.qualities]
        vecs = [
            check_vector(v, self.embedding_size, f"embedding {i} ({e.sources[i]}) of {name}")
            for i, v in enumerate(e.embeddings)
        ]
        return name, vecs, [str(s) for s in e.sources], qualities

    def _person_id(self, cur: sqlite3.Cursor, name: str) -> int | None:
        row = cur.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    def _insert_person(self, cur: sqlite3.Cursor, name: str, created: float) -> int:
        self._check_slug(cur, name, ignore=None)
        cur.execute("INSERT INTO people (name, slug, created) VALUES (?, ?, ?)", (name, slugify(name), created))
        return int(cur.lastrowid or 0)

    def _check_slug(self, cur: sqlite3.Cursor, name: str, ignore: str | None) -> None:
        # Two people sharing a topic slug would overwrite each other's presence in Home Assistant
        # (the UNIQUE column enforces it; this check turns it into a clear message).
        slug = slugify(name)
        row = cur.execute("SELECT name FROM people WHERE slug = ?", (slug,)).fetchone()
        if row is not None and row[0] not in (ignore, name):
            raise GalleryError(
                f"person name {name!r} has the same topic slug {slug!r} as {row[0]!r}",
                str(self.path),
                "choose a name that differs in letters or digits",
            )

    def _seal(self, vector: np.ndarray, *, negative: bool = False) -> tuple[bytes, bytes | None]:
        raw = vector.astype(F32).tobytes()
        if self._aead is None:
            return raw, None
        nonce = os.urandom(NONCE_BYTES)
        return self._aead.encrypt(nonce, raw, self._neg_aad if negative else self._aad), nonce

    def _open_blob(self, blob: bytes, nonce: bytes | None, *, negative: bool = False) -> np.ndarray:
        if self._aead is not None:
            if nonce is None:
                raise GalleryError("encrypted gallery holds an unencrypted template", str(self.path), "file tampered?")
            from cryptography.exceptions import InvalidTag

            try:
                blob = self._aead.decrypt(nonce, blob, self._neg_aad if negative else self._aad)
            except InvalidTag:
                raise GalleryError(
                    "a template cannot be decrypted (wrong key or tampered file)", str(self.path)
                ) from None
        elif nonce is not None:
            raise GalleryError("plaintext gallery holds an encrypted template", str(self.path), "file tampered?")
        if len(blob) != self.embedding_size * 4:
            raise GalleryError(
                f"a template has {len(blob)} bytes, expected {self.embedding_size * 4}", str(self.path), "corrupt file"
            )
        return np.frombuffer(blob, F32).astype(np.float32)


class _NothingToDo(Exception):
    """Raised inside a write to roll back without bumping the version (nothing changed)."""


# -- module helpers ------------------------------------------------------------------------------
def _most_central(vectors: Sequence[np.ndarray], limit: int) -> set[int]:
    """Indices of the ``limit`` most central vectors: drop the one with the lowest mean similarity to the
    others, one at a time (recomputed after each drop); ties drop the later one (a newer photo, if equal)."""
    keep = list(range(len(vectors)))
    if len(keep) <= limit:
        return set(keep)
    m = np.stack(vectors).astype(np.float64)
    sims = m @ m.T
    while len(keep) > limit:
        sub = sims[np.ix_(keep, keep)]
        mean = (sub.sum(axis=1) - np.diag(sub)) / max(len(keep) - 1, 1)
        worst = min(range(len(keep)), key=lambda i: (mean[i], -keep[i]))
        keep.pop(worst)
    return set(keep)
