"""The agent process: cameras in, MQTT events out, until SIGTERM or the end of every finite source.

Wiring only: the recognition logic is in facelite.recognition.pipeline, the contract in facelite.service.events,
delivery guarantees in the sink. Each camera is read in its own thread into a small queue, so a camera that is
reconnecting (blocking in its backoff) never stalls the others, the state message or the watchdog.

Size: the agent's run loop and everything it owns (cameras, the gallery refresh, presence, commands, strangers, the
state report) in one class, so the frame loop can be read in one place; the factories it needs sit above it.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2

from facelite.errors import ConfigError, FaceliteError
from facelite.model.manifest import Manifest
from facelite.recognition.eventfaces import EventFace, EventFaceStore, StorePolicy, store_path
from facelite.recognition.gallery import Gallery, Hygiene
from facelite.recognition.matching import Matcher
from facelite.recognition.openset import OpenSetThreshold, resolve_threshold
from facelite.recognition.openset import enrolment_hygiene as openset_hygiene
from facelite.recognition.pipeline import Pipeline
from facelite.recognition.strangers import StrangerPolicy, StrangerStore, Visit
from facelite.recognition.strangers import store_path as strangers_path
from facelite.recognition.track import Tracker
from facelite.recognition.unknowns import cluster_threshold
from facelite.service.commands import CommandContext, open_commands
from facelite.service.config import AgentConfig
from facelite.service.events import (
    EmbedderInfo,
    EventContext,
    SpoolStats,
    StateReport,
    Topics,
    event_messages,
    names_person,
    state_message,
)
from facelite.service.messages import Message
from facelite.service.roster import RecordFile, Roster, Sync
from facelite.service.sd_notify import Notifier
from facelite.service.sources import Frame, FrameSource, open_camera
from facelite.vision.detect import Detector, create_detector
from facelite.vision.detect.onet_landmarks import OnetLandmarks
from facelite.vision.embed import Embedder
from facelite.vision.quality import QualityGate

log = logging.getLogger(__name__)

GALLERY_REFRESH_S = 5.0  # pick up `facelite enroll` changes made by another process


class Sink(Protocol):
    def publish(self, message: Message) -> None: ...

    def purge_spool(self, match: Callable[[Message], bool]) -> int: ...

    def stats(self) -> Any: ...

    def close(self, timeout_s: float | None = None) -> None: ...


def _fixed_id(event_id: uuid.UUID) -> Callable[[], uuid.UUID]:
    """A ``new_id`` for event_messages that returns the id already chosen (bound now, not at call time)."""
    return lambda: event_id


def read_key(path: Path | None) -> bytes | None:
    """Gallery key file: 32/24/16 raw bytes, or the same as hex text."""
    if path is None:
        return None
    raw = Path(path).read_bytes()
    text = raw.strip()
    try:
        if len(text) in (32, 48, 64) and all(c in b"0123456789abcdefABCDEF" for c in text):
            return bytes.fromhex(text.decode())
    except ValueError:
        pass
    if len(raw) not in (16, 24, 32):
        raise ConfigError(f"gallery key must be 16, 24 or 32 bytes (or hex of them), got {len(raw)} bytes", str(path))
    return raw


@dataclass
class Models:
    detector: Detector
    embedder: Embedder


def load_models(config: AgentConfig) -> Models:
    """Load and verify both artifacts (sha256 and shapes against their manifests)."""
    m = config.models
    detector = create_detector(
        m.detector,
        runtime=m.runtime,
        num_threads=m.num_threads,
        min_face=config.detection.min_face,
        score_threshold=config.detection.score_threshold,
    )
    if m.landmarks is not None:
        detector = OnetLandmarks.from_model_dirs(detector, m.landmarks, runtime=m.runtime, num_threads=m.num_threads)
    embedder = Embedder.from_model_dir(m.embedder, runtime=m.runtime, num_threads=m.num_threads)
    return Models(detector, embedder)


def open_gallery(config: AgentConfig, embedder: Embedder) -> Gallery:
    return Gallery.for_embedder(config.gallery.path, embedder, key=read_key(config.gallery.key_file))


def open_set_threshold(config: AgentConfig, models: Models, templates: int) -> OpenSetThreshold:
    """The threshold that holds ``matching.stranger_accept_rate`` per visit for a gallery of ``templates``."""
    return resolve_threshold(
        models.embedder.manifest,
        detector=models.detector.pipeline,
        stranger_accept_rate=config.matching.stranger_accept_rate,
        templates=templates,
        fixed=config.matching.threshold,
    )


def enrolment_hygiene(config: AgentConfig, models: Models) -> Hygiene:
    """Template hygiene for enrolling commands, as the CLI applies it (agent/recognition/openset.py)."""
    return openset_hygiene(
        models.embedder.manifest,
        detector=models.detector.pipeline,
        max_templates=config.gallery.max_templates_per_person,
        stranger_accept_rate=config.matching.stranger_accept_rate,
        fixed=config.matching.threshold,
    )


def make_matcher(config: AgentConfig, models: Models, templates: int) -> tuple[Matcher, OpenSetThreshold]:
    resolved = open_set_threshold(config, models, templates)
    return Matcher(threshold=resolved.threshold, margin=config.matching.ambiguous_margin), resolved


def make_gate(config: AgentConfig) -> QualityGate:
    return config.quality.gate()


def make_tracker(config: AgentConfig) -> Tracker:
    return Tracker(config.tracking.tracker())


@dataclass
class _Camera:
    name: str
    source: FrameSource
    pipeline: Pipeline
    frames: queue.Queue[tuple[Frame, float] | None]
    live: bool
    realtime: bool = False  # pace a file at its media time, like a camera
    dropped: int = 0
    ended: bool = False
    frame_size: tuple[int, int] = (1, 1)
    thread: threading.Thread | None = None


@dataclass
class RunSummary:
    frames: int = 0
    events: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


class Agent:
    """One agent run. Side effects are passed in: sources, sink, clocks, notifier."""

    def __init__(
        self,
        config: AgentConfig,
        models: Models,
        gallery: Gallery,
        sink: Sink,
        sources: dict[str, FrameSource],
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        notifier: Notifier | None = None,
        record: RecordFile | None = None,
        faces: EventFaceStore | None = None,
        receive_commands: Callable[[], list[Message]] | None = None,
        strangers: StrangerStore | None = None,
    ) -> None:
        self.config = config
        self.strangers = strangers  # unknown visits' faces, for recurring strangers (None: not kept)
        self.faces = faces  # faces of recognized/unknown events, for `gallery reject`, `enroll --from-event`
        self.models = models
        self.gallery = gallery
        self.sink = sink
        self.wall = wall
        self.monotonic = monotonic
        self.notifier = notifier or Notifier()
        prefix = config.mqtt.base_topic if config.mqtt else "facelite"
        discovery_prefix = config.mqtt.discovery_prefix if config.mqtt else "homeassistant"
        self.topics = Topics(config.device_id, prefix, discovery_prefix)
        self.matcher, self.open_set = make_matcher(config, models, gallery.index.size)
        self._log_threshold()
        gate = make_gate(config)
        self.cameras: list[_Camera] = []
        for cam in config.cameras:
            source = sources[cam.name]
            live = bool(getattr(source, "live", True))
            pipeline = Pipeline(models.detector, models.embedder, gallery, self.matcher, make_tracker(config), gate)
            self.cameras.append(
                _Camera(cam.name, source, pipeline, queue.Queue(maxsize=2), live, realtime=cam.realtime and not live)
            )
        self.embedder_info = EmbedderInfo(models.embedder.manifest.name, models.embedder.sha256)
        self.roster = Roster(
            self.topics,
            [p.name for p in gallery.people()],
            away_after_s=config.presence.away_after_s,
            refresh_s=config.presence.last_seen_interval_s,
            record=record or RecordFile(None),
            discovery=bool(config.mqtt and config.mqtt.discovery),
        )
        self.presence = self.roster.presence
        # MQTT commands (agent/service/commands.py): run here, in the frame loop that owns the gallery and the matcher.
        self.commands = open_commands(config, self.topics, receive_commands, wall) if receive_commands else None
        self._command_ctx = CommandContext(
            gallery,
            faces,
            models.embedder.sha256,
            lambda: self.open_set.as_dict(),
            enrolment_hygiene(config, models),
            strangers,
        )
        self._announced = False
        self.summary = RunSummary()
        self._stop = threading.Event()
        self._started = monotonic()

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Finish the frame in hand, then flush and exit (SIGTERM)."""
        self._stop.set()

    def _reader(self, cam: _Camera) -> None:
        """Camera thread: live sources keep only the newest frames (older ones are dropped and counted);
        files and folders are processed completely, so the reader waits for the pipeline."""
        first: tuple[float, float] | None = None  # (media ts, monotonic) of the first frame, for realtime
        try:
            while not self._stop.is_set():
                frame = cam.source.read()
                if frame is None:
                    break
                if cam.realtime:
                    first = first or (frame.ts, self.monotonic())
                    ahead = (frame.ts - first[0]) - (self.monotonic() - first[1])
                    if ahead > 0 and self._stop.wait(ahead):
                        break
                item = (frame, self.wall())
                if cam.live:
                    try:
                        cam.frames.put_nowait(item)
                    except queue.Full:
                        try:
                            cam.frames.get_nowait()
                            cam.dropped += 1
                        except queue.Empty:
                            pass
                        cam.frames.put_nowait(item)
                else:
                    while not self._stop.is_set():
                        try:
                            cam.frames.put(item, timeout=0.2)
                            break
                        except queue.Full:
                            continue
        except Exception:
            log.exception("camera %s reader failed", cam.name)
        finally:
            cam.frames.put(None)

    def _publish_all(self, messages: list[Message]) -> None:
        for m in messages:
            self.sink.publish(m)

    def announce(self) -> None:
        """Bring the broker in line with the gallery, once: clear people forgotten while the agent was stopped
        (and erase their spooled events), announce everyone. Call it before the sink starts sending its spool;
        ``run`` calls it otherwise."""
        if not self._announced:
            self._announced = True
            self._sync(self.roster.start())
            self._sync_strangers(republish=True)

    def _sync(self, sync: Sync) -> None:
        """Publish what keeps the broker in line with the gallery; erase spooled events of people who left it."""
        self._publish_all(sync.messages)
        if sync.forgotten and self.faces is not None:
            try:
                self.faces.forget(sync.forgotten)
            except FaceliteError as exc:
                log.warning("faces of forgotten people not erased from the event face store: %s", exc.one_line())
        if sync.forgotten:
            erased = self.sink.purge_spool(lambda m: names_person(m, self.topics, sync.forgotten))
            log.info(
                "forgot %d person(s): retained messages cleared, %d spooled event(s) erased",
                len(sync.forgotten),
                erased,
            )

    def _ctx(self, cam: _Camera) -> EventContext:
        crops = bool(self.config.mqtt and self.config.mqtt.publish_crops)
        return EventContext(self.topics, cam.name, self.embedder_info, include_face_crop=crops)

    def _handle_events(self, cam: _Camera, events: list[Any], wall_ts: float, crops: dict[int, Any]) -> None:
        for ev in events:
            # The tracker runs on the stream's own time (media time for files); the contract wants the
            # wall-clock moment the frame was read, so latency is frame-read -> publish.
            shift = wall_ts - ev.ts
            ev = dataclasses.replace(ev, ts=wall_ts, first_seen=ev.first_seen + shift, last_seen=ev.last_seen + shift)
            if ev.person is not None and not self.roster.enrolled(ev.person):
                ev = dataclasses.replace(ev, person=None)  # the visit outlived its person's forget: name no one
            jpeg = None
            if ev.track_id in crops and self.config.mqtt and self.config.mqtt.publish_crops:
                ok, buf = cv2.imencode(".jpg", crops[ev.track_id], [cv2.IMWRITE_JPEG_QUALITY, 85])
                jpeg = buf.tobytes() if ok else None
            event_id = uuid.uuid4()
            msgs = event_messages(
                ev,
                self._ctx(cam),
                frame_size=cam.frame_size,
                gallery_version=self.gallery.version,
                now=self.wall(),
                new_id=_fixed_id(event_id),
                face_jpeg=jpeg,
            )
            if self.faces is not None and ev.type in ("recognized", "unknown") and ev.embedding is not None:
                # Kept before publishing: a user who sees the event can reject it, or enrol its face, at once.
                person = ev.person if ev.type == "recognized" else None  # None: an unknown event's face
                self.faces.put(
                    EventFace(str(event_id), ev.ts, person, cam.name, self.models.embedder.sha256, ev.embedding)
                )
            self._publish_all(msgs)
            self._keep_stranger(cam, ev)
            if ev.type == "recognized" and ev.person is not None:
                self.roster.last_person_published(ev.person)
            self._publish_all(self.roster.presence_messages(self.presence.on_event(ev)))
            self.summary.events += 1
            self.summary.by_type[ev.type] = self.summary.by_type.get(ev.type, 0) + 1
            log.info(
                "event %s camera=%s track=%d person=%s similarity=%.3f",
                ev.type,
                cam.name,
                ev.track_id,
                ev.person,
                ev.similarity,
            )

    def _keep_stranger(self, cam: _Camera, ev: Any) -> None:
        """A visit that ended never recognised joins the stranger store; announce its cluster when it recurs."""
        if self.strangers is None or ev.type != "left" or ev.person is not None or ev.decision != "unknown":
            return
        if ev.embedding is None:
            return
        visit = Visit(
            ev.first_seen, ev.last_seen, cam.name, self.models.embedder.sha256, ev.embedding, ev.quality, ev.crop
        )
        k = self.strangers.add(visit)
        if k is not None:
            log.info("unknown visit on camera %s kept as unknown person %d", cam.name, k)
            self._sync_strangers()

    def _sync_strangers(self, *, republish: bool = False) -> None:
        if self.strangers is not None:
            self._publish_all(self.strangers.sync(self.topics, republish=republish))

    def state(self, fps: float) -> StateReport:
        stage: dict[str, float] = {}
        skipped: dict[str, int] = {}
        frames = dropped = 0
        for cam in self.cameras:
            st = cam.pipeline.stats
            frames += st.frames
            for k, v in st.stage_ms.items():
                stage[k] = max(stage.get(k, 0.0), v)
            for k, v in st.skipped.items():
                skipped[k] = skipped.get(k, 0) + v
            status = cam.source.status
            dropped += cam.dropped + status.dropped_fps
            for k, v in status.skipped.items():
                skipped[f"source:{k}"] = skipped.get(f"source:{k}", 0) + v
        sink = self.sink.stats()
        cams = {
            c.name: c.source.status.state.value
            if hasattr(c.source.status.state, "value")
            else str(c.source.status.state)
            for c in self.cameras
        }
        camera = next(iter(cams.values())) if len(cams) == 1 else ",".join(f"{k}:{v}" for k, v in cams.items())
        det = self.models.detector.manifest
        emb = self.models.embedder.manifest
        return StateReport(
            fps=fps,
            stage_ms=stage,
            frames=frames,
            dropped_frames=dropped,
            skipped=skipped,
            spool=SpoolStats(pending=sink.pending, dropped=sink.dropped),
            models={"detector": f"{det.name}/{det.variant}", "embedder": f"{emb.name}/{emb.variant}"},
            uptime_s=self.monotonic() - self._started,
            camera=camera,
            matching=self.open_set.as_dict(),
            commands=self.commands.counters(getattr(sink, "inbound_dropped", 0)) if self.commands else {},
        )

    def run(self) -> RunSummary:
        for cam in self.cameras:
            cam.thread = threading.Thread(target=self._reader, args=(cam,), name=f"camera-{cam.name}", daemon=True)
            cam.thread.start()
        self.announce()
        self.notifier.ready(f"{len(self.cameras)} camera(s), {len(self.gallery.people())} people enrolled")
        log.info(
            "agent %s running: %d camera(s), %d people enrolled",
            self.config.device_id,
            len(self.cameras),
            len(self.gallery.people()),
        )
        next_state = self.monotonic()
        next_refresh = self.monotonic() + GALLERY_REFRESH_S
        next_watchdog = self.monotonic()
        window_start, window_frames = self.monotonic(), 0
        while not self._stop.is_set() and not all(c.ended for c in self.cameras):
            got_frame = False
            for cam in self.cameras:
                if cam.ended:
                    continue
                try:
                    item = cam.frames.get(timeout=0.05)
                except queue.Empty:
                    continue
                if item is None:
                    cam.ended = True
                    self._handle_events(cam, cam.pipeline.finish(time.monotonic()), self.wall(), {})
                    log.info("camera %s ended (%s)", cam.name, cam.source.status.detail or "end of stream")
                    continue
                frame, wall_ts = item
                got_frame = True
                cam.frame_size = (int(frame.image.shape[1]), int(frame.image.shape[0]))
                result = cam.pipeline.process(frame)
                self._handle_events(cam, result.events, wall_ts, result.crops)
                self._publish_all(self.roster.presence_messages(self.presence.on_sighting(result.people, wall_ts)))
                window_frames += 1
                self.summary.frames += 1
            now = self.monotonic()
            if now >= next_state:
                fps = window_frames / max(now - window_start, 1e-6)
                window_start, window_frames = now, 0
                self.sink.publish(state_message(self.topics, self.state(fps), now=self.wall()))
                self._publish_all(self.roster.presence_messages(self.presence.tick(self.wall())))
                next_state = now + self.config.state_interval_s
            if self.commands is not None:
                self.commands.drain(self._command_ctx, gallery_changed=self._gallery_changed, publish=self.sink.publish)
            if now >= next_refresh:
                next_refresh = now + GALLERY_REFRESH_S
                self._refresh_gallery()
            if self.notifier.watchdog_interval_s and now >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = now + self.notifier.watchdog_interval_s
            if not got_frame:
                self._stop.wait(0.01)
        return self._shutdown()

    def _refresh_gallery(self) -> None:
        """Every few seconds: another process (the CLI) may have changed the gallery or dropped a stranger, and
        strangers' faces expire; a gallery change syncs the strangers itself."""
        try:
            changed = self.gallery.refresh()
        except FaceliteError as exc:
            log.warning("gallery refresh failed: %s", exc.one_line())
            changed = False
        if changed:
            self._gallery_changed()
        else:
            self._sync_strangers()

    def _gallery_changed(self) -> None:
        people = [p.name for p in self.gallery.people()]
        log.info("gallery changed (version %d): %d people", self.gallery.version, len(people))
        self._rematch()
        self._sync(self.roster.set_people(people))
        self._sync_strangers()  # a stranger enrolled (CLI or command) or dropped: clear their unknown/<k> at once

    def _rematch(self) -> None:
        """A gallery of another size needs another threshold to hold the same per-visit stranger rate."""
        try:
            matcher, resolved = make_matcher(self.config, self.models, self.gallery.index.size)
        except FaceliteError as exc:
            log.warning("open-set threshold not updated: %s", exc.one_line())
            return
        self.matcher, self.open_set = matcher, resolved
        for cam in self.cameras:
            cam.pipeline.matcher = matcher  # read once per frame by the pipeline: a plain swap is enough
        self._log_threshold()

    def _log_threshold(self) -> None:
        o = self.open_set
        expected = f"{o.expected_visit_far:.2g}" if o.expected_visit_far is not None else "unknown"
        log.info(
            "match threshold %.4f for %d template(s): expected stranger accept rate per visit %s (%s)",
            o.threshold,
            o.templates,
            expected,
            o.source,
        )

    def _shutdown(self) -> RunSummary:
        self.notifier.stopping()
        self._stop.set()
        for cam in self.cameras:
            cam.source.close()
        for cam in self.cameras:
            if not cam.ended:
                self._handle_events(cam, cam.pipeline.finish(time.monotonic()), self.wall(), {})
        elapsed = self.monotonic() - self._started
        self.sink.publish(
            state_message(self.topics, self.state(self.summary.frames / max(elapsed, 1e-6)), now=self.wall())
        )
        for cam in self.cameras:
            if cam.thread is not None:
                cam.thread.join(timeout=2.0)
        log.info(
            "agent stopped: %d frames, %d events %s", self.summary.frames, self.summary.events, self.summary.by_type
        )
        return self.summary


def open_strangers(config: AgentConfig, manifest: Manifest, detector: str) -> StrangerStore:
    """The stranger store in the agent's state folder (beside the spool), keyed like the gallery."""
    s = config.strangers
    policy = StrangerPolicy(
        threshold=cluster_threshold(manifest, detector, s.cluster_far),
        keep_s=s.keep_s,
        max_visits=s.max_visits,
        min_visits=s.min_visits,
        min_gap_s=s.min_gap_s,
    )
    return StrangerStore(strangers_path(config.spool.path), key=read_key(config.gallery.key_file), policy=policy)


def open_event_faces(config: AgentConfig) -> EventFaceStore:
    """The store of recent event faces in the agent's state folder (beside the spool), keyed like the gallery."""
    g = config.gallery
    return EventFaceStore(
        store_path(config.spool.path),
        key=read_key(g.key_file),
        policy=StorePolicy(keep_s=g.event_faces_keep_s, max_faces=g.event_faces_max),
    )


def open_sources(config: AgentConfig) -> dict[str, FrameSource]:
    return {cam.name: open_camera(cam) for cam in config.cameras}
