"""The data step's pinned lists cover the mirror exactly, so a fresh machine fetches what the tests read here."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from facelite.converter.data import HERE, SOURCE_LISTS, wider_slice_gt


def _rows(name: str) -> list[dict[str, str]]:
    with open(HERE / name, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize(("list_name", "mirror_list"), [("lfw_sources.csv", "lfw"), ("wider_sources.csv", "wider")])
def test_pinned_list_is_the_mirrors_own(faces_dir: Path, list_name: str, mirror_list: str) -> None:
    ours = {r["file"]: r["sha256"] for r in _rows(list_name)}
    with open(faces_dir / mirror_list / "SOURCES.csv", newline="") as fh:
        mirror = {r["file"]: r["sha256"] for r in csv.DictReader(fh)}
    assert ours == mirror
    # Every pinned file is in the mirror (the tests and eval-lfw read exactly these).
    missing = [f for f in ours if not (faces_dir / f).is_file()]
    assert missing == []


def test_every_list_is_used() -> None:
    assert sorted(name for name, _ in SOURCE_LISTS) == sorted(p.name for p in HERE.glob("*_sources.csv"))


def test_wider_slice_is_cut_from_the_official_ground_truth(faces_dir: Path) -> None:
    wider = faces_dir / "wider"
    assert wider_slice_gt(wider / "wider_face_val_bbx_gt.txt", wider / "images") == (wider / "gt.txt").read_text()
