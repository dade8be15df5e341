"""Section 3: accuracy of our full device pipelines beside the same pipelines on the float TF sources.

Accuracy is exactly what ``facelite eval`` computes (facelite.tools.evaluate.evaluate on a folder-per-person tree:
every pair, AUC, TAR@FAR, open-set identification at the manifest threshold). Detections are cached per
detector, so embedder variants compared "on the same images" also see the same faces: the quantisation
loss of an int8 embedder is then the embedder's alone.

Also the per-frame cost helpers every speed figure uses (detect + align + embed every face).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facelite.tools.bench.common import BenchError, Latency, first_line, latency_of
from facelite.vision.geometry import Face

log = logging.getLogger(__name__)

SOURCE = "source"  # variant name meaning "the recipe's float TensorFlow model"
EVAL_MIN_FACE = 20  # facelite eval's detector default
# Speed figures use what the device runs: the agent config's defaults (detection.min_face, score_threshold).
AGENT_MIN_FACE = 40
AGENT_SCORE_THRESHOLD = 0.7


@dataclass(frozen=True)
class Accuracy:
    """The figures of one facelite.tools.evaluate.EvalResult."""

    photos: int
    faces_found: int
    auc: float
    tar_at_far_1e2: float
    tar_at_far_1e3: float
    best_accuracy: float
    top1: float
    true_accept_rate: float
    false_reject_rate: float
    misidentified: int
    stranger_false_accept_rate: float
    stranger_false_accepts: int
    threshold: float
    pairs_same: int
    pairs_diff: int
    seconds: float

    @classmethod
    def from_eval(cls, r: Any, seconds: float) -> Accuracy:
        v, i = r.verification, r.identification
        return cls(
            photos=int(r.photos),
            faces_found=int(r.faces_found),
            auc=float(v["auc"]),
            tar_at_far_1e2=float(v["tar_at_far"]["1e-2"]),
            tar_at_far_1e3=float(v["tar_at_far"]["1e-3"]),
            best_accuracy=float(v["best_accuracy"]),
            top1=float(i["top1"]),
            true_accept_rate=float(i["true_accept_rate"]),
            false_reject_rate=float(i["false_reject_rate"]),
            misidentified=int(i["misidentified"]),
            stranger_false_accept_rate=float(i["stranger_false_accept_rate"]),
            stranger_false_accepts=len(i["stranger_false_accepts"]),
            threshold=float(i["threshold"]),
            pairs_same=int(v["pairs_same"]),
            pairs_diff=int(v["pairs_diff"]),
            seconds=round(seconds, 2),
        )


@dataclass(frozen=True)
class PipelineSpec:
    """detector/variant + embedder/variant; variant ``source`` = the float TF source model."""

    detector: str
    detector_variant: str
    embedder: str
    embedder_variant: str

    @property
    def name(self) -> str:
        return f"{self.detector}/{self.detector_variant} + {self.embedder}/{self.embedder_variant}"


@dataclass(frozen=True)
class PipelineAccuracy:
    spec: PipelineSpec
    accuracy: Accuracy | None
    error: str = ""


@dataclass(frozen=True)
class AccuracyJob:
    models_dir: Path
    people_dir: Path
    specs: list[PipelineSpec]


@dataclass(frozen=True)
class AccuracyResult:
    results: list[PipelineAccuracy]


class CachedDetector:
    """A detector that remembers its faces per image content: every embedder evaluated with it sees the same
    faces, and the photos are detected once however many embedders are compared."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.manifest = inner.manifest
        # Peers (dlib, YuNet) have no manifest: their name is their pipeline.
        self.pipeline = getattr(inner, "pipeline", None) or getattr(inner.manifest, "name", "")
        self._faces: dict[str, list[Face]] = {}

    def detect(self, image: np.ndarray) -> list[Face]:
        key = hashlib.sha1(np.ascontiguousarray(image).data).hexdigest() + str(image.shape)
        if key not in self._faces:
            self._faces[key] = self.inner.detect(image)
        return self._faces[key]


# -- model loading ---------------------------------------------------------------------------------------------------
def variant_dir(models_dir: Path, model: str, variant: str) -> Path:
    return models_dir / model / variant


def any_manifest_dir(models_dir: Path, model: str) -> Path:
    """The fp32 artifact's folder (its manifest describes the float model best), else any built variant."""
    fp32 = models_dir / model / "fp32"
    if (fp32 / "manifest.json").is_file():
        return fp32
    return next(p for p in sorted((models_dir / model).iterdir()) if (p / "manifest.json").is_file())


