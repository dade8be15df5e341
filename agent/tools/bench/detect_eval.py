"""Detector accuracy on faces people enrol from and on crowds, for BlazeFace, MTCNN and YuNet.

1. Tight crops: 100x100 photos whose face fills the frame (a cropped headshot or ID photo), made in memory
   from LFW deep-funneled photos of people in View-2 folds 6-10, a fixed sample chosen by a seed. The
   figure is the fraction of crops where a detector reports a face. Several ways of running BlazeFace are
   measured side by side (one pass, always zoomed out, a zoomed-out retry through itself or through the
   artifact's short-range graph when nothing is found, the short-range model alone), and other crop sides.
2. WIDER FACE (the 187-photo validation slice in the data directory): recall at IoU 0.5 by face size and
   false positives per photo, at the agent's default detection settings and at its smallest min_face.
3. What the retry costs BlazeFace per 640x480 frame, with and without a face in it.

    python -m facelite.tools.bench.detect_eval --out build/detect_eval

writes report.md, report.json and recall_by_size.png there, and exits 1 when the agent's default detector
finds fewer than TARGET of the tight crops. Bench code: the agent never imports it.

Size: one report (tight crops, WIDER recall by face size, timing, sensitivity) over three detectors; each part is a
function tested on its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facelite.logsetup import add_logging_flags, level_of, setup_logging
from facelite.service.config import DetectionConfig
from facelite.tools.bench.boxmatch import IOU_THRESHOLD, SIZE_BINS, score_photo, size_bin
from facelite.tools.dataset import data_dir as resolve_data_dir
from facelite.vision.geometry import Face
from facelite.vision.imageio import read_image

log = logging.getLogger(__name__)

TARGET = 0.98  # issue 10 item 5: tight crops found by the default detector
CROP_SIDE = 130  # px of a 250x250 deep-funneled LFW photo, centred: about forehead to chin, ear to ear
CROP_OUT = 100
CROP_COUNT = 500
SEED = 0
LFW_FOLDS = (6, 7, 8, 9, 10)
# How tight "tight" is decides the figure: other crop sides, for the detectors that matter, at default settings.
SENSITIVITY_SIDES = (100, 110, 120, 130, 150)
FRAME = (640, 480)
TIMING_RUNS = 100
YUNET_ONNX = "yunet_s_640_640.onnx"


# -- settings -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """Detection settings as the agent config names them."""

    name: str
    min_face: int
    score_threshold: float | None  # None: the model's own default


def agent_settings() -> tuple[Setting, Setting]:
    """The agent's defaults and its smallest allowed min_face, read from facelite.service.config (kept in step)."""
    fields = {f.name: f for f in dataclasses.fields(DetectionConfig)}
    min_default, score_default = fields["min_face"].default, fields["score_threshold"].default
    assert min_default is not dataclasses.MISSING and score_default is not dataclasses.MISSING
    min_face, score = int(min_default), float(score_default)
    floor = int(fields["min_face"].metadata["rule"].ge)
    return Setting("default", min_face, score), Setting("min_face floor", floor, score)


# -- data -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WiderPhoto:
    path: str  # relative to the images/ folder
    boxes: np.ndarray  # [N, 4] x1, y1, x2, y2 pixels
    invalid: tuple[bool, ...]


def parse_wider_gt(text: str) -> list[WiderPhoto]:
    """The official WIDER FACE ground-truth format (see faces/wider/README.md); boxes with w or h <= 0 (the
    placeholder line of a photo without faces) are skipped."""
    lines = text.splitlines()
    photos: list[WiderPhoto] = []
    i = 0
    while i < len(lines):
        name = lines[i].strip()
        if not name:
            i += 1
            continue
        count = int(lines[i + 1])
        rows = [lines[i + 2 + k].split() for k in range(count)]
        i += 2 + count
        boxes, invalid = [], []
        for row in rows:
            x, y, w, h = (float(v) for v in row[:4])
            if w <= 0 or h <= 0:
                continue
            boxes.append((x, y, x + w, y + h))
            invalid.append(row[7] == "1")
        photos.append(WiderPhoto(name, np.array(boxes, np.float64).reshape(-1, 4), tuple(invalid)))
    return photos


