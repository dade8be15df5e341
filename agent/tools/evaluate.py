"""`facelite eval`: accuracy of the full device pipeline (detect, align, embed, match) on labelled photos.

Works on any folder-per-person tree and on LFW-style ``pairs.txt`` protocols. Reports verification
(ROC AUC, TAR at FAR, best accuracy) and open-set identification: enroll ``k`` photos per person,
probe the rest, and probe held-out people as strangers, all at the manifest's calibrated threshold.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from facelite.errors import FaceliteError, ImageError
from facelite.model.metrics import best_accuracy, roc_points, verification_scores
from facelite.recognition.matching import IndexBuilder, Matcher
from facelite.recognition.openset import resolve_threshold
from facelite.tools.dataset import Pair, all_pairs, people_tree
from facelite.vision.embed import Embedder
from facelite.vision.geometry import Face
from facelite.vision.imageio import read_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedPhoto:
    path: Path
    person: str
    vector: np.ndarray


@dataclass
class EvalResult:
    model: str  # "detector/variant + embedder/variant"
    photos: int
    faces_found: int
    missed: list[str]
    unreadable: list[str]
    verification: dict[str, Any]
    identification: dict[str, Any]
    scores: dict[str, list[float]] = field(default_factory=dict)  # same / diff similarities, for plots

    def to_dict(self, with_scores: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_scores:
            d.pop("scores")
        return d


class FaceFinder(Protocol):
    """What evaluation needs of a detector: ``detect``. Any agent Detector is one; so is a peer detector without
    a manifest (its name, when it has a manifest, goes into the open-set threshold lookup)."""

    def detect(self, image: np.ndarray) -> list[Face]: ...


def embed_tree(
    detector: FaceFinder, embedder: Embedder, tree: dict[str, list[Path]]
) -> tuple[list[EmbeddedPhoto], list[str], list[str]]:
    """The largest face of every photo, embedded the way the device does it."""
    out: list[EmbeddedPhoto] = []
    missed: list[str] = []
    unreadable: list[str] = []
    for person, photos in tree.items():
        for path in photos:
            try:
                image = read_image(path)
            except ImageError as exc:
                unreadable.append(exc.one_line())
                continue
            faces = detector.detect(image)
            if not faces:
                missed.append(str(path))
                continue
            face = max(faces, key=lambda f: f.bbox.area)
            out.append(EmbeddedPhoto(path, person, embedder.embed(image, face).vector))
    return out, missed, unreadable


def read_lfw_pairs(path: Path, root: Path) -> list[Pair]:
    """LFW ``pairs.txt``: ``name i j`` (same) or ``name1 i name2 j`` (different), files name/name_000i.jpg."""
    pairs: list[Pair] = []
    lines = path.read_text().split("\n")
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) == 3:
            name, i, j = parts
            pairs.append(Pair(root / name / f"{name}_{int(i):04d}.jpg", root / name / f"{name}_{int(j):04d}.jpg", True))
        elif len(parts) == 4:
            a, i, b, j = parts
            pairs.append(Pair(root / a / f"{a}_{int(i):04d}.jpg", root / b / f"{b}_{int(j):04d}.jpg", False))
        elif len(parts) not in (0, 1, 2):  # header lines carry 1-2 numbers
            raise FaceliteError(f"pairs line {n} has {len(parts)} fields; expected 3 or 4", str(path))
    return pairs


def split_people(tree: dict[str, list[Path]], stranger_every: int) -> tuple[list[str], list[str]]:
    """Every ``stranger_every``-th person (sorted, deterministic) is held out as a stranger."""
    names = sorted(tree)
    strangers = [n for i, n in enumerate(names) if stranger_every and i % stranger_every == stranger_every - 1]
    return [n for n in names if n not in strangers], strangers


def identification(
    embedded: Sequence[EmbeddedPhoto],
    matcher_for: Callable[[int], Matcher],
    dim: int,
    enroll_k: int | None,
    stranger_every: int,
) -> dict[str, Any]:
    """Open-set identification; ``matcher_for(templates)`` gives the matcher the agent would use for a
    gallery of that many templates."""
    by_person: dict[str, list[EmbeddedPhoto]] = {}
    for e in embedded:
        by_person.setdefault(e.person, []).append(e)
    known, strangers = split_people({k: [e.path for e in v] for k, v in by_person.items()}, stranger_every)
    builder = IndexBuilder(dim)
    probes: list[EmbeddedPhoto] = []
    for person in known:
        photos = sorted(by_person[person], key=lambda e: e.path.name)
        if len(photos) < 2:
            continue  # nothing left to probe with
        k = enroll_k if enroll_k else (len(photos) + 1) // 2
        k = min(k, len(photos) - 1)
        for e in photos[:k]:
            builder.add(person, e.vector)
        probes.extend(photos[k:])
    index = builder.build()
    matcher = matcher_for(index.size)
    enrolled = set(index.names)
    stranger_probes = [e for p in strangers for e in by_person[p]]
    correct_top1 = accepted_right = accepted_wrong = rejected = ambiguous = 0
    for e in probes:
        if e.person not in enrolled:
            continue
        scores = index.matrix @ e.vector
        per_person = np.maximum.reduceat(scores, index.starts)
        if index.names[int(np.argmax(per_person))] == e.person:
            correct_top1 += 1
        m = matcher.match(index, e.vector)
        if m.decision == "known":
            if m.person == e.person:
                accepted_right += 1
            else:
                accepted_wrong += 1
        elif m.decision == "ambiguous":
            ambiguous += 1
        else:
            rejected += 1
    stranger_accepted = [
        str(e.path.name) + "->" + str(m.person)
        for e in stranger_probes
        if (m := matcher.match(index, e.vector)).decision == "known"
    ]
    n_probe = sum(1 for e in probes if e.person in enrolled)
    return {
        "enrolled_people": len(enrolled),
        "templates": index.size,
        "probes": n_probe,
        "stranger_people": len(strangers),
        "stranger_probes": len(stranger_probes),
        "threshold": matcher.threshold,
        "margin": matcher.margin,
        "top1": correct_top1 / n_probe if n_probe else 0.0,
        "true_accept_rate": accepted_right / n_probe if n_probe else 0.0,
        "false_reject_rate": (rejected + ambiguous) / n_probe if n_probe else 0.0,
        "misidentified": accepted_wrong,
        "ambiguous": ambiguous,
        "stranger_false_accept_rate": len(stranger_accepted) / len(stranger_probes) if stranger_probes else 0.0,
        "stranger_false_accepts": stranger_accepted,
    }


def evaluate(
    detector: FaceFinder,
    embedder: Embedder,
    people_dir: Path,
    *,
    pairs: list[Pair] | None = None,
    stranger_accept_rate: float = 1e-3,
    margin: float = 0.05,
    enroll_k: int | None = None,
    stranger_every: int = 5,
) -> EvalResult:
    tree = people_tree(people_dir)
    if not tree:
        raise FaceliteError("no person folders with photos", str(people_dir), "expected <dir>/<person>/*.jpg")
    embedded, missed, unreadable = embed_tree(detector, embedder, tree)
    if len(embedded) < 2:
        raise FaceliteError(f"only {len(embedded)} faces found; cannot evaluate", str(people_dir))
    index = {e.path.resolve(): e for e in embedded}
    if pairs is None:
        pairs = all_pairs({p: [e.path for e in embedded if e.person == p] for p in tree})
    same: list[float] = []
    diff: list[float] = []
    for pair in pairs:
        a, b = index.get(Path(pair.a).resolve()), index.get(Path(pair.b).resolve())
        if a is None or b is None:
            continue
        (same if pair.same else diff).append(float(a.vector @ b.vector))
    if not same or not diff:
        raise FaceliteError("the pairs need at least one same and one different pair with faces found")
    v = verification_scores(np.array(same), np.array(diff))
    acc, acc_thr = best_accuracy(np.array(same), np.array(diff))
    det_m = getattr(detector, "manifest", None)

    def matcher_for(templates: int) -> Matcher:
        resolved = resolve_threshold(
            embedder.manifest,
            detector=getattr(detector, "pipeline", getattr(det_m, "name", "")),
            stranger_accept_rate=stranger_accept_rate,
            templates=templates,
        )
        return Matcher(threshold=resolved.threshold, margin=margin)

    ident = identification(embedded, matcher_for, int(embedder.manifest.embedding_size or 0), enroll_k, stranger_every)
    model = f"{det_m.name}/{det_m.variant} + " if det_m else ""
    model += f"{embedder.manifest.name}/{embedder.manifest.variant}"
    return EvalResult(
        model=model,
        photos=sum(map(len, tree.values())),
        faces_found=len(embedded),
        missed=missed,
        unreadable=unreadable,
        verification={
            "auc": v.auc,
            "tar_at_far": v.tar_at_far,
            "best_accuracy": acc,
            "best_accuracy_threshold": acc_thr,
            "pairs_same": v.n_same,
            "pairs_diff": v.n_diff,
            "match_threshold": ident["threshold"],
            "stranger_accept_rate_target": stranger_accept_rate,
        },
        identification=ident,
        scores={"same": same, "diff": diff},
    )


def markdown(results: Sequence[EvalResult]) -> str:
    lines = [
        "| model | faces found | AUC | TAR@FAR1e-2 | TAR@FAR1e-3 | best acc | top-1 | FRR | "
        "misidentified | stranger FAR |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        v, i = r.verification, r.identification
        lines.append(
            f"| {r.model} | {r.faces_found}/{r.photos} | {v['auc']:.4f} | {v['tar_at_far']['1e-2']:.3f} | "
            f"{v['tar_at_far']['1e-3']:.3f} | {v['best_accuracy']:.4f} | {i['top1']:.3f} | "
            f"{i['false_reject_rate']:.3f} | {i['misidentified']} | {i['stranger_false_accept_rate']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def quantisation_loss(results: Sequence[EvalResult]) -> str:
    """Each integer variant beside its fp32 twin (the float source, converted losslessly) on the same images."""
    by_model: dict[str, dict[str, EvalResult]] = {}
    for r in results:
        detector, _, embedder = r.model.rpartition(" + ")
        name, _, variant = embedder.partition("/")
        by_model.setdefault(f"{detector} + {name}", {})[variant] = r
    lines = [
        "| pipeline | variant | AUC | fp32 AUC | AUC change | TAR@1e-3 change | top-1 change |",
        "|---|---|---|---|---|---|---|",
    ]
    for pipeline, variants in by_model.items():
        base = variants.get("fp32")
        if base is None:
            continue
        for variant, r in variants.items():
            if variant == "fp32":
                continue
            v, b = r.verification, base.verification
            lines.append(
                f"| {pipeline} | {variant} | {v['auc']:.5f} | {b['auc']:.5f} | {v['auc'] - b['auc']:+.5f} | "
                f"{v['tar_at_far']['1e-3'] - b['tar_at_far']['1e-3']:+.4f} | "
                f"{r.identification['top1'] - base.identification['top1']:+.4f} |"
            )
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def write_reports(results: Sequence[EvalResult], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
    quant = quantisation_loss(results)
    text = "# facelite eval\n\n" + markdown(results)
    if quant:
        text += "\n## Quantisation loss (same images, same detector)\n\n" + quant
    (out / "eval.md").write_text(text)
    written = [out / "eval.json", out / "eval.md"]
    try:
        written += plots(results, out)
    except ImportError:
        log.warning("matplotlib is not installed: no PNG plots (pip install matplotlib)")
    return written


def plots(results: Sequence[EvalResult], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for r in results:
        _, far, tar = roc_points(r.scores["same"], r.scores["diff"])
        ax.plot(np.maximum(far, 1e-4), tar, label=f"{r.model} (AUC {r.verification['auc']:.4f})")
    ax.set_xscale("log")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title("ROC, full device pipeline")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    roc = out / "roc.png"
    fig.savefig(roc, dpi=110)
    plt.close(fig)
    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(6, 2.2 * n), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        ax.hist(r.scores["diff"], bins=60, alpha=0.6, density=True, label="different people")
        ax.hist(r.scores["same"], bins=30, alpha=0.6, density=True, label="same person")
        ax.axvline(r.verification["match_threshold"], color="k", ls="--", lw=1, label="match threshold")
        ax.set_title(r.model, fontsize=8)
        ax.legend(fontsize=6)
    axes[-1, 0].set_xlabel("cosine similarity")
    fig.tight_layout()
    hist = out / "similarity_hist.png"
    fig.savefig(hist, dpi=110)
    plt.close(fig)
    return [roc, hist]
