"""Guided enrolment from a camera: ``facelite enroll NAME --camera SOURCE``.

The person stands in front of a camera (or a clip recorded on a phone is given as a file) and is asked for a few
poses, by default looking straight, a little to their left and a little to their right. Every frame goes through
the detector and the agent's quality gate (agent/vision/quality.py); a face that passes is sorted into a pose by its yaw
estimate and the best ones per pose (highest quality score) are kept, up to ``per_pose``. Capture stops when every
pose has its faces, at the end of a file, or after ``timeout_s``; the report says how many were kept and why the
others were refused.

:class:`Capture` is pure over (image, detected faces) pairs, so it is tested without a camera; :func:`run_capture`
is the small driver that reads a source, detects, and prints the prompts.

Decisions:

- A frame with several faces is skipped (counted): whose enrolment it is cannot be told from the frame.
- Enrolment uses the stricter of the configured gate and :data:`facelite.vision.quality.DEFAULT_GATE`
(:func:`enrolment_gate`):
  a template is compared with every later face, so a blurred one costs more than a blurred probe. The agent's own
  configuration defaults to ``min_sharpness = 0``, which would let any blur in.
- Yaw sign: + is the nose towards the image's right. A camera that does not mirror sees a person turning to *their*
  left that way, so "left" is yaw > 0. Mirrored previews are not involved: nothing is shown, prompts are text.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from facelite.errors import ConfigError, FaceliteError
from facelite.vision.frames import FrameSource
from facelite.vision.geometry import Face
from facelite.vision.quality import DEFAULT_GATE, QualityGate

log = logging.getLogger(__name__)

FRONT_YAW = 12.0  # degrees: |yaw| below this is "front"; BlazeFace yaw is rough (+-10 to 20 degrees, quality.py)

REASON_WORDS = {
    "blurry": "blurred",
    "pose": "turned too far",
    "too_small": "too small",
    "off_pose": "in no pose asked for",
}


@dataclass(frozen=True)
class Pose:
    """A pose to ask for: faces whose yaw is in [min_yaw, max_yaw) count for it."""

    name: str
    min_yaw: float
    max_yaw: float
    prompt: str

    def holds(self, yaw: float) -> bool:
        return self.min_yaw <= yaw < self.max_yaw


POSES: dict[str, Pose] = {
    "front": Pose("front", -FRONT_YAW, FRONT_YAW, "look straight at the camera"),
    "left": Pose("left", FRONT_YAW, 90.0, "turn your head a little to your left"),
    "right": Pose("right", -90.0, -FRONT_YAW, "turn your head a little to your right"),
}
DEFAULT_POSES = ("front", "left", "right")


@dataclass(frozen=True)
class CaptureSettings:
    poses: tuple[Pose, ...] = tuple(POSES[n] for n in DEFAULT_POSES)
    per_pose: int = 1
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.poses:
            raise ConfigError("no pose to capture", "facelite enroll --poses", f"use some of {', '.join(POSES)}")
        if isinstance(self.per_pose, bool) or not isinstance(self.per_pose, int) or not 1 <= self.per_pose <= 20:
            raise ConfigError(f"faces per pose must be 1..20, got {self.per_pose!r}", "facelite enroll --per-pose")
        if not (isinstance(self.timeout_s, int | float) and math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ConfigError(f"timeout must be > 0 seconds, got {self.timeout_s!r}", "facelite enroll --timeout-s")


def parse_poses(text: str) -> tuple[Pose, ...]:
    """``front,left,right`` -> poses; one-line ConfigError for an unknown or repeated name."""
    names = [n.strip().lower() for n in str(text).split(",") if n.strip()]
    unknown = [n for n in names if n not in POSES]
    if unknown or not names or len(set(names)) != len(names):
        raise ConfigError(
            f"poses must be distinct names among {', '.join(POSES)}, got {str(text)[:60]!r}",
            "facelite enroll --poses",
        )
    return tuple(POSES[n] for n in names)


def enrolment_gate(configured: QualityGate | None) -> QualityGate:
    """The stricter of the configured gate and DEFAULT_GATE, limit by limit."""
    if configured is None:
        return DEFAULT_GATE
    d = DEFAULT_GATE
    return QualityGate(
        min_size=max(configured.min_size, d.min_size),
        min_sharpness=max(configured.min_sharpness, d.min_sharpness),
        max_yaw=min(configured.max_yaw, d.max_yaw),
        max_pitch=min(configured.max_pitch, d.max_pitch),
    )


@dataclass(frozen=True)
class Kept:
    """One face kept as a template: its pose, quality score, yaw and where it came from."""

    pose: str
    vector: np.ndarray = field(repr=False)
    quality: float
    yaw: float
    frame: int


@dataclass(frozen=True)
class CaptureResult:
    kept: tuple[Kept, ...]
    poses: tuple[str, ...]  # asked for, in order
    frames: int
    no_face: int  # frames without a face
    several: int  # frames with several faces
    refused: dict[str, int]  # reason (quality.REASONS or "off_pose") -> faces
    spare: int  # faces that passed but were not needed (their pose was full of better ones)
    complete: bool  # every pose got its faces
    stopped: str  # "complete", "end of source", "timeout"

    def summary(self) -> str:
        """``kept 3 templates (front 1, left 1, right 1); refused 57 faces: 31 blurred, ...; 112 frames without a
        face; 4 frames with several faces``."""
        per = Counter(k.pose for k in self.kept)
        parts = [f"kept {len(self.kept)} template(s) ({', '.join(f'{p} {per[p]}' for p in self.poses)})"]
        refused = sum(self.refused.values())
        if refused:
            reasons = sorted(self.refused.items(), key=lambda kv: (-kv[1], kv[0]))
            parts.append(f"refused {refused} face(s): " + ", ".join(f"{n} {REASON_WORDS[r]}" for r, n in reasons))
        else:
            parts.append("refused 0 faces")
        if self.spare:
            parts.append(f"{self.spare} good face(s) not needed")
        parts.append(f"{self.no_face} frame(s) without a face")
        parts.append(f"{self.several} frame(s) with several faces")
        missing = [p for p in self.poses if per[p] == 0]
        line = "; ".join(parts) + f" ({self.frames} frame(s), stopped: {self.stopped})"
        if missing:
            line += f"; no face for: {', '.join(missing)}"
        return line


Embed = Callable[[np.ndarray, Face], np.ndarray]


class Capture:
    """Sorts faces into poses and keeps the best; ``offer`` one frame's image and detections at a time."""

    def __init__(self, settings: CaptureSettings, gate: QualityGate, embed: Embed) -> None:
        self.settings = settings
        self.gate = gate
        self._embed = embed
        self._bins: dict[str, list[Kept]] = {p.name: [] for p in settings.poses}
        self.frames = self.no_face = self.several = self.spare = 0
        self.refused: Counter[str] = Counter()

    @property
    def complete(self) -> bool:
        return all(len(b) >= self.settings.per_pose for b in self._bins.values())

    def wanted(self) -> Pose | None:
        """The first pose still short of faces (the one to prompt for), None when complete."""
        return next((p for p in self.settings.poses if len(self._bins[p.name]) < self.settings.per_pose), None)

    def offer(self, image: np.ndarray, faces: list[Face], frame: int) -> str:
        """Take one frame; returns what happened to it (``no_face``, ``several``, a refusal reason, ``spare`` or
        ``kept:POSE``)."""
        self.frames += 1
        if not faces:
            self.no_face += 1
            return "no_face"
        if len(faces) > 1:
            self.several += 1
            return "several"
        face = faces[0]
        q = self.gate.assess(image, face)
        if not q.passed:
            reason = q.reason or "pose"
            self.refused[reason] += 1
            return reason
        pose = next((p for p in self.settings.poses if p.holds(q.yaw)), None)
        if pose is None:
            self.refused["off_pose"] += 1
            return "off_pose"
        kept = self._bins[pose.name]
        if len(kept) >= self.settings.per_pose and q.score <= min(k.quality for k in kept):
            self.spare += 1
            return "spare"
        # Embedded only now: most frames are refused or spare, and embedding is the costly step.
        vector = np.asarray(self._embed(image, face), np.float32)
        kept.append(Kept(pose.name, vector, q.score, q.yaw, frame))
        kept.sort(key=lambda k: -k.quality)
        if len(kept) > self.settings.per_pose:
            kept.pop()
            self.spare += 1
        return f"kept:{pose.name}"

    def result(self, stopped: str) -> CaptureResult:
        kept = tuple(k for p in self.settings.poses for k in self._bins[p.name])
        return CaptureResult(
            kept,
            tuple(p.name for p in self.settings.poses),
            self.frames,
            self.no_face,
            self.several,
            dict(self.refused),
            self.spare,
            self.complete,
            stopped,
        )


