"""`make demo`: enroll people from real photos, run the real agent on a video made of other photos,
and print every MQTT message a subscriber receives (as `mosquitto_sub -t 'facelite/#' -v` would).

    python -m facelite.tools.demo --data-dir ../shared --models build/models --work build/demo

Exit status: 0 when no visit is wrong; 1 when one is, or visits and events do not pair one to one (VERDICT_RULE,
printed with the result); 2 or 3 when the demo cannot run (an enrolment or the agent failed, a model or photo is
missing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facelite.errors import FaceliteError
from facelite.tools.dataset import data_dir as resolve_data_dir
from facelite.tools.dataset import people_tree
from facelite.tools.localbroker import MosquittoBroker, Subscriber
from facelite.vision.imageio import read_image

FPS = 10
VISIT_S = 2.0  # each visitor stands in view this long ...
GAP_S = 3.0  # ... then the door is empty this long (longer than the tracker's missed-face window)
FRAME = (640, 480)
WRONG_VISIT = 1  # exit status: a visit was announced as the wrong person (VERDICT_RULE)
CANNOT_RUN = 2  # exit status: an enrolment or the agent failed (FaceliteError keeps its own code, 2 or 3)


@dataclass(frozen=True)
class Visit:
    photo: Path
    person: str
    enrolled: bool


def plan(people_dir: Path, stranger_every: int = 5) -> tuple[dict[str, list[Path]], list[Visit]]:
    """Enroll the first half of each person's photos; visits are the other half plus strangers."""
    tree = people_tree(people_dir)
    names = sorted(tree)
    strangers = {n for i, n in enumerate(names) if i % stranger_every == stranger_every - 1}
    enroll: dict[str, list[Path]] = {}
    visits: list[Visit] = []
    for name in names:
        photos = tree[name]
        if name in strangers:
            visits.append(Visit(photos[0], name, False))
            continue
        if len(photos) < 2:
            continue
        k = (len(photos) + 1) // 2
        enroll[name] = photos[:k]
        visits.append(Visit(photos[k], name, True))
    return enroll, visits


def place(photo: np.ndarray) -> np.ndarray:
    """The photo on a 640x480 grey 'doorway', scaled so the face is a realistic size."""
    frame = np.full((FRAME[1], FRAME[0], 3), 90, np.uint8)
    scale = min(FRAME[1] * 0.9 / photo.shape[0], FRAME[0] * 0.9 / photo.shape[1])
    small = cv2.resize(
        photo, (max(1, int(photo.shape[1] * scale)), max(1, int(photo.shape[0] * scale))), interpolation=cv2.INTER_AREA
    )
    y = (FRAME[1] - small.shape[0]) // 2
    x = (FRAME[0] - small.shape[1]) // 2
    frame[y : y + small.shape[0], x : x + small.shape[1]] = small
    return frame


def write_video(visits: list[Visit], path: Path) -> int:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), FPS, FRAME)
    if not writer.isOpened():
        raise FaceliteError("OpenCV cannot write an MJPG video", str(path))
    empty = np.full((FRAME[1], FRAME[0], 3), 90, np.uint8)
    frames = 0
    for visit in visits:
        frame = place(read_image(visit.photo))
        for _ in range(int(VISIT_S * FPS)):
            writer.write(frame)
            frames += 1
        for _ in range(int(GAP_S * FPS)):
            writer.write(empty)
            frames += 1
    writer.release()
    return frames


def enroll_command(name: str, photos: list[Path], detector: Path, embedder: Path, gallery: Path) -> list[str]:
    """`facelite enroll` as a subprocess: enrolment runs exactly as a user would run it."""
    return [sys.executable, "-m", "facelite.cli", "enroll", name, *map(str, photos), "--detector", str(detector),
            "--embedder", str(embedder), "--gallery", str(gallery)]  # fmt: skip


