"""LFW figures for one pipeline (detector + embedder), from its vectors of the LFW photos.

- ``ten_fold``: the standard View 2 protocol: per fold, the threshold that maximises accuracy on the
  other nine folds is applied to it; a pair with a photo where no face was found is a failed comparison,
  counted as wrong, never dropped.
- ``calibration_check``: on the evaluation people (folds 6-10), the per-comparison false-accept and
  true-accept rates at the thresholds the manifest's curve (fitted on folds 1-5) gives: does the curve
  hold on people it never saw?
- ``open_set``: galleries of N evaluation people (one template each), strangers from the other evaluation
  people, decided by the agent's own ``Matcher`` at the threshold ``facelite.recognition.openset`` computes for N
  templates from the configured per-visit rate and the curve.

Intervals are 95%, people as the unit (bootstrap over people, widened to the Wilson interval; folds
are disjoint in people, so the 10-fold accuracy gets a t interval over folds).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facelite.model.manifest import Calibration
from facelite.model.metrics import best_accuracy, bootstrap_rate_ci, roc_auc, tar_at_far
from facelite.recognition.matching import IndexBuilder, Matcher
from facelite.recognition.openset import curve_threshold, threshold_from_calibration
from facelite.tools.embedset import detect_photos, embed_detected
from facelite.tools.lfw import CALIBRATION_FOLDS, EVALUATION_FOLDS, SHARED_WITH_SAMPLE_PHOTOS, LfwView2

log = logging.getLogger(__name__)

# Two-sided 95% Student t quantiles for n - 1 degrees of freedom (n folds).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclass(frozen=True)
class PhotoVectors:
    """One pipeline's unit vectors for a list of photos (NaN rows: no face found)."""

    photos: list[Path]
    people: list[str]
    vectors: np.ndarray

    @property
    def found(self) -> np.ndarray:
        return ~np.isnan(self.vectors[:, 0])

    def row_of(self) -> dict[Path, int]:
        return {p: i for i, p in enumerate(self.photos)}


@dataclass(frozen=True)
class TenFold:
    fold_accuracy: list[float]
    mean: float
    std: float  # sample standard deviation over the folds
    ci95: tuple[float, float]
    auc: float
    tar_at_far_1e3: float
    failed_pairs: int  # pairs with a photo where no face was found (counted as wrong)
    pairs: int
    photos_without_face: int  # distinct photos of the pairs


def _pair_scores(view2: LfwView2, pv: PhotoVectors) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    rows = pv.row_of()
    scores = np.full(len(view2.pairs), np.nan)
    missing: set[Path] = set()
    for i, pair in enumerate(view2.pairs):
        a, b = rows.get(pair.a), rows.get(pair.b)
        va = pv.vectors[a] if a is not None else None
        vb = pv.vectors[b] if b is not None else None
        if va is None or np.isnan(va[0]):
            missing.add(pair.a)
        if vb is None or np.isnan(vb[0]):
            missing.add(pair.b)
        if va is not None and vb is not None and not (np.isnan(va[0]) or np.isnan(vb[0])):
            scores[i] = float(va @ vb)
    same = np.array([p.same for p in view2.pairs])
    folds = np.array([p.fold for p in view2.pairs])
    return scores, same, folds, len(missing)


def ten_fold(view2: LfwView2, pv: PhotoVectors) -> TenFold:
    scores, same, folds, missing = _pair_scores(view2, pv)
    ok = ~np.isnan(scores)
    accs = []
    for fold in sorted(set(folds.tolist())):
        train = (folds != fold) & ok
        test = folds == fold
        _, threshold = best_accuracy(scores[train & same], scores[train & ~same])
        decided = ok[test] & ((scores[test] >= threshold) == same[test])
        accs.append(float(decided.mean()))
    mean = float(np.mean(accs))
    std = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
    half = _T95.get(len(accs) - 1, 1.96) * std / math.sqrt(len(accs))
    # A failed comparison can accept nobody: the lowest score there is.
    filled = np.where(ok, scores, -np.inf)
    return TenFold(
        fold_accuracy=accs,
        mean=mean,
        std=std,
        ci95=(mean - half, min(1.0, mean + half)),
        auc=roc_auc(filled[same], filled[~same]),
        tar_at_far_1e3=tar_at_far(filled[same], filled[~same], 1e-3),
        failed_pairs=int((~ok).sum()),
        pairs=len(scores),
        photos_without_face=missing,
    )


