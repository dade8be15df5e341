"""Recurring strangers: the faces of unknown visits, clustered, so someone seen on two visits can be enrolled.

Opt-in (``[strangers] enabled``). When a visit that was never recognised ends (its ``left`` event names no one),
the agent keeps the visit's best-quality embedding and aligned crop here: ``strangers.sqlite`` in its state
folder (beside the spool and ``event_faces.sqlite``), mode 0600.

- Clustering is online nearest-neighbour: a new visit joins the cluster holding the most similar stored face when
  that similarity reaches the threshold (read off the embedder's calibration curve at a per-comparison
  false-accept rate, ``strangers.cluster_far``), else it starts a new cluster. ``nearest_cluster`` is the one
  rule, used by the agent and by ``agent/tools/bench/strangers.py`` that measures it on LFW.
- Clusters are numbered ``k`` = 1, 2, ... and a number is never reused, so ``facelite enroll NAME
  --from-unknown k`` cannot enrol a different person than the one the message named.
- A cluster is announced once it holds ``min_visits`` separate visits (different tracks, not overlapping in time,
  ``min_gap_s`` apart): a retained ``<base>/<device>/unknown/<k>`` message, cleared (empty retained payload) when the
  cluster is enrolled, dropped or expires. The store remembers what it last announced per cluster, so the agent
  publishes only changes and clears, after a restart, what the CLI erased while it was stopped.
- Bounded (``max_visits``, oldest erased first) and expiring (``keep_s``, default 7 days). An erased cluster keeps
  its number and why it went (no face, no time), so the CLI can say "expired" or "enrolled" rather than "unknown".
- Encrypted when the gallery is: AES-GCM with the gallery's key, the visit id and the embedder in the associated
  data, vector and crop sealed separately.

The agent writes, the CLI reads and erases: SQLite in WAL mode with a busy timeout serialises them. A write that
fails (disk full, read-only, corrupt file) is logged once and never stops the agent.

Size: the store (encrypted rows, expiry, bound) and the clustering rule it applies on every insert are one unit: a
visit's cluster is decided inside the same transaction that stores it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facelite.errors import GalleryError
from facelite.recognition.statefile import PrivateStore

# The AES-GCM opener (key length checked, one line on a bad key) is event faces' own: one rule for both stores.
from facelite.service.events import Topics, utc_iso
from facelite.service.messages import Message

log = logging.getLogger(__name__)

STORE_NAME = "strangers.sqlite"
_F32 = np.dtype("<f4")
_NONCE_BYTES = 12
_TOMBSTONES = 1000  # erased clusters remembered (number and reason only)
_K = re.compile(r"^\s*[0-9]{1,9}\s*$")

LIVE, ENROLLED, DROPPED, EXPIRED = "live", "enrolled", "dropped", "expired"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clusters (
    k INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    status TEXT NOT NULL,
    detail TEXT,
    announced TEXT
);
CREATE TABLE IF NOT EXISTS visits (
    vid TEXT PRIMARY KEY,
    k INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    camera TEXT NOT NULL,
    embedder_sha256 TEXT NOT NULL,
    quality REAL NOT NULL,
    vector BLOB NOT NULL,
    vnonce BLOB,
    crop BLOB,
    cnonce BLOB
);
CREATE INDEX IF NOT EXISTS visits_k ON visits(k);
CREATE INDEX IF NOT EXISTS visits_last ON visits(last_seen)
"""


@dataclass(frozen=True)
class Visit:
    """One unknown visit: when, where, and its best-quality face (unit embedding, aligned crop)."""

    first_seen: float  # epoch seconds
    last_seen: float
    camera: str
    embedder_sha256: str
    vector: np.ndarray
    quality: float
    crop: np.ndarray | None = None  # aligned BGR crop, kept so a person can see whom they would enrol


@dataclass(frozen=True)
class StrangerPolicy:
    threshold: float  # a visit joins a cluster when its best similarity to the cluster reaches this
    keep_s: float = 7 * 86400.0
    max_visits: int = 500
    min_visits: int = 2
    min_gap_s: float = 0.0  # separate visits: the later starts at least this long after the earlier ended


@dataclass(frozen=True)
class Cluster:
    k: int
    visits: int  # separate visits
    faces: int  # stored faces (one per visit)
    first_seen: float
    last_seen: float
    cameras: tuple[str, ...]

    def payload(self) -> dict[str, Any]:
        """The retained message body (the MQTT contract of ``unknown/<k>``)."""
        return {
            "k": self.k,
            "visits": self.visits,
            "first_seen": utc_iso(self.first_seen),
            "last_seen": utc_iso(self.last_seen),
            "cameras": list(self.cameras),
        }


