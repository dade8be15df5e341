"""Forget and presence on a real broker, with the real agent process, real models and real photos.

- forget while the agent runs: the person's retained presence, last_person and Home Assistant entity are cleared,
  and neither a reconnect nor a restart brings them back;
- forget while the agent is stopped: the next start clears them, and erases their events still in the spool;
- presence survives a restart (same state, same last_seen), last_seen moves while the person is in view;
- Home Assistant discovery holds an event entity for the device's visits;
- fps_limit paces a folder: every frame processed, none dropped.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from broker import MosquittoBroker, Subscriber
from helpers import enroll_by_cli, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from facelite.service.spool import Spool
from facelite.tools.demo import pick
from facelite.vision.imageio import list_images

REPO = Path(__file__).resolve().parents[1]
DEVICE = "gal"
ADA, BOB = "Ada Lovelace", "Bob Byte"
BASE = f"facelite/{DEVICE}"
NODE = f"facelite_{DEVICE}"
ADA_TOPICS = {
    f"{BASE}/person/ada_lovelace",
    f"homeassistant/device_tracker/{NODE}/person_ada_lovelace/config",
}
EVENT_ENTITY = f"homeassistant/event/{NODE}/visit/config"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path, models_dir: Path) -> dict[str, Path]:
    """A gallery with Ada and Bob (all but one photo each) and Ada's held-out photo as the probe."""
    work = tmp_path_factory.mktemp("gallery_mqtt")
    detector, embedder = pick(models_dir, "blazeface"), pick(models_dir, "mobilefacenet")
    people = sorted(p for p in (faces_dir / "people").iterdir() if p.is_dir())
    ada_photos, bob_photos = list_images(people[0]), list_images(people[1])
    enroll_by_cli({ADA: ada_photos[:-1], BOB: bob_photos[:-1]}, detector, embedder, work / "gallery.sqlite")
    return {"work": work, "detector": detector, "embedder": embedder, "probe": ada_photos[-1]}


