"""`make bench-arm`: the pure parts (plugin output, the N-minus-0 arithmetic, pipelines, verdicts, kernels) and one
slow run of the real counter under qemu-aarch64 when it is set up (a benchmark, not CI coverage: skipped otherwise).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from facelite.tools.bench import arm
from facelite.tools.bench.common import BenchError

REPO = Path(__file__).resolve().parents[1]

MIX_OUTPUT = """\
mark 0: 1000
mark 0 class dot: 0
mark 0 class load: 300
mark 1001: 1600
mark 1001 class dot: 40
mark 1001 class load: 400
mark 1002: 1700
mark 1002 class dot: 50
mark 1002 class load: 420
mark 2001: 2250
mark 2001 class dot: 90
mark 2001 class load: 500
mark 2002: 2400
mark 2002 class dot: 100
mark 2002 class load: 530
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
total insns: 3000
total insns class dot: 100
total insns class load: 700
"""


def measurement(
    model: str, variant: str, cpu: str, per_invoke: float, runtime: str = "ai-edge-litert", **classes: float
) -> arm.Measurement:
    return arm.Measurement(
        model,
        variant,
        "embedder",
        "inference",
        cpu,
        runtime,
        5,
        per_invoke,
        {},
        {},
        classes,
        per_invoke,
        per_invoke,
        per_invoke,
        10**9,
        1.0,
        None,
    )


# -- plugin output ---------------------------------------------------------------------------------------------------
def test_mix_plugin_output_gives_marks_classes_and_the_exit_total() -> None:
    out = arm.parse_plugin_output(MIX_OUTPUT)
    assert sorted(out.marks) == [0, 1001, 1002, 2001, 2002]
    assert out.marks[1001] == arm.Counts(1600, {"dot": 40, "load": 400})
    assert out.exit == arm.Counts(3000, {"dot": 100, "load": 700})


@pytest.mark.parametrize(
    ("text", "total"),
    [
        ("cpu 0 insns: 70\ncpu 1 insns: 30\ntotal insns: 100\n", 100),  # tests/plugin/insn.c, callbacks
        ("insns: 1446114835\n", 1446114835),  # tests/plugin/insn.c, inline=on
        ("detected repeat execution @ 0x4000\ntotal insns: 5\n", 5),
    ],
)
def test_qemu_insn_plugin_output_gives_the_exit_total(text: str, total: int) -> None:
    out = arm.parse_plugin_output(text)
    assert out.exit is not None and out.exit.total == total and out.marks == {}


def test_no_count_in_the_output_is_no_exit_total() -> None:
    assert arm.parse_plugin_output("qemu: uncaught target signal 4 (Illegal instruction)\n").exit is None


# -- the N-minus-0 arithmetic ----------------------------------------------------------------------------------------
def test_per_invoke_removes_start_up() -> None:
    assert arm.per_invoke(1_147_354_421, 1_446_114_835, 5) == pytest.approx(59_752_082.8)
    assert arm.per_invoke(1000, 1000, 3) == 0


@pytest.mark.parametrize(("c0", "cn", "n"), [(100, 200, 0), (100, 200, -1), (300, 200, 2)])
def test_per_invoke_refuses_impossible_counts(c0: int, cn: int, n: int) -> None:
    with pytest.raises(BenchError):
        arm.per_invoke(c0, cn, n)


def test_marks_split_into_passes_and_steps() -> None:
    marks = arm.parse_plugin_output(MIX_OUTPUT).marks
    assert arm.mark_tags(2, 2) == [0, 1001, 1002, 2001, 2002]
    deltas = arm.step_deltas(marks, 2, 2)
    assert [[c.total for c in p] for p in deltas] == [[600, 100], [550, 150]]
    assert deltas[0][0].classes == {"dot": 40, "load": 100}
    with pytest.raises(BenchError, match="no mark 2002"):
        arm.step_deltas({k: v for k, v in marks.items() if k != 2002}, 2, 2)


def test_a_measurement_is_n_minus_0_over_n_with_graphs_and_crops() -> None:
    marks = arm.parse_plugin_output(MIX_OUTPUT).marks
    job = arm.Job(
        "mtcnn",
        "fp32",
        "detector",
        "frame",
        [arm.Step("pnet", "p", [1, 12, 12, 3]), arm.Step("rnet", "r", [1, 24, 24, 3])],
        "sha",
        40.0,
    )
    run = arm.Run(job, "cortex-a72", "ai-edge-litert", 2)
    m = arm.measure(job, arm.step_deltas(marks, 2, 2), marks, run, 1.0)
    assert m.per_invoke == (2400 - 1000) / 2
    assert m.per_graph == {"pnet": 575, "rnet": 125} and m.per_crop == {"pnet": 575, "rnet": 125}
    assert m.classes == {"dot": 50, "load": 115}
    assert (m.first_pass, m.steady_min, m.steady_max, m.startup) == (700, 700, 700, 1000)


# -- pipelines, verdicts, kernels ------------------------------------------------------------------------------------
def test_pipelines_and_targets_pass_only_within_their_limits() -> None:
    ms = []
    for cpu in ("cortex-a72", "cortex-a76"):
        ms += [
            measurement("blazeface", "fp32", cpu, 60e6),
            measurement("blazeface", "int8", cpu, 20e6),
            measurement("mobilefacenet", "fp32", cpu, 96e6),
            measurement("mobilefacenet", "int8", cpu, 50e6),
        ]
    pipes = arm.pipelines(
        ms, ("blazeface", "int8"), ("mobilefacenet", "int8"), ["cortex-a72", "cortex-a76"], ["ai-edge-litert"]
    )
    deployed = next(p for p in pipes if (p.name, p.cpu) == ("deployed", "cortex-a72"))
    assert deployed.per_frame == 70e6 and deployed.baseline == 156e6 and deployed.ratio == pytest.approx(0.449, 1e-3)
    verdicts = arm.verdicts(ms, pipes, "ai-edge-litert")
    assert [v.passed for v in verdicts] == [True, True, True, True]
    # as deployed today: fp32 + fp32 is the baseline itself; int8 MobileFaceNet slower than fp32
    ms_today = [m for m in ms if m.variant == "fp32"] + [measurement("mobilefacenet", "int8", "cortex-a72", 222e6)]
    pipes = arm.pipelines(
        ms_today, ("blazeface", "fp32"), ("mobilefacenet", "fp32"), ["cortex-a72", "cortex-a76"], ["ai-edge-litert"]
    )
    today = arm.verdicts(ms_today, pipes, "ai-edge-litert")
    assert [v.passed for v in today] == [False, False, False, False]
    assert today[0].measured == 1.0 and today[2].measured == pytest.approx(2.312, 1e-3)
    assert "no mobilefacenet/int8 measured" in today[3].note and today[3].measured is None


def test_kernel_verdicts_follow_the_cpu_features() -> None:
    dotprod = {"cortex-a72": False, "cortex-a76": True}
    rows = arm.kernel_rows(
        [
            measurement("m", "int8", "cortex-a76", 100, dot=10, load=20, store=5),
            measurement("m", "int8", "cortex-a72", 100, widening_mul=30),
            measurement("m", "int8", "cortex-a72", 100, dot=1),
            measurement("m", "fp32", "cortex-a76", 100, fmla=40),
            measurement("m", "fp16-arith", "cortex-a76", 100, fmla=2, fmla_h=20),
            measurement("m", "fp16-arith", "cortex-a72", 100, fmla=2, fmla_h=20),
        ],
        dotprod,
        {"cortex-a72": False, "cortex-a76": True},
    )
    assert [r.verdict for r in rows] == [
        "dot-product kernels",
        "int8 widening-multiply kernels",
        "WRONG: dot-product instructions on a CPU without them",
        "fp32 FMA kernels",
        "fp16 FMA kernels",
        "WRONG: float16 arithmetic on a CPU without it",
    ]
    assert rows[0].memory_share == 0.25 and rows[4].fmla_h == 20


def test_hwcaps_decode_the_auxiliary_vector() -> None:
    a76 = arm.decode_hwcaps((1 << 20) | (1 << 10) | (1 << 9), 0)
    assert a76 == {"fphp": True, "asimdhp": True, "asimddp": True, "i8mm": False, "bf16": False}
    assert not any(arm.decode_hwcaps(0xFF, 0).values())


# -- planning --------------------------------------------------------------------------------------------------------
def test_mtcnn_is_counted_over_the_agents_pyramid_of_a_640x480_frame() -> None:
    levels = arm.pyramid_shapes(480, 640, arm.MIN_FACE, 0.709)
    assert levels[0] == [1, 144, 192, 3] and len(levels) == 8
    assert all(min(s[1:3]) >= 12 for s in levels)


def test_plan_reads_the_index_and_manifests_leniently(tmp_path: Path) -> None:
    def graph(file: str, shape: list[int]) -> dict:
        return {"file": file, "sha256": file, "size_bytes": 1, "inputs": [{"shape": shape}], "outputs": []}

    (tmp_path / "index.json").write_text(
        json.dumps(
            {
                "models": {
                    "mtcnn": {"kind": "detector", "recommended_variant": "fp32", "variants": ["fp32"]},
                    "mobilefacenet": {"kind": "embedder", "recommended_variant": "fp32", "variants": ["fp32", "int8"]},
                }
            }
        )
    )
    manifests = {
        "mtcnn/fp32": {
            "kind": "detector",
            "detector_type": "mtcnn",
            "extra": {"scale_factor": 0.709},
            "graphs": {
                "pnet": graph("p.tflite", [1, -1, -1, 3]),
                "rnet": graph("r.tflite", [1, 24, 24, 3]),
                "onet": graph("o.tflite", [1, 48, 48, 3]),
            },
            "latency_ms": {"p50": 43.0},
        },
        "mobilefacenet/fp32": {
            "kind": "embedder",
            "graphs": {"model": graph("m.tflite", [1, 112, 112, 3])},
            "latency_ms": {"p50": 2.4},
            "calibration": {"a newer key": 1},
        },
        "mobilefacenet/int8": {"kind": "embedder", "graphs": {"model": graph("q.tflite", [1, 112, 112, 3])}},
    }
    for name, manifest in manifests.items():
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "manifest.json").write_text(json.dumps(manifest))
    jobs = arm.plan_jobs(tmp_path)
    assert [j.label for j in jobs] == ["mtcnn/fp32", "mobilefacenet/fp32", "mobilefacenet/int8"]
    mtcnn = jobs[0]
    assert [s.graph for s in mtcnn.steps] == ["pnet"] * 8 + ["rnet", "onet"]
    assert mtcnn.steps[-1].shape == [1, 48, 48, 3] and mtcnn.x86_ms == 43.0 and "8 levels" in mtcnn.unit
    assert jobs[2].x86_ms is None and jobs[1].sha256 != jobs[2].sha256
    # BlazeFace's short-range retry runs only on frames without a face: a frame with one costs the main graph.
    retry = {"model": graph("b.tflite", [1, 192, 192, 3]), "retry": graph("s.tflite", [1, 128, 128, 3])}
    blazeface = {"kind": "detector", "detector_type": "blazeface", "graphs": retry}
    steps, unit = arm.job_steps(blazeface, tmp_path, arm.FRAME_HW, arm.MIN_FACE)
    assert [s.graph for s in steps] == ["model"] and "retry graph runs only on frames without" in unit
    assert [j.label for j in arm.plan_jobs(tmp_path, ["mobilefacenet/int8"])] == ["mobilefacenet/int8"]
    with pytest.raises(BenchError, match="no model variants"):
        arm.plan_jobs(tmp_path, ["blazeface"])


def test_the_runtimes_are_the_device_pins_and_bench_arm_is_not_in_make_test() -> None:
    reqs = arm.runtime_requirements()
    assert any(r.startswith("ai-edge-litert==") for r in reqs["ai-edge-litert"])
    assert "tflite-runtime==2.14.0" in reqs["tflite-runtime"] and "numpy<2" in reqs["tflite-runtime"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^bench-arm:", makefile, re.M)
    test_recipe = re.search(r"^test:.*?\n((?:\t.*\n)+)", makefile, re.M)
    assert test_recipe and "bench-arm" not in test_recipe.group(0)


# -- the real counter (slow; only where qemu, the plugin, the rootfs and a site are set up) ---------------------------
def emulated_env() -> arm.Env:
    setup = REPO / "build" / "bench-arm" / "setup.txt"
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("no qemu-aarch64 (apt-get install qemu-user): a benchmark, not CI coverage")
    if not setup.is_file():
        pytest.skip(f"no {setup}: run `make bench-arm` once (builds the plugin, the arm64 rootfs, the aarch64 sites)")
    env = arm.parse_setup(setup.read_text())
    needed = [env.plugin, env.views.get("cortex-a72", ""), env.sites.get("ai-edge-litert", "")]
    missing = [p for p in needed if not p or not Path(p).exists()]
    if missing:
        pytest.skip(f"bench-arm setup incomplete ({missing[0]} missing): run `make bench-arm` once")
    return env


@pytest.mark.slow
def test_one_small_model_counted_at_n0_and_n2(models_dir: Path, tmp_path: Path) -> None:
    env = emulated_env()
    jobs = [j for j in arm.plan_jobs(models_dir) if j.model == "blazeface" or j.model == "mobilefacenet"]
    if not jobs:
        pytest.skip(f"no blazeface or mobilefacenet in {models_dir}")
    job = jobs[0]
    outputs = {n: arm.emulate(env, arm.Run(job, "cortex-a72", "ai-edge-litert", n), tmp_path / f"n{n}") for n in (0, 2)}
    totals = {n: out.exit.total for n, out in outputs.items() if out.exit is not None}
    assert set(totals) == {0, 2}, "the plugin printed no exit total"
    assert totals[2] > totals[0] > 0
    assert arm.per_invoke(totals[0], totals[2], 2) > 0
    marks = outputs[2].marks  # the same figure within the N=2 process, without start-up or exit
    assert arm.per_invoke(marks[0].total, marks[2 * arm.MARK_STRIDE + len(job.steps)].total, 2) > 0


def test_the_deployed_pipeline_per_cpu_takes_the_variant_with_fewest_instructions() -> None:
    """bench-arm judges the pipeline `make deploy` would ship on each core (facelite.deploy.variants), not x86's."""
    ms = [
        measurement("blazeface", "fp32", "cortex-a72", 60e6),
        measurement("mobilefacenet", "fp32", "cortex-a72", 96e6),
        measurement("mobilefacenet", "int8", "cortex-a72", 222e6),
        measurement("blazeface", "fp32", "cortex-a76", 50e6),
        measurement("mobilefacenet", "fp32", "cortex-a76", 97e6),
        measurement("mobilefacenet", "int8", "cortex-a76", 40e6),
        measurement("mobilefacenet", "int8", "cortex-a53", 10e6, runtime="tflite-runtime"),
    ]
    cpus = ["cortex-a53", "cortex-a72", "cortex-a76"]
    free = {"detector": None, "embedder": None}
    per_cpu = arm.deployed_per_cpu(ms, ("blazeface", "fp32"), ("mobilefacenet", "fp32"), free, cpus, "ai-edge-litert")
    # a53: nothing measured in the profile's runtime, so the profile's current choice stays
    assert per_cpu == {"cortex-a53": ("fp32", "fp32"), "cortex-a72": ("fp32", "fp32"), "cortex-a76": ("fp32", "int8")}
    fixed = {"detector": None, "embedder": "fp32"}
    pinned = arm.deployed_per_cpu(ms, ("blazeface", "fp32"), ("mobilefacenet", "fp32"), fixed, cpus, "ai-edge-litert")
    assert pinned["cortex-a76"] == ("fp32", "fp32")
    pipes = arm.pipelines(ms, ("blazeface", "fp32"), ("mobilefacenet", "fp32"), cpus[1:], ["ai-edge-litert"], per_cpu)
    a76 = next(p for p in pipes if (p.name, p.cpu) == ("deployed", "cortex-a76"))
    assert (a76.embedder, a76.per_frame, a76.baseline) == ("mobilefacenet/int8", 90e6, 147e6)