@dataclass(frozen=True)
class ClusterFaces:
    cluster: Cluster
    vectors: np.ndarray  # [n, dim], best quality first
    qualities: tuple[float, ...]
    embedder_sha256: str


def store_path(spool_path: Path) -> Path:
    """The store lives in the agent's state folder, beside the spool."""
    return Path(spool_path).with_name(STORE_NAME)


def check_cluster_id(text: object) -> int:
    """A cluster number as the unknown message carries it, or a one-line error."""
    if not isinstance(text, (str, int)) or isinstance(text, bool) or not _K.match(str(text)) or int(text) < 1:
        raise GalleryError(
            f"{str(text)[:60]!r} is not an unknown person's number",
            "--from-unknown",
            "give the k of an unknown/<k> message (a whole number >= 1; `facelite gallery unknowns` lists them)",
        )
    return int(text)


def nearest_cluster(vectors: np.ndarray, owners: np.ndarray, vector: np.ndarray, threshold: float) -> int | None:
    """The cluster of the stored face most similar to ``vector`` when it reaches ``threshold``, else None.

    ``vectors`` [M, dim] unit rows, ``owners`` [M] their clusters. Nearest neighbour rather than a centroid: a
    stranger seen from several angles stays one cluster, and the threshold keeps the meaning of the calibration
    curve (one comparison's false-accept rate)."""
    if len(vectors) == 0:
        return None
    scores = vectors @ np.asarray(vector, np.float32)
    best = int(np.argmax(scores))
    return int(owners[best]) if float(scores[best]) >= threshold else None


def separate_visits(spans: Sequence[tuple[float, float]], min_gap_s: float = 0.0) -> int:
    """How many separate visits (first_seen, last_seen) spans make: overlapping ones (the same person on two
    cameras at once, or a track split in two) count once, and so do ones closer than ``min_gap_s``."""
    count, end = 0, -np.inf
    for first, last in sorted(spans):
        if first >= end + min_gap_s or count == 0:
            count += 1
        end = max(end, last)
    return count


def unknown_message(topics: Topics, k: int, cluster: Cluster | None) -> Message:
    """Retained ``unknown/<k>``: the cluster's summary, or an empty payload that clears it."""
    body = b"" if cluster is None else json.dumps(cluster.payload(), separators=(",", ":")).encode()
    return Message(topics.unknown(k), body, qos=1, retain=True)


