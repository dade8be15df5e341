"""facelite-convert: build verified, quantized .tflite artifacts from real pretrained face models.

facelite-convert --data-dir ../shared                  # the deployable set into build/models
facelite-convert --models facenet --variants fp32,int8,uint8-io
facelite-convert --source my_model.pb --name mynet --kind embedder --template arcface --size 112,112
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from facelite.converter.api import DEFAULT_MODELS, ConvertOptions, convert, summary_table
from facelite.converter.build import Gates
from facelite.errors import FaceliteError
from facelite.logsetup import add_logging_flags, level_of, setup_logging

log = logging.getLogger("converter")


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


def run(args: argparse.Namespace) -> int:
    """`facelite convert`: the options from the command line, convert(), then the tables and the next command."""
    try:
        options = ConvertOptions.from_args(args)
    except ValueError as exc:
        raise FaceliteError(str(exc)) from None
    result = convert(options)
    print(summary_table(result.reports))
    if result.calibration:
        from facelite.converter.calibrate import summary_md

        text = summary_md(result.calibration)
        print("\nOpen-set calibration (per-comparison false-accept rate, LFW folds 1-5):\n" + text)
    log.info("done in %.0f s", result.seconds)
    if result.failed:
        for name, v in result.failed:
            print(f"error: {name}/{v.variant} failed: {v.reason}", file=sys.stderr)
        return 1
    print(f"Reports: {options.out}/*/report.md. Next: make demo   (or: make deploy DEVICE=pi)")
    return 0


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