def run_capture(
    source: FrameSource,
    detect: Callable[[np.ndarray], list[Face]],
    capture: Capture,
    *,
    clock: Callable[[], float],
    say: Callable[[str], None],
) -> CaptureResult:
    """Read ``source`` until every pose has its faces, the source ends, or ``timeout_s`` on ``clock`` passed.

    Prompts go through ``say`` whenever the pose asked for changes. Raises FaceliteError (one line) when the
    source gives no frame at all (missing camera, unreadable video)."""
    deadline = clock() + capture.settings.timeout_s
    asked: Pose | None = None
    stopped = "end of source"
    read = 0
    try:
        while True:
            wanted = capture.wanted()
            if wanted is None:
                stopped = "complete"
                break
            if clock() >= deadline:
                stopped = "timeout"
                break
            frame = source.read()
            if frame is None:
                break
            read += 1
            if wanted is not asked:  # prompted once frames flow: a source that gives none gets one error line
                asked = wanted
                say(f"{wanted.name}: {wanted.prompt}")
            try:
                capture.offer(frame.image, detect(frame.image), frame.index)
            except Exception as exc:  # one odd frame must not end the enrolment: logged, and the next one read
                log.warning("frame %d skipped: %s", frame.index, str(exc).splitlines()[0] if str(exc) else exc)
        detail = source.status.detail  # before close(), which would say "closed"
    finally:
        source.close()
    if read == 0:
        raise FaceliteError(f"no frame could be read: {detail or stopped}", f"camera {source.name}")
    return capture.result(stopped)
