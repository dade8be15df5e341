"""Section 2: peers on the same photos and frames: the ``face_recognition`` library (dlib HOG or CNN detector +
dlib ResNet encodings) and OpenCV YuNet as a detector in front of our embedder.

Accuracy is computed by facelite.tools.evaluate on the peers' embeddings, like ``facelite eval`` does for ours.
Our thresholds come from the converter's calibration on these photos at FAR 1e-3; a peer has no manifest,
so its threshold is calibrated the same way (all different-person pairs of the same photos), then the same
evaluate() runs with it: equal footing, not a tuned advantage. Runs pinned to one core, like ours.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facelite.tools.bench.agent_e2e import ScalingPoint, random_templates
from facelite.tools.bench.common import Latency, first_line, time_runs
from facelite.tools.bench.frames import load_frames
from facelite.tools.bench.pipelines import (
    AGENT_MIN_FACE,
    AGENT_SCORE_THRESHOLD,
    EVAL_MIN_FACE,
    Accuracy,
    CachedDetector,
    FrameSpeed,
    PipelineSpec,
    frame_speed,
    load_detector,
    load_embedder,
)
from facelite.vision.geometry import BBox, Face

log = logging.getLogger(__name__)

HOG = "face_recognition HOG (1 upsample) + dlib ResNet"
CNN = "face_recognition CNN (1 upsample) + dlib ResNet"
YUNET = "OpenCV YuNet (detector, long side <= 640 px) + our embedder"
UPSAMPLE = 1
YUNET_SCORE = 0.9  # OpenCV zoo's default for YuNet
YUNET_NMS = 0.3
YUNET_MAX_SIDE = 640


@dataclass(frozen=True)
class PeersJob:
    people_dir: Path
    models_dir: Path
    yunet_onnx: Path
    ours: PipelineSpec  # our recommended pipeline, timed here too on the same frames
    one_face: list[Path]
    by_faces: dict[str, list[Path]]
    by_resolution: dict[str, list[Path]]
    reps: int
    scaling_reps: int
    run_cnn: bool
    gallery_sizes: list[int]
    match_runs: int


@dataclass(frozen=True)
class PeerResult:
    name: str
    role: str  # "detector+embedder" | "detector"
    status: str  # "measured" | "partial" | "unavailable"
    reason: str  # why something is not measured (empty when all is)
    versions: dict[str, str]
    accuracy: Accuracy | None
    speed: FrameSpeed | None
    ours: str  # the pipeline of ours timed beside it, same process and frames
    ours_speed: FrameSpeed | None


@dataclass(frozen=True)
class MatchTiming:
    templates: int
    dim: int
    match: Latency


@dataclass(frozen=True)
class PeersResult:
    peers: list[PeerResult]
    scaling: list[ScalingPoint]  # face_recognition HOG at every scaling point
    gallery: list[MatchTiming]  # face_recognition.face_distance + argmin at every gallery size
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PeerManifest:
    """What facelite.tools.evaluate reads of an embedder's manifest."""

    name: str
    variant: str
    embedding_size: int
    thresholds: dict[str, float]
    calibration: dict[str, Any] = field(
        default_factory=dict
    )  # none: facelite.recognition.openset uses thresholds["1e-3"]


@dataclass(frozen=True)
class PeerEmbedding:
    vector: np.ndarray


def _key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).data).hexdigest() + str(image.shape)


class FaceRecDetector:
    """face_recognition.face_locations as an agent Detector (boxes only: its encoder finds its own landmarks)."""

    manifest = None

    def __init__(self, fr: Any, model: str, upsample: int = UPSAMPLE) -> None:
        self.fr, self.model, self.upsample = fr, model, upsample

    def detect(self, image: np.ndarray) -> list[Face]:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        locs = self.fr.face_locations(rgb, number_of_times_to_upsample=self.upsample, model=self.model)
        # face_recognition boxes are (top, right, bottom, left)
        return [Face(BBox(float(x1), float(y1), float(x2), float(y2)), 1.0) for y1, x2, y2, x1 in locs]


class FaceRecEmbedder:
    """face_recognition.face_encodings (dlib 5-point chip + ResNet, 128-d) for a given box, L2-normalised
    so facelite.tools.evaluate's cosine scores apply. Cached per (image, box): the calibration pass and the
    evaluation pass embed each face once."""

    def __init__(self, fr: Any, name: str, *, cache: bool = True) -> None:
        self.fr = fr
        self.manifest = PeerManifest(name, "dlib", 128, {})
        self.cache = cache  # off when timing: every face must be paid for
        self._cache: dict[tuple[str, tuple[float, ...]], np.ndarray] = {}

    def _compute(self, image: np.ndarray, face: Face) -> np.ndarray:
        b = face.bbox
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        loc = (round(b.y1), round(b.x2), round(b.y2), round(b.x1))
        (enc,) = self.fr.face_encodings(rgb, known_face_locations=[loc])
        v = np.asarray(enc, np.float32)
        return v / float(np.linalg.norm(v))

    def embed(self, image: np.ndarray, face: Face) -> PeerEmbedding:
        if not self.cache:
            return PeerEmbedding(self._compute(image, face))
        b = face.bbox
        key = (_key(image), (b.x1, b.y1, b.x2, b.y2))
        if key not in self._cache:
            self._cache[key] = self._compute(image, face)
        return PeerEmbedding(self._cache[key])


