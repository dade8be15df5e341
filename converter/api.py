"""`convert()`: the converter as a Python function (`facelite convert` / `make convert` are thin layers over it).

    from facelite.converter.api import ConvertOptions, convert

    result = convert(ConvertOptions(models=("blazeface", "mobilefacenet"), out=Path("build/models")))
    for report in result.reports:
        print(report.name, report.recommended_variant)

Options mirror the command line flags one to one (``ConvertOptions.from_args``). Misuse fails before any work with a
``ValueError`` that names the fix; a model or variant that fails its gates is not an exception: ``result.failed``
lists it, as the CLI's exit code 1 does.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from facelite.converter.build import Gates
from facelite.errors import FaceliteError

log = logging.getLogger(__name__)

ALIGNMENT_DETECTORS = ("mtcnn", "blazeface")  # five landmarks first
INT8_CALIBRATION_STRIDE = 14  # about 150 people of LFW's calibration folds

# Detectors first: embedders are aligned with the detector artifact the device will run.
DEFAULT_MODELS = ("blazeface", "mtcnn", "facenet", "mobilefacenet")
RECIPES = {
    "blazeface": "facelite.converter.models.blazeface:BlazeFaceRecipe",
    "mtcnn": "facelite.converter.models.mtcnn:MTCNNRecipe",
    "facenet": "facelite.converter.models.facenet:FaceNetRecipe",
    "mobilefacenet": "facelite.converter.models.mobilefacenet:MobileFaceNetRecipe",
}


@dataclass(frozen=True)
class ConvertOptions:
    """What to build and how to verify it (each field is the CLI flag of the same name)."""

    models: Sequence[str] = DEFAULT_MODELS  # catalogued models (ignored with source=)
    variants: Sequence[str] | None = None  # default: each model's deployable set
    out: Path = Path("build/models")
    data_dir: Path | None = None  # holds faces/people, faces/scenes, faces/lfw (default: FACELITE_DATA_DIR)
    calibration: Path | None = None  # face photos that verify (and then also calibrate) the variants
    pairs: Path | None = None  # labelled pairs CSV for verification
    scenes: Path | None = None  # group photos for detector verification
    calibration_count: int = 100
    detector: Path | None = None  # detector artifact that aligns faces (default: the built mtcnn, else blazeface)
    min_mean_cosine: float = Gates.min_mean_cosine
    max_auc_drop: float = Gates.max_auc_drop
    no_legacy_check: bool = False  # skip the tflite-runtime 2.14 check (not for release builds)
    no_open_set_calibration: bool = False  # skip the threshold curve on LFW folds 1-5
    # A user's own embedder file or folder (converter/formats/user.py).
    source: Path | None = None
    name: str | None = None
    kind: Literal["embedder"] = "embedder"
    inputs: Sequence[str] | None = None
    outputs: Sequence[str] | None = None
    input_shape: Sequence[int] | None = None
    template: str = "arcface"
    size: Sequence[int] | None = None
    mean: float = 127.5
    std: float = 128.0
    color: Literal["RGB", "BGR"] = "RGB"

    def __post_init__(self) -> None:
        if self.calibration_count < 1:
            raise ValueError(f"calibration_count must be >= 1, got {self.calibration_count}")
        if self.source is None:
            unknown = [m for m in self.models if m not in RECIPES]
            if unknown or not self.models:
                raise ValueError(
                    f"unknown model {', '.join(map(repr, unknown)) or '(none given)'}: choose from "
                    f"{', '.join(RECIPES)} or use --source (source=) for your own model file"
                )
        elif not self.name:
            raise ValueError("source= needs name= (the artifact folder under out=)")
        if self.std <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")
        if not 0 < self.min_mean_cosine <= 1 or self.max_auc_drop < 0:
            raise ValueError("gates: min_mean_cosine must be in (0, 1] and max_auc_drop >= 0")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ConvertOptions:
        """The options of a `facelite convert` command line (unknown attributes, e.g. logging flags, ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names and v is not None})

    @property
    def gates(self) -> Gates:
        return Gates(min_mean_cosine=self.min_mean_cosine, max_auc_drop=self.max_auc_drop)


