"""FaceNet on LFW: ArcFace 5-point template (what we ship) vs davidsandberg's MTCNN box + margin crop."""

import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository
from facelite.model.manifest import Manifest
from facelite.tools.embedset import detect_photos
from facelite.tools.lfw import read_view2
from facelite.tools.lfw_eval import PhotoVectors, photo_groups, ten_fold
from facelite.vision.detect import create_detector
from facelite.vision.embed import Embedder
from facelite.vision.imageio import read_image

REPO = Path(__file__).resolve().parents[2]
M = Path(os.environ.get("FACELITE_MODELS_DIR", REPO / "build/models"))
CACHE = REPO / "build/cache/lfw"
view2 = read_view2(Path(os.environ.get("FACELITE_DATA_DIR", REPO.parent / "shared")) / "faces" / "lfw")
groups = photo_groups(view2, list(range(1, 11)))
people, photos = groups.all()
detname = sys.argv[1] if len(sys.argv) > 1 else "mtcnn"
det_dir = M / detname / "fp32"
det = create_detector(det_dir)
det_sha = Manifest.load(det_dir).sha256
parts = []
for _, ph in (groups.calibration, groups.shared, groups.evaluation):
    parts.append(detect_photos(det, det_sha, ph, CACHE))
faces = [f for p in parts for f in p.faces]
emb = Embedder.from_model_dir(M / "facenet" / (sys.argv[2] if len(sys.argv) > 2 else "int8"))
size = 160


def box_crop(img, face, margin, scale):
    h, w = img.shape[:2]
    x1, y1, x2, y2 = face.bbox.x1, face.bbox.y1, face.bbox.x2, face.bbox.y2
    if scale:  # margin as a fraction of box size (device-independent)
        mw, mh = margin * (x2 - x1), margin * (y2 - y1)
    else:
        mw = mh = margin
    a = [int(max(x1 - mw / 2, 0)), int(max(y1 - mh / 2, 0)), int(min(x2 + mw / 2, w)), int(min(y2 + mh / 2, h))]
    return cv2.resize(img[a[1] : a[3], a[0] : a[2]], (size, size), interpolation=cv2.INTER_LINEAR)


modes = [("arcface", None, None), ("box", 32, False), ("box", 44, False), ("box", 0.3, True)]
images = {}
for mode, margin, scale in modes:
    t0 = time.time()
    out = np.full((len(photos), 512), np.nan, np.float32)
    for i, (p, f) in enumerate(zip(photos, faces)):
        if f is None:
            continue
        img = images.get(p)
        if img is None:
            img = read_image(p)
            images[p] = img
        crop = emb.align(img, f) if mode == "arcface" else box_crop(img, f, margin, scale)
        out[i] = emb.embed_crop(crop).vector
    tf = ten_fold(view2, PhotoVectors(photos, people, out))
    print(
        json.dumps(
            {
                "detector": detname,
                "mode": mode,
                "margin": margin,
                "relative": scale,
                "mean": round(tf.mean, 5),
                "std": round(tf.std, 5),
                "failed": tf.failed_pairs,
                "folds": [round(a, 4) for a in tf.fold_accuracy],
                "s": round(time.time() - t0),
            }
        ),
        flush=True,
    )
