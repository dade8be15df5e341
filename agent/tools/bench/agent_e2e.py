"""Section 4 (agent end to end) and the single-core speed figures of sections 5 and 6.

Runs in a worker pinned to one core (``taskset -c 0``) with one interpreter thread. The agent is the
real ``facelite.service.app.Agent`` with the real MqttSink and spool, reading a real MJPG video of composed
frames; the orchestrator runs mosquitto and the subscriber that reads ``latency_ms`` from the events.
The float baseline is the same Agent with the recipe's TF models wired in (``float_models``), so
its peak RSS carries TensorFlow, as a device running the sources would.

Peak RSS (VmHWM) is read after the streams and before any other figure, so it is the agent's own. The
device side also runs the service itself (``python -m facelite --config``, as systemd starts it) over the
one-face stream in a process of its own: its peak RSS is the figure held against the 120 MB target.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Any

import numpy as np

from facelite.tools.bench.common import Latency, first_line, proc_status_mb, time_runs
from facelite.tools.bench.frames import CropSet, load_crops, load_frames
from facelite.tools.bench.models import SourceJob, SourceResult
from facelite.tools.bench.pipelines import (
    AGENT_MIN_FACE,
    AGENT_SCORE_THRESHOLD,
    FrameSpeed,
    PipelineSpec,
    frame_speed,
    load_detector,
    load_embedder,
)

log = logging.getLogger(__name__)

TEMPLATES_PER_PERSON = 5


@dataclass(frozen=True)
class StreamJob:
    name: str
    faces: int
    config: Path  # agent TOML written by the orchestrator (broker port, video, gallery, spool)
    frames_with_faces: int


@dataclass(frozen=True)
class SpeedJob:
    combos: list[PipelineSpec]  # per-frame cost on the one-face frames (candidates for "our best")
    scaling: list[PipelineSpec]  # cost vs face count and vs resolution
    one_face: list[Path]
    by_faces: dict[str, list[Path]]  # face count (as text: JSON keys) -> frames
    by_resolution: dict[str, list[Path]]
    reps: int
    scaling_reps: int
    gallery_sizes: list[int]
    gallery_dir: Path
    match_runs: int


@dataclass(frozen=True)
class E2EJob:
    label: str
    models_dir: Path
    detector: str
    detector_variant: str
    embedder: str
    embedder_variant: str
    float_models: bool  # wire the recipes' TF float models into the Agent (baseline)
    streams: list[StreamJob]
    enroll: CropSet
    speed: SpeedJob | None = None
    source_after: SourceJob | None = None  # TF float source rows at 1 thread, after the RSS reading


@dataclass(frozen=True)
class StreamResult:
    stream: str
    faces: int
    frames: int
    seconds: float
    fps: float  # whole agent: decode, pipeline, events, MQTT publish
    stage_ms: dict[str, float]  # Pipeline.stats.stage_ms at the end of the run (moving average per stage)
    embeddings: int
    events: int
    pipeline_fps_in_view: float  # Pipeline.process alone, on frames with a face in view
    faces_detected_in_view: float  # faces the detector found per such frame (the stream shows ``faces``)
    pipeline_stage_ms: dict[str, float]
    error: str = ""


@dataclass(frozen=True)
class ComboSpeed:
    spec: PipelineSpec
    speed: FrameSpeed | None
    error: str = ""


@dataclass(frozen=True)
class ScalingPoint:
    axis: str  # "faces" | "resolution"
    x: str  # "1".."8" | "640x480"
    pipeline: str
    speed: FrameSpeed


@dataclass(frozen=True)
class GalleryTiming:
    templates: int
    people: int
    dim: int
    build_s: float
    match: Latency  # Gallery.match (validation + vectorised match)
    matcher: Latency  # Matcher.match on the index alone


@dataclass(frozen=True)
class SpeedResult:
    combos: list[ComboSpeed]
    scaling: list[ScalingPoint]
    gallery: list[GalleryTiming]


@dataclass(frozen=True)
class E2EResult:
    label: str
    pipeline: str
    streams: list[StreamResult]
    rss_peak_mb: float
    tensorflow_imported: bool
    cpus: list[int]
    speed: SpeedResult | None
    source: SourceResult | None
    service_rss_mb: float = 0.0  # `python -m facelite` in its own process (device side only)
    service_error: str = ""


def _models(job: E2EJob, config: Any) -> Any:
    """The device path (facelite.service.app.load_models: sha256-verified artifacts, the config's detector settings), or
    for the baseline the same detector and embedder classes wired to the recipes' TF float networks."""
    from facelite.service.app import Models, load_models

    if not job.float_models:
        return load_models(config)
    from facelite.tools.bench.models import load_source, set_tf_threads

    set_tf_threads(1)
    sources: dict[str, Any] = {}
    for name, variant in ((job.detector, job.detector_variant), (job.embedder, job.embedder_variant)):
        if variant == "source":
            recipe, graphs, _ = load_source(name)
            sources[name] = (recipe, graphs)
    detection = config.detection
    detector = load_detector(
        job.models_dir,
        job.detector,
        job.detector_variant,
        min_face=detection.min_face,
        score_threshold=detection.score_threshold,
        sources=sources,
    )
    embedder = load_embedder(job.models_dir, job.embedder, job.embedder_variant, threads=1, sources=sources)
    return Models(detector, embedder)


def _enroll(gallery: Any, embedder: Any, crops: CropSet) -> None:
    images, persons, names = load_crops(crops)
    by_person: dict[str, tuple[list[np.ndarray], list[str]]] = {}
    for image, person, name in zip(images, persons, names):
        vecs, srcs = by_person.setdefault(person, ([], []))
        vecs.append(embedder.embed_crop(image).vector)
        srcs.append(name)
    for person, (vecs, srcs) in by_person.items():
        gallery.enroll(person, vecs, srcs)


def _pipeline_pass(config: Any, models: Any, gallery: Any) -> tuple[float, float, dict[str, float]]:
    """Pipeline.process alone over the same video, on the frames with a face in view:
    (fps, faces detected per frame, stage ms)."""
    from facelite.recognition.pipeline import Pipeline
    from facelite.service.app import make_gate, make_matcher, make_tracker, open_sources

    pipeline = Pipeline(
        models.detector, models.embedder, gallery, make_matcher(config, models, gallery.index.size)[0],
        make_tracker(config),
        make_gate(config),
    )  # fmt: skip
    source = next(iter(open_sources(config).values()))
    busy, frames, faces = 0.0, 0, 0
    try:
        while (frame := source.read()) is not None:
            t0 = time.perf_counter()
            result = pipeline.process(frame)
            dt = time.perf_counter() - t0
            if result.faces:
                busy += dt
                frames += 1
                faces += result.faces
    finally:
        source.close()
    return (frames / busy if busy > 0 else 0.0), (faces / frames if frames else 0.0), dict(pipeline.stats.stage_ms)


def run_stream(stream: StreamJob, models: Any) -> StreamResult:
    from facelite.service.app import Agent, open_gallery, open_sources
    from facelite.service.config import load_config
    from facelite.service.sinks.mqtt import MqttSink
    from facelite.service.spool import Spool

    config = load_config(stream.config)
    gallery = open_gallery(config, models.embedder)
    try:
        if not len(gallery):
            raise RuntimeError("gallery is empty: enrolment crops missing")
        assert config.mqtt is not None
        spool = Spool(config.spool.path, config.spool.max_messages, config.spool.max_bytes)
        sink = MqttSink(config.mqtt, spool, device_id=config.device_id).start()
        agent = Agent(config, models, gallery, sink, open_sources(config))
        t0 = time.monotonic()
        summary = agent.run()
        seconds = time.monotonic() - t0
        sink.close()
        stats = agent.cameras[0].pipeline.stats
        fps_view, faces_seen, pipe_stages = _pipeline_pass(config, models, gallery)
        return StreamResult(
            stream=stream.name,
            faces=stream.faces,
            frames=summary.frames,
            seconds=round(seconds, 3),
            fps=round(summary.frames / seconds, 2) if seconds > 0 else 0.0,
            stage_ms={k: round(v, 3) for k, v in stats.stage_ms.items()},
            embeddings=stats.embeddings,
            events=summary.events,
            pipeline_fps_in_view=round(fps_view, 2),
            faces_detected_in_view=round(faces_seen, 2),
            pipeline_stage_ms={k: round(v, 3) for k, v in pipe_stages.items()},
        )
    finally:
        gallery.close()


def run_e2e(job: E2EJob) -> E2EResult:
    from facelite.service.config import load_config

    models = _models(job, load_config(job.streams[0].config))
    results = []
    for stream in job.streams:
        config = load_config(stream.config)
        gallery_path = Path(config.gallery.path)
        for stale in (gallery_path, Path(str(gallery_path) + "-wal"), Path(str(gallery_path) + "-shm")):
            stale.unlink(missing_ok=True)
        try:
            from facelite.service.app import open_gallery

            with open_gallery(config, models.embedder) as gallery:
                _enroll(gallery, models.embedder, job.enroll)
            results.append(run_stream(stream, models))
        except Exception as exc:
            log.warning("stream %s: %s", stream.name, first_line(exc))
            results.append(
                StreamResult(stream.name, stream.faces, 0, 0.0, 0.0, {}, 0, 0, 0.0, 0.0, {}, first_line(exc))
            )
    rss = proc_status_mb("VmHWM")
    tf_loaded = "tensorflow" in sys.modules
    service_rss, service_error = 0.0, ""
    one_face = next((s for s in job.streams if s.faces == 1), None)
    if not job.float_models and one_face is not None:
        try:
            service_rss = service_rss_mb(one_face.config)
        except Exception as exc:
            service_error = first_line(exc)
            log.warning("agent service run: %s", service_error)
    spec = PipelineSpec(job.detector, job.detector_variant, job.embedder, job.embedder_variant)
    speed = run_speed(job.speed, job.models_dir) if job.speed else None
    source = None
    if job.source_after is not None:
        from facelite.tools.bench.models import run_source

        source = run_source(job.source_after)
    return E2EResult(
        job.label,
        spec.name,
        results,
        round(rss, 1),
        tf_loaded,
        sorted(os.sched_getaffinity(0)),
        speed,
        source,
        service_rss,
        service_error,
    )


def service_rss_mb(config: Path, timeout_s: float = 300.0) -> float:
    """Peak RSS (ru_maxrss of the exited child) of ``python -m facelite --config``, the stream's config under its
    own device id and spool, so its events are not counted as the stream's. The child inherits the
    worker's single-core affinity."""
    import re
    import subprocess
    import threading

    text = config.read_text()
    text = re.sub(r'^device_id = "([^"]+)"', r'device_id = "\1-service"', text, count=1, flags=re.M)
    text = text.replace('-spool.sqlite"', '-service-spool.sqlite"')
    own = config.with_name(config.stem + "-service.toml")
    own.write_text(text)
    repo = Path(__file__).resolve().parents[3]
    env = dict(os.environ, PYTHONPATH=str(repo))
    errors = own.with_suffix(".stderr")
    with open(errors, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "facelite", "--config", str(own)], cwd=repo, env=env, stdout=subprocess.DEVNULL,
            stderr=err,
        )  # fmt: skip
        # wait4 has no timeout and is the only way to the child's own rusage: a timer kills a hung agent.
        watchdog = threading.Timer(timeout_s, proc.kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = errors.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"agent exited {proc.returncode}: {tail[0]}")
    return round(usage.ru_maxrss / 1024.0, 1)  # KiB on Linux


