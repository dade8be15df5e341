"""`facelite gallery reject EVENT_ID` end to end: real models, real photos, the real agent process and CLI.

Ada is enrolled; the agent, run on a folder of a stranger's photo with a permissive fixed threshold (so a
stranger *is* announced as Ada, as a look-alike would be), publishes a ``recognized`` event and keeps its face in
its state folder. The user rejects that event from the CLI; the agent, run again on **another** photo of the
stranger, no longer announces Ada, and still announces Ada on her own held-out photo. Then the CLI's answers to
an id given twice, an unknown id, a malformed one and an expired one, and `forget` erasing the face and the
negatives. The gallery is encrypted (so is the store of event faces).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from pathlib import Path

import pytest
from helpers import facelite_cli as cli
from helpers import run_agent_to_end

from facelite.tools.demo import pick
from facelite.vision.imageio import list_images


def folder_of(path: Path, photo: Path, copies: int = 6) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i in range(copies):
        shutil.copy(photo, path / f"{i:04d}{photo.suffix}")
    return path


def write_config(work: Path, models_dir: Path, source: Path, keep_s: int = 259200) -> Path:
    path = work / f"agent-{source.name}.toml"
    path.write_text(
        f'device_id = "rej"\n\n[[cameras]]\nname = "door"\nsource = "{source}"\n\n'
        f'[models]\ndetector = "{pick(models_dir, "blazeface")}"\nembedder = "{pick(models_dir, "mobilefacenet")}"\n'
        "num_threads = 1\n\n"
        # Permissive on purpose: with one person enrolled, any face is announced as her (a look-alike's effect).
        "[matching]\nthreshold = -0.5\n\n"
        f'[spool]\npath = "{work / "state" / "spool.sqlite"}"\n\n'
        f'[gallery]\npath = "{work / "gallery.sqlite"}"\nkey_file = "{work / "gallery.key"}"\n'
        f"event_faces_keep_s = {keep_s}\n"
    )
    return path


def run_agent(config: Path) -> list[dict[str, object]]:
    proc = run_agent_to_end(config, timeout=180)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return [m["payload"] for m in lines if str(m["topic"]).endswith("/events")]  # type: ignore[misc]


def decided(events: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(e["type"], e["person"]) for e in events if e["type"] != "left"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path, models_dir: Path) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("reject")
    (work / "state").mkdir()
    (work / "gallery.key").write_bytes(os.urandom(32))
    ada = list_images(faces_dir / "people" / "deepface_id00")
    lee = list_images(faces_dir / "people" / "deepface_id01")
    config = write_config(work, models_dir, folder_of(work / "lee1", lee[0]))
    proc = cli("enroll", "Ada", *map(str, ada[:-1]), "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    return {
        "work": work,
        "models": models_dir,
        "lee1": config,
        "lee2": write_config(work, models_dir, folder_of(work / "lee2", lee[1])),
        "ada": write_config(work, models_dir, folder_of(work / "ada", ada[-1])),
    }


def test_reject_turns_the_event_face_into_a_negative_and_the_look_alike_is_no_longer_ada(
    world: dict[str, Path],
) -> None:
    # Before: both photos of the stranger are announced as Ada (the permissive threshold stands for a look-alike).
    assert decided(run_agent(world["lee2"])) == [("recognized", "Ada")]
    events = run_agent(world["lee1"])
    assert decided(events) == [("recognized", "Ada")]
    event_id = str(next(e["event_id"] for e in events if e["type"] == "recognized"))
    store = world["work"] / "state" / "event_faces.sqlite"
    assert store.exists() and oct(store.stat().st_mode & 0o777) == "0o600"

    proc = cli("gallery", "reject", event_id, "--config", str(world["lee1"]))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"rejected event {event_id}: that face was not Ada; Ada has 1 negative(s)")
    listing = cli("gallery", "list", "--config", str(world["lee1"]))
    assert "Ada\t7 template(s)\t1 negative(s)" in listing.stdout, listing.stdout

    # After: the stranger's other photo is closer to the rejected face than to Ada's templates; Ada is still Ada.
    assert decided(run_agent(world["lee2"])) == [("unknown", None)]
    assert decided(run_agent(world["ada"])) == [("recognized", "Ada")]

    again = cli("gallery", "reject", event_id, "--config", str(world["lee1"]))
    assert again.returncode == 0 and "already rejected" in again.stdout
    for bad, says in ((str(uuid.uuid4()), "unknown event"), ("not-an-id", "is not an event id")):
        proc = cli("gallery", "reject", bad, "--config", str(world["lee1"]))
        assert proc.returncode != 0 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and says in proc.stderr

    # An expired face: the store keeps the id, not the face, once past event_faces_keep_s.
    with sqlite3.connect(store) as con:
        con.execute("UPDATE faces SET ts = ts - 400000")
    proc = cli("gallery", "reject", event_id, "--config", str(world["lee1"]))
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and "has expired" in proc.stderr
    with sqlite3.connect(store) as con:
        con.execute("UPDATE faces SET ts = ts + 400000")

    # Forget means gone: the negatives with Ada, and the faces of events announced as her.
    proc = cli("gallery", "forget", "Ada", "--config", str(world["lee1"]))
    assert proc.returncode == 0 and "face(s) of their recent events" in proc.stdout, proc.stdout + proc.stderr
    with sqlite3.connect(store) as con:
        assert con.execute("SELECT COUNT(*) FROM faces WHERE person IS NOT NULL").fetchone()[0] == 0
    with sqlite3.connect(world["work"] / "gallery.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM negatives").fetchone()[0] == 0
    proc = cli("gallery", "reject", event_id, "--config", str(world["lee1"]))
    assert proc.returncode != 0 and "unknown event" in proc.stderr
