"""The real agent process, real converted models, real photos, a real mosquitto: the MQTT contract end to end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jsonschema
import pytest
from broker import MosquittoBroker, Subscriber
from helpers import Reaper, enroll_by_cli, wait_until

from facelite.service.events import EVENT_SCHEMA
from facelite.tools.demo import Visit, pick, plan, write_video

REPO = Path(__file__).resolve().parents[1]
DEVICE = "e2e"


@pytest.fixture(scope="module")
def doorway(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path, models_dir: Path) -> dict[str, object]:
    """A gallery enrolled with half of each person's photos and a video of the other half plus strangers."""
    work = tmp_path_factory.mktemp("doorway")
    detector, embedder = pick(models_dir, "blazeface"), pick(models_dir, "mobilefacenet")
    enroll_sets, visits = plan(faces_dir / "people")
    video = work / "doorway.avi"
    write_video(visits, video)
    enroll_by_cli(enroll_sets, detector, embedder, work / "gallery.sqlite")
    return {"work": work, "video": video, "visits": visits, "detector": detector, "embedder": embedder}


def write_config(
    path: Path, doorway: dict[str, object], port: int, source: str, extra: str = "", camera: str = ""
) -> Path:
    path.write_text(
        f'device_id = "{DEVICE}"\nstate_interval_s = 1\n\n[[cameras]]\nname = "door"\nsource = "{source}"\n{camera}\n'
        f'[models]\ndetector = "{doorway["detector"]}"\nembedder = "{doorway["embedder"]}"\nnum_threads = 1\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nclose_timeout_s = 30\n{extra}\n'
        f'[spool]\npath = "{path.parent / "spool.sqlite"}"\n\n[gallery]\npath = "{doorway["work"]}/gallery.sqlite"\n'
    )
    return path


