"""`make bench`: python -m facelite.tools.bench --models build/models --data-dir ../shared --out build/bench [--quick]

Prepares frames from the real photos, runs the workers (TensorFlow float sources and accuracy; both device
runtimes; the agent end to end on one core against a real mosquitto; the peers), then writes
report.json, report.md, PNG charts and README-snippet.md into --out. --quick runs every step on a few
photos and frames with few repetitions: the structure is the same, the timings are not meant to be read.

Exit status: 0 when every target is met; 1 when one is missed or could not be measured (the FAIL lines name
them); 2 when the bench cannot run. A --quick run that completes exits 0 whatever its figures. --check
REPORT_JSON judges an existing report the same way without running anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from facelite.errors import FaceliteError
from facelite.logsetup import add_logging_flags, level_of, setup_logging
from facelite.tools.bench.common import BenchError, ProfilePipeline, profile_pipeline, read_json, write_json
from facelite.tools.bench.frames import Prepared, PrepOptions, size_key
from facelite.tools.bench.pagecache import Eviction

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
R = TypeVar("R")


@dataclass(frozen=True)
class Settings:
    quick: bool
    runs: int  # timed inferences per graph
    reps: int  # passes over the one-face frames for per-frame figures
    scaling_reps: int
    gallery_sizes: list[int]
    match_runs: int
    max_inputs: int  # distinct real inputs per graph
    worker_timeout_s: float

    @classmethod
    def choose(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, 5, 1, 1, [1000, 10000], 20, 3, 600.0)
        return cls(False, 50, 3, 2, [1000, 10000, 100000], 200, 16, 1800.0)


@dataclass(frozen=True)
class Plan:
    """Which pipelines the run measures, chosen from the built artifacts and their recommendations."""

    recommended: dict[str, str]
    main: list[Any]  # PipelineSpec: (MTCNN + FaceNet int8), (BlazeFace + MobileFaceNet as the pi profile ships)
    floats: list[Any]  # the same pipelines on the float TF sources
    quant: list[tuple[Any, Any]]  # (device detector + embedder variant, same detector + float embedder)
    combos: list[Any]  # recommended detector x recommended embedder: candidates for "our best"
    device: Any  # the agent's pipeline: BlazeFace + MobileFaceNet as the pi profile ships them


@dataclass(frozen=True)
class StepTime:
    step: str
    seconds: float


class Workers:
    """Runs bench workers as subprocesses (their logs in out/logs), keeping step times for the report."""

    def __init__(self, out: Path, timeout_s: float) -> None:
        self.jobs = out / "work" / "jobs"
        self.logs = out / "logs"
        self.timeout_s = timeout_s
        self.steps: list[StepTime] = []

    def run(
        self, name: str, task: str, job: Any, result_type: type[R], *, python: Path | None = None, pin: bool = False
    ) -> R:
        self.jobs.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        job_path, result_path, log_path = (
            self.jobs / f"{name}.json",
            self.jobs / f"{name}.result.json",
            self.logs / f"{name}.log",
        )
        write_json(job_path, job)
        result_path.unlink(missing_ok=True)
        cmd = [
            str(python or sys.executable),
            "-m",
            "facelite.tools.bench.worker",
            task,
            str(job_path),
            str(result_path),
        ]
        if pin:
            taskset = shutil.which("taskset")
            if taskset is None:
                raise BenchError(
                    "taskset (util-linux) is needed to pin single-core figures", fix="apt-get install util-linux"
                )
            cmd = [taskset, "-c", "0", *cmd]
        env = dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="2",
            PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        )
        log.info("step %s: %s", name, " ".join(cmd[-4:-2]))
        t0 = time.perf_counter()
        with open(log_path, "w") as fh:
            try:
                proc = subprocess.run(
                    cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=self.timeout_s, cwd=REPO
                )
            except subprocess.TimeoutExpired:
                raise BenchError(f"worker {name} did not finish in {self.timeout_s:.0f} s", str(log_path)) from None
        seconds = time.perf_counter() - t0
        self.steps.append(StepTime(name, round(seconds, 1)))
        if proc.returncode != 0:
            lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
            raise BenchError(
                f"worker {name} failed (exit {proc.returncode}): {lines[-1] if lines else ''}", str(log_path)
            )
        log.info("step %s done in %.0f s", name, seconds)
        return read_json(result_path, result_type)


def make_plan(artifacts: Sequence[Any], recommended: dict[str, str], device: ProfilePipeline | None = None) -> Plan:
    """``device``: the pi profile's pipeline (``profile_pipeline``); default the recommended variants."""
    from facelite.tools.bench.pipelines import SOURCE, PipelineSpec

    rec = recommended
    models = ("blazeface", "mtcnn", "facenet", "mobilefacenet")
    missing_rec = [m for m in models if m not in rec]
    if missing_rec:
        raise BenchError(f"no recommended variant of {', '.join(missing_rec)} in index.json", fix="run `make convert`")
    dev = {**rec, **(device.variants if device else {})}
    # One check of every artifact the plan runs: the recommended ones, facenet int8 (the MTCNN pipeline's, a
    # default variant) and the variants the device profile pins.
    needed = {(m, rec[m]) for m in models} | {("facenet", "int8")}
    needed |= {("blazeface", dev["blazeface"]), ("mobilefacenet", dev["mobilefacenet"])}
    absent = sorted(needed - {(a.model, a.variant) for a in artifacts})
    if absent:
        names = ", ".join(f"{m}/{v}" for m, v in absent)
        raise BenchError(f"artifacts the benchmark runs are not built: {names}", fix="run `make convert`")
    mtcnn_facenet = PipelineSpec("mtcnn", rec["mtcnn"], "facenet", "int8")
    device_spec = PipelineSpec("blazeface", dev["blazeface"], "mobilefacenet", dev["mobilefacenet"])
    floats = [
        PipelineSpec("mtcnn", SOURCE, "facenet", SOURCE),
        PipelineSpec("blazeface", SOURCE, "mobilefacenet", SOURCE),
    ]
    quant = []
    for emb, det in (("facenet", "mtcnn"), ("mobilefacenet", "blazeface")):
        for a in artifacts:
            if a.model == emb:
                quant.append((PipelineSpec(det, rec[det], emb, a.variant), PipelineSpec(det, rec[det], emb, SOURCE)))
    combos = [PipelineSpec(d, rec[d], e, rec[e]) for d in ("blazeface", "mtcnn") for e in ("mobilefacenet", "facenet")]
    return Plan(rec, [mtcnn_facenet, device_spec], floats, quant, combos, device_spec)