def load_detector(
    models_dir: Path,
    model: str,
    variant: str,
    *,
    min_face: int,
    score_threshold: float | None = None,
    threads: int = 1,
    sources: dict[str, Any] | None = None,
) -> Any:
    """The agent's detector on a built variant, or (``source``) wired to the recipe's float networks.
    ``score_threshold`` None keeps the model's own default (what `facelite eval` does)."""
    if variant != SOURCE:
        from facelite.vision.detect import create_detector

        return create_detector(
            variant_dir(models_dir, model, variant),
            num_threads=threads,
            min_face=min_face,
            score_threshold=score_threshold,
        )
    recipe, graphs = (sources or {})[model]
    detector = recipe.detector({g.name: g.reference for g in graphs}, min_face=min_face)
    if score_threshold is not None:
        if not hasattr(detector, "score_threshold"):
            raise BenchError(f"cannot set a score threshold on the {model} float source detector")
        detector.score_threshold = float(score_threshold)
    return detector


def load_embedder(
    models_dir: Path, model: str, variant: str, *, threads: int = 1, sources: dict[str, Any] | None = None
) -> Any:
    from facelite.model.manifest import Manifest
    from facelite.vision.embed import Embedder

    if variant != SOURCE:
        return Embedder.from_model_dir(variant_dir(models_dir, model, variant), num_threads=threads)
    _, graphs = (sources or {})[model]
    # The fp32 manifest carries the alignment, preprocessing and calibrated thresholds of the float model.
    return Embedder(Manifest.load(any_manifest_dir(models_dir, model)), graphs[0].reference)


def run_accuracy(job: AccuracyJob, sources: dict[str, Any]) -> AccuracyResult:
    from facelite.tools.evaluate import evaluate

    detectors: dict[tuple[str, str], CachedDetector] = {}
    embedders: dict[tuple[str, str], Any] = {}
    out = []
    for spec in job.specs:
        try:
            dkey, ekey = (spec.detector, spec.detector_variant), (spec.embedder, spec.embedder_variant)
            if dkey not in detectors:
                detectors[dkey] = CachedDetector(
                    load_detector(job.models_dir, *dkey, min_face=EVAL_MIN_FACE, sources=sources)
                )
            if ekey not in embedders:
                embedders[ekey] = load_embedder(job.models_dir, *ekey, sources=sources)
            t0 = time.perf_counter()
            result = evaluate(detectors[dkey], embedders[ekey], job.people_dir)
            acc = Accuracy.from_eval(result, time.perf_counter() - t0)
            log.info("%s: AUC %.4f top-1 %.3f (%.0f s)", spec.name, acc.auc, acc.top1, acc.seconds)
            out.append(PipelineAccuracy(spec, acc))
        except Exception as exc:
            log.warning("%s: %s", spec.name, first_line(exc))
            out.append(PipelineAccuracy(spec, None, first_line(exc)))
    return AccuracyResult(out)


# -- per-frame cost ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameSpeed:
    """Per frame: detect + align + embed every face found (no tracker reuse: the cost of new faces)."""

    frame: Latency
    detect: Latency
    face_ms: float  # align + embed, per face
    faces_per_frame: float


def frame_speed(
    detect: Callable[[np.ndarray], Sequence[Any]],
    embed: Callable[[np.ndarray, Any], object],
    frames: Sequence[np.ndarray],
    reps: int,
) -> FrameSpeed:
    """Time whole frames, and detection alone, over ``frames`` x ``reps`` (after one warm-up frame)."""
    faces = detect(frames[0])
    for f in faces:
        embed(frames[0], f)
    frame_ms: list[float] = []
    detect_ms: list[float] = []
    embed_ms: list[float] = []
    counts: list[int] = []
    for _ in range(max(1, reps)):
        for image in frames:
            t0 = time.perf_counter()
            found = detect(image)
            t1 = time.perf_counter()
            for f in found:
                embed(image, f)
            t2 = time.perf_counter()
            frame_ms.append((t2 - t0) * 1000.0)
            detect_ms.append((t1 - t0) * 1000.0)
            if found:
                embed_ms.append((t2 - t1) * 1000.0 / len(found))
            counts.append(len(found))
    return FrameSpeed(
        latency_of(frame_ms),
        latency_of(detect_ms),
        round(float(np.median(embed_ms)), 3) if embed_ms else 0.0,
        round(float(np.mean(counts)), 2),
    )
