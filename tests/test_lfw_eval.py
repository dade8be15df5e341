"""LFW protocol arithmetic on synthetic vectors, against brute force (no models, no photos)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from facelite.model.manifest import Calibration
from facelite.model.metrics import calibration_curve, per_comparison_far
from facelite.recognition.openset import curve_threshold
from facelite.tools.embedset import pair_scores
from facelite.tools.lfw import LfwPair, LfwView2, read_view2
from facelite.tools.lfw_eval import (
    OpenSetResult,
    PhotoVectors,
    PipelineResult,
    TenFold,
    calibration_check,
    open_set,
    ten_fold,
)


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _people(n_people: int, photos_each: int, dim: int, noise: float, seed: int) -> PhotoVectors:
    """Each person a random centre; each photo the centre plus noise (unit length)."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng, n_people, dim)
    vectors, people, photos = [], [], []
    for p in range(n_people):
        for k in range(photos_each):
            v = centres[p] + noise * rng.normal(size=dim).astype(np.float32)
            vectors.append(v / np.linalg.norm(v))
            people.append(f"p{p:03d}")
            photos.append(Path(f"p{p:03d}/{k}.jpg"))
    return PhotoVectors(photos, people, np.stack(vectors).astype(np.float32))


def test_ten_fold_equals_brute_force_with_failed_photos() -> None:
    pv = _people(30, 3, 16, noise=0.35, seed=1)
    vectors = pv.vectors.copy()
    vectors[[4, 17]] = np.nan  # two photos where no face was found
    pv = PhotoVectors(pv.photos, pv.people, vectors)
    rng = np.random.default_rng(2)
    pairs = []
    for fold in (1, 2, 3):
        members = range((fold - 1) * 10, fold * 10)  # folds disjoint in people, as in View 2
        for p in members:
            pairs.append(LfwPair(pv.photos[3 * p], pv.photos[3 * p + 1], True, fold))
            q = int(rng.choice([m for m in members if m != p]))
            pairs.append(LfwPair(pv.photos[3 * p + 2], pv.photos[3 * q], False, fold))
    view2 = LfwView2(Path("."), tuple(pairs), 3)
    result = ten_fold(view2, pv)

    def score(pair: LfwPair) -> float:
        a, b = pv.vectors[pv.photos.index(pair.a)], pv.vectors[pv.photos.index(pair.b)]
        return math.nan if np.isnan(a[0]) or np.isnan(b[0]) else float(a @ b)

    expected = []
    for fold in (1, 2, 3):
        train = [(score(p), p.same) for p in pairs if p.fold != fold and not math.isnan(score(p))]
        candidates = [*sorted({s for s, _ in train}), math.inf]
        # Ties: the highest score threshold wins, "accept nothing" only when strictly better (as best_accuracy).
        best_t = max(
            candidates,
            key=lambda t: (sum((s >= t) == same for s, same in train), t != math.inf, candidates.index(t)),
        )
        test = [p for p in pairs if p.fold == fold]
        right = sum(1 for p in test if not math.isnan(score(p)) and (score(p) >= best_t) == p.same)
        expected.append(right / len(test))
    assert result.fold_accuracy == pytest.approx(expected)
    failed = sum(1 for p in pairs if math.isnan(score(p)))
    assert result.failed_pairs == failed > 0
    assert result.photos_without_face == 2
    assert result.mean == pytest.approx(np.mean(expected))
    assert result.ci95[0] <= result.mean <= result.ci95[1]


def test_open_set_matches_a_direct_count() -> None:
    """Strangers accepted and true accepts, recounted by hand for one draw of each gallery size."""
    pv = _people(60, 2, 32, noise=0.6, seed=3)
    everyone_else = _people(200, 1, 32, noise=0.0, seed=4)  # single-photo people: strangers only
    pv = PhotoVectors(
        pv.photos + everyone_else.photos,
        pv.people + [f"s{p}" for p in everyone_else.people],
        np.concatenate([pv.vectors, everyone_else.vectors]),
    )
    cal_people = _people(80, 2, 32, noise=0.6, seed=5)
    same, diff = pair_scores(cal_people.vectors, cal_people.people)
    cal = Calibration("synthetic/fp32", "synthetic calibration people", 160, 160, same.size, diff.size,
                      calibration_curve(same, diff, min_events=5))  # fmt: skip
    (r,) = open_set(pv, cal, gallery_sizes=[20], draws=1, stranger_accept_rate=0.05, margin=0.0, seed=9)
    # Recount: the same draw (same seed) with plain numpy.
    rng = np.random.default_rng(9)
    multi = sorted({p for p in pv.people if pv.people.count(p) >= 2})
    gallery = list(rng.permutation(multi)[:20])
    first = {p: pv.people.index(p) for p in gallery}
    g = np.stack([pv.vectors[first[p]] for p in gallery])
    fa = probes = 0
    for i, person in enumerate(pv.people):
        if person in gallery:
            continue
        probes += 1
        fa += int((g @ pv.vectors[i]).max() >= r.threshold)
    assert (r.stranger_false_accepts, r.stranger_probes) == (fa, probes)
    assert r.genuine_probes == 20  # one other photo per gallery person
    assert r.threshold == pytest.approx(curve_threshold(cal, per_comparison_far(0.05, 20))[0])


