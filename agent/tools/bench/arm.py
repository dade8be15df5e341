"""`make bench-arm`: guest instructions per inference on emulated ARM cores, for every built model variant.

    python -m facelite.tools.bench.arm --models build/models --out build/bench-arm [--report-only] [--no-targets]

Method (issue 11): qemu-aarch64 (Debian's qemu-user 7.2) runs the device's own interpreter (bookworm arm64
python3.11, the rootfs of `make test-arm64`) with one runtime's aarch64 wheels on its path, and a TCG plugin counts
the guest instructions executed. The guest program (arm_guest.py) loads the graphs, then runs N passes; the plugin
prints its running total at marks the guest asks for (after loading, after every step), so

    instructions per inference = (count after N passes - count after 0 passes) / N

with the interpreter's start-up, the model loading and the process exit removed. Cortex-A53 (Pi Zero 2 /
low-end Android), Cortex-A72 (Pi 4), Cortex-A76 (Pi 5 / mid-range Android), each with its own /proc/cpuinfo.
MTCNN is counted per 640x480 frame: the P-Net pyramid of the agent's default min_face (every level resized as
the agent does), plus one R-Net and one O-Net crop (each further candidate adds its per-crop figure).

A variant whose arithmetic differs on ARM (fp16-arith: float16 on cores with FP16 vector arithmetic) is also run
beside its fp32 on each core on real photos (arm_gate.py); `<model>/by_cpu.json` records the result, and deploy gives
a core such a variant only where that check passed. The Cortex-A76 is judged as the pi5 profile deploys it (the
profile naming that core), the others as --profile.

Every run is cached under OUT/runs (keyed by the graphs' sha256, CPU, runtime, passes and the plugin), so a re-run
only counts what changed; --report-only re-renders report.md/.json/.png from the last report.json without qemu.
Exit status: 0 when every target of issue 11 is met (or --no-targets), 1 when one is missed, 2 on an error.

Size: one benchmark end to end (plan, emulate, count, judge, render markdown and chart) whose report is re-rendered
from its JSON by `--report-only`; its pure parts are tested one by one in tests/test_bench_arm.py.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from facelite.deploy.variants import (
    BY_CPU_FILE,
    MIN_SAVING,
    REFERENCE_VARIANT,
    eligible,
    fewest_instructions,
    pick_variant,
    write_by_cpu,
)
from facelite.errors import FaceliteError
from facelite.logsetup import add_logging_flags, level_of, setup_logging
from facelite.model.manifest import DEVICE_CHECKED_VARIANTS
from facelite.tools.bench.arm_gate import DeviceCheck, GuestRunner, as_by_cpu, check_variant
from facelite.tools.bench.common import BenchError, to_jsonable
from facelite.tools.dataset import data_dir
from facelite.vision.detect.blazeface import RETRY_GRAPH
from facelite.vision.detect.onet_landmarks import DEFAULT_PASSES

log = logging.getLogger("bench-arm")

REPO = Path(__file__).resolve().parents[3]
SETUP = Path(__file__).resolve().parent / "arm_setup.sh"
GUEST = Path(__file__).resolve().parent / "arm_guest.py"
CPUS = ("cortex-a53", "cortex-a72", "cortex-a76")
CPU_BOARDS = {"cortex-a53": "Pi Zero 2 / low-end Android", "cortex-a72": "Pi 4", "cortex-a76": "Pi 5 / mid-range"}
RUNTIMES = ("ai-edge-litert", "tflite-runtime")
FRAME_HW = (480, 640)
MIN_FACE = 40  # the agent's default detection.min_face (agent/service/config.py)
TARGET_CPUS = ("cortex-a72", "cortex-a76")
# O-Net passes per face when a profile places landmarks with MTCNN's O-Net (OnetLandmarks' default).
ONET_PASSES = DEFAULT_PASSES
PIPELINE_TARGET = 0.5  # deployed pi pipeline / all-fp32 pipeline, instructions per frame
INT8_EMBEDDER = ("mobilefacenet", "int8", 0.6)  # int8 MobileFaceNet / its fp32
MARK_STRIDE = 1000  # the guest's mark tag: pass * 1000 + step
RUN_TIMEOUT_S = 900


# -- plugin output and the N-minus-0 arithmetic (pure) -------------------------------------------------------------
@dataclass(frozen=True)
class Counts:
    """Guest instructions executed up to one point: in total and per class (see arm_mix.c)."""

    total: int
    classes: dict[str, int] = field(default_factory=dict)

    def minus(self, earlier: Counts) -> Counts:
        return Counts(self.total - earlier.total, {k: v - earlier.classes.get(k, 0) for k, v in self.classes.items()})


@dataclass(frozen=True)
class PluginOutput:
    marks: dict[int, Counts]
    exit: Counts | None


_LINE = re.compile(r"^(?:mark (?P<tag>\d+)|(?P<exit>total insns))(?: class (?P<cls>\w+))?: (?P<n>\d+)$")
_INSN_C = re.compile(r"^(?:cpu \d+ )?insns: (?P<n>\d+)$")


def parse_plugin_output(text: str) -> PluginOutput:
    """Read facelite_mix's lines ("mark 3: N", "mark 3 class dot: N", "total insns: N") or qemu insn.c's
    ("total insns: N" without classes, or "insns: N" with inline=on). Other lines are ignored."""
    totals: dict[int | None, int] = {}
    classes: dict[int | None, dict[str, int]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        m = _LINE.match(line)
        if m is None:
            if (m2 := _INSN_C.match(line)) and line.startswith("insns"):
                totals[None] = int(m2["n"])
            continue
        key = None if m["exit"] else int(m["tag"])
        if m["cls"]:
            classes.setdefault(key, {})[m["cls"]] = int(m["n"])
        else:
            totals[key] = int(m["n"])
    marks = {k: Counts(v, classes.get(k, {})) for k, v in totals.items() if k is not None}
    exit_counts = Counts(totals[None], classes.get(None, {})) if None in totals else None
    return PluginOutput(marks, exit_counts)


def per_invoke(count_at_0: int, count_at_n: int, n: int) -> float:
    """Instructions per inference: (count after n inferences - count after none) / n."""
    if n <= 0:
        raise BenchError(f"need at least one inference to subtract start-up, got n={n}")
    if count_at_n < count_at_0:
        raise BenchError(f"count after {n} inferences ({count_at_n}) is below the count after none ({count_at_0})")
    return (count_at_n - count_at_0) / n


def mark_tags(passes: int, steps: int) -> list[int]:
    """The guest's marks in order: 0 after loading, then pass * MARK_STRIDE + step for every step of every pass."""
    return [0] + [p * MARK_STRIDE + s for p in range(1, passes + 1) for s in range(1, steps + 1)]


def step_deltas(marks: dict[int, Counts], passes: int, steps: int) -> list[list[Counts]]:
    """Instructions of each step of each pass: [pass][step], from consecutive marks."""
    tags = mark_tags(passes, steps)
    missing = [t for t in tags if t not in marks]
    if missing:
        raise BenchError(f"the plugin printed no mark {missing[0]} ({len(missing)} of {len(tags)} missing)")
    deltas = [marks[b].minus(marks[a]) for a, b in itertools.pairwise(tags)]
    return [deltas[p * steps : (p + 1) * steps] for p in range(passes)]


