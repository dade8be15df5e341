"""Fault injection on the real agent process: broker outages, SIGKILL, a full disk, a camera that goes away.

Everything is real: `python -m facelite` as a subprocess, the converted models, a gallery enrolled from the
photos, mosquitto, an MJPEG-over-HTTP camera, and a tmpfs inside a private mount namespace for the disk.
The agent logs every event right after handing it to the sink (``event <type> camera=.. track=..``), and a
durable event is on disk by then, so its log is the ground truth the deliveries are compared with.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from broker import MosquittoBroker, Subscriber
from helpers import wait_until
from soak import (
    AgentProcess,
    LoggedEvent,
    MjpegCamera,
    RecordingListener,
    base_config,
    doorway_frames,
    enroll_gallery,
    events_of,
    pick,
    state_messages,
    unique_events,
    write_config,
)

from facelite.service.spool import Spool
from facelite.tools.demo import Visit, place, plan, write_video
from facelite.vision.imageio import read_image

DEVICE = "fault"
EVENTS = f"facelite/{DEVICE}/events"
STATE = f"facelite/{DEVICE}/state"
EVENT_RX = r"event \w+ camera="
REPO_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class World:
    detector: Path
    embedder: Path
    gallery: Path  # enrolled once; tests that may damage it work on a copy
    people: dict[str, int]  # templates per enrolled person
    visits: list[Visit]
    faces: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path, models_dir: Path) -> World:
    work = tmp_path_factory.mktemp("world")
    detector, embedder = pick(models_dir, "blazeface"), pick(models_dir, "mobilefacenet")
    enroll_sets, visits = plan(faces_dir / "people")
    people = enroll_gallery(work / "gallery.sqlite", detector, embedder, enroll_sets)
    assert len(people) >= 10
    return World(detector, embedder, work / "gallery.sqlite", people, visits, faces_dir)


def copy_gallery(world: World, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "gallery.sqlite"
    with sqlite3.connect(world.gallery) as src, sqlite3.connect(target) as dst:
        src.backup(dst)  # a consistent copy whatever the WAL holds
    target.chmod(0o600)
    return target


def received(sub: Subscriber) -> list[LoggedEvent]:
    return [LoggedEvent.of_payload(e) for e in unique_events(events_of(sub.messages, DEVICE))]


def check_duplicates_are_identical(sub: Subscriber) -> int:
    """At-least-once: a re-sent event has the id and the bytes of the first copy. Returns how many re-sends."""
    by_id: dict[str, bytes] = {}
    duplicates = 0
    for m in sub.messages:
        if m.topic != EVENTS:
            continue
        event_id = str(json.loads(m.payload)["event_id"])
        if event_id in by_id:
            assert by_id[event_id] == m.payload, f"event {event_id} re-sent with different content"
            duplicates += 1
        by_id.setdefault(event_id, m.payload)
    return duplicates


def no_traceback(agent: AgentProcess) -> None:
    assert "Traceback" not in agent.stderr, agent.stderr[-3000:]


def persistent_watcher(broker: MosquittoBroker, name: str) -> Subscriber:
    """A subscriber whose session (and its queued QoS 1 messages) survives broker restarts."""
    return Subscriber(broker, [EVENTS, STATE], client_id=f"watcher-{name}", clean_session=False).start()


# -- broker outages --------------------------------------------------------------------------------------------
def test_broker_outage_mid_stream_loses_no_event_and_keeps_their_order(tmp_path: Path, world: World) -> None:
    """Five visits in real time (25 s); the broker is down from the first event until two more were spooled."""
    visits = world.visits[:5]
    video = tmp_path / "door.avi"
    write_video(visits, video)
    broker = MosquittoBroker(tmp_path / "b", persistence=True).start()
    sub = persistent_watcher(broker, "outage")
    config = base_config(
        tmp_path,
        detector=world.detector,
        embedder=world.embedder,
        source=str(video),
        gallery=world.gallery,
        port=broker.port,
        camera={"realtime": True},
        mqtt={"reconnect": {"initial_s": 0.5, "max_s": 2.0}},
    )
    try:
        with AgentProcess(write_config(tmp_path / "agent.toml", config)) as agent:
            wait_until(lambda: len(received(sub)) >= 1, timeout=120, what="the first event")
            broker.stop()
            down_at = len(agent.events())
            agent.wait_line(EVENT_RX, count=down_at + 2, timeout=60)  # recognised while the broker is away
            spooled_in_outage = len(agent.events()) - down_at
            broker.start()
            assert agent.wait(300) == 0, agent.stderr[-3000:]
            logged = agent.events()
            wait_until(lambda: len(received(sub)) >= len(logged), timeout=60, what="every logged event")
            time.sleep(1.0)  # late duplicates, if any, arrive now
        got = received(sub)
        duplicates = check_duplicates_are_identical(sub)
    finally:
        sub.stop()
        broker.kill()
    no_traceback(agent)
    assert spooled_in_outage >= 2
    assert len(logged) >= 2 * len(visits) - 1
    assert got == logged  # nothing lost, nothing invented, same order
    print(f"outage: {len(logged)} events, {spooled_in_outage} spooled during the outage, {duplicates} duplicate(s)")


def test_spool_overflow_drops_the_oldest_and_state_reports_the_count(tmp_path: Path, world: World) -> None:
    """Broker away during four visits, spool.max_messages = 3: the newest 3 events survive, the rest counted."""
    visits = world.visits[:4]
    broker = MosquittoBroker(tmp_path / "b", persistence=True).start()
    persistent_watcher(broker, "overflow").stop()  # the session exists; its messages queue while it is away
    broker.stop()
    sub = None
    with MjpegCamera(doorway_frames(visits), loop=False) as camera:  # the visits, then an empty doorway
        config = base_config(
            tmp_path,
            detector=world.detector,
            embedder=world.embedder,
            source=camera.url,
            gallery=world.gallery,
            port=broker.port,
            mqtt={"reconnect": {"initial_s": 0.5, "max_s": 1.0}},
            spool={"max_messages": 3},
        )
        try:
            with AgentProcess(write_config(tmp_path / "agent.toml", config)) as agent:
                agent.wait_line(EVENT_RX, count=2 * len(visits), timeout=180)
                logged = agent.events()
                broker.start()
                sub = persistent_watcher(broker, "overflow")
                wait_until(lambda: len(received(sub)) >= 3, timeout=30, what="the spooled events")
                wait_until(lambda: state_messages(sub.messages, DEVICE), timeout=30, what="a state message")
                time.sleep(1.0)
                assert agent.terminate() == 0, agent.stderr[-3000:]
            got = received(sub)
            states = state_messages(sub.messages, DEVICE)
        finally:
            if sub is not None:
                sub.stop()
            broker.kill()
    no_traceback(agent)
    assert len(logged) == 2 * len(visits)
    assert got == logged[-3:]  # the oldest were dropped, the newest delivered in order
    reported = [s["spool"] for s in states]
    # While the broker was away (the latest retained state, re-published on reconnect): a full spool, losses counted
    assert reported[0]["pending"] == 3 and reported[0]["dropped"] >= 1
    assert reported[-1] == {"pending": 0, "dropped": len(logged) - 3}  # delivered; the count of losses stays
    assert all(r["pending"] <= 3 and r["dropped"] <= len(logged) - 3 for r in reported)
    overflow_lines = [line for line in agent.lines if "dropping the oldest" in line]
    assert len(overflow_lines) == 1, overflow_lines  # one line per episode, not one per event
    print(f"overflow: {len(logged)} events, {len(got)} delivered, state spool {reported}")


# -- SIGKILL ---------------------------------------------------------------------------------------------------
def gallery_fingerprint(path: Path) -> tuple[str, list[tuple[str, int, bytes]]]:
    """integrity_check, and every person with their template count and vector bytes."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        rows = db.execute(
            "SELECT p.name, count(t.id), group_concat(hex(t.vector), '') FROM people p "
            "JOIN templates t ON t.person_id = p.id GROUP BY p.id ORDER BY p.name"
        ).fetchall()
    return check, [(n, c, bytes.fromhex(v)) for n, c, v in rows]


