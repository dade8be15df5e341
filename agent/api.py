"""A Python API in the style of MediaPipe Tasks: options, ``create_from_options``, a context manager.

    options = RecognizerOptions(models="build/models")               # the recommended variants of `make convert`
    with FaceRecognizer.create_from_options(options) as recognizer:  # in-memory gallery, deleted on close
        recognizer.enroll("ada", ["ada1.jpg", "ada2.jpg"])
        print(recognizer.recognize(read_image("ada3.jpg")).faces[0].person)

Three running modes, as in MediaPipe: ``IMAGE`` (``recognize``: every face of one photo decided alone),
``VIDEO`` (``recognize_for_video``: faces tracked, identity voted over frames like the agent) and
``LIVE_STREAM`` (``recognize_async``: the same, the result and the visit events delivered to a callback).
Images are 8-bit BGR HxWx3 arrays (``cv2.imread``, ``facelite.vision.imageio.read_image``), as everywhere in the agent.

Wiring only: detection, alignment, embedding, the open-set threshold
(``facelite.recognition.openset.resolve_threshold``), the
``Matcher``, the tracker and the pipeline are the agent's own. Misuse raises ``ValueError`` naming the fix.
"""

from __future__ import annotations

import enum
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import numpy as np

from facelite.recognition.gallery import Gallery, Hygiene
from facelite.recognition.matching import Matcher
from facelite.recognition.openset import resolve_threshold
from facelite.recognition.pipeline import Pipeline
from facelite.recognition.track import Tracker, TrackEvent
from facelite.service.config import DetectionConfig, QualityConfig, TrackingConfig
from facelite.service.sources import Frame
from facelite.vision.detect import Detector, create_detector
from facelite.vision.detect.onet_landmarks import OnetLandmarks
from facelite.vision.embed import Embedder
from facelite.vision.geometry import BBox, Face
from facelite.vision.imageio import read_image

__all__ = [
    "FaceRecognizer",
    "RecognitionResult",
    "RecognizedFace",
    "RecognizerOptions",
    "RunningMode",
    "VisitEvent",
]

DEFAULT_PIPELINE = ("blazeface", "mobilefacenet")  # detector, embedder picked from a models folder

FaceDecision = Literal["known", "unknown", "ambiguous", "pending"]


class RunningMode(enum.Enum):
    IMAGE = "image"
    VIDEO = "video"
    LIVE_STREAM = "live_stream"


@dataclass(frozen=True)
class RecognizedFace:
    """One face: ``bbox`` (x1, y1, x2, y2) and ``landmarks`` (name -> (x, y)) in pixels of the image given.

    ``decision`` is ``known`` (``person`` set), ``ambiguous`` (``person`` is the best of two close candidates),
    ``unknown`` (``person`` None) or, in VIDEO/LIVE_STREAM mode, ``pending`` while its track is still collecting
    votes. ``track_id`` is None in IMAGE mode.
    """

    bbox: tuple[float, float, float, float]
    landmarks: dict[str, tuple[float, float]]
    score: float
    person: str | None
    decision: FaceDecision
    similarity: float
    margin: float
    track_id: int | None = None


@dataclass(frozen=True)
class RecognitionResult:
    faces: list[RecognizedFace]
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class VisitEvent:
    """A tracked visit's event, as the agent publishes it over MQTT: ``recognized`` or ``unknown`` once, then
    ``left`` when the track ends."""

    type: Literal["recognized", "unknown", "left"]
    track_id: int
    person: str | None
    decision: Literal["known", "unknown", "ambiguous"]
    similarity: float
    margin: float
    bbox: tuple[float, float, float, float]
    timestamp_ms: int


ResultCallback = Callable[[RecognitionResult, list[VisitEvent]], None]


