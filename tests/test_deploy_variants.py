"""Which variant a device gets (deploy/variants.py): pinned, else fewest instructions on the profile's CPU as
`make bench-arm` recorded them for these very artifacts, else make convert's x86 choice — with real manifests and
artifacts of `make convert`, and the real device profiles."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from facelite.deploy.bundle import RELEASE_PLACEHOLDER, BundleError, agent_config, check_config, choose_models
from facelite.deploy.profile import DEVICES_DIR, load_profile, render_toml
from facelite.deploy.variants import BY_CPU_FILE, MIN_SAVING, fewest_instructions, pick_variant, write_by_cpu


@pytest.fixture()
def models(models_dir: Path, tmp_path: Path) -> Path:
    """A copy of the converted blazeface, mtcnn and mobilefacenet (every built variant) with their index entries."""
    index = json.loads((models_dir / "index.json").read_text())
    names = ("blazeface", "mtcnn", "mobilefacenet")
    for name in names:
        shutil.copytree(models_dir / name, tmp_path / name, ignore=shutil.ignore_patterns(BY_CPU_FILE))
    kept = {"models": {k: v for k, v in index["models"].items() if k in names}}
    (tmp_path / "index.json").write_text(json.dumps(kept))
    return tmp_path


def entry(models: Path, name: str) -> dict:
    return json.loads((models / "index.json").read_text())["models"][name]


def other_variant(models: Path, name: str) -> str:
    """A built variant that is not make convert's recommendation (the case per-CPU figures must be able to win)."""
    e = entry(models, name)
    others = [v for v in e["variants"] if v != e["recommended_variant"]]
    if not others:
        pytest.fail(f"{name} has a single built variant; make convert builds fp32 and int8")
    return others[0]


def test_fewest_instructions_breaks_ties_by_name() -> None:
    assert fewest_instructions({"int8": 60.0, "fp32": 95.0}) == "int8"
    assert fewest_instructions({"int8": 95.0, "fp32": 95.0}) == "fp32"
    assert fewest_instructions({"int8": 95.0, "fp16": 95.0}) == "fp16"  # no fp32 measured: the first name
    with pytest.raises(ValueError, match="no variant measured"):
        fewest_instructions({})


def test_another_variant_must_save_a_clear_share_of_fp32s_instructions() -> None:
    """Counts are work, not time: fp32 (closest to its source) stays unless another variant saves MIN_SAVING."""
    fp32 = 60_000_000.0
    just_under = fp32 * (1 - MIN_SAVING) + 1
    assert fewest_instructions({"fp32": fp32, "fp16-arith": fp32 - 1_400}) == "fp32"  # BlazeFace on an A72
    assert fewest_instructions({"fp32": fp32, "int8": just_under}) == "fp32"
    assert fewest_instructions({"fp32": fp32, "int8": fp32 * (1 - MIN_SAVING)}) == "int8"
    # the cheapest one wins even where a dearer one alone would not clear the margin
    assert fewest_instructions({"fp32": fp32, "fp16": just_under, "int8": fp32 * 0.5}) == "int8"
    # a variant dearer than fp32 is never picked over it
    assert fewest_instructions({"fp32": fp32, "int8": 2 * fp32}) == "fp32"


def test_without_a_cpu_or_figures_deploy_keeps_make_converts_choice(
    models: Path, caplog: pytest.LogCaptureFixture
) -> None:
    e = entry(models, "mobilefacenet")
    plain = pick_variant(models, "mobilefacenet", e, pinned=None, cpu=None, runtime="ai-edge-litert")
    assert plain.variant == e["recommended_variant"] and "no platform.cpu" in plain.reason
    with caplog.at_level(logging.WARNING, logger="facelite.deploy.variants"):
        missing = pick_variant(models, "mobilefacenet", e, pinned=None, cpu="cortex-a72", runtime="ai-edge-litert")
    assert missing.variant == e["recommended_variant"]
    assert "run `make bench-arm`" in missing.reason and "make bench-arm" in caplog.text


