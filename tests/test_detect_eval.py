"""Detector evaluation (facelite.tools.bench.detect_eval): parsing and scoring by hand, tight crops with real models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facelite.tools.bench.detect_eval import (
    Setting,
    agent_settings,
    fold_people,
    lfw_sample,
    parse_wider_gt,
    tight_crop,
    wider_row,
)
from facelite.vision.detect import create_detector
from facelite.vision.imageio import read_image

# Box lines end with a space in the official file.
GT = "".join(
    line + "\n"
    for line in [
        "0--Parade/a.jpg",
        "2",
        "10 10 20 20 0 0 0 0 0 0 ",
        "100 100 8 8 2 0 0 1 0 0 ",
        "0--Parade/empty.jpg",
        "1",
        "0 0 0 0 0 0 0 0 0 0 ",
    ]
)

PAIRS = "2\t1\nAda\t1\t2\nBob\t1\tCy\t1\nDee\t1\t3\nEve\t2\tFay\t1\n"


def test_wider_ground_truth_parses_boxes_invalid_flags_and_skips_the_placeholder() -> None:
    a, empty = parse_wider_gt(GT)
    assert a.path == "0--Parade/a.jpg" and empty.path == "0--Parade/empty.jpg"
    np.testing.assert_allclose(a.boxes, [[10, 10, 30, 30], [100, 100, 108, 108]])
    assert a.invalid == (False, True)
    assert empty.boxes.shape == (0, 4) and empty.invalid == ()


def test_fold_people_reads_both_pair_kinds_of_the_asked_folds_only() -> None:
    assert fold_people(PAIRS, [1]) == {"Ada", "Bob", "Cy"}
    assert fold_people(PAIRS, [2]) == {"Dee", "Eve", "Fay"}
    with pytest.raises(ValueError):
        fold_people(PAIRS, [3])


def test_wider_row_counts_by_size_and_ignores_invalid_faces() -> None:
    photos = parse_wider_gt(GT)
    dets = [np.array([[11, 10, 31, 30], [500, 500, 540, 540]], np.float64), np.array([[0, 0, 50, 50]], np.float64)]
    row = wider_row("x", Setting("default", 40, 0.7), photos, dets)
    assert row.faces == {"<16": 0, "16-32": 1, "32-64": 0, ">=64": 0}  # the invalid 8 px face is not counted
    assert row.hits["16-32"] == 1 and row.recall() == 1.0
    assert row.false_positives == 2 and row.fp_per_photo == 1.0
    assert row.photos_without_detection == 0


def test_agent_settings_follow_the_config_schema() -> None:
    default, floor = agent_settings()
    assert (default.min_face, default.score_threshold) == (40, 0.7)
    assert floor.min_face == 8 and floor.score_threshold == default.score_threshold


def test_tight_crop_is_the_centre_square_resized() -> None:
    image = np.zeros((250, 250, 3), np.uint8)
    image[60:190, 60:190] = 255  # exactly the centre 130 px
    crop = tight_crop(image, 130, 100)
    assert crop.shape == (100, 100, 3) and crop.min() == 255


@pytest.mark.slow
def test_default_detector_finds_faces_that_fill_the_photo(faces_dir: Path, models_dir: Path) -> None:
    """The agent's default detector at its default settings on 40 tight crops (issue 10, item 5). 40 crops
    cannot resolve the 98% target (one miss is 2.5%): the full figure is
    `python -m facelite.tools.bench.detect_eval`."""
    index = json.loads((models_dir / "index.json").read_text())["models"]
    default, _ = agent_settings()
    detector = create_detector(
        models_dir / "blazeface" / index["blazeface"]["recommended_variant"],
        min_face=default.min_face,
        score_threshold=default.score_threshold,
    )
    crops = [tight_crop(read_image(p)) for p in lfw_sample(faces_dir / "lfw", 40, seed=1)]
    found = [detector.detect(crop) for crop in crops]
    assert sum(1 for faces in found if faces) >= 38
    for faces in found:
        for face in faces[:1]:
            # Boxes and landmarks come back in the 100x100 crop's pixels, not the zoomed-out input's.
            cx, cy = face.bbox.center
            assert 25 < cx < 75 and 25 < cy < 75
            assert 50 < face.bbox.width < 160
            for name in ("left_eye", "right_eye", "nose"):
                x, y = face.landmarks[name]
                assert 0 <= x < 100 and 0 <= y < 100