def fold_people(pairs_text: str, folds: Sequence[int]) -> set[str]:
    """People named in the given 1-based folds of LFW's View-2 pairs.txt (header: folds, pairs per half)."""
    lines = [line for line in pairs_text.splitlines() if line.strip()]
    n_folds, per_half = (int(v) for v in lines[0].split())
    per_fold = 2 * per_half  # same-person pairs, then different-person pairs
    people: set[str] = set()
    for fold in folds:
        if not 1 <= fold <= n_folds:
            raise ValueError(f"LFW fold {fold} is not within 1..{n_folds}")
        for line in lines[1 + (fold - 1) * per_fold : 1 + fold * per_fold]:
            parts = line.split("\t")
            people.update([parts[0]] if len(parts) == 3 else [parts[0], parts[2]])
    return people


def lfw_sample(lfw_dir: Path, count: int, seed: int, folds: Sequence[int] = LFW_FOLDS) -> list[Path]:
    """``count`` photos of the folds' people, chosen by ``seed`` from the sorted list (same seed, same photos)."""
    people = fold_people((lfw_dir / "pairs.txt").read_text(), folds)
    photos = sorted(p for name in people for p in (lfw_dir / "people" / name).glob("*.jpg"))
    if len(photos) < count:
        raise ValueError(f"only {len(photos)} LFW photos in folds {list(folds)}, {count} asked for")
    return sorted(random.Random(seed).sample(photos, count))


