"""The manifest is the agent's contract: anything that does not match it is refused with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from facelite.errors import ModelError
from facelite.model.manifest import Manifest
from facelite.vision.embed import Embedder


@pytest.fixture()
def facenet_copy(models_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "facenet-int8"
    shutil.copytree(models_dir / "facenet" / "int8", dst)
    return dst


def test_built_manifest_round_trips_and_verifies(models_dir: Path) -> None:
    m = Manifest.load(models_dir / "facenet" / "int8")
    assert Manifest.from_dict(m.to_dict()) == m
    m.verify_files(models_dir / "facenet" / "int8")
    assert m.embedding_size == 512
    assert m.alignment is not None and m.alignment.size == [160, 160]
    assert m.preprocessing.mean == 127.5 and m.preprocessing.std == 128.0
    assert set(m.thresholds) == {"1e-2", "1e-3"}


def test_unknown_key_is_refused_with_its_name(facenet_copy: Path) -> None:
    data = json.loads((facenet_copy / "manifest.json").read_text())
    data["preprocessing"]["prewhiten"] = True
    (facenet_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"unknown key\(s\) \['prewhiten'\] at preprocessing"):
        Manifest.load(facenet_copy)


def test_truncated_model_is_refused(facenet_copy: Path) -> None:
    model = facenet_copy / "model.tflite"
    model.write_bytes(model.read_bytes()[:1000])
    with pytest.raises(ModelError, match="truncated") as exc:
        Embedder.from_model_dir(facenet_copy)
    assert "\n" not in str(exc.value) and str(model) in str(exc.value)


def test_replaced_model_is_refused_by_sha256(facenet_copy: Path, models_dir: Path) -> None:
    data = json.loads((facenet_copy / "manifest.json").read_text())
    # Same size, different bytes: a tampered file.
    model = facenet_copy / "model.tflite"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model.write_bytes(bytes(raw))
    assert data["graphs"]["model"]["size_bytes"] == len(raw)
    with pytest.raises(ModelError, match=r"sha256 .* does not match manifest"):
        Embedder.from_model_dir(facenet_copy)


def test_wrong_model_for_manifest_is_refused(facenet_copy: Path, models_dir: Path) -> None:
    """A MobileFaceNet file put where the manifest expects FaceNet: hashes and shapes both disagree."""
    other = models_dir / "mobilefacenet" / "fp32" / "model.tflite"
    shutil.copyfile(other, facenet_copy / "model.tflite")
    data = json.loads((facenet_copy / "manifest.json").read_text())
    data["graphs"]["model"]["sha256"] = Manifest.load(models_dir / "mobilefacenet" / "fp32").graphs["model"].sha256
    data["graphs"]["model"]["size_bytes"] = other.stat().st_size
    (facenet_copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"input shape \[1, 112, 112, 3\] does not match manifest \[1, 160, 160, 3\]"):
        Embedder.from_model_dir(facenet_copy)


def test_missing_manifest_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"manifest not found.*make convert"):
        Manifest.load(tmp_path)


def test_invalid_json_names_the_line(facenet_copy: Path) -> None:
    (facenet_copy / "manifest.json").write_text('{\n  "name": "facenet",\n  oops\n}')
    with pytest.raises(ModelError, match=r"not valid JSON.*line 3"):
        Manifest.load(facenet_copy)
