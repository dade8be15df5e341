"""Tracks faces across frames, votes on who each track is, and turns a visit into few events.

Pure logic: time comes from the frame timestamps passed to ``update``; nothing here reads a clock,
a camera or a model. The pipeline per frame is::

    updates = tracker.update(frame.ts, faces)
    for u in updates:
        if u.needs_embedding:
            tracker.add_match(u.track_id, gallery.match(embedder.embed(image, u.face).vector), u.quality)
    for event in tracker.pop_events():
        sink.publish(...)

A visit yields exactly one ``recognized`` or ``unknown`` event once the votes decide (an ``unknown``
visit may later be upgraded to ``recognized`` once, after a fresh round of votes agrees), and one
``left`` event when the track has been missing for more than ``max_missed_frames`` frames *and*
``max_missed_seconds`` seconds. A face lost for a frame or two keeps its track and its identity.

Embeddings are requested while a track is undecided (each frame, until the votes decide), then only
for a periodic re-check or when the face is clearly better than the last one embedded — never every
frame once decided, which is what keeps a Pi's embedder budget for new faces.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from facelite.errors import ConfigError
from facelite.recognition.matching import Decision, Match
from facelite.vision.geometry import BBox, Face

log = logging.getLogger(__name__)

EventType = Literal["recognized", "unknown", "left"]
TrackState = Literal["pending", "recognized", "unknown"]
EmbedReason = Literal["new", "undecided", "verify", "recheck", "quality"]

# Face size (pixels, shorter side) from which size no longer limits quality: around the embedders'
# input sizes (112-160), below it the aligned crop is upsampled and the embedding degrades.
QUALITY_FULL_SIZE = 112.0
# Velocity smoothing: half new measurement, half history, so one jittery box does not fling the prediction.
_VELOCITY_ALPHA = 0.5


def face_quality(face: Face) -> float:
    """Default quality in [0, 1]: detector confidence scaled down for faces smaller than the embedder input."""
    size = min(face.bbox.width, face.bbox.height)
    return float(max(0.0, min(1.0, face.score)) * min(1.0, size / QUALITY_FULL_SIZE))


@dataclass(frozen=True)
class TrackerConfig:
    iou_threshold: float = 0.3  # predicted box vs detection IoU needed to continue a track
    max_missed_frames: int = 10  # a track ends when missed for more than this many frames ...
    max_missed_seconds: float = 2.0  # ... and for more than this many seconds (both: fps-independent)
    min_votes: int = 3  # embeddings needed before a track's identity is decided
    recheck_interval_s: float = 5.0  # re-embed a decided track this often
    quality_improvement: float = 0.15  # re-embed early when quality rises this much (absolute, 0..1)
    max_center_shift: float = 1.0  # fallback match for fast motion: centre distance in face widths
    max_votes: int = 0  # undecided after this many votes -> "unknown" (ambiguous); 0 means 2 * min_votes

    def __post_init__(self) -> None:
        def bad(name: str, what: str) -> ConfigError:
            return ConfigError(f"{what}, got {getattr(self, name)!r}", f"tracker.{name}")

        if not (0.0 < self.iou_threshold <= 1.0):
            raise bad("iou_threshold", "IoU threshold must be in (0, 1]")
        if int(self.max_missed_frames) != self.max_missed_frames or self.max_missed_frames < 0:
            raise bad("max_missed_frames", "must be a whole number >= 0")
        if not (math.isfinite(self.max_missed_seconds) and self.max_missed_seconds >= 0):
            raise bad("max_missed_seconds", "must be seconds >= 0")
        if int(self.min_votes) != self.min_votes or self.min_votes < 1:
            raise bad("min_votes", "must be a whole number >= 1")
        if not (math.isfinite(self.recheck_interval_s) and self.recheck_interval_s > 0):
            raise bad("recheck_interval_s", "must be seconds > 0")
        if not (0.0 < self.quality_improvement <= 1.0):
            raise bad("quality_improvement", "must be in (0, 1]")
        if not (math.isfinite(self.max_center_shift) and self.max_center_shift >= 0):
            raise bad("max_center_shift", "must be >= 0 face widths")
        if int(self.max_votes) != self.max_votes or (self.max_votes != 0 and self.max_votes < self.min_votes):
            raise bad("max_votes", f"must be 0 or a whole number >= min_votes ({self.min_votes})")

    @property
    def vote_limit(self) -> int:
        return self.max_votes or 2 * self.min_votes


@dataclass(frozen=True)
class TrackEvent:
    """A visit's lifecycle event; ``ts`` is the frame timestamp (epoch seconds) that caused it."""

    type: EventType
    track_id: int
    ts: float
    person: str | None
    similarity: float
    margin: float
    decision: Decision
    bbox: BBox  # pixels, in the frame the event came from
    quality: float
    first_seen: float
    last_seen: float
    # The best-quality face embedded during the visit up to this event (set by the pipeline on ``recognized``
    # events; the agent keeps it for `facelite gallery reject`). Never published.
    embedding: np.ndarray | None = field(default=None, compare=False, repr=False)
    # The aligned crop of that face (set with ``embedding``; agent/recognition/strangers.py keeps it for unknown
    # visits).
    crop: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class TrackUpdate:
    """One face of this frame, assigned to a track (``face_index`` indexes the faces passed in)."""

    track_id: int
    face_index: int
    face: Face
    quality: float
    needs_embedding: bool
    reason: EmbedReason | None
    state: TrackState
    person: str | None  # identity decided so far (None while pending or unknown)


