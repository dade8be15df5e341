"""`facelite enroll NAME --from-event EVENT_ID` end to end: real models, real photos, the real agent and CLI.

Ada and Bo are enrolled from photos. The agent, run on a folder of a stranger's photo, publishes an ``unknown`` event
and keeps its face in its state folder; `facelite enroll Lee --from-event ID` makes that face a template of Lee, and
the agent, run on **another** photo of the stranger, now announces Lee. Then the answers to the same id given twice
(harmless: already a template), an event announced as someone else, rejecting an unknown event, an unknown id, a
malformed one and an expired one. The gallery and the store of event faces are encrypted.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest
from soak import base_config, enroll_gallery, pick, write_config
from test_gallery_reject import cli, decided, folder_of, run_agent

from facelite.vision.imageio import list_images


def config_for(work: Path, models_dir: Path, source: Path) -> Path:
    config = base_config(
        work / "state",
        detector=pick(models_dir, "blazeface"),
        embedder=pick(models_dir, "mobilefacenet"),
        source=str(source),
        gallery=work / "gallery.sqlite",
        port=None,
        device_id="fromevent",
    )
    config["gallery"]["key_file"] = str(work / "gallery.key")
    return write_config(work / f"agent-{source.name}.toml", config)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path, models_dir: Path) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("fromevent")
    (work / "state").mkdir()
    key = os.urandom(32)
    (work / "gallery.key").write_bytes(key)
    people = faces_dir / "people"
    ada, bo, lee = (list_images(people / n) for n in ("deepface_id00", "deepface_id02", "deepface_id01"))
    enrolled = enroll_gallery(
        work / "gallery.sqlite",
        pick(models_dir, "blazeface"),
        pick(models_dir, "mobilefacenet"),
        {"Ada": ada[:-1], "Bo": bo},
        key=key,
    )
    assert set(enrolled) == {"Ada", "Bo"}
    return {
        "work": work,
        "lee1": config_for(work, models_dir, folder_of(work / "lee1", lee[0])),
        "lee2": config_for(work, models_dir, folder_of(work / "lee2", lee[1])),
        "ada": config_for(work, models_dir, folder_of(work / "ada", ada[-1])),
    }


def one_error(proc: subprocess.CompletedProcess[str], says: str) -> str:
    assert proc.returncode != 0 and proc.stdout == "", (proc.stdout, proc.stderr)
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and says in line, line
    return line


def test_an_unknown_event_enrolled_as_lee_makes_the_next_visit_recognized_as_lee(world: dict[str, Path]) -> None:
    # Before: the stranger is unknown on both photos.
    assert decided(run_agent(world["lee2"])) == [("unknown", None)]
    events = run_agent(world["lee1"])
    assert decided(events) == [("unknown", None)]
    event_id = str(next(e["event_id"] for e in events if e["type"] == "unknown"))

    proc = cli("enroll", "Lee", "--from-event", event_id, "--config", str(world["lee1"]))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"enrolled Lee from event {event_id} (an unknown face): 1 template(s) added")
    listing = cli("gallery", "list", "--config", str(world["lee1"]))
    assert "Lee\t1 template(s)" in listing.stdout, listing.stdout

    # After: another photo of the stranger is announced as Lee; Ada is still Ada.
    assert decided(run_agent(world["lee2"])) == [("recognized", "Lee")]
    ada_events = run_agent(world["ada"])
    assert decided(ada_events) == [("recognized", "Ada")]
    ada_event = str(next(e["event_id"] for e in ada_events if e["type"] == "recognized"))

    # Replayed: harmless, the face is already Lee's (an MQTT command delivered twice must not grow the gallery).
    again = cli("enroll", "Lee", "--from-event", event_id, "--config", str(world["lee1"]))
    assert again.returncode == 0 and "is already a template of Lee: nothing changed" in again.stdout, again.stderr
    assert "Lee\t1 template(s)" in cli("gallery", "list", "--config", str(world["lee1"])).stdout

    # Announced as someone else: reject it first.
    line = one_error(cli("enroll", "Lee", "--from-event", ada_event, "--config", str(world["ada"])), "as Ada")
    assert f"facelite gallery reject {ada_event}" in line
    # Rejecting an unknown event makes no sense, and says what to do instead.
    line = one_error(cli("gallery", "reject", event_id, "--config", str(world["lee1"])), "was unknown")
    assert "--from-event" in line
    for bad, says in ((str(uuid.uuid4()), "unknown event"), ("not-an-id", "is not an event id")):
        line = one_error(cli("enroll", "Lee", "--from-event", bad, "--config", str(world["lee1"])), says)
        if says == "is not an event id":
            assert "facelite enroll --from-event" in line

    store = world["work"] / "state" / "event_faces.sqlite"
    with sqlite3.connect(store) as con:  # unknown faces are kept without a name, recognized ones with theirs
        rows = dict(con.execute("SELECT event_id, person FROM faces WHERE vector IS NOT NULL").fetchall())
    assert rows[event_id] is None and rows[ada_event] == "Ada"
    with sqlite3.connect(store) as con:
        con.execute("UPDATE faces SET ts = ts - 400000")
    one_error(cli("enroll", "Mo", "--from-event", event_id, "--config", str(world["lee1"])), "has expired")
    assert "Mo" not in cli("gallery", "list", "--config", str(world["lee1"])).stdout
    with sqlite3.connect(store) as con:
        con.execute("UPDATE faces SET ts = ts + 400000")


def test_forget_erases_the_unknown_face_a_person_was_enrolled_from(world: dict[str, Path]) -> None:
    events = run_agent(world["lee1"])
    assert decided(events) == [("recognized", "Lee")]  # enrolled from this photo's unknown event above
    lee_event = str(next(e["event_id"] for e in events if e["type"] == "recognized"))
    store = world["work"] / "state" / "event_faces.sqlite"
    lees = "SELECT event_id FROM faces WHERE person = 'Lee' OR event_id IN (SELECT event_id FROM enrolled)"
    with sqlite3.connect(store) as con:
        assert con.execute("SELECT COUNT(*) FROM enrolled WHERE person = 'Lee'").fetchone()[0] == 1
        faces = {r[0] for r in con.execute(lees)}
    assert lee_event in faces and len(faces) >= 2  # the face Lee was enrolled from, and the events announcing Lee
    proc = cli("gallery", "forget", "Lee", "--config", str(world["lee1"]))
    assert proc.returncode == 0, proc.stderr
    assert f"and {len(faces)} face(s) of their recent events" in proc.stdout, proc.stdout
    with sqlite3.connect(store) as con:
        assert con.execute("SELECT COUNT(*) FROM enrolled").fetchone()[0] == 0
        assert con.execute(lees).fetchall() == []
    one_error(cli("enroll", "Lee", "--from-event", lee_event, "--config", str(world["lee1"])), "unknown event")