def folder_of(path: Path, photo: Path | None, copies: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i in range(copies if photo else 0):
        shutil.copy(photo, path / f"{i:04d}{photo.suffix}")
    return path


def write_config(
    tmp: Path, setup: dict[str, Path], port: int, source: Path, *, camera: str = "", extra: str = ""
) -> Path:
    path = tmp / "agent.toml"
    path.write_text(
        f'device_id = "{DEVICE}"\nstate_interval_s = 1\n\n[[cameras]]\nname = "door"\nsource = "{source}"\n{camera}\n'
        f'[models]\ndetector = "{setup["detector"]}"\nembedder = "{setup["embedder"]}"\nnum_threads = 1\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nclose_timeout_s = 2\n'
        "reconnect = { initial_s = 0.2, max_s = 1, jitter = 0 }\n\n"
        f'[spool]\npath = "{tmp / "state" / "spool.sqlite"}"\n\n[gallery]\npath = "{tmp / "gallery.sqlite"}"\n\n'
        f"[presence]\n{extra}\n"
    )
    return path


def start_agent(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "facelite", "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_agent(config: Path) -> str:
    proc = start_agent(config)
    try:
        _, err = proc.communicate(timeout=180)
    finally:  # a timeout (or an interrupted test) must not leave the agent running
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    return err


def forget(setup: dict[str, Path], gallery: Path, name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "facelite.cli", "gallery", "forget", name, "--detector", str(setup["detector"]),
         "--embedder", str(setup["embedder"]), "--gallery", str(gallery)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"forgot {name}")


def retained_now(broker: MosquittoBroker) -> dict[str, bytes]:
    """What a client connecting now is given: every retained message, synced by a marker published after SUBACK."""
    with Subscriber(broker, ["facelite/#", "homeassistant/#", "sync/#"]) as sub:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gallery-test-marker")
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        try:
            client.publish("sync/marker", b"x", qos=1).wait_for_publish(10)
        finally:
            client.disconnect()
            client.loop_stop()
        sub.wait_for(1, topic="sync/marker")
        return {m.topic: m.payload for m in sub.messages if m.retain}


def faces_kept(store: Path, person: str) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store) as con:
        return int(con.execute("SELECT COUNT(*) FROM faces WHERE person = ?", (person,)).fetchone()[0])


def file_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def naming_ada(messages: dict[str, bytes]) -> list[str]:
    return [t for t, p in messages.items() if "lovelace" in t.lower() or b"lovelace" in p.lower()]


def presence(payload: bytes) -> tuple[str, str | None]:
    body = json.loads(payload)
    return body["state"], body["last_seen"]


def expected_retained(bob: bool = True) -> set[str]:
    topics = {
        f"{BASE}/availability",
        f"{BASE}/state",
        f"homeassistant/binary_sensor/{NODE}/status/config",
        f"homeassistant/sensor/{NODE}/last_person/config",
        f"homeassistant/sensor/{NODE}/fps/config",
        EVENT_ENTITY,
    }
    if bob:
        topics |= {f"{BASE}/person/bob_byte", f"homeassistant/device_tracker/{NODE}/person_bob_byte/config"}
    return topics


def test_forget_while_running_clears_the_broker_and_stays_cleared_after_reconnect_and_restart(
    tmp_path: Path, setup: dict[str, Path]
) -> None:
    gallery = tmp_path / "gallery.sqlite"
    shutil.copy(setup["work"] / "gallery.sqlite", gallery)
    # 400 frames paced at 4 fps: Ada stays in view until the agent is stopped (SIGTERM) at the end.
    frames = folder_of(tmp_path / "frames", setup["probe"], 400)
    with MosquittoBroker(tmp_path / "b") as broker, Subscriber(broker, ["facelite/#", "homeassistant/#"]) as live:
        config = write_config(tmp_path, setup, broker.port, frames, camera="fps_limit = 4\n")
        agent = start_agent(config)
        try:
            wait_until(lambda: f"{BASE}/last_person" in retained_now(broker), timeout=60, what="Ada recognized")
            before = retained_now(broker)
            assert presence(before[f"{BASE}/person/ada_lovelace"])[0] == "home"
            assert json.loads(before[f"{BASE}/last_person"])["person"] == ADA
            assert set(before) == expected_retained() | ADA_TOPICS | {f"{BASE}/last_person"}

            # The face of the recognized event is kept for `facelite gallery reject`
            # (agent/recognition/eventfaces.py) ...
            store = tmp_path / "state" / "event_faces.sqlite"
            wait_until(lambda: faces_kept(store, ADA) == 1, 30, "Ada's event face kept")
            assert b"Lovelace" in file_bytes(store)  # control: the search below can find her

            forget(setup, gallery, ADA)
            cleared = ADA_TOPICS | {f"{BASE}/last_person"}
            wait_until(
                lambda: {m.topic for m in live.messages if m.retain is False and m.payload == b""} >= cleared,
                30,
                "empty payloads on Ada's topics",
            )
            after = retained_now(broker)
            assert naming_ada(after) == [] and set(after) == expected_retained()
            # ... and erased by the running agent when she is forgotten, from the file bytes too.
            wait_until(lambda: faces_kept(store, ADA) == 0, 30, "Ada's event face erased")
            wait_until(lambda: b"Lovelace" not in file_bytes(store), 30, "no trace of Ada in the face store")

            broker.restart()  # no persistence: whatever comes back was re-published by the agent's sink
            wait_until(lambda: retained_now(broker).get(f"{BASE}/availability") == b"online", 30, "reconnect")
            wait_until(lambda: f"{BASE}/state" in retained_now(broker), 30, "state after reconnect")
            after_reconnect = retained_now(broker)
            assert naming_ada(after_reconnect) == []
            assert set(after_reconnect) == expected_retained()
            live.wait_subscribed(2, 30)  # the live subscriber is back too, for the visit's end
            agent.terminate()
            _, err = agent.communicate(timeout=60)
            assert agent.returncode == 0, err[-3000:]
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.communicate()
        # The visit that outlived the forget ends with a `left` naming no one. It is published as the agent stops:
        # give the broker a moment to deliver it to the subscriber before reading the list.
        wait_until(lambda: sum(m.topic == f"{BASE}/events" for m in live.messages) >= 2, 30, "the visit's left event")
        events = [json.loads(m.payload) for m in live.messages if m.topic == f"{BASE}/events"]
        assert [(e["type"], e["person"]) for e in events] == [("recognized", ADA), ("left", None)]

        run_agent(write_config(tmp_path, setup, broker.port, folder_of(tmp_path / "empty", None, 0)))
        after_restart = retained_now(broker)
    assert naming_ada(after_restart) == [] and set(after_restart) == expected_retained()
    assert after_restart[f"{BASE}/availability"] == b"offline"


def test_forget_while_stopped_is_applied_at_the_next_start_spool_included(
    tmp_path: Path, setup: dict[str, Path]
) -> None:
    gallery = tmp_path / "gallery.sqlite"
    shutil.copy(setup["work"] / "gallery.sqlite", gallery)
    seen = folder_of(tmp_path / "frames", setup["probe"], 8)
    empty = folder_of(tmp_path / "empty", None, 0)
    with MosquittoBroker(tmp_path / "b", persistence=True) as broker:
        run_agent(write_config(tmp_path, setup, broker.port, seen))
        assert json.loads(retained_now(broker)[f"{BASE}/last_person"])["person"] == ADA
        broker.stop()
        run_agent(write_config(tmp_path, setup, broker.port, seen))  # the broker is away: events are spooled
        with Spool(tmp_path / "state" / "spool.sqlite", 100, 1 << 20) as spool:
            spooled = [json.loads(i.message.payload) for i in spool.peek(100)]
        assert [(e["type"], e["person"]) for e in spooled] == [("recognized", ADA), ("left", ADA)]

        forget(setup, gallery, ADA)
        broker.start()  # persisted: the broker still holds Ada's presence, last_person and tracker
        assert len(naming_ada(retained_now(broker))) == 3
        with Subscriber(broker, ["facelite/#", "homeassistant/#"]) as live:
            run_agent(write_config(tmp_path, setup, broker.port, empty))
            got = live.messages
        after = retained_now(broker)
    assert naming_ada(after) == [] and set(after) == expected_retained()
    assert not [m for m in got if m.topic == f"{BASE}/events"]  # Ada's spooled events were erased, not sent
    # What the agent published (not what the broker still held at subscribe time) names no one forgotten.
    assert not [m for m in got if not m.retain and b"lovelace" in m.payload.lower()]
    with Spool(tmp_path / "state" / "spool.sqlite", 100, 1 << 20) as spool:
        assert spool.pending == 0
    on_disk = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir())
    assert b"Lovelace" not in on_disk and b"lovelace" not in on_disk  # spool and presence record