def tight_crop(image: np.ndarray, side: int = CROP_SIDE, out: int = CROP_OUT) -> np.ndarray:
    """The centred ``side`` x ``side`` square (deep-funneled LFW puts the face there), resized to ``out``."""
    h, w = image.shape[:2]
    side = min(side, h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2
    return cv2.resize(image[y0 : y0 + side, x0 : x0 + side], (out, out), interpolation=cv2.INTER_AREA)


# -- detectors ------------------------------------------------------------------------------------
DetectFn = Callable[[np.ndarray], list[Face]]


@dataclass(frozen=True)
class DetectorOption:
    """One way of running a detector; ``build(setting)`` returns its detect function."""

    detector: str  # model family: blazeface, blazeface-short, mtcnn, yunet
    option: str  # how it is run
    build: Callable[[Setting], DetectFn]
    wider: bool  # also measured on WIDER (the crop-only variants are not)

    @property
    def label(self) -> str:
        return f"{self.detector} ({self.option})"


def _recommended_variant(models_dir: Path, model: str) -> str:
    index = models_dir / "index.json"
    if index.is_file():
        return str(json.loads(index.read_text())["models"][model]["recommended_variant"])
    return "fp32"  # convert still running: the float artifact is always built


def detector_options(models_dir: Path, yunet_onnx: Path, blazeface_variant: str | None = None) -> list[DetectorOption]:
    """Every way of running a detector the report compares; the first is the agent's default detector as
    built (its retry included), the second the same without the retry (the frame-cost baseline).
    ``blazeface_variant``: measure that BlazeFace variant instead of the recommended one (int8 vs fp32)."""
    from facelite.converter.models.blazeface import RETRY_ZOOM_OUT
    from facelite.vision.detect.blazeface import LARGE_FACE_ZOOM_OUT, BlazeFaceDetector

    bf_variant = blazeface_variant or _recommended_variant(models_dir, "blazeface")

    def blazeface(how: str, zoom: float = 1.0) -> Callable[[Setting], DetectFn]:
        def build(s: Setting) -> DetectFn:
            det = BlazeFaceDetector.from_model_dir(
                models_dir / "blazeface" / bf_variant,
                min_face=s.min_face,
                score_threshold=s.score_threshold,
            )
            retry = det.retry[0] if det.retry else det
            runs: dict[str, DetectFn] = {
                "default": det.detect,
                "once": lambda image: det.detect_once(image, zoom),
                "retry itself": lambda image: det.detect_once(image) or det.detect_once(image, zoom),
                "retry graph": lambda image: det.detect_once(image) or retry.detect_once(image, zoom),
            }
            return runs[how]

        return build

    def short(s: Setting) -> DetectFn:
        # The short-range model on its own, as a candidate default detector.
        from facelite.converter.models.blazeface import BlazeFaceRecipe
        from facelite.model.runtime import TFLiteModel

        recipe = BlazeFaceRecipe("short")
        det = BlazeFaceDetector(
            recipe._detector_manifest(),
            {"model": TFLiteModel(recipe.tflite_file())},
            min_face=s.min_face,
            score_threshold=s.score_threshold,
            retry=False,
        )
        return det.detect

    def mtcnn(s: Setting) -> DetectFn:
        from facelite.vision.detect.mtcnn import PNET_CELL, MTCNNDetector

        # MTCNN refuses min_face below its 12 px P-Net cell, which the agent config allows (floor 8).
        return MTCNNDetector.from_model_dir(
            models_dir / "mtcnn" / _recommended_variant(models_dir, "mtcnn"),
            min_face=max(s.min_face, PNET_CELL),
            score_threshold=s.score_threshold,
        ).detect

    def yunet(s: Setting) -> DetectFn:
        from facelite.tools.bench.peers import YUNET_SCORE, YuNetDetector

        inner = YuNetDetector(yunet_onnx, score=YUNET_SCORE if s.score_threshold is None else s.score_threshold)

        def detect(image: np.ndarray) -> list[Face]:
            # The same cut as our detectors: the shorter side of the box below min_face is dropped.
            return [f for f in inner.detect(image) if min(f.bbox.width, f.bbox.height) >= s.min_face]

        return detect

    z = RETRY_ZOOM_OUT
    options = [
        DetectorOption("blazeface", f"default: retry short-range x{z:g} when none found", blazeface("default"), True),
        DetectorOption("blazeface", "no retry, before", blazeface("once"), True),
    ]
    options += [
        DetectorOption(
            "blazeface", f"retry short-range x{zoom:g} when none found", blazeface("retry graph", zoom), False
        )
        for zoom in (1.5, 2.0, 3.0)
    ]
    options += [
        DetectorOption("blazeface", f"retry itself x{zoom:g} when none found", blazeface("retry itself", zoom), False)
        for zoom in (2.0, 2.5, LARGE_FACE_ZOOM_OUT)
    ]
    options += [
        DetectorOption("blazeface", f"always zoomed out x{zoom:g}", blazeface("once", zoom), False)
        for zoom in (1.5, 2.0, 2.5, 3.0)
    ]
    options += [
        DetectorOption("blazeface-short", "alone, no retry", short, False),
        DetectorOption("mtcnn", "agent", mtcnn, True),
        DetectorOption("yunet", "OpenCV, long side <= 640", yunet, True),
    ]
    return options


# -- measurements ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CropRow:
    label: str
    setting: str
    side: int  # crop side in the 250x250 photo, px
    found: int
    total: int

    @property
    def fraction(self) -> float:
        return self.found / self.total if self.total else 0.0


def found_in_crops(detect: DetectFn, crops: Sequence[np.ndarray]) -> list[bool]:
    return [bool(detect(crop)) for crop in crops]


@dataclass(frozen=True)
class WiderRow:
    label: str
    setting: str
    min_face: int
    score_threshold: float | None
    hits: dict[str, int]  # per size bin
    faces: dict[str, int]  # valid faces per size bin
    false_positives: int
    photos: int
    photos_without_detection: int

    def recall(self, label: str | None = None) -> float:
        hits = sum(self.hits.values()) if label is None else self.hits[label]
        faces = sum(self.faces.values()) if label is None else self.faces[label]
        return hits / faces if faces else float("nan")

    @property
    def fp_per_photo(self) -> float:
        return self.false_positives / self.photos if self.photos else 0.0


def wider_row(label: str, setting: Setting, photos: Sequence[WiderPhoto], detections: Sequence[np.ndarray]) -> WiderRow:
    """Recall by size and false positives of one detector's boxes over the photos (pure)."""
    hits = {b[0]: 0 for b in SIZE_BINS}
    faces = {b[0]: 0 for b in SIZE_BINS}
    fps = 0
    for photo, dets in zip(photos, detections, strict=True):
        out = score_photo(dets, photo.boxes, photo.invalid, IOU_THRESHOLD)
        fps += out.false_positives
        for gt_box, outcome in zip(photo.boxes, out.gt):
            if outcome == "ignored":
                continue
            faces[size_bin(gt_box)] += 1
            hits[size_bin(gt_box)] += outcome == "hit"
    empty = sum(1 for d in detections if len(d) == 0)
    return WiderRow(
        label, setting.name, setting.min_face, setting.score_threshold, hits, faces, fps, len(photos), empty
    )


def detect_boxes(detect: DetectFn, image: np.ndarray) -> np.ndarray:
    faces = detect(image)
    return np.array([[f.bbox.x1, f.bbox.y1, f.bbox.x2, f.bbox.y2] for f in faces], np.float64).reshape(-1, 4)


def fit_frame(image: np.ndarray, size: tuple[int, int] = FRAME) -> np.ndarray:
    """``image`` scaled to fit a black camera-sized frame, centred."""
    w, h = size
    scale = min(w / image.shape[1], h / image.shape[0])
    small = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))
    frame = np.zeros((h, w, 3), np.uint8)
    y0, x0 = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    frame[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]] = small
    return frame