def test_the_variant_with_fewest_instructions_on_the_cpu_wins_while_its_figures_hold(
    models: Path, tmp_path: Path
) -> None:
    e, other = entry(models, "mobilefacenet"), other_variant(models, "mobilefacenet")
    rec = e["recommended_variant"]
    counts = {"cortex-a72": {rec: 95e6, other: 222e6}, "cortex-a76": {rec: 97e6, other: 40e6}}
    written = write_by_cpu(models / "mobilefacenet", counts, runtime="ai-edge-litert", generated="now")
    assert written["cpus"]["cortex-a72"]["variant"] == rec and written["cpus"]["cortex-a76"]["variant"] == other

    def pick(cpu: str, runtime: str = "ai-edge-litert", pinned: str | None = None) -> tuple[str | None, str]:
        c = pick_variant(models, "mobilefacenet", e, pinned=pinned, cpu=cpu, runtime=runtime)
        return c.variant, c.reason

    assert pick("cortex-a72")[0] == rec
    assert pick("cortex-a76") == (other, "fewest instructions on cortex-a76 in ai-edge-litert (make bench-arm)")
    assert pick("cortex-a76", pinned=rec) == (rec, "pinned in the device profile")
    variant, reason = pick("cortex-a76", runtime="tflite-runtime")
    assert variant == rec and "measured in ai-edge-litert, not tflite-runtime" in reason
    assert pick("cortex-a53")[0] == rec and "no figures for cortex-a53" in pick("cortex-a53")[1]

    # The real deploy path: a profile on a cortex-a76 gets the measured variant, one on an a72 the other; the
    # shipped pi and pi5 profiles pin their embedder (chosen on LFW calibration people), and the pin wins.
    unpinned = tmp_path / "devices"
    unpinned.mkdir()
    for name in ("pi", "pi5"):
        text = (DEVICES_DIR / f"{name}.toml").read_text()
        assert re.search(r'^embedder_variant = "[\w-]+"$', text, re.M)
        (unpinned / f"{name}.toml").write_text(re.sub(r'^embedder_variant = "[\w-]+"\n', "", text, flags=re.M))
    chosen = {p: {c.name: c.variant for c in choose_models(load_profile(p, unpinned), models)} for p in ("pi", "pi5")}
    assert chosen["pi5"]["mobilefacenet"] == other and chosen["pi"]["mobilefacenet"] == rec
    shipped = {p: {c.name: c.variant for c in choose_models(load_profile(p), models)} for p in ("pi", "pi5")}
    # pi5: float16 arithmetic, not checked on the A76 in this copy (a warning, tests/test_arm_gate.py)
    assert (shipped["pi"]["mobilefacenet"], shipped["pi5"]["mobilefacenet"]) == ("fp32", "fp16-arith")

    # Rebuilding the variant after the measurement makes the figures stale: back to make convert's choice.
    manifest = models / "mobilefacenet" / other / "manifest.json"
    data = json.loads(manifest.read_text())
    graph = next(iter(data["graphs"].values()))
    graph["sha256"] = "0" * 64
    manifest.write_text(json.dumps(data))
    variant, reason = pick("cortex-a76")
    assert variant == rec and "is stale" in reason


def test_a_broken_figures_file_is_a_warning_not_a_failed_deploy(models: Path) -> None:
    e = entry(models, "mobilefacenet")
    (models / "mobilefacenet" / BY_CPU_FILE).write_text("{not json")
    c = pick_variant(models, "mobilefacenet", e, pinned=None, cpu="cortex-a72", runtime="ai-edge-litert")
    assert c.variant == e["recommended_variant"] and "cannot be read" in c.reason
    (models / "mobilefacenet" / BY_CPU_FILE).write_text(
        json.dumps({"runtime": "ai-edge-litert", "cpus": {"cortex-a72": {"variant": "int4"}}, "sha256": {}})
    )
    c = pick_variant(models, "mobilefacenet", e, pinned=None, cpu="cortex-a72", runtime="ai-edge-litert")
    assert c.variant == e["recommended_variant"] and "not a built variant" in c.reason


def test_profiles_name_their_cpu() -> None:
    assert load_profile("pi").platform.cpu == "cortex-a72"
    assert load_profile("pi5").platform.cpu == "cortex-a76"
    assert load_profile("local-test").platform.cpu is None


def test_a_profile_with_onet_landmarks_ships_mtcnn_and_configures_the_agent(models: Path, tmp_path: Path) -> None:
    profile = load_profile("pi", overrides=["models.landmarks=mtcnn"])
    chosen = {c.role: c for c in choose_models(profile, models)}
    assert chosen["landmarks"].name == "mtcnn"
    assert chosen["landmarks"].variant in entry(models, "mtcnn")["variants"]
    config = agent_config(profile, list(chosen.values()))
    assert config["models"]["landmarks"] == f"{RELEASE_PLACEHOLDER}/{chosen['landmarks'].bundle_dir}"
    check_config(render_toml(config), profile, tmp_path)  # the agent's own strict loader takes it
    without = agent_config(load_profile("local-test"), [c for r, c in chosen.items() if r != "landmarks"])
    assert "landmarks" not in without["models"]
    # Landmarks from a model with no O-Net are refused before anything is bundled.
    with pytest.raises(BundleError, match="has no O-Net"):
        choose_models(load_profile("pi", overrides=["models.landmarks=blazeface"]), models)
