"""Face alignment: a similarity transform of the landmarks onto the embedder's template.

The template and crop size come from the embedder's manifest (``alignment``), so the device aligns
exactly the way the converter calibrated and verified the model.
"""

from __future__ import annotations

import cv2
import numpy as np

from facelite.vision.geometry import Face

# The ArcFace / InsightFace 5-point template for a 112x112 crop (image-left eye first).
_ARCFACE_112 = {
    "left_eye": (38.2946, 51.6963),
    "right_eye": (73.5318, 51.5014),
    "nose": (56.0252, 71.7366),
    "mouth_left": (41.5493, 92.3655),
    "mouth_right": (70.7299, 92.2041),
}
_ARCFACE_112["mouth_center"] = (
    (_ARCFACE_112["mouth_left"][0] + _ARCFACE_112["mouth_right"][0]) / 2,
    (_ARCFACE_112["mouth_left"][1] + _ARCFACE_112["mouth_right"][1]) / 2,
)

# name -> (points in a reference square, side of that square)
TEMPLATES: dict[str, tuple[dict[str, tuple[float, float]], float]] = {
    "arcface": (_ARCFACE_112, 112.0),
}

# Prefer the five MTCNN-style points; fall back to what BlazeFace provides.
_POINT_SETS = (
    ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right"),
    ("left_eye", "right_eye", "nose", "mouth_center"),
)


def template_points(template: str, size: tuple[int, int], names: tuple[str, ...]) -> np.ndarray:
    """Template landmarks scaled to a ``size`` = (width, height) crop."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown alignment template {template!r}; known: {sorted(TEMPLATES)}")
    points, side = TEMPLATES[template]
    w, h = size
    return np.array([(points[n][0] * w / side, points[n][1] * h / side) for n in names], np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst (Umeyama)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    cov = d_c.T @ s_c / n
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var_s = (s_c**2).sum() / n
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]]).astype(np.float32)


def align_face(image: np.ndarray, face: Face, template: str, size: tuple[int, int]) -> np.ndarray:
    """Warp ``face`` out of ``image`` onto the template; returns an HxWx3 crop of the same dtype/colour order."""
    for names in _POINT_SETS:
        if all(n in face.landmarks for n in names):
            break
    else:
        raise ValueError(
            f"face has landmarks {sorted(face.landmarks)}; alignment needs {_POINT_SETS[0]} or {_POINT_SETS[1]}"
        )
    matrix = similarity_transform(face.landmark_array(names), template_points(template, size, names))
    return cv2.warpAffine(
        image, matrix, (int(size[0]), int(size[1])), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
