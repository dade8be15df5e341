"""Section 1: every built variant of every model in both device runtimes, beside its TensorFlow float source.

Two workers share one input set per graph (real preprocessed inputs, written once as .npz):
``run_source`` runs the recipe's float reference in TensorFlow (and writes the inputs), ``run_runtime``
runs the .tflite files in ai-edge-litert (.venv) or tflite-runtime 2.14 (.venv-legacy). This module
must import in .venv-legacy: numpy and agent only at the top, TensorFlow inside ``run_source``.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facelite.tools.bench.common import BenchError, Latency, first_line, read_json, time_runs, write_json
from facelite.tools.bench.frames import CropSet, load_crops, load_frames, size_key

log = logging.getLogger(__name__)

SOURCE_VARIANT = "source"  # the variant name of the TF float source row


@dataclass(frozen=True)
class Artifact:
    """One built variant: ``graphs`` maps graph name -> .tflite file name inside ``directory``."""

    model: str
    kind: str
    variant: str
    directory: Path
    graphs: dict[str, str]
    size_bytes: int
    recommended: bool
    passed_gates: bool


@dataclass(frozen=True)
class GraphInputs:
    model: str
    graph: str
    path: Path  # npz with in_0 .. in_{count-1}, one batch-1 input each, all of ``shape``
    shape: list[int]
    count: int


@dataclass(frozen=True)
class GraphTiming:
    graph: str
    input_shape: list[int]
    latency: Latency


@dataclass(frozen=True)
class ModelRun:
    """One artifact (or the float source) in one runtime at one thread count."""

    model: str
    variant: str
    runtime: str  # ai-edge-litert | tflite-runtime | tensorflow (| ai-edge-litert for a .tflite source)
    threads: int
    size_bytes: int
    load_ms: float  # model ready and its first inference done (XNNPACK prepares on the first invoke)
    graphs: list[GraphTiming]
    error: str = ""


@dataclass(frozen=True)
class RuntimeJob:
    runtime: str
    artifacts: list[Artifact]
    inputs: list[GraphInputs]
    threads: list[int]
    runs: int


@dataclass(frozen=True)
class RuntimeResult:
    runtime: str
    version: str
    numpy: str
    runs: list[ModelRun]


@dataclass(frozen=True)
class SourceJob:
    models: list[str]
    threads: int
    runs: int
    inputs_dir: Path
    write_inputs: bool  # True: build real inputs and save them; False: read them from inputs_dir
    frames: list[Path]  # 640x480 frames for detector inputs
    probes: dict[str, CropSet]  # alignment "WxH" -> aligned crops for embedder inputs
    max_inputs: int


@dataclass(frozen=True)
class SourceResult:
    tensorflow: str
    threads: int
    runs: list[ModelRun]
    inputs: list[GraphInputs]


# -- discovering artifacts ------------------------------------------------------------------------------------------
def discover(models_dir: Path) -> tuple[list[Artifact], dict[str, str]]:
    """Every built variant (a folder with manifest.json) of every model in index.json, with its gate result.

    Returns the artifacts and {model: recommended variant}; the recommendation is the model's own report
    (written by the build after its gates), falling back to index.json.
    """
    from facelite.model.manifest import Manifest

    index_path = models_dir / "index.json"
    try:
        index = json.loads(index_path.read_text())["models"]
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise BenchError(
            f"cannot read the model index: {first_line(exc)}", str(index_path), "run `make convert`"
        ) from None
    artifacts: list[Artifact] = []
    recommended: dict[str, str] = {}
    for name, entry in index.items():
        report_path = models_dir / name / "report.json"
        report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.is_file() else {}
        rec = report.get("recommended_variant") or entry.get("recommended_variant")
        if rec:
            recommended[name] = str(rec)
        passed = {v["variant"]: bool(v.get("passed")) for v in report.get("variants", [])}
        for vdir in sorted(p for p in (models_dir / name).iterdir() if (p / "manifest.json").is_file()):
            manifest = Manifest.load(vdir)
            artifacts.append(
                Artifact(
                    model=name,
                    kind=manifest.kind,
                    variant=manifest.variant,
                    directory=vdir,
                    graphs={g: spec.file for g, spec in manifest.graphs.items()},
                    size_bytes=sum(spec.size_bytes for spec in manifest.graphs.values()),
                    recommended=manifest.variant == rec,
                    passed_gates=passed.get(manifest.variant, False),
                )
            )
    if not artifacts:
        raise BenchError("no built model variants", str(models_dir), "run `make convert`")
    return artifacts, recommended


def _load_inputs(spec: GraphInputs) -> list[np.ndarray]:
    data = np.load(spec.path)
    return [data[f"in_{i}"] for i in range(spec.count)]


# -- the device runtimes (run in .venv or .venv-legacy) -------------------------------------------------------------
def runtime_version(runtime: str) -> str:
    from importlib import metadata

    dist = {"ai-edge-litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime"}[runtime]
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _run_next(model: Any, inputs: Iterator[np.ndarray]) -> object:
    return model.run(next(inputs))


def _bench_graphs(models: dict[str, Any], inputs: dict[str, list[np.ndarray]], runs: int) -> list[GraphTiming]:
    out = []
    for g, model in models.items():
        xs = inputs[g]
        if hasattr(model, "resize_input"):
            model.resize_input(xs[0].shape)
        cycle = itertools.cycle(xs)
        lat = time_runs(functools.partial(_run_next, model, cycle), runs)
        out.append(GraphTiming(g, [int(s) for s in xs[0].shape], lat))
    return out


def run_runtime(job: RuntimeJob) -> RuntimeResult:
    from facelite.model.runtime import TFLiteModel

    by_graph = {(i.model, i.graph): i for i in job.inputs}
    rows: list[ModelRun] = []
    for art in job.artifacts:
        for threads in job.threads:
            try:
                missing = [g for g in art.graphs if (art.model, g) not in by_graph]
                if missing:
                    raise BenchError(f"no recorded inputs for graph(s) {missing}")
                inputs = {g: _load_inputs(by_graph[(art.model, g)]) for g in art.graphs}
                t0 = time.perf_counter()
                models = {
                    g: TFLiteModel(art.directory / f, num_threads=threads, runtime=job.runtime)
                    for g, f in art.graphs.items()
                }
                for g, m in models.items():
                    m.resize_input(inputs[g][0].shape)
                    m.run(inputs[g][0])
                load_ms = (time.perf_counter() - t0) * 1000.0
                timings = _bench_graphs(models, inputs, job.runs)
                rows.append(ModelRun(art.model, art.variant, job.runtime, threads, art.size_bytes, load_ms, timings))
            except Exception as exc:  # one variant a runtime cannot run is a figure, not a crash
                log.warning("%s/%s in %s: %s", art.model, art.variant, job.runtime, first_line(exc))
                rows.append(
                    ModelRun(art.model, art.variant, job.runtime, threads, art.size_bytes, 0.0, [], first_line(exc))
                )
    return RuntimeResult(job.runtime, runtime_version(job.runtime), np.__version__, rows)


# -- the TensorFlow float source (host venv only) -------------------------------------------------------------------
def set_tf_threads(threads: int) -> str:
    """Pin TensorFlow's thread pools before it runs anything (it refuses once initialised)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.constant(1.0) + 1.0  # initialise the runtime now, so the first model's load time does not carry it
    return str(tf.__version__)