def pick(models: Path, name: str) -> Path:
    index = json.loads((models / "index.json").read_text())
    entry = index["models"].get(name)
    if not entry or not entry.get("recommended_variant"):
        raise FaceliteError(f"no built {name} in {models}", fix="run `make convert`")
    return models / name / entry["recommended_variant"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m facelite.tools.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--models", type=Path, default=Path("build/models"))
    ap.add_argument("--work", type=Path, default=Path("build/demo"))
    ap.add_argument("--detector", default="blazeface")
    ap.add_argument("--embedder", default="mobilefacenet")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except FaceliteError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code


def run(args: argparse.Namespace) -> int:
    data = resolve_data_dir(args.data_dir)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("gallery.sqlite", "gallery.sqlite-wal", "gallery.sqlite-shm", "spool.sqlite"):
        (work / stale).unlink(missing_ok=True)
    detector, embedder = pick(args.models, args.detector), pick(args.models, args.embedder)
    enroll_sets, visits = plan(data / "faces" / "people")
    video = work / "doorway.avi"
    n_frames = write_video(visits, video)
    print(
        f"demo: {len(enroll_sets)} people to enroll, {len(visits)} visits "
        f"({sum(not v.enrolled for v in visits)} by strangers) in {video.name}, {n_frames} frames at {FPS} fps"
    )
    env = dict(os.environ)
    for name, photos in enroll_sets.items():
        proc = subprocess.run(
            enroll_command(name, photos, detector, embedder, work / "gallery.sqlite"),
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            print(proc.stderr.strip(), file=sys.stderr)
            print(f"error: enrolling {name} failed (exit {proc.returncode})", file=sys.stderr)
            return CANNOT_RUN
        print("  " + proc.stdout.strip().splitlines()[-1])
    with MosquittoBroker(work / "broker") as broker:
        config = work / "agent.toml"
        config.write_text(
            f'device_id = "demo"\nstate_interval_s = 5\n\n[[cameras]]\nname = "doorway"\nsource = "{video}"\n\n'
            f'[models]\ndetector = "{detector.resolve()}"\nembedder = "{embedder.resolve()}"\nnum_threads = 2\n\n'
            f'[detection]\nmin_face = 40\n\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n\n'
            f'[spool]\npath = "{work / "spool.sqlite"}"\n\n[gallery]\npath = "{work / "gallery.sqlite"}"\n'
        )
        with Subscriber(broker, ["facelite/#"]) as sub:
            t0 = time.monotonic()
            agent = subprocess.run(
                [sys.executable, "-m", "facelite", "--config", str(config)], capture_output=True, text=True, env=env
            )
            elapsed = time.monotonic() - t0
            if agent.returncode != 0:
                print(agent.stderr.strip()[-3000:], file=sys.stderr)
                print(f"error: the agent exited with {agent.returncode}", file=sys.stderr)
                return CANNOT_RUN
            sub.wait_for(1, timeout=5, topic="facelite/demo/availability")
            time.sleep(0.5)
            messages = sub.messages
    print(f"\nMQTT messages received ({len(messages)}), as `mosquitto_sub -t 'facelite/#' -v` shows them:")
    events = []
    for m in messages:
        payload = m.payload.decode(errors="replace")
        if m.topic.endswith("/events"):
            events.append(json.loads(payload))
            print(f"{m.topic} {payload}")
        elif "/person/" in m.topic or m.topic.endswith(("/availability", "/last_person")):
            print(f"{m.topic} {payload}")
    print(f"(plus {len(messages) - len(events)} state/presence/discovery messages; full log in the agent's stderr)")
    return summarize(visits, events, n_frames, elapsed)


VERDICT_RULE = (
    "A visit is WRONG when a known person is announced as someone else, or a stranger is announced as anyone: "
    "the demo then exits 1. A known person left unknown is a MISS: reported, not a failure (the matcher is set "
    "to refuse rather than guess, at FAR 1e-3). Visits and decisions must pair one to one (one event per visit), "
    "else the run cannot be judged and exits 1."
)


@dataclass(frozen=True)
class Judged:
    visit: Visit
    got: str | None  # the person announced, None for "unknown"
    similarity: object

    @property
    def expected(self) -> str | None:
        return self.visit.person if self.visit.enrolled else None

    @property
    def wrong(self) -> bool:
        return self.got is not None and self.got != self.expected

    @property
    def missed(self) -> bool:
        return self.got is None and self.expected is not None


def judge(visits: list[Visit], events: list[dict[str, object]]) -> tuple[list[Judged], bool]:
    """Pair each visit with its decision (recognized/unknown events in track order); True if they pair 1:1."""
    decided = sorted(
        (e for e in events if e["type"] in ("recognized", "unknown")), key=lambda e: int(str(e["track_id"]))
    )
    judged = [
        Judged(v, str(e["person"]) if e["type"] == "recognized" else None, e["similarity"])
        for v, e in zip(visits, decided)
    ]
    return judged, len(decided) == len(visits)


def summarize(visits: list[Visit], events: list[dict[str, object]], frames: int, elapsed: float) -> int:
    """Print every visit beside its decision and the verdict; 1 if a visit was wrong or they do not pair up."""
    judged, paired = judge(visits, events)
    decided = sum(e["type"] in ("recognized", "unknown") for e in events)
    left = sum(e["type"] == "left" for e in events)
    print(
        f"\n{len(visits)} visits -> {decided} recognized/unknown events, {left} left events; "
        f"{frames} frames in {elapsed:.1f} s"
    )
    for j in judged:
        mark = "WRONG" if j.wrong else "miss " if j.missed else "ok   "
        print(
            f"  {mark} {j.visit.photo.parent.name}/{j.visit.photo.name:<14} expected {j.expected or 'unknown':<22} "
            f"got {j.got or 'unknown':<22} similarity {j.similarity}"
        )
    right = sum(not (j.wrong or j.missed) for j in judged)
    wrong = [j for j in judged if j.wrong]
    print(f"correct {right}/{len(visits)}, wrong {len(wrong)}, known person missed {sum(j.missed for j in judged)}")
    print(f"rule: {VERDICT_RULE}")
    if not paired:
        print(
            f"FAIL: {decided} decisions for {len(visits)} visits: a visit became no event or several", file=sys.stderr
        )
        return WRONG_VISIT
    if wrong:
        names = ", ".join(f"{j.visit.photo.parent.name}/{j.visit.photo.name} as {j.got}" for j in wrong)
        print(f"FAIL: {len(wrong)} visit(s) announced as the wrong person: {names}", file=sys.stderr)
        return WRONG_VISIT
    print("PASS: no visit announced as the wrong person")
    print("Next: make deploy DEVICE=pi   (then: mosquitto_sub -t 'facelite/#' -v)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
