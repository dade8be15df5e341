"""BlazeFace int8 measurements behind docs/experiments/blazeface_int8.md (issue 11 item 3).

    PYTHONPATH=. FACELITE_DATA_DIR=../shared FACELITE_LEGACY_PYTHON=.venv-legacy/bin/python \
        python docs/experiments/blazeface_int8.py --int8 /tmp/bfint8/models/blazeface/int8

1. the float rebuild vs the shipped .tflite on the converter's photos (raw outputs, boxes);
2. the retry (short-range) graph in int8: tflite-runtime 2.14 vs ai-edge-litert, per output;
3. the built int8 artifact vs the source on the WIDER slice (never calibrated on): recall, IoU, and the lost
   faces by size in the 192 px input and by the source's own score;
4. calibrating on the converter's photos plus the even WIDER photos, checked on the odd ones.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from facelite.converter.build import detector_agreement
from facelite.converter.formats.tflite_float import FloatTFLiteGraph, RebuiltNetwork
from facelite.converter.models.blazeface import BlazeFaceRecipe
from facelite.converter.runtimes import check_legacy, run_litert
from facelite.converter.variants import get_variant
from facelite.model.runtime import TFLiteModel
from facelite.tools.bench.detect_eval import parse_wider_gt
from facelite.vision.detect import create_detector
from facelite.vision.imageio import list_images, read_image


def photos(faces: Path) -> list[np.ndarray]:
    people = [p for d in sorted((faces / "people").iterdir()) if d.is_dir() for p in list_images(d)]
    return [read_image(p) for p in [*people, *list_images(faces / "scenes")]]


def int8_file(recipe: BlazeFaceRecipe, graph: str, images: list[np.ndarray], out: Path) -> Path:
    g = next(x for x in recipe.graphs() if x.name == graph)
    samples = recipe.calibration_samples(graph, images, len(images))
    converter = g.make_converter()
    get_variant("int8").configure(converter, lambda: ([np.asarray(s[0], np.float32)] for s in samples))
    out.write_bytes(converter.convert())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--int8", type=Path, required=True, help="the converter's blazeface/int8 folder")
    ap.add_argument("--work", type=Path, default=Path("build/blazeface-int8"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = Path(os.environ["FACELITE_DATA_DIR"]) / "faces"
    recipe = BlazeFaceRecipe("full")
    graphs = recipe.graphs()
    images = photos(data)

    print("## 1. float rebuild vs the shipped file")
    rebuilt = {g.name: RebuiltNetwork(FloatTFLiteGraph(g.tflite_file)) for g in graphs if g.tflite_file}
    for g in graphs:
        worst_abs, worst_rel = 0.0, 0.0
        for (x,) in recipe.calibration_samples(g.name, images, len(images)):
            for a, b in zip(g.reference.run(x), rebuilt[g.name].run(x)):
                worst_abs = max(worst_abs, float(np.abs(a - b).max()))
                worst_rel = max(worst_rel, float(np.abs(a - b).max() / max(np.abs(a).max(), 1.0)))
        print(f"{g.name}: {len(images)} photos, max abs diff {worst_abs:.2e}, relative to the output {worst_rel:.2e}")
    src = recipe.detector({g.name: g.reference for g in graphs})
    src_faces = [src.detect(i) for i in images]
    print(
        "detector through the rebuild:",
        detector_agreement(src_faces, [recipe.detector(dict(rebuilt)).detect(i) for i in images]),
    )

    print("## 2. retry graph in int8: tflite-runtime 2.14 vs ai-edge-litert")
    retry = int8_file(recipe, "retry", images, args.work / "retry_int8.tflite")
    xs = [s[0] for s in recipe.calibration_samples("retry", images, 4)]
    expected = run_litert(retry, xs)
    legacy = check_legacy(retry, xs, expected)
    for j in range(len(expected[0])):
        cos = min(
            float(e[j].ravel() @ o[j].ravel() / np.linalg.norm(e[j]) / np.linalg.norm(o[j]))
            for e, o in zip(expected, legacy.outputs)
        )
        print(
            f"output {j} {expected[0][j].shape}: min cosine {cos:.4f}, max |litert| {np.abs(expected[0][j]).max():.1f}"
        )

    print("## 3. int8 artifact vs the source on WIDER (not calibrated on)")
    wider = data / "wider"
    w_images = [read_image(wider / "images" / p.path) for p in parse_wider_gt((wider / "gt.txt").read_text())]
    int8 = create_detector(args.int8, min_face=20)
    w_src = [src.detect(i) for i in w_images]
    w_int8 = [int8.detect(i) for i in w_images]
    print(f"{len(w_images)} photos:", detector_agreement(w_src, w_int8))
    bins: dict[str, list[tuple[bool, float]]] = {}
    for image, s_faces, i_faces in zip(w_images, w_src, w_int8):
        for face in s_faces:
            side = max(face.bbox.width, face.bbox.height) / max(image.shape[:2]) * recipe.input_shape[1]
            label = "<8" if side < 8 else "8-16" if side < 16 else "16-32" if side < 32 else ">=32"
            kept = any(face.bbox.iou(f.bbox) >= 0.5 for f in i_faces)
            bins.setdefault(label, []).append((kept, face.score))
    for label in ("<8", "8-16", "16-32", ">=32"):
        rows = bins.get(label, [])
        lost = sorted(round(s, 2) for k, s in rows if not k)
        print(
            f"side {label} px in the 192 px input: {sum(k for k, _ in rows)}/{len(rows)} kept; "
            f"source scores of lost: {lost}"
        )

    print("## 4. calibration with WIDER (even photos), checked on the odd photos")
    odd = w_images[1::2]
    odd_src = [src.detect(i) for i in odd]
    for label, calib in (("converter photos", images), ("converter photos + WIDER even", images + w_images[0::2])):
        model = int8_file(recipe, "model", calib, args.work / f"model_int8_{len(calib)}.tflite")
        det = recipe.detector({"model": TFLiteModel(model, runtime="ai-edge-litert"), "retry": graphs[1].reference})
        a = detector_agreement(odd_src, [det.detect(i) for i in odd])
        print(f"{label} ({len(calib)}): WIDER odd recall {a['recall']:.3f}, mean IoU {a['mean_iou']:.3f}")


if __name__ == "__main__":
    main()