def test_sigkill_mid_stream_keeps_gallery_and_spool_and_the_next_run_delivers(tmp_path: Path, world: World) -> None:
    """Broker down while the agent runs; SIGKILL; broker up; restart the agent -> the old events arrive."""
    gallery = copy_gallery(world, tmp_path / "g")
    before = gallery_fingerprint(gallery)
    video = tmp_path / "door.avi"
    write_video(world.visits[:6], video)
    broker = MosquittoBroker(tmp_path / "b", persistence=True).start()
    persistent_watcher(broker, "kill").stop()
    broker.stop()
    common = {
        "detector": world.detector,
        "embedder": world.embedder,
        "gallery": gallery,
        "port": broker.port,
        "mqtt": {"reconnect": {"initial_s": 0.5, "max_s": 1.0}},
    }
    first = base_config(tmp_path, source=str(video), camera={"realtime": True}, **common)
    with AgentProcess(write_config(tmp_path / "first.toml", first)) as agent:
        agent.wait_line(EVENT_RX, count=3, timeout=120)
        assert agent.kill() == -9
    logged = agent.events()
    assert not any("camera door ended" in line for line in agent.lines)  # killed mid-stream
    assert gallery_fingerprint(gallery) == before
    assert before[0] == "ok"
    with Spool(tmp_path / "spool.sqlite", max_messages=10000, max_bytes=1 << 26) as spool:
        spooled = [LoggedEvent.of_payload(json.loads(m.message.payload)) for m in spool.peek(1000)]
    # Every logged event was committed before it was logged; one more may have been committed, not logged.
    assert spooled[: len(logged)] == logged and len(spooled) - len(logged) <= 1

    broker.start()
    sub = persistent_watcher(broker, "kill")
    try:
        # The camera is gone after the restart: whatever arrives comes from the spool.
        second = base_config(tmp_path, source="/dev/video-facelite-missing", **common)
        with AgentProcess(write_config(tmp_path / "second.toml", second)) as again:
            wait_until(lambda: len(received(sub)) >= len(spooled), timeout=60, what="the events of the killed run")
            assert again.terminate() == 0, again.stderr[-3000:]
        got = received(sub)
    finally:
        sub.stop()
        broker.kill()
    no_traceback(again)
    assert any(f"{len(spooled)} pending message(s)" in line for line in again.lines)
    assert any(f"{len(world.people)} people enrolled" in line for line in again.lines)
    assert got == spooled
    with Spool(tmp_path / "spool.sqlite", max_messages=10000, max_bytes=1 << 26) as spool:
        assert spool.pending == 0
    assert gallery_fingerprint(gallery) == before
    print(f"sigkill: {len(logged)} logged before the kill, {len(spooled)} spooled, all delivered by the next run")


