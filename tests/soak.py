"""`make soak`: the real agent process on a realtime camera stream for >= 20 minutes, RSS sampled.

    python tests/soak.py --minutes 20            # the release gate: RSS growth after warm-up < 5 %
    python tests/soak.py --minutes 3 --warmup-minutes 1    # a short proof run

A real mosquitto, a gallery enrolled from real photos, and an MJPEG-over-HTTP "IP camera" that plays the
doorway visits of facelite.tools.demo (enrolled people and strangers) in a loop at 10 fps, forever. The agent's
resident set size is read from /proc every few seconds; the figures are printed and the exit status says
whether the growth after warm-up stayed under the limit.

This module is also the harness the fault, fuzz and security tests reuse (not collected by pytest: the name
does not start with test_): an agent subprocess whose log lines can be awaited, a restartable MJPEG camera,
a TOML config writer and in-process enrolment.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: `python tests/soak.py`
    sys.path.insert(0, str(REPO))

from facelite.tools.demo import Visit, pick, place, plan  # noqa: E402
from facelite.tools.localbroker import MosquittoBroker, Subscriber, free_port  # noqa: E402
from facelite.vision.imageio import read_image  # noqa: E402

log = logging.getLogger(__name__)

FPS = 10
VISIT_FRAMES = 20  # 2 s in view ...
GAP_FRAMES = 30  # ... 3 s of empty doorway (longer than the tracker's missed-face window)


# -- models and gallery ------------------------------------------------------------------------------------------
def enroll_gallery(
    path: Path,
    detector_dir: Path,
    embedder_dir: Path,
    people: Mapping[str, Sequence[Path]],
    *,
    key: bytes | None = None,
) -> dict[str, int]:
    """Enrol photos with the agent's own detector/embedder (in-process, the way `facelite enroll` does it).

    Returns templates per person. Photos without exactly one face are left out, as the CLI does.
    """
    from facelite.recognition.gallery import Gallery
    from facelite.vision.detect import create_detector
    from facelite.vision.embed import Embedder

    detector = create_detector(detector_dir)
    embedder = Embedder.from_model_dir(embedder_dir)
    counts: dict[str, int] = {}
    size = int(embedder.manifest.embedding_size or 0)
    with Gallery.open(path, embedder_sha256=embedder.sha256, embedding_size=size, key=key) as gallery:
        for name, photos in people.items():
            vectors, sources = [], []
            for photo in photos:
                image = read_image(photo)
                faces = detector.detect(image)
                if len(faces) == 1:
                    vectors.append(embedder.embed(image, faces[0]).vector)
                    sources.append(photo.name)
            if vectors:
                counts[name] = gallery.enroll(name, vectors, sources)
    return counts


def doorway_frames(visits: Sequence[Visit]) -> list[np.ndarray]:
    """The frames of facelite.tools.demo's doorway video: each visitor in view, then the empty doorway."""
    empty = np.full_like(place(read_image(visits[0].photo)), 90)
    frames: list[np.ndarray] = []
    for visit in visits:
        frames += [place(read_image(visit.photo))] * VISIT_FRAMES + [empty] * GAP_FRAMES
    return frames


# -- config ------------------------------------------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def toml_text(config: Mapping[str, Any]) -> str:
    """Top-level keys, then one [table] per dict and one [[table]] per list of dicts (nested dicts inline)."""
    head = [f"{k} = {_toml_value(v)}" for k, v in config.items() if not isinstance(v, dict | list) or _is_array(v)]
    body: list[str] = []
    for key, value in config.items():
        if isinstance(value, dict):
            body += ["", f"[{key}]", *(f"{k} = {_toml_value(v)}" for k, v in value.items())]
        elif isinstance(value, list) and not _is_array(value):
            for item in value:
                body += ["", f"[[{key}]]", *(f"{k} = {_toml_value(v)}" for k, v in item.items())]
    return "\n".join(head + body) + "\n"


def _is_array(value: Any) -> bool:
    return isinstance(value, list) and not (value and all(isinstance(v, dict) for v in value))


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(toml_text(config))
    return path