# -- report ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Report:
    crop_sample: dict[str, Any]
    crops: list[CropRow]
    sensitivity: list[CropRow]
    wider: list[WiderRow]
    timing: list[dict[str, Any]]
    target: float
    measured: float
    command: str

    @property
    def passed(self) -> bool:
        return self.measured >= self.target


def report_json(r: Report) -> dict[str, Any]:
    return {
        "command": r.command,
        "target": {"tight_crops_found": r.target, "measured": r.measured, "pass": r.passed},
        "crop_sample": r.crop_sample,
        "crops": [{**dataclasses.asdict(c), "fraction": round(c.fraction, 4)} for c in r.crops],
        "crop_side_sensitivity": [{**dataclasses.asdict(c), "fraction": round(c.fraction, 4)} for c in r.sensitivity],
        "wider": [
            {
                **dataclasses.asdict(w),
                "recall": {b[0]: round(w.recall(b[0]), 4) for b in SIZE_BINS},
                "recall_all": round(w.recall(), 4),
                "fp_per_photo": round(w.fp_per_photo, 3),
            }
            for w in r.wider
        ],
        "retry_cost": r.timing,
    }


def report_md(r: Report) -> str:
    s = r.crop_sample
    out = [
        "# Detector accuracy: tight crops and WIDER FACE",
        "",
        f"Command: `{r.command}`",
        "",
        f"**Target: >= {r.target:.0%} of tight crops found by the agent's default detector at its default "
        f"settings: {r.measured:.1%} — {'PASS' if r.passed else 'FAIL'}.**",
        "",
        "## Tight crops (the face fills the photo)",
        "",
        f"{s['count']} LFW deep-funneled photos of people in View-2 folds {s['folds']} (seed {s['seed']}), "
        f"centre {s['side']}x{s['side']} px of 250x250 resized to {s['out']}x{s['out']}. Found = at least one face.",
        "",
        "| detector (how it is run) | setting | found | fraction |",
        "|---|---|---|---|",
    ]
    out += [f"| {c.label} | {c.setting} | {c.found}/{c.total} | {c.fraction:.1%} |" for c in r.crops]
    out += [
        "",
        "Settings: `default` is the agent config's (min_face, score_threshold); `enrol without --config` is "
        "`facelite enroll --detector ...`: min_face 20 and the model's own score threshold.",
    ]
    if r.sensitivity:
        labels = list(dict.fromkeys(c.label for c in r.sensitivity))
        sides = list(dict.fromkeys(c.side for c in r.sensitivity))
        cell = {(c.label, c.side): c for c in r.sensitivity}
        out += [
            "",
            "### How tight: the same photos cropped to other centre squares (default settings)",
            "",
            "| detector | " + " | ".join(f"{s} px" for s in sides) + " |",
            "|---|" + "---|" * len(sides),
        ]
        out += [f"| {lab} | " + " | ".join(f"{cell[(lab, s)].fraction:.1%}" for s in sides) + " |" for lab in labels]
    bins = [b[0] for b in SIZE_BINS]
    if r.wider:
        w0 = r.wider[0]
        out += [
            "",
            "## WIDER FACE validation slice: recall at IoU 0.5 by face size (longer side, px)",
            "",
            f"{w0.photos} photos; valid faces per bin: "
            + ", ".join(f"{b}: {w0.faces[b]}" for b in bins)
            + ". Faces flagged invalid count neither as misses nor as matches. Greedy matching by IoU.",
            "",
            "| detector | setting (min_face, score) | " + " | ".join(bins) + " | all | FP/photo | photos with none |",
            "|---|---|" + "---|" * (len(bins) + 3),
        ]
        for w in r.wider:
            cells = " | ".join(f"{w.recall(b):.3f}" for b in bins)
            out.append(
                f"| {w.label} | {w.setting} ({w.min_face}, {w.score_threshold:g}) | {cells} | {w.recall():.3f} "
                f"| {w.fp_per_photo:.2f} | {w.photos_without_detection} |"
            )
        out += [
            "",
            "MTCNN refuses min_face below 12 px (its P-Net cell), so its floor row runs at 12. YuNet runs through "
            "OpenCV as the bench does (photos scaled to a long side of 640 px), at the agent's score threshold, "
            "with the agent's min_face cut on the shorter box side.",
        ]
    if r.timing:
        out += [
            "",
            "## What the retry costs BlazeFace per frame (one thread, 640x480, p50 ms)",
            "",
            "| frame | no retry | retry when nothing found | faces found |",
            "|---|---|---|---|",
        ]
        out += [f"| {t['frame']} | {t['no_retry_ms']:.2f} | {t['retry_ms']:.2f} | {t['faces']} |" for t in r.timing]
    out += ["", "![recall by size](recall_by_size.png)", ""]
    return "\n".join(out)