# -- a full disk -----------------------------------------------------------------------------------------------
def namespace_with_tmpfs(mount: Path, size: str, setup: str = "") -> list[str]:
    """A wrapper: private mount namespace, a tmpfs of ``size`` on ``mount``, ``setup``, then exec the command."""
    unshare = shutil.which("unshare")
    assert unshare, "util-linux `unshare` is needed for the disk-full tests"
    prefix = [unshare, "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix[1:1] = ["--user", "--map-root-user"]
    script = f'mount -t tmpfs -o size={size} tmpfs "$0" && {setup + " && " if setup else ""}exec "$@"'
    return [*prefix, "sh", "-c", script, str(mount)]


def fill(folder: Path) -> int:
    """Write a ballast file until the filesystem says ENOSPC; returns bytes written."""
    written = 0
    fd = os.open(folder / "ballast", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 16, 4096, 64, 1):
            while True:
                try:
                    written += os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return written


def inside(agent: AgentProcess, path: Path) -> Path:
    """``path`` as the agent sees it (its mount namespace), through /proc/<pid>/root."""
    return Path(f"/proc/{agent.pid}/root") / path.relative_to("/")


def test_disk_full_while_spooling_keeps_running_says_so_once_and_keeps_committed_events(
    tmp_path: Path, world: World
) -> None:
    mount = tmp_path / "var"
    mount.mkdir()
    video = tmp_path / "door.avi"
    write_video(world.visits[:6], video)
    broker = MosquittoBroker(tmp_path / "b", persistence=True).start()
    sub = persistent_watcher(broker, "diskfull")
    config = base_config(
        mount,
        detector=world.detector,
        embedder=world.embedder,
        source=str(video),
        gallery=world.gallery,
        port=broker.port,
        camera={"realtime": True},
        mqtt={"reconnect": {"initial_s": 0.5, "max_s": 1.0}},
    )
    try:
        with AgentProcess(
            write_config(tmp_path / "agent.toml", config), wrapper=namespace_with_tmpfs(mount, "2m")
        ) as agent:
            agent.wait_line(r"spool .*: 0 pending", timeout=60)
            wait_until(lambda: len(received(sub)) >= 1, timeout=120, what="the first event")
            broker.stop()
            agent.wait_line(EVENT_RX, count=len(agent.events()) + 1, timeout=60)  # spooled: broker away
            ballast = fill(inside(agent, mount))
            full_line = agent.wait_line(r"disk is full; dropping", timeout=60)[0]
            committed = agent.events()[: _events_before(agent, full_line)]
            agent.wait_line(EVENT_RX, count=len(agent.events()) + 1, timeout=60)  # dropped: disk full
            assert agent.alive()
            broker.start()
            wait_until(lambda: received(sub)[: len(committed)] == committed, timeout=60, what="the committed events")
            (inside(agent, mount) / "ballast").unlink()
            freed_at = len(agent.events())
            agent.wait_line(EVENT_RX, count=freed_at + 1, timeout=60)
            assert agent.wait(300) == 0, agent.stderr[-3000:]
            logged = agent.events()
            time.sleep(1.5)
        got = received(sub)
        states = state_messages(sub.messages, DEVICE)
    finally:
        sub.stop()
        broker.kill()
    no_traceback(agent)
    assert ballast > 0
    # One line per problem and episode, not one per event: the refused writes, and the acks the full disk refused
    # while the broker was back (those events stay spooled and may be sent twice, never lost).
    assert len([line for line in agent.lines if "disk is full; dropping" in line]) == 1
    assert len([line for line in agent.lines if "ack failed" in line]) <= 1
    assert got[: len(committed)] == committed  # nothing committed before the disk filled was lost
    dropped = states[-1]["spool"]["dropped"]
    assert dropped >= 1
    assert len(got) + dropped == len(logged)  # every event was delivered or counted as dropped
    assert set(got) <= set(logged) and got == [e for e in logged if e in set(got)]  # in order
    assert got[-1] == logged[-1]  # space freed: delivering again
    print(f"disk full (spool): {len(logged)} events, {len(got)} delivered, {dropped} dropped and counted")


def _events_before(agent: AgentProcess, line: str) -> int:
    """How many event lines the agent logged before ``line``."""
    lines = agent.lines
    return sum(1 for entry in lines[: lines.index(line)] if "event " in entry and " camera=" in entry)


def run_in(agent: AgentProcess, *args: str, module: str = "facelite.cli") -> subprocess.CompletedProcess[str]:
    """A `facelite` command (or ``python -c``) in the agent's mount namespace: it sees the same tmpfs.

    (SQLite resolves /proc/<pid>/root symlinks to the host's view, so databases are opened from inside.)
    """
    nsenter = shutil.which("nsenter")
    assert nsenter, "util-linux `nsenter` is needed for the disk-full tests"
    repo = Path(__file__).resolve().parents[1]
    python = [sys.executable, "-m", module] if module != "-c" else [sys.executable, "-c"]
    return subprocess.run(
        [nsenter, "--target", str(agent.pid), "--mount", *python, *args],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=120,
    )


def test_disk_full_while_enrolling_fails_in_one_line_and_keeps_the_gallery(tmp_path: Path, world: World) -> None:
    mount = tmp_path / "var"
    mount.mkdir()
    host_gallery = copy_gallery(world, tmp_path / "g")
    before = gallery_fingerprint(host_gallery)
    gallery = mount / "gallery.sqlite"
    config = base_config(
        tmp_path,
        detector=world.detector,
        embedder=world.embedder,
        source="/dev/video-facelite-missing",  # idle: the agent only waits for its camera
        gallery=gallery,
        port=None,
    )
    newcomer = sorted((world.faces / "people").iterdir())[-1]
    photos = [str(p) for p in sorted(newcomer.glob("*.jpg"))[:3]]
    models = ["--detector", str(world.detector), "--embedder", str(world.embedder), "--gallery", str(gallery)]
    setup = f'cp "{host_gallery}" "$0/gallery.sqlite"'
    with AgentProcess(
        write_config(tmp_path / "agent.toml", config), wrapper=namespace_with_tmpfs(mount, "4m", setup)
    ) as agent:
        agent.wait_line(r"agent fault running", timeout=60)
        fill(inside(agent, mount))
        failed = run_in(agent, "enroll", "Newcomer", *photos, *models)
        listed = run_in(agent, "gallery", "list", *models)
        time.sleep(6)  # a gallery refresh of the running agent happens meanwhile
        assert agent.alive()
        (inside(agent, mount) / "ballast").unlink()
        ok = run_in(agent, "enroll", "Newcomer", *photos, *models)
        agent.wait_line(rf"gallery changed \(version \d+\): {len(world.people) + 1} people", timeout=30)
        # The committed state, WAL included, copied out before the tmpfs goes with the agent.
        backup = "import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))"
        copied = run_in(agent, backup, str(gallery), str(tmp_path / "after.sqlite"), module="-c")
        assert copied.returncode == 0, copied.stderr
        assert agent.terminate() == 0
    no_traceback(agent)
    assert failed.returncode != 0
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith("error: gallery write failed") and "full" in line and str(gallery) in line
    assert "Traceback" not in failed.stderr
    assert listed.returncode == 0, listed.stderr
    assert f"{len(world.people)} people" in listed.stdout  # readable while full, nothing lost
    assert ok.returncode == 0, ok.stderr
    assert "enrolled Newcomer" in ok.stdout
    check, rows = gallery_fingerprint(tmp_path / "after.sqlite")
    assert check == "ok"
    assert [r for r in rows if r[0] != "Newcomer"] == before[1]  # committed people untouched
    assert [r[0] for r in rows].count("Newcomer") == 1
    print(f"disk full (enroll): refused in one line: {line}")


# -- corrections: `facelite gallery reject` on a full disk, on a locked gallery ---------------------------------
def reject_setup(folder: Path, models_dir: Path) -> tuple[Path, str]:
    """A gallery with Ada and one event face announced as her in the state folder; returns (config, event id).

    Vectors are random unit vectors stamped with the real embedder: the command only moves them around."""
    from facelite.recognition.eventfaces import EventFace, EventFaceStore, StorePolicy
    from facelite.recognition.gallery import Gallery
    from facelite.vision.embed import Embedder

    detector, embedder_dir = pick(models_dir, "blazeface"), pick(models_dir, "mobilefacenet")
    embedder = Embedder.from_model_dir(embedder_dir)
    dim = int(embedder.manifest.embedding_size or 0)
    rng = np.random.default_rng(7)
    unit = [v / np.linalg.norm(v) for v in rng.standard_normal((3, dim)).astype(np.float32)]
    (folder / "state").mkdir(parents=True)
    with Gallery.open(folder / "gallery.sqlite", embedder_sha256=embedder.sha256, embedding_size=dim) as g:
        g.enroll("Ada", unit[:2], ["a.jpg", "b.jpg"])
    event_id = "6f1c2b1e-8f0a-4d5e-9a43-3c1d2e4f5a6b"
    with EventFaceStore(folder / "state" / "event_faces.sqlite", key=None, policy=StorePolicy()) as store:
        assert store.put(EventFace(event_id, time.time(), "Ada", "door", embedder.sha256, unit[2]))
    config = base_config(
        folder / "state",
        detector=detector,
        embedder=embedder_dir,
        source="/dev/video-facelite-missing",
        gallery=folder / "gallery.sqlite",
        port=None,
    )
    return write_config(folder / "agent.toml", config), event_id


def negatives_in(gallery: Path) -> int:
    with sqlite3.connect(gallery) as con:
        return int(con.execute("SELECT COUNT(*) FROM negatives").fetchone()[0])


# Inside the tmpfs: keep the gallery and store open (their WAL and shared memory exist), fill the disk, reject,
# free the space, reject again; print what happened as JSON.
_REJECT_ON_FULL_DISK = """
import json, os, sqlite3, subprocess, sys
folder, config, event_id = sys.argv[1:4]
held = [sqlite3.connect(os.path.join(folder, f)) for f in ("gallery.sqlite", "state/event_faces.sqlite")]
for con in held:
    con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
fd = os.open(os.path.join(folder, "ballast"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
for chunk in (1 << 16, 4096, 64, 1):
    while True:
        try:
            os.write(fd, bytes(chunk))
        except OSError:
            break
os.close(fd)
cmd = [sys.executable, "-m", "facelite.cli", "gallery", "reject", event_id, "--config", config]
full = subprocess.run(cmd, capture_output=True, text=True)
negatives = held[0].execute("SELECT COUNT(*) FROM negatives").fetchone()[0]
os.unlink(os.path.join(folder, "ballast"))
ok = subprocess.run(cmd, capture_output=True, text=True)
after = held[0].execute("SELECT COUNT(*) FROM negatives").fetchone()[0]
print(json.dumps({"full": [full.returncode, full.stdout, full.stderr], "negatives_when_full": negatives,
                  "ok": [ok.returncode, ok.stdout, ok.stderr], "negatives_after": after}))
"""


def test_disk_full_while_rejecting_fails_in_one_line_and_keeps_the_gallery(tmp_path: Path, models_dir: Path) -> None:
    mount = tmp_path / "var"
    mount.mkdir()
    host = tmp_path / "host"
    host.mkdir()
    config, event_id = reject_setup(mount, models_dir)  # written on the host, then copied into the tmpfs
    shutil.copytree(mount, host, dirs_exist_ok=True)
    for p in mount.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    setup = f'cp -a "{host}/." "$0/"'
    proc = subprocess.run(
        [*namespace_with_tmpfs(mount, "2m", setup), sys.executable, "-c", _REJECT_ON_FULL_DISK, str(mount),
         str(config), event_id],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    code, out, err = got["full"]
    assert code != 0 and out == "" and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and "full" in line, line
    assert got["negatives_when_full"] == 0  # nothing half-written
    code, out, err = got["ok"]
    assert code == 0, err
    assert out.startswith(f"rejected event {event_id}") and got["negatives_after"] == 1
    print(f"disk full (reject): refused in one line: {line}")


def test_locked_gallery_while_rejecting_fails_in_one_line_then_works(tmp_path: Path, models_dir: Path) -> None:
    config, event_id = reject_setup(tmp_path, models_dir)
    gallery = tmp_path / "gallery.sqlite"
    holder = sqlite3.connect(gallery, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer (an enrolment) holds the gallery for longer than 5 s
    try:
        cmd = [sys.executable, "-m", "facelite.cli", "gallery", "reject", event_id, "--config", str(config)]
        locked = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO_DIR)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert locked.returncode != 0 and locked.stdout == "" and "Traceback" not in locked.stderr
    (line,) = locked.stderr.strip().splitlines()
    assert line.startswith("error: ") and "locked" in line and str(gallery) in line, line
    assert negatives_in(gallery) == 0
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO_DIR)
    assert ok.returncode == 0 and negatives_in(gallery) == 1, ok.stderr


def test_locked_gallery_while_enrolling_from_an_event_fails_in_one_line_then_works(
    tmp_path: Path, models_dir: Path
) -> None:
    config, event_id = reject_setup(tmp_path, models_dir)  # an event announced as Ada: enrolling it as Ada is allowed
    gallery = tmp_path / "gallery.sqlite"
    cmd = [sys.executable, "-m", "facelite.cli", "enroll", "Ada", "--from-event", event_id, "--config", str(config)]
    holder = sqlite3.connect(gallery, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the gallery for longer than the 5 s busy timeout
    try:
        locked = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO_DIR)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert locked.returncode != 0 and locked.stdout == "" and "Traceback" not in locked.stderr
    (line,) = locked.stderr.strip().splitlines()
    assert line.startswith("error: ") and "locked" in line and str(gallery) in line, line
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO_DIR)
    assert ok.returncode == 0 and ok.stdout.startswith(f"enrolled Ada from event {event_id}"), ok.stderr
    with sqlite3.connect(gallery) as con:
        assert con.execute("SELECT COUNT(*) FROM templates").fetchone()[0] == 3