def base_config(
    work: Path,
    *,
    detector: Path,
    embedder: Path,
    source: str,
    gallery: Path,
    port: int | None,
    device_id: str = "fault",
    camera: Mapping[str, Any] | None = None,
    mqtt: Mapping[str, Any] | None = None,
    spool: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An agent config for tests: one camera, state every second, spool and gallery paths given."""
    config: dict[str, Any] = {
        "device_id": device_id,
        "state_interval_s": 1,
        "cameras": [{"name": "door", "source": source, **(camera or {})}],
        "models": {"detector": str(detector), "embedder": str(embedder), "num_threads": 1},
    }
    if port is not None:
        config["mqtt"] = {"host": "127.0.0.1", "port": port, "close_timeout_s": 30, **(mqtt or {})}
    config["spool"] = {"path": str(work / "spool.sqlite"), **(spool or {})}
    config["gallery"] = {"path": str(gallery)}
    return config


# -- the agent process -------------------------------------------------------------------------------------------
EVENT_LINE = re.compile(r"event (\w+) camera=(\S+) track=(\d+) person=(.+?) similarity=")


@dataclass(frozen=True)
class LoggedEvent:
    """One event as the agent logged it, right after handing it to the sink (spooled when durable)."""

    type: str
    camera: str
    track_id: int
    person: str | None

    @classmethod
    def of_payload(cls, event: Mapping[str, Any]) -> LoggedEvent:
        return cls(str(event["type"]), str(event["camera"]), int(event["track_id"]), event["person"])


class AgentProcess:
    """`python -m facelite --config FILE` (optionally behind a wrapper such as unshare); stderr lines are kept."""

    def __init__(
        self,
        config: Path,
        *,
        wrapper: Sequence[str] = (),
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        command = [*wrapper, sys.executable, "-m", "facelite", "--config", str(config), *args]
        self.proc = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ if env is None else env, PYTHONUNBUFFERED="1"),
        )
        self._lines: list[str] = []
        self._out: list[str] = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _pump(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._cond:
                into.append(line.rstrip("\n"))
                self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_line(self, pattern: str, timeout: float = 60.0, count: int = 1) -> list[str]:
        """Wait until ``count`` stderr lines match ``pattern`` (regex search); returns the matching lines."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [line for line in self._lines if rx.search(line)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not any(t.is_alive() for t in self._readers)):
                    tail = "\n".join(self._lines[-25:])
                    raise AssertionError(f"no {count} line(s) matching {pattern!r} in {timeout} s; log tail:\n{tail}")
                self._cond.wait(min(left, 0.2))

    def events(self) -> list[LoggedEvent]:
        out = []
        for line in self.lines:
            if m := EVENT_LINE.search(line):
                person = None if m.group(4) == "None" else m.group(4)
                out.append(LoggedEvent(m.group(1), m.group(2), int(m.group(3)), person))
        return out

    def rss_kb(self) -> int:
        """Resident set size of the agent process, from /proc (kB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        for t in self._readers:
            t.join(5)
        return code

    def terminate(self, timeout: float = 60.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        return self.wait(30)

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.alive():
            self.kill()


def state_messages(messages: Sequence[Any], device_id: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic == f"facelite/{device_id}/state"]


def events_of(messages: Sequence[Any], device_id: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic == f"facelite/{device_id}/events"]


def unique_events(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """QoS 1 is at-least-once: a duplicate carries the event id of the first copy and is dropped here."""
    seen: set[str] = set()
    out = []
    for e in events:
        if e["event_id"] not in seen:
            seen.add(str(e["event_id"]))
            out.append(e)
    return out


# -- an IP camera --------------------------------------------------------------------------------------------------
class MjpegCamera:
    """An MJPEG-over-HTTP camera on a fixed port, playing ``frames`` at ``fps`` until stopped: in a loop, or
    once and then the last frame forever (``loop=False``: a doorway that stays empty).

    ``stop()`` closes the listener and every open stream (the camera is gone: connections are refused);
    ``start()`` brings it back on the same port. ``connections`` records when each client connected.
    """

    def __init__(
        self, frames: Sequence[np.ndarray], fps: float = FPS, port: int | None = None, *, loop: bool = True
    ) -> None:
        self.loop = loop
        self.jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in frames]
        self.fps = fps
        self.port = port or free_port()
        self.connections: list[float] = []
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                camera.connections.append(time.monotonic())
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                started = time.monotonic()
                while not camera._stopping.is_set():
                    n = len(camera.jpegs)
                    jpeg = camera.jpegs[i % n if camera.loop else min(i, n - 1)]
                    head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                    try:
                        self.wfile.write(head + jpeg + b"\r\n")
                        self.wfile.flush()
                    except OSError:  # the client went away
                        return
                    i += 1
                    # Realtime: frame i is due at started + i / fps, however long the writes took.
                    camera._stopping.wait(max(0.0, started + i / camera.fps - time.monotonic()))

        return Handler

    def start(self) -> MjpegCamera:
        self._stopping.clear()
        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> MjpegCamera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RecordingListener:
    """A TCP port that accepts and at once closes every connection, recording when each came: a camera whose
    network is up but whose stream is not. Used to measure the agent's reconnect backoff from outside."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connections: list[float] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(time.monotonic())
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()


# -- the soak ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SoakResult:
    samples: list[tuple[float, int]]  # (seconds since start, RSS kB)
    warmup_rss_kb: float
    final_rss_kb: float
    growth_pct: float
    events: int
    last_state: dict[str, Any]


def rss_growth(samples: Sequence[tuple[float, int]], warmup_s: float) -> tuple[float, float, float]:
    """Median RSS of the first minute after warm-up, of the last minute, and the growth between them in %."""
    after = [(t, r) for t, r in samples if t >= warmup_s]
    if len(after) < 2:
        raise ValueError("not enough samples after the warm-up")
    t0, t1 = after[0][0], after[-1][0]
    window = min(60.0, (t1 - t0) / 3)
    first = statistics.median(r for t, r in after if t <= t0 + window)
    last = statistics.median(r for t, r in after if t >= t1 - window)
    return first, last, 100.0 * (last - first) / first


def soak(args: argparse.Namespace) -> SoakResult:
    from facelite.tools.dataset import data_dir

    faces = data_dir(args.data_dir) / "faces"
    models = Path(args.models).resolve()
    detector, embedder = pick(models, "blazeface"), pick(models, "mobilefacenet")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob("*.sqlite*"):
        stale.unlink()
    enroll_sets, visits = plan(faces / "people")
    enroll_gallery(work / "gallery.sqlite", detector, embedder, enroll_sets)
    frames = doorway_frames(visits)
    print(f"soak: {len(enroll_sets)} people enrolled; camera loops {len(visits)} visits ({len(frames) / FPS:.0f} s)")
    with (
        MosquittoBroker(work / "broker") as broker,
        Subscriber(broker, ["facelite/+/events", "facelite/+/state"]) as sub,
        MjpegCamera(frames) as camera,
    ):
        config = base_config(
            work,
            detector=detector,
            embedder=embedder,
            source=camera.url,
            gallery=work / "gallery.sqlite",
            port=broker.port,
            device_id="soak",
        )
        config["state_interval_s"] = 10
        config["models"]["num_threads"] = args.threads
        write_config(work / "agent.toml", config)
        samples: list[tuple[float, int]] = []
        with AgentProcess(work / "agent.toml") as agent:
            agent.wait_line(r"agent soak running", timeout=120)
            start = time.monotonic()
            end = start + args.minutes * 60
            while time.monotonic() < end:
                if not agent.alive():
                    raise SystemExit(f"soak: the agent died:\n{agent.stderr[-3000:]}")
                samples.append((time.monotonic() - start, agent.rss_kb()))
                time.sleep(args.sample_s)
            code = agent.terminate()
            if code != 0:
                raise SystemExit(f"soak: the agent exited with {code}:\n{agent.stderr[-3000:]}")
        time.sleep(0.5)
        events = unique_events(events_of(sub.messages, "soak"))
        states = state_messages(sub.messages, "soak")
    first, last, growth = rss_growth(samples, args.warmup_minutes * 60)
    return SoakResult(samples, first, last, growth, len(events), states[-1] if states else {})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0, help="length of the stream (release gate: 20)")
    ap.add_argument("--warmup-minutes", type=float, default=3.0, help="RSS before this is not judged")
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    ap.add_argument("--max-growth-pct", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2, help="interpreter threads per model")
    ap.add_argument("--data-dir", default=None, help="holds faces/ (default: FACELITE_DATA_DIR)")
    ap.add_argument("--models", default=os.environ.get("FACELITE_MODELS_DIR", str(REPO / "build" / "models")))
    ap.add_argument("--work", default=str(REPO / "build" / "soak"))
    args = ap.parse_args(argv)
    if args.warmup_minutes >= args.minutes:
        ap.error("--warmup-minutes must be shorter than --minutes")
    result = soak(args)
    print(f"\n{'t (s)':>8} {'RSS (MB)':>9}")
    step = max(1, len(result.samples) // 40)  # about 40 rows whatever the length
    for t, rss in result.samples[::step]:
        print(f"{t:8.0f} {rss / 1024:9.1f}")
    st = result.last_state
    print(
        f"\nduration {args.minutes:.1f} min, {len(result.samples)} samples every {args.sample_s:.0f} s, "
        f"warm-up {args.warmup_minutes:.1f} min"
    )
    print(f"RSS after warm-up {result.warmup_rss_kb / 1024:.1f} MB -> end {result.final_rss_kb / 1024:.1f} MB")
    print(f"RSS growth after warm-up: {result.growth_pct:+.2f} % (limit {args.max_growth_pct:.1f} %)")
    print(
        f"events delivered {result.events}; last state: frames {st.get('frames')}, fps {st.get('fps')}, "
        f"dropped_frames {st.get('dropped_frames')}, spool {st.get('spool')}, camera {st.get('camera')}"
    )
    ok = result.growth_pct < args.max_growth_pct
    print("soak: PASS" if ok else "soak: FAIL (memory grows)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
