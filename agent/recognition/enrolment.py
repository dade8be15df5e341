"""Enrolment from an event's face: ``facelite enroll NAME --from-event EVENT_ID``.

The agent keeps the face of each recent ``recognized`` and ``unknown`` event (agent/recognition/eventfaces.py). This
module turns
one of them into a template of NAME through the same template hygiene as photo enrolment (agent/recognition/gallery.py
``add_templates``), so a stranger seen at the door can be named without a photo folder. Plain functions over an open
gallery and store: the CLI and the MQTT command handler both call :func:`enroll_from_event`.

Decisions:

- An event announced as *another* person is refused: enrolling it as NAME would leave the gallery holding the same
  face as two people (hygiene would refuse it anyway, with a less useful message). The fix is to say the
  announcement was wrong first (`facelite gallery reject EVENT_ID`), which also stops the same mistake on the next
  visit, and then enrol it.
- An event announced as NAME itself is accepted: it adds a fresh view of a person the gallery already knows.
- Replayed (the same event enrolled twice): harmless. The second time nothing is written and the answer says the
  face is already a template of NAME (exit 0), as `gallery reject` does for a second rejection; an MQTT command
  delivered twice (QoS 1) must not grow the gallery.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from facelite.errors import FaceliteError
from facelite.recognition.eventfaces import EventFaceStore, check_event_id
from facelite.recognition.gallery import EnrollOutcome, Gallery, Hygiene
from facelite.recognition.names import normalize_name

log = logging.getLogger(__name__)

WHERE = "facelite enroll --from-event"
SAME_FACE = 1.0 - 1e-5  # cosine of a vector with its own stored copy (float32 round trip, encryption is lossless)


@dataclass(frozen=True)
class EventEnrollment:
    """What enrolling one event's face did. ``outcome`` is None when the face was already a template of ``person``."""

    event_id: str
    person: str
    announced_as: str | None  # None: the event was ``unknown``
    outcome: EnrollOutcome | None

    @property
    def added(self) -> int:
        return self.outcome.added if self.outcome is not None else 0

    def line(self) -> str:
        seen = "an unknown face" if self.announced_as is None else f"announced as {self.announced_as}"
        if self.outcome is None:
            return f"event {self.event_id} ({seen}) is already a template of {self.person}: nothing changed"
        if self.outcome.refused:
            return self.outcome.refused[0].line()  # names the event (its source) and who it matches better
        if not self.outcome.added:
            return (
                f"event {self.event_id} ({seen}) not kept: {self.person} already has the limit of templates and "
                "theirs are more central (gallery.max_templates_per_person)"
            )
        return (
            f"enrolled {self.person} from event {self.event_id} ({seen}): {self.outcome.added} template(s) added; "
            f"gallery version {self.outcome.version}"
        )


def enroll_from_event(
    gallery: Gallery,
    store: EventFaceStore,
    *,
    event_id: str,
    name: str,
    embedder_sha256: str,
    hygiene: Hygiene,
) -> EventEnrollment:
    """Make the face of ``event_id`` a template of ``name``. Raises FaceliteError (one line) when the id is
    malformed, unknown or expired, the face was embedded by another model, or it was announced as someone else.
    A refusal by template hygiene is not an exception: the returned outcome carries it."""
    eid = check_event_id(event_id, WHERE)
    person = normalize_name(name)
    face = store.get(eid)
    if face.embedder_sha256 != embedder_sha256:
        raise FaceliteError(
            f"event {eid} was embedded by model {face.embedder_sha256[:12]}, the gallery uses {embedder_sha256[:12]}",
            str(store.path),
            "enrol from an event seen since the model changed",
        )
    if face.person is not None and face.person != person:
        raise FaceliteError(
            f"event {eid} was announced as {face.person}, not {person}",
            WHERE,
            f"if that was wrong, run `facelite gallery reject {eid}` first, then enrol it as {person}",
        )
    vector = np.asarray(face.vector, np.float32)
    gallery.refresh()  # another process (the agent, an earlier command) may have enrolled it since we opened
    own = gallery.index.rows_of(person)
    if own.shape[0] and own.shape[1] == vector.shape[0] and float(np.max(own @ vector)) >= SAME_FACE:
        return EventEnrollment(eid, person, face.person, None)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(face.ts))
    outcome = gallery.add_templates(person, [vector], [f"event {eid} ({face.camera}, {when} UTC)"], hygiene=hygiene)
    if outcome.added:
        # After the gallery write: a store that cannot be updated leaves the face to expire, the enrolment stands.
        try:
            store.mark_enrolled(eid, person)
        except FaceliteError as exc:
            log.warning("event %s: %s", eid, exc.one_line())
    log.info("event %s enrolled as %s: %d template(s) added", eid, person, outcome.added)
    return EventEnrollment(eid, person, face.person, outcome)