@dataclass(frozen=True)
class _Vote:
    person: str | None
    similarity: float
    margin: float
    decision: Decision
    quality: float


@dataclass(frozen=True)
class _Verdict:
    decision: Decision
    person: str | None
    similarity: float
    margin: float


@dataclass
class _Track:
    id: int
    bbox: BBox
    first_seen: float
    last_seen: float
    quality: float
    velocity: tuple[float, float] | None = None  # centre px/s
    missed: int = 0
    state: TrackState = "pending"
    votes: list[_Vote] = field(default_factory=list)
    verify_from: int | None = None  # index into votes where an unknown->known re-check round started
    upgraded: bool = False
    announced: TrackEvent | None = None
    last_embed_ts: float | None = None
    last_embed_quality: float = 0.0
    best_quality: float = 0.0

    def predicted(self, ts: float) -> BBox:
        if self.velocity is None:
            return self.bbox
        dt = max(0.0, ts - self.last_seen)
        dx, dy = self.velocity[0] * dt, self.velocity[1] * dt
        b = self.bbox
        return BBox(b.x1 + dx, b.y1 + dy, b.x2 + dx, b.y2 + dy)


def _verdict(votes: Sequence[_Vote], min_votes: int, limit: int) -> _Verdict | None:
    """Majority over votes: a person needs more than half of them (ties broken by summed similarity)."""
    n = len(votes)
    if n < min_votes:
        return None
    known = [v for v in votes if v.decision == "known" and v.person is not None]
    if known:
        counts = Counter(v.person for v in known if v.person is not None)
        sums: dict[str, float] = {}
        for v in known:
            assert v.person is not None
            sums[v.person] = sums.get(v.person, 0.0) + v.similarity
        leader = max(counts, key=lambda p: (counts[p], sums[p]))
        if counts[leader] * 2 > n:
            mine = [v for v in known if v.person == leader]
            return _Verdict(
                "known",
                leader,
                float(np.mean([v.similarity for v in mine])),
                float(np.mean([v.margin for v in mine])),
            )
    unknown = [v for v in votes if v.decision == "unknown"]
    if len(unknown) * 2 > n:
        return _Verdict(
            "unknown",
            None,
            float(np.mean([v.similarity for v in unknown])),
            float(np.mean([v.margin for v in unknown])),
        )
    if n >= limit:
        # Votes keep disagreeing (ambiguous matches, or flipping between people): announce an unknown
        # visit rather than guess, and say why in the decision.
        return _Verdict(
            "ambiguous", None, float(np.mean([v.similarity for v in votes])), float(np.mean([v.margin for v in votes]))
        )
    return None