# -- single-core speed: per frame, scaling, gallery ----------------------------------------------------------------
def _device_models(spec: PipelineSpec, models_dir: Path) -> tuple[Any, Any]:
    """Detector and embedder as the agent's default config runs them: one thread, min_face and score threshold."""
    det = load_detector(
        models_dir,
        spec.detector,
        spec.detector_variant,
        min_face=AGENT_MIN_FACE,
        score_threshold=AGENT_SCORE_THRESHOLD,
        threads=1,
    )
    return det, load_embedder(models_dir, spec.embedder, spec.embedder_variant, threads=1)


def _speed_of(spec: PipelineSpec, models_dir: Path, frames: list[np.ndarray], reps: int) -> FrameSpeed:
    det, emb = _device_models(spec, models_dir)
    return frame_speed(det.detect, emb.embed, frames, reps)


def run_speed(job: SpeedJob, models_dir: Path) -> SpeedResult:
    one = load_frames(job.one_face)
    combos = []
    for spec in job.combos:
        try:
            combos.append(ComboSpeed(spec, _speed_of(spec, models_dir, one, job.reps)))
        except Exception as exc:
            log.warning("%s: %s", spec.name, first_line(exc))
            combos.append(ComboSpeed(spec, None, first_line(exc)))
    scaling = []
    for spec in job.scaling:
        det, emb = _device_models(spec, models_dir)
        for axis, sets in (("faces", job.by_faces), ("resolution", job.by_resolution)):
            for x, paths in sets.items():
                speed = frame_speed(det.detect, emb.embed, load_frames(paths), job.scaling_reps)
                scaling.append(ScalingPoint(axis, x, spec.name, speed))
    gallery = [gallery_timing(n, job) for n in job.gallery_sizes]
    return SpeedResult(combos, scaling, gallery)