# -- what to count ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    graph: str  # graph name in the manifest (model, pnet, rnet, onet)
    path: str
    shape: list[int]


@dataclass(frozen=True)
class Job:
    """One artifact (model + variant), one pass of its steps = one inference (embedders, BlazeFace) or one frame."""

    model: str
    variant: str
    kind: str
    unit: str
    steps: list[Step]
    sha256: str
    x86_ms: float | None  # the manifest's latency p50 (ai-edge-litert, x86, one thread)

    @property
    def label(self) -> str:
        return f"{self.model}/{self.variant}"


def pyramid_shapes(height: int, width: int, min_face: float, scale_factor: float) -> list[list[int]]:
    """P-Net input shapes of one frame, level by level, as the agent's MTCNN builds them."""
    from facelite.vision.detect.mtcnn import pyramid_scales

    return [[1, int(height * s), int(width * s), 3] for s in pyramid_scales(height, width, min_face, scale_factor)]


def read_manifest(directory: Path) -> dict[str, Any]:
    """The few manifest fields the bench needs, read leniently: a bench must not refuse manifests written by a newer
    converter (the agent's strict reader does that for the device)."""
    path = directory / "manifest.json"
    if not path.is_file():
        raise BenchError(f"no {path}: run `make convert`")
    return json.loads(path.read_text())


def artifact_sha256(manifest: dict[str, Any]) -> str:
    joined = "".join(f"{k}:{g['sha256']};" for k, g in sorted(manifest["graphs"].items()))
    return hashlib.sha256(joined.encode()).hexdigest()


def job_steps(
    manifest: dict[str, Any], directory: Path, frame_hw: tuple[int, int], min_face: int
) -> tuple[list[Step], str]:
    """The steps of one pass and what a pass is, for one artifact."""
    graphs = manifest["graphs"]
    if manifest.get("detector_type") == "mtcnn":
        scale_factor = float(manifest.get("extra", {}).get("scale_factor", 0.709))
        levels = pyramid_shapes(*frame_hw, min_face, scale_factor)
        steps = [Step("pnet", str(directory / graphs["pnet"]["file"]), shape) for shape in levels]
        for g in ("rnet", "onet"):
            steps.append(Step(g, str(directory / graphs[g]["file"]), [1, *graphs[g]["inputs"][0]["shape"][1:]]))
        unit = f"{frame_hw[1]}x{frame_hw[0]} frame: P-Net pyramid ({len(levels)} levels) + 1 R-Net + 1 O-Net crop"
        return steps, unit
    steps = []
    for name, graph in graphs.items():
        if manifest.get("detector_type") == "blazeface" and name == RETRY_GRAPH:
            continue  # the second look runs only on frames where the full-range graph found no face
        shape = [1 if d < 0 else d for d in graph["inputs"][0]["shape"]]
        steps.append(Step(name, str(directory / graph["file"]), shape))
    unit = "frame (one inference)" if manifest["kind"] == "detector" else "inference (one face)"
    if len(steps) < len(graphs):
        unit = "frame with a face (one inference; the retry graph runs only on frames without one)"
    return steps, unit


def plan_jobs(models_dir: Path, only: Sequence[str] = (), min_face: int = MIN_FACE) -> list[Job]:
    """Every passed variant of every model in index.json, in index order."""
    index_path = models_dir / "index.json"
    if not index_path.is_file():
        raise BenchError(f"no {index_path}: run `make convert` first")
    index = json.loads(index_path.read_text())
    jobs = []
    for model, entry in index["models"].items():
        for variant in entry["variants"]:
            if only and model not in only and f"{model}/{variant}" not in only:
                continue
            directory = models_dir / model / variant
            manifest = read_manifest(directory)
            steps, unit = job_steps(manifest, directory, FRAME_HW, min_face)
            x86 = manifest.get("latency_ms", {}).get("p50")
            jobs.append(Job(model, variant, manifest["kind"], unit, steps, artifact_sha256(manifest), x86))
    if not jobs:
        raise BenchError(f"no model variants to count in {models_dir} (filter: {list(only)})")
    return jobs


# -- one emulated run --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Env:
    """What arm_setup.sh built: qemu, the plugins, a rootfs view per CPU, a site dir per runtime."""

    qemu: str
    qemu_version: str
    plugin: str
    insn_plugin: str
    rootfs: str
    views: dict[str, str]
    sites: dict[str, str]


def parse_setup(text: str) -> Env:
    values: dict[str, str] = {}
    views: dict[str, str] = {}
    sites: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key.startswith("VIEW "):
            views[key[5:]] = value
        elif key.startswith("SITE "):
            sites[key[5:]] = value
        else:
            values[key] = value
    try:
        return Env(
            values["QEMU"],
            values["QEMU_VERSION"],
            values["PLUGIN"],
            values["INSN_PLUGIN"],
            values["ROOTFS"],
            views,
            sites,
        )
    except KeyError as exc:
        raise BenchError(f"arm_setup.sh printed no {exc.args[0]}=") from None