def test_camera_lost_during_guided_capture_ends_it_with_what_was_kept(tmp_path: Path, world: World) -> None:
    """An IP camera that shows a frontal face goes away before the other poses: after its reconnect attempts the
    capture ends, enrols the front face and says which poses got none; bounded time, no traceback."""
    person = sorted((world.faces / "people" / "deepface_id04").glob("*.jpg"))
    frontal = place(read_image(next(p for p in person if p.name == "img17.jpg")))
    gallery = copy_gallery(world, tmp_path)
    camera = MjpegCamera([frontal]).start()
    cmd = [sys.executable, "-m", "facelite.cli", "enroll", "Dee", "--camera", camera.url, "--timeout-s", "120",
           "--detector", str(world.detector), "--embedder", str(world.embedder), "--gallery", str(gallery)]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_DIR)
    try:
        assert proc.stderr is not None
        prompts = [proc.stderr.readline().strip(), proc.stderr.readline().strip()]
        assert prompts[0].startswith("pose front:") and prompts[1].startswith("pose left:"), prompts
        camera.stop()  # unplugged while the person turns
        out, err = proc.communicate(timeout=60)
    finally:
        camera.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - started
    assert proc.returncode == 0 and "Traceback" not in err, err
    summary, enrolled = out.strip().splitlines()  # nothing else on stdout (OpenCV's FFmpeg log went there)
    assert summary.startswith("kept 1 template(s) (front 1, left 0, right 0)"), summary
    assert "stopped: end of source" in summary and summary.endswith("no face for: left, right")
    assert enrolled.startswith("enrolled Dee: 1 template(s) from the camera")
    assert elapsed < 60
    with sqlite3.connect(gallery) as con:
        sources = [r[0] for r in con.execute("SELECT source FROM templates WHERE source LIKE 'camera %'")]
    assert len(sources) == 1 and "(front)" in sources[0]
    print(f"camera lost mid-capture: {summary} in {elapsed:.1f} s")