def _unique(specs: Sequence[Any]) -> list[Any]:
    seen: list[Any] = []
    for s in specs:
        if s not in seen:
            seen.append(s)
    return seen


def _agent_toml(
    path: Path, *, device_id: str, video: Path, detector: Path, embedder: Path, port: int, work: Path
) -> Path:
    """The agent config of one stream run: defaults except one thread, a short tracker gap, fresh files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'device_id = "{device_id}"\nstate_interval_s = 5\nlog_level = "WARNING"\n\n'
        f'[[cameras]]\nname = "door"\nsource = "{video}"\n\n'
        f'[models]\ndetector = "{detector}"\nembedder = "{embedder}"\nnum_threads = 1\n\n'
        # The streams leave 6 empty frames (0.24 s) between visits; these end a visit within that gap.
        "[tracking]\nmax_missed_frames = 3\nmax_missed_seconds = 0.1\n\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\ndiscovery = false\nclose_timeout_s = 10\n\n'
        f'[spool]\npath = "{work / (device_id + "-spool.sqlite")}"\n\n'
        f'[gallery]\npath = "{work / (device_id + "-gallery.sqlite")}"\n'
    )
    return path


def main(argv: list[str] | None = None, eviction: Eviction | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m facelite.tools.bench", description=__doc__)
    ap.add_argument("--models", type=Path, default=Path("build/models"), help="converted artifacts (make convert)")
    ap.add_argument("--data-dir", type=Path, default=None, help="holds faces/ and models/ (or FACELITE_DATA_DIR)")
    ap.add_argument("--out", type=Path, default=Path("build/bench"))
    ap.add_argument("--quick", action="store_true", help="a few photos and repetitions: checks the run, not the speed")
    ap.add_argument(
        "--check",
        type=Path,
        metavar="REPORT_JSON",
        help="run nothing: judge an existing report.json against its targets (exit 1 if one is missed)",
    )
    add_logging_flags(ap)
    args = ap.parse_args(argv)
    setup_logging(level_of(args))
    if eviction is not None:
        log.info("%s", eviction.describe())
    try:
        return check(args.check) if args.check is not None else run(args, eviction)
    except FaceliteError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code


def run(args: argparse.Namespace, eviction: Eviction | None = None) -> int:
    from facelite.model.manifest import Manifest
    from facelite.tools.bench.frames import prepare
    from facelite.tools.bench.models import discover
    from facelite.tools.dataset import data_dir as resolve_data_dir
    from facelite.vision.detect import create_detector

    t_start = time.perf_counter()
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    load_start = list(os.getloadavg())
    settings = Settings.choose(args.quick)
    data = resolve_data_dir(args.data_dir)
    models_dir = args.models.resolve()
    if not (models_dir / "index.json").is_file():
        raise BenchError("no model index", str(models_dir / "index.json"), "run `make convert`")
    out = args.out.resolve()
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out / "logs", ignore_errors=True)
    work.mkdir(parents=True)
    artifacts, recommended = discover(models_dir)
    plan = make_plan(artifacts, recommended, profile_pipeline(recommended))
    workers = Workers(out, settings.worker_timeout_s)

    # -- frames, streams and crops from the real photos ------------------------------------------------------------
    t0 = time.perf_counter()
    bf_dir = models_dir / "blazeface" / recommended["blazeface"]
    alignments = {}
    for name in ("facenet", "mobilefacenet"):
        m = Manifest.load(models_dir / name / recommended[name])
        assert m.alignment is not None
        size = (int(m.alignment.size[0]), int(m.alignment.size[1]))
        alignments[size_key(size)] = (m.alignment.template, size)
    prep = prepare(
        create_detector(bf_dir, min_face=20), PrepOptions(data / "faces" / "people", work, settings.quick, alignments)
    )
    workers.steps.append(_step("prepare", t0))
    log.info("prepared %d photos, %d streams in %.0f s", prep.photos, len(prep.streams), time.perf_counter() - t0)
    results = collect(Context(settings, plan, list(artifacts), prep, data, models_dir, work, workers))

    from facelite.tools.bench.report import Environment, build_report, write_outputs

    env = Environment(
        started=started,
        wall_s=round(time.perf_counter() - t_start, 1),
        quick=settings.quick,
        machine=_cpu_model(),
        cpus=os.cpu_count() or 0,
        load_avg_at_start=[round(v, 2) for v in load_start],
        python=platform.python_version(),
        data_dir=str(data),
        people_dir=str(prep.people_dir),
        photos=prep.photos,
        steps_s={s.step: s.seconds for s in workers.steps},
        settings={"runs": settings.runs, "reps": settings.reps, "scaling_reps": settings.scaling_reps},
        page_cache=eviction.describe() if eviction else "not dropped (RSS includes file pages as cached)",
    )
    report = build_report(env, plan, artifacts, prep, results)
    written = write_outputs(report, out)
    print(f"bench done in {env.wall_s:.0f} s: {', '.join(str(p.relative_to(out)) for p in written)} in {out}")
    code = check(out / "report.json")  # judged from the file written, exactly as `--check` would
    if code and settings.quick:
        print("quick run: its figures are not to be read, so a missed target does not fail it (exit 0)")
        return 0
    return code


def check(report_json: Path) -> int:
    """Print each target's verdict from a report.json; 1 if any target is missed or was not measured."""
    from facelite.tools.bench.report import verdict

    try:
        report = json.loads(report_json.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read the report: {exc}", str(report_json)) from None
    try:
        result = verdict(report)
    except (KeyError, TypeError, ValueError) as exc:
        raise BenchError(f"malformed target in the report: {exc}", str(report_json)) from None
    print("\n".join(result.lines))
    if result.missed:
        print(f"error: {len(result.missed)} target(s) missed: {'; '.join(result.missed)}", file=sys.stderr)
    return result.exit_code


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{platform.machine()}, {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return platform.machine()


def _step(name: str, t0: float) -> StepTime:
    return StepTime(name, round(time.perf_counter() - t0, 1))


@dataclass(frozen=True)
class Context:
    settings: Settings
    plan: Plan
    artifacts: list[Any]
    prep: Prepared
    data: Path
    models_dir: Path
    work: Path
    workers: Workers


MODEL_NAMES = ["blazeface", "mtcnn", "facenet", "mobilefacenet"]


def collect(ctx: Context) -> Any:
    """All workers, one after the other, so no figure shares the CPUs with another bench step."""
    from facelite.tools.bench.report import Collected

    host, litert, tflite = _models_and_accuracy(ctx)
    e2e, events, peers = _agent_and_peers(ctx)
    from facelite.tools.bench.agent_e2e import import_rss_mb

    return Collected(
        host, litert, tflite, e2e["device"], e2e["float"], events, peers, import_rss_mb(Path(sys.executable))
    )


def _models_and_accuracy(ctx: Context) -> tuple[Any, Any, Any]:
    from facelite.converter.runtimes import legacy_python
    from facelite.tools.bench.models import RuntimeJob, RuntimeResult, SourceJob, unavailable_runtime
    from facelite.tools.bench.pipelines import AccuracyJob
    from facelite.tools.bench.worker import HostJob, HostResult

    settings, plan, prep, workers = ctx.settings, ctx.plan, ctx.prep, ctx.workers
    source_job = SourceJob(
        models=MODEL_NAMES,
        threads=2,
        runs=settings.runs,
        inputs_dir=ctx.work / "inputs",
        write_inputs=True,
        frames=prep.one_face,
        probes=prep.probes,
        max_inputs=settings.max_inputs,
    )
    specs = _unique([*plan.main, *plan.floats, *[s for pair in plan.quant for s in pair], *plan.combos])
    host = workers.run(
        "host-tf", "host", HostJob(source_job, AccuracyJob(ctx.models_dir, prep.people_dir, specs)), HostResult
    )
    runtime_job = RuntimeJob("ai-edge-litert", ctx.artifacts, host.source.inputs, [1, 2], settings.runs)
    litert = workers.run("runtime-litert", "runtime", runtime_job, RuntimeResult)
    legacy = legacy_python()
    if legacy is None or not legacy.exists():
        tflite: RuntimeResult = unavailable_runtime(
            "tflite-runtime", ctx.artifacts, f"no .venv-legacy interpreter ({legacy or 'not found'}): run `make setup`"
        )
    else:
        try:
            job = RuntimeJob("tflite-runtime", ctx.artifacts, host.source.inputs, [1, 2], settings.runs)
            tflite = workers.run("runtime-tflite", "runtime", job, RuntimeResult, python=legacy)
        except BenchError as exc:
            tflite = unavailable_runtime("tflite-runtime", ctx.artifacts, exc.one_line())
    return host, litert, tflite


def _agent_and_peers(ctx: Context) -> tuple[dict[str, Any], Any, Any]:
    from facelite.tools.bench.agent_e2e import E2EJob, E2EResult, EventLog, SpeedJob, StreamJob, recording_subscriber
    from facelite.tools.bench.models import SourceJob
    from facelite.tools.bench.peers import PeersJob, PeersResult
    from facelite.tools.localbroker import MosquittoBroker

    settings, plan, prep, workers, work, models_dir = (
        ctx.settings, ctx.plan, ctx.prep, ctx.workers, ctx.work, ctx.models_dir,
    )  # fmt: skip
    by_faces = {str(k): v for k, v in prep.by_faces.items()}
    speed_job = SpeedJob(
        combos=plan.combos,
        scaling=[plan.device, plan.main[0]],
        one_face=prep.one_face,
        by_faces=by_faces,
        by_resolution=prep.by_resolution,
        reps=settings.reps,
        scaling_reps=settings.scaling_reps,
        gallery_sizes=settings.gallery_sizes,
        gallery_dir=work / "galleries",
        match_runs=settings.match_runs,
    )
    dev = plan.device
    e2e: dict[str, E2EResult] = {}
    with MosquittoBroker(work / "broker") as broker, recording_subscriber(broker, ["facelite/+/events"]) as sub:
        for label, float_models in (("device", False), ("float", True)):
            streams = []
            for s in prep.streams:
                device_id = f"bench-{label}-{s.faces}f"
                config = _agent_toml(
                    work / "agent" / f"{device_id}.toml",
                    device_id=device_id,
                    video=s.video,
                    detector=models_dir / dev.detector / dev.detector_variant,
                    embedder=models_dir / dev.embedder / dev.embedder_variant,
                    port=broker.port,
                    work=work / "agent",
                )
                streams.append(StreamJob(s.name, s.faces, config, s.frames_with_faces))
            # The float run also times the TF sources at one thread (the 2-thread rows come from host-tf),
            # on the inputs host-tf wrote.
            source_after = (
                SourceJob(
                    MODEL_NAMES,
                    1,
                    settings.runs,
                    work / "inputs",
                    False,
                    prep.one_face,
                    prep.probes,
                    settings.max_inputs,
                )
                if float_models
                else None
            )
            job = E2EJob(
                label=label,
                models_dir=models_dir,
                detector=dev.detector,
                detector_variant="source" if float_models else dev.detector_variant,
                embedder=dev.embedder,
                embedder_variant="source" if float_models else dev.embedder_variant,
                float_models=float_models,
                streams=streams,
                enroll=prep.enroll[size_key_of(models_dir, dev)],
                speed=None if float_models else speed_job,
                source_after=source_after,
            )
            e2e[label] = workers.run(f"e2e-{label}", "e2e", job, E2EResult, pin=True)
        _settle(sub)
        events = EventLog.from_messages(sub.records())
    peers_job = PeersJob(
        people_dir=prep.people_dir,
        models_dir=models_dir,
        yunet_onnx=ctx.data / "models" / "yunet_s_640_640.onnx",
        ours=plan.device,
        one_face=prep.one_face,
        by_faces=by_faces,
        by_resolution=prep.by_resolution,
        reps=settings.reps,
        scaling_reps=settings.scaling_reps,
        run_cnn=not settings.quick,
        gallery_sizes=settings.gallery_sizes,
        match_runs=settings.match_runs,
    )
    peers = workers.run("peers", "peers", peers_job, PeersResult, pin=True)
    return e2e, events, peers


def size_key_of(models_dir: Path, spec: Any) -> str:
    from facelite.model.manifest import Manifest

    m = Manifest.load(models_dir / spec.embedder / spec.embedder_variant)
    assert m.alignment is not None
    return size_key(m.alignment.size)


def _settle(sub: Any, quiet_s: float = 0.5, limit_s: float = 5.0) -> None:
    """Wait until no message arrived for ``quiet_s`` (QoS 1 deliveries still on their way), at most ``limit_s``."""
    deadline = time.monotonic() + limit_s
    last = -1
    while time.monotonic() < deadline:
        now = len(sub.records())
        if now == last:
            return
        last = now
        time.sleep(quiet_s)