def recall_chart(rows: Sequence[WiderRow], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b[0] for b in SIZE_BINS]
    settings = list(dict.fromkeys(w.setting for w in rows))
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 4.0), sharey=True, squeeze=False)
    for ax, setting in zip(axes[0], settings):
        group = [w for w in rows if w.setting == setting]
        width = 0.8 / max(1, len(group))
        for k, w in enumerate(group):
            xs = np.arange(len(bins)) + (k - (len(group) - 1) / 2) * width
            ax.bar(xs, [w.recall(b) for b in bins], width, label=f"{w.label}, FP/photo {w.fp_per_photo:.2f}")
        ax.set_xticks(np.arange(len(bins)), bins)
        ax.set_xlabel("face size (longer side, px)")
        ax.set_title(f"{setting}: min_face {group[0].min_face}, score {group[0].score_threshold:g}")
        ax.set_ylim(0, 1)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    axes[0][0].set_ylabel("recall at IoU 0.5 (WIDER slice)")
    fig.tight_layout()
    path = out / "recall_by_size.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- CLI ------------------------------------------------------------------------------------------
def crop_table(
    options: Sequence[DetectorOption], settings: Sequence[Setting], crops: Sequence[np.ndarray], side: int
) -> tuple[list[CropRow], list[np.ndarray]]:
    """Found crops per option and setting, and the crops the first option missed at the first setting."""
    rows: list[CropRow] = []
    misses: list[np.ndarray] = []
    for opt in options:
        for setting in settings:
            found = found_in_crops(opt.build(setting), crops)
            rows.append(CropRow(opt.label, setting.name, side, sum(found), len(found)))
            log.info("crops: %s, %s: %d/%d", opt.label, setting.name, sum(found), len(found))
            if opt is options[0] and setting is settings[0]:
                misses = [c for c, ok in zip(crops, found) if not ok]
    return rows, misses


def wider_table(
    options: Sequence[DetectorOption], settings: Sequence[Setting], wider_dir: Path, limit: int
) -> list[WiderRow]:
    photos = parse_wider_gt((wider_dir / "gt.txt").read_text())[: limit or None]
    images = {p.path: read_image(wider_dir / "images" / p.path) for p in photos}
    rows = []
    for opt in (o for o in options if o.wider):
        for setting in settings:
            detect = opt.build(setting)
            rows.append(wider_row(opt.label, setting, photos, [detect_boxes(detect, images[p.path]) for p in photos]))
            log.info("wider: %s, %s: recall %.3f", opt.label, setting.name, rows[-1].recall())
    return rows


def run(args: argparse.Namespace) -> Report:
    data = resolve_data_dir(args.data_dir)
    options = detector_options(args.models.resolve(), data / "models" / YUNET_ONNX, args.blazeface_variant)
    default, floor = agent_settings()
    enrol = Setting("enrol without --config", 20, None)  # create_detector's defaults: min_face 20, model's score

    paths = lfw_sample(data / "faces" / "lfw", args.crops, args.seed)
    originals = [read_image(p) for p in paths]
    crops = [tight_crop(image, args.crop_side) for image in originals]
    crop_rows, misses = crop_table(options, [default, enrol], crops, args.crop_side)
    if misses:
        cv2.imwrite(str(args.out / "crop_misses.png"), np.hstack(misses[:40]))  # to look at, never committed
    sensitivity: list[CropRow] = []
    if not args.skip_sensitivity:
        # The default, the retry through the model itself (artifacts without a retry graph), MTCNN and YuNet.
        picked = [options[0], next(o for o in options if o.option.startswith("retry itself x3"))]
        picked += [next(o for o in options if o.detector == name) for name in ("mtcnn", "yunet")]
        for side in SENSITIVITY_SIDES:
            sensitivity += crop_table(picked, [default], [tight_crop(image, side) for image in originals], side)[0]
    wider_rows = (
        [] if args.skip_wider else wider_table(options, [default, floor], data / "faces" / "wider", args.wider_photos)
    )
    timing = [] if args.skip_timing else measure_retry_cost(options, default, data, crops)
    measured = next(c.fraction for c in crop_rows if c.label == options[0].label and c.setting == default.name)
    sample = {"count": len(paths), "seed": args.seed, "folds": list(LFW_FOLDS), "side": args.crop_side, "out": CROP_OUT}
    return Report(sample, crop_rows, sensitivity, wider_rows, timing, TARGET, measured, " ".join(args.command))