def test_calibration_check_measures_the_rate_on_new_people() -> None:
    cal_people = _people(120, 2, 24, noise=0.7, seed=6)
    new_people = _people(120, 2, 24, noise=0.7, seed=7)
    same, diff = pair_scores(cal_people.vectors, cal_people.people)
    cal = Calibration("synthetic/fp32", "cal", 240, 240, same.size, diff.size, calibration_curve(same, diff))
    (check,) = calibration_check(new_people, cal, fars=[1e-2])
    s2, d2 = pair_scores(new_people.vectors, new_people.people)
    assert check.far_measured == pytest.approx(float((d2 >= check.threshold).mean()))
    assert check.tar_measured == pytest.approx(float((s2 >= check.threshold).mean()))
    assert check.comparisons_diff == d2.size and check.comparisons_same == s2.size
    lo, hi = check.far_ci
    assert lo <= check.far_measured <= hi


def test_view2_parser_refuses_bad_files(tmp_path: Path) -> None:
    from facelite.errors import FaceliteError

    (tmp_path / "pairs.txt").write_text("1\t1\nA\t1\t2\nB\t1\n")
    with pytest.raises(FaceliteError, match=r"expected a different-person line .*pairs.txt:3\)"):
        read_view2(tmp_path)
    (tmp_path / "pairs.txt").write_text("1\t2\nA\t1\t2\n")
    with pytest.raises(FaceliteError, match="has 1 pairs; its header promises 4"):
        read_view2(tmp_path)
    (tmp_path / "pairs.txt").write_text("x\n")
    with pytest.raises(FaceliteError, match="header"):
        read_view2(tmp_path)
    with pytest.raises(FaceliteError, match="not found"):
        read_view2(tmp_path / "nowhere")
    (tmp_path / "pairs.txt").write_text("1\t1\nA\tone\t2\nA\t1\tB\t2\n")
    with pytest.raises(FaceliteError, match="not a whole number"):
        read_view2(tmp_path)


def _result(name: str, ms: float, selection_tar: float) -> PipelineResult:
    tf = TenFold([0.98], 0.98, 0.0, (0.98, 0.98), 0.99, 0.96, 0, 600, 0)
    sel = OpenSetResult(100, 3, 0.6, 1e-3, 1e-3, 1000, 1, 1e-3, (0.0, 0.01), 100, int(100 * selection_tar),
                        selection_tar, (0.0, 1.0), 0, selection_tar, (0.0, 1.0), 0)  # fmt: skip
    det, _, emb = name.partition(" + ")
    return PipelineResult(name, det, emb, ms, 10, 10, tf, "manifest", [], [], sel)


def test_the_default_is_the_best_selection_tar_within_time_and_memory() -> None:
    import argparse

    from facelite.tools.bench.lfw import SPEED_BUDGET_MS, build_report

    results = [
        _result("blazeface/fp32 + mobilefacenet/fp32", 5.0, 0.90),
        _result("blazeface/fp32+onet + mobilefacenet/fp32", 5.6, 0.93),  # better, but a third model
        _result("mtcnn/fp32 + mobilefacenet/fp32", SPEED_BUDGET_MS + 1, 0.95),  # better, but too slow
        _result("blazeface/fp32 + facenet/int8", 8.0, 0.85),
    ]
    args = argparse.Namespace(draws=3, gallery_sizes=[10])
    report = build_report(results, results[0].name, [1, 2], args)
    assert report["chosen_default"] == "blazeface/fp32 + mobilefacenet/fp32"
    assert "memory" in report["selection_rule"]
    # The same figures under a two-model pipeline's name are chosen: the memory rule is what decides.
    results[1] = _result("yunet/fp32 + mobilefacenet/fp32", 5.6, 0.93)
    assert build_report(results, results[0].name, [1, 2], args)["chosen_default"] == results[1].name