def random_templates(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors for timing only: matching cost depends on the matrix size, not on who is in it."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def gallery_timing(templates: int, job: SpeedJob, dim: int = 192) -> GalleryTiming:
    from facelite.recognition.gallery import Enrollment, Gallery
    from facelite.recognition.matching import Matcher

    path = job.gallery_dir / f"gallery_{templates}.sqlite"
    job.gallery_dir.mkdir(parents=True, exist_ok=True)
    for stale in (path, Path(str(path) + "-wal"), Path(str(path) + "-shm")):
        stale.unlink(missing_ok=True)
    vectors = random_templates(templates, dim, seed=templates)
    people = templates // TEMPLATES_PER_PERSON
    sha = hashlib.sha256(b"facelite-bench-random-templates").hexdigest()
    t0 = time.perf_counter()
    matcher = Matcher(threshold=0.5, margin=0.05)
    with Gallery.open(path, embedder_sha256=sha, embedding_size=dim, matcher=matcher) as gallery:
        batch = [
            Enrollment(
                f"person {p:06d}",
                list(vectors[p * TEMPLATES_PER_PERSON : (p + 1) * TEMPLATES_PER_PERSON]),
                [f"t{p}_{i}" for i in range(TEMPLATES_PER_PERSON)],
            )
            for p in range(people)
        ]
        gallery.enroll_many(batch)
        build_s = time.perf_counter() - t0
        probes = random_templates(64, dim, seed=templates + 1)
        i = iter(range(1 << 30))
        match = time_runs(lambda: gallery.match(probes[next(i) % len(probes)]), job.match_runs)
        index = gallery.index
        matcher_only = time_runs(lambda: matcher.match(index, probes[next(i) % len(probes)]), job.match_runs)
    for stale in (path, Path(str(path) + "-wal"), Path(str(path) + "-shm")):
        stale.unlink(missing_ok=True)
    return GalleryTiming(templates, people, dim, round(build_s, 2), match, matcher_only)


def import_rss_mb(python: Path) -> float:
    """Peak RSS of a process that only imports what the agent imports (no model loaded): the floor under
    the agent's own figure, measured in a fresh interpreter pinned like the agent."""
    import subprocess

    code = (
        "import ai_edge_litert.interpreter, facelite.service.app, facelite.cli, facelite.service.sinks.mqtt, "
        "facelite.service.config\n"
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
    )
    repo = Path(__file__).resolve().parents[3]
    env = dict(os.environ, PYTHONPATH=str(repo))
    cmd = ["taskset", "-c", "0", str(python), "-c", code]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=repo)
    if proc.returncode != 0:
        return 0.0
    return round(int(proc.stdout.strip().splitlines()[-1]) / 1024.0, 1)