class StrangerStore(PrivateStore[StrangerPolicy]):
    """One store file. ``key`` (the gallery key, or None) encrypts faces and crops."""

    SCHEMA = _SCHEMA

    def _aad(self, vid: str, sha: str, part: str) -> bytes:
        return f"facelite-stranger:{sha}:{vid}:{part}".encode()

    def _seal(self, raw: bytes, vid: str, sha: str, part: str) -> tuple[bytes, bytes | None]:
        if self._aead is None:
            return raw, None
        nonce = os.urandom(_NONCE_BYTES)
        return self._aead.encrypt(nonce, raw, self._aad(vid, sha, part)), nonce

    def _open(self, blob: bytes, nonce: bytes | None, vid: str, sha: str, part: str) -> bytes:
        if self._aead is None:
            if nonce is not None:
                raise GalleryError("stranger store is encrypted but no gallery key is set", str(self.path))
            return bytes(blob)
        if nonce is None:
            raise GalleryError("stranger store holds an unencrypted face but a key is set", str(self.path))
        from cryptography.exceptions import InvalidTag

        try:
            return bytes(self._aead.decrypt(nonce, blob, self._aad(vid, sha, part)))
        except InvalidTag:
            raise GalleryError(
                "a stranger's face cannot be decrypted (wrong key or tampered file)", str(self.path)
            ) from None

    def _write_failed(self, exc: BaseException, what: str) -> None:
        if not self._failed:
            log.warning("stranger store %s cannot be written (%s): %s", self.path, str(exc).splitlines()[0], what)
        self._failed = True

    def _write_ok(self) -> None:
        if self._failed:
            log.info("stranger store %s writable again", self.path)
        self._failed = False

    # -- agent side ------------------------------------------------------------------------------
    def add(self, visit: Visit) -> int | None:
        """Keep one unknown visit; its cluster's number, or None (logged once) when the file cannot be written."""
        vid = str(uuid.uuid4())
        sha = visit.embedder_sha256
        vector = np.asarray(visit.vector, _F32).reshape(-1)
        blob, vnonce = self._seal(vector.tobytes(), vid, sha, "vector")
        crop, cnonce = None, None
        if visit.crop is not None:
            import cv2

            ok, png = cv2.imencode(".png", visit.crop)
            if ok:
                crop, cnonce = self._seal(png.tobytes(), vid, sha, "crop")
        try:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._prune(conn)
                vectors, owners = self._live_vectors(conn, sha, vector.size)
                k = nearest_cluster(vectors, owners, vector, self.policy.threshold)
                if k is None:
                    k = int(
                        conn.execute(
                            "INSERT INTO clusters (created, status) VALUES (?, ?)", (float(self._clock()), LIVE)
                        ).lastrowid
                        or 0
                    )
                row = (vid, k, visit.first_seen, visit.last_seen, visit.camera, sha, float(visit.quality))
                conn.execute("INSERT INTO visits VALUES (?,?,?,?,?,?,?,?,?,?,?)", (*row, blob, vnonce, crop, cnonce))
                self._bound(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError, GalleryError) as exc:
            self._write_failed(exc, "unknown visits are not kept for recurring strangers until it can")
            return None
        self._write_ok()
        return k

    def _live_vectors(self, conn: sqlite3.Connection, sha: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        rows = conn.execute("SELECT vid, k, vector, vnonce FROM visits WHERE embedder_sha256 = ?", (sha,)).fetchall()
        vectors = [np.frombuffer(self._open(b, n, vid, sha, "vector"), _F32) for vid, _, b, n in rows]
        kept = [(int(k), v) for (_, k, _, _), v in zip(rows, vectors, strict=True) if v.size == dim]
        if not kept:
            return np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
        return np.stack([v for _, v in kept]).astype(np.float32), np.array([k for k, _ in kept], np.int64)

    def _prune(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM visits WHERE last_seen < ?", (float(self._clock()) - self.policy.keep_s,))
        self._close_empty(conn)

    def _bound(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "DELETE FROM visits WHERE vid IN (SELECT vid FROM visits ORDER BY last_seen DESC LIMIT -1 OFFSET ?)",
            (self.policy.max_visits,),
        )
        self._close_empty(conn)

    def _close_empty(self, conn: sqlite3.Connection) -> None:
        """Live clusters left without a face have expired (by age or by the bound); old tombstones go."""
        conn.execute(
            "UPDATE clusters SET status = ?, detail = NULL WHERE status = ? AND k NOT IN (SELECT k FROM visits)",
            (EXPIRED, LIVE),
        )
        conn.execute(
            "DELETE FROM clusters WHERE k IN (SELECT k FROM clusters WHERE status != ? AND announced IS NULL "
            "ORDER BY k DESC LIMIT -1 OFFSET ?)",
            (LIVE, _TOMBSTONES),
        )

    def sync(self, topics: Topics, *, republish: bool = False) -> list[Message]:
        """Expire what is due and return the retained messages that bring the broker in line with the store:
        clusters newly announced or changed, and clears for clusters gone since they were announced.
        ``republish`` (at the agent's start) repeats every current announcement too: a broker restarted without
        persistence has lost them, and the sink only re-publishes what this process published."""
        try:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._prune(conn)
                wanted = {c.k: c for c in self._clusters(conn) if c.visits >= self.policy.min_visits}
                out: list[Message] = []
                for k, announced in conn.execute("SELECT k, announced FROM clusters").fetchall():
                    cluster = wanted.get(int(k))
                    body = json.dumps(cluster.payload(), sort_keys=True) if cluster is not None else None
                    if body != announced or (republish and cluster is not None):
                        out.append(unknown_message(topics, int(k), cluster))
                        conn.execute("UPDATE clusters SET announced = ? WHERE k = ?", (body, k))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            self._write_failed(exc, "unknown person messages are not updated until it can")
            return []
        if out:  # a sync that wrote nothing proves nothing about a full disk: only a real write clears the failure
            self._write_ok()
        return out

    # -- CLI side --------------------------------------------------------------------------------
    def _clusters(self, conn: sqlite3.Connection) -> list[Cluster]:
        rows = conn.execute(
            "SELECT k, first_seen, last_seen, camera FROM visits ORDER BY k, first_seen, last_seen"
        ).fetchall()
        by_k: dict[int, list[tuple[float, float, str]]] = {}
        for k, first, last, camera in rows:
            by_k.setdefault(int(k), []).append((float(first), float(last), str(camera)))
        return [
            Cluster(
                k,
                separate_visits([(f, la) for f, la, _ in spans], self.policy.min_gap_s),
                len(spans),
                min(f for f, _, _ in spans),
                max(la for _, la, _ in spans),
                tuple(sorted({c for _, _, c in spans})),
            )
            for k, spans in sorted(by_k.items())
        ]

    def clusters(self) -> list[Cluster]:
        """Every live cluster (announced or not yet), oldest number first."""
        if not self.path.exists():
            return []
        try:
            conn = self._connect()
            self._prune(conn)
            return self._clusters(conn)
        except sqlite3.Error as exc:
            raise GalleryError(f"stranger store cannot be read: {exc}", str(self.path)) from None

    def faces(self, k: int) -> ClusterFaces:
        """The faces of an announced cluster, best quality first; one-line GalleryError otherwise."""
        cluster = self.require(k)
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT vid, embedder_sha256, quality, vector, vnonce FROM visits WHERE k = ? ORDER BY quality DESC",
            (cluster.k,),
        ).fetchall()
        shas = {str(sha) for _, sha, _, _, _ in rows}
        if len(shas) != 1:
            raise GalleryError(f"unknown person {k} was seen through {len(shas)} different models", str(self.path))
        vectors = np.stack([np.frombuffer(self._open(b, n, vid, sha, "vector"), _F32) for vid, sha, _, b, n in rows])
        return ClusterFaces(cluster, vectors.astype(np.float32), tuple(float(q) for _, _, q, _, _ in rows), shas.pop())

    def crops(self, k: int) -> list[bytes]:
        """The PNG crops of a cluster's visits (decrypted), best quality first."""
        cluster = self.require(k)
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT vid, embedder_sha256, crop, cnonce FROM visits WHERE k = ? AND crop IS NOT NULL "
            "ORDER BY quality DESC",
            (cluster.k,),
        ).fetchall()
        return [self._open(b, n, vid, sha, "crop") for vid, sha, b, n in rows]

    def require(self, k: int) -> Cluster:
        """The live cluster ``k`` with at least ``min_visits`` separate visits, or why not as one line."""
        k = check_cluster_id(k)
        where = str(self.path)
        if not self.path.exists():
            raise GalleryError(
                f"no unknown person {k}: no strangers are kept here",
                where,
                "enable [strangers] in the agent's configuration and let it run",
            )
        try:
            conn = self._connect()
            self._prune(conn)
            row = conn.execute("SELECT status, detail FROM clusters WHERE k = ?", (k,)).fetchone()
            cluster = next((c for c in self._clusters(conn) if c.k == k), None)
        except sqlite3.Error as exc:
            raise GalleryError(f"stranger store cannot be read: {exc}", where) from None
        fix = "`facelite gallery unknowns` lists the unknown people kept now"
        if row is None:
            raise GalleryError(f"no unknown person {k}", where, fix)
        status, detail = str(row[0]), row[1]
        if status == EXPIRED:
            raise GalleryError(
                f"unknown person {k} has expired: their faces were erased (kept {self.policy.keep_s / 86400:g} "
                f"day(s), at most {self.policy.max_visits} visits)",
                where,
                fix,
            )
        if status == ENROLLED:
            raise GalleryError(f"unknown person {k} was already enrolled as {detail}", where, fix)
        if status == DROPPED:
            raise GalleryError(f"unknown person {k} was dropped", where, fix)
        if cluster is None or cluster.visits < self.policy.min_visits:
            seen = cluster.visits if cluster is not None else 0
            raise GalleryError(
                f"unknown person {k} was seen on {seen} visit(s) only, at least {self.policy.min_visits} are needed",
                where,
                "wait until they come back (the unknown/<k> message appears then)",
            )
        return cluster

    def erase(self, k: int, status: str, detail: str | None = None) -> int:
        """Erase a cluster's faces from the file bytes (enrolled or dropped); its number is kept with ``status``
        so the agent clears its message and the CLI can say what happened. Returns the faces erased."""
        try:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.execute("DELETE FROM visits WHERE k = ?", (k,))
                conn.execute("UPDATE clusters SET status = ?, detail = ? WHERE k = ?", (status, detail, k))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise GalleryError(f"stranger store cannot be updated: {exc}", str(self.path)) from None
        try:
            self._scrub(conn)
        except sqlite3.Error as exc:
            # The rows are gone and secure_delete zeroed their cells; only the rewrite (free pages, WAL) failed.
            log.warning("stranger store %s not compacted after erasing (%s): done at the next erase", self.path, exc)
        return int(cur.rowcount or 0)

    def forget_like(self, templates: np.ndarray, embedder_sha256: str, person: str) -> int:
        """Erase every cluster holding a face that matches one of ``templates`` at the clustering threshold
        (a forgotten person's earlier unknown visits); returns the faces erased."""
        if not self.path.exists() or len(templates) == 0:
            return 0
        try:
            conn = self._connect()
            vectors, owners = self._live_vectors(conn, embedder_sha256, int(templates.shape[1]))
            hits: list[int] = []
            if len(vectors):
                best = (vectors @ np.asarray(templates, np.float32).T).max(axis=1)
                hits = sorted({int(owners[i]) for i in np.flatnonzero(best >= self.policy.threshold)})
        except sqlite3.Error as exc:
            raise GalleryError(f"stranger store cannot be read: {exc}", str(self.path)) from None
        return sum(self.erase(k, DROPPED, f"forgotten with {person}") for k in hits)

    def _scrub(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
