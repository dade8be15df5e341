"""`make bench` in --quick mode: the real bench (real photos, models, runtimes, mosquitto, peers) on a few photos.

Checks the report's structure, and that every figure has its baseline beside it with positive numbers.
Timings are not asserted: the machine is shared and --quick runs few repetitions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, models_dir: Path) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "facelite.tools.bench", "--quick", "--models", str(models_dir),
         "--data-dir", str(data_dir), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    return {"out": out, "report": report, "stdout": proc.stdout, "models_dir": models_dir}


def positive_latency(lat: dict[str, Any] | None) -> bool:
    return lat is not None and lat["p50_ms"] > 0 and lat["p95_ms"] >= lat["p50_ms"] and lat["runs"] >= 1


def positive_speed(speed: dict[str, Any] | None) -> bool:
    return speed is not None and positive_latency(speed["frame"]) and positive_latency(speed["detect"])


def good_accuracy(acc: dict[str, Any] | None) -> bool:
    return acc is not None and 0 < acc["auc"] <= 1 and acc["faces_found"] > 0 and acc["pairs_same"] > 0


def test_report_files_and_charts_are_written(bench: dict[str, Any]) -> None:
    out, report = bench["out"], bench["report"]
    for name in ("report.json", "report.md", "README-snippet.md"):
        assert (out / name).stat().st_size > 0, name
    assert report["charts"], "no charts"
    for chart in report["charts"]:
        assert (out / chart).read_bytes()[:8] == PNG, chart
    assert {"scaling_faces.png", "scaling_resolution.png"} <= set(report["charts"])
    snippet = (out / "README-snippet.md").read_text()
    assert "face_recognition" in snippet and "scaling_faces.png" in snippet
    assert report["environment"]["quick"] is True


def test_every_built_variant_is_timed_in_both_runtimes_beside_its_float_source(bench: dict[str, Any]) -> None:
    models_dir: Path = bench["models_dir"]
    built = {(p.parent.parent.name, p.parent.name) for p in models_dir.glob("*/*/manifest.json")}
    rows = bench["report"]["models"]
    for runtime in ("ai-edge-litert", "tflite-runtime"):
        for threads in (1, 2):
            got = {(r["model"], r["variant"]) for r in rows if r["runtime"] == runtime and r["threads"] == threads}
            assert got == built, (runtime, threads)
    for r in rows:
        m, b = r["measured"], r["baseline"]
        assert b["variant"] == "source" and b["threads"] == r["threads"] and not b["error"], r["model"]
        assert b["size_bytes"] > 0 and b["load_ms"] > 0
        if r["runtime"] == "ai-edge-litert":
            assert not m["error"], (r["model"], r["variant"], m["error"])
        if m["error"]:
            continue  # a variant a runtime cannot run is reported with its reason
        assert m["size_bytes"] > 0 and m["load_ms"] > 0
        assert [g["graph"] for g in m["graphs"]] == [g["graph"] for g in b["graphs"]]
        for g in [*m["graphs"], *b["graphs"]]:
            assert positive_latency(g["latency"]) and all(s > 0 for s in g["input_shape"])


def test_peers_are_measured_beside_our_pipeline_or_named_with_a_reason(bench: dict[str, Any]) -> None:
    peers = bench["report"]["peers"]
    names = " ".join(p["name"] for p in peers)
    assert "HOG" in names and "CNN" in names and "YuNet" in names
    for p in peers:
        if p["status"] == "unavailable":
            assert p["reason"], p["name"]
            continue
        assert positive_speed(p["speed"]) and positive_speed(p["baseline_speed"]), p["name"]
        assert p["speed"]["faces_per_frame"] > 0 and p["baseline_speed"]["face_ms"] > 0
        assert good_accuracy(p["baseline_accuracy"]), p["name"]
        if p["status"] == "measured":
            assert good_accuracy(p["accuracy"]), p["name"]
        else:
            assert p["reason"], p["name"]


def test_pipelines_stand_beside_their_float_sources_with_quantisation_loss(bench: dict[str, Any]) -> None:
    report = bench["report"]
    pipelines = report["pipelines"]
    assert {p["measured"]["spec"]["embedder"] for p in pipelines} == {"facenet", "mobilefacenet"}
    facenet = next(p for p in pipelines if p["measured"]["spec"]["embedder"] == "facenet")
    assert facenet["measured"]["spec"]["embedder_variant"] == "int8"
    for p in pipelines:
        assert p["baseline"]["spec"]["detector_variant"] == "source"
        assert p["baseline"]["spec"]["embedder_variant"] == "source"
        assert good_accuracy(p["measured"]["accuracy"]) and good_accuracy(p["baseline"]["accuracy"])
        expected = p["measured"]["accuracy"]["auc"] - p["baseline"]["accuracy"]["auc"]
        assert p["auc_delta"] == pytest.approx(expected)
    int8 = {q["embedder"] for q in report["quantisation"] if q["variant"] == "int8"}
    assert int8 == {"facenet", "mobilefacenet"}
    for q in report["quantisation"]:
        assert 0 < q["auc"] <= 1 and 0 < q["auc_float_source"] <= 1
        assert q["loss"] == pytest.approx(q["auc"] - q["auc_float_source"])


def test_agent_end_to_end_beside_the_float_agent(bench: dict[str, Any]) -> None:
    report = bench["report"]
    figures = report["agent_e2e"]
    assert sorted(f["faces"] for f in figures) == [1, 5]
    for f in figures:
        for side in (f["measured"], f["baseline"]):
            assert not side["error"], side["error"]
            assert side["fps"] > 0 and side["pipeline_fps_in_view"] > 0 and side["faces_detected_in_view"] > 0
            assert side["stage_ms"]["detect"] > 0 and side["stage_ms"]["embed"] > 0
            assert side["events"] > 0
            assert positive_latency(side["latency"]) and positive_latency(side["delivery"])
            assert side["rss_peak_mb"] > 0
        assert f["measured"]["tensorflow_imported"] is False  # the device agent never imports TensorFlow
        assert f["baseline"]["tensorflow_imported"] is True
    assert all(v > 0 for v in report["agent_rss_mb"].values())
    assert any(k.startswith("agent service (python -m facelite") for k in report["agent_rss_mb"])
    assert report["environment"]["page_cache"].startswith("page cache dropped for ")
    names = [t["name"] for t in report["targets"]]
    assert any("fps" in n for n in names) and any("RSS" in n for n in names)
    for t in report["targets"]:
        assert isinstance(t["passed"], bool) and t["op"] in (">=", "<=")


def test_gallery_and_scaling_figures_have_their_baselines(bench: dict[str, Any]) -> None:
    report = bench["report"]
    assert report["gallery"]
    for g in report["gallery"]:
        assert g["templates"] > 0 and positive_latency(g["measured"]) and positive_latency(g["matcher_only"])
        assert positive_latency(g["baseline"])
    axes = {s["axis"] for s in report["scaling"]}
    assert axes == {"faces", "resolution"}
    for s in report["scaling"]:
        assert len(s["measured"]) == 2, s["x"]
        assert all(positive_speed(v) for v in s["measured"].values())
        assert positive_speed(s["baseline"]), (s["axis"], s["x"])


def test_headline_compares_our_fastest_gated_pipeline_with_face_recognition(bench: dict[str, Any]) -> None:
    h = bench["report"]["headline"]
    assert h is not None
    gated = [c for c in h["candidates"] if c["passed_gates"] and c["auc"] is not None]
    assert h["ours"] == min(gated, key=lambda c: c["frame_ms"])["name"]
    assert h["ours_frame_ms"] > 0 and h["peer_frame_ms"] > 0
    assert h["speedup"] == pytest.approx(h["peer_frame_ms"] / h["ours_frame_ms"], rel=1e-2)
    assert 0 < h["ours_auc"] <= 1 and 0 < h["peer_auc"] <= 1
    assert [t["key"] for t in h["targets"]] == ["speedup", "auc"]
    speedup, auc = h["targets"]
    assert speedup["measured"] == pytest.approx(h["speedup"], rel=1e-2) and speedup["limit"] == 10.0
    assert auc["measured"] == pytest.approx(h["ours_auc"] - h["peer_auc"], abs=1e-6) and auc["limit"] == 0.0


def meets(t: dict[str, Any]) -> bool:
    return t["measured"] >= t["limit"] if t["op"] == ">=" else t["measured"] <= t["limit"]


def test_targets_hold_the_measured_figures_and_their_verdicts(bench: dict[str, Any]) -> None:
    report = bench["report"]
    targets = {t["key"]: t for t in report["targets"]}
    assert sorted(targets) == ["auc", "fps", "rss", "speedup"]
    one_face = next(f for f in report["agent_e2e"] if f["faces"] == 1)
    assert targets["fps"]["measured"] == pytest.approx(one_face["measured"]["fps"], rel=1e-6)
    assert (targets["fps"]["op"], targets["fps"]["limit"]) == (">=", 25.0)
    service_rss = next(v for k, v in report["agent_rss_mb"].items() if k.startswith("agent service"))
    assert (targets["rss"]["op"], targets["rss"]["limit"]) == ("<=", 120.0)
    if service_rss > 0:
        assert targets["rss"]["measured"] == pytest.approx(service_rss, rel=1e-6)
    else:  # not measured: recorded as missed, with the reason in its name
        assert targets["rss"]["passed"] is False and "(" in targets["rss"]["name"]
    for t in report["targets"]:
        if t["measured"] or t["key"] != "rss":
            assert t["passed"] == meets(t), t
        # The run prints each verdict; a quick run says a miss does not fail it, and exits 0 either way.
        assert f"  {'PASS' if t['passed'] else 'FAIL'}  {t['name']}: " in bench["stdout"]
    missed = [t for t in report["targets"] if not t["passed"]]
    assert ("quick run: its figures are not to be read" in bench["stdout"]) == bool(missed)


def check(report: dict[str, Any], path: Path) -> subprocess.CompletedProcess[str]:
    """`python -m facelite.tools.bench --check REPORT`: the verdict a full `make bench` exits with."""
    path.write_text(json.dumps(report))
    return subprocess.run([sys.executable, "-m", "facelite.tools.bench", "--check", str(path)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)  # fmt: skip


def test_the_bench_verdict_of_a_real_report_and_of_one_with_a_target_out_of_reach(
    bench: dict[str, Any], tmp_path: Path
) -> None:
    report = bench["report"]
    real = check(report, tmp_path / "real.json")
    assert real.returncode == (0 if all(t["passed"] for t in report["targets"]) else 1), real.stdout + real.stderr
    edited = json.loads(json.dumps(report))
    fps = next(t for t in edited["targets"] if t["key"] == "fps")
    fps["limit"] = fps["measured"] * 1000 + 1  # the figure stays, the limit moves out of reach
    out = check(edited, tmp_path / "edited.json")
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"  FAIL  {fps['name']}: " in out.stdout and fps["name"] in out.stderr


ROUND_TARGETS = [
    ("fps", "agent fps", 60.0, ">=", 25.0, "fps"),
    ("rss", "agent service (python -m facelite) peak RSS", 100.0, "<=", 120.0, "MB"),
    ("speedup", "speed-up", 15.0, ">=", 10.0, "x"),
    ("auc", "AUC minus face_recognition's AUC", 0.0, ">=", 0.0, ""),
]


def test_bench_exit_code_is_1_when_a_target_is_missed_or_not_measured(tmp_path: Path) -> None:
    """Targets built by the bench's own Target.check, judged by `--check` (no models needed)."""
    from facelite.tools.bench.common import to_jsonable
    from facelite.tools.bench.report import Target

    met = [to_jsonable(Target.check(*t)) for t in ROUND_TARGETS]
    ok = check({"targets": met}, tmp_path / "met.json")
    assert ok.returncode == 0 and ok.stdout.count("  PASS  ") == 4 and not ok.stderr, ok.stdout + ok.stderr
    slow = [to_jsonable(Target.check("fps", "agent fps", 20.0, ">=", 25.0, "fps")), *met[1:]]
    missed = check({"targets": slow}, tmp_path / "slow.json")
    assert missed.returncode == 1 and "  FAIL  agent fps: 20 fps (target >= 25)" in missed.stdout
    assert "1 target(s) missed: agent fps" in missed.stderr
    unmeasured = check({"targets": met[:2]}, tmp_path / "no-headline.json")  # face_recognition did not run
    assert unmeasured.returncode == 1 and "2 target(s) missed" in unmeasured.stderr
    assert "per-frame speed-up over face_recognition HOG (not measured)" in unmeasured.stderr
    broken = check({"targets": [{"name": "x"}]}, tmp_path / "broken.json")
    assert broken.returncode == 2 and broken.stderr.startswith("error: malformed target"), broken.stderr


