"""facelite-convert: build verified, quantized .tflite artifacts from real pretrained face models.

facelite-convert --data-dir ../shared                  # the deployable set into build/models
facelite-convert --models facenet --variants fp32,int8,uint8-io
facelite-convert --source my_model.pb --name mynet --kind embedder --template arcface --size 112,112
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from agent.errors import FaceliteError
from agent.logsetup import add_logging_flags, level_of, setup_logging
from converter.api import DEFAULT_MODELS, RECIPES, ConvertOptions, convert
from converter.build import Gates

log = logging.getLogger("converter")

ALIGNMENT_DETECTORS = ("mtcnn", "blazeface")  # five landmarks first
INT8_CALIBRATION_STRIDE = 14  # about 150 people of LFW's calibration folds


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="facelite-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--models",
        type=_csv,
        default=list(DEFAULT_MODELS),
        help=f"catalogued models to build (default: {','.join(DEFAULT_MODELS)})",
    )
    ap.add_argument(
        "--variants", type=_csv, default=None, help="variants to build (default: each model's deployable set)"
    )
    ap.add_argument("--out", type=Path, default=Path("build/models"), help="output folder (default build/models)")
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data folder with faces/people and faces/scenes (or FACELITE_DATA_DIR)",
    )
    ap.add_argument(
        "--calibration",
        type=Path,
        default=None,
        help="face photos for verification, and for integer calibration too (default: DATA_DIR/faces/people "
        "verifies, and faces of LFW folds 1-5 calibrate)",
    )
    ap.add_argument(
        "--pairs",
        type=Path,
        default=None,
        help="labelled pairs CSV (image_a,image_b,same_person); default: all pairs of the photo tree",
    )
    ap.add_argument(
        "--scenes",
        type=Path,
        default=None,
        help="group photos for detector verification (default DATA_DIR/faces/scenes)",
    )
    ap.add_argument("--calibration-count", type=int, default=100)
    ap.add_argument(
        "--detector",
        type=Path,
        default=None,
        help="detector artifact used to align faces (default: the built mtcnn, else blazeface)",
    )
    ap.add_argument("--min-mean-cosine", type=float, default=Gates.min_mean_cosine)
    ap.add_argument("--max-auc-drop", type=float, default=Gates.max_auc_drop)
    ap.add_argument(
        "--no-legacy-check", action="store_true", help="skip the tflite-runtime 2.14 check (not for release builds)"
    )
    ap.add_argument(
        "--no-open-set-calibration",
        action="store_true",
        help="skip the threshold curve on LFW folds 1-5 (then the agent has no per-visit stranger rate to hold)",
    )
    # A user's own model.
    ap.add_argument("--source", type=Path, default=None, help="convert your own model file or folder")
    ap.add_argument("--name", default=None, help="name of your model (with --source)")
    ap.add_argument("--kind", choices=("embedder",), default="embedder")
    ap.add_argument("--inputs", type=_csv, default=None, help="input tensor names (default: discovered)")
    ap.add_argument("--outputs", type=_csv, default=None, help="output tensor names (default: discovered)")
    ap.add_argument("--input-shape", type=lambda s: [int(v) for v in _csv(s)], default=None)
    ap.add_argument("--template", default="arcface")
    ap.add_argument(
        "--size",
        type=lambda s: [int(v) for v in _csv(s)],
        default=None,
        help="aligned crop W,H (default: the model's input size)",
    )
    ap.add_argument("--mean", type=float, default=127.5)
    ap.add_argument("--std", type=float, default=128.0)
    ap.add_argument("--color", choices=("RGB", "BGR"), default="RGB")
    add_logging_flags(ap)
    return ap.parse_args(argv)


def load_recipe(name: str) -> Any:
    if name not in RECIPES:
        raise FaceliteError(f"unknown model {name!r}", fix=f"choose from {', '.join(RECIPES)} or use --source")
    module, cls = RECIPES[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def _photos(folder: Path) -> list[Any]:
    from agent.errors import ImageError
    from agent.imageio import list_images, read_image

    images = []
    paths = [p for d in sorted(folder.iterdir()) if d.is_dir() for p in list_images(d)] or list_images(folder)
    for p in paths:
        try:
            images.append(read_image(p))
        except ImageError as exc:
            log.warning("skipped %s", exc.one_line())
    return images


def _alignment_detector(args: ConvertOptions) -> tuple[Any, str]:
    from agent.detect import create_detector
    from agent.manifest import Manifest

    candidates = [args.detector] if args.detector else []
    for name in ALIGNMENT_DETECTORS:
        root = args.out / name
        report = root / "report.json"
        if report.is_file():
            rec = json.loads(report.read_text()).get("recommended_variant")
            if rec:
                candidates.append(root / rec)
    for cand in candidates:
        if cand and (cand / "manifest.json").is_file():
            det = create_detector(cand, min_face=20)
            return det, Manifest.load(cand).sha256
    raise FaceliteError(
        "no detector artifact to align faces with",
        str(args.out),
        "build a detector first (--models mtcnn) or pass --detector DIR",
    )


def _integer_calibration_faces(args: ConvertOptions) -> Any:
    """Faces for integer calibration: one photo of every INT8_CALIBRATION_STRIDE-th person of LFW's calibration
    folds, aligned by the device's detector (BlazeFace when built), so that no face that verifies a variant
    (the sample photos) or evaluates it (LFW folds 6-10) shaped its quantisation. None without LFW: then the
    verification photos calibrate too, and the build log says so."""
    from agent.dataset import data_dir
    from agent.detect import create_detector
    from agent.lfw import lfw_dir
    from converter.calibrate import calibration_photos, recommended_detectors
    from converter.faceset import faceset_of

    try:
        root = data_dir(args.data_dir)
    except FaceliteError:
        root = None
    detectors = recommended_detectors(args.out)
    if root is None or not (lfw_dir(root) / "pairs.txt").is_file() or not detectors:
        log.warning("integer variants are calibrated on the verification photos (no faces/lfw or no detector)")
        return None
    det_dir = detectors.get("blazeface") or next(iter(detectors.values()))
    cal = calibration_photos(root)
    seen: set[str] = set()
    listed = []
    for person, photo in zip(cal.people, cal.photos):
        if person not in seen:
            seen.add(person)
            if len(seen) % INT8_CALIBRATION_STRIDE == 0:
                listed.append((photo, person))
    faces = faceset_of(listed, create_detector(det_dir, min_face=20))
    log.info("integer calibration: %d faces of %s, aligned by %s", len(faces.photos), cal.description, det_dir)
    return faces


def run(args: argparse.Namespace) -> int:
    """`facelite convert`: the options from the command line, convert(), then the tables and the next command."""
    try:
        options = ConvertOptions.from_args(args)
    except ValueError as exc:
        raise FaceliteError(str(exc)) from None
    result = convert(options)
    print(summary_table(result.reports))
    if result.calibration:
        from converter.calibrate import summary_md

        text = summary_md(result.calibration)
        print("\nOpen-set calibration (per-comparison false-accept rate, LFW folds 1-5):\n" + text)
    log.info("done in %.0f s", result.seconds)
    if result.failed:
        for name, v in result.failed:
            print(f"error: {name}/{v.variant} failed: {v.reason}", file=sys.stderr)
        return 1
    print(f"Reports: {options.out}/*/report.md. Next: make demo   (or: make deploy DEVICE=pi)")
    return 0


def open_set_calibration(args: ConvertOptions, reports: list[Any]) -> list[Any]:
    """Calibrate every installed embedder variant on LFW folds 1-5 (converter/calibrate.py)."""
    from agent.dataset import data_dir
    from agent.lfw import lfw_dir
    from converter.calibrate import calibrate

    built_embedder = any(r.kind == "embedder" and any(v.passed for v in r.variants) for r in reports)
    if args.no_open_set_calibration or not built_embedder:
        return []
    try:
        root: Path | None = data_dir(args.data_dir)
    except FaceliteError:
        root = None
    if root is None or not (lfw_dir(root) / "pairs.txt").is_file():
        log.warning(
            "no faces/lfw in the data directory: embedder thresholds come from the sample photos and are not "
            "calibrated for open-set use (run `make data`, or pass --data-dir with faces/lfw)"
        )
        return []
    t0 = time.perf_counter()
    rows = calibrate(args.out.resolve(), root, args.out.resolve().parent / "cache" / "lfw")
    log.info("open-set calibration in %.0f s", time.perf_counter() - t0)
    return rows


def summary_table(reports: list[Any]) -> str:
    lines = [
        f"{'model':<14}{'variant':<14}{'status':<8}{'MB':>8}{'p50 ms':>9}{'vs fp32':>9}  accuracy vs source",
        "-" * 88,
    ]
    for r in reports:
        for v in r.variants:
            a = v.accuracy
            if r.kind == "embedder":
                acc = (
                    (
                        f"cos {a.get('mean_cosine', 0):.4f}  AUC {a.get('auc', 0):.4f} "
                        f"(src {r.baseline.get('auc', 0):.4f})"
                    )
                    if a
                    else v.reason
                )
            else:
                acc = f"recall {a.get('recall', 0):.3f}  IoU {a.get('mean_iou', 0):.3f}" if a else v.reason
            fp32 = v.latency_ms.get("fp32_p50")
            ratio = f"{v.latency_ms['p50'] / fp32:.2f}x" if fp32 else "-"
            star = "*" if v.variant == r.recommended_variant else " "
            status = "ok" if v.passed else "FAIL"
            lines.append(
                f"{r.name:<14}{v.variant + star:<14}{status:<8}{v.size_bytes / 1e6:>8.2f}"
                f"{v.latency_ms.get('p50', 0):>9.1f}{ratio:>9}  {acc}"
            )
    lines.append("* recommended variant (fastest that passes the accuracy gates)")
    return "\n".join(lines)


def write_summary(out: Path, reports: list[Any]) -> None:
    """index.json: what the agent and deploy read to pick artifacts; summary.md: the table."""
    index_path = out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"models": {}}
    for r in reports:
        index["models"][r.name] = {
            "kind": r.kind,
            "recommended_variant": r.recommended_variant,
            "variants": [v.variant for v in r.variants if v.passed],
        }
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    tmp.replace(index_path)
    (out / "summary.md").write_text("```\n" + summary_table(reports) + "\n```\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(level_of(args))
    try:
        return run(args)
    except FaceliteError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; no half-written artifact was installed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
