"""The report: every figure of the run beside its baseline, as report.json, report.md and README-snippet.md.

Every section is a list of figures with a ``measured`` side and a ``baseline`` side taken in the same run:
models vs their TensorFlow float source; peers vs our recommended pipeline; our pipelines vs the same
pipelines on the float sources; the agent vs the same agent on the float sources; gallery matching vs
face_recognition's face_distance; scaling points vs face_recognition. Targets are reported, never tuned.

Size: the renderer of `make bench`'s report: one section per figure, each beside its baseline; no logic beyond
formatting and the targets.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelite.tools.bench.agent_e2e import E2EResult, EventLog, StreamResult
from facelite.tools.bench.common import Latency, latency_of, write_json
from facelite.tools.bench.frames import Prepared
from facelite.tools.bench.models import Artifact, ModelRun, RuntimeResult
from facelite.tools.bench.peers import HOG, PeersResult
from facelite.tools.bench.pipelines import Accuracy, FrameSpeed, PipelineAccuracy, PipelineSpec
from facelite.tools.bench.worker import HostResult

log = logging.getLogger(__name__)

FPS_TARGET = 25.0
RSS_TARGET_MB = 120.0
SPEEDUP_TARGET = 10.0


@dataclass(frozen=True)
class Collected:
    host: HostResult
    litert: RuntimeResult
    tflite: RuntimeResult
    e2e_device: E2EResult
    e2e_float: E2EResult
    events: EventLog
    peers: PeersResult
    import_rss_mb: float  # a process that only imports the agent's modules


@dataclass(frozen=True)
class Environment:
    started: str
    wall_s: float
    quick: bool
    machine: str
    cpus: int
    load_avg_at_start: list[float]
    python: str
    data_dir: str
    people_dir: str
    photos: int
    steps_s: dict[str, float]
    settings: dict[str, int]
    page_cache: str = ""  # how the agent's libraries were cached when RSS was measured (pagecache.py)
    versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    name: str
    measured: float
    op: str  # ">=" | "<="
    limit: float
    unit: str
    passed: bool
    key: str = ""  # one of TARGET_KEYS: which target this is, whatever its name says about the pipeline

    @classmethod
    def check(cls, key: str, name: str, measured: float, op: str, limit: float, unit: str) -> Target:
        return cls(name, round(measured, 6), op, limit, unit, _meets(measured, op, limit), key)


def _meets(measured: float, op: str, limit: float) -> bool:
    if op not in (">=", "<="):
        raise ValueError(f"target operator must be >= or <=, not {op!r}")
    return bool(measured >= limit if op == ">=" else measured <= limit)


# Every full bench run must measure each of these; a target it could not measure counts as missed.
TARGET_KEYS = {
    "fps": "agent fps on one core, one face in view",
    "rss": "agent service peak RSS",
    "speedup": "per-frame speed-up over face_recognition HOG",
    "auc": "AUC not below face_recognition's",
}


@dataclass(frozen=True)
class Verdict:
    lines: list[str]  # one per target, PASS or FAIL, as printed
    missed: list[str]  # the targets missed or not measured; empty means the run met every target

    @property
    def exit_code(self) -> int:
        return 1 if self.missed else 0


def verdict(report: Mapping[str, Any]) -> Verdict:
    """Judge a report.json against its targets (the bench's exit code, and `--check REPORT`).

    Each target is judged again from its measured value, operator and limit, so a report is judged by its
    numbers (a limit raised out of reach fails it); one the run recorded as failed (e.g. RSS it could not
    measure) stays failed; a target in TARGET_KEYS that the report lacks is missed ("not measured").
    """
    lines, missed = [], []
    for t in report.get("targets", []):
        ok = bool(t["passed"]) and _meets(float(t["measured"]), t["op"], float(t["limit"]))
        figure = f"{t['measured']:g} {t['unit']} (target {t['op']} {t['limit']:g})"
        lines.append(f"  {'PASS' if ok else 'FAIL'}  {t['name']}: {figure}")
        if not ok:
            missed.append(t["name"])
    present = {t.get("key", "") for t in report.get("targets", [])}
    for key, what in TARGET_KEYS.items():
        if key not in present:
            lines.append(f"  FAIL  {what}: not measured")
            missed.append(f"{what} (not measured)")
    return Verdict(lines, missed)


@dataclass(frozen=True)
class ModelFigure:
    model: str
    variant: str
    runtime: str
    threads: int
    recommended: bool
    passed_gates: bool
    measured: ModelRun
    baseline: ModelRun  # the TF float source at the same thread count


@dataclass(frozen=True)
class PeerFigure:
    name: str
    role: str
    status: str
    reason: str
    versions: dict[str, str]
    accuracy: Accuracy | None
    speed: FrameSpeed | None
    baseline_name: str
    baseline_accuracy: Accuracy | None
    baseline_speed: FrameSpeed | None


@dataclass(frozen=True)
class PipelineFigure:
    name: str
    measured: PipelineAccuracy
    baseline: PipelineAccuracy  # the same pipeline on the float TF sources
    auc_delta: float | None


@dataclass(frozen=True)
class QuantLoss:
    embedder: str
    variant: str
    detector: str
    auc: float
    auc_float_source: float
    loss: float  # auc - auc_float_source (negative = lost)
    tar_at_far_1e3: float
    tar_at_far_1e3_float_source: float


@dataclass(frozen=True)
class E2ESide:
    pipeline: str
    frames: int
    fps: float
    pipeline_fps_in_view: float
    faces_detected_in_view: float
    stage_ms: dict[str, float]
    events: int
    latency: Latency | None  # events' latency_ms: frame read -> MQTT publish
    delivery: Latency | None  # frame read -> received by a subscriber through mosquitto
    rss_peak_mb: float
    tensorflow_imported: bool
    error: str


@dataclass(frozen=True)
class E2EFigure:
    stream: str
    faces: int
    measured: E2ESide
    baseline: E2ESide  # same agent, same stream, float TF sources in-process


@dataclass(frozen=True)
class GalleryFigure:
    templates: int
    measured: Latency  # Gallery.match, our embedder's dimension
    matcher_only: Latency
    dim: int
    baseline_name: str
    baseline: Latency | None  # face_recognition.face_distance + argmin, 128-d


@dataclass(frozen=True)
class ScalingFigure:
    axis: str
    x: str
    measured: dict[str, FrameSpeed]  # our pipelines
    baseline_name: str
    baseline: FrameSpeed | None


@dataclass(frozen=True)
class Candidate:
    name: str
    frame_ms: float
    auc: float | None
    passed_gates: bool


@dataclass(frozen=True)
class Headline:
    ours: str
    ours_frame_ms: float
    ours_auc: float
    peer: str
    peer_frame_ms: float
    peer_auc: float
    speedup: float
    candidates: list[Candidate]
    targets: list[Target]
    meets_both: str  # the fastest candidate meeting the speed-up and AUC targets (may differ from "ours")


@dataclass(frozen=True)
class Report:
    environment: Environment
    models: list[ModelFigure]
    peers: list[PeerFigure]
    pipelines: list[PipelineFigure]
    quantisation: list[QuantLoss]
    agent_e2e: list[E2EFigure]
    gallery: list[GalleryFigure]
    scaling: list[ScalingFigure]
    headline: Headline | None
    agent_rss_mb: dict[str, float]  # what the agent's peak RSS is made of
    targets: list[Target]
    charts: list[str]
    notes: list[str]


# -- building ---------------------------------------------------------------------------------------------------------
def _models(artifacts: Sequence[Artifact], c: Collected) -> list[ModelFigure]:
    baselines = {
        (r.model, r.threads): r for r in [*c.host.source.runs, *(c.e2e_float.source.runs if c.e2e_float.source else [])]
    }
    arts = {(a.model, a.variant): a for a in artifacts}
    out = []
    for run in [*c.litert.runs, *c.tflite.runs]:
        art = arts[(run.model, run.variant)]
        base = baselines.get((run.model, run.threads))
        if base is None:
            base = ModelRun(
                run.model, "source", "tensorflow", run.threads, 0, 0.0, [], "not measured at this thread count"
            )
        out.append(
            ModelFigure(run.model, run.variant, run.runtime, run.threads, art.recommended, art.passed_gates, run, base)
        )
    return out


def _accuracy_of(c: Collected, spec: PipelineSpec) -> PipelineAccuracy:
    for r in c.host.accuracy.results:
        if r.spec == spec:
            return r
    return PipelineAccuracy(spec, None, "not evaluated")


def _e2e_side(result: E2EResult, stream: StreamResult, events: EventLog, device: str) -> E2ESide:
    evs = events.of(device)
    return E2ESide(
        pipeline=result.pipeline,
        frames=stream.frames,
        fps=stream.fps,
        pipeline_fps_in_view=stream.pipeline_fps_in_view,
        faces_detected_in_view=stream.faces_detected_in_view,
        stage_ms=stream.stage_ms,
        events=len(evs),
        latency=latency_of([e.latency_ms for e in evs]) if evs else None,
        delivery=latency_of([e.delivery_ms for e in evs]) if evs else None,
        rss_peak_mb=result.rss_peak_mb,
        tensorflow_imported=result.tensorflow_imported,
        error=stream.error,
    )


def _e2e(c: Collected) -> list[E2EFigure]:
    out = []
    for s in c.e2e_device.streams:
        base = next((b for b in c.e2e_float.streams if b.stream == s.stream), None)
        if base is None:
            continue
        out.append(
            E2EFigure(
                s.stream,
                s.faces,
                _e2e_side(c.e2e_device, s, c.events, f"bench-device-{s.faces}f"),
                _e2e_side(c.e2e_float, base, c.events, f"bench-float-{s.faces}f"),
            )
        )
    return out


def _gallery(c: Collected) -> list[GalleryFigure]:
    speed = c.e2e_device.speed
    if speed is None:
        return []
    peer = {g.templates: g for g in c.peers.gallery}
    return [
        GalleryFigure(
            g.templates,
            g.match,
            g.matcher,
            g.dim,
            "face_recognition.face_distance + argmin",
            peer[g.templates].match if g.templates in peer else None,
        )
        for g in speed.gallery
    ]


def _scaling(c: Collected) -> list[ScalingFigure]:
    speed = c.e2e_device.speed
    if speed is None:
        return []
    base = {(p.axis, p.x): p.speed for p in c.peers.scaling}
    keys: list[tuple[str, str]] = []
    for p in speed.scaling:
        if (p.axis, p.x) not in keys:
            keys.append((p.axis, p.x))
    return [
        ScalingFigure(
            axis,
            x,
            {p.pipeline: p.speed for p in speed.scaling if (p.axis, p.x) == (axis, x)},
            HOG,
            base.get((axis, x)),
        )
        for axis, x in keys
    ]


def _headline(artifacts: Sequence[Artifact], c: Collected) -> Headline | None:
    passed = {(a.model, a.variant): a.passed_gates for a in artifacts}
    speed = c.e2e_device.speed
    peer = next((p for p in c.peers.peers if p.name == HOG and p.speed and p.accuracy), None)
    if speed is None:
        return None
    candidates = []
    for combo in speed.combos:
        if combo.speed is None:
            continue
        acc = _accuracy_of(c, combo.spec).accuracy
        ok = passed.get((combo.spec.detector, combo.spec.detector_variant), False) and passed.get(
            (combo.spec.embedder, combo.spec.embedder_variant), False
        )
        candidates.append(Candidate(combo.spec.name, combo.speed.frame.p50_ms, acc.auc if acc else None, ok))
    eligible = [k for k in candidates if k.passed_gates and k.auc is not None]
    if not eligible or peer is None or peer.speed is None or peer.accuracy is None:
        return None
    peer_ms, peer_auc = peer.speed.frame.p50_ms, peer.accuracy.auc
    both = [k for k in eligible if peer_ms / k.frame_ms >= SPEEDUP_TARGET and (k.auc or 0.0) >= peer_auc]
    meets = min(both, key=lambda k: k.frame_ms) if both else None
    # "Our best Pi-class pipeline": the fastest combination (every model in a gate-passing variant) that
    # meets both targets; when none does, the fastest one, and the targets say FAIL.
    best = meets or min(eligible, key=lambda k: k.frame_ms)
    assert best.auc is not None
    speedup = peer_ms / best.frame_ms
    targets = [
        Target.check(
            "speedup", f"{best.name} vs face_recognition HOG: per-frame speed-up", speedup, ">=", SPEEDUP_TARGET, "x"
        ),
        Target.check(
            "auc", f"{best.name}: AUC minus face_recognition's AUC", best.auc - peer.accuracy.auc, ">=", 0.0, ""
        ),
    ]
    return Headline(
        best.name,
        best.frame_ms,
        best.auc,
        peer.name,
        peer_ms,
        peer_auc,
        round(speedup, 2),
        candidates,
        targets,
        f"{meets.name} ({meets.frame_ms:.1f} ms, {peer_ms / meets.frame_ms:.1f}x, AUC {meets.auc:.5f})"
        if meets
        else "",
    )


def build_report(env: Environment, plan: Any, artifacts: Sequence[Artifact], prep: Prepared, c: Collected) -> Report:
    ours = _accuracy_of(c, plan.device).accuracy
    peers = [
        PeerFigure(
            p.name,
            p.role,
            p.status,
            p.reason,
            p.versions,
            p.accuracy,
            p.speed,
            p.ours or plan.device.name,
            ours,
            p.ours_speed,
        )
        for p in c.peers.peers
    ]
    pipelines = []
    for spec, fspec in zip(plan.main, plan.floats):
        m, b = _accuracy_of(c, spec), _accuracy_of(c, fspec)
        delta = m.accuracy.auc - b.accuracy.auc if m.accuracy and b.accuracy else None
        pipelines.append(PipelineFigure(spec.name, m, b, delta))
    quant = []
    for spec, fspec in plan.quant:
        mq, bq = _accuracy_of(c, spec).accuracy, _accuracy_of(c, fspec).accuracy
        if mq and bq:
            quant.append(
                QuantLoss(
                    spec.embedder,
                    spec.embedder_variant,
                    f"{spec.detector}/{spec.detector_variant}",
                    mq.auc,
                    bq.auc,
                    mq.auc - bq.auc,
                    mq.tar_at_far_1e3,
                    bq.tar_at_far_1e3,
                )
            )
    e2e = _e2e(c)
    targets = []
    one = next((f for f in e2e if f.faces == 1), None)
    if one is not None:
        targets.append(
            Target.check(
                "fps",
                f"{one.measured.pipeline}: agent fps on one core, one face in view",
                one.measured.fps,
                ">=",
                FPS_TARGET,
                "fps",
            )
        )
        device = c.e2e_device
        name = "agent service (python -m facelite) peak RSS"
        if device.service_rss_mb > 0:
            targets.append(Target.check("rss", name, device.service_rss_mb, "<=", RSS_TARGET_MB, "MB"))
        else:  # a target that could not be measured is not met
            why = device.service_error or "not measured"
            targets.append(Target(f"{name} ({why})", 0.0, "<=", RSS_TARGET_MB, "MB", passed=False, key="rss"))
    headline = _headline(artifacts, c)
    if headline:
        targets.extend(headline.targets)
    versions = {
        "tensorflow": c.host.source.tensorflow,
        "ai-edge-litert": c.litert.version,
        "tflite-runtime": c.tflite.version,
        "numpy (tflite-runtime venv)": c.tflite.numpy,
        **{k: v for p in c.peers.peers for k, v in p.versions.items()},
    }
    env = dataclasses.replace(env, versions=versions)
    notes = [
        "Accuracy is `facelite eval` (facelite.tools.evaluate) on every photo pair of the people folder; "
        "detector min_face 20.",
        "Speed figures run like the agent's default config: one interpreter thread, pinned to CPU 0, min_face 40, "
        "score threshold 0.7. Per-frame = detect + align + embed every face (no tracker reuse).",
        "Agent fps includes MJPG decode, tracking, events and MQTT publish; the tracker embeds a face only when "
        "it needs to (new track, undecided, recheck), as on the device.",
        "Peer thresholds are calibrated at FAR 1e-3 on the same photos, as the converter calibrated ours.",
        "Gallery templates are random unit vectors: matching cost depends on the matrix size, not on the faces.",
        "The machine is shared: compare figures within one run, not across runs.",
    ]
    if env.quick:
        notes.insert(0, "QUICK RUN: few photos and repetitions; the structure is real, the figures are not to be read.")
    return Report(
        env,
        _models(artifacts, c),
        peers,
        pipelines,
        quant,
        e2e,
        _gallery(c),
        _scaling(c),
        headline,
        {
            "imports only (python, numpy, cv2, ai-edge-litert, agent modules)": c.import_rss_mb,
            "bench worker running the agent in-process, peak (VmHWM)": one.measured.rss_peak_mb if one else 0.0,
            "agent service (python -m facelite, one-face stream), peak (ru_maxrss)": c.e2e_device.service_rss_mb,
        },
        targets,
        [],
        notes,
    )


# -- writing ----------------------------------------------------------------------------------------------------------
def write_outputs(report: Report, out: Path) -> list[Path]:
    from facelite.tools.bench.charts import draw_all

    out.mkdir(parents=True, exist_ok=True)
    try:
        charts = draw_all(report, out)
    except ImportError:
        log.warning("matplotlib is not installed: no PNG charts")
        charts = []
    report = dataclasses.replace(report, charts=[p.name for p in charts])
    write_json(out / "report.json", report)
    (out / "report.md").write_text(markdown(report))
    (out / "README-snippet.md").write_text(snippet(report))
    return [out / "report.json", out / "report.md", out / "README-snippet.md", *charts]


def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _num(v: float) -> str:
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 0.1 else f"{v:.3f}"


def _ms(lat: Latency | None) -> str:
    return "-" if lat is None else f"{_num(lat.p50_ms)} / {_num(lat.p95_ms)}"


def _acc_cells(a: Accuracy | None) -> str:
    if a is None:
        return "- | - | - | - | -"
    return (
        f"{a.auc:.5f} | {a.tar_at_far_1e3:.3f} | {a.top1:.3f} | {a.stranger_false_accept_rate:.3f} "
        f"| {a.faces_found}/{a.photos}"
    )


def markdown(r: Report) -> str:
    e = r.environment
    L: list[str] = [
        "# facelite bench",
        "",
        f"Run {e.started}, {e.wall_s:.0f} s wall, {e.machine}, {e.cpus} CPUs (load average at start "
        f"{', '.join(f'{v:g}' for v in e.load_avg_at_start)}), Python {e.python}, {e.photos} photos in {e.people_dir}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in e.versions.items()) + ".",
        "",
        *[f"- {n}" for n in r.notes],
        "",
        "## Targets",
        "",
        "| target | measured | limit | result |",
        "|---|---|---|---|",
        *[
            f"| {t.name} | {t.measured:g} {t.unit} | {t.op} {t.limit:g} {t.unit} | {'PASS' if t.passed else 'FAIL'} |"
            for t in r.targets
        ],
        "",
    ]
    if r.headline:
        h = r.headline
        L += [
            "## 6. Headline: our best Pi-class pipeline vs face_recognition",
            "",
            snippet_table(r),
            "",
            "Candidates (recommended variants, every model in a variant that passes the converter's gates; "
            "'our best' = the fastest candidate meeting both targets, else the fastest candidate):",
            "",
            "| pipeline | frame ms p50 | AUC | gates |",
            "|---|---|---|---|",
            *[
                f"| {k.name} | {k.frame_ms:.1f} | {_f(k.auc, 5)} | {'pass' if k.passed_gates else 'fail'} |"
                for k in h.candidates
            ],
            "",
            f"Fastest candidate meeting both headline targets: {h.meets_both or 'none'}.",
            "",
        ]
    L += [
        "## 1. Models: every built variant beside its TensorFlow float source",
        "",
        "Latency per graph, p50 / p95 ms on real inputs; load = interpreter ready + first inference. Source rows: "
        "the recipe's float model in TensorFlow (BlazeFace ships as .tflite: its source row is that file).",
        "",
        "| model | variant | runtime | threads | MB | load ms | graph: p50 / p95 ms | source runs in | source MB "
        "| source load ms | source graph: p50 / p95 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in r.models:
        rec = "*" if m.recommended else ""
        gates = "" if m.passed_gates else " (gates FAIL)"
        if m.measured.error:
            cells = f"error: {m.measured.error} | | "
        else:
            cells = f"{m.measured.size_bytes / 1e6:.2f} | {m.measured.load_ms:.0f} | " + "; ".join(
                f"{g.graph} {_ms(g.latency)}" for g in m.measured.graphs
            )
        b = m.baseline
        base = (
            f"{b.size_bytes / 1e6:.2f} | {b.load_ms:.0f} | "
            + "; ".join(f"{g.graph} {_ms(g.latency)}" for g in b.graphs)
            if not b.error
            else f"error: {b.error} | |"
        )
        L.append(f"| {m.model} | {m.variant}{rec}{gates} | {m.runtime} | {m.threads} | {cells} | {base} |")
    L += ["", "`*` recommended variant.", ""]
    L += [
        "## 2. Peers on the same photos and frames",
        "",
        "| peer | status | AUC | TAR@FAR1e-3 | top-1 | stranger FAR | faces | frame ms p50/p95 | per face ms "
        "| ours: frame ms p50/p95 | ours: per face ms | ours: AUC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in r.peers:
        sp, bs = p.speed, p.baseline_speed
        L.append(
            f"| {p.name} | {p.status}{': ' + p.reason if p.reason else ''} | {_acc_cells(p.accuracy)} | "
            f"{_ms(sp.frame) if sp else '-'} | {_f(sp.face_ms if sp else None)} | {_ms(bs.frame) if bs else '-'} | "
            f"{_f(bs.face_ms if bs else None)} | {_f(p.baseline_accuracy.auc if p.baseline_accuracy else None, 5)} |"
        )
    L += [
        "",
        f"Ours = {r.peers[0].baseline_name if r.peers else ''}, timed in the peers' process on the same 640x480 "
        "frames.",
        "",
        "## 3. Our pipelines (full device path) beside the same pipelines on the float TF sources",
        "",
        "| pipeline | AUC | TAR@FAR1e-3 | top-1 | stranger FAR | faces | float source pipeline | AUC | TAR@FAR1e-3 "
        "| top-1 | stranger FAR | faces | AUC delta |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pf in r.pipelines:
        L.append(
            f"| {pf.name} | {_acc_cells(pf.measured.accuracy)} | {pf.baseline.spec.name} | "
            f"{_acc_cells(pf.baseline.accuracy)} | {_f(pf.auc_delta, 5)} |"
        )
    L += [
        "",
        "Quantisation loss per embedder variant (same detections): AUC(variant) - AUC(float source).",
        "",
        "| embedder | variant | detector | AUC | AUC float source | loss | TAR@1e-3 | TAR@1e-3 float |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {q.embedder} | {q.variant} | {q.detector} | {q.auc:.5f} | {q.auc_float_source:.5f} | {q.loss:+.5f} | "
            f"{q.tar_at_far_1e3:.3f} | {q.tar_at_far_1e3_float_source:.3f} |"
            for q in r.quantisation
        ],
        "",
        "## 4. Agent end to end on one core (taskset -c 0, num_threads 1), real mosquitto",
        "",
        "| stream | pipeline | agent fps | pipeline fps (face in view) | faces found per frame "
        "| stage ms (detect/quality/track/embed/match) | events | latency_ms p50/p95 | to subscriber p50/p95 "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in r.agent_e2e:
        for side in (f.measured, f.baseline):
            st = "/".join(_f(side.stage_ms.get(k), 2) for k in ("detect", "quality", "track", "embed", "match"))
            err = f" (error: {side.error})" if side.error else ""
            L.append(
                f"| {f.stream} | {side.pipeline}{err} | {side.fps:.1f} | {side.pipeline_fps_in_view:.1f} | "
                f"{side.faces_detected_in_view:g} | {st} | "
                f"{side.events} | {_ms(side.latency)} | {_ms(side.delivery)} | {side.rss_peak_mb:.0f}"
                f"{' (TensorFlow loaded)' if side.tensorflow_imported else ''} |"
            )
    L += [
        "",
        "Agent RSS: " + "; ".join(f"{k}: {v:.0f} MB" for k, v in r.agent_rss_mb.items()) + ". "
        f"Shared libraries as after boot (agent/tools/bench/pagecache.py): {r.environment.page_cache}.",
        "",
        "Gallery matching (one probe against every template, ms p50 / p95):",
        "",
        "| templates | Gallery.match | Matcher.match only | dim | face_recognition.face_distance (128-d) |",
        "|---|---|---|---|---|",
        *[
            f"| {g.templates} | {_ms(g.measured)} | {_ms(g.matcher_only)} | {g.dim} | {_ms(g.baseline)} |"
            for g in r.gallery
        ],
        "",
        "## 5. How cost grows (one core, per frame: detect + align + embed every face)",
        "",
    ]
    for axis in ("faces", "resolution"):
        figs = [s for s in r.scaling if s.axis == axis]
        if not figs:
            continue
        names = list(figs[0].measured)
        L += [
            f"| {axis} | "
            + " | ".join(f"{n} ms p50 (faces found)" for n in names)
            + f" | {figs[0].baseline_name} ms p50 (faces found) |",
            "|---|" + "---|" * (len(names) + 1),
        ]
        for s in figs:
            cells = " | ".join(
                f"{s.measured[n].frame.p50_ms:.1f} ({s.measured[n].faces_per_frame:g})" if n in s.measured else "-"
                for n in names
            )
            base = f"{s.baseline.frame.p50_ms:.1f} ({s.baseline.faces_per_frame:g})" if s.baseline else "-"
            L.append(f"| {s.x} | {cells} | {base} |")
        L.append("")
    L += [f"![{c}]({c})" for c in r.charts]
    L += ["", "Step times (s): " + ", ".join(f"{k} {v:g}" for k, v in e.steps_s.items()), ""]
    return "\n".join(L)


def snippet_table(r: Report) -> str:
    h = r.headline
    if h is None:
        return "(no headline: a pipeline or face_recognition was not measured; see report.md)"
    t = {x.name.split(":")[-1].strip(): x for x in h.targets}
    speed_t = next(iter(t.values()))
    return "\n".join(
        [
            "| pipeline (one core, 640x480, one face) | ms per frame (p50) | AUC on shared/faces |",
            "|---|---|---|",
            f"| facelite: {h.ours} | {h.ours_frame_ms:.1f} | {h.ours_auc:.5f} |",
            f"| {h.peer} | {h.peer_frame_ms:.1f} | {h.peer_auc:.5f} |",
            f"| speed-up | {h.speedup:.1f}x (target >= {SPEEDUP_TARGET:g}x: {'PASS' if speed_t.passed else 'FAIL'}) "
            f"| {'equal or better: PASS' if h.ours_auc >= h.peer_auc else 'worse: FAIL'} |",
        ]
    )


def snippet(r: Report) -> str:
    chart = next((c for c in r.charts if c.startswith("scaling_faces")), r.charts[0] if r.charts else "")
    lines = [
        "### Benchmark (`make bench`)",
        "",
        snippet_table(r),
        "",
        f"Measured {r.environment.started} on {r.environment.machine} ({r.environment.cpus} cores, shared), "
        f"{r.environment.photos} photos; full figures in `build/bench/report.md`.",
    ]
    if chart:
        lines += ["", f"![Latency vs faces in the frame](build/bench/{chart})"]
    return "\n".join(lines) + "\n"