# -- MQTT commands on a full disk --------------------------------------------------------------------------------
def test_disk_full_while_a_command_writes_the_gallery_is_refused_with_the_reason_and_the_agent_keeps_recognising(
    tmp_path: Path, world: World
) -> None:
    from test_commands_mqtt import Commander, agent_config, visits_folder

    visit = next(v for v in world.visits if v.enrolled)
    seen = rf"event recognized .*person={re.escape(visit.person)} "
    mount, host = tmp_path / "var", tmp_path / "host"
    mount.mkdir()
    copy_gallery(world, host)
    frames = visits_folder(tmp_path / "frames", visit.photo, 40)
    models = {"work": host, "detector": world.detector, "embedder": world.embedder}
    with MosquittoBroker(tmp_path / "b") as broker:
        commander = Commander(broker, DEVICE)
        config = agent_config(host, models, broker.port, frames, device=DEVICE, commands={"enabled": True})
        # The gallery and the state folder live on a small tmpfs: written on the host, copied in, paths rewritten.
        config.write_text(config.read_text().replace(str(host), str(mount)))
        try:
            with AgentProcess(config, wrapper=namespace_with_tmpfs(mount, "4m", f'cp -a "{host}/." "$0/"')) as agent:
                agent.wait_line(seen, timeout=90)
                commander.wait_online()
                assert commander.ask({"id": "before", "command": "ping"})["ok"]
                ballast = fill(inside(agent, mount))
                full = commander.ask({"id": "full-1", "command": "forget", "args": {"person": visit.person}})
                assert full["ok"] is False and "full" in full["error"], full
                recognized = len(agent.wait_line(seen))
                agent.wait_line(seen, count=recognized + 1, timeout=60)  # still recognising
                assert agent.alive()
                (inside(agent, mount) / "ballast").unlink()
                done = commander.ask({"id": "full-2", "command": "forget", "args": {"person": visit.person}})
                assert done["ok"], done
                assert agent.terminate() == 0
        finally:
            commander.close()
    assert ballast > 0
    no_traceback(agent)
    # The record of command ids could not be written either: said once, the ids kept in memory.
    assert len([line for line in agent.lines if "command id record" in line and "cannot be written" in line]) == 1
    print(f"disk full (command): refused with {full['error']!r}")


