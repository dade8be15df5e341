"""`facelite eval`: accuracy of the full pipeline on a folder-per-person photo tree, or LFW View 2 (--protocol lfw)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from facelite.errors import FaceliteError


def _eval_pipelines(args: argparse.Namespace) -> list[tuple[Any, Any]]:
    """(detector, embedder) pairs to evaluate: every built embedder variant (with --models), or one pipeline."""
    from facelite.vision.detect import create_detector, device_pipelines
    from facelite.vision.embed import Embedder
    from facelite.wiring import models_from_args

    if args.models:
        index = json.loads((args.models / "index.json").read_text())["models"]
        built = {
            name: args.models / name / entry["recommended_variant"]
            for name, entry in index.items()
            if entry["kind"] == "detector"
        }
        pipelines = {d.pipeline: d for d in device_pipelines(built)}
        if args.detector_model not in pipelines:
            raise FaceliteError(
                f"no built detector pipeline {args.detector_model!r}",
                str(args.models),
                f"built: {', '.join(pipelines) or 'none'}; run `make convert` (blazeface+onet needs mtcnn too)",
            )
        detector = pipelines[args.detector_model]
        return [
            (detector, Embedder.from_model_dir(args.models / name / variant))
            for name, entry in index.items()
            if entry["kind"] == "embedder"
            for variant in entry["variants"]
        ]
    if args.config:
        detector, embedder, _ = models_from_args(args)
        return [(detector, embedder)]
    if not (args.detector and args.embedder):
        raise FaceliteError("give --models, --config, or --detector and --embedder")
    return [(create_detector(args.detector), Embedder.from_model_dir(args.embedder))]


def eval_lfw(args: argparse.Namespace) -> int:
    """``facelite eval faces/lfw --protocol lfw``: LFW View 2 for each pipeline (agent/tools/lfw_eval.py)."""
    from dataclasses import asdict

    from facelite.tools.lfw import LfwView2, read_view2
    from facelite.tools.lfw_eval import evaluate_pipeline, photo_groups, pipeline_vectors
    from facelite.vision.detect import detection_key, pipeline_label

    view2 = read_view2(args.data)
    folds = args.folds or list(range(1, view2.folds + 1))
    view2 = LfwView2(view2.root, tuple(p for p in view2.pairs if p.fold in folds), view2.folds)
    groups = photo_groups(view2, folds)
    results = []
    for detector, embedder in _eval_pipelines(args):
        emb = embedder.manifest
        name = f"{pipeline_label(detector)} + {emb.name}/{emb.variant}"
        cal = emb.calibration.get(detector.pipeline)
        if cal is None:
            raise FaceliteError(
                f"{emb.name}/{emb.variant} has no calibration through {detector.pipeline}", fix="re-run `make convert`"
            )
        pv = pipeline_vectors(detector, detection_key(detector), embedder, groups, args.out / "cache")
        r = evaluate_pipeline(name, pv, groups, view2, cal, cal.people, stranger_accept_rate=args.stranger_accept_rate)
        results.append(r)
        tf = r.ten_fold
        print(
            f"{name}: LFW accuracy {100 * tf.mean:.2f}% ± {100 * tf.std:.2f} over {len(tf.fold_accuracy)} folds "
            f"(95% CI {100 * tf.ci95[0]:.2f}-{100 * tf.ci95[1]:.2f}), {tf.failed_pairs} of {tf.pairs} pairs failed "
            f"(no face), AUC {tf.auc:.4f}"
        )
        for o in r.open_set:
            print(
                f"  gallery of {o.gallery_people}: strangers accepted {o.stranger_false_accepts}/{o.stranger_probes} "
                f"= {o.stranger_far:.2g} (95% CI {o.stranger_far_ci[0]:.2g}-{o.stranger_far_ci[1]:.2g}), "
                f"TAR {o.tar:.3f}, threshold {o.threshold:.4f}"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "lfw.json"
    path.write_text(json.dumps([asdict(r) for r in results], indent=2, default=str) + "\n")
    print(f"report: {path}")
    return 0


def eval_cmd(args: argparse.Namespace) -> int:
    from facelite.tools.evaluate import evaluate, markdown, quantisation_loss, read_lfw_pairs, write_reports

    if args.protocol == "lfw":
        return eval_lfw(args)
    pairs = None
    if args.pairs:
        if args.pairs.suffix == ".csv":
            from facelite.tools.dataset import read_pairs_csv

            pairs = read_pairs_csv(args.pairs)
        else:
            pairs = read_lfw_pairs(args.pairs, args.data)
    results = [
        evaluate(
            detector,
            embedder,
            args.data,
            pairs=pairs,
            stranger_accept_rate=args.stranger_accept_rate,
            enroll_k=args.enroll_k,
        )
        for detector, embedder in _eval_pipelines(args)
    ]
    written = write_reports(results, args.out)
    print(markdown(results), end="")
    quant = quantisation_loss(results)
    if quant:
        print("\nQuantisation loss (same images, same detector):\n" + quant, end="")
    print(f"reports: {', '.join(str(p) for p in written)}")
    return 0