@dataclass
class ConvertResult:
    reports: list[Any]  # facelite.converter.build.ModelReport per model, in build order
    calibration: list[Any] = field(default_factory=list)  # facelite.converter.calibrate rows (LFW folds 1-5), if made
    seconds: float = 0.0

    @property
    def failed(self) -> list[tuple[str, Any]]:
        """(model, variant report) of every variant that failed its gates."""
        return [(r.name, v) for r in self.reports for v in r.variants if not v.passed]


def convert(options: ConvertOptions) -> ConvertResult:
    """Build, verify and (for embedders) calibrate every variant of the chosen models into ``options.out``."""
    from facelite.converter.build import BuildOptions, ModelBuild
    from facelite.converter.faceset import build_faceset
    from facelite.tools.dataset import data_dir

    t_start = time.perf_counter()
    calib, scenes = options.calibration, options.scenes
    if calib is None or (scenes is None and options.source is None):
        root = data_dir(options.data_dir)
        calib = calib or root / "faces" / "people"
        scenes = scenes or root / "faces" / "scenes"
    if options.source is not None:
        from facelite.converter.formats.user import user_recipe

        recipes = [user_recipe(options)]
    else:
        recipes = [load_recipe(m) for m in options.models]
    try:
        options.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FaceliteError(f"output directory cannot be created: {exc.strerror}", str(options.out)) from None
    reports = []
    detector_images: list[Any] | None = None
    calibration_faces: Any = None
    for recipe in recipes:
        if recipe.kind == "detector":
            if detector_images is None:
                detector_images = _photos(calib) + (_photos(scenes) if scenes and scenes.is_dir() else [])
                log.info("detector photos: %d from %s and %s", len(detector_images), calib, scenes)
            opts = BuildOptions(
                options.out,
                detector_images=detector_images,
                variants=options.variants,
                calibration_count=options.calibration_count,
                gates=options.gates,
                check_legacy_runtime=not options.no_legacy_check,
            )
        else:
            detector, det_sha = _alignment_detector(options)
            faces = build_faceset(calib, detector, options.pairs)
            if calibration_faces is None and options.calibration is None:
                # Photos given with calibration= are the user's choice for both; by default integer variants
                # calibrate on LFW faces disjoint from the sample photos that verify them.
                calibration_faces = _integer_calibration_faces(options)
            opts = BuildOptions(
                options.out,
                faces=faces,
                calibration_faces=calibration_faces,
                variants=options.variants,
                calibration_count=options.calibration_count,
                gates=options.gates,
                check_legacy_runtime=not options.no_legacy_check,
                cache_key_extra=det_sha,
            )
        reports.append(ModelBuild(recipe, opts).run())
    write_summary(options.out, reports)
    rows = open_set_calibration(options, reports)
    if rows:
        from facelite.converter.calibrate import summary_md

        (options.out / "calibration.md").write_text(
            "# Open-set calibration (LFW View 2 folds 1-5)\n\n" + summary_md(rows)
        )
    return ConvertResult(reports, rows, time.perf_counter() - t_start)


def load_recipe(name: str) -> Any:
    if name not in RECIPES:
        raise FaceliteError(f"unknown model {name!r}", fix=f"choose from {', '.join(RECIPES)} or use --source")
    module, cls = RECIPES[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def _photos(folder: Path) -> list[Any]:
    from facelite.errors import ImageError
    from facelite.vision.imageio import list_images, read_image

    images = []
    paths = [p for d in sorted(folder.iterdir()) if d.is_dir() for p in list_images(d)] or list_images(folder)
    for p in paths:
        try:
            images.append(read_image(p))
        except ImageError as exc:
            log.warning("skipped %s", exc.one_line())
    return images


def _alignment_detector(args: ConvertOptions) -> tuple[Any, str]:
    from facelite.model.manifest import Manifest
    from facelite.vision.detect import create_detector

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
    from facelite.converter.calibrate import calibration_photos, recommended_detectors
    from facelite.converter.faceset import faceset_of
    from facelite.tools.dataset import data_dir
    from facelite.tools.lfw import lfw_dir
    from facelite.vision.detect import create_detector

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


def open_set_calibration(args: ConvertOptions, reports: list[Any]) -> list[Any]:
    """Calibrate every installed embedder variant on LFW folds 1-5 (converter/calibrate.py)."""
    from facelite.converter.calibrate import calibrate
    from facelite.tools.dataset import data_dir
    from facelite.tools.lfw import lfw_dir

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