# -- the camera goes away --------------------------------------------------------------------------------------
def test_camera_lost_reports_reconnecting_backs_off_and_resumes(tmp_path: Path, world: World) -> None:
    frames = doorway_frames(world.visits[:2])
    backoff = {"initial_s": 0.5, "max_s": 4.0, "multiplier": 2.0, "jitter": 0.0}
    with MosquittoBroker(tmp_path / "b") as broker, Subscriber(broker, [STATE]) as sub:
        camera = MjpegCamera(frames).start()
        config = base_config(
            tmp_path,
            detector=world.detector,
            embedder=world.embedder,
            source=camera.url,
            gallery=world.gallery,
            port=broker.port,
            camera={"fps_limit": 5.0, "reconnect": backoff},
        )
        listener = None
        try:
            with AgentProcess(write_config(tmp_path / "agent.toml", config)) as agent:

                def last_state() -> dict:
                    states = state_messages(sub.messages, DEVICE)
                    return states[-1] if states else {}

                wait_until(lambda: last_state().get("camera") == "connected" and last_state()["frames"] > 5, 60)
                camera.stop()  # unplugged: the stream ends, then the camera's web server only resets connections
                listener = RecordingListener(camera.port)
                wait_until(lambda: last_state().get("camera") == "reconnecting", 30, "state 'reconnecting'")
                wait_until(lambda: len(listener.connections) >= 4, 30, "four reconnect attempts")
                attempts = list(listener.connections)
                listener.close()
                listener = None
                frames_while_lost = last_state()["frames"]
                time.sleep(1.5)  # no frames while the camera is away
                assert last_state()["camera"] == "reconnecting" and last_state()["frames"] == frames_while_lost
                camera.start()  # plugged back in
                wait_until(
                    lambda: last_state().get("camera") == "connected" and last_state()["frames"] > frames_while_lost,
                    30,
                    "frames after the camera came back",
                )
                assert agent.terminate() == 0
        finally:
            if listener is not None:
                listener.close()
            camera.stop()
    no_traceback(agent)
    gaps = np.diff(attempts)
    # jitter 0: 1 s, 2 s, 4 s between attempts (the first attempt comes 0.5 s after the loss)
    assert np.allclose(gaps[:3], [1.0, 2.0, 4.0], atol=0.35), gaps
    lost = [line for line in agent.lines if "reconnecting with backoff" in line]
    assert len(lost) == 1  # one warning per outage, not one per attempt
    back = [line for line in agent.lines if "reconnected after" in line]
    assert len(back) == 1 and int(back[0].split("after ")[1].split()[0]) >= 4
    print(f"camera: attempts {len(attempts)} with gaps {np.round(gaps, 2).tolist()} s; {back[0]}")


