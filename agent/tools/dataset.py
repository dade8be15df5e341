"""Labelled face photo sets: folder-per-person trees and pair lists.

Nothing here knows where the photos live: callers pass a directory, and the entry points take it
from ``--data-dir`` / ``FACELITE_DATA_DIR`` (see ``data_dir()``).
"""

from __future__ import annotations

import csv
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from facelite.errors import FaceliteError
from facelite.vision.imageio import list_images

DATA_DIR_ENV = "FACELITE_DATA_DIR"


def data_dir(explicit: str | Path | None = None) -> Path:
    """The data directory holding ``faces/`` (people/, pairs.csv, scenes/)."""
    value = explicit or os.environ.get(DATA_DIR_ENV)
    if not value:
        raise FaceliteError("no data directory given", fix=f"pass --data-dir or set {DATA_DIR_ENV} (e.g. ../shared)")
    path = Path(value).expanduser().resolve()
    if not (path / "faces" / "people").is_dir():
        raise FaceliteError(
            "data directory has no faces/people/",
            str(path),
            "run `make data` to fetch the photos, or point FACELITE_DATA_DIR at a copy",
        )
    return path


@dataclass(frozen=True)
class Pair:
    a: Path
    b: Path
    same: bool


def people_tree(root: str | Path) -> dict[str, list[Path]]:
    """``root/<person>/*.jpg`` -> {person: [photos]} (people with no photo are left out)."""
    root = Path(root)
    if not root.is_dir():
        raise FaceliteError("photo folder not found", str(root))
    tree = {p.name: list_images(p) for p in sorted(root.iterdir()) if p.is_dir()}
    return {k: v for k, v in tree.items() if v}


def read_pairs_csv(path: str | Path) -> list[Pair]:
    """``image_a,image_b,same_person`` with paths relative to the CSV's folder."""
    path = Path(path)
    base = path.parent
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"image_a", "image_b", "same_person"} <= set(rows[0]):
        raise FaceliteError("pairs file needs columns image_a,image_b,same_person", str(path))
    return [
        Pair(base / r["image_a"], base / r["image_b"], r["same_person"].strip() in ("1", "true", "True")) for r in rows
    ]


def all_pairs(tree: dict[str, list[Path]]) -> list[Pair]:
    """Every pair of photos in a folder-per-person tree, labelled by folder."""
    items = [(person, p) for person, photos in tree.items() for p in photos]
    return [Pair(a, b, pa == pb) for (pa, a), (pb, b) in itertools.combinations(items, 2)]
