"""make bench-arm's device check of variants whose arithmetic differs on ARM (arm_gate.py), and how deploy uses it.

Pure comparisons are held against brute force; the whole check runs on real converted models and real photos through
the guest program's own output mode, run here by the host's Python instead of qemu (the same file, the same runtime).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from facelite.deploy.variants import BY_CPU_FILE, VariantCheckError, eligible, pick_variant, write_by_cpu
from facelite.model.manifest import DEVICE_CHECKED_VARIANTS, VARIANTS
from facelite.model.metrics import roc_auc
from facelite.tools.bench import arm, arm_gate
from facelite.tools.bench.arm_gate import DeviceCheck, check_variant, detector_gates, embedder_gates
from facelite.vision.geometry import BBox, Face

CPUS = ["cortex-a53", "cortex-a72", "cortex-a76"]


def face(x1: float, y1: float, x2: float, y2: float) -> Face:
    return Face(BBox(x1, y1, x2, y2), 0.9, {})


# -- the comparisons ---------------------------------------------------------------------------------------------------
def test_embedder_gates_match_brute_force_cosines_and_auc() -> None:
    rng = np.random.default_rng(3)
    people = ["a", "a", "b", "b", "c", "c", "c"]
    ref = rng.normal(size=(7, 16)) * 3.0  # raw: the gate normalises, as the gallery does
    got = ref + rng.normal(scale=0.01, size=ref.shape)
    figures, gates = embedder_gates(ref, got, people)
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    cos = [float(unit(r) @ unit(g)) for r, g in zip(ref, got)]
    assert figures["min_cosine"] == pytest.approx(min(cos))
    assert figures["mean_cosine"] == pytest.approx(np.mean(cos))

    def auc(e: np.ndarray) -> float:
        same, diff = [], []
        for i, j in itertools.combinations(range(7), 2):
            (same if people[i] == people[j] else diff).append(float(unit(e[i]) @ unit(e[j])))
        return roc_auc(same, diff)

    assert (figures["auc_fp32"], figures["auc"]) == (pytest.approx(auc(ref)), pytest.approx(auc(got)))
    assert gates == {"min_cosine>=0.999": True, "auc_drop<=0.002": True}
    # one face pulled away fails the cosine gate, whatever the others do
    got[4] = rng.normal(size=16)
    _, gates = embedder_gates(ref, got, people)
    assert gates["min_cosine>=0.999"] is False


def test_detector_gates_count_fp32_faces_found_and_their_overlap() -> None:
    ref = [[face(0, 0, 10, 10), face(20, 20, 30, 30)], [face(0, 0, 50, 50)], []]
    same = detector_gates(ref, ref)
    assert same[0] == {"fp32_faces": 3.0, "recall": 1.0, "mean_iou": 1.0, "extra_faces": 0.0}
    assert all(same[1].values())
    # photo 1: one face moved off (IoU 0 < 0.5), one shifted by 1 px (IoU 81/119); photo 3: a face fp32 did not see
    got = [[face(1, 1, 11, 11), face(60, 60, 70, 70)], [face(0, 0, 50, 50)], [face(5, 5, 9, 9)]]
    figures, gates = detector_gates(ref, got)
    assert figures["recall"] == pytest.approx(2 / 3)
    assert figures["mean_iou"] == pytest.approx((81 / 119 + 1.0) / 2)
    assert figures["extra_faces"] == 2.0
    assert gates == {"recall>=0.95": False, "mean_iou>=0.85": False}
    with pytest.raises(ValueError, match="2 photos of detections against 3"):
        detector_gates(ref, got[:2])


def test_replayed_outputs_belong_to_the_inputs_run_on_the_device() -> None:
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    replay = arm_gate._Replay(x, [np.array([[1.0], [2.0]])])
    assert replay.run(x[0][None])[0].tolist() == [[1.0]]
    with pytest.raises(RuntimeError, match="replayed input 1 is not the one run on the device"):
        replay.run(x[0][None])


def test_a_check_that_could_not_run_does_not_pass() -> None:
    ok = DeviceCheck("m", "fp16-arith", "cortex-a76", "ai-edge-litert", 3, {"recall": 1.0}, {"recall>=0.95": True})
    assert ok.passed and ok.summary() == "recall 1"
    assert not DeviceCheck("m", "fp16-arith", "cortex-a76", "ai-edge-litert", 0, {}, {}, "no device check").passed
    assert not DeviceCheck("m", "fp16-arith", "cortex-a76", "ai-edge-litert", 3, {}, {}).passed  # no gate, no pass
    assert arm_gate.as_by_cpu([ok]) == {"cortex-a76": {"fp16-arith": {"passed": True, "summary": "recall 1"}}}


def test_device_checked_variants_are_in_the_manifest_and_converter_tables() -> None:
    from facelite.converter.variants import VARIANTS as TABLE

    assert set(TABLE) == set(VARIANTS) and DEVICE_CHECKED_VARIANTS == {"fp16-arith"}
    assert {name for name, v in TABLE.items() if v.checked_on_device} == DEVICE_CHECKED_VARIANTS


# -- deploy: what a device may be given -------------------------------------------------------------------------------
def test_a_device_checked_variant_is_eligible_only_where_its_check_passed() -> None:
    counts = {"fp32": 90.0, "int8": 45.0, "fp16-arith": 40.0}
    assert eligible(counts, {}) == {"fp32": 90.0, "int8": 45.0}
    assert eligible(counts, {"fp16-arith": {"passed": False}}) == {"fp32": 90.0, "int8": 45.0}
    assert eligible(counts, {"fp16-arith": {"passed": True}}) == counts


def by_cpu(tmp_path: Path, passed: bool | None) -> Path:
    model = tmp_path / "mobilefacenet"
    model.mkdir(exist_ok=True)
    instr = {"cortex-a72": {"fp32": 96e6, "fp16-arith": 96e6}, "cortex-a76": {"fp32": 93e6, "fp16-arith": 48e6}}
    checks = {} if passed is None else {"cortex-a76": {"fp16-arith": {"passed": passed, "summary": "min_cosine 0.9"}}}
    data = write_by_cpu(model, instr, runtime="ai-edge-litert", generated="now", checks=checks)
    # where it was checked and passed it wins on fewest instructions; unchecked, the A72 falls back to fp32 (a tie
    # it would otherwise win by name)
    assert data["cpus"]["cortex-a72"]["variant"] == "fp32"
    assert data["cpus"]["cortex-a76"]["variant"] == ("fp16-arith" if passed else "fp32")
    return model


def test_by_cpu_picks_a_device_checked_variant_only_where_it_passed(tmp_path: Path) -> None:
    model = by_cpu(tmp_path, True)
    entry = {"variants": ["fp32", "fp16-arith"], "recommended_variant": "fp32"}
    choice = pick_variant(tmp_path, "mobilefacenet", entry, pinned=None, cpu="cortex-a76", runtime="ai-edge-litert")
    assert choice.variant == "fp16-arith"
    # a hand-edited file that names it without a passed check is not believed
    data = json.loads((model / BY_CPU_FILE).read_text())
    del data["cpus"]["cortex-a76"]["checks"]
    (model / BY_CPU_FILE).write_text(json.dumps(data))
    choice = pick_variant(tmp_path, "mobilefacenet", entry, pinned=None, cpu="cortex-a76", runtime="ai-edge-litert")
    assert choice.variant == "fp32" and "without a passed device check on cortex-a76" in choice.reason


def test_a_pinned_device_checked_variant_is_refused_where_its_check_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entry = {"variants": ["fp32", "fp16-arith"], "recommended_variant": "fp32"}
    by_cpu(tmp_path, False)
    with pytest.raises(VariantCheckError) as err:
        pick_variant(tmp_path, "mobilefacenet", entry, pinned="fp16-arith", cpu="cortex-a76", runtime="ai-edge-litert")
    assert err.value.one_line() == (
        "mobilefacenet/fp16-arith is pinned, but make bench-arm's check on cortex-a76 failed: min_cosine 0.9 "
        f"({tmp_path / 'mobilefacenet' / BY_CPU_FILE}): pin another variant (fp32) in the device profile"
    )
    by_cpu(tmp_path, True)
    choice = pick_variant(
        tmp_path, "mobilefacenet", entry, pinned="fp16-arith", cpu="cortex-a76", runtime="ai-edge-litert"
    )
    assert (choice.variant, choice.reason) == (
        "fp16-arith",
        "pinned in the device profile (checked on cortex-a76 by make bench-arm)",
    )
    # not measured on this core: deployed as pinned, with a warning that names the command that checks it
    with caplog.at_level(logging.WARNING):
        choice = pick_variant(
            tmp_path, "mobilefacenet", entry, pinned="fp16-arith", cpu="cortex-a72", runtime="ai-edge-litert"
        )
    assert choice.variant == "fp16-arith" and "not checked on cortex-a72" in choice.reason
    assert "has not been checked on cortex-a72 in ai-edge-litert: run `make bench-arm`" in caplog.text


def test_the_a76_is_judged_as_the_pi5_profile_deploys_it() -> None:
    assert arm.profiles_by_cpu("pi", CPUS) == {"cortex-a53": "pi", "cortex-a72": "pi", "cortex-a76": "pi5"}
    assert arm.pinned_variants("pi5")["embedder"] == "fp16-arith"
    ms = counted(
        {
            "blazeface/fp32": {"cortex-a76": 58},
            "blazeface/fp16-arith": {"cortex-a76": 34},
            "mobilefacenet/fp32": {"cortex-a76": 93},
            "mobilefacenet/fp16-arith": {"cortex-a76": 48},
            "mobilefacenet/int8": {"cortex-a76": 44},
        }
    )
    pins = {"cortex-a76": {"detector": None, "embedder": "fp16-arith"}}
    passed = {"passed": True, "summary": ""}
    checks = {m: {"cortex-a76": {"fp16-arith": passed}} for m in ("blazeface", "mobilefacenet")}
    free = {"detector": None, "embedder": "fp32"}
    args = (ms, ("blazeface", "fp32"), ("mobilefacenet", "fp32"), free, ["cortex-a76"], "ai-edge-litert")
    assert arm.deployed_per_cpu(*args, checks, pins) == {"cortex-a76": ("fp16-arith", "fp16-arith")}
    # the same figures without a passed check on that core: the detector stays fp32
    assert arm.deployed_per_cpu(*args, {}, pins) == {"cortex-a76": ("fp32", "fp16-arith")}
    assert arm.deployed_per_cpu(*args, checks) == {"cortex-a76": ("fp16-arith", "fp32")}


def counted(table: dict[str, dict[str, float]]) -> list[arm.Measurement]:
    """``{"model/variant": {cpu: M instructions per inference}}`` as bench-arm's measurements (ai-edge-litert)."""
    out = []
    for label, by_cpu in table.items():
        model, variant = label.split("/")
        for cpu, mega in by_cpu.items():
            n = mega * 1e6
            out.append(arm.Measurement(model, variant, "embedder", "inference", cpu, "ai-edge-litert", 5, n, {}, {}, {},
                                       n, n, n, 10**9, 1.0, None))  # fmt: skip
    return out


