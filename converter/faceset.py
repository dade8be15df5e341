"""Real face sets for calibration and verification, prepared the way the device will see them.

Embedders are calibrated and verified on crops aligned by the agent's own detector and aligner
(from an already converted detector artifact), so "verified" means "verified as the device runs it".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facelite.errors import FaceliteError, ImageError
from facelite.tools.dataset import Pair, all_pairs, people_tree, read_pairs_csv
from facelite.vision.align import align_face
from facelite.vision.geometry import Face
from facelite.vision.imageio import list_images, read_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectedPhoto:
    path: Path
    person: str | None
    face: Face


@dataclass
class FaceSet:
    """Photos with their single best face, plus labelled pairs over them."""

    photos: list[DetectedPhoto]
    pairs: list[tuple[int, int, bool]]  # indices into photos
    missed: list[Path]  # photos where no face was found
    unreadable: list[str]

    def crops(self, template: str, size: tuple[int, int]) -> list[np.ndarray]:
        return [align_face(read_image(p.path), p.face, template, size) for p in self.photos]

    def images(self) -> list[np.ndarray]:
        return [read_image(p.path) for p in self.photos]


def _photo_list(folder: Path) -> list[tuple[Path, str | None]]:
    """A folder-per-person tree (labelled) or a flat folder of photos (unlabelled)."""
    if not folder.is_dir():
        raise FaceliteError("face photo folder not found", str(folder), "pass --calibration DIR")
    tree = people_tree(folder)
    if tree:
        return [(p, person) for person, photos in tree.items() for p in photos]
    return [(p, None) for p in list_images(folder)]


def build_faceset(folder: Path, detector: object, pairs_csv: Path | None = None) -> FaceSet:
    """Detect the largest face in every photo under ``folder`` and label pairs."""
    return faceset_of(_photo_list(folder), detector, pairs_csv)


def faceset_of(listed: Sequence[tuple[Path, str | None]], detector: object, pairs_csv: Path | None = None) -> FaceSet:
    """Detect the largest face in each listed (photo, person) and label pairs."""
    photos: list[DetectedPhoto] = []
    missed: list[Path] = []
    unreadable: list[str] = []
    for path, person in listed:
        try:
            image = read_image(path)
        except ImageError as exc:
            unreadable.append(exc.one_line())
            continue
        faces = detector.detect(image)  # type: ignore[attr-defined]
        if not faces:
            missed.append(path)
            continue
        best = max(faces, key=lambda f: f.bbox.area * f.score)
        photos.append(DetectedPhoto(path, person, best))
    index = {p.path.resolve(): i for i, p in enumerate(photos)}
    pairs: list[tuple[int, int, bool]] = []
    source: Sequence[Pair]
    if pairs_csv is not None:
        source = read_pairs_csv(pairs_csv)
    else:
        tree: dict[str, list[Path]] = {}
        for p in photos:
            if p.person is not None:
                tree.setdefault(p.person, []).append(p.path)
        source = all_pairs(tree)
    for pair in source:
        a, b = index.get(pair.a.resolve()), index.get(pair.b.resolve())
        if a is not None and b is not None:
            pairs.append((a, b, pair.same))
    log.info("face set: %d photos with a face, %d missed, %d pairs", len(photos), len(missed), len(pairs))
    return FaceSet(photos, pairs, missed, unreadable)
