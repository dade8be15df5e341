"""Recurring strangers end to end: the real agent process on a video, a real mosquitto, real models and photos.

Ada is enrolled; an LFW person who is not walks past a camera twice (one MJPG video: a visit, empty frames longer
than the tracker's timeout, a second visit). A client connecting afterwards is given exactly one retained
``unknown/<k>`` message with ``visits == 2``. `facelite enroll Cleo --from-unknown k` enrols her from those faces;
a third visit is then a ``recognized`` event for Cleo and the ``unknown/<k>`` message is cleared. Bad ids are one
line and a non-zero exit. The gallery is encrypted, so the stranger store is too.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from broker import MosquittoBroker, Subscriber
from helpers import facelite_cli as cli
from helpers import run_agent_to_end as run_agent
from helpers import wait_until
from test_gallery_mqtt import retained_now

from facelite.tools.demo import pick
from facelite.vision.imageio import list_images, read_image

DEVICE = "str"
BASE = f"facelite/{DEVICE}"
STRANGER = "Aaron_Peirsol"  # an LFW person, never enrolled here
FPS = 5


def video(path: Path, photo: Path, visits: int) -> Path:
    """``visits`` visits of 2 s each (the photo), each followed by 4 s of empty frames: longer than the tracker's
    timeout (10 frames and 2 s), so every visit is its own track and ends with a ``left`` event."""
    image = read_image(photo)
    h, w = image.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (w, h))
    assert writer.isOpened()
    empty = np.full_like(image, 40)
    for _ in range(visits):
        for frame in [image] * (2 * FPS) + [empty] * (4 * FPS):
            writer.write(frame)
    writer.release()
    return path


def write_config(work: Path, models_dir: Path, port: int, source: Path) -> Path:
    path = work / f"agent-{source.stem}.toml"
    path.write_text(
        # realtime: the file stands in for a camera, so visits are as far apart in wall time as in the video (the
        # events carry wall-clock times; a file read faster than real time would squeeze the gap between visits).
        f'device_id = "{DEVICE}"\n\n[[cameras]]\nname = "door"\nsource = "{source}"\nrealtime = true\n\n'
        f'[models]\ndetector = "{pick(models_dir, "blazeface")}"\nembedder = "{pick(models_dir, "mobilefacenet")}"\n'
        "num_threads = 1\n\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nclose_timeout_s = 2\n\n'
        f'[spool]\npath = "{work / "state" / "spool.sqlite"}"\n\n'
        f'[gallery]\npath = "{work / "gallery.sqlite"}"\nkey_file = "{work / "gallery.key"}"\n\n'
        "[strangers]\nenabled = true\n"
    )
    return path


def unknowns(retained: dict[str, bytes]) -> dict[str, bytes]:
    return {t: p for t, p in retained.items() if t.startswith(f"{BASE}/unknown/")}


def one_line_error(proc: subprocess.CompletedProcess[str], says: str) -> None:
    assert proc.returncode != 0 and proc.stdout == "", proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and says in proc.stderr, proc.stderr


def test_recurring_stranger_is_announced_after_the_second_visit_and_recognized_once_enrolled(
    tmp_path: Path, faces_dir: Path, models_dir: Path
) -> None:
    work = tmp_path
    (work / "state").mkdir()
    (work / "gallery.key").write_bytes(os.urandom(32))
    stranger = list_images(faces_dir / "lfw" / "people" / STRANGER)[0]
    with MosquittoBroker(work / "b") as broker:
        two = write_config(work, models_dir, broker.port, video(work / "two.avi", stranger, visits=2))
        ada = list_images(faces_dir / "people" / "deepface_id00")
        enrolled = cli("enroll", "Ada", *map(str, ada), "--config", str(two))
        assert enrolled.returncode == 0, enrolled.stderr

        with Subscriber(broker, [f"{BASE}/#"]) as live:
            run_agent(two)
            wait_until(lambda: sum(m.topic == f"{BASE}/events" for m in live.messages) >= 4, 30, "two visits' events")
            wait_until(lambda: any("/unknown/" in m.topic for m in live.messages), 30, "the unknown message")
            events = [json.loads(m.payload) for m in live.messages if m.topic == f"{BASE}/events"]
            published = [json.loads(m.payload) for m in live.messages if "/unknown/" in m.topic]
        assert [(e["type"], e["person"]) for e in events] == [("unknown", None), ("left", None)] * 2
        # Published once, when the second visit ended, never after the first. (Events go through the spool and
        # retained messages straight to the broker, so their order on the wire says nothing.)
        assert [p["visits"] for p in published] == [2], published

        announced = unknowns(retained_now(broker))
        assert len(announced) == 1, announced
        topic, payload = next(iter(announced.items()))
        body = json.loads(payload)
        k = int(topic.rsplit("/", 1)[1])
        assert body["k"] == k and body["visits"] == 2 and body["cameras"] == ["door"]
        assert body["first_seen"] < body["last_seen"]
        store = work / "state" / "strangers.sqlite"
        assert oct(store.stat().st_mode & 0o777) == "0o600"

        listing = cli("gallery", "unknowns", "--config", str(two))
        assert listing.returncode == 0 and listing.stdout.startswith(f"{k}\t2 visit(s)\t2 face(s)"), listing.stdout
        for bad, says in (("x", "not an unknown person's number"), ("0", "not an unknown person's number")):
            one_line_error(cli("enroll", "Cleo", "--from-unknown", bad, "--config", str(two)), says)
        one_line_error(cli("enroll", "Cleo", "--from-unknown", str(k + 1), "--config", str(two)), "no unknown person")

        done = cli("enroll", "Cleo", "--from-unknown", str(k), "--config", str(two))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"enrolled Cleo: 2 template(s) from unknown person {k} (2 visits"), done.stdout
        one_line_error(
            cli("enroll", "Cleo", "--from-unknown", str(k), "--config", str(two)), "already enrolled as Cleo"
        )

        third = write_config(work, models_dir, broker.port, video(work / "three.avi", stranger, visits=1))
        with Subscriber(broker, [f"{BASE}/#"]) as live:
            run_agent(third)
            wait_until(lambda: any(m.topic == topic and m.payload == b"" for m in live.messages), 30, "the clear")
            wait_until(lambda: sum(m.topic == f"{BASE}/events" for m in live.messages) >= 2, 30, "third visit")
            events = [json.loads(m.payload) for m in live.messages if m.topic == f"{BASE}/events"]
        assert [(e["type"], e["person"]) for e in events] == [("recognized", "Cleo"), ("left", "Cleo")]
        assert unknowns(retained_now(broker)) == {}


@pytest.mark.parametrize("action", [("unknowns",), ("drop-unknown", "1")])
def test_stranger_commands_need_the_agent_config(action: tuple[str, ...], models_dir: Path, tmp_path: Path) -> None:
    proc = cli(
        "gallery",
        *action,
        "--detector",
        str(pick(models_dir, "blazeface")),
        "--embedder",
        str(pick(models_dir, "mobilefacenet")),
        "--gallery",
        str(tmp_path / "g.sqlite"),
    )
    one_line_error(proc, "recurring strangers need --config")


def test_forget_erases_the_persons_earlier_unknown_visits_from_the_stranger_store(
    tmp_path: Path, faces_dir: Path, models_dir: Path
) -> None:
    from facelite.recognition.gallery import Gallery
    from facelite.recognition.strangers import Visit
    from facelite.service.app import open_strangers, read_key
    from facelite.service.config import load_config
    from facelite.vision.embed import Embedder

    (tmp_path / "state").mkdir()
    (tmp_path / "gallery.key").write_bytes(os.urandom(32))
    config = write_config(tmp_path, models_dir, 1, tmp_path / "unused.avi")  # the CLI never connects
    proc = cli("enroll", "Ada", *map(str, list_images(faces_dir / "people" / "deepface_id00")), "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    embedder = Embedder.from_model_dir(pick(models_dir, "mobilefacenet"))
    size = int(embedder.manifest.embedding_size or 0)
    key = read_key(tmp_path / "gallery.key")
    with Gallery.open(tmp_path / "gallery.sqlite", embedder_sha256=embedder.sha256, embedding_size=size, key=key) as g:
        ada = g.index.rows_of("Ada")
    other = np.random.default_rng(3).standard_normal(size).astype(np.float32)
    other /= np.linalg.norm(other)
    # Ada seen twice as a stranger before her enrolment, and someone else twice.
    with open_strangers(load_config(config), embedder.manifest, "blazeface") as store:
        now = time.time()
        for i, vector in enumerate([ada[0], ada[1], other, other]):
            assert store.add(Visit(now + 100 * i, now + 100 * i + 5, "door", embedder.sha256, vector, 0.9))
        assert sum(c.faces for c in store.clusters()) == 4

    proc = cli("gallery", "forget", "Ada", "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert "2 face(s) of unknown visits that match them" in proc.stdout, proc.stdout
    with open_strangers(load_config(config), embedder.manifest, "blazeface") as store:
        (left,) = store.clusters()
        assert np.allclose(store.faces(left.k).vectors, other)
