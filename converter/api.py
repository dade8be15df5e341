"""`convert()`: the converter as a Python function (`facelite convert` / `make convert` are thin layers over it).

    from converter.api import ConvertOptions, convert

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
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from converter.build import Gates

log = logging.getLogger(__name__)

# Detectors first: embedders are aligned with the detector artifact the device will run.
DEFAULT_MODELS = ("blazeface", "mtcnn", "facenet", "mobilefacenet")
RECIPES = {
    "blazeface": "converter.models.blazeface:BlazeFaceRecipe",
    "mtcnn": "converter.models.mtcnn:MTCNNRecipe",
    "facenet": "converter.models.facenet:FaceNetRecipe",
    "mobilefacenet": "converter.models.mobilefacenet:MobileFaceNetRecipe",
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
    reports: list[Any]  # converter.build.ModelReport per model, in build order
    calibration: list[Any] = field(default_factory=list)  # converter.calibrate rows (LFW folds 1-5), if made
    seconds: float = 0.0

    @property
    def failed(self) -> list[tuple[str, Any]]:
        """(model, variant report) of every variant that failed its gates."""
        return [(r.name, v) for r in self.reports for v in r.variants if not v.passed]


def convert(options: ConvertOptions) -> ConvertResult:
    """Build, verify and (for embedders) calibrate every variant of the chosen models into ``options.out``."""
    from agent.dataset import data_dir
    from agent.errors import FaceliteError
    from converter.build import BuildOptions, ModelBuild
    from converter.cli import (
        _alignment_detector,
        _integer_calibration_faces,
        _photos,
        load_recipe,
        open_set_calibration,
        write_summary,
    )
    from converter.faceset import build_faceset

    t_start = time.perf_counter()
    calib, scenes = options.calibration, options.scenes
    if calib is None or (scenes is None and options.source is None):
        root = data_dir(options.data_dir)
        calib = calib or root / "faces" / "people"
        scenes = scenes or root / "faces" / "scenes"
    if options.source is not None:
        from converter.formats.user import user_recipe

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
        from converter.calibrate import summary_md

        (options.out / "calibration.md").write_text(
            "# Open-set calibration (LFW View 2 folds 1-5)\n\n" + summary_md(rows)
        )
    return ConvertResult(reports, rows, time.perf_counter() - t_start)
