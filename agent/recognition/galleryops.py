"""Gallery corrections as plain functions: the CLI (`facelite gallery ...`) and MQTT commands call the same rules.

Each function takes the open gallery (and the event face store where it needs one), changes it, and returns a
frozen outcome; wording is left to the caller (a CLI line, a JSON reply). Failures are one-line FaceliteErrors
(GalleryError for a bad name, an unknown or expired event, a full disk or a read-only file).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from facelite.errors import FaceliteError, GalleryError
from facelite.recognition.eventfaces import EventFaceStore, check_event_id
from facelite.recognition.gallery import Gallery
from facelite.recognition.names import normalize_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForgetOutcome:
    person: str
    complete: bool  # False: another process holds the file open, traces vanish when it closes
    faces_erased: int  # faces of recent events announced as the person, erased from the event face store


@dataclass(frozen=True)
class RejectOutcome:
    event_id: str
    person: str
    added: bool  # False: this event was already rejected (nothing changed)
    negatives: int  # the person's negatives now
    version: int  # gallery version after the change


@dataclass(frozen=True)
class PersonSummary:
    name: str
    slug: str
    templates: int
    negatives: int


def forget_person(gallery: Gallery, faces: EventFaceStore | None, person: str) -> ForgetOutcome:
    """Remove ``person`` and erase every trace from the gallery file and, when given, the event face store."""
    name = normalize_name(person)
    complete = gallery.forget(name)
    erased = faces.forget([name]) if faces is not None else 0
    return ForgetOutcome(name, complete, erased)


def rename_person(gallery: Gallery, old: str, new: str) -> tuple[str, str]:
    """Rename a person; returns the (normalized) old and new names."""
    gallery.rename(old, new)
    return normalize_name(old), normalize_name(new)


def list_people(gallery: Gallery) -> list[PersonSummary]:
    return [PersonSummary(p.name, p.slug, p.templates, p.negatives) for p in gallery.people()]


def reject_event(gallery: Gallery, faces: EventFaceStore, embedder_sha256: str, event_id: str) -> RejectOutcome:
    """ "That was not Ada": the face of a recognized event becomes a negative of the person it was announced as."""
    eid = check_event_id(event_id)
    face = faces.get(eid)
    if face.embedder_sha256 != embedder_sha256:
        raise FaceliteError(
            f"event {eid} was embedded by model {face.embedder_sha256[:12]}, the gallery uses {embedder_sha256[:12]}",
            str(faces.path),
            "reject an event seen since the model changed",
        )
    if face.person is None:
        raise GalleryError(
            f"event {eid} was unknown: no one was announced, so there is nothing to reject",
            "facelite gallery reject",
            f"to name that face, run `facelite enroll NAME --from-event {eid}`",
        )
    if face.person not in {p.name for p in gallery.people()}:
        raise GalleryError(
            f"event {eid} was announced as {face.person!r}, who is no longer in the gallery",
            str(gallery.path),
            "nothing to correct (removed, forgotten or renamed since)",
        )
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(face.ts))
    added = gallery.add_negative(
        face.person, face.vector, source=f"event {eid} ({face.camera}, {when} UTC)", event_id=eid
    )
    count = next((p.negatives for p in gallery.people() if p.name == face.person), 0)
    return RejectOutcome(eid, face.person, added, count, gallery.version)
