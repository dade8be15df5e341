"""ONNX source path on a real model: YuNet (data dir models/) -> onnx2tf (own venv) -> fp32 .tflite.

On the real group photos, onnx2tf's SavedModel and our fp32 .tflite must compute what onnxruntime
computes from the ONNX file itself. Without the onnx venv this fails (it is a setup error, not a skip).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from facelite.converter.formats import FormatError
from facelite.converter.formats import onnx as onnx_format
from facelite.converter.formats.detect import detect_format, load_any
from facelite.converter.variants import get_variant
from facelite.model.runtime import TFLiteModel
from facelite.vision.imageio import list_images, read_image

pytestmark = pytest.mark.slow  # converts through onnx2tf in .venv-onnx: not in make test-fast

SIDE = 640  # yunet_s_640_640.onnx has a fixed [1,3,640,640] BGR 0-255 input


def _onnx_venv() -> Path:
    try:
        return onnx_format.onnx_python()
    except FormatError as exc:
        pytest.fail(f"{exc.one_line()} (the ONNX tests need it)")


def _letterbox(img: np.ndarray) -> np.ndarray:
    """Scale the photo into a 640x640 black canvas, keeping its aspect (as a YuNet caller would)."""
    scale = SIDE / max(img.shape[:2])
    small = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((SIDE, SIDE, 3), np.uint8)
    canvas[: small.shape[0], : small.shape[1]] = small
    return canvas


@pytest.fixture(scope="module")
def yunet(data_dir: Path) -> Path:
    path = data_dir / "models" / "yunet_s_640_640.onnx"
    assert path.is_file(), f"YuNet ONNX missing from the data dir: {path}"
    return path


@pytest.fixture(scope="module")
def scenes(faces_dir: Path) -> list[np.ndarray]:
    photos = [_letterbox(read_image(p)) for p in list_images(faces_dir / "scenes")]
    assert len(photos) >= 5
    return photos


@pytest.fixture(scope="module")
def onnx_outputs(yunet: Path, scenes: list[np.ndarray]) -> list[list[np.ndarray]]:
    _onnx_venv()
    nchw = [[img.astype(np.float32).transpose(2, 0, 1)[None]] for img in scenes]
    return onnx_format.run_onnxruntime(yunet, nchw)


@pytest.fixture(scope="module")
def converted(yunet: Path, faces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> onnx_format.OnnxConversion:
    _onnx_venv()
    people = [read_image(p) for d in sorted((faces_dir / "people").iterdir())[:20] for p in list_images(d)[:1]]
    # A fresh cache: the test runs onnx2tf itself, not a result left by an earlier run.
    return onnx_format.convert_to_saved_model(yunet, sample_images=people, cache=tmp_path_factory.mktemp("onnx2tf"))


def test_yunet_is_detected_as_onnx(yunet: Path) -> None:
    assert detect_format(yunet) == "onnx"


def test_onnx2tf_leaves_the_source_untouched_and_records_io(yunet: Path, converted: onnx_format.OnnxConversion) -> None:
    before = yunet.read_bytes()
    assert [t.name for t in converted.inputs] == ["input"]
    assert converted.inputs[0].shape == [1, 3, SIDE, SIDE]
    names = [t.name for t in converted.outputs]
    assert len(names) == 12 and {n.split("_")[0] for n in names} == {"cls", "obj", "bbox", "kps"}
    assert (converted.saved_model / "saved_model.pb").is_file()
    assert yunet.read_bytes() == before


def test_saved_model_matches_onnxruntime(
    converted: onnx_format.OnnxConversion, scenes: list[np.ndarray], onnx_outputs: list[list[np.ndarray]]
) -> None:
    from facelite.converter.formats import saved_model

    graph = saved_model.load_graph(converted.saved_model)
    assert graph.input_shape == [1, SIDE, SIDE, 3]  # onnx2tf turned NCHW into NHWC
    worst = 0.0
    for img, expected in zip(scenes, onnx_outputs):
        got = graph.reference.run(img.astype(np.float32)[None])
        assert [g.shape for g in got] == [e.shape for e in expected]
        worst = max(worst, *(float(np.max(np.abs(g - e))) for g, e in zip(got, expected)))
    assert worst < 1e-4, f"SavedModel differs from onnxruntime by {worst}"


def test_fp32_tflite_matches_onnxruntime_on_real_scenes(
    yunet: Path,
    converted: onnx_format.OnnxConversion,
    scenes: list[np.ndarray],
    onnx_outputs: list[list[np.ndarray]],
    tmp_path: Path,
) -> None:
    graph = load_any(yunet, cache=converted.saved_model.parent.parent)
    converter = graph.make_converter()
    get_variant("fp32").configure(converter, None)
    out = tmp_path / "yunet_fp32.tflite"
    out.write_bytes(converter.convert())
    model = TFLiteModel(out, runtime="ai-edge-litert")
    assert model.input_shape() == (1, SIDE, SIDE, 3)
    names = [t.name for t in converted.outputs]
    faces_seen = 0
    for img, expected in zip(scenes, onnx_outputs):
        got = model.run(img.astype(np.float32)[None])
        for g, e in zip(got, expected):
            # Scores are sigmoids in [0,1]; box/keypoint regressions are in anchor units.
            np.testing.assert_allclose(g, e, rtol=1e-3, atol=2e-4)
        best = max(
            float(np.max(np.sqrt(got[names.index(f"cls_{s}")] * got[names.index(f"obj_{s}")]))) for s in (8, 16, 32)
        )
        faces_seen += best > 0.6
    # The comparison is on real faces, not on an all-background output.
    assert faces_seen >= len(scenes) // 2


def test_missing_onnx_venv_names_the_setup_step(yunet: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(onnx_format.ONNX_PYTHON_ENV, str(tmp_path / "no-venv" / "bin" / "python"))
    with pytest.raises(FormatError) as err:
        load_any(yunet, cache=tmp_path)
    assert "make setup-onnx" in err.value.one_line()
    assert "\n" not in err.value.one_line()
