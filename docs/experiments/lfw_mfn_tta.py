"""MobileFaceNet on LFW: flip averaging and centering (mean of calibration-fold people's embeddings subtracted)."""

import json
import os
import sys
import time
from pathlib import Path

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
n_cal = len(groups.calibration[1])
detname = sys.argv[1]
embname = sys.argv[2] if len(sys.argv) > 2 else "mobilefacenet"
det_dir = M / detname / "fp32"
det = create_detector(det_dir)
det_sha = Manifest.load(det_dir).sha256
faces = [
    f
    for _, ph in (groups.calibration, groups.shared, groups.evaluation)
    for f in detect_photos(det, det_sha, ph, CACHE).faces
]
emb = Embedder.from_model_dir(M / embname / "fp32")
d = int(emb.manifest.embedding_size)
plain = np.full((len(photos), d), np.nan, np.float32)
flip = plain.copy()
t0 = time.time()
for i, (p, f) in enumerate(zip(photos, faces)):
    if f is None:
        continue
    crop = emb.align(read_image(p), f)
    plain[i] = emb.embed_crop(crop).vector
    flip[i] = emb.embed_crop(np.ascontiguousarray(crop[:, ::-1])).vector


def unit(v):
    return v / np.linalg.norm(v, axis=1, keepdims=True)


both = unit(plain + flip)


def report(name, v):
    tf = ten_fold(view2, PhotoVectors(photos, people, v.astype(np.float32)))
    print(
        json.dumps(
            {
                "pipeline": f"{detname}+{embname}",
                "mode": name,
                "mean": round(tf.mean, 5),
                "std": round(tf.std, 5),
                "cal_folds_mean": round(float(np.mean(tf.fold_accuracy[:5])), 5),
                "tar1e-3": round(tf.tar_at_far_1e3, 4),
            }
        ),
        flush=True,
    )


for name, v in (("plain", plain), ("flip", both)):
    report(name, v)
    mu = np.nanmean(v[:n_cal], axis=0)  # calibration people only (folds 1-5, minus the shared three)
    report(name + "+centered", unit(v - mu))
print("s", round(time.time() - t0))