def source_size(name: str) -> int:
    from facelite.converter.sources import source_files

    return sum(p.stat().st_size for p in source_files(name))


def _select(samples: Sequence[Sequence[np.ndarray]], limit: int) -> list[np.ndarray]:
    """Inputs of one shape (the first sample's: for P-Net the largest pyramid level), at most ``limit``."""
    if not samples:
        return []
    shape = samples[0][0].shape
    return [np.asarray(s[0], np.float32) for s in samples if s[0].shape == shape][:limit]


def make_inputs(recipe: Any, graphs: Sequence[Any], job: SourceJob) -> list[GraphInputs]:
    """Real inputs per graph through the recipe's own calibration path: aligned crops for embedders,
    whole 640x480 frames for detectors (pyramid levels and cascade crops for MTCNN)."""
    if recipe.kind == "embedder":
        key = size_key(recipe.alignment.size)
        if key not in job.probes:
            raise BenchError(f"no aligned {key} crops prepared for {recipe.name}")
        crops, _, _ = load_crops(job.probes[key])
        images = list(crops)
    else:
        images = load_frames(job.frames)
    out = []
    job.inputs_dir.mkdir(parents=True, exist_ok=True)
    for g in graphs:
        xs = _select(recipe.calibration_samples(g.name, images, 400), job.max_inputs)
        if not xs:
            raise BenchError(f"the recipe gave no inputs for {recipe.name}/{g.name}")
        path = job.inputs_dir / f"{recipe.name}_{g.name}.npz"
        # Any, not ndarray: numpy types savez(**kwds) as if a key could be its allow_pickle flag.
        arrays: dict[str, Any] = {f"in_{i}": x for i, x in enumerate(xs)}
        np.savez(path, **arrays)
        out.append(GraphInputs(recipe.name, g.name, path, [int(s) for s in xs[0].shape], len(xs)))
    return out