def _cached_bytes(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return int(out.stdout.strip())


def test_page_cache_of_shared_libraries_is_dropped_and_other_files_are_left(tmp_path: Path) -> None:
    from facelite.tools.bench.pagecache import evict

    lib, versioned, other = tmp_path / "libx.so", tmp_path / "deep" / "liby.so.1.2", tmp_path / "notes.txt"
    versioned.parent.mkdir()
    for path in (lib, versioned, other):
        path.write_bytes(os.urandom(1 << 20))  # just written: in the page cache
    assert all(_cached_bytes(p) > 0 for p in (lib, versioned, other))
    result = evict([tmp_path])
    assert (result.files, result.mb) == (2, 2.0)
    assert _cached_bytes(lib) == 0 and _cached_bytes(versioned) == 0
    assert _cached_bytes(other) > 0


def test_the_agent_pipeline_measured_is_the_one_the_pi_profile_ships_not_the_x86_recommendation() -> None:
    from types import SimpleNamespace

    from facelite.tools.bench.cli import make_plan
    from facelite.tools.bench.common import BenchError, profile_pipeline

    rec = {"blazeface": "fp32", "mtcnn": "fp16", "facenet": "int8", "mobilefacenet": "int8"}
    built = {
        "blazeface": ["fp32"],
        "mtcnn": ["fp32", "fp16"],
        "facenet": ["fp32", "int8"],
        "mobilefacenet": ["fp32", "int8"],
    }
    artifacts = [SimpleNamespace(model=m, variant=v) for m, vs in built.items() for v in vs]
    # deploy/devices/pi.toml pins MobileFaceNet fp32 (chosen on LFW calibration people); the rest is recommended
    pi = profile_pipeline(rec)
    assert pi.variants == {"blazeface": "fp32", "mobilefacenet": "fp32"}
    assert pi.label == "blazeface/fp32 + mobilefacenet/fp32"
    plan = make_plan(artifacts, rec, profile_pipeline(rec))
    assert (plan.device.detector_variant, plan.device.embedder_variant) == ("fp32", "fp32")
    assert plan.main[1] == plan.device and plan.main[0].embedder_variant == "int8"
    assert make_plan(artifacts, rec).device.embedder_variant == "int8"
    missing = [a for a in artifacts if (a.model, a.variant) != ("mobilefacenet", "fp32")]
    with pytest.raises(BenchError, match="not built: mobilefacenet/fp32: run"):
        make_plan(missing, rec, profile_pipeline(rec))
    no_facenet_int8 = [a for a in artifacts if (a.model, a.variant) != ("facenet", "int8")]
    with pytest.raises(BenchError, match="not built: facenet/int8: run"):
        make_plan(no_facenet_int8, {**rec, "facenet": "int8"})