# -- the whole check on real models and photos (the guest program run by the host's Python) ---------------------------
def host_runner(work: Path, tamper: dict[str, float] | None = None) -> arm_gate.GuestRunner:
    """arm_guest.py's output mode run here. ``tamper``: graph file name -> offset added to its box regressors."""
    counter = iter(range(10**6))

    def run(cpu: str, graph: Path, inputs: np.ndarray) -> list[np.ndarray]:
        k = next(counter)
        np.save(work / f"x{k}.npy", inputs)
        spec = {"runtime": "ai-edge-litert", "graph": str(graph), "inputs": str(work / f"x{k}.npy"),
                "save": str(work / f"y{k}.npz")}  # fmt: skip
        (work / f"spec{k}.json").write_text(json.dumps(spec))
        subprocess.run([sys.executable, str(arm.GUEST), str(work / f"spec{k}.json")], check=True, timeout=600)
        with np.load(work / f"y{k}.npz") as data:
            outs = [data[f"arr_{i}"] for i in range(len(data.files))]
        offset = (tamper or {}).get(str(graph))
        if offset:
            outs = [o + offset if o.shape[-1] == 16 else o for o in outs]  # BlazeFace: 16 regressors per anchor
        return outs

    return run


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mobilefacenet", "blazeface"])
def test_the_check_passes_fp16_arith_where_it_computes_as_fp32(
    models_dir: Path, data_dir: Path, tmp_path: Path, model: str
) -> None:
    """On x86 an fp16-arith file computes in float32 with float16 weights: the check must find it fp32's twin."""
    checks = check_variant(
        models_dir, data_dir, model, "fp16-arith", ["x86"], "ai-edge-litert", host_runner(tmp_path), min_face=40
    )
    (c,) = checks
    assert c.passed, c.summary()
    assert c.inputs >= 80  # every faces/people photo with a face (85), or every photo (92)
    if model == "mobilefacenet":
        assert c.figures["min_cosine"] > 0.9999
    else:
        assert c.figures["fp32_faces"] >= 80 and c.figures["recall"] == 1.0