def load_source(name: str) -> tuple[Any, list[Any], float]:
    """A fresh recipe and its float graphs; returns (recipe, graphs, seconds spent loading)."""
    from facelite.converter.api import load_recipe

    t0 = time.perf_counter()
    recipe = load_recipe(name)
    graphs = recipe.graphs()
    return recipe, graphs, time.perf_counter() - t0


def run_source(job: SourceJob, keep: dict[str, Any] | None = None) -> SourceResult:
    """Float source rows; ``keep`` (if given) receives {model: (recipe, graphs)} for later use in-process."""
    version = set_tf_threads(job.threads)
    rows: list[ModelRun] = []
    inputs: list[GraphInputs] = []
    for name in job.models:
        if job.write_inputs:
            gen_recipe, gen_graphs, _ = load_source(name)
            specs = make_inputs(gen_recipe, gen_graphs, job)
            del gen_recipe, gen_graphs
            for spec in specs:
                write_json(spec.path.with_suffix(".json"), spec)
        else:
            specs = [read_json(p, GraphInputs) for p in sorted(job.inputs_dir.glob(f"{name}_*.json"))]
        inputs.extend(specs)
        by_graph = {s.graph: _load_inputs(s) for s in specs}
        try:
            t0 = time.perf_counter()
            recipe, graphs, _ = load_source(name)
            refs = {g.name: g.reference for g in graphs}
            for g in graphs:
                if g.tflite_file is not None:  # a .tflite source (BlazeFace): run it at this row's thread count
                    from facelite.model.runtime import TFLiteModel

                    refs[g.name] = TFLiteModel(g.tflite_file, num_threads=job.threads)
            for g, ref in refs.items():
                ref.run(by_graph[g][0])
            load_ms = (time.perf_counter() - t0) * 1000.0
            timings = _bench_graphs(refs, by_graph, job.runs)
            runtime = "ai-edge-litert" if any(g.tflite_file for g in graphs) else "tensorflow"
            rows.append(ModelRun(name, SOURCE_VARIANT, runtime, job.threads, source_size(name), load_ms, timings))
            if keep is not None:
                keep[name] = (recipe, graphs)
        except Exception as exc:
            log.warning("float source %s: %s", name, first_line(exc))
            rows.append(ModelRun(name, SOURCE_VARIANT, "tensorflow", job.threads, 0, 0.0, [], first_line(exc)))
    return SourceResult(version, job.threads, rows, inputs)


def unavailable_runtime(runtime: str, artifacts: Sequence[Artifact], reason: str) -> RuntimeResult:
    """Rows that name the runtime and why it was not measured (never silently left out)."""
    rows = [ModelRun(a.model, a.variant, runtime, t, a.size_bytes, 0.0, [], reason) for a in artifacts for t in (1, 2)]
    return RuntimeResult(runtime, "not measured", "", rows)