def test_presence_survives_a_restart_and_last_seen_moves_while_in_view(tmp_path: Path, setup: dict[str, Path]) -> None:
    shutil.copy(setup["work"] / "gallery.sqlite", tmp_path / "gallery.sqlite")
    frames = folder_of(tmp_path / "frames", setup["probe"], 24)  # 6 s at 4 fps
    ada = f"{BASE}/person/ada_lovelace"
    with MosquittoBroker(tmp_path / "b") as broker:
        with Subscriber(broker, ["facelite/#", "homeassistant/#"]) as live:
            config = write_config(
                tmp_path, setup, broker.port, frames, camera="fps_limit = 4\n", extra="last_seen_interval_s = 1\n"
            )
            started = time.monotonic()
            run_agent(config)
            elapsed = time.monotonic() - started
            first_run = [presence(m.payload) for m in live.messages if m.topic == ada]
            states = [json.loads(m.payload) for m in live.messages if m.topic == f"{BASE}/state"]
        # fps_limit paced the folder: every frame processed, none dropped, over at least 23 periods.
        assert (states[-1]["frames"], states[-1]["dropped_frames"]) == (24, 0)
        assert elapsed >= 23 / 4
        assert first_run[0] == ("away", None)  # the first start knows nothing of Ada
        sightings = first_run[1:]
        assert {s for s, _ in sightings} == {"home"}
        seen = [_epoch(ts) for _, ts in sightings]
        assert len(seen) >= 4 and seen == sorted(seen) and len(set(seen)) == len(seen)
        gaps = [b - a for a, b in itertools.pairwise(seen[:-1])]  # the last: the visit's end, published at once
        assert min(gaps) >= 1.0 - 1e-3
        last = retained_now(broker)
        assert presence(last[ada]) == sightings[-1]

        # Restart with nobody in view: Ada is still home with the same last_seen, never flipped to away.
        with Subscriber(broker, [ada]) as during:
            run_agent(write_config(tmp_path, setup, broker.port, folder_of(tmp_path / "empty", None, 0)))
            published = [presence(m.payload) for m in during.messages if not m.retain]
        assert published == [sightings[-1]]
        after = retained_now(broker)
    assert presence(after[ada]) == sightings[-1]
    assert presence(after[f"{BASE}/person/bob_byte"]) == ("away", None)


def test_discovery_holds_an_event_entity_for_visits(tmp_path: Path, setup: dict[str, Path]) -> None:
    shutil.copy(setup["work"] / "gallery.sqlite", tmp_path / "gallery.sqlite")
    with MosquittoBroker(tmp_path / "b") as broker:
        with Subscriber(broker, [f"homeassistant/event/{NODE}/+/config"]) as discovery:
            run_agent(write_config(tmp_path, setup, broker.port, folder_of(tmp_path / "empty", None, 0)))
            entities = {m.topic: json.loads(m.payload) for m in discovery.messages}
    assert list(entities) == [EVENT_ENTITY]
    visit = entities[EVENT_ENTITY]
    assert visit["state_topic"] == f"{BASE}/events"
    assert visit["event_types"] == ["recognized", "unknown", "left"]
    assert visit["unique_id"] == f"{NODE}_visit" and visit["device"]["identifiers"] == [NODE]
    assert visit["availability_topic"] == f"{BASE}/availability"
    assert "value_json.type" in visit["value_template"] and "'event_type'" in visit["value_template"]


def _epoch(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