@dataclass(frozen=True)
class Run:
    """One qemu run: a job on one CPU in one runtime, N passes."""

    job: Job
    cpu: str
    runtime: str
    passes: int
    view_cpu: str = ""  # the /proc/cpuinfo served (default: the CPU's own)
    plugin: str = "mix"  # mix (marks + classes) | insn (qemu's tests/plugin/insn.c, exit total only)

    def key(self, env: Env) -> str:
        plugin = env.plugin if self.plugin == "mix" else env.insn_plugin
        stamp = Path(plugin).stat().st_mtime_ns if Path(plugin).exists() else 0
        text = json.dumps(
            [
                self.job.sha256,
                [s.shape for s in self.job.steps],
                self.cpu,
                self.runtime,
                self.passes,
                self.view_cpu or self.cpu,
                self.plugin,
                stamp,
                env.qemu_version,
                env.sites.get(self.runtime),
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def qemu_command(env: Env, run: Run, spec: Path, log_path: Path) -> list[str]:
    view = env.views[run.view_cpu or run.cpu]
    plugin = env.plugin if run.plugin == "mix" else env.insn_plugin + ",inline=on"
    return [
        env.qemu,
        "-cpu",
        run.cpu,
        "-L",
        view,
        "-plugin",
        plugin,
        "-d",
        "plugin",
        "-D",
        str(log_path),
        f"{view}/usr/bin/python3.11",
        "-P",
        "-B",
        str(GUEST),
        str(spec),
    ]


def guest_env(site: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "LD_"))}
    env.update(
        PYTHONPATH=site,
        PYTHONHASHSEED="0",
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def emulate(env: Env, run: Run, work: Path) -> PluginOutput:
    """Run the guest under qemu with the plugin; the plugin's counts (its log, not the guest's output)."""
    work.mkdir(parents=True, exist_ok=True)
    spec = work / "spec.json"
    log_path = work / "plugin.log"
    log_path.unlink(missing_ok=True)
    spec.write_text(
        json.dumps(
            {
                "runtime": run.runtime,
                "invokes": run.passes,
                "marks": run.plugin == "mix",
                "steps": [{"graph": s.path, "shape": s.shape} for s in run.job.steps],
            }
        )
    )
    cmd = qemu_command(env, run, spec, log_path)
    proc = subprocess.run(
        cmd, env=guest_env(env.sites[run.runtime]), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise BenchError(f"{run.job.label} on {run.cpu} ({run.runtime}) exited {proc.returncode}: {' | '.join(tail)}")
    return parse_plugin_output(log_path.read_text() if log_path.exists() else "")


# -- one measurement ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    model: str
    variant: str
    kind: str
    unit: str
    cpu: str
    runtime: str
    passes: int
    per_invoke: float  # guest instructions per pass, start-up removed
    per_graph: dict[str, float]  # per pass, by graph (MTCNN: pnet = the whole pyramid)
    per_crop: dict[str, float]  # per single step of a graph (MTCNN: one R-Net / O-Net crop)
    classes: dict[str, float]  # per pass, by instruction class
    first_pass: float
    steady_min: float
    steady_max: float
    startup: int  # instructions before the first pass (interpreter + imports + model load)
    seconds: float
    x86_ms: float | None
    view_cpu: str = ""


def measure(
    job: Job, run_deltas: list[list[Counts]], marks: dict[int, Counts], run: Run, seconds: float
) -> Measurement:
    passes, n_steps = run.passes, len(job.steps)
    last = marks[passes * MARK_STRIDE + n_steps]
    total = per_invoke(marks[0].total, last.total, passes)
    whole = last.minus(marks[0])
    per_pass = [sum(c.total for c in p) for p in run_deltas]
    per_graph: dict[str, float] = {}
    counts_per_graph: dict[str, int] = {}
    for p in run_deltas:
        for step, c in zip(job.steps, p):
            per_graph[step.graph] = per_graph.get(step.graph, 0) + c.total / passes
    for step in job.steps:
        counts_per_graph[step.graph] = counts_per_graph.get(step.graph, 0) + 1
    per_crop = {g: v / counts_per_graph[g] for g, v in per_graph.items()}
    steady = per_pass[1:] or per_pass
    return Measurement(
        job.model,
        job.variant,
        job.kind,
        job.unit,
        run.cpu,
        run.runtime,
        passes,
        total,
        per_graph,
        per_crop,
        {k: v / passes for k, v in whole.classes.items()},
        float(per_pass[0]),
        float(min(steady)),
        float(max(steady)),
        marks[0].total,
        round(seconds, 1),
        job.x86_ms,
        run.view_cpu,
    )


def count(env: Env, run: Run, out: Path) -> Measurement:
    """Measure (or read from the cache) one job on one CPU in one runtime."""
    key = run.key(env)
    cache = out / "runs" / f"{key}.json"
    if cache.is_file():
        return Measurement(**json.loads(cache.read_text()))
    t0 = time.monotonic()
    output = emulate(env, run, out / "work" / key)
    result = measure(
        run.job, step_deltas(output.marks, run.passes, len(run.job.steps)), output.marks, run, time.monotonic() - t0
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(to_jsonable(result)))
    return result


def two_process_count(env: Env, job: Job, cpu: str, runtime: str, n: int, out: Path) -> dict[str, Any]:
    """The issue's first method, with qemu's own insn.c: exit totals at N=0 and N=n, per invoke = difference / n."""
    totals = {}
    for passes in (0, n):
        run = Run(job, cpu, runtime, passes, plugin="insn")
        cache = out / "runs" / f"{run.key(env)}.json"
        if not cache.is_file():
            output = emulate(env, run, out / "work" / run.key(env))
            if output.exit is None:
                raise BenchError("qemu's insn plugin printed no total")
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"total": output.exit.total}))
        totals[passes] = json.loads(cache.read_text())["total"]
    return {
        "job": job.label,
        "cpu": cpu,
        "runtime": runtime,
        "n": n,
        "total_at_0": totals[0],
        "total_at_n": totals[n],
        "per_invoke": per_invoke(totals[0], totals[n], n),
    }


# -- pipelines, kernels, verdicts (pure) -------------------------------------------------------------------------------
def find(ms: Iterable[Measurement], model: str, variant: str, cpu: str, runtime: str) -> Measurement | None:
    return next(
        (m for m in ms if (m.model, m.variant, m.cpu, m.runtime, m.view_cpu) == (model, variant, cpu, runtime, "")),
        None,
    )


def ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 3) if value is not None and base else None


@dataclass(frozen=True)
class Pipeline:
    name: str  # "deployed" | "all-fp32"
    detector: str
    embedder: str
    cpu: str
    runtime: str
    per_frame: float | None  # detector frame + one embedder inference
    baseline: float | None  # the all-fp32 pipeline, same CPU and runtime
    ratio: float | None
    x86_ms: float | None


def counts_by_cpu(ms: Sequence[Measurement], model: str, runtime: str) -> dict[str, dict[str, float]]:
    """``{cpu: {variant: instructions per inference}}`` of one model in one runtime."""
    out: dict[str, dict[str, float]] = {}
    for m in ms:
        if m.model == model and m.runtime == runtime and not m.view_cpu:
            out.setdefault(m.cpu, {})[m.variant] = m.per_invoke
    return out


# Device checks of one run: {model: {cpu: {variant: {"passed": bool, "summary": str}}}} (arm_gate.as_by_cpu per model).
Checks = dict[str, dict[str, dict[str, dict[str, Any]]]]


def deployed_per_cpu(
    ms: Sequence[Measurement],
    detector: tuple[str, str],
    embedder: tuple[str, str],
    pinned: dict[str, str | None],
    cpus: Sequence[str],
    runtime: str,
    checks: Checks | None = None,
    pinned_by_cpu: dict[str, dict[str, str | None]] | None = None,
) -> dict[str, tuple[str, str]]:
    """``{cpu: (detector variant, embedder variant)}`` as `make deploy` picks them for a profile with that CPU:
    pinned (``pinned_by_cpu[cpu]``, the pins of that CPU's own profile, else ``pinned``), else the fewest instructions
    measured among the variants that CPU may be given (facelite.deploy.variants), else the profile's current choice."""
    out = {}
    for cpu in cpus:
        pins = (pinned_by_cpu or {}).get(cpu, pinned)
        chosen = [
            _deployed_variant(ms, m, pins.get(role), cpu, runtime, checks)
            for role, m in (("detector", detector), ("embedder", embedder))
        ]
        out[cpu] = (chosen[0], chosen[1])
    return out


def landmarks_per_cpu(
    ms: Sequence[Measurement],
    landmarks: tuple[str, str],
    pinned: str | None,
    cpus: Sequence[str],
    runtime: str,
    checks: Checks | None = None,
) -> dict[str, str]:
    """``{cpu: variant}`` of the profile's landmarks model (MTCNN, for its O-Net), chosen as for the detector."""
    return {cpu: _deployed_variant(ms, landmarks, pinned, cpu, runtime, checks) for cpu in cpus}


def _deployed_variant(
    ms: Sequence[Measurement],
    model: tuple[str, str],
    pinned: str | None,
    cpu: str,
    runtime: str,
    checks: Checks | None = None,
) -> str:
    counts = eligible(counts_by_cpu(ms, model[0], runtime).get(cpu, {}), (checks or {}).get(model[0], {}).get(cpu, {}))
    return pinned or (fewest_instructions(counts) if counts else model[1])