class Tracker:
    """IoU tracker with motion prediction, identity votes and visit events."""

    def __init__(self, config: TrackerConfig) -> None:
        self.config = config
        self._tracks: dict[int, _Track] = {}
        self._next_id = 1
        self._events: list[TrackEvent] = []
        self._last_ts: float | None = None

    @property
    def active_tracks(self) -> int:
        return len(self._tracks)

    # -- per frame -------------------------------------------------------------------------------
    def update(self, ts: float, faces: Sequence[Face], qualities: Sequence[float] | None = None) -> list[TrackUpdate]:
        """Assign this frame's faces to tracks; end tracks missing for too long (queues ``left`` events).

        ``qualities`` (one per face, 0..1) come from the quality gate; by default ``face_quality``.
        """
        ts = self._monotonic(ts)
        if qualities is not None and len(qualities) != len(faces):
            raise ValueError(f"{len(qualities)} qualities for {len(faces)} faces")
        quals = [float(q) for q in qualities] if qualities is not None else [face_quality(f) for f in faces]
        tracks = list(self._tracks.values())
        pairs = self._assign(ts, tracks, faces)
        matched_tracks = {t.id for t, _ in pairs}

        updates: list[TrackUpdate] = []
        for track, fi in pairs:
            self._observe(track, ts, faces[fi].bbox, quals[fi])
            updates.append(self._update_for(track, fi, faces[fi]))
        matched_faces = {fi for _, fi in pairs}
        for fi, face in enumerate(faces):
            if fi in matched_faces:
                continue
            track = _Track(self._next_id, face.bbox, ts, ts, quals[fi], best_quality=quals[fi])
            self._next_id += 1
            self._tracks[track.id] = track
            updates.append(self._update_for(track, fi, face))
            log.debug("track %d started at %s", track.id, face.bbox)

        for track in tracks:
            if track.id in matched_tracks:
                continue
            track.missed += 1
            if track.missed > self.config.max_missed_frames and ts - track.last_seen > self.config.max_missed_seconds:
                self._end(track, ts)
        updates.sort(key=lambda u: u.face_index)
        return updates

    def add_match(self, track_id: int, match: Match, quality: float) -> None:
        """Record one embedding's match for a track; may queue a ``recognized``/``unknown`` event."""
        track = self._tracks.get(track_id)
        if track is None:
            log.debug("match for track %d arrived after it ended; ignored", track_id)
            return
        track.votes.append(_Vote(match.person, match.similarity, match.margin, match.decision, float(quality)))
        track.last_embed_ts = track.last_seen
        track.last_embed_quality = float(quality)
        cfg = self.config
        if track.state == "pending":
            verdict = _verdict(track.votes, cfg.min_votes, cfg.vote_limit)
            if verdict is not None:
                self._announce(track, verdict, float(quality))
        elif track.state == "unknown" and not track.upgraded:
            if track.verify_from is None:
                if match.decision == "known":
                    # Someone unknown may turn out known (better light, closer): collect a fresh round
                    # of votes before changing our mind, so one lucky match is not enough.
                    track.verify_from = len(track.votes) - 1
            if track.verify_from is not None:
                fresh = track.votes[track.verify_from :]
                verdict = _verdict(fresh, cfg.min_votes, cfg.min_votes)
                if verdict is not None:
                    track.verify_from = None
                    if verdict.decision == "known":
                        track.upgraded = True
                        self._announce(track, verdict, float(quality))

    def track_ids(self) -> frozenset[int]:
        """Tracks still alive (the pipeline drops what it keeps per track once its track is gone)."""
        return frozenset(self._tracks)

    def pop_events(self) -> list[TrackEvent]:
        """Events queued by ``update``/``add_match`` since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def finish(self, ts: float) -> list[TrackEvent]:
        """End every track (source closed, shutdown): queued events plus a ``left`` per announced visit."""
        ts = self._monotonic(ts)
        for track in list(self._tracks.values()):
            self._end(track, ts)
        return self.pop_events()

    # -- internals -------------------------------------------------------------------------------
    def _monotonic(self, ts: float) -> float:
        ts = float(ts)
        if self._last_ts is not None and ts < self._last_ts:
            # A camera clock stepping back must not end tracks or fake velocities: hold time still.
            log.warning("frame timestamp went back %.3f s; using the previous one", self._last_ts - ts)
            ts = self._last_ts
        self._last_ts = ts
        return ts

    def _assign(self, ts: float, tracks: list[_Track], faces: Sequence[Face]) -> list[tuple[_Track, int]]:
        if not tracks or not faces:
            return []
        predicted = [t.predicted(ts) for t in tracks]
        pb = np.array([p.as_array() for p in predicted], np.float64)
        fb = np.array([f.bbox.as_array() for f in faces], np.float64)
        iou = _iou_matrix(pb, fb)
        pairs: list[tuple[_Track, int]] = []
        used_t: set[int] = set()
        used_f: set[int] = set()
        # Greedy by IoU, highest first; ties go to the older track (lower index) for determinism.
        order = sorted(
            (
                (iou[i, j], i, j)
                for i in range(len(tracks))
                for j in range(len(faces))
                if iou[i, j] >= self.config.iou_threshold
            ),
            key=lambda x: (-x[0], x[1], x[2]),
        )
        for _, i, j in order:
            if i in used_t or j in used_f:
                continue
            used_t.add(i)
            used_f.add(j)
            pairs.append((tracks[i], j))
        # Fast motion can move a face further than its own width between frames (IoU 0): fall back to
        # the nearest predicted centre among faces of a similar size.
        cands = []
        for i, p in enumerate(predicted):
            if i in used_t:
                continue
            pw = max(p.width, 1e-6)
            pc = p.center
            for j, f in enumerate(faces):
                if j in used_f:
                    continue
                ratio = f.bbox.width / pw
                if not (0.5 <= ratio <= 2.0):
                    continue
                fc = f.bbox.center
                d = math.hypot(fc[0] - pc[0], fc[1] - pc[1]) / max(pw, f.bbox.width)
                if d <= self.config.max_center_shift:
                    cands.append((d, i, j))
        for _, i, j in sorted(cands):
            if i in used_t or j in used_f:
                continue
            used_t.add(i)
            used_f.add(j)
            pairs.append((tracks[i], j))
        return pairs

    def _observe(self, track: _Track, ts: float, bbox: BBox, quality: float) -> None:
        dt = ts - track.last_seen
        if dt > 0:
            (ox, oy), (nx, ny) = track.bbox.center, bbox.center
            inst = ((nx - ox) / dt, (ny - oy) / dt)
            if track.velocity is None:
                track.velocity = inst
            else:
                a = _VELOCITY_ALPHA
                track.velocity = (a * inst[0] + (1 - a) * track.velocity[0], a * inst[1] + (1 - a) * track.velocity[1])
        track.bbox = bbox
        track.last_seen = ts
        track.missed = 0
        track.quality = quality
        track.best_quality = max(track.best_quality, quality)

    def _update_for(self, track: _Track, face_index: int, face: Face) -> TrackUpdate:
        reason = self._embed_reason(track)
        person = track.announced.person if track.announced is not None else None
        return TrackUpdate(track.id, face_index, face, track.quality, reason is not None, reason, track.state, person)

    def _embed_reason(self, track: _Track) -> EmbedReason | None:
        if track.state == "pending":
            return "new" if not track.votes else "undecided"
        if track.verify_from is not None:
            return "verify"
        if track.last_embed_ts is not None and track.last_seen - track.last_embed_ts >= self.config.recheck_interval_s:
            return "recheck"
        if track.quality >= track.last_embed_quality + self.config.quality_improvement:
            return "quality"
        return None

    def _announce(self, track: _Track, verdict: _Verdict, quality: float) -> None:
        kind: EventType = "recognized" if verdict.decision == "known" else "unknown"
        event = TrackEvent(
            kind,
            track.id,
            track.last_seen,
            verdict.person,
            verdict.similarity,
            verdict.margin,
            verdict.decision,
            track.bbox,
            quality,
            track.first_seen,
            track.last_seen,
        )
        track.state = "recognized" if kind == "recognized" else "unknown"
        track.announced = event
        self._events.append(event)
        log.info("track %d: %s %s (similarity %.3f)", track.id, kind, verdict.person or "-", verdict.similarity)

    def _end(self, track: _Track, ts: float) -> None:
        del self._tracks[track.id]
        a = track.announced
        if a is None:
            # Never decided (a passer-by seen for too few frames, or a false detection): no visit to close.
            log.debug("track %d ended undecided after %d vote(s)", track.id, len(track.votes))
            return
        self._events.append(
            TrackEvent(
                "left",
                track.id,
                ts,
                a.person,
                a.similarity,
                a.margin,
                a.decision,
                track.bbox,
                track.best_quality,
                track.first_seen,
                track.last_seen,
            )
        )


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [T,4] against every box in b [F,4] (x1y1x2y2)."""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
