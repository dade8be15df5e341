"""The faces behind recent ``recognized`` and ``unknown`` events, so a user can say "that was not Ada" or
"that stranger is Lee" later.

``facelite gallery reject EVENT_ID`` turns a recognized event's face into a negative example of the person it was
announced as (agent/recognition/gallery.py); ``facelite enroll NAME --from-event EVENT_ID`` turns an event's face
into a template
of NAME (agent/recognition/enrolment.py). The event on MQTT carries no embedding, so the agent keeps one per event here:
``event_faces.sqlite`` in its state folder (beside the spool and ``presence.json``), mode 0600.

- A recognized event's row names its person; an unknown event's row has no person but a vector. An expired row has
  neither (a tombstone), so "unknown event", "expired" and "nobody was named" stay three different answers.
- Bounded: at most ``gallery.event_faces_max`` faces of either kind (oldest dropped first) and for
  ``gallery.event_faces_keep_s`` (default 3 days; 0 keeps nothing). An expired face is erased but its event id is
  remembered (no vector, no person) so `reject` can say "expired" rather than "unknown"; those ids are bounded too.
- Encrypted when the gallery is: AES-GCM with the gallery's key, the event id and embedder in the associated data.
- Forget means gone: faces announced as a forgotten person, or enrolled as them from the event, are erased
  (``secure_delete`` + ``VACUUM``).
- The face kept is the best-quality one embedded during the visit before it was announced.

The agent writes, the CLI reads (and erases on forget): SQLite in WAL mode with a busy timeout serialises them.
A write that fails (disk full, locked) is logged once and never stops the agent: the event is still published,
it just cannot be corrected later.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sqlite3
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelite.errors import GalleryError
from facelite.recognition.statefile import PrivateStore

log = logging.getLogger(__name__)

STORE_NAME = "event_faces.sqlite"
_F32 = np.dtype("<f4")
_NONCE_BYTES = 12
_TOMBSTONE_FACTOR = 4  # expired ids remembered: this many times the live limit
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS faces (
    event_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    person TEXT,
    camera TEXT,
    embedder_sha256 TEXT NOT NULL,
    vector BLOB,
    nonce BLOB
);
CREATE INDEX IF NOT EXISTS faces_ts ON faces(ts);
-- Who a face was enrolled as (`enroll --from-event`), so `forget` finds unknown faces too. A table of its own, not a
-- column: an older agent writing `faces` keeps working on a file a newer CLI touched.
CREATE TABLE IF NOT EXISTS enrolled (
    event_id TEXT PRIMARY KEY,
    person TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class EventFace:
    """The face of one event: who it was announced as (None: ``unknown``), when, where, and its unit embedding."""

    event_id: str
    ts: float  # epoch seconds of the event
    person: str | None  # None for an unknown event
    camera: str
    embedder_sha256: str
    vector: np.ndarray


@dataclass(frozen=True)
class StorePolicy:
    keep_s: float = 3 * 86400.0  # 0: keep nothing (corrections of past events are then impossible)
    max_faces: int = 200


def store_path(spool_path: Path) -> Path:
    """The store lives in the agent's state folder, beside the spool."""
    return Path(spool_path).with_name(STORE_NAME)


def check_event_id(text: str, where: str = "facelite gallery reject") -> str:
    """A uuid as events carry it (lower case), or a one-line error naming ``where`` it was given."""
    if not isinstance(text, str) or not _UUID.match(text.strip()):
        raise GalleryError(
            f"{str(text)[:60]!r} is not an event id",
            where,
            "give the event_id of a recognized or unknown event",
        )
    return str(uuid.UUID(text.strip()))