def pipelines(
    ms: Sequence[Measurement],
    detector: tuple[str, str],
    embedder: tuple[str, str],
    cpus: Sequence[str],
    runtimes: Sequence[str],
    deployed: dict[str, tuple[str, str]] | None = None,
    landmarks: tuple[str, str] | None = None,
    landmarks_deployed: dict[str, str] | None = None,
) -> list[Pipeline]:
    """The pi pipeline per frame (detector + one face embedded) as deployed and all-fp32, on every CPU/runtime.

    ``deployed`` gives the variants per CPU (``deployed_per_cpu``); without it, ``detector``/``embedder``'s own.
    With ``landmarks`` (the profile's models.landmarks), the face also costs O-Net's passes on one crop each
    (OnetLandmarks.passes, the agent's default), counted from that MTCNN variant's per-crop O-Net figure."""
    rows = []
    for runtime in runtimes:
        for cpu in cpus:
            figures = {}
            dv0, ev0 = (deployed or {}).get(cpu, (detector[1], embedder[1]))
            lv0 = (landmarks_deployed or {}).get(cpu, landmarks[1]) if landmarks else None
            for name, (dv, ev, lv) in (("all-fp32", ("fp32", "fp32", "fp32")), ("deployed", (dv0, ev0, lv0))):
                d, e = find(ms, detector[0], dv, cpu, runtime), find(ms, embedder[0], ev, cpu, runtime)
                per_frame = d.per_invoke + e.per_invoke if d and e else None
                x86 = d.x86_ms + e.x86_ms if d and e and d.x86_ms and e.x86_ms else None
                det = f"{detector[0]}/{dv}"
                if landmarks:
                    lm = find(ms, landmarks[0], str(lv), cpu, runtime)
                    crop = lm.per_crop.get("onet") if lm else None
                    per_frame = per_frame + ONET_PASSES * crop if per_frame is not None and crop else None
                    x86 = None  # the converter times O-Net only inside the whole cascade
                    det += f" + {landmarks[0]}/{lv} O-Net x{ONET_PASSES}"
                figures[name] = (det, f"{embedder[0]}/{ev}", per_frame, x86)
            base = figures["all-fp32"][2]
            for name, (det, emb, per_frame, x86) in figures.items():
                rows.append(Pipeline(name, det, emb, cpu, runtime, per_frame, base, ratio(per_frame, base), x86))
    return rows


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: float | None
    limit: float
    passed: bool
    note: str = ""


def verdicts(ms: Sequence[Measurement], pipes: Sequence[Pipeline], runtime: str) -> list[Verdict]:
    """The targets of issue 11 on Cortex-A72 and Cortex-A76, in the profile's runtime. A missing figure fails."""
    out = []
    for cpu in TARGET_CPUS:
        p = next((p for p in pipes if (p.name, p.cpu, p.runtime) == ("deployed", cpu, runtime)), None)
        measured = p.ratio if p else None
        label = f"{cpu}: pi pipeline as deployed ({p.detector} + {p.embedder})" if p else f"{cpu}: pi pipeline"
        out.append(
            Verdict(
                f"{label} / all-fp32, instructions per frame",
                measured,
                PIPELINE_TARGET,
                measured is not None and measured <= PIPELINE_TARGET,
                "" if measured is not None else "not measured",
            )
        )
    model, variant, limit = INT8_EMBEDDER
    for cpu in TARGET_CPUS:
        q, f = find(ms, model, variant, cpu, runtime), find(ms, model, "fp32", cpu, runtime)
        measured = ratio(q.per_invoke, f.per_invoke) if q and f else None
        note = "" if measured is not None else f"no {model}/{variant} measured (not built or failed its gates)"
        out.append(
            Verdict(
                f"{cpu}: {model}/{variant} / {model}/fp32, instructions per inference",
                measured,
                limit,
                measured is not None and measured <= limit,
                note,
            )
        )
    return out


@dataclass(frozen=True)
class Kernels:
    """Which kernels ran, read from the instruction mix of one measurement."""

    model: str
    variant: str
    cpu: str
    runtime: str
    dot: float  # sdot/udot per inference: only where the CPU has the dot-product extension
    widening_mul: float  # vector smull/smlal/sadalp: int8 kernels without it
    fmla: float  # fp32 (and scalar) FMA
    memory_share: float  # loads + stores / all instructions
    verdict: str
    fmla_h: float = 0.0  # vector float16 FMA: only where the CPU has FP16 arithmetic (reports before it: 0)


def kernel_rows(
    ms: Sequence[Measurement], has_dotprod: dict[str, bool], has_fp16: dict[str, bool] | None = None
) -> list[Kernels]:
    rows = []
    for m in ms:
        if m.view_cpu:
            continue
        c = m.classes
        dot, wide, fmla = c.get("dot", 0.0), c.get("widening_mul", 0.0), c.get("fmla", 0.0)
        half = c.get("fmla_h", 0.0)
        mem = (c.get("load", 0.0) + c.get("store", 0.0)) / m.per_invoke if m.per_invoke else 0.0
        if dot and not has_dotprod[m.cpu]:
            verdict = "WRONG: dot-product instructions on a CPU without them"
        elif half and not (has_fp16 or {}).get(m.cpu, False):
            verdict = "WRONG: float16 arithmetic on a CPU without it"
        elif dot:
            verdict = "dot-product kernels"
        elif wide > fmla + half:
            verdict = "int8 widening-multiply kernels" + (" (CPU has dotprod, unused)" if has_dotprod[m.cpu] else "")
        elif half > fmla:
            verdict = "fp16 FMA kernels"
        else:
            verdict = "fp32 FMA kernels"
        rows.append(Kernels(m.model, m.variant, m.cpu, m.runtime, dot, wide, fmla, round(mem, 3), verdict, half))
    return rows


def mega(v: float | None) -> str:
    return "-" if v is None else f"{v / 1e6:.1f} M"