class YuNetDetector:
    """cv2.FaceDetectorYN as an agent Detector: box, score and the five landmarks (named by image side)."""

    manifest = None

    def __init__(self, onnx: Path, score: float = YUNET_SCORE, nms: float = YUNET_NMS) -> None:
        self.net = cv2.FaceDetectorYN.create(str(onnx), "", (320, 320), score, nms, 5000)

    def detect(self, image: np.ndarray) -> list[Face]:
        # The model is trained at 640x640: large photos are scaled so the long side is at most 640 px
        # (faces of 1000+ px are otherwise missed), and the faces scaled back.
        h, w = image.shape[:2]
        scale = min(1.0, YUNET_MAX_SIDE / max(h, w))
        if scale < 1.0:
            image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        self.net.setInputSize((image.shape[1], image.shape[0]))
        _, rows = self.net.detect(image)
        return [f.scaled(1.0 / scale) for f in self._faces(rows)]

    @staticmethod
    def _faces(rows: Any) -> list[Face]:
        faces = []
        for r in rows if rows is not None else []:
            x, y, bw, bh = (float(v) for v in r[:4])
            eyes = sorted([(float(r[4]), float(r[5])), (float(r[6]), float(r[7]))])
            mouth = sorted([(float(r[10]), float(r[11])), (float(r[12]), float(r[13]))])
            marks = {
                "left_eye": eyes[0],
                "right_eye": eyes[1],
                "nose": (float(r[8]), float(r[9])),
                "mouth_left": mouth[0],
                "mouth_right": mouth[1],
            }
            faces.append(Face(BBox(x, y, x + bw, y + bh), float(r[14]), marks))
        return sorted(faces, key=lambda f: -f.score)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def calibrated_evaluate(detector: Any, embedder: FaceRecEmbedder, people_dir: Path) -> Accuracy:
    """Thresholds at FAR 1e-2/1e-3 from the different-person pairs of these photos, then facelite.tools.evaluate."""
    from facelite.model.metrics import threshold_at_far
    from facelite.tools.dataset import all_pairs, people_tree
    from facelite.tools.evaluate import embed_tree, evaluate

    t0 = time.perf_counter()
    tree = people_tree(people_dir)
    embedded, _, _ = embed_tree(detector, embedder, tree)  # type: ignore[arg-type]
    vectors = {e.path.resolve(): e.vector for e in embedded}
    pairs = all_pairs({p: [e.path for e in embedded if e.person == p] for p in tree})
    diff = [float(vectors[p.a.resolve()] @ vectors[p.b.resolve()]) for p in pairs if not p.same]
    embedder.manifest = PeerManifest(
        embedder.manifest.name,
        embedder.manifest.variant,
        128,
        {far: threshold_at_far(np.array(diff), float(far)) for far in ("1e-2", "1e-3")},
    )
    result = evaluate(detector, embedder, people_dir)  # type: ignore[arg-type]
    return Accuracy.from_eval(result, time.perf_counter() - t0)


