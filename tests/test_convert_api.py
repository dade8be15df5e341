"""`convert()` as a Python function (converter/api.py): options checked before any work, the CLI a thin layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facelite.converter.api import DEFAULT_MODELS, ConvertOptions, convert
from facelite.converter.build import Gates
from facelite.converter.cli import parse_args


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"models": ("nosuchnet",)}, "unknown model 'nosuchnet': choose from blazeface"),
        ({"models": ()}, "unknown model (none given)"),
        ({"calibration_count": 0}, "calibration_count must be >= 1"),
        ({"source": Path("my.onnx")}, "source= needs name="),
        ({"source": Path("my.onnx"), "name": "mine", "std": 0.0}, "std must be > 0"),
        ({"min_mean_cosine": 1.5}, "min_mean_cosine must be in (0, 1]"),
    ],
)
def test_misuse_fails_before_any_work_naming_the_fix(kwargs: dict, says: str) -> None:
    with pytest.raises(ValueError) as info:
        ConvertOptions(**kwargs)
    assert says in str(info.value)


def test_the_command_line_maps_one_to_one_onto_the_options() -> None:
    args = parse_args(["--models", "blazeface,mobilefacenet", "--variants", "fp32", "--out", "x", "-v"])
    options = ConvertOptions.from_args(args)
    assert options.models == ["blazeface", "mobilefacenet"] and options.variants == ["fp32"]
    assert options.out == Path("x") and options.gates == Gates()
    assert ConvertOptions.from_args(parse_args([])) == ConvertOptions(models=list(DEFAULT_MODELS))


@pytest.mark.slow  # a real conversion (registry package, TensorFlow, verification)
def test_convert_builds_verifies_and_reports_one_model(tmp_path: Path, data_dir: Path) -> None:
    """A real conversion through the function: BlazeFace fp32 (the smallest model) from its registry package."""
    result = convert(
        ConvertOptions(
            models=("blazeface",),
            variants=("fp32",),
            out=tmp_path,
            data_dir=data_dir,
            no_legacy_check=True,
            no_open_set_calibration=True,
        )
    )
    (report,) = result.reports
    assert result.failed == [] and report.recommended_variant == "fp32" and result.calibration == []
    manifest = json.loads((tmp_path / "blazeface" / "fp32" / "manifest.json").read_text())
    assert (
        manifest["kind"] == "detector"
        and (tmp_path / "blazeface" / "fp32" / manifest["graphs"]["model"]["file"]).is_file()
    )
    assert json.loads((tmp_path / "index.json").read_text())["models"]["blazeface"]["recommended_variant"] == "fp32"
