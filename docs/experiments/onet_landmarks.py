"""BlazeFace boxes + MTCNN O-Net landmarks: LFW View 2 with the agent's own code (docs/experiments/onet_landmarks.md).

Run from the repository root after `make convert`:
    .venv/bin/python docs/experiments/onet_landmarks.py --models build/models --data-dir ../shared

The number of O-Net passes is chosen on the calibration people (folds 1-5, 5-fold cross-validation among
them); the 10-fold figure over all folds is what is reported beside the plain pipelines.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from facelite.tools.lfw import CALIBRATION_FOLDS, lfw_dir, read_view2
from facelite.tools.lfw_eval import photo_groups, pipeline_vectors, ten_fold
from facelite.vision.detect import create_detector
from facelite.vision.detect.onet_landmarks import OnetLandmarks
from facelite.vision.embed import Embedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("build/models"))
    parser.add_argument("--data-dir", type=Path, default=Path("../shared"))
    parser.add_argument("--cache", type=Path, default=Path("build/cache/lfw"))
    parser.add_argument("--embedder", default="mobilefacenet/fp32")
    parser.add_argument("--passes", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    view2 = read_view2(lfw_dir(args.data_dir))
    groups = photo_groups(view2, list(range(1, view2.folds + 1)))
    cal_view = replace(view2, pairs=tuple(p for p in view2.pairs if p.fold in CALIBRATION_FOLDS))
    embedder = Embedder.from_model_dir(args.models / args.embedder)
    blazeface = create_detector(args.models / "blazeface" / "fp32")
    mtcnn_dir = args.models / "mtcnn" / "fp32"
    rows = []
    pipelines = [("blazeface", blazeface, blazeface.manifest.sha256), ("mtcnn", create_detector(mtcnn_dir), None)]
    for passes in args.passes:
        refined = OnetLandmarks.from_model_dirs(blazeface, mtcnn_dir)
        refined.passes = passes
        pipelines.append((f"blazeface+onet x{passes}", refined, refined.sha256))
    for name, detector, key in pipelines:
        pv = pipeline_vectors(detector, key or detector.manifest.sha256, embedder, groups, args.cache)
        full = ten_fold(view2, pv)
        cal = ten_fold(cal_view, pv)
        rows.append(
            {
                "pipeline": f"{name} + {args.embedder}",
                "lfw_10fold": full.mean,
                "std": full.std,
                "tar_at_far_1e3": full.tar_at_far_1e3,
                "failed_pairs": full.failed_pairs,
                "calibration_folds_cv": cal.mean,
            }
        )
        print(
            f"{name} + {args.embedder}: 10-fold {100 * full.mean:.2f}% ± {100 * full.std:.2f}, "
            f"TAR@1e-3 {full.tar_at_far_1e3:.3f}, failed pairs {full.failed_pairs}; "
            f"folds 1-5 (5-fold CV) {100 * cal.mean:.2f}%",
            flush=True,
        )
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
