"""Home or away, per enrolled person: fed by visits, sightings and the clock, it returns only the changes to
publish (retained ``person/<slug>``; agent/service/roster.py keeps what was published across restarts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from facelite.errors import ConfigError
from facelite.service.events import SCHEMA, Topics, compact_json, utc_iso
from facelite.service.messages import Message

if TYPE_CHECKING:
    from facelite.recognition.track import TrackEvent

PresenceState = Literal["home", "away"]


# ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Presence:
    person: str
    state: PresenceState
    last_seen: float | None  # epoch seconds; None if not seen since the agent started


class PresenceTracker:
    """Home while a visit is open or within ``away_after_s`` of the last sighting; away after.

    Fed with tracker events (``on_event``), sightings of people in view (``on_sighting``) and the clock
    (``tick(now)``); returns only changes to publish, so the caller publishes a retained message per change and
    ``snapshot()`` at start. ``restored`` is the presence published before a restart (home stays home, with its
    ``last_seen``); ``refresh_s`` moves ``last_seen`` forward while a person is in view, at most that often
    (None: only the first sighting of a visit is published).
    """

    def __init__(
        self,
        people: Iterable[str],
        away_after_s: float,
        *,
        restored: Mapping[str, Presence] | None = None,
        refresh_s: float | None = None,
    ) -> None:
        if not (math.isfinite(away_after_s) and away_after_s >= 0):
            raise ConfigError(f"away timeout must be seconds >= 0, got {away_after_s}", "presence.away_after_s")
        if refresh_s is not None and not (math.isfinite(refresh_s) and refresh_s > 0):
            raise ConfigError(
                f"last_seen interval must be seconds > 0, got {refresh_s}", "presence.last_seen_interval_s"
            )
        self.away_after_s = float(away_after_s)
        self.refresh_s = refresh_s
        self._state: dict[str, Presence] = {}
        self._visits: dict[str, set[int]] = {}
        self._published: dict[str, float | None] = {}  # last_seen of the last change returned, per person
        for name, p in (restored or {}).items():
            self._state[name] = Presence(name, p.state, p.last_seen)
            self._published[name] = p.last_seen
        self.set_people(people)

    def set_people(self, people: Iterable[str]) -> list[Presence]:
        """Follow gallery changes: new people start away (returned, to publish); removed ones are dropped."""
        wanted = list(dict.fromkeys(people))
        for gone in set(self._state) - set(wanted):
            del self._state[gone]
            self._visits.pop(gone, None)
            self._published.pop(gone, None)
        added = []
        for name in wanted:
            self._visits.setdefault(name, set())
            if name not in self._state:
                self._state[name] = Presence(name, "away", None)
                self._published[name] = None
                added.append(self._state[name])
        return added

    def _changed(self, p: Presence) -> list[Presence]:
        self._state[p.person] = p
        self._published[p.person] = p.last_seen
        return [p]

    def _due(self, name: str, last_seen: float) -> bool:
        published = self._published.get(name)
        return self.refresh_s is not None and (published is None or last_seen - published >= self.refresh_s)

    def on_event(self, event: TrackEvent) -> list[Presence]:
        if event.person is None or event.type not in ("recognized", "left"):
            return []
        name = event.person
        prev = self._state.get(name)
        if prev is None:
            return []  # not enrolled (any more): a visit that outlived its person's forget says nothing
        visits = self._visits.setdefault(name, set())
        if event.type == "recognized":
            visits.add(event.track_id)
            now = Presence(name, "home", event.last_seen)
            if prev.state != "home" or self._due(name, event.last_seen):
                return self._changed(now)
            self._state[name] = now
            return []
        visits.discard(event.track_id)
        last = event.last_seen if prev.last_seen is None else max(prev.last_seen, event.last_seen)
        now = Presence(name, prev.state, last)
        published = self._published.get(name)
        if self.refresh_s is not None and (published is None or last > published):
            return self._changed(now)  # the visit's final sighting, so the retained last_seen is exact
        self._state[name] = now
        return []

    def on_sighting(self, people: Iterable[str], now: float) -> list[Presence]:
        """People recognised in view at ``now``: their ``last_seen`` moves, published at most every ``refresh_s``."""
        changes = []
        for name in dict.fromkeys(people):
            prev = self._state.get(name)
            if prev is None or prev.state != "home" or not self._visits.get(name):
                continue  # not enrolled (any more), or not announced yet: the recognized event comes first
            if prev.last_seen is not None and now <= prev.last_seen:
                continue
            p = Presence(name, "home", now)
            if self._due(name, now):
                changes += self._changed(p)
            else:
                self._state[name] = p
        return changes

    def tick(self, now: float) -> list[Presence]:
        changes = []
        for name, p in list(self._state.items()):
            if p.state != "home" or self._visits.get(name):
                continue
            if p.last_seen is None or now - p.last_seen >= self.away_after_s:
                changes += self._changed(Presence(name, "away", p.last_seen))
        return changes

    def snapshot(self) -> list[Presence]:
        return [self._state[n] for n in sorted(self._state)]


def presence_message(topics: Topics, presence: Presence) -> Message:
    payload = {
        "schema": SCHEMA,
        "person": presence.person,
        "state": presence.state,
        "last_seen": None if presence.last_seen is None else utc_iso(presence.last_seen),
    }
    return Message(topics.person(presence.person), compact_json(payload), qos=1, retain=True)
