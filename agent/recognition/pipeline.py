"""The per-frame recognition pipeline: detect -> track -> quality gate -> align + embed -> match -> vote.

No I/O here: frames come in, tracker events come out, so the same code runs on the device, in
tests (photos in, events out) and in the benchmarks. ``process`` never raises: a frame that cannot
be processed is skipped and counted, because one bad frame must not stop a camera that runs for months.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from facelite.recognition.matching import Matcher, TemplateIndex
from facelite.recognition.track import Tracker, TrackEvent, TrackUpdate
from facelite.vision.detect import Detector
from facelite.vision.embed import Embedder
from facelite.vision.frames import Frame
from facelite.vision.quality import QualityGate

log = logging.getLogger(__name__)

STAGES = ("detect", "track", "quality", "embed", "match")


class GalleryView(Protocol):
    """What the pipeline needs of a gallery: the current template matrix and its version."""

    @property
    def index(self) -> TemplateIndex: ...

    @property
    def version(self) -> int: ...


@dataclass
class PipelineStats:
    frames: int = 0
    faces: int = 0
    embeddings: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count (quality, frame errors)
    stage_ms: dict[str, float] = field(default_factory=dict)  # exponential moving average per stage

    def observe(self, stage: str, ms: float, alpha: float = 0.1) -> None:
        prev = self.stage_ms.get(stage)
        self.stage_ms[stage] = ms if prev is None else prev + alpha * (ms - prev)


@dataclass(frozen=True)
class FrameResult:
    events: list[TrackEvent]
    faces: int
    embedded: int
    crops: dict[int, np.ndarray]  # track id -> aligned crop embedded this frame (for optional event JPEGs)
    people: tuple[str, ...] = ()  # recognised people whose face is in this frame (presence's last_seen)
    updates: tuple[TrackUpdate, ...] = ()  # this frame's faces, each with its track (facelite.api reports them)


class Pipeline:
    def __init__(
        self,
        detector: Detector,
        embedder: Embedder,
        gallery: GalleryView,
        matcher: Matcher,
        tracker: Tracker,
        gate: QualityGate,
        *,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        if gallery.index.dim != embedder.manifest.embedding_size and gallery.index.size:
            raise ValueError(
                f"gallery holds {gallery.index.dim}-d templates, embedder makes {embedder.manifest.embedding_size}-d"
            )
        self.detector = detector
        self.embedder = embedder
        self.gallery = gallery
        self.matcher = matcher
        self.tracker = tracker
        self.gate = gate
        self.stats = PipelineStats()
        self._timer = timer
        # track id -> (quality, embedding, aligned crop) of the best face embedded so far
        self._best_face: dict[int, tuple[float, np.ndarray, np.ndarray]] = {}

    def _timed(self, stage: str, t0: float) -> float:
        now = self._timer()
        self.stats.observe(stage, (now - t0) * 1000)
        return now

    def process(self, frame: Frame) -> FrameResult:
        self.stats.frames += 1
        if frame.image.size == 0:
            # Counted, not taken for an empty doorway: a source delivering frames without pixels must show in state.
            self.stats.skipped["empty_frame"] += 1
            log.debug("frame %d of %s skipped: no pixels (shape %s)", frame.index, frame.camera, frame.image.shape)
            return FrameResult(self._events(), 0, 0, {})
        try:
            return self._process(frame)
        except Exception as exc:
            reason = f"frame_error:{type(exc).__name__}"
            self.stats.skipped[reason] += 1
            log.warning(
                "frame %d of %s skipped: %s",
                frame.index,
                frame.camera,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            return FrameResult(self._events(), 0, 0, {})

    def _events(self, popped: list[TrackEvent] | None = None) -> list[TrackEvent]:
        """The tracker's events, ``recognized`` and ``unknown`` ones and the ``left`` of a visit never recognised (for
        recurring strangers) carrying the visit's best face and its crop; forget faces of ended tracks."""
        events = [
            dataclasses.replace(ev, embedding=self._best_face[ev.track_id][1], crop=self._best_face[ev.track_id][2])
            if (ev.type in ("recognized", "unknown") or (ev.type == "left" and ev.person is None))
            and ev.track_id in self._best_face
            else ev
            for ev in (self.tracker.pop_events() if popped is None else popped)
        ]
        alive = self.tracker.track_ids()
        for track_id in [t for t in self._best_face if t not in alive]:
            del self._best_face[track_id]
        return events

    def _process(self, frame: Frame) -> FrameResult:
        image = frame.image
        t = self._timer()
        faces = self.detector.detect(image)
        t = self._timed("detect", t)
        qualities = [self.gate.assess(image, f) for f in faces]
        t = self._timed("quality", t)
        updates = self.tracker.update(frame.ts, faces, [q.score for q in qualities])
        t = self._timed("track", t)
        self.stats.faces += len(faces)
        embedded = 0
        crops: dict[int, np.ndarray] = {}
        for u in updates:
            if not u.needs_embedding:
                continue
            q = qualities[u.face_index]
            if not q.passed:
                self.stats.skipped[q.reason or "quality"] += 1
                continue
            crop = self.embedder.align(image, u.face)
            emb = self.embedder.embed_crop(crop)
            t = self._timed("embed", t)
            match = self.matcher.match(self.gallery.index, emb.vector)
            kept = self._best_face.get(u.track_id)
            if kept is None or q.score > kept[0]:
                self._best_face[u.track_id] = (q.score, emb.vector, crop)
            self.tracker.add_match(u.track_id, match, q.score)
            t = self._timed("match", t)
            crops[u.track_id] = crop
            embedded += 1
        self.stats.embeddings += embedded
        people = tuple(dict.fromkeys(u.person for u in updates if u.person is not None))
        return FrameResult(self._events(), len(faces), embedded, crops, people, tuple(updates))

    def finish(self, ts: float) -> list[TrackEvent]:
        """End every visit (stream ended, shutdown): their ``left`` events."""
        return self._events(self.tracker.finish(ts))