# -- recurring strangers: a store that cannot be written ------------------------------------------------------------
def strangers_config(work: Path, world: World, video_path: Path, gallery: Path) -> dict[str, object]:
    config = base_config(
        work,
        detector=world.detector,
        embedder=world.embedder,
        source=str(video_path),
        gallery=gallery,
        port=None,  # events as JSON lines on stdout: the disk holds nothing but the state folder
        camera={"realtime": True},  # the visits as far apart in wall time as in the video
    )
    config["strangers"] = {"enabled": True}
    return config


def test_corrupt_stranger_store_is_logged_once_the_agent_goes_on_and_the_cli_says_so_in_one_line(
    tmp_path: Path, world: World
) -> None:
    from test_strangers_e2e import STRANGER, video

    stranger = sorted((world.faces / "lfw" / "people" / STRANGER).glob("*.jpg"))[0]
    clip = video(tmp_path / "two.avi", stranger, visits=2)
    state = tmp_path / "state"
    state.mkdir()
    (state / "strangers.sqlite").write_bytes(b"not a database, a damaged file " * 300)
    config = write_config(tmp_path / "agent.toml", strangers_config(state, world, clip, copy_gallery(world, tmp_path)))
    with AgentProcess(config) as agent:
        assert agent.wait(300) == 0, agent.stderr[-3000:]
    no_traceback(agent)
    assert [(e.type, e.person) for e in agent.events()] == [("unknown", None), ("left", None)] * 2
    assert len([line for line in agent.lines if "stranger store" in line and "cannot be written" in line]) == 1
    for args in (("gallery", "unknowns"), ("enroll", "Cleo", "--from-unknown", "1")):
        proc = subprocess.run(
            [sys.executable, "-m", "facelite.cli", *args, "--config", str(config)],
            capture_output=True, text=True, cwd=REPO_DIR, timeout=120,
        )  # fmt: skip
        assert proc.returncode != 0 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("error: stranger store cannot be read") and "strangers.sqlite" in line, line