def test_arm_setup_finds_the_repository_and_every_file_it_reads_from_it() -> None:
    """arm_setup.sh locates the repository from its own path: moving it (as the namespace move did) must not
    leave it compiling or running files from a folder that does not exist."""
    script = REPO / "agent" / "tools" / "bench" / "arm_setup.sh"
    text = script.read_text()
    (repo_line,) = [line for line in text.splitlines() if line.startswith("REPO=")]
    found = subprocess.run(
        ["bash", "-c", f'set -- ; {repo_line.split("#")[0]}; echo "$REPO"', str(script)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(found) == REPO
    read = set(re.findall(r'"\$REPO/([^"$]+\.(?:c|sh))"', text))
    assert {"agent/tools/bench/arm_mix.c", "deploy/arm64_rootfs.sh"} <= read
    assert all((REPO / path).is_file() for path in read), read


def test_a_profile_with_onet_landmarks_counts_its_passes_per_face_in_the_pipeline() -> None:
    from dataclasses import replace

    cpus = ["cortex-a72", "cortex-a76"]
    ms = [
        measurement("blazeface", "fp32", "cortex-a72", 60e6),
        measurement("mobilefacenet", "fp32", "cortex-a72", 96e6),
        replace(measurement("mtcnn", "fp32", "cortex-a72", 79e6), per_crop={"rnet": 1e6, "onet": 4e6}),
        replace(measurement("mtcnn", "int8", "cortex-a72", 85e6), per_crop={"rnet": 0.5e6, "onet": 3e6}),
    ]
    lm = arm.landmarks_per_cpu(ms, ("mtcnn", "fp16"), None, cpus, "ai-edge-litert")
    # fewest instructions per frame wins, as make deploy picks it; unmeasured cores keep the profile's choice
    assert lm == {"cortex-a72": "fp32", "cortex-a76": "fp16"}
    assert arm.landmarks_per_cpu(ms, ("mtcnn", "fp16"), "int8", cpus, "ai-edge-litert")["cortex-a72"] == "int8"
    pipes = arm.pipelines(
        ms, ("blazeface", "fp32"), ("mobilefacenet", "fp32"), cpus, ["ai-edge-litert"], None, ("mtcnn", "int8"), {}
    )
    a72 = {p.name: p for p in pipes if p.cpu == "cortex-a72"}
    assert a72["all-fp32"].per_frame == 60e6 + 96e6 + arm.ONET_PASSES * 4e6
    assert a72["deployed"].per_frame == 60e6 + 96e6 + arm.ONET_PASSES * 3e6
    assert a72["deployed"].detector == f"blazeface/fp32 + mtcnn/int8 O-Net x{arm.ONET_PASSES}"
    assert a72["deployed"].x86_ms is None  # O-Net alone has no x86 figure to add
    # MTCNN not measured on a core: no pipeline figure there, rather than one without O-Net
    a76 = next(p for p in pipes if (p.name, p.cpu) == ("deployed", "cortex-a76"))
    assert a76.per_frame is None
    plain = arm.pipelines(ms, ("blazeface", "fp32"), ("mobilefacenet", "fp32"), cpus[:1], ["ai-edge-litert"])
    assert next(p for p in plain if p.name == "deployed").per_frame == 156e6
