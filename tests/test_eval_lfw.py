"""LFW end to end on two folds (the full protocol runs in `make eval-lfw`): real photos, real converted models.

Fold 5 is a calibration fold and fold 6 an evaluation fold, so every part of the report runs: the 10-fold
protocol (here 2-fold: threshold fitted on one fold, applied to the other), the calibration check and the
open set on evaluation people, the selection figure on calibration people.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facelite.model.manifest import Manifest
from facelite.tools.embedset import detect_photos
from facelite.tools.lfw import CALIBRATION_FOLDS, EVALUATION_FOLDS, LfwView2, read_view2
from facelite.tools.lfw_eval import photo_groups
from facelite.vision.detect import create_detector

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PIPELINE = "blazeface/fp32 + mobilefacenet/fp32"


@pytest.fixture(scope="module")
def two_folds(data_dir: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, int]:
    out = tmp_path_factory.mktemp("eval-lfw")
    cmd = [
        sys.executable, "-m", "facelite.tools.bench.lfw", "--models", str(models_dir), "--data-dir", str(data_dir),
        "--out", str(out), "--cache", str(REPO / "build" / "cache" / "lfw"), "--folds", "5,6",
        "--gallery-sizes", "10,100", "--draws", "3", "--no-peers", "--pipelines", PIPELINE,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert (out / "report.md").is_file() and (out / "accuracy.png").is_file() and (out / "open_set.png").is_file()
    return json.loads((out / "report.json").read_text()), proc.returncode


def test_fold_roles_are_disjoint_in_people(data_dir: Path) -> None:
    view2 = read_view2(data_dir / "faces" / "lfw")
    assert len(view2.pairs) == 6000 and view2.folds == 10
    assert not set(view2.fold_people(CALIBRATION_FOLDS)) & set(view2.fold_people(EVALUATION_FOLDS))
    for fold in range(1, 11):
        pairs = [p for p in view2.pairs if p.fold == fold]
        assert sum(p.same for p in pairs) == 300 and len(pairs) == 600


def test_two_folds_report(two_folds: tuple[dict, int], data_dir: Path, models_dir: Path) -> None:
    report, rc = two_folds
    (p,) = report["pipelines"]
    assert p["name"] == PIPELINE
    tf = p["ten_fold"]
    assert len(tf["fold_accuracy"]) == 2 and tf["pairs"] == 1200
    # Every pair with a photo where blazeface found no face is failed, counted, never dropped: recount them
    # from the detector itself.
    view2 = read_view2(data_dir / "faces" / "lfw")
    pairs = [q for q in view2.pairs if q.fold in (5, 6)]
    det_dir = models_dir / "blazeface" / "fp32"
    detected = detect_photos(create_detector(det_dir, min_face=20), Manifest.load(det_dir).sha256,
                             sorted({q.a for q in pairs} | {q.b for q in pairs}), None)  # fmt: skip
    missing = {photo for photo, face in zip(detected.photos, detected.faces) if face is None}
    assert tf["failed_pairs"] == sum(1 for q in pairs if q.a in missing or q.b in missing)
    assert tf["photos_without_face"] == len(missing)
    # A failed pair is wrong, so accuracy cannot exceed the share of pairs that could be compared.
    assert np.mean(tf["fold_accuracy"]) <= 1 - tf["failed_pairs"] / 1200 + 1e-9
    assert tf["mean"] > 0.95  # MobileFaceNet is a 99%-class model: far below would be a broken pipeline
    # The calibration check ran on evaluation people at the manifest's curve.
    assert [c["far_claimed"] for c in p["rate_checks"]] == [1e-3, 1e-4, 1e-5, 1e-6]
    assert all(c["comparisons_diff"] > 50_000 for c in p["rate_checks"])
    # Open set on fold 6's people: strangers probed, thresholds rising with the gallery.
    sizes = [o["gallery_people"] for o in p["open_set"]]
    assert sizes == [10, 100]
    assert p["open_set"][0]["threshold"] < p["open_set"][1]["threshold"]
    for o in p["open_set"]:
        assert o["stranger_probes"] > 500 and o["genuine_probes"] > 0
        lo, hi = o["stranger_far_ci"]
        assert lo <= o["stranger_far"] <= hi
    assert p["selection"]["gallery_people"] == 100
    # The exit code says whether every target passed.
    assert rc == (0 if all(t["result"] == "PASS" for t in report["targets"]) else 1)
    assert {t["result"] for t in report["targets"]} <= {"PASS", "FAIL"} and report["targets"]


def test_groups_match_the_converter_calibration_photos(data_dir: Path) -> None:
    """The eval reuses the converter's cached calibration embeddings only if its group is the same photo list."""
    from facelite.converter.calibrate import calibration_photos

    view2 = read_view2(data_dir / "faces" / "lfw")
    groups = photo_groups(LfwView2(view2.root, view2.pairs, view2.folds), list(range(1, 11)))
    cal = calibration_photos(data_dir)
    assert groups.calibration == (cal.people, cal.photos)
    assert len(groups.all()[1]) == len({*groups.all()[1]}) == 7701
