"""Open-set thresholds: the per-visit stranger rate becomes a per-comparison threshold for the gallery's size."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import numpy as np
import pytest

from facelite.errors import ModelError
from facelite.model.manifest import Alignment, Calibration, Manifest, Preprocessing, Source
from facelite.model.metrics import accept_rate, calibration_curve, per_comparison_far, visit_far
from facelite.recognition.matching import IndexBuilder, Match, Matcher
from facelite.recognition.openset import curve_threshold, resolve_threshold

SHA = "a" * 64


def make_manifest(calibration: dict[str, Calibration] | None = None, thresholds: dict[str, float] | None = None):
    return Manifest(
        name="mobilefacenet",
        kind="embedder",
        variant="fp32",
        graphs={},
        source=Source("npm", "pkg", "1", "m.json", SHA, "tfjs"),
        preprocessing=Preprocessing(),
        alignment=Alignment("arcface", [112, 112]),
        embedding_size=128,
        thresholds=thresholds or {},
        calibration=calibration or {},
    )


@pytest.fixture(scope="module")
def scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.normal(0.7, 0.1, 3_000), rng.normal(0.0, 0.12, 2_000_000)


@pytest.fixture(scope="module")
def calibration(scores: tuple[np.ndarray, np.ndarray]) -> Calibration:
    same, diff = scores
    return Calibration(
        "blazeface/fp32", "synthetic people", 10, 10, same.size, diff.size, calibration_curve(same, diff)
    )


def test_curve_threshold_is_exact_at_points_and_between_them(calibration: Calibration) -> None:
    for p in calibration.curve:
        assert curve_threshold(calibration, p.far) == (p.threshold, p.far)
    a, b = calibration.curve[3], calibration.curve[4]
    mid = math.sqrt(a.far * b.far)  # halfway on the log scale
    thr, held = curve_threshold(calibration, mid)
    assert held == mid and thr == pytest.approx((a.threshold + b.threshold) / 2)
    # Beyond the curve's reach: its strictest point, and the rate that point holds (not the one asked).
    assert curve_threshold(calibration, 1e-9) == (calibration.curve[-1].threshold, calibration.curve[-1].far)


def test_threshold_rises_with_the_gallery_and_holds_the_visit_rate(
    calibration: Calibration, scores: tuple[np.ndarray, np.ndarray]
) -> None:
    _, diff = scores
    manifest = make_manifest({"blazeface": calibration})
    previous = -1.0
    for templates in (1, 10, 100):
        o = resolve_threshold(manifest, detector="blazeface", stranger_accept_rate=1e-2, templates=templates)
        assert o.threshold > previous
        previous = o.threshold
        assert o.per_comparison_far == pytest.approx(per_comparison_far(1e-2, templates))
        assert o.expected_visit_far == pytest.approx(1e-2, rel=1e-6)
        # Checked against the impostor scores themselves: the per-comparison rate at that threshold is
        # close to what the curve promised (log-linear interpolation between measured points).
        measured = accept_rate(diff, o.threshold)
        assert measured == pytest.approx(o.per_comparison_far, rel=0.35)
        assert "synthetic people" in o.source


def test_rate_beyond_the_curve_is_clamped_and_said(calibration: Calibration, caplog: pytest.LogCaptureFixture) -> None:
    manifest = make_manifest({"blazeface": calibration})
    o = resolve_threshold(manifest, detector="blazeface", stranger_accept_rate=1e-3, templates=100_000)
    assert o.threshold == calibration.curve[-1].threshold
    assert o.expected_visit_far == pytest.approx(visit_far(calibration.curve[-1].far, 100_000))
    assert o.expected_visit_far > 1e-3
    assert "below the calibration's reach" in caplog.text


def test_other_detector_falls_back_with_a_warning(calibration: Calibration, caplog: pytest.LogCaptureFixture) -> None:
    manifest = make_manifest({"mtcnn": replace(calibration, detector="mtcnn/fp16")})
    o = resolve_threshold(manifest, detector="blazeface", stranger_accept_rate=1e-3, templates=5)
    assert "mtcnn/fp16" in o.source
    assert "no calibration through detector 'blazeface'" in caplog.text


def test_fixed_threshold_reports_what_it_means(calibration: Calibration) -> None:
    manifest = make_manifest({"blazeface": calibration})
    point = calibration.curve[6]
    o = resolve_threshold(
        manifest, detector="blazeface", stranger_accept_rate=1e-3, templates=10, fixed=point.threshold
    )
    assert o.threshold == point.threshold and o.target_visit_far is None
    assert o.expected_visit_far == pytest.approx(visit_far(point.far, 10))


def test_uncalibrated_model_uses_its_fixed_threshold_and_says_so() -> None:
    o = resolve_threshold(
        make_manifest(thresholds={"1e-3": 0.4}), detector="blazeface", stranger_accept_rate=1e-3, templates=10
    )
    assert o.threshold == 0.4 and "uncalibrated" in o.source
    assert o.expected_visit_far == pytest.approx(visit_far(1e-3, 10))
    with pytest.raises(ModelError, match="no calibration curve and no threshold"):
        resolve_threshold(make_manifest(), detector="blazeface", stranger_accept_rate=1e-3, templates=10)


def test_manifest_round_trip_and_refuses_a_curve_out_of_order(calibration: Calibration) -> None:
    manifest = make_manifest({"blazeface": calibration})
    again = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again.calibration == manifest.calibration
    data = manifest.to_dict()
    curve = data["calibration"]["blazeface"]["curve"]
    curve[2]["threshold"], curve[3]["threshold"] = curve[3]["threshold"], curve[2]["threshold"]
    with pytest.raises(ModelError, match="falling rates with rising thresholds"):
        Manifest.from_dict(data)
    data = manifest.to_dict()
    data["calibration"] = ["not", "a", "map"]
    with pytest.raises(ModelError, match="calibration must be an object"):
        Manifest.from_dict(data)
    data = manifest.to_dict()
    data["calibration"]["blazeface"]["curve"][0]["extra"] = 1
    with pytest.raises(ModelError, match="unknown key"):
        Manifest.from_dict(data)
    assert asdict(calibration.curve[0]).keys() == {"far", "threshold", "tar", "method"}


def test_the_gallery_accepts_at_the_threshold_itself() -> None:
    """One comparison rule everywhere: a score equal to the threshold is accepted (metrics use >= too)."""
    builder = IndexBuilder(2)
    builder.add("ada", np.array([1.0, 0.0], np.float32))
    index = builder.build()
    probe = np.array([0.6, 0.8], np.float32)
    score = float((index.matrix @ probe)[0])
    assert Matcher(threshold=score, margin=0.05).match(index, probe) == Match("ada", score, score + 1.0, "known", None)
    assert (
        Matcher(threshold=float(np.nextafter(np.float32(score), np.float32(2))), margin=0.05)
        .match(index, probe)
        .decision
        == "unknown"
    )