@pytest.mark.slow
def test_the_check_fails_an_embedder_that_is_not_fp32s_arithmetic(
    models_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    """int8 MobileFaceNet in fp16-arith's place (cosine about 0.99 to fp32): the 0.999 per-face gate refuses it."""
    models = tmp_path / "models"
    (models / "mobilefacenet").mkdir(parents=True)
    (models / "blazeface").symlink_to(models_dir / "blazeface")
    (models / "mobilefacenet" / "fp32").symlink_to(models_dir / "mobilefacenet" / "fp32")
    shutil.copytree(models_dir / "mobilefacenet" / "int8", models / "mobilefacenet" / "fp16-arith")
    work = tmp_path / "work"
    work.mkdir()
    (c,) = check_variant(models, data_dir, "mobilefacenet", "fp16-arith", ["x86"], "ai-edge-litert",
                         host_runner(work), min_face=40)  # fmt: skip
    assert not c.passed
    assert c.gates["min_cosine>=0.999"] is False and 0.9 < c.figures["min_cosine"] < 0.999


@pytest.mark.slow
def test_the_check_fails_a_detector_whose_boxes_moved(models_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    graph = models_dir / "blazeface" / "fp16-arith" / "model.tflite"
    tamper = {str(graph): 40.0}  # every box and keypoint 40 px of the 192 px input to the lower right
    (c,) = check_variant(models_dir, data_dir, "blazeface", "fp16-arith", ["x86"], "ai-edge-litert",
                         host_runner(tmp_path, tamper), min_face=40)  # fmt: skip
    assert not c.passed and c.figures["recall"] < 0.95


def test_each_variant_sets_only_its_own_converter_settings() -> None:
    """fp16 stores float16; fp16-arith also asks for float16 arithmetic; neither is an integer build (a branch that
    fell through to the full-integer settings once made fp16 refuse to convert)."""
    import tensorflow as tf

    from facelite.converter.variants import VARIANTS as TABLE

    def configured(name: str) -> SimpleNamespace:
        converter = SimpleNamespace(target_spec=SimpleNamespace(supported_types=[], supported_ops=None))
        TABLE[name].configure(converter, (lambda: iter([])) if TABLE[name].calibrated else None)
        return converter

    plain, storage, arith, full = (configured(n) for n in ("fp32", "fp16", "fp16-arith", "int8"))
    assert not hasattr(plain, "optimizations") and plain.target_spec.supported_types == []
    for c in (storage, arith):
        assert c.target_spec.supported_types == [tf.float16] and c.target_spec.supported_ops is None
        assert not hasattr(c, "representative_dataset")
    assert not hasattr(storage.target_spec, "_experimental_supported_accumulation_type")
    assert arith.target_spec._experimental_supported_accumulation_type == tf.float16
    assert full.target_spec.supported_ops == [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


def test_the_report_shows_each_check_and_deploys_only_what_passed() -> None:
    """judge + render (what --report-only re-runs): the per-CPU table follows the checks, and each check is listed."""
    cpus = ["cortex-a72", "cortex-a76"]
    ms = counted(
        {
            "blazeface/fp32": {"cortex-a72": 60, "cortex-a76": 58},
            "blazeface/fp16-arith": {"cortex-a72": 59, "cortex-a76": 34},
            "mobilefacenet/fp32": {"cortex-a72": 96, "cortex-a76": 93},
            "mobilefacenet/fp16-arith": {"cortex-a72": 96, "cortex-a76": 48},
        }
    )
    figures = {"recall": 1.0, "mean_iou": 0.999}
    checks = [
        DeviceCheck("blazeface", "fp16-arith", "cortex-a72", "ai-edge-litert", 92, figures, {"recall>=0.95": False}),
        DeviceCheck("blazeface", "fp16-arith", "cortex-a76", "ai-edge-litert", 92, figures, {"recall>=0.95": True}),
    ]
    facts = {
        "generated": "now", "command": "make bench-arm", "models_dir": "/m", "qemu_version": "7.2", "sites": ["x"],
        "passes": 5, "frame": [640, 480], "min_face": 40, "cpus": cpus, "runtimes": ["ai-edge-litert"],
        "profile": "pi", "profile_runtime": "ai-edge-litert",
        "deployed": {"detector": ["blazeface", "fp32"], "embedder": ["mobilefacenet", "fp32"], "landmarks": None},
        "pinned": {"detector": None, "embedder": "fp32", "landmarks": None},
        "profile_by_cpu": {"cortex-a72": "pi", "cortex-a76": "pi5"},
        "pinned_by_cpu": {
            "cortex-a72": {"detector": None, "embedder": "fp32", "landmarks": None},
            "cortex-a76": {"detector": None, "embedder": "fp16-arith", "landmarks": None},
        },
        "device_checks": [dataclasses.asdict(c) for c in checks],
        "jobs": [{"model": m, "variant": v, "unit": "inference", "x86_ms": None}
                 for m, v in dict.fromkeys((m.model, m.variant) for m in ms)],
        "cpu_probes": [{"cpu": c, "cpuinfo_part": "0", "asimddp": c == "cortex-a76", "asimdhp": c == "cortex-a76",
                        "fphp": c == "cortex-a76", "i8mm": False} for c in cpus],
        "measurements": [dataclasses.asdict(m) for m in ms],
        "crosschecks": [],
    }  # fmt: skip
    report, _, targets = arm.judge(facts)
    # the A76 as pi5 deploys it: both float16 (the detector passed its check there); the A72's failed check keeps
    # its detector on fp32 although fp16-arith counted fewer instructions
    assert report["deployed_per_cpu"]["cortex-a76"] == {"detector": "fp16-arith", "embedder": "fp16-arith"}
    assert report["deployed_per_cpu"]["cortex-a72"] == {"detector": "fp32", "embedder": "fp32"}
    a76 = next(t for t in targets if t.target.startswith("cortex-a76: pi pipeline"))
    assert a76.measured == pytest.approx((34e6 + 48e6) / (58e6 + 93e6), abs=5e-4)  # rounded to 3 places
    text = arm.render(report, ms)
    assert "| blazeface | fp32 | fp16-arith |" in text
    assert "| blazeface/fp16-arith | cortex-a72 | 92 | recall 1, mean_iou 0.999; failed recall>=0.95 | FAIL |" in text
    assert "| blazeface/fp16-arith | cortex-a76 | 92 | recall 1, mean_iou 0.999 | PASS |" in text
    assert "cortex-a76: the pi5 profile" in text


@pytest.mark.parametrize(
    "cpus",
    [
        {"cortex-a76": {"variant": "fp16-arith", "checks": "passed"}},
        {"cortex-a76": {"variant": "fp16-arith", "checks": {"fp16-arith": ["passed"]}}},
        {"cortex-a76": {"variant": "fp16-arith", "checks": {"fp16-arith": {"passed": "yes"}}}},
        {"cortex-a76": ["fp16-arith"]},
        ["cortex-a76"],
    ],
)
def test_a_malformed_check_in_by_cpu_json_never_ships_the_variant_nor_crashes(
    tmp_path: Path, cpus: object, caplog: pytest.LogCaptureFixture
) -> None:
    model = tmp_path / "mobilefacenet"
    model.mkdir()
    (model / BY_CPU_FILE).write_text(json.dumps({"runtime": "ai-edge-litert", "cpus": cpus, "sha256": {}}))
    entry = {"variants": ["fp32", "fp16-arith"], "recommended_variant": "fp32"}
    choice = pick_variant(tmp_path, "mobilefacenet", entry, pinned=None, cpu="cortex-a76", runtime="ai-edge-litert")
    assert choice.variant == "fp32" and "make convert" in choice.reason
    with caplog.at_level(logging.WARNING):  # pinned: deployed as pinned, with the warning that it was not checked
        choice = pick_variant(
            tmp_path, "mobilefacenet", entry, pinned="fp16-arith", cpu="cortex-a76", runtime="ai-edge-litert"
        )
    assert choice.variant == "fp16-arith" and "has not been checked on cortex-a76" in caplog.text