def run_peers(job: PeersJob) -> PeersResult:
    cv2.setNumThreads(1)  # one core, one thread: as our interpreters run
    one = load_frames(job.one_face)
    our_det = load_detector(
        job.models_dir,
        job.ours.detector,
        job.ours.detector_variant,
        min_face=AGENT_MIN_FACE,
        score_threshold=AGENT_SCORE_THRESHOLD,
    )
    our_emb = load_embedder(job.models_dir, job.ours.embedder, job.ours.embedder_variant)
    ours_speed = frame_speed(our_det.detect, our_emb.embed, one, job.reps)
    peers: list[PeerResult] = []
    scaling: list[ScalingPoint] = []
    gallery: list[MatchTiming] = []
    notes: list[str] = []
    try:
        import face_recognition as fr
    except Exception as exc:  # not installable here: named with the reason, never silently left out
        reason = f"face_recognition cannot be imported: {first_line(exc)}"
        for name in (HOG, CNN):
            peers.append(PeerResult(name, "detector+embedder", "unavailable", reason, {}, None, None, "", None))
        fr = None
    if fr is not None:
        versions = {"face-recognition": _version("face-recognition"), "dlib": _version("dlib-bin")}
        hog = FaceRecDetector(fr, "hog")
        enc = FaceRecEmbedder(fr, "face_recognition/dlib_resnet")
        accuracy = calibrated_evaluate(CachedDetector(hog), enc, job.people_dir)
        log.info("%s: AUC %.4f (%.0f s)", HOG, accuracy.auc, accuracy.seconds)
        plain = FaceRecEmbedder(fr, "face_recognition/dlib_resnet", cache=False)
        speed = frame_speed(hog.detect, plain.embed, one, job.reps)
        peers.append(
            PeerResult(HOG, "detector+embedder", "measured", "", versions, accuracy, speed, job.ours.name, ours_speed)
        )
        for axis, sets in (("faces", job.by_faces), ("resolution", job.by_resolution)):
            for x, paths in sets.items():
                point = frame_speed(hog.detect, plain.embed, load_frames(paths), job.scaling_reps)
                scaling.append(ScalingPoint(axis, x, HOG, point))
        photos_px = _photo_pixels(job.people_dir)
        if job.run_cnn:
            cnn = FaceRecDetector(fr, "cnn")
            cnn_speed = frame_speed(cnn.detect, plain.embed, one[:1], 1)
            per_px = cnn_speed.detect.p50_ms / (one[0].shape[0] * one[0].shape[1])
            minutes = per_px * photos_px / 60000.0
            reason = (
                f"accuracy not run: its detector takes {cnn_speed.detect.p50_ms / 1000:.1f} s per 640x480 frame on one "
                f"core, so the {photos_px / 1e6:.0f} Mpx of photos would take about {minutes:.0f} min"
            )
            peers.append(
                PeerResult(
                    CNN, "detector+embedder", "partial", reason, versions, None, cnn_speed, job.ours.name, ours_speed
                )
            )
        else:
            reason = "not run in --quick mode (several seconds per frame on one core)"
            peers.append(PeerResult(CNN, "detector+embedder", "unavailable", reason, versions, None, None, "", None))
        for n in job.gallery_sizes:
            known = random_templates(n, 128, seed=n)
            probes = random_templates(64, 128, seed=n + 1)
            gallery.append(MatchTiming(n, 128, _distance_timing(fr, known, probes, job.match_runs)))
    peers.append(_yunet(job, one, ours_speed))
    return PeersResult(peers, scaling, gallery, notes)


def _distance_timing(fr: Any, known: np.ndarray, probes: np.ndarray, runs: int) -> Latency:
    """face_recognition's own matching: Euclidean distance to every known encoding, then the nearest."""
    order = iter(range(1 << 30))
    return time_runs(lambda: int(np.argmin(fr.face_distance(known, probes[next(order) % len(probes)]))), runs)


def _photo_pixels(people_dir: Path) -> int:
    """Pixels of every photo, from the file headers (Pillow, a face_recognition dependency)."""
    from PIL import Image

    from facelite.tools.dataset import people_tree

    total = 0
    for photos in people_tree(people_dir).values():
        for p in photos:
            with Image.open(p) as im:
                total += im.size[0] * im.size[1]
    return total


def _yunet(job: PeersJob, one: list[np.ndarray], ours_speed: FrameSpeed) -> PeerResult:
    from facelite.tools.evaluate import evaluate

    versions = {"opencv-python-headless": cv2.__version__}
    if not job.yunet_onnx.is_file():
        reason = f"YuNet model not found at {job.yunet_onnx}"
        return PeerResult(YUNET, "detector", "unavailable", reason, versions, None, None, "", None)
    try:
        yunet = YuNetDetector(job.yunet_onnx)
        emb = load_embedder(job.models_dir, job.ours.embedder, job.ours.embedder_variant)
        t0 = time.perf_counter()
        result = evaluate(_MinFace(yunet, EVAL_MIN_FACE), emb, job.people_dir)
        accuracy = Accuracy.from_eval(result, time.perf_counter() - t0)
        speed = frame_speed(_MinFace(yunet, AGENT_MIN_FACE).detect, emb.embed, one, job.reps)
    except Exception as exc:
        reason = f"YuNet did not run: {first_line(exc)}"
        return PeerResult(YUNET, "detector", "unavailable", reason, versions, None, None, "", None)
    name = f"{YUNET.replace('our embedder', job.ours.embedder + '/' + job.ours.embedder_variant)}"
    return PeerResult(name, "detector", "measured", "", versions, accuracy, speed, job.ours.name, ours_speed)


class _MinFace:
    """Drop faces smaller than ``min_face`` px, as our detectors do with the same setting."""

    manifest = None

    def __init__(self, inner: Any, min_face: int) -> None:
        self.inner, self.min_face = inner, min_face

    def detect(self, image: np.ndarray) -> list[Face]:
        return [f for f in self.inner.detect(image) if max(f.bbox.width, f.bbox.height) >= self.min_face]