@dataclass(frozen=True)
class RateCheck:
    far_claimed: float  # per comparison, from the curve fitted on the calibration people
    threshold: float
    far_measured: float
    far_ci: tuple[float, float]
    tar_measured: float
    tar_ci: tuple[float, float]
    comparisons_diff: int
    comparisons_same: int


def _per_person_counts(accept: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row (person-level after ``_by_person``): accepted comparisons and comparisons, over ``mask``."""
    return (accept & mask).sum(axis=1), mask.sum(axis=1)


def _by_person(values: np.ndarray, codes: np.ndarray, n_people: int) -> np.ndarray:
    return np.bincount(codes, weights=values, minlength=n_people)


def calibration_check(
    pv: PhotoVectors, calibration: Calibration, fars: Sequence[float] = (1e-3, 1e-4, 1e-5, 1e-6)
) -> list[RateCheck]:
    """Measured per-comparison rates on ``pv`` (the evaluation people) at the curve's thresholds."""
    ok = pv.found
    v = pv.vectors[ok]
    names = np.asarray(pv.people)[ok]
    _, codes = np.unique(names, return_inverse=True)
    n_people = int(codes.max()) + 1 if codes.size else 0
    sims = v @ v.T
    same = codes[:, None] == codes[None, :]
    np.fill_diagonal(same, False)
    diff = codes[:, None] != codes[None, :]
    out = []
    for far in fars:
        threshold, _ = curve_threshold(calibration, far)
        accept = sims >= threshold
        fa, fn = _per_person_counts(accept, diff)
        ta, tn = _per_person_counts(accept, same)
        fa_p, fn_p = _by_person(fa, codes, n_people), _by_person(fn, codes, n_people)
        ta_p, tn_p = _by_person(ta, codes, n_people), _by_person(tn, codes, n_people)
        out.append(
            RateCheck(
                far_claimed=far,
                threshold=threshold,
                far_measured=float(fa.sum() / max(fn.sum(), 1)),
                far_ci=bootstrap_rate_ci(fa_p, fn_p),
                tar_measured=float(ta.sum() / max(tn.sum(), 1)),
                tar_ci=bootstrap_rate_ci(ta_p, tn_p),
                comparisons_diff=int(fn.sum() // 2),
                comparisons_same=int(tn.sum() // 2),
            )
        )
    return out


@dataclass
class OpenSetResult:
    gallery_people: int
    draws: int
    threshold: float
    target_visit_far: float
    expected_visit_far: float | None
    stranger_probes: int  # stranger photos with a face, over all draws
    stranger_false_accepts: int
    stranger_far: float
    stranger_far_ci: tuple[float, float]
    genuine_probes: int
    true_accepts: int
    tar: float
    tar_ci: tuple[float, float]
    misidentified: int  # a genuine probe announced as somebody else
    top1: float
    top1_ci: tuple[float, float]
    strangers_not_detected: int
    examples: list[str] = field(default_factory=list)  # a few false accepts, "probe -> person"


def open_set(
    pv: PhotoVectors,
    calibration: Calibration,
    *,
    gallery_sizes: Sequence[int] = (10, 100, 1000),
    draws: int = 10,
    stranger_accept_rate: float = 1e-3,
    margin: float = 0.05,
    seed: int = 0,
) -> list[OpenSetResult]:
    """Enrol one photo of each of N people, probe with their other photos and with every other person."""
    by_person: dict[str, list[int]] = {}
    for i, person in enumerate(pv.people):
        by_person.setdefault(person, []).append(i)
    found = pv.found
    usable = {p: [i for i in idx if found[i]] for p, idx in by_person.items()}
    multi = sorted(p for p, idx in usable.items() if len(idx) >= 2)
    single = sorted(p for p, idx in usable.items() if len(idx) == 1)
    rng = np.random.default_rng(seed)
    dim = pv.vectors.shape[1]
    results = []
    for n in gallery_sizes:
        if n > len(multi) + len(single) - 1:
            raise ValueError(f"a gallery of {n} people needs more than {len(multi) + len(single)} people with a face")
        resolved = threshold_from_calibration(calibration, stranger_accept_rate, n)
        matcher = Matcher(threshold=resolved.threshold, margin=margin)
        fa: dict[str, list[int]] = {}
        ta: dict[str, list[int]] = {}
        top: dict[str, list[int]] = {}
        misid = undetected = 0
        examples: list[str] = []
        for _ in range(draws):
            # People with two or more photos first (they give genuine probes), then others to fill.
            gallery = list(rng.permutation(multi)[:n])
            if len(gallery) < n:
                gallery += list(rng.permutation(single)[: n - len(gallery)])
            members = set(gallery)
            builder = IndexBuilder(dim)
            for person in gallery:
                builder.add(person, pv.vectors[usable[person][0]])
            index = builder.build()
            for person in gallery:
                for i in usable[person][1:]:
                    m = matcher.match(index, pv.vectors[i])
                    hit = m.decision == "known" and m.person == person
                    misid += int(m.decision == "known" and m.person != person)
                    ta.setdefault(person, [0, 0])
                    ta[person][0] += int(hit)
                    ta[person][1] += 1
                    scores = index.matrix @ pv.vectors[i]
                    top.setdefault(person, [0, 0])
                    top[person][0] += int(index.names[int(np.argmax(scores))] == person)
                    top[person][1] += 1
            for person, idx in by_person.items():
                if person in members:
                    continue
                undetected += sum(1 for i in idx if not found[i])
                for i in usable.get(person, []):
                    m = matcher.match(index, pv.vectors[i])
                    accepted = m.decision == "known"
                    fa.setdefault(person, [0, 0])
                    fa[person][0] += int(accepted)
                    fa[person][1] += 1
                    if accepted and len(examples) < 5:
                        examples.append(f"{pv.photos[i].name} -> {m.person} ({m.similarity:.3f})")
        results.append(_summarise(n, draws, resolved.threshold, stranger_accept_rate, resolved.expected_visit_far,
                                  fa, ta, top, misid, undetected, examples))  # fmt: skip
    return results


def _rate(counts: dict[str, list[int]]) -> tuple[int, int, tuple[float, float]]:
    k = np.array([c[0] for c in counts.values()], np.int64)
    n = np.array([c[1] for c in counts.values()], np.int64)
    if n.sum() == 0:
        return 0, 0, (0.0, 1.0)
    return int(k.sum()), int(n.sum()), bootstrap_rate_ci(k, n)


def _summarise(
    n: int,
    draws: int,
    threshold: float,
    target: float,
    expected: float | None,
    fa: dict[str, list[int]],
    ta: dict[str, list[int]],
    top: dict[str, list[int]],
    misid: int,
    undetected: int,
    examples: list[str],
) -> OpenSetResult:
    fa_k, fa_n, fa_ci = _rate(fa)
    ta_k, ta_n, ta_ci = _rate(ta)
    top_k, top_n, top_ci = _rate(top)
    return OpenSetResult(
        gallery_people=n,
        draws=draws,
        threshold=threshold,
        target_visit_far=target,
        expected_visit_far=expected,
        stranger_probes=fa_n,
        stranger_false_accepts=fa_k,
        stranger_far=fa_k / fa_n if fa_n else 0.0,
        stranger_far_ci=fa_ci,
        genuine_probes=ta_n,
        true_accepts=ta_k,
        tar=ta_k / ta_n if ta_n else 0.0,
        tar_ci=ta_ci,
        misidentified=misid,
        top1=top_k / top_n if top_n else 0.0,
        top1_ci=top_ci,
        strangers_not_detected=undetected,
        examples=examples,
    )


# -- one pipeline, all figures -----------------------------------------------------------------


@dataclass
class PipelineResult:
    name: str
    detector: str
    embedder: str
    ms_per_frame: float | None  # detector + one embedding, p50 from `make convert` (x86, one thread)
    photos: int
    faces_found: int
    ten_fold: TenFold
    calibration: str  # whose curve: the manifest's (ours) or fitted here on the same people (peers)
    rate_checks: list[RateCheck]
    open_set: list[OpenSetResult]
    selection: OpenSetResult | None  # on calibration people: what the default is chosen by
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Groups:
    """The photos of the selected folds, in groups that match the converter's calibration cache."""

    calibration: tuple[list[str], list[Path]]  # calibration folds, people shared with faces/people left out
    shared: tuple[list[str], list[Path]]  # calibration folds, the people also in faces/people
    evaluation: tuple[list[str], list[Path]]

    def all(self) -> tuple[list[str], list[Path]]:
        people = self.calibration[0] + self.shared[0] + self.evaluation[0]
        return people, self.calibration[1] + self.shared[1] + self.evaluation[1]


def _flatten(tree: dict[str, list[Path]]) -> tuple[list[str], list[Path]]:
    return [n for n, ps in tree.items() for _ in ps], [p for ps in tree.values() for p in ps]


def photo_groups(view2: LfwView2, folds: list[int]) -> Groups:
    cal = [f for f in folds if f in CALIBRATION_FOLDS]
    ev = [f for f in folds if f in EVALUATION_FOLDS]
    everyone = view2.photos(cal)
    shared = {k: v for k, v in everyone.items() if k in SHARED_WITH_SAMPLE_PHOTOS}
    return Groups(
        _flatten(view2.photos(cal, exclude=SHARED_WITH_SAMPLE_PHOTOS)), _flatten(shared), _flatten(view2.photos(ev))
    )


def pipeline_vectors(detector: Any, det_key: str, embedder: Any, groups: Groups, cache: Path) -> PhotoVectors:
    parts = []
    for _, photos in (groups.calibration, groups.shared, groups.evaluation):
        if photos:
            detected = detect_photos(detector, det_key, photos, cache)
            parts.append(embed_detected(embedder, detected, det_key, cache))
    people, photos = groups.all()
    return PhotoVectors(photos, people, np.concatenate(parts))


def subset(pv: PhotoVectors, n_first: int, n: int) -> PhotoVectors:
    sl = slice(n_first, n_first + n)
    return PhotoVectors(pv.photos[sl], pv.people[sl], pv.vectors[sl])


def evaluate_pipeline(
    name: str,
    pv: PhotoVectors,
    groups: Groups,
    view2: LfwView2,
    calibration: Calibration,
    calibration_source: str,
    *,
    ms: float | None = None,
    gallery_sizes: Sequence[int] = (10, 100, 1000),
    draws: int = 10,
    stranger_accept_rate: float = 1e-3,
    selection_gallery: int = 100,
) -> PipelineResult:
    """Every LFW figure of one pipeline: 10-fold, the calibration check and open set on the evaluation
    people, and the selection figure (gallery of ``selection_gallery``) on the calibration people."""
    n_cal = len(groups.calibration[1])
    n_shared = len(groups.shared[1])
    pv_cal = subset(pv, 0, n_cal)
    pv_eval = subset(pv, n_cal + n_shared, len(groups.evaluation[1]))
    t0 = time.perf_counter()
    tf = ten_fold(view2, pv)
    checks = calibration_check(pv_eval, calibration) if pv_eval.photos else []
    sizes = [n for n in gallery_sizes if n < len(set(pv_eval.people))]
    opens = open_set(pv_eval, calibration, gallery_sizes=sizes, draws=draws, stranger_accept_rate=stranger_accept_rate)
    selection = None
    if pv_cal.photos and selection_gallery < len(set(pv_cal.people)):
        (selection,) = open_set(
            pv_cal,
            calibration,
            gallery_sizes=[selection_gallery],
            draws=draws,
            stranger_accept_rate=stranger_accept_rate,
        )
    det, _, emb = name.partition(" + ")
    log.info(
        "%s: 10-fold %.2f%% +- %.2f, %d failed pairs; %.0f s",
        name,
        100 * tf.mean,
        100 * tf.std,
        tf.failed_pairs,
        time.perf_counter() - t0,
    )
    return PipelineResult(
        name, det, emb, ms, len(pv.photos), int(pv.found.sum()), tf, calibration_source, checks, opens, selection
    )