def start_agent(config: Path, reaper: Reaper) -> subprocess.Popen[str]:
    """`python -m facelite`, registered with the reaper: killed at teardown if a failing test leaves it running."""
    return reaper.popen(
        [sys.executable, "-m", "facelite", "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def events_of(messages: list) -> list[dict]:
    return [json.loads(m.payload) for m in messages if m.topic == f"facelite/{DEVICE}/events"]


def unique(events: list[dict]) -> list[dict]:
    """QoS 1 is at-least-once: a duplicate carries the same event id and is dropped here."""
    seen, out = set(), []
    for e in events:
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            out.append(e)
    return out


def check_visits(visits: list[Visit], events: list[dict]) -> None:
    """One decision and one `left` per visit, in order; no stranger accepted as anyone."""
    decided = [e for e in events if e["type"] in ("recognized", "unknown")]
    left = [e for e in events if e["type"] == "left"]
    assert len(decided) == len(visits) and len(left) == len(visits)
    track_order = [e["track_id"] for e in events]
    assert track_order == sorted(track_order)  # each visit's events come before the next visit's
    for visit, e in zip(visits, decided):
        if not visit.enrolled:
            assert e["person"] is None and e["type"] == "unknown", (visit.photo, e)
        elif e["type"] == "recognized":
            assert e["person"] == visit.person, (visit.photo, e)
    known = [(v, e) for v, e in zip(visits, decided) if v.enrolled]
    correct = sum(e["person"] == v.person for v, e in known)
    assert correct >= 0.9 * len(known), f"{correct}/{len(known)} known visitors recognized"


def test_visits_become_exactly_one_event_each_with_the_documented_payload(
    tmp_path: Path, doorway: dict[str, object], reaper: Reaper
) -> None:
    with MosquittoBroker(tmp_path / "b") as broker, Subscriber(broker, ["facelite/#", "homeassistant/#"]) as sub:
        config = write_config(tmp_path / "agent.toml", doorway, broker.port, str(doorway["video"]))
        proc = start_agent(config, reaper)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        wait_until(lambda: any(m.payload == b"offline" for m in sub.messages), what="offline")
        msgs = sub.messages
        # What a client connecting later sees: the retained availability, state and discovery.
        with Subscriber(broker, ["facelite/#", "homeassistant/#"]) as late:
            late.wait_for(3)
            time.sleep(0.5)
            retained = {m.topic: m for m in late.messages if m.retain}
    availability = [m.payload for m in msgs if m.topic == f"facelite/{DEVICE}/availability"]
    assert availability[0] == b"online" and availability[-1] == b"offline"
    assert retained[f"facelite/{DEVICE}/availability"].payload == b"offline"
    assert f"facelite/{DEVICE}/state" in retained
    assert not any(t.endswith("/events") for t in retained)  # events are never retained
    events = events_of(msgs)
    assert len({e["event_id"] for e in events}) == len(events)
    for e in events:
        jsonschema.validate(e, EVENT_SCHEMA)
        uuid.UUID(e["event_id"])
        assert e["camera"] == "door" and e["schema"] == 1
        assert e["embedder"]["name"] == "mobilefacenet" and len(e["embedder"]["sha256"]) == 64
        assert 0 <= e["bbox"]["x"] <= 1 and 0 < e["bbox"]["w"] <= 1
        assert e["latency_ms"] >= 0 and e["timestamp"].endswith("Z")
    check_visits(doorway["visits"], events)  # type: ignore[arg-type]
    states = [json.loads(m.payload) for m in msgs if m.topic == f"facelite/{DEVICE}/state"]
    assert states
    final = states[-1]
    assert final["frames"] > 0 and final["models"]["embedder"].startswith("mobilefacenet/")
    assert set(final["stage_ms"]) >= {"detect", "embed", "match"}
    # Home Assistant discovery: the device and one entity per enrolled person, retained
    disc = [m for t, m in retained.items() if t.startswith("homeassistant/")]
    assert disc
    enrolled = {v.person for v in doorway["visits"] if v.enrolled}  # type: ignore[attr-defined]
    for person in enrolled:
        assert any(person in m.topic for m in disc), person
    presence = {m.topic.rsplit("/", 1)[1]: json.loads(m.payload) for m in msgs if "/person/" in m.topic}
    recognized = {e["person"] for e in events if e["type"] == "recognized"}
    for person in recognized:
        assert presence[person]["state"] == "home" and presence[person]["last_seen"].startswith("20")


def test_no_event_lost_when_the_broker_restarts_mid_stream(
    tmp_path: Path, doorway: dict[str, object], reaper: Reaper
) -> None:
    """Four visits played in real time (20 s); the broker is down for 4 s from the first event on."""
    visits = doorway["visits"][:4]  # type: ignore[index]
    video = tmp_path / "four.avi"
    write_video(visits, video)
    broker = MosquittoBroker(tmp_path / "b", persistence=True).start()
    sub = Subscriber(broker, [f"facelite/{DEVICE}/events"], client_id="e2e-watcher", clean_session=False).start()
    try:
        config = write_config(tmp_path / "agent.toml", doorway, broker.port, str(video), camera="realtime = true")
        proc = start_agent(config, reaper)
        wait_until(lambda: len(sub.messages) >= 1, timeout=120, what="first event")
        broker.stop()
        time.sleep(4.0)  # the agent goes on recognising; its events go to the disk spool
        during_outage = len(sub.messages)
        broker.start()
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        wait_until(
            lambda: len(unique(events_of(sub.messages))) >= 2 * len(visits),
            timeout=60,  # type: ignore[arg-type]
            what="all events after the restart",
        )
        events = unique(events_of(sub.messages))
    finally:
        sub.stop()
        broker.kill()
    assert during_outage == 1
    assert len(events) > during_outage
    check_visits(visits, events)  # type: ignore[arg-type]


def test_last_will_says_offline_when_the_agent_is_killed(
    tmp_path: Path, doorway: dict[str, object], reaper: Reaper
) -> None:
    """A camera that is not there: the agent keeps running, reports it in state, and dies hard on SIGKILL."""
    with MosquittoBroker(tmp_path / "b") as broker, Subscriber(broker, ["facelite/#"]) as sub:
        config = write_config(tmp_path / "agent.toml", doorway, broker.port, "/dev/video-facelite-missing")
        proc = start_agent(config, reaper)
        try:
            wait_until(lambda: any(m.topic.endswith("/state") for m in sub.messages), what="state")
            state = json.loads(next(m.payload for m in sub.messages if m.topic.endswith("/state")))
            assert state["camera"] in ("reconnecting", "connecting")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            wait_until(
                lambda: [m.payload for m in sub.messages if m.topic.endswith("/availability")][-1:] == [b"offline"],
                what="last will",
            )
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    payloads = [m.payload for m in sub.messages if m.topic.endswith("/availability")]
    assert payloads == [b"online", b"offline"]


def test_sigterm_flushes_and_exits_zero(tmp_path: Path, doorway: dict[str, object], reaper: Reaper) -> None:
    with MosquittoBroker(tmp_path / "b") as broker, Subscriber(broker, ["facelite/#"]) as sub:
        config = write_config(tmp_path / "agent.toml", doorway, broker.port, "/dev/video-facelite-missing")
        proc = start_agent(config, reaper)
        wait_until(lambda: any(m.payload == b"online" for m in sub.messages), what="online")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        wait_until(lambda: any(m.payload == b"offline" for m in sub.messages), what="offline")
    assert proc.returncode == 0, err[-2000:]
    assert "agent stopped" in err


def test_a_burst_of_sigterms_still_flushes_and_exits_zero_every_time(
    tmp_path: Path, doorway: dict[str, object], reaper: Reaper
) -> None:
    """SIGTERMs repeated for half a second (an operator insisting, or a supervisor and a service manager both
    stopping it): the agent stops once, flushes, says offline and exits 0, every round. Its handler once logged
    and set an Event (both take locks, unsafe where Python runs a handler), and a SIGTERM landing while the
    interpreter exited killed it with -15 after its flush."""
    with MosquittoBroker(tmp_path / "b") as broker, Subscriber(broker, ["facelite/#"]) as sub:
        config = write_config(tmp_path / "agent.toml", doorway, broker.port, "/dev/video-facelite-missing")
        for i in range(3):
            proc = start_agent(config, reaper)
            wait_until(lambda n=i + 1: sum(m.payload == b"online" for m in sub.messages) >= n, what="online")
            end = time.monotonic() + 0.5
            while time.monotonic() < end and proc.poll() is None:
                for _ in range(100):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"round {i}: exit {proc.returncode}\n{err[-2000:]}"
            assert err.count("agent stopped") == 1, err[-2000:]
            wait_until(lambda n=i + 1: sum(m.payload == b"offline" for m in sub.messages) >= n, what="offline")


def test_bad_config_key_is_refused_with_key_path_and_line(tmp_path: Path, doorway: dict[str, object]) -> None:
    config = write_config(tmp_path / "agent.toml", doorway, 1883, str(doorway["video"]), extra="colour = 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "facelite", "--config", str(config), "--check-config"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "mqtt.colour" in lines[0] and "agent.toml:" in lines[0]


def test_gallery_from_another_model_is_refused(tmp_path: Path, doorway: dict[str, object], models_dir: Path) -> None:
    other = pick(models_dir, "facenet")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "facelite.cli",
            "gallery",
            "list",
            "--detector",
            str(doorway["detector"]),
            "--embedder",
            str(other),
            "--gallery",
            f"{doorway['work']}/gallery.sqlite",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert "re-enroll" in line and "facelite enroll" in line


def test_enroll_reports_photos_without_exactly_one_face(
    tmp_path: Path, doorway: dict[str, object], faces_dir: Path
) -> None:
    blank = tmp_path / "blank.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(blank), np.full((200, 200, 3), 120, np.uint8))
    group = faces_dir / "scenes" / "multiface.jpg"
    single = next((faces_dir / "people" / "fr_obama").glob("*.jpg"))
    env = {**os.environ}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "facelite.cli",
            "enroll",
            "Barack",
            str(single),
            str(blank),
            str(group),
            "--detector",
            str(doorway["detector"]),
            "--embedder",
            str(doorway["embedder"]),
            "--gallery",
            str(tmp_path / "g.sqlite"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"skipped: no face found ({blank})" in proc.stderr
    assert "skipped: several faces" in proc.stderr and str(group) in proc.stderr
    assert "enrolled Barack: 1 template(s) from 1 photo(s); 2 skipped" in proc.stdout


def test_self_test_finds_faces_or_fails_with_one_line(
    tmp_path: Path, doorway: dict[str, object], faces_dir: Path
) -> None:
    config = write_config(tmp_path / "agent.toml", doorway, 1883, str(doorway["video"]))
    scene = faces_dir / "scenes" / "couple.jpg"
    ok = subprocess.run(
        [sys.executable, "-m", "facelite", "--config", str(config), "--self-test", str(scene), "--expect-faces", "2"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    report = json.loads(ok.stdout)
    assert report["faces"] >= 2 and report["people_enrolled"] > 0
    assert report["embedder"].startswith("mobilefacenet/") and len(report["matches"]) == report["faces"]
    bad = subprocess.run(
        [sys.executable, "-m", "facelite", "--config", str(config), "--self-test", str(scene), "--expect-faces", "9"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == (
        f"error: self-test found {report['faces']} face(s) in {scene}, expected at least 9"
    )


def test_events_spooled_at_shutdown_are_delivered_before_exit_when_the_broker_returns(
    tmp_path: Path, doorway: dict[str, object], reaper: Reaper
) -> None:
    """The stream ends while the broker is away: the agent keeps trying until mqtt.close_timeout_s."""
    visits = doorway["visits"][:3]  # type: ignore[index]
    video = tmp_path / "three.avi"
    write_video(visits, video)
    broker = MosquittoBroker(tmp_path / "b", persistence=True).start()
    sub = Subscriber(broker, [f"facelite/{DEVICE}/events"], client_id="close-watcher", clean_session=False).start()
    try:
        broker.stop()
        config = write_config(tmp_path / "agent.toml", doorway, broker.port, str(video))
        proc = start_agent(config, reaper)
        time.sleep(3.0)  # the whole (fast) stream is processed with the broker down
        assert proc.poll() is None, "the agent must wait for the broker while events are spooled"
        broker.start()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-3000:]
        wait_until(lambda: len(unique(events_of(sub.messages))) >= 2 * len(visits), timeout=30, what="events")
    finally:
        sub.stop()
        broker.kill()
    check_visits(visits, unique(events_of(sub.messages)))
    assert "still spooled" not in err
