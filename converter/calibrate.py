"""Open-set calibration of every built embedder variant on people it is never evaluated on.

For each installed embedder variant and each built detector (its recommended variant: what a device
runs; and BlazeFace with MTCNN's O-Net placing the landmarks, agent/vision/detect/onet_landmarks.py), the
photos of LFW View 2 folds 1-5 (agent/tools/lfw.py) go through that detector, the agent's aligner
and the variant; every different-person comparison among them (about 7 million) gives the curve of
threshold versus per-comparison false-accept rate, with the true-accept rate of the same-person
comparisons at each point. The curve goes into the variant's manifest (``calibration.<detector>``), and
the manifest's fixed thresholds are replaced by the curve's, so no threshold anywhere comes from the
85 sample photos the tests and the demo check.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from facelite.errors import FaceliteError
from facelite.model.manifest import Calibration, Manifest
from facelite.model.metrics import CurvePoint, calibration_curve, threshold_at_far
from facelite.tools.embedset import detect_photos, embed_detected, pair_scores
from facelite.tools.lfw import CALIBRATION_FOLDS, SHARED_WITH_SAMPLE_PHOTOS, lfw_dir, read_view2
from facelite.vision.detect import Detector, detection_key, device_pipelines
from facelite.vision.detect.onet_landmarks import OnetLandmarks
from facelite.vision.embed import Embedder

log = logging.getLogger(__name__)

DETECTORS = ("blazeface", "mtcnn")
# The detector whose curve also fills the manifest's fixed thresholds: the device default.
PRIMARY_DETECTOR = "blazeface"


@dataclass(frozen=True)
class CalibrationPhotos:
    people: list[str]  # one entry per photo
    photos: list[Path]
    description: str


def calibration_photos(data_dir: Path) -> CalibrationPhotos:
    view2 = read_view2(lfw_dir(data_dir))
    tree = view2.photos(CALIBRATION_FOLDS, exclude=SHARED_WITH_SAMPLE_PHOTOS)
    people = [name for name, photos in tree.items() for _ in photos]
    photos = [p for ps in tree.values() for p in ps]
    folds = f"{CALIBRATION_FOLDS[0]}-{CALIBRATION_FOLDS[-1]}"
    return CalibrationPhotos(people, photos, f"LFW View 2 folds {folds}: {len(tree):,} people")


def installed_variants(models: Path, kind: str) -> list[Path]:
    """Installed variant folders of every model of ``kind`` listed in index.json."""
    index = json.loads((models / "index.json").read_text())
    out = []
    for name, entry in sorted(index["models"].items()):
        if entry.get("kind") == kind:
            dirs = [models / name / v for v in entry.get("variants", [])]
            out += [d for d in dirs if (d / "manifest.json").is_file()]
    return out


def recommended_detectors(models: Path) -> dict[str, Path]:
    """Built detectors' recommended variants, from each model's report.json (written as soon as it is built)."""
    out = {}
    for name in DETECTORS:
        report = models / name / "report.json"
        rec = json.loads(report.read_text()).get("recommended_variant") if report.is_file() else None
        if rec and (models / name / rec / "manifest.json").is_file():
            out[name] = models / name / rec
    return out


@dataclass(frozen=True)
class CalibrationPath:
    """One way from a photo to landmarks that a device can run, as calibrated."""

    detector: Detector  # its ``pipeline`` is the manifest's calibration key
    label: str  # e.g. "blazeface/fp32 + mtcnn/fp32 onet"

    @property
    def key(self) -> str:
        return detection_key(self.detector)


def calibration_pipelines(detectors: dict[str, Path]) -> list[CalibrationPath]:
    """Every pipeline a device can run from the built detectors (``device_pipelines``), labelled by model."""
    paths = []
    for detector in device_pipelines(detectors, min_face=20):
        m = detector.manifest
        label = f"{m.name}/{m.variant}"
        if isinstance(detector, OnetLandmarks):
            label += f" + {detector.onet_manifest.name}/{detector.onet_manifest.variant} onet"
        paths.append(CalibrationPath(detector, label))
    return paths


@dataclass(frozen=True)
class CalibrationRow:
    embedder: str
    detector: str
    faces: int
    photos: int
    comparisons_diff: int
    at_1e3: CurvePoint
    at_1e6: CurvePoint


def calibrate(models: Path, data_dir: Path, cache: Path) -> list[CalibrationRow]:
    """Calibrate every installed embedder variant through every built detector; returns summary rows."""
    if not (lfw_dir(data_dir) / "pairs.txt").is_file():
        raise FaceliteError(
            "no LFW photos for calibration",
            str(lfw_dir(data_dir)),
            "run `make data` (it fetches faces/lfw) or point --data-dir at a folder that has faces/lfw",
        )
    cal = calibration_photos(data_dir)
    detectors = recommended_detectors(models)
    if not detectors:
        raise FaceliteError("no detector artifact to calibrate through", str(models), "build blazeface or mtcnn first")
    rows: list[CalibrationRow] = []
    embedders = installed_variants(models, "embedder")
    for path in calibration_pipelines(detectors):
        detected = detect_photos(path.detector, path.key, cal.photos, cache)
        n_found = int(detected.found.sum())
        det_name = path.detector.pipeline
        for emb_dir in embedders:
            t0 = time.perf_counter()
            embedder = Embedder.from_model_dir(emb_dir)
            vectors = embed_detected(embedder, detected, path.key, cache)
            same, diff = pair_scores(vectors, cal.people)
            curve = calibration_curve(same, diff)
            calibration = Calibration(
                detector=path.label,
                people=cal.description,
                photos=len(cal.photos),
                faces=n_found,
                comparisons_same=int(same.size),
                comparisons_diff=int(diff.size),
                curve=curve,
            )
            data = embedder.manifest.to_dict()
            data["calibration"] = {**data.get("calibration", {}), det_name: asdict(calibration)}
            if det_name == PRIMARY_DETECTOR or PRIMARY_DETECTOR not in detectors:
                data["thresholds"] = {k: threshold_at_far(diff, float(k)) for k in ("1e-2", "1e-3")}
            Manifest.from_dict(data).save(emb_dir)
            at = {p.far: p for p in curve}
            row = CalibrationRow(
                f"{embedder.manifest.name}/{embedder.manifest.variant}",
                calibration.detector,
                n_found,
                len(cal.photos),
                int(diff.size),
                at[1e-3],
                at[1e-6],
            )
            rows.append(row)
            log.info(
                "calibrated %s through %s on %s: %d faces, %.2fM different-person comparisons, "
                "threshold %.3f at FAR 1e-3 (TAR %.3f), %.3f at 1e-6 (TAR %.3f), %.0f s",
                row.embedder,
                row.detector,
                cal.description,
                n_found,
                diff.size / 1e6,
                row.at_1e3.threshold,
                row.at_1e3.tar,
                row.at_1e6.threshold,
                row.at_1e6.tar,
                time.perf_counter() - t0,
            )
    return rows


def summary_md(rows: list[CalibrationRow]) -> str:
    lines = [
        "| embedder | detector | faces found | different-person comparisons | threshold @1e-3 | TAR @1e-3 | "
        "threshold @1e-6 | TAR @1e-6 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.embedder} | {r.detector} | {r.faces}/{r.photos} | {r.comparisons_diff:,} | "
            f"{r.at_1e3.threshold:.4f} | {r.at_1e3.tar:.4f} | {r.at_1e6.threshold:.4f} | {r.at_1e6.tar:.4f} |"
        )
    return "\n".join(lines) + "\n"