def measure_retry_cost(
    options: Sequence[DetectorOption], setting: Setting, data: Path, crops: Sequence[np.ndarray]
) -> list[dict[str, Any]]:
    """BlazeFace with and without the retry on camera-sized frames: a face of normal size, no face, and a
    face filling the frame (a tight crop scaled up)."""
    with_retry, without = options[0].build(setting), options[1].build(setting)
    people = sorted((data / "faces" / "people").rglob("*.jpg"))
    empty = read_image(data / "faces" / "wider" / "images" / "37--Soccer" / "37_Soccer_soccer_ball_37_281.jpg")
    frames = {
        "one face (people photo in a 640x480 frame)": fit_frame(read_image(people[0])),
        "no face (WIDER photo without faces)": cv2.resize(empty, FRAME, interpolation=cv2.INTER_AREA),
        "face fills the frame (tight crop scaled to 480x480)": fit_frame(cv2.resize(crops[0], (480, 480))),
    }
    rows = []
    for name, frame in frames.items():
        no_retry, retry = paired_p50_ms(
            functools.partial(without, frame), functools.partial(with_retry, frame), TIMING_RUNS
        )
        rows.append({"frame": name, "no_retry_ms": no_retry, "retry_ms": retry, "faces": len(with_retry(frame))})
    return rows


def paired_p50_ms(a: Callable[[], object], b: Callable[[], object], runs: int) -> tuple[float, float]:
    """p50 ms of ``a`` and ``b`` timed in alternation, so load from other users of a shared machine falls on
    both alike (timed one after the other, the two halves of a run saw different loads)."""
    for fn in (a, b, a, b):  # warm-up: first-invoke delegate setup, caches
        fn()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for fn, out in ((a, times[0]), (b, times[1])):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1000)
    return round(float(np.median(times[0])), 3), round(float(np.median(times[1])), 3)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m facelite.tools.bench.detect_eval", description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None, help="data directory holding faces/ (default $FACELITE_DATA_DIR)")
    ap.add_argument(
        "--models",
        type=Path,
        default=Path(os.environ.get("FACELITE_MODELS_DIR", "build/models")),
        help="converted models (default $FACELITE_MODELS_DIR or build/models)",
    )
    ap.add_argument("--out", type=Path, default=Path("build/detect_eval"), help="report folder")
    ap.add_argument("--crops", type=int, default=CROP_COUNT, help=f"tight crops to make (default {CROP_COUNT})")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--crop-side", type=int, default=CROP_SIDE, help="centre square of the 250x250 photo, px")
    ap.add_argument("--wider-photos", type=int, default=0, help="only the first N WIDER photos (0: all)")
    ap.add_argument(
        "--blazeface-variant", default=None, help="BlazeFace variant to measure (default: the recommended one)"
    )
    ap.add_argument("--skip-wider", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-sensitivity", action="store_true", help="only the --crop-side crops")
    add_logging_flags(ap)
    args = ap.parse_args(argv)
    args.command = ["python -m facelite.tools.bench.detect_eval", *(sys.argv[1:] if argv is None else argv)]
    setup_logging(level_of(args))
    args.out.mkdir(parents=True, exist_ok=True)
    report = run(args)
    (args.out / "report.json").write_text(json.dumps(report_json(report), indent=2) + "\n")
    if report.wider:
        recall_chart(report.wider, args.out)
    (args.out / "report.md").write_text(report_md(report))
    log.info("wrote %s; tight crops found %.1f%% (target %.0f%%)", args.out, 100 * report.measured, 100 * TARGET)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