def test_disk_full_while_keeping_strangers_is_logged_once_and_every_event_still_goes_out(
    tmp_path: Path, world: World
) -> None:
    from test_strangers_e2e import STRANGER, video

    stranger = sorted((world.faces / "lfw" / "people" / STRANGER).glob("*.jpg"))[0]
    clip = video(tmp_path / "two.avi", stranger, visits=2)
    mount = tmp_path / "var"
    mount.mkdir()
    config = write_config(tmp_path / "agent.toml", strangers_config(mount, world, clip, copy_gallery(world, tmp_path)))
    with AgentProcess(config, wrapper=namespace_with_tmpfs(mount, "2m")) as agent:
        agent.wait_line(r"agent fault running", timeout=60)
        ballast = fill(inside(agent, mount))  # before the first visit ends (2 s of face, then 4 s of empty frames)
        assert agent.wait(300) == 0, agent.stderr[-3000:]
    no_traceback(agent)
    assert ballast > 0
    assert [(e.type, e.person) for e in agent.events()] == [("unknown", None), ("left", None)] * 2
    assert len([line for line in agent.lines if "stranger store" in line and "cannot be written" in line]) == 1


# Inside the tmpfs: fill the disk, enrol a recurring stranger and drop another, list them, free the space, do both
# again; print what happened as JSON.
_STRANGERS_ON_FULL_DISK = """
import json, os, sqlite3, subprocess, sys
folder, config = sys.argv[1:3]
# Held open as the running agent holds them (their WAL and shared memory exist before the disk fills).
held = [sqlite3.connect(os.path.join(folder, f)) for f in ("gallery.sqlite", "state/strangers.sqlite")]
for con in held:
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
fd = os.open(os.path.join(folder, "ballast"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
for chunk in (1 << 16, 4096, 64, 1):
    while True:
        try:
            os.write(fd, bytes(chunk))
        except OSError:
            break
os.close(fd)
def run(*args):
    p = subprocess.run([sys.executable, "-m", "facelite.cli", *args, "--config", config],
                       capture_output=True, text=True)
    return [p.returncode, p.stdout, p.stderr]
full = [run("enroll", "Cleo", "--from-unknown", "1"), run("gallery", "drop-unknown", "2")]
listed = run("gallery", "unknowns")
os.unlink(os.path.join(folder, "ballast"))
ok = [run("enroll", "Cleo", "--from-unknown", "1"), run("gallery", "drop-unknown", "2")]
print(json.dumps({"full": full, "listed_when_full": listed, "ok": ok, "after": run("gallery", "unknowns")}))
"""


def test_disk_full_while_enrolling_or_dropping_a_stranger_fails_in_one_line_and_changes_nothing(
    tmp_path: Path, models_dir: Path
) -> None:
    from facelite.recognition.strangers import Visit
    from facelite.service.app import open_strangers
    from facelite.service.config import load_config
    from facelite.vision.embed import Embedder

    mount = tmp_path / "var"
    mount.mkdir()
    host = tmp_path / "host"
    config, _ = reject_setup(host, models_dir)  # Ada in the gallery; the config's state folder is host/state
    text = config.read_text().replace(str(host), str(mount)) + "\n[strangers]\nenabled = true\n"
    config.write_text(text)
    # Two recurring strangers (random unit vectors stamped with the real embedder), written on the host first.
    hosted = host / "hosted.toml"
    hosted.write_text(config.read_text().replace(str(mount), str(host)))
    embedder = Embedder.from_model_dir(pick(models_dir, "mobilefacenet"))
    dim = int(embedder.manifest.embedding_size or 0)
    rng = np.random.default_rng(11)
    now = time.time()
    with open_strangers(load_config(hosted), embedder.manifest, "blazeface") as store:
        for v in rng.standard_normal((2, dim)).astype(np.float32):
            for visit in range(2):
                unit = v / np.linalg.norm(v)
                assert store.add(Visit(now + 100 * visit, now + 100 * visit + 5, "door", embedder.sha256, unit, 0.9))
        assert [c.k for c in store.clusters()] == [1, 2]
    hosted.unlink()
    setup = f'cp -a "{host}/." "$0/"'
    proc = subprocess.run(
        [*namespace_with_tmpfs(mount, "2m", setup), sys.executable, "-c", _STRANGERS_ON_FULL_DISK, str(mount),
         str(config)],
        capture_output=True, text=True, cwd=REPO_DIR, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for code, out, err in got["full"]:
        assert code != 0 and out == "" and "Traceback" not in err, err
        (line,) = err.strip().splitlines()
        assert line.startswith("error: ") and "full" in line, line
    code, out, _ = got["listed_when_full"]
    assert code == 0 and out.startswith("1\t2 visit(s)") and "\n2\t2 visit(s)" in out, got["listed_when_full"]
    (enrolled, e_out, e_err), (dropped, d_out, d_err) = got["ok"]
    assert enrolled == 0 and e_out.startswith("enrolled Cleo: 2 template(s) from unknown person 1"), e_err
    assert dropped == 0 and d_out.startswith("dropped unknown person 2: 2 face(s) erased"), d_err
    assert got["after"][1].strip() == "0 unknown person(s) kept"