class EventFaceStore(PrivateStore[StorePolicy]):
    """One store file. ``key`` (the gallery key, or None) encrypts the vectors."""

    SCHEMA = _SCHEMA

    def _aad(self, event_id: str, sha: str) -> bytes:
        return f"facelite-event-face:{sha}:{event_id}".encode()

    # -- agent side ------------------------------------------------------------------------------
    def put(self, face: EventFace) -> bool:
        """Keep one event's face; False (logged once until it works again) when the file cannot be written."""
        if self.policy.keep_s <= 0:
            return False
        raw = np.asarray(face.vector, _F32).tobytes()
        nonce = None
        if self._aead is not None:
            nonce = os.urandom(_NONCE_BYTES)
            raw = self._aead.encrypt(nonce, raw, self._aad(face.event_id, face.embedder_sha256))
        try:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT OR REPLACE INTO faces VALUES (?,?,?,?,?,?,?)",
                    (face.event_id, face.ts, face.person, face.camera, face.embedder_sha256, raw, nonce),
                )
                self._prune(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            if not self._failed:
                log.warning(
                    "event face store %s cannot be written (%s): events are published but cannot be corrected "
                    "with `facelite gallery reject` until it can",
                    self.path,
                    exc,
                )
            self._failed = True
            return False
        if self._failed:
            log.info("event face store %s writable again", self.path)
        self._failed = False
        return True

    def _prune(self, conn: sqlite3.Connection) -> None:
        now = float(self._clock())
        # Expired: erase the face and the name, keep the id (and time) so `reject` can say "expired".
        conn.execute(
            "UPDATE faces SET vector = NULL, nonce = NULL, person = NULL, camera = NULL "
            "WHERE vector IS NOT NULL AND ts < ?",
            (now - self.policy.keep_s,),
        )
        conn.execute(
            "UPDATE faces SET vector = NULL, nonce = NULL, person = NULL, camera = NULL WHERE event_id IN ("
            "SELECT event_id FROM faces WHERE vector IS NOT NULL ORDER BY ts DESC LIMIT -1 OFFSET ?)",
            (self.policy.max_faces,),
        )
        conn.execute(
            "DELETE FROM faces WHERE event_id IN (SELECT event_id FROM faces WHERE vector IS NULL "
            "ORDER BY ts DESC LIMIT -1 OFFSET ?)",
            (self.policy.max_faces * _TOMBSTONE_FACTOR,),
        )
        # A name goes with its face.
        conn.execute("DELETE FROM enrolled WHERE event_id NOT IN (SELECT event_id FROM faces WHERE vector IS NOT NULL)")

    def forget(self, people: Iterable[str]) -> int:
        """Erase the faces announced as these people, or enrolled as them (``mark_enrolled``), from the file bytes;
        returns how many. Raises GalleryError."""
        names = sorted(set(people))
        if not names or not self.path.exists():
            return 0
        try:
            conn = self._connect()
            marks = ",".join("?" * len(names))
            # Only ? marks in the text. Faces announced as them, and faces enrolled as them from their events.
            cur = conn.execute(
                f"DELETE FROM faces WHERE person IN ({marks}) "
                f"OR event_id IN (SELECT event_id FROM enrolled WHERE person IN ({marks}))",
                names + names,
            )
            erased = int(cur.rowcount or 0)
            named = conn.execute(f"DELETE FROM enrolled WHERE person IN ({marks})", names).rowcount or 0
            erased_any = erased or named
            if erased_any:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return erased
        except sqlite3.Error as exc:
            raise GalleryError(f"event face store cannot be updated: {exc}", str(self.path)) from None

    def mark_enrolled(self, event_id: str, person: str) -> None:
        """Remember that this event's face was enrolled as ``person``, so forgetting them erases it too."""
        try:
            self._connect().execute("INSERT OR REPLACE INTO enrolled VALUES (?, ?)", (check_event_id(event_id), person))
        except sqlite3.Error as exc:
            raise GalleryError(f"event face store cannot be updated: {exc}", str(self.path)) from None

    # -- CLI side --------------------------------------------------------------------------------
    def get(self, event_id: str) -> EventFace:
        """The face of ``event_id``; one-line GalleryError when unknown, expired or unreadable."""
        eid = check_event_id(event_id)
        if not self.path.exists():
            raise GalleryError(
                f"unknown event {eid}: no event faces are kept here",
                str(self.path),
                "run the agent with this configuration (gallery.event_faces_keep_s > 0) and use a recent event",
            )
        try:
            row = (
                self._connect()
                .execute(
                    "SELECT ts, person, camera, embedder_sha256, vector, nonce FROM faces WHERE event_id = ?", (eid,)
                )
                .fetchone()
            )
        except sqlite3.Error as exc:
            raise GalleryError(f"event face store cannot be read: {exc}", str(self.path)) from None
        if row is None:
            raise GalleryError(
                f"unknown event {eid}: only recognized and unknown events are kept, the last "
                f"{self.policy.max_faces} for {_days(self.policy.keep_s)}",
                str(self.path),
                "copy the event_id of a recent event from MQTT",
            )
        ts, person, camera, sha, blob, nonce = row
        expired = blob is None or float(ts) < float(self._clock()) - self.policy.keep_s
        if expired:
            raise GalleryError(
                f"event {eid} has expired: its face was erased (faces are kept {_days(self.policy.keep_s)}, "
                f"the last {self.policy.max_faces})",
                str(self.path),
                "use a more recent event of the same person, or raise gallery.event_faces_keep_s",
            )
        if self._aead is not None:
            if nonce is None:
                raise GalleryError("event face store holds an unencrypted face but a key is set", str(self.path))
            from cryptography.exceptions import InvalidTag

            try:
                blob = self._aead.decrypt(nonce, blob, self._aad(eid, sha))
            except InvalidTag:
                raise GalleryError(
                    f"the face of event {eid} cannot be decrypted (wrong key or tampered file)", str(self.path)
                ) from None
        elif nonce is not None:
            raise GalleryError(
                "event face store is encrypted but no gallery key is set", str(self.path), "set gallery.key_file"
            )
        vec = np.frombuffer(blob, _F32).astype(np.float32)
        return EventFace(eid, float(ts), None if person is None else str(person), str(camera), str(sha), vec)


def _days(seconds: float) -> str:
    if seconds <= 0:
        return "not at all (gallery.event_faces_keep_s = 0)"
    days = seconds / 86400.0
    return f"{days:g} day(s)" if days >= 1 or math.isclose(days, 1) else f"{seconds:g} s"