# -- the orchestrator's side: the subscriber that reads the events ---------------------------------------------------
@dataclass(frozen=True)
class EventRecord:
    device: str
    event_id: str
    type: str
    latency_ms: float  # the event's own field: frame read -> publish, measured by the agent
    delivery_ms: float  # frame read (the event's timestamp) -> received by the subscriber


@dataclass(frozen=True)
class EventLog:
    events: list[EventRecord]

    @classmethod
    def from_messages(cls, records: list[tuple[str, bytes, float]]) -> EventLog:
        """Events from (topic, payload, received wall time); QoS 1 duplicates (same event_id) counted once."""
        import json
        from datetime import datetime

        seen: set[str] = set()
        out = []
        for topic, payload, received in records:
            parts = topic.split("/")
            if len(parts) < 3 or parts[-1] != "events":
                continue
            event = json.loads(payload)
            if event["event_id"] in seen:
                continue
            seen.add(event["event_id"])
            ts = datetime.strptime(event["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
            out.append(
                EventRecord(
                    parts[-2], event["event_id"], event["type"], float(event["latency_ms"]), (received - ts) * 1000
                )
            )
        return cls(out)

    def of(self, device: str) -> list[EventRecord]:
        return [e for e in self.events if e.device == device]


def recording_subscriber(broker: Any, topics: list[str]) -> Any:
    """facelite.tools.localbroker.Subscriber that also stamps each message with the wall time it arrived."""
    from facelite.tools.localbroker import Subscriber

    class RecordingSubscriber(Subscriber):
        def __init__(self) -> None:
            super().__init__(broker, topics)
            self._records: list[tuple[str, bytes, float]] = []

        def _on_message(self, client: Any, userdata: object, msg: Any) -> None:
            received = time.time()
            with self._cond:
                self._records.append((msg.topic, bytes(msg.payload), received))
            super()._on_message(client, userdata, msg)

        def records(self) -> list[tuple[str, bytes, float]]:
            with self._cond:
                return list(self._records)

    return RecordingSubscriber()
