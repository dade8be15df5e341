"""Thousands of labelled photos through the device's detector, aligner and embedder, cached on disk.

Calibration (converter) and evaluation (``facelite eval --protocol lfw``, the benchmarks) embed the same
LFW photos with several embedder variants behind each detector. Detection is done once per detector and
kept; embeddings once per (detector, embedder). Cache entries are keyed on the model files' sha256, the
photo list and the source of the agent modules that shape a face's crop, so a change to any of them
recomputes instead of reusing stale vectors.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facelite.errors import ImageError
from facelite.vision.detect import Detector
from facelite.vision.embed import Embedder
from facelite.vision.geometry import LANDMARK_NAMES, BBox, Face
from facelite.vision.imageio import read_image

log = logging.getLogger(__name__)

_AGENT = Path(__file__).resolve().parents[1]
# The code between a photo file and its embedding.
_PIPELINE_CODE = (
    "vision/detect",
    "vision/align.py",
    "vision/embed.py",
    "model/runtime.py",
    "vision/imageio.py",
    "vision/geometry.py",
    "tools/embedset.py",
)


def _code_hash() -> str:
    digest = hashlib.sha256()
    for entry in _PIPELINE_CODE:
        path = _AGENT / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _key(*parts: str, photos: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for part in (*parts, _code_hash()):
        digest.update(part.encode())
    for p in photos:
        digest.update(f"{p}:{p.stat().st_size if p.exists() else -1};".encode())
    return digest.hexdigest()[:24]


@dataclass
class DetectedSet:
    """The largest face of each photo (None where none was found or the file was unreadable)."""

    photos: list[Path]
    faces: list[Face | None]
    unreadable: list[str]

    @property
    def found(self) -> np.ndarray:
        return np.array([f is not None for f in self.faces], bool)

    def _arrays(self) -> dict[str, np.ndarray]:
        n = len(self.faces)
        boxes = np.full((n, 5), np.nan, np.float64)
        marks = np.full((n, len(LANDMARK_NAMES), 2), np.nan, np.float64)
        for i, f in enumerate(self.faces):
            if f is None:
                continue
            b = f.bbox
            boxes[i] = (b.x1, b.y1, b.x2, b.y2, f.score)
            for j, name in enumerate(LANDMARK_NAMES):
                if name in f.landmarks:
                    marks[i, j] = f.landmarks[name]
        return {"boxes": boxes, "marks": marks}

    def save(self, path: Path) -> None:
        # Any, not ndarray: numpy types savez(**kwds) as if a key could be its allow_pickle flag.
        arrays: dict[str, Any] = self._arrays()
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, photos=np.array([str(p) for p in self.photos]), unreadable=np.array(self.unreadable), **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> DetectedSet:
        with np.load(path) as z:
            faces: list[Face | None] = []
            for box, marks in zip(z["boxes"], z["marks"]):
                if np.isnan(box[0]):
                    faces.append(None)
                    continue
                lms = {
                    name: (float(xy[0]), float(xy[1])) for name, xy in zip(LANDMARK_NAMES, marks) if not np.isnan(xy[0])
                }
                faces.append(Face(BBox(*map(float, box[:4])), float(box[4]), lms))
            return cls([Path(p) for p in z["photos"]], faces, [str(u) for u in z["unreadable"]])


def detect_photos(detector: Detector, detector_sha: str, photos: Sequence[Path], cache: Path | None) -> DetectedSet:
    """Detect the largest face of every photo, or read the cached result of the same detector on the same photos."""
    photos = list(photos)
    path = cache / f"detect-{_key(detector_sha, photos=photos)}.npz" if cache else None
    if path is not None and path.is_file():
        return DetectedSet.load(path)
    t0 = time.perf_counter()
    faces: list[Face | None] = []
    unreadable: list[str] = []
    for photo in photos:
        try:
            image = read_image(photo)
        except ImageError as exc:
            unreadable.append(exc.one_line())
            faces.append(None)
            continue
        found = detector.detect(image)
        faces.append(max(found, key=lambda f: f.bbox.area) if found else None)
    result = DetectedSet(photos, faces, unreadable)
    log.info("detected %d of %d photos in %.0f s", int(result.found.sum()), len(photos), time.perf_counter() - t0)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        result.save(path)
    return result


def embed_detected(embedder: Embedder, detected: DetectedSet, detector_sha: str, cache: Path | None) -> np.ndarray:
    """(n, d) unit vectors, one per photo; rows of photos without a face are NaN."""
    path = cache / f"embed-{_key(detector_sha, embedder.sha256, photos=detected.photos)}.npy" if cache else None
    if path is not None and path.is_file():
        return np.load(path)
    t0 = time.perf_counter()
    dim = int(embedder.manifest.embedding_size or 0)
    out = np.full((len(detected.photos), dim), np.nan, np.float32)
    for i, (photo, face) in enumerate(zip(detected.photos, detected.faces)):
        if face is not None:
            out[i] = embedder.embed(read_image(photo), face).vector
    log.info(
        "%s/%s: embedded %d faces in %.0f s",
        embedder.manifest.name,
        embedder.manifest.variant,
        int(detected.found.sum()),
        time.perf_counter() - t0,
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.replace(path)
    return out


def pair_scores(vectors: np.ndarray, people: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every (same, different)-person comparison among the rows that have a vector (upper triangle)."""
    ok = ~np.isnan(vectors[:, 0])
    v = vectors[ok].astype(np.float32)
    labels = np.asarray(people)[ok]
    _, codes = np.unique(labels, return_inverse=True)
    sims = v @ v.T
    iu = np.triu_indices(len(v), k=1)
    scores = sims[iu]
    same = codes[iu[0]] == codes[iu[1]]
    return scores[same].astype(np.float64), scores[~same].astype(np.float64)
