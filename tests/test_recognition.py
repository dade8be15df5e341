"""Recognition targets on real photos with the converted models, through the device pipeline only.

This file imports agent code only, so it also runs in the tflite-runtime 2.14 venv (numpy<2, no
TensorFlow): `make test` runs it under both runtimes and the same bounds must hold in each.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from facelite.model.runtime import resolve_runtime
from facelite.tools.evaluate import evaluate
from facelite.vision.detect import create_detector
from facelite.vision.embed import Embedder
from facelite.vision.imageio import read_image

REPO = Path(__file__).resolve().parents[1]
PAIRS = [("blazeface", "mobilefacenet"), ("mtcnn", "facenet")]


def recommended(models_dir: Path, name: str) -> Path:
    index = json.loads((models_dir / "index.json").read_text())
    return models_dir / name / index["models"][name]["recommended_variant"]


@pytest.mark.parametrize(("det", "emb"), PAIRS)
def test_identification_top1_and_no_stranger_accepted(models_dir: Path, faces_dir: Path, det: str, emb: str) -> None:
    """Enroll half of each person's photos, probe the rest; held-out people must all come out unknown."""
    detector = create_detector(recommended(models_dir, det))
    embedder = Embedder.from_model_dir(recommended(models_dir, emb))
    result = evaluate(detector, embedder, faces_dir / "people")
    ident = result.identification
    assert result.faces_found == result.photos, result.missed
    assert ident["probes"] >= 30 and ident["stranger_probes"] >= 10
    assert ident["top1"] >= 0.95, ident
    assert ident["misidentified"] == 0, ident
    assert ident["stranger_false_accept_rate"] == 0.0, ident["stranger_false_accepts"]
    assert result.verification["auc"] >= 0.999


def test_runtimes_give_the_same_embeddings(models_dir: Path, faces_dir: Path) -> None:
    """The embedding of a real face in this runtime vs the other runtime (within quantisation noise)."""
    other = "tflite-runtime" if resolve_runtime() == "ai-edge-litert" else "ai-edge-litert"
    python = os.environ.get("FACELITE_OTHER_PYTHON") or (
        str(REPO / ".venv-legacy/bin/python") if other == "tflite-runtime" else str(REPO / ".venv/bin/python")
    )
    photos = sorted((faces_dir / "people").glob("*/*.jpg"))[:6]
    det_dir, emb_dir = recommended(models_dir, "blazeface"), models_dir / "mobilefacenet" / "int8"
    code = (
        "import sys, json; from facelite.vision.detect import create_detector;"
        "from facelite.vision.embed import Embedder;"
        "from facelite.vision.imageio import read_image;"
        f"d = create_detector({str(det_dir)!r}, runtime={other!r});"
        f"e = Embedder.from_model_dir({str(emb_dir)!r}, runtime={other!r});"
        "out = []\n"
        f"for p in {[str(p) for p in photos]!r}:\n"
        "    im = read_image(p); f = max(d.detect(im), key=lambda f: f.bbox.area)\n"
        "    out.append(e.embed(im, f).vector.tolist())\n"
        "print(json.dumps(out))"
    )
    proc = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = np.array(json.loads(proc.stdout.strip().splitlines()[-1]), np.float32)
    detector, embedder = create_detector(det_dir), Embedder.from_model_dir(emb_dir)
    ours = []
    for p in photos:
        image = read_image(p)
        ours.append(embedder.embed(image, max(detector.detect(image), key=lambda f: f.bbox.area)).vector)
    cos = (np.stack(ours) * theirs).sum(1)
    assert cos.min() >= 0.97, cos


def test_this_process_uses_the_runtime_it_was_asked_for() -> None:
    expected = os.environ.get("FACELITE_RUNTIME", "ai-edge-litert")
    assert resolve_runtime() == expected
