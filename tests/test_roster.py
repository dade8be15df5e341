"""The roster: what the agent publishes about people at start and on gallery changes, and its record on disk."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from facelite.service.discovery import discovery_messages, person_discovery_message
from facelite.service.events import Topics, forget_person_messages
from facelite.service.messages import Message
from facelite.service.presence import Presence, presence_message
from facelite.service.roster import Record, RecordFile, Roster

TOPICS = Topics("hall-pi")


def roster(path: Path | None, people: list[str], discovery: bool = True) -> Roster:
    return Roster(TOPICS, people, away_after_s=300, refresh_s=30, record=RecordFile(path), discovery=discovery)


def flat(messages: list[Message]) -> list[tuple[str, bytes]]:
    return [(m.topic, m.payload) for m in messages]


def test_first_start_announces_everyone_away(tmp_path: Path) -> None:
    sync = roster(tmp_path / "presence.json", ["ada", "bob"]).start()
    assert sync.forgotten == []
    assert flat(sync.messages) == flat(
        [
            *discovery_messages(TOPICS, ["ada", "bob"]),
            presence_message(TOPICS, Presence("ada", "away", None)),
            presence_message(TOPICS, Presence("bob", "away", None)),
        ]
    )


def test_restart_restores_presence_and_clears_who_was_forgotten_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "presence.json"
    first = roster(path, ["ada", "bob"])
    first.start()
    first.presence_messages([Presence("ada", "home", 100.0), Presence("bob", "home", 90.0)])
    first.last_person_published("bob")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it names people

    # bob is forgotten while the agent is stopped
    second = roster(path, ["ada"], discovery=False)
    sync = second.start()
    assert sync.forgotten == ["bob"]
    assert flat(sync.messages) == flat(
        [
            *forget_person_messages(TOPICS, "bob", last_person=True),
            presence_message(TOPICS, Presence("ada", "home", 100.0)),  # still home, same last_seen
        ]
    )
    assert json.loads(path.read_text()) == {
        "schema": 1,
        "people": {"ada": {"state": "home", "last_seen": 100.0}},
        "last_person": None,
    }
    assert roster(path, ["ada"], discovery=False).start().forgotten == []  # cleared once, not at every start


def test_gallery_change_clears_removed_and_announces_added(tmp_path: Path) -> None:
    r = roster(tmp_path / "presence.json", ["ada", "bob"])
    r.start()
    r.last_person_published("ada")
    sync = r.set_people(["bob", "cy"])
    assert sync.forgotten == ["ada"]
    assert flat(sync.messages) == flat(
        [
            *forget_person_messages(TOPICS, "ada", last_person=True),
            person_discovery_message(TOPICS, "cy"),
            presence_message(TOPICS, Presence("cy", "away", None)),
        ]
    )
    assert not r.enrolled("ada") and r.enrolled("cy")
    assert [p.person for p in r.presence.snapshot()] == ["bob", "cy"]


def test_unreadable_record_starts_without_it(tmp_path: Path) -> None:
    path = tmp_path / "presence.json"
    for text in ("{not json", '{"schema": 7, "people": {}}', '{"schema": 1, "people": {"ada": {"state": "?"}}}'):
        path.write_text(text)
        assert RecordFile(path).load() == Record()
    path.write_text('{"schema": 1, "people": {"ada": {"state": "home", "last_seen": 5}}, "last_person": "ada"}')
    assert RecordFile(path).load() == Record({"ada": Presence("ada", "home", 5.0)}, "ada")


def test_unwritable_record_never_raises(tmp_path: Path) -> None:
    r = roster(tmp_path / "missing-folder" / "presence.json", ["ada"])
    r.start()
    assert r.presence_messages([Presence("ada", "home", 1.0)]) == [
        presence_message(TOPICS, Presence("ada", "home", 1.0))
    ]
