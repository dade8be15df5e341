"""Who the agent has published retained messages about, kept in line with the gallery across restarts.

The broker keeps retained messages naming people: ``person/<slug>``, ``last_person`` and a Home Assistant
``device_tracker`` config per person. Two things must survive an agent restart:

- presence: a person seen before the restart is still ``home`` with the same ``last_seen`` after it;
- forgetting: a person forgotten while the agent was stopped must still vanish from the broker at the next start.

Both come from one small record in the state folder (``presence.json`` beside the spool): the presence last
published per person and the person ``last_person`` names. It is the agent's own record rather than a read-back
of the broker's retained topics, because the agent must not need subscribe rights (broker ACLs can give it
publish-only access to its topics), the broker may be unreachable at start (messages then wait in the sink and
go out on CONNACK) and a broker restarted without persistence has nothing to read back.

Pure bookkeeping: the caller publishes the returned messages and purges the spool. The record is written
atomically (temp file + rename, mode 0600: it names people); a failed write is logged once and never raised.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelite.service.discovery import discovery_messages, person_discovery_message
from facelite.service.events import Topics, forget_person_messages
from facelite.service.messages import Message
from facelite.service.presence import Presence, PresenceTracker, presence_message

log = logging.getLogger(__name__)

RECORD_SCHEMA = 1
RECORD_NAME = "presence.json"


@dataclass
class Record:
    """What the broker holds about people, as last published by this device."""

    people: dict[str, Presence] = field(default_factory=dict)
    last_person: str | None = None


class RecordFile:
    """``Record`` in a JSON file; ``path=None`` keeps it in memory only (tests, one-shot runs)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._failed = False

    def load(self) -> Record:
        if self.path is None or not self.path.exists():
            return Record()
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if doc.get("schema") != RECORD_SCHEMA:
                raise ValueError(f"schema {doc.get('schema')!r}, expected {RECORD_SCHEMA}")
            people = {name: _presence(name, p) for name, p in doc["people"].items()}
            last = doc.get("last_person")
            return Record(people, last if isinstance(last, str) else None)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Without it presence starts away and nobody is cleared: worse, but the device must still start.
            log.warning("presence record %s unreadable (%s); starting without it", self.path, exc)
            return Record()

    def save(self, record: Record) -> None:
        if self.path is None:
            return
        doc = {
            "schema": RECORD_SCHEMA,
            "people": {n: {"state": p.state, "last_seen": p.last_seen} for n, p in sorted(record.people.items())},
            "last_person": record.last_person,
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(doc, ensure_ascii=False, allow_nan=False))
            os.replace(tmp, self.path)
            self._failed = False
        except (OSError, ValueError) as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if not self._failed:
                log.error(
                    "presence record %s cannot be written (%s); a restart may not restore presence", self.path, exc
                )
            self._failed = True


def _presence(name: str, raw: Any) -> Presence:
    state = raw["state"]
    last = raw["last_seen"]
    if state not in ("home", "away"):
        raise ValueError(f"bad state {state!r} for {name!r}")
    if last is not None and not (isinstance(last, int | float) and math.isfinite(last)):
        raise ValueError(f"bad last_seen {last!r} for {name!r}")
    return Presence(name, state, None if last is None else float(last))


@dataclass(frozen=True)
class Sync:
    messages: list[Message]  # to publish, in order
    forgotten: list[str]  # people whose spooled events must be erased


class Roster:
    """The presence tracker plus the record of what was published, turned into messages."""

    def __init__(
        self,
        topics: Topics,
        people: Iterable[str],
        *,
        away_after_s: float,
        refresh_s: float | None,
        record: RecordFile,
        discovery: bool,
    ) -> None:
        self.topics = topics
        self.discovery = discovery
        self._file = record
        self._record = record.load()
        self._people = list(dict.fromkeys(people))
        self.presence = PresenceTracker(self._people, away_after_s, restored=self._record.people, refresh_s=refresh_s)

    def enrolled(self, name: str) -> bool:
        return name in self._people

    def start(self) -> Sync:
        """At start: clear whoever left the gallery while the agent was stopped, then announce everyone."""
        forgotten = [n for n in self._record.people if n not in self._people]
        if self._record.last_person is not None and self._record.last_person not in self._people:
            forgotten.append(self._record.last_person)
        messages = self._forget(forgotten)
        if self.discovery:
            messages += discovery_messages(self.topics, self._people)
        messages += self.presence_messages(self.presence.snapshot())
        return Sync(messages, list(dict.fromkeys(forgotten)))

    def set_people(self, people: Iterable[str]) -> Sync:
        """The gallery changed: announce new people, clear removed (forgotten, renamed) ones."""
        wanted = list(dict.fromkeys(people))
        gone = [n for n in self._people if n not in wanted]
        added = [n for n in wanted if n not in self._people]
        self._people = wanted
        messages = self._forget(gone)
        if self.discovery:
            messages += [person_discovery_message(self.topics, n) for n in added]
        messages += self.presence_messages(self.presence.set_people(wanted))
        return Sync(messages, gone)

    def _forget(self, names: list[str]) -> list[Message]:
        out: list[Message] = []
        for name in dict.fromkeys(names):
            names_last = self._record.last_person == name
            out += forget_person_messages(self.topics, name, last_person=names_last)
            self._record.people.pop(name, None)
            if names_last:
                self._record.last_person = None
        if out:
            self._file.save(self._record)
            log.info("cleared the retained messages of %d person(s) no longer in the gallery", len(names))
        return out

    def presence_messages(self, changes: list[Presence]) -> list[Message]:
        """Retained presence messages for ``changes``, remembered for the next start."""
        if not changes:
            return []
        for p in changes:
            self._record.people[p.person] = p
        self._file.save(self._record)
        return [presence_message(self.topics, p) for p in changes]

    def last_person_published(self, name: str) -> None:
        if self._record.last_person != name:
            self._record.last_person = name
            self._file.save(self._record)