@dataclass(frozen=True)
class RecognizerOptions:
    """``models``: a `make convert` output folder (its index.json names the recommended variants), or
    ``detector`` and ``embedder``: artifact folders (each with manifest.json). ``gallery``: a gallery file (created
    if missing), or None for an in-memory one deleted on ``close``. The threshold is the one that keeps a
    stranger's chance of being announced at ``stranger_accept_rate`` for the gallery's size, unless ``threshold``
    fixes it. ``result_callback(result, events)`` is required in LIVE_STREAM mode and refused in the others."""

    models: str | Path | None = None
    detector: str | Path | None = None
    embedder: str | Path | None = None
    gallery: str | Path | None = None
    stranger_accept_rate: float = 1e-3
    threshold: float | None = None
    ambiguous_margin: float = 0.05
    running_mode: RunningMode = RunningMode.IMAGE
    result_callback: ResultCallback | None = None
    min_face: int = 40
    num_threads: int = 1
    min_votes: int = 3  # VIDEO/LIVE_STREAM: agreeing recognitions before a track's identity is decided
    key: bytes | None = None  # gallery encryption key (16/24/32 bytes)
    # An MTCNN artifact folder whose O-Net places the five landmarks on the detector's faces (the agent's
    # [models] landmarks). With ``models``: "mtcnn" uses that folder's recommended MTCNN.
    landmarks: str | Path | None = None

    def landmarks_dir(self) -> Path | None:
        """The MTCNN folder whose O-Net places the landmarks, or None for the detector's own."""
        if self.landmarks is None:
            return None
        if self.models is not None and str(self.landmarks) == "mtcnn":
            index = json.loads((Path(self.models) / "index.json").read_text())["models"]
            entry = index.get("mtcnn") or {}
            if not entry.get("recommended_variant"):
                raise ValueError(f"{self.models} holds no converted mtcnn: run `make convert` or drop landmarks=")
            return Path(self.models) / "mtcnn" / str(entry["recommended_variant"])
        return Path(self.landmarks)

    def artifact_dirs(self) -> tuple[Path, Path]:
        """The detector and embedder folders these options name."""
        if self.models is not None and (self.detector is not None or self.embedder is not None):
            raise ValueError("give either models=<make convert folder> or detector= and embedder=, not both")
        if self.models is not None:
            index_path = Path(self.models) / "index.json"
            if not index_path.is_file():
                raise ValueError(f"{index_path} not found: models= must be a `make convert` output folder")
            index = json.loads(index_path.read_text())["models"]
            kinds: dict[str, str] = {}
            # The pi default pipeline (README, "Numbers") first, then any other built model of each kind.
            for name in [*DEFAULT_PIPELINE, *sorted(index)]:
                entry = index.get(name)
                if not entry or not entry.get("recommended_variant"):
                    continue
                kind = entry.get("kind") or _kind_of(Path(self.models) / name / str(entry["recommended_variant"]))
                if kind and kind not in kinds:
                    kinds[kind] = name
            picked = {k: Path(self.models) / n / index[n]["recommended_variant"] for k, n in kinds.items()}
            if "detector" not in picked or "embedder" not in picked:
                raise ValueError(f"{index_path} names no recommended detector and embedder: run `make convert`")
            return picked["detector"], picked["embedder"]
        if self.detector is None or self.embedder is None:
            raise ValueError(
                "no models: give models=<make convert folder> (e.g. build/models) or both detector= and embedder= "
                "(artifact folders holding manifest.json)"
            )
        return Path(self.detector), Path(self.embedder)


def _kind_of(model_dir: Path) -> str | None:
    try:
        return str(json.loads((model_dir / "manifest.json").read_text())["kind"])
    except (OSError, ValueError, KeyError):
        return None


def _bbox(b: BBox) -> tuple[float, float, float, float]:
    return (float(b.x1), float(b.y1), float(b.x2), float(b.y2))