def times(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


# -- CPU features as the guest sees them ------------------------------------------------------------------------------
HWCAP_BITS = {"fphp": 9, "asimdhp": 10, "asimddp": 20}  # AT_HWCAP (16)
HWCAP2_BITS = {"i8mm": 13, "bf16": 14}  # AT_HWCAP2 (26)
_HWCAP_PROBE = (
    "import ctypes; f = ctypes.CDLL(None).getauxval; f.restype = ctypes.c_ulong; f.argtypes = [ctypes.c_ulong]; "
    "print(f(16), f(26)); print(open('/proc/cpuinfo').read().split('CPU part')[1].split()[1])"
)


def decode_hwcaps(hwcap: int, hwcap2: int) -> dict[str, bool]:
    caps = {name: bool(hwcap >> bit & 1) for name, bit in HWCAP_BITS.items()}
    caps.update({name: bool(hwcap2 >> bit & 1) for name, bit in HWCAP2_BITS.items()})
    return caps


def probe_cpu(env: Env, cpu: str) -> dict[str, Any]:
    """The auxiliary vector's ISA features and the /proc/cpuinfo part, as the guest reads them on this CPU model."""
    view = env.views[cpu]
    proc = subprocess.run(
        [env.qemu, "-cpu", cpu, "-L", view, f"{view}/usr/bin/python3.11", "-c", _HWCAP_PROBE],
        env=guest_env(""),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    caps_line, part = proc.stdout.split("\n")[:2]
    hwcap, hwcap2 = (int(v) for v in caps_line.split())
    return {"cpu": cpu, "cpuinfo_part": part.strip(), **decode_hwcaps(hwcap, hwcap2)}


# -- report ------------------------------------------------------------------------------------------------------------
CAVEATS = """\
What instruction counts can tell: the work each runtime's kernels execute on each core, deterministic and blind to
this shared machine's load; which kernels were chosen (the instruction mix: `sdot`/`udot` only exist on cores with
the dot-product extension, vector `smull`/`smlal`/`sadalp` are the int8 kernels without it, `fmla` the fp32 ones);
and how int8 compares with fp32 *on the same core* when both run compute-bound kernels.

What they cannot tell: time. qemu's TCG models no pipeline, cache or memory, so
- **memory stalls** are invisible: FaceNet fp32 streams 94 MB of weights per inference through a 1 MB L2 on a Pi 4;
  its int8 twin moves a quarter of the bytes, which helps time more than its instruction ratio shows;
- **SIMD width and issue rate** differ per core at equal counts: all three run 128-bit NEON, but the Cortex-A53 is
  in-order, dual-issue, with a 64-bit NEON datapath (a 128-bit `fmla` takes two cycles), the A72 has two 128-bit
  pipes out of order, the A76 higher throughput and `sdot` (16 int8 multiply-adds per instruction, where
  `smlal` does 8); one `sdot` and one `ldr` count as one instruction each;
- **kernels tuned for a core** trade instructions for cycles: XNNPACK's Cortex-A53 kernels (chosen from the cpuinfo
  part) execute about 1.5x the instructions of its out-of-order kernels on the same model (cross-checks: three times
  the prefetches); they are written to split 128-bit loads into 64-bit loads and inserts that an in-order A53
  dual-issues beside its FMAs, so more instructions there need not mean more time;
- **clock and threads**: Pi 4 1.5-1.8 GHz, Pi 5 2.4 GHz; counts are one thread (the pi profile runs 4 threads per
  model, whose speed-up and synchronisation are not here).
So ratios within one core and one runtime are the figures to trust; across cores, an instruction on an A53 costs
more time than one on an A76, and the A53 column is best compared with itself.
"""


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def figure(m: Measurement | None, base: Measurement | None) -> str:
    if m is None:
        return "-"
    if base is None or base is m:
        return mega(m.per_invoke)
    return f"{mega(m.per_invoke)} ({times(ratio(m.per_invoke, base.per_invoke))})"


def render(report: dict[str, Any], ms: Sequence[Measurement]) -> str:
    cpus, runtimes = report["cpus"], report["runtimes"]
    jobs = report["jobs"]
    lines = [
        "# make bench-arm: guest instructions per inference on emulated ARM cores",
        "",
        f"Generated {report['generated']} by `{report['command']}`. qemu-aarch64 {report['qemu_version']} (TCG, "
        f"`-cpu` per column) runs bookworm arm64 python3.11 with each runtime's aarch64 wheels "
        f"({'; '.join(report['sites'])}); a plugin counts guest instructions. Per inference = (count after "
        f"{report['passes']} passes - count after 0) / {report['passes']}, in one process (start-up, model load "
        "and exit removed); one thread. Every figure: instructions (ratio to the fp32 variant of the same model, same "
        "core, same runtime); x86 ms = the manifest's p50 (ai-edge-litert, this machine, one thread).",
        "",
        f"Result: **{'PASS' if report['passed'] else 'FAIL'}** "
        f"({sum(v['passed'] for v in report['targets'])} of {len(report['targets'])} targets met).",
        "",
        "## Instructions per inference",
        "",
    ]
    header = ["model/variant", "x86 ms"] + [f"{c} {r}" for r in runtimes for c in cpus]
    rows = []
    for job in jobs:
        row = [f"{job['model']}/{job['variant']}", f"{job['x86_ms']:.1f}" if job["x86_ms"] else "-"]
        for r in runtimes:
            for c in cpus:
                row.append(figure(find(ms, job["model"], job["variant"], c, r), find(ms, job["model"], "fp32", c, r)))
        rows.append(row)
    lines += md_table(header, rows)
    lines += [
        "",
        "Units: " + "; ".join(sorted({f"{j['model']}: per {j['unit']}" for j in jobs})) + ". The x86 ms of "
        "a detector is the converter's whole `detect()` of a 640x480 frame (every R-Net/O-Net candidate, NMS, "
        "Python), so compare it across variants, not with the instruction unit.",
    ]
    mtcnn = [m for m in ms if m.model == "mtcnn" and not m.view_cpu]
    if mtcnn:
        lines += [
            "",
            "MTCNN per graph (M instructions: the whole P-Net pyramid, one R-Net crop, one O-Net crop; each "
            "further candidate adds one crop):",
            "",
        ]
        lines += md_table(
            ["variant", "cpu", "runtime", "P-Net pyramid", "R-Net crop", "O-Net crop"],
            [
                [
                    m.variant,
                    m.cpu,
                    m.runtime,
                    mega(m.per_graph.get("pnet")),
                    mega(m.per_crop.get("rnet")),
                    mega(m.per_crop.get("onet")),
                ]
                for m in mtcnn
            ],
        )
    lines += ["", "## The pi pipeline per frame (detector + one face embedded)", ""]
    lines += md_table(
        ["pipeline", "detector + embedder", "cpu", "runtime", "instructions", "vs all-fp32", "x86 ms"],
        [
            [
                p["name"],
                f"{p['detector']} + {p['embedder']}",
                p["cpu"],
                p["runtime"],
                mega(p["per_frame"]),
                times(p["ratio"]),
                f"{p['x86_ms']:.1f}" if p["x86_ms"] else "-",
            ]
            for p in report["pipelines"]
        ],
    )
    lines += [
        "",
        "## The variant `make deploy` picks per CPU",
        "",
        f"For a profile with `platform.cpu` set and runtime {report['profile_runtime']}: per model, the built variant "
        f"that executes the fewest instructions on that core where it saves at least {MIN_SAVING:.0%} of "
        f"{REFERENCE_VARIANT}'s there, else {REFERENCE_VARIANT} (`<model>/by_cpu.json`, written by this run beside the "
        "variants with each one's sha256; a rebuilt variant makes it stale and deploy falls back to make convert's x86 "
        "choice, with a warning). A variant whose arithmetic differs on ARM (fp16-arith) counts only on a core where "
        "its device check below passed. Pinned variants in the profile win. "
        + ", ".join(f"{c}: the {n} profile" for c, n in (report.get("profile_by_cpu") or {}).items())
        + ".",
        "",
    ]
    checks = checks_of(report)
    by_model = {model: counts_by_cpu(ms, model, report["profile_runtime"]) for model in {m.model for m in ms}}

    def pick(model: str, counts: dict[str, dict[str, float]], cpu: str) -> str:
        allowed = eligible(counts.get(cpu, {}), checks.get(model, {}).get(cpu, {}))
        return fewest_instructions(allowed) if allowed else "-"

    lines += md_table(
        ["model", *cpus],
        [[model, *(pick(model, counts, c) for c in cpus)] for model, counts in sorted(by_model.items())],
    )
    device = [DeviceCheck(**c) for c in report.get("device_checks", [])]
    if device:
        lines += [
            "",
            "## Device checks: variants whose arithmetic differs on ARM, against fp32 on the same core",
            "",
            "make convert's gates run on x86, where fp16-arith computes in float32; here the variant and its fp32 run "
            f"on each emulated core in {report['profile_runtime']} and the agent's view of both outputs is compared "
            "(arm_gate.py): embedders on the faces of faces/people (every face's cosine to fp32, verification AUC over "
            "their pairs), BlazeFace on faces/scenes + faces/people (the agent's decoder on both outputs: recall of "
            "fp32's faces at IoU 0.5, mean IoU).",
            "",
        ]
        lines += md_table(
            ["model/variant", "cpu", "inputs", "figures", "result"],
            [[f"{c.model}/{c.variant}", c.cpu, c.inputs, c.summary(), "PASS" if c.passed else "FAIL"] for c in device],
        )
    lines += ["", "## Targets (issue 11; profile runtime " + report["profile_runtime"] + ")", ""]
    lines += md_table(
        ["target", "measured", "limit", "result"],
        [
            [
                v["target"],
                times(v["measured"]) + (f" ({v['note']})" if v["note"] else ""),
                f"<= {v['limit']}x",
                "PASS" if v["passed"] else "FAIL",
            ]
            for v in report["targets"]
        ],
    )
    lines += [
        "",
        "## Kernels chosen per core",
        "",
        "ISA features the guest reads (auxiliary vector, from qemu's "
        "`-cpu` model) and the `/proc/cpuinfo` part served from the rootfs view:",
        "",
    ]
    lines += md_table(
        ["cpu", "cpuinfo part", "asimddp (dotprod)", "asimdhp (fp16)", "i8mm"],
        [[p["cpu"], p["cpuinfo_part"], p["asimddp"], p["asimdhp"], p["i8mm"]] for p in report["cpu_probes"]],
    )
    lines += [
        "",
        "Instruction mix per inference (M): dot = `sdot`/`udot`, widening = vector `smull`/`smlal`/`sadalp`, "
        "fmla = fp32 FMA, fmla fp16 = vector float16 FMA (ARMv8.2 FP16), memory = loads + stores share:",
        "",
    ]
    lines += md_table(
        ["model/variant", "cpu", "runtime", "dot", "widening", "fmla", "fmla fp16", "memory", "kernels"],
        [
            [
                f"{k['model']}/{k['variant']}",
                k["cpu"],
                k["runtime"],
                f"{k['dot'] / 1e6:.2f}",
                f"{k['widening_mul'] / 1e6:.2f}",
                f"{k['fmla'] / 1e6:.2f}",
                f"{k.get('fmla_h', 0.0) / 1e6:.2f}",
                f"{k['memory_share']:.0%}",
                k["verdict"],
            ]
            for k in report["kernels"]
        ],
    )
    lines += ["", "## Cross-checks", ""]
    for c in report["crosschecks"]:
        lines.append(f"- {c}")
    lines += ["", "## What instruction counts can and cannot tell about time", "", CAVEATS]
    if report.get("chart"):
        lines += [f"![instructions per inference]({report['chart']})", ""]
    return "\n".join(lines)


def chart(report: dict[str, Any], ms: Sequence[Measurement], path: Path) -> Path:
    """Grouped bars: M instructions per inference per job, one bar per CPU, one panel per runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cpus, runtimes, jobs = report["cpus"], report["runtimes"], report["jobs"]
    labels = [f"{j['model']}\n{j['variant']}" for j in jobs] + ["pi pipeline\ndeployed", "pi pipeline\nall-fp32"]
    fig, axes = plt.subplots(len(runtimes), 1, figsize=(11, 3.8 * len(runtimes)), squeeze=False)
    width = 0.8 / len(cpus)
    for ax, runtime in zip(axes[:, 0], runtimes):
        for i, cpu in enumerate(cpus):
            ys = []
            for j in jobs:
                m = find(ms, j["model"], j["variant"], cpu, runtime)
                ys.append(m.per_invoke / 1e6 if m else float("nan"))
            for name in ("deployed", "all-fp32"):
                p = next(
                    (p for p in report["pipelines"] if (p["name"], p["cpu"], p["runtime"]) == (name, cpu, runtime)),
                    None,
                )
                ys.append(p["per_frame"] / 1e6 if p and p["per_frame"] else float("nan"))
            ax.bar([x + (i - (len(cpus) - 1) / 2) * width for x in range(len(labels))], ys, width, label=cpu)
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("M instructions per inference / frame")
        ax.set_title(f"{runtime}, one thread (qemu-aarch64 TCG, start-up removed)")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- main --------------------------------------------------------------------------------------------------------------
def runtime_requirements(pyproject: Path = REPO / "pyproject.toml") -> dict[str, list[str]]:
    """The device runtimes' pins, as the device installs them: pyproject's `device` and `device-legacy` extras."""
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    return {"ai-edge-litert": list(extras["device"]), "tflite-runtime": list(extras["device-legacy"])}


def setup(out: Path, cpus: Sequence[str]) -> Env:
    reqs = runtime_requirements()
    cmd = [str(SETUP), *reqs["ai-edge-litert"], "--", *reqs["tflite-runtime"]]
    env = dict(os.environ, OUT=str(out), PY=sys.executable, CPUS=" ".join([*cpus, "pi4"]))
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, timeout=3600)
    if proc.returncode != 0:
        raise BenchError(f"{SETUP.name} failed (exit {proc.returncode}, see above)")
    (out / "setup.txt").write_text(proc.stdout)
    return parse_setup(proc.stdout)


def pinned_variants(profile: str) -> dict[str, str | None]:
    from facelite.deploy.profile import load_profile

    p = load_profile(profile)
    return {
        "detector": p.models.detector_variant,
        "embedder": p.models.embedder_variant,
        "landmarks": p.models.landmarks_variant,
    }


def record_by_cpu(facts: dict[str, Any], ms: Sequence[Measurement], models_dir: Path) -> list[Path]:
    """Write ``<model>/by_cpu.json`` for every measured model: what `make deploy` reads (facelite.deploy.variants)."""
    written = []
    runtime = facts["profile_runtime"]
    checks = checks_of(facts)
    for model in sorted({m.model for m in ms}):
        counts = counts_by_cpu(ms, model, runtime)
        if counts and (models_dir / model).is_dir():
            write_by_cpu(
                models_dir / model, counts, runtime=runtime, generated=facts["generated"], checks=checks.get(model)
            )
            written.append(models_dir / model / BY_CPU_FILE)
    return written


def checks_of(facts: dict[str, Any]) -> Checks:
    """The run's device checks by model (reports from before the checks have none)."""
    checks = [DeviceCheck(**c) for c in facts.get("device_checks", [])]
    return {model: as_by_cpu([c for c in checks if c.model == model]) for model in sorted({c.model for c in checks})}


def guest_runner(env: Env, runtime: str, out: Path) -> GuestRunner:
    """arm_gate's GuestRunner: the graph run on the emulated core (no plugin), outputs cached by graph, inputs, core."""

    def run(cpu: str, graph: Path, inputs: np.ndarray) -> list[np.ndarray]:
        digest = hashlib.sha256(Path(graph).read_bytes())
        digest.update(np.ascontiguousarray(inputs).tobytes())
        facts = [list(inputs.shape), str(inputs.dtype), cpu, runtime, env.qemu_version, env.sites.get(runtime)]
        digest.update(json.dumps(facts).encode())
        work = out / "checks" / digest.hexdigest()[:16]
        saved = work / "outputs.npz"
        if not saved.is_file():
            work.mkdir(parents=True, exist_ok=True)
            np.save(work / "inputs.npy", inputs)
            spec = work / "spec.json"
            partial = work / "partial.npz"
            spec.write_text(
                json.dumps(
                    {"runtime": runtime, "graph": str(Path(graph).resolve()), "inputs": str(work / "inputs.npy"),
                     "save": str(partial)}
                )
            )  # fmt: skip
            view = env.views[cpu]
            cmd = [env.qemu, "-cpu", cpu, "-L", view, f"{view}/usr/bin/python3.11", "-P", "-B", str(GUEST), str(spec)]
            proc = subprocess.run(
                cmd, env=guest_env(env.sites[runtime]), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
            )
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                raise BenchError(f"{graph} on {cpu} ({runtime}) exited {proc.returncode}: {' | '.join(tail)}")
            partial.rename(saved)
            (work / "inputs.npy").unlink()
        with np.load(saved) as data:
            return [data[f"arr_{k}"] for k in range(len(data.files))]

    return run


def device_checks(env: Env, jobs: Sequence[Job], args: argparse.Namespace, runtime: str) -> list[DeviceCheck]:
    """Every built variant whose device arithmetic differs from x86's, against its fp32 on each CPU (arm_gate.py)."""
    out: list[DeviceCheck] = []
    run = guest_runner(env, runtime, args.out)
    for model, variant in sorted({(j.model, j.variant) for j in jobs if j.variant in DEVICE_CHECKED_VARIANTS}):
        t0 = time.monotonic()
        checks = check_variant(
            args.models.resolve(), args.data_dir, model, variant, args.cpus, runtime, run, min_face=MIN_FACE
        )
        for c in checks:
            log.info(
                "device check %s/%s on %s (%s), %d inputs: %s, %s",
                model, variant, c.cpu, runtime, c.inputs, "PASS" if c.passed else "FAIL", c.summary(),
            )  # fmt: skip
        log.info("device checks of %s/%s (%.1f s)", model, variant, time.monotonic() - t0)
        out += checks
    return out


def profiles_by_cpu(default: str, cpus: Sequence[str]) -> dict[str, str]:
    """The device profile "as deployed" means on each CPU: the one naming that CPU (pi5 on the Cortex-A76) with the
    same detector and embedder as ``default``, else ``default`` itself."""
    from facelite.deploy.profile import load_profile, profile_names

    base = load_profile(default)
    same = (base.models.detector, base.models.embedder)
    by_cpu: dict[str, str] = {}
    for name in [default, *profile_names()]:
        p = load_profile(name)
        if p.platform.cpu is not None and p.platform.cpu in cpus and (p.models.detector, p.models.embedder) == same:
            by_cpu.setdefault(p.platform.cpu, name)
    return {cpu: by_cpu.get(cpu, default) for cpu in cpus}


def deployed_models(
    profile: str, models_dir: Path
) -> tuple[tuple[str, str], tuple[str, str], tuple[str, str] | None, str]:
    """(detector, variant), (embedder, variant), (landmarks model, variant) or None, runtime of a device profile;
    variants as `make deploy` picks them."""
    from facelite.deploy.profile import load_profile

    p = load_profile(profile)
    index = json.loads((models_dir / "index.json").read_text())["models"]

    def pick(name: str, pinned: str | None) -> tuple[str, str]:
        if name not in index:
            raise BenchError(f"profile {profile} names model {name!r}, not in {models_dir}/index.json")
        choice = pick_variant(
            models_dir, name, index[name], pinned=pinned, cpu=p.platform.cpu, runtime=p.platform.runtime
        )
        if choice.variant is None:
            raise BenchError(f"no variant of {name} passed its gates ({choice.reason})")
        return name, choice.variant

    return (
        pick(p.models.detector, p.models.detector_variant),
        pick(p.models.embedder, p.models.embedder_variant),
        pick(p.models.landmarks, p.models.landmarks_variant) if p.models.landmarks else None,
        p.platform.runtime,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m facelite.tools.bench.arm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, default=Path(os.environ.get("FACELITE_MODELS_DIR", REPO / "build/models")))
    ap.add_argument(
        "--data-dir", type=Path, default=None, help="photos for the device checks (default: FACELITE_DATA_DIR)"
    )
    ap.add_argument("--out", type=Path, default=REPO / "build" / "bench-arm")
    ap.add_argument("--cpus", nargs="+", default=list(CPUS), choices=CPUS)
    ap.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    ap.add_argument("--only", nargs="*", default=[], help="models or model/variant to count (default: all built)")
    ap.add_argument("--passes", type=int, default=5, help="inferences counted per run (default 5)")
    ap.add_argument("--profile", default="pi", help="device profile whose pipeline is measured (default pi)")
    ap.add_argument("--report-only", action="store_true", help="no qemu: re-render OUT/report.json's counts")
    ap.add_argument("--no-targets", action="store_true", help="exit 0 even when a target of issue 11 is missed")
    add_logging_flags(ap)
    return ap.parse_args(argv)


def timed(what: str, fn: Any, *args: Any) -> Any:
    t0 = time.monotonic()
    result = fn(*args)
    log.info("%s (%.1f s)", what, time.monotonic() - t0)
    return result


def crosschecks(env: Env, jobs: Sequence[Job], ms: list[Measurement], args: argparse.Namespace) -> list[str]:
    """Mix plugin vs qemu's insn.c (the issue's two-process method); /proc/cpuinfo part vs the emulated core."""
    notes = []
    small = next((j for j in jobs if j.model == "blazeface"), jobs[0])
    ref = find(ms, small.model, small.variant, "cortex-a72", "ai-edge-litert")
    if ref is not None and "cortex-a72" in args.cpus:
        two = timed(
            f"cross-check: qemu insn.c, {small.label} N=0 and N={args.passes}",
            two_process_count,
            env,
            small,
            "cortex-a72",
            "ai-edge-litert",
            args.passes,
            args.out,
        )
        notes.append(
            f"Counter: qemu's own `tests/plugin/insn.c` (inline), two processes, {small.label} on cortex-a72: "
            f"({two['total_at_n']:,} - {two['total_at_0']:,}) / {args.passes} = {mega(two['per_invoke'])} per "
            f"inference; facelite_mix marks in one process: {mega(ref.per_invoke)} "
            f"({times(ratio(ref.per_invoke, two['per_invoke']))})."
        )
    # The cpuinfo part: XNNPACK tunes GEMM kernels per microarchitecture (from cpuinfo's part), while dotprod comes
    # from the auxiliary vector. Run one model per case with a Pi 4's cpuinfo and compare with the matching one.
    cases = [
        ("cortex-a53", next((j for j in jobs if j.model == "mobilefacenet" and j.variant == "fp32"), None)),
        ("cortex-a76", next((j for j in jobs if j.model == "mobilefacenet" and j.variant == "int8"), None)),
    ]
    for cpu, job in cases:
        own = find(ms, job.model, job.variant, cpu, "ai-edge-litert") if job else None
        if job is None or own is None:
            continue
        run = Run(job, cpu, "ai-edge-litert", args.passes, view_cpu="pi4")
        other = timed(f"cross-check: {job.label} on {cpu} with a Pi 4's cpuinfo", count, env, run, args.out)
        ms.append(other)
        same = abs(other.per_invoke - own.per_invoke) <= 0.001 * own.per_invoke
        notes.append(
            f"/proc/cpuinfo: {job.label} on {cpu} with its own cpuinfo part {mega(own.per_invoke)} "
            f"(dot {own.classes.get('dot', 0) / 1e6:.2f} M, prefetch {own.classes.get('prefetch', 0) / 1e6:.2f} M), "
            f"with a Pi 4's (Cortex-A72 part) {mega(other.per_invoke)} (dot {other.classes.get('dot', 0) / 1e6:.2f} M, "
            f"prefetch {other.classes.get('prefetch', 0) / 1e6:.2f} M): "
            + ("the part changes nothing here." if same else "the part changes the kernels: it must match the core.")
        )
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(level_of(args))
    try:
        return run(args)
    except (FaceliteError, subprocess.SubprocessError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def measure_all(args: argparse.Namespace) -> dict[str, Any]:
    """Everything qemu counts in one run: the report's facts (JSON-ready), before any verdict."""
    models = args.models.resolve()
    args.data_dir = data_dir(args.data_dir)  # before hours of counting: the device checks need the photos
    jobs = timed(f"planned the artifacts in {models}", plan_jobs, models, args.only)
    detector, embedder, landmarks, profile_runtime = deployed_models(args.profile, models)
    onet = f" + {'/'.join(landmarks)} O-Net" if landmarks else ""
    log.info("%s: %s/%s%s + %s/%s in %s", args.profile, *detector, onet, *embedder, profile_runtime)
    if landmarks and args.only and not {landmarks[0], "/".join(landmarks)} & set(args.only):
        log.warning(
            "%s places landmarks with %s, which --only leaves out: no pipeline figure", args.profile, landmarks[0]
        )
    env = timed("setup (qemu, plugins, rootfs, aarch64 sites)", setup, args.out, args.cpus)
    probes = [timed(f"probed {cpu}", probe_cpu, env, cpu) for cpu in args.cpus]
    runs = [Run(j, cpu, rt, args.passes) for rt in args.runtimes for j in jobs for cpu in args.cpus]
    ms: list[Measurement] = []
    for i, r in enumerate(runs, 1):
        t0 = time.monotonic()
        m = count(env, r, args.out)
        ms.append(m)
        log.info(
            "[%d/%d] %s on %s (%s): %s per %s, start-up %s (%.1f s)",
            i, len(runs), r.job.label, r.cpu, r.runtime, mega(m.per_invoke),
            "frame" if r.job.kind == "detector" else "inference", mega(m.startup), time.monotonic() - t0,
        )  # fmt: skip
    notes = crosschecks(env, jobs, ms, args)
    checks = timed("device checks (variants whose arithmetic differs on ARM)", device_checks, env, jobs, args,
                   profile_runtime)  # fmt: skip
    by_cpu_profile = profiles_by_cpu(args.profile, args.cpus)
    return {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "make bench-arm",
        "models_dir": str(models),
        "qemu_version": env.qemu_version,
        "sites": [" ".join(v) for v in runtime_requirements().values()],
        "passes": args.passes,
        "frame": list(FRAME_HW[::-1]),
        "min_face": MIN_FACE,
        "cpus": args.cpus,
        "runtimes": args.runtimes,
        "profile": args.profile,
        "profile_runtime": profile_runtime,
        "deployed": {
            "detector": list(detector),
            "embedder": list(embedder),
            "landmarks": list(landmarks) if landmarks else None,
        },
        "pinned": pinned_variants(args.profile),
        "profile_by_cpu": by_cpu_profile,
        "pinned_by_cpu": {cpu: pinned_variants(name) for cpu, name in by_cpu_profile.items()},
        "device_checks": to_jsonable(checks),
        "jobs": [{"model": j.model, "variant": j.variant, "unit": j.unit, "x86_ms": j.x86_ms} for j in jobs],
        "cpu_probes": probes,
        "measurements": to_jsonable(ms),
        "crosschecks": notes,
    }


def judge(facts: dict[str, Any]) -> tuple[dict[str, Any], list[Measurement], list[Verdict]]:
    """Pipelines, kernels and targets from the measured facts (pure: --report-only re-renders through here)."""
    ms = [Measurement(**m) for m in facts["measurements"]]

    def model_variant(k: str) -> tuple[str, str]:
        value = facts["deployed"][k]
        name, variant = str(value).split("/") if isinstance(value, str) else value
        return str(name), str(variant)

    detector, embedder = model_variant("detector"), model_variant("embedder")
    # Reports written before landmarks were counted have no "landmarks" key: the profile had none then.
    landmarks = model_variant("landmarks") if facts["deployed"].get("landmarks") else None
    pinned = facts.get("pinned") or {"detector": None, "embedder": None}
    checks = checks_of(facts)
    per_cpu = deployed_per_cpu(
        ms, detector, embedder, pinned, facts["cpus"], facts["profile_runtime"], checks, facts.get("pinned_by_cpu")
    )
    lm_cpu = (
        landmarks_per_cpu(ms, landmarks, pinned.get("landmarks"), facts["cpus"], facts["profile_runtime"], checks)
        if landmarks
        else {}
    )
    pipes = pipelines(ms, detector, embedder, facts["cpus"], facts["runtimes"], per_cpu, landmarks, lm_cpu)
    targets = verdicts(ms, pipes, facts["profile_runtime"])
    has_dot = {p["cpu"]: p["asimddp"] for p in facts["cpu_probes"]}
    report = {
        **facts,
        "pipelines": to_jsonable(pipes),
        "deployed_per_cpu": {
            cpu: {"detector": d, "embedder": e} | ({"landmarks": lm_cpu[cpu]} if cpu in lm_cpu else {})
            for cpu, (d, e) in per_cpu.items()
        },
        "kernels": to_jsonable(kernel_rows(ms, has_dot, {p["cpu"]: p["asimdhp"] for p in facts["cpu_probes"]})),
        "targets": to_jsonable(targets),
        "passed": all(v.passed for v in targets),
        "chart": "instructions.png",
    }
    return report, ms, targets


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    args.out = args.out.resolve()  # qemu -L and the guest get absolute paths
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        last = args.out / "report.json"
        if not last.is_file():
            raise BenchError(f"no {last}: run once without --report-only")
        facts = json.loads(last.read_text())
        log.info("re-rendering the counts of %s (%s), no qemu", last, facts["generated"])
    else:
        facts = measure_all(args)
    report, ms, targets = judge(facts)
    if not args.report_only:  # re-rendered counts may belong to artifacts rebuilt since: never record those
        for path in record_by_cpu(facts, ms, Path(facts["models_dir"])):
            log.info("wrote %s (the variant per CPU that make deploy picks)", path)
    timed("chart", chart, report, ms, args.out / "instructions.png")
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "report.md").write_text(render(report, ms))
    for v in targets:
        log.info("target %s: %s (limit %s) %s", v.target, times(v.measured), v.limit, "PASS" if v.passed else "FAIL")
    log.info("report: %s (%.0f s)", args.out / "report.md", time.monotonic() - started)
    if report["passed"]:
        print(f"bench-arm PASS. next: less {args.out / 'report.md'}")
        return 0
    missed = sum(not v.passed for v in targets)
    print(f"bench-arm FAIL ({missed} of {len(targets)} targets missed; --no-targets to ignore)")
    print("next: make convert with integer variants that win on ARM (issue 11 item 3), then make bench-arm")
    return 0 if args.no_targets else 1


if __name__ == "__main__":
    raise SystemExit(main())