def _check_image(image: object, what: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(
            f"{what} must be an HxWx3 uint8 BGR array, got {got}: read files with cv2.imread or "
            "facelite.vision.imageio.read_image (convert RGB with cv2.cvtColor(image, cv2.COLOR_RGB2BGR))"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what} is empty ({image.shape}): pass a frame with pixels")
    return image


class FaceRecognizer:
    """Detect, embed and identify faces against a gallery. Create with ``create_from_options``."""

    def __init__(self, options: RecognizerOptions, detector: Detector, embedder: Embedder, gallery: Gallery) -> None:
        self._options = options
        self._detector = detector
        self._embedder = embedder
        self._gallery = gallery
        self._temp_dir: Path | None = None
        self._closed = False
        self._last_ts_ms: int | None = None
        self._matcher = self._make_matcher()
        self._matcher_version = gallery.version
        self._pipeline: Pipeline | None = None
        self._announced: dict[int, TrackEvent] = {}
        if options.running_mode is not RunningMode.IMAGE:
            # The agent's default tracking and quality gate (facelite.service.config), as `facelite-agent` runs them.
            tracker = Tracker(TrackingConfig().tracker(min_votes=options.min_votes))
            gate = QualityConfig().gate()
            self._pipeline = Pipeline(detector, embedder, gallery, self._matcher, tracker, gate)

    @classmethod
    def create_from_options(cls, options: RecognizerOptions) -> FaceRecognizer:
        if not isinstance(options.running_mode, RunningMode):
            raise ValueError(f"running_mode must be a RunningMode, got {options.running_mode!r}")
        if options.running_mode is RunningMode.LIVE_STREAM and options.result_callback is None:
            raise ValueError("LIVE_STREAM mode needs result_callback=fn(result, events) in RecognizerOptions")
        if options.running_mode is not RunningMode.LIVE_STREAM and options.result_callback is not None:
            raise ValueError(
                f"result_callback is only for RunningMode.LIVE_STREAM, not {options.running_mode.name}: "
                "drop it, or set running_mode=RunningMode.LIVE_STREAM"
            )
        if not 0.0 < options.stranger_accept_rate < 0.5:
            raise ValueError(f"stranger_accept_rate must be in (0, 0.5), got {options.stranger_accept_rate}")
        det_dir, emb_dir = options.artifact_dirs()
        detector = create_detector(
            det_dir,
            num_threads=options.num_threads,
            min_face=options.min_face,
            score_threshold=DetectionConfig().score_threshold,
        )
        landmarks_dir = options.landmarks_dir()
        if landmarks_dir is not None:
            detector = OnetLandmarks.from_model_dirs(detector, landmarks_dir, num_threads=options.num_threads)
        embedder = Embedder.from_model_dir(emb_dir, num_threads=options.num_threads)
        temp_dir = None
        if options.gallery is None:
            temp_dir = Path(tempfile.mkdtemp(prefix="facelite-gallery-"))
            path = temp_dir / "gallery.sqlite"
        else:
            path = Path(options.gallery)
        gallery = Gallery.for_embedder(path, embedder, key=options.key)
        try:
            recognizer = cls(options, detector, embedder, gallery)
        except BaseException:
            gallery.close()
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        recognizer._temp_dir = temp_dir
        return recognizer

    # -- gallery ---------------------------------------------------------------------------------
    def _threshold_for(self, templates: int) -> float:
        o = self._options
        return resolve_threshold(
            self._embedder.manifest,
            detector=self._detector.pipeline,
            stranger_accept_rate=o.stranger_accept_rate,
            templates=templates,
            fixed=o.threshold,
        ).threshold

    def _make_matcher(self) -> Matcher:
        return Matcher(threshold=self._threshold_for(len(self._gallery)), margin=self._options.ambiguous_margin)

    def _sync_gallery(self) -> None:
        """Pick up changes (ours, or `facelite enroll` on the same file) and re-derive the threshold for the size."""
        self._gallery.refresh()
        if self._gallery.version != self._matcher_version:
            self._matcher = self._make_matcher()
            self._matcher_version = self._gallery.version
            if self._pipeline is not None:
                self._pipeline.matcher = self._matcher

    @property
    def threshold(self) -> float:
        """The similarity threshold in force for the gallery's current size."""
        self._check_open()
        self._sync_gallery()
        return self._matcher.threshold

    def enroll(self, name: str, images: Sequence[np.ndarray | str | Path]) -> int:
        """Add photos of ``name`` (arrays or image files, one face each: the largest is taken) to the gallery, with
        the agent's template hygiene (a photo closer to someone else is refused). Returns templates added."""
        self._check_open()
        if isinstance(images, (str, Path, np.ndarray)):
            raise ValueError("images must be a list of photos: enroll(name, [image, ...])")
        vectors, sources = [], []
        for i, item in enumerate(images):
            image = read_image(item) if isinstance(item, (str, Path)) else _check_image(item, f"images[{i}]")
            faces = self._detector.detect(image)
            if not faces:
                continue
            face = max(faces, key=lambda f: f.bbox.area)
            vectors.append(self._embedder.embed(image, face).vector)
            sources.append(str(item) if isinstance(item, (str, Path)) else f"image {i}")
        if not vectors:
            raise ValueError(f"no face found in the {len(images)} photo(s) of {name!r}: give photos showing the face")
        hygiene = Hygiene(threshold_for=self._threshold_for)
        outcome = self._gallery.add_templates(name, vectors, sources, hygiene=hygiene)
        self._sync_gallery()
        return outcome.added

    # -- recognition -----------------------------------------------------------------------------
    def recognize(self, image: np.ndarray) -> RecognitionResult:
        """IMAGE mode: every face of ``image`` decided on its own (no tracking, no votes)."""
        self._check_mode(RunningMode.IMAGE, "recognize(image)")
        image = _check_image(image)
        self._sync_gallery()
        faces = []
        for face in self._detector.detect(image):
            m = self._matcher.match(self._gallery.index, self._embedder.embed(image, face).vector)
            faces.append(_face(face, m.person, m.decision, m.similarity, m.margin, None))
        return RecognitionResult(faces)

    def recognize_for_video(self, frame: np.ndarray, timestamp_ms: int) -> RecognitionResult:
        """VIDEO mode: track faces across frames; a track's identity is decided by votes, as in the agent."""
        self._check_mode(RunningMode.VIDEO, "recognize_for_video(frame, timestamp_ms)")
        return self._track(frame, timestamp_ms)[0]

    def recognize_async(self, frame: np.ndarray, timestamp_ms: int) -> None:
        """LIVE_STREAM mode: as VIDEO; ``result_callback(result, events)`` gets the result and the visit events.
        Runs in the calling thread: the callback has been called when this returns."""
        self._check_mode(RunningMode.LIVE_STREAM, "recognize_async(frame, timestamp_ms)")
        result, events = self._track(frame, timestamp_ms)
        assert self._options.result_callback is not None
        self._options.result_callback(result, events)

    def _track(self, frame: np.ndarray, timestamp_ms: int) -> tuple[RecognitionResult, list[VisitEvent]]:
        frame = _check_image(frame, "frame")
        if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, (int, np.integer)):
            raise ValueError(f"timestamp_ms must be an int (milliseconds), got {type(timestamp_ms).__name__}")
        if self._last_ts_ms is not None and timestamp_ms <= self._last_ts_ms:
            raise ValueError(
                f"timestamp_ms must increase: got {timestamp_ms} after {self._last_ts_ms}; pass each frame's own "
                "time (e.g. frame_index * 1000 // fps), or create a new recognizer for a new stream"
            )
        self._last_ts_ms = int(timestamp_ms)
        self._sync_gallery()
        assert self._pipeline is not None
        out = self._pipeline.process(Frame(frame, timestamp_ms / 1000.0, "api", 0))
        events = []
        for ev in out.events:
            if ev.type == "left":
                self._announced.pop(ev.track_id, None)
            else:
                self._announced[ev.track_id] = ev
            events.append(
                VisitEvent(
                    ev.type, ev.track_id, ev.person, ev.decision, ev.similarity, ev.margin, _bbox(ev.bbox), timestamp_ms
                )
            )
        faces = []
        for u in out.updates:
            a = self._announced.get(u.track_id)
            if a is None:
                faces.append(_face(u.face, None, "pending", float("nan"), float("nan"), u.track_id))
            else:
                faces.append(_face(u.face, a.person, a.decision, a.similarity, a.margin, u.track_id))
        return RecognitionResult(faces, int(timestamp_ms)), events

    # -- lifecycle -------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this FaceRecognizer is closed: create a new one with FaceRecognizer.create_from_options")

    def _check_mode(self, mode: RunningMode, call: str) -> None:
        self._check_open()
        have = self._options.running_mode
        if have is not mode:
            right = {
                RunningMode.IMAGE: "recognize(image)",
                RunningMode.VIDEO: "recognize_for_video(frame, timestamp_ms)",
                RunningMode.LIVE_STREAM: "recognize_async(frame, timestamp_ms)",
            }[have]
            raise ValueError(
                f"{call} needs running_mode=RunningMode.{mode.name}; this recognizer runs in {have.name} mode: "
                f"call {right}, or create one with running_mode=RunningMode.{mode.name}"
            )

    def close(self) -> None:
        """Close the gallery (an in-memory one is deleted). Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self._gallery.close()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    def __enter__(self) -> FaceRecognizer:
        self._check_open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _face(
    face: Face, person: str | None, decision: FaceDecision, similarity: float, margin: float, track_id: int | None
) -> RecognizedFace:
    return RecognizedFace(
        _bbox(face.bbox),
        {k: (float(x), float(y)) for k, (x, y) in face.landmarks.items()},
        float(face.score),
        person,
        decision,
        float(similarity),
        float(margin),
        track_id,
    )
