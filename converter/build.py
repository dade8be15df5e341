"""Build a model's variants: convert, check both runtimes, verify against the source, gate, write manifests.

Every model goes through the same steps; a recipe only says how to load and feed it. Each variant is
built in a temporary folder and moved into place only after it passed its gates, so a failed or
interrupted build never leaves a half-written artifact where the agent would find it.

Size: the build of one model (every variant: convert, verify against the source, time, gate, write the manifest and
the report) as one pipeline with one cache; the variants table and the formats live in their own modules.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facelite.converter import __version__
from facelite.converter.faceset import FaceSet
from facelite.converter.recipe import GraphSource, Recipe
from facelite.converter.runtimes import RuntimeCheckError, check_legacy
from facelite.converter.variants import (
    MIN_CALIBRATION_IMAGES,
    VariantError,
    get_variant,
    quantize_keeping_float,
    validate_options,
)
from facelite.errors import FaceliteError
from facelite.model.manifest import DEVICE_CHECKED_VARIANTS, GraphSpec, Manifest, Quantization, TensorSpec, sha256_file
from facelite.model.metrics import latency_summary, verification_scores
from facelite.model.runtime import Network, TFLiteModel
from facelite.vision.embed import l2_normalize, preprocess
from facelite.vision.geometry import Face

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


class BuildError(FaceliteError):
    """The build cannot go on (unwritable output, failed conversion)."""


@dataclass(frozen=True)
class Gates:
    """Accuracy bounds a variant must keep against its float source (configurable from the CLI)."""

    min_mean_cosine: float = 0.98  # embedders: mean cosine of variant vs source embedding
    max_auc_drop: float = 0.002  # embedders: verification ROC AUC within this of the source's
    min_detector_recall: float = 0.95  # detectors: share of the source's faces the variant also finds
    min_detector_iou: float = 0.85  # detectors: mean IoU of matched boxes
    min_runtime_cosine: float = 0.99  # tflite-runtime vs ai-edge-litert outputs


@dataclass(frozen=True)
class BuildOptions:
    out_dir: Path
    # Embedders: real photos with their detected face (verification; calibration too when no set below).
    faces: FaceSet | None = None
    # Embedders: faces of other people for integer calibration, aligned by the device's detector, so the
    # faces that verify a variant never shaped its quantisation (LFW calibration folds; see cli.py).
    calibration_faces: FaceSet | None = None
    # Detectors: real photos (single faces and group scenes) for calibration and verification.
    detector_images: Sequence[np.ndarray] = ()
    variants: Sequence[str] | None = None  # None: the recipe's defaults
    calibration_count: int = 100
    gates: Gates = field(default_factory=Gates)
    check_legacy_runtime: bool = True
    latency_runs: int = 20
    cache_key_extra: str = ""  # e.g. the detector artifact used for alignment


@dataclass
class VariantResult:
    variant: str
    status: str  # built | cached | failed
    reason: str = ""
    size_bytes: int = 0
    ops: list[str] = field(default_factory=list)
    latency_ms: dict[str, float] = field(default_factory=dict)
    accuracy: dict[str, Any] = field(default_factory=dict)
    runtimes: dict[str, Any] = field(default_factory=dict)
    gates: dict[str, bool] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    convert_seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status in ("built", "cached") and all(self.gates.values())


@dataclass
class ModelReport:
    name: str
    kind: str
    source: dict[str, Any]
    variants: list[VariantResult]
    recommended_variant: str | None
    baseline: dict[str, Any]  # the float source's own figures (AUC, ...)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["variants"] = [asdict(v) | {"passed": v.passed} for v in self.variants]
        return d


# -- helpers ---------------------------------------------------------------------------------------


# The code an artifact depends on: conversion, verification and the agent modules verification runs.
# A change anywhere here rebuilds (correct, if not minimal); CLIs, the app, bench and tests do not.
BUILD_CODE = (
    "converter/build.py",
    "converter/variants.py",
    "converter/recipe.py",
    "converter/faceset.py",
    "converter/runtimes.py",
    "converter/sources.py",
    "converter/formats",
    "converter/models",
    "agent/model/runtime.py",
    "agent/model/manifest.py",
    "agent/vision/embed.py",
    "agent/vision/align.py",
    "agent/vision/geometry.py",
    "agent/model/metrics.py",
    "agent/vision/imageio.py",
    "agent/tools/dataset.py",
    "agent/vision/detect",
    "agent/model/runcheck.py",
)


def code_hash() -> str:
    digest = hashlib.sha256()
    for entry in BUILD_CODE:
        path = REPO / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(REPO).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _inputs_key(opts: BuildOptions) -> str:
    digest = hashlib.sha256()
    for faces in (opts.faces, opts.calibration_faces):
        if faces is not None:
            for p in faces.photos:
                digest.update(f"{p.path.name}:{p.path.stat().st_size}:{p.face.bbox}".encode())
            digest.update(repr(faces.pairs).encode())
    for img in opts.detector_images:
        digest.update(hashlib.sha256(np.ascontiguousarray(img).data).digest())
    return digest.hexdigest()


def _tensor_spec(detail: dict[str, Any]) -> TensorSpec:
    shape = [int(s) for s in detail.get("shape_signature", detail["shape"])]
    scale, zp = detail.get("quantization", (0.0, 0))
    q = Quantization(float(scale), int(zp)) if scale else None
    return TensorSpec(name=str(detail["name"]), shape=shape, dtype=np.dtype(detail["dtype"]).name, quantization=q)


def graph_spec(path: Path) -> GraphSpec:
    model = TFLiteModel(path, runtime="ai-edge-litert")
    interp = model._interp
    return GraphSpec(
        file=path.name,
        sha256=sha256_file(path),
        size_bytes=path.stat().st_size,
        inputs=[_tensor_spec(d) for d in interp.get_input_details()],
        outputs=[_tensor_spec(d) for d in interp.get_output_details()],
        ops=op_list(path),
    )


def op_list(path: Path) -> list[str]:
    """Builtin ops of a graph, read without delegates (XNNPACK would hide them behind DELEGATE)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(
        model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    return sorted({op["op_name"] for op in interp._get_ops_details()})


def graph_file_name(recipe: Recipe, graph: str) -> str:
    return "model.tflite" if graph == "model" else f"{graph}.tflite"


def latency(model: Network, inputs: Sequence[np.ndarray], runs: int) -> dict[str, float]:
    """p50/p95 ms of one inference, after a warm-up, on real inputs in turn."""
    model.run(inputs[0])
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        model.run(inputs[i % len(inputs)])
        times.append((time.perf_counter() - t0) * 1000)
    return latency_summary(times).as_manifest()


def make_manifest(recipe: Recipe, variant: str, graphs: dict[str, GraphSpec], **extra: Any) -> Manifest:
    import tensorflow as tf

    return Manifest(
        name=recipe.name,
        kind=recipe.kind,
        variant=variant,
        graphs=graphs,
        source=recipe.source(),
        preprocessing=recipe.preprocessing,
        detector_type=recipe.detector_type,
        alignment=recipe.alignment,
        embedding_size=recipe.embedding_size,
        extra=dict(recipe.extra),
        versions={"converter": __version__, "tensorflow": tf.__version__},
        **extra,
    )


# -- the build -------------------------------------------------------------------------------------


class ModelBuild:
    def __init__(self, recipe: Recipe, opts: BuildOptions) -> None:
        self.recipe = recipe
        self.opts = opts
        self.root = opts.out_dir / recipe.name
        self.prefix = f"[{recipe.name}]"
        self.variants = list(opts.variants or recipe.default_variants)
        for v in self.variants:
            get_variant(v)  # unknown names fail before any work

    # cache -----------------------------------------------------------------------------------
    def _key(self, variant: str) -> str:
        src = self.recipe.source()
        payload = json.dumps(
            {
                "source": src.sha256,
                "file": src.file,
                "recipe": self.recipe.name,
                "variant": variant,
                "code": code_hash(),
                "inputs": _inputs_key(self.opts),
                "count": self.opts.calibration_count,
                "gates": asdict(self.opts.gates),
                "extra": self.opts.cache_key_extra,
                "legacy": self.opts.check_legacy_runtime,
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def _cached(self) -> ModelReport | None:
        report = self.root / "report.json"
        if not report.is_file():
            return None
        try:
            previous = json.loads(report.read_text())
            for v in self.variants:
                vdir = self.root / v
                key_file = vdir / ".build-key"
                if not key_file.is_file() or key_file.read_text().strip() != self._key(v):
                    return None
                Manifest.load(vdir).verify_files(vdir)
            by_name = {v["variant"]: v for v in previous["variants"]}
            results = []
            for v in self.variants:
                d = dict(by_name[v])
                d.pop("passed", None)
                d["status"] = "cached"
                results.append(VariantResult(**d))
        except (FaceliteError, KeyError, TypeError, ValueError, OSError):
            return None
        return ModelReport(
            name=previous["name"],
            kind=previous["kind"],
            source=previous["source"],
            variants=results,
            recommended_variant=previous.get("recommended_variant"),
            baseline=previous.get("baseline", {}),
            notes=previous.get("notes", []),
        )

    # run -------------------------------------------------------------------------------------
    def run(self) -> ModelReport:
        cached = self._cached()
        if cached is not None:
            log.info("%s unchanged since the last build: reusing %s", self.prefix, ", ".join(self.variants))
            return cached
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise BuildError(f"output directory is not writable: {exc.strerror}", str(self.root)) from None
        t0 = time.perf_counter()
        log.info("%s loading source %s", self.prefix, self.recipe.source().package)
        graphs = self.recipe.graphs()
        log.info("%s source loaded in %.1f s", self.prefix, time.perf_counter() - t0)
        if self.recipe.kind == "embedder":
            report = self._build_embedder(graphs)
        else:
            report = self._build_detector(graphs)
        self._finish(report)
        return report

    # embedders -------------------------------------------------------------------------------
    def _build_embedder(self, graphs: list[GraphSource]) -> ModelReport:
        (graph,) = graphs
        recipe = self.recipe
        if self.opts.faces is None or recipe.alignment is None:
            raise BuildError(f"{recipe.name}: an embedder build needs real faces and an alignment template")
        size = (int(recipe.alignment.size[0]), int(recipe.alignment.size[1]))
        crops = self.opts.faces.crops(recipe.alignment.template, size)
        if len(crops) < 2:
            raise BuildError(f"only {len(crops)} faces found in the verification photos; need labelled pairs")
        inputs = [preprocess(c, recipe.preprocessing) for c in crops]
        t0 = time.perf_counter()
        ref = np.stack([l2_normalize(graph.reference.run(x)[0]) for x in inputs])
        log.info("%s source embeddings for %d faces in %.1f s", self.prefix, len(inputs), time.perf_counter() - t0)
        same, diff = self._pair_scores(ref)
        base = verification_scores(same, diff)
        baseline = {
            "auc": base.auc,
            "tar_at_far": base.tar_at_far,
            "thresholds": base.thresholds,
            "pairs_same": base.n_same,
            "pairs_diff": base.n_diff,
            "faces": len(inputs),
            "missed_photos": [p.name for p in self.opts.faces.missed],
        }
        # Calibration: real aligned faces, plus their mirror images (a face seen from the other side).
        source = self.opts.calibration_faces
        calib = source.crops(recipe.alignment.template, size) if source is not None else crops
        calib_crops = [*calib, *[c[:, ::-1].copy() for c in calib]]
        results = []
        for vname in self.variants:
            results.append(self._embedder_variant(vname, graph, calib_crops, inputs, ref, base.auc))
        return ModelReport(recipe.name, recipe.kind, asdict(recipe.source()), results, None, baseline)

    def _pair_scores(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.opts.faces is not None
        pairs = self.opts.faces.pairs
        scores = np.array([float(emb[a] @ emb[b]) for a, b, _ in pairs])
        labels = np.array([s for _, _, s in pairs], bool)
        return scores[labels], scores[~labels]

    def _calibration(self, vname: str, graph: str, images: Sequence[np.ndarray]) -> Any:
        variant = get_variant(vname)
        if not variant.calibrated:
            validate_options(variant, {})
            return None
        count = self.opts.calibration_count
        validate_options(variant, {"calibration_count": count}, available_calibration=len(images))
        samples = self.recipe.calibration_samples(graph, images, count)
        if len(samples) < MIN_CALIBRATION_IMAGES:
            raise VariantError(
                f"{self.recipe.name}/{graph}: only {len(samples)} calibration samples could be made, "
                f"need at least {MIN_CALIBRATION_IMAGES}",
                fix="point --calibration at more face photos",
            )
        log.info("%s %s: calibrating %s on %d real samples", self.prefix, vname, graph, len(samples))

        def representative() -> Any:
            for s in samples:
                yield [np.asarray(x, np.float32) for x in s]

        return representative

    def _convert(self, vname: str, graph: GraphSource, images: Sequence[np.ndarray], out: Path) -> float:
        built_as = "fp32" if vname in graph.float_variants else vname
        variant = get_variant(built_as)
        t0 = time.perf_counter()
        if built_as != vname:
            how = "copied as shipped" if graph.tflite_file is not None else "converted as fp32"
            log.info("%s %s: %s stays float (%s)", self.prefix, vname, graph.name, how)
        if graph.tflite_file is not None and built_as == "fp32":
            # The shipped file is the fp32 variant; other variants come from make_converter, which refuses
            # when the recipe has no float graph to re-quantise.
            shutil.copyfile(graph.tflite_file, out)
        else:
            converter = graph.make_converter()
            representative = self._calibration(built_as, graph.name, images)
            variant.configure(converter, representative)
            keep_float = graph.int8_float_ops if built_as == "int8" else frozenset()
            if keep_float:
                log.info("%s %s: %s keeps %s float", self.prefix, vname, graph.name, ", ".join(sorted(keep_float)))
            try:
                if keep_float and representative is not None:
                    data = quantize_keeping_float(converter, representative, keep_float)
                else:
                    data = converter.convert()
            except Exception as exc:
                msg = str(exc).strip().splitlines()
                raise BuildError(
                    f"conversion of {self.recipe.name}/{graph.name} to {vname} failed: "
                    f"{msg[0] if msg else type(exc).__name__}"
                ) from None
            out.write_bytes(data)
        seconds = time.perf_counter() - t0
        log.info(
            "%s %s: %s.tflite %.2f MB in %.1f s", self.prefix, vname, graph.name, out.stat().st_size / 1e6, seconds
        )
        return seconds

    def _legacy(self, path: Path, inputs: list[np.ndarray], expected: list[list[np.ndarray]]) -> Any:
        """tflite-runtime 2.14's run of the same inputs, or None when the check is switched off."""
        if not self.opts.check_legacy_runtime:
            return None
        return check_legacy(path, inputs, expected)

    @staticmethod
    def _agreement(a: Any) -> dict[str, Any] | str:
        if a is None:
            return "not checked (--no-legacy-check)"
        return {"max_abs_diff": a.max_abs_diff, "min_cosine_to_litert": a.min_cosine, "median_ms": a.median_ms}

    def _embedder_variant(
        self,
        vname: str,
        graph: GraphSource,
        calib_crops: list[np.ndarray],
        inputs: list[np.ndarray],
        ref: np.ndarray,
        base_auc: float,
    ) -> VariantResult:
        gates = self.opts.gates
        tmp = self.root / f".tmp-{vname}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        result = VariantResult(vname, "failed")
        try:
            path = tmp / graph_file_name(self.recipe, graph.name)
            result.convert_seconds = self._convert(vname, graph, calib_crops, path)
            if vname == "int8" and graph.int8_float_ops:
                result.flags.append(f"mixed precision: {', '.join(sorted(graph.int8_float_ops))} kept float")
            model = TFLiteModel(path, runtime="ai-edge-litert")
            raw = [model.run(x)[0] for x in inputs]
            emb = np.stack([l2_normalize(r) for r in raw])
            cos = (emb * ref).sum(1)
            same, diff = self._pair_scores(emb)
            scores = verification_scores(same, diff)
            result.size_bytes = path.stat().st_size
            result.ops = op_list(path)
            result.latency_ms = latency(model, inputs, self.opts.latency_runs)
            result.accuracy = {
                "mean_cosine": float(cos.mean()),
                "min_cosine": float(cos.min()),
                "max_abs_error": float(np.max(np.abs(emb - ref))),
                "auc": scores.auc,
                "auc_drop": base_auc - scores.auc,
                "tar_at_far": scores.tar_at_far,
                "thresholds": scores.thresholds,
            }
            # tflite-runtime 2.14 rounds integer kernels differently from ai-edge-litert: hold it to the
            # same bound against the float source rather than demanding the two runtimes agree bit-wise.
            n = min(len(inputs), 24)
            legacy = self._legacy(path, inputs[:n], [[r] for r in raw[:n]])
            result.runtimes = {"tflite-runtime": self._agreement(legacy)}
            result.gates = {
                f"mean_cosine>={gates.min_mean_cosine}": float(cos.mean()) >= gates.min_mean_cosine,
                f"auc_drop<={gates.max_auc_drop}": base_auc - scores.auc <= gates.max_auc_drop,
            }
            if legacy is not None:
                legacy_emb = np.stack([l2_normalize(o[0]) for o in legacy.outputs])
                legacy_cos = float((legacy_emb * ref[:n]).sum(1).mean())
                result.runtimes["tflite-runtime"]["mean_cosine_to_source"] = legacy_cos
                result.gates[f"tflite_runtime_mean_cosine>={gates.min_mean_cosine}"] = (
                    legacy_cos >= gates.min_mean_cosine
                )
            spec = graph_spec(path)
            manifest = make_manifest(
                self.recipe, vname, {graph.name: spec}, thresholds=scores.thresholds, latency_ms=result.latency_ms
            )
            manifest.save(tmp)
            self._install(vname, tmp, result)
        except (FaceliteError, RuntimeCheckError) as exc:
            result.reason = exc.one_line()
            log.error("%s %s failed: %s", self.prefix, vname, result.reason)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return result

    def _runtime_gate(self, result: VariantResult) -> None:
        """Detectors: raw output maps of both runtimes must agree (scores and box offsets)."""
        legacy = result.runtimes.get("tflite-runtime")
        if isinstance(legacy, dict):
            key = f"tflite_runtime_cosine>={self.opts.gates.min_runtime_cosine}"
            result.gates[key] = legacy["min_cosine_to_litert"] >= self.opts.gates.min_runtime_cosine

    def _install(self, vname: str, tmp: Path, result: VariantResult) -> None:
        """Move a verified variant into place; a variant past its bounds is never installed."""
        final = self.root / vname
        if not all(result.gates.values()):
            failed = [k for k, ok in result.gates.items() if not ok]
            result.reason = f"gate(s) failed: {', '.join(failed)}"
            result.status = "failed"
            shutil.rmtree(final, ignore_errors=True)
            log.error("%s %s failed its gates: %s", self.prefix, vname, self._figures(result))
            return
        (tmp / ".build-key").write_text(self._key(vname))
        old = self.root / f".old-{vname}"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.replace(old)
        tmp.replace(final)
        shutil.rmtree(old, ignore_errors=True)
        result.status = "built"
        log.info("%s %s ok: %s", self.prefix, vname, self._figures(result))

    @staticmethod
    def _figures(result: VariantResult) -> str:
        acc = result.accuracy
        parts = [f"{result.size_bytes / 1e6:.2f} MB", f"p50 {result.latency_ms.get('p50', 0):.1f} ms"]
        for key in ("mean_cosine", "auc", "recall", "mean_iou"):
            if key in acc:
                parts.append(f"{key} {acc[key]:.4f}")
        return ", ".join(parts)

    # detectors -------------------------------------------------------------------------------
    def _build_detector(self, graphs: list[GraphSource]) -> ModelReport:
        recipe = self.recipe
        images = list(self.opts.detector_images)
        if not images:
            raise BuildError(f"{recipe.name}: a detector build needs real photos to calibrate and verify on")
        ref_det = recipe.detector({g.name: g.reference for g in graphs})
        t0 = time.perf_counter()
        ref_faces = [ref_det.detect(img) for img in images]
        log.info(
            "%s source detector on %d photos in %.1f s: %d faces",
            self.prefix,
            len(images),
            time.perf_counter() - t0,
            sum(map(len, ref_faces)),
        )
        baseline = {"photos": len(images), "faces": sum(map(len, ref_faces))}
        results = [self._detector_variant(v, graphs, images, ref_faces) for v in self.variants]
        return ModelReport(recipe.name, recipe.kind, asdict(recipe.source()), results, None, baseline)

    def _detector_variant(
        self, vname: str, graphs: list[GraphSource], images: list[np.ndarray], ref_faces: list[list[Face]]
    ) -> VariantResult:
        gates = self.opts.gates
        tmp = self.root / f".tmp-{vname}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        result = VariantResult(vname, "failed")
        try:
            paths = {}
            for g in graphs:
                paths[g.name] = tmp / graph_file_name(self.recipe, g.name)
                result.convert_seconds += self._convert(vname, g, images, paths[g.name])
            if kept := [g.name for g in graphs if vname in g.float_variants]:
                result.flags.append(f"mixed precision: {', '.join(kept)} kept float (its {vname} form fails the gates)")
            nets = {name: TFLiteModel(p, runtime="ai-edge-litert") for name, p in paths.items()}
            det = self.recipe.detector(dict(nets))  # a dict[str, Network] view (dict is invariant)
            got = [det.detect(img) for img in images]
            result.accuracy = detector_agreement(ref_faces, got)
            result.size_bytes = sum(p.stat().st_size for p in paths.values())
            result.ops = sorted({op for p in paths.values() for op in op_list(p)})
            frame = _frame_640(images)
            t_runs = []
            det.detect(frame)
            for _ in range(max(3, self.opts.latency_runs // 2)):
                t0 = time.perf_counter()
                det.detect(frame)
                t_runs.append((time.perf_counter() - t0) * 1000)
            result.latency_ms = latency_summary(t_runs).as_manifest()
            per_graph: dict[str, Any] = {}
            min_cos = 1.0
            for g in graphs:
                samples = [s[0] for s in self.recipe.calibration_samples(g.name, images[:4], 4)]
                expected = []
                for x in samples:
                    nets[g.name].resize_input(x.shape)
                    expected.append(nets[g.name].run(x))
                legacy = self._legacy(paths[g.name], samples, expected) if samples else None
                per_graph[g.name] = self._agreement(legacy)
                if legacy is not None:
                    min_cos = min(min_cos, legacy.min_cosine)
            result.runtimes = {
                "tflite-runtime": {"min_cosine_to_litert": min_cos, "graphs": per_graph}
                if self.opts.check_legacy_runtime
                else self._agreement(None)
            }
            result.gates = {
                f"recall>={gates.min_detector_recall}": result.accuracy["recall"] >= gates.min_detector_recall,
                f"mean_iou>={gates.min_detector_iou}": result.accuracy["mean_iou"] >= gates.min_detector_iou,
            }
            self._runtime_gate(result)
            specs = {name: graph_spec(p) for name, p in paths.items()}
            make_manifest(self.recipe, vname, specs, latency_ms=result.latency_ms).save(tmp)
            self._install(vname, tmp, result)
        except (FaceliteError, RuntimeCheckError) as exc:
            result.reason = exc.one_line()
            log.error("%s %s failed: %s", self.prefix, vname, result.reason)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return result

    # finishing -------------------------------------------------------------------------------
    def _finish(self, report: ModelReport) -> None:
        passed = [v for v in report.variants if v.passed]
        fp32 = next((v for v in report.variants if v.variant == "fp32"), None)
        for v in report.variants:
            if fp32 and v is not fp32 and v.latency_ms and fp32.latency_ms:
                v.latency_ms["fp32_p50"] = fp32.latency_ms["p50"]
                if v.latency_ms["p50"] > fp32.latency_ms["p50"] * 1.1:
                    ops = set(v.ops)
                    why = (
                        "int8 PRELU is not accelerated by this runtime's x86 kernels (docs/toolchain.md)"
                        if "PRELU" in ops or {"ABS", "SUB", "MUL"} <= ops
                        else "integer kernels are not faster than XNNPACK fp32 on this CPU"
                    )
                    v.flags.append(
                        f"slower than fp32 ({v.latency_ms['p50']:.1f} vs {fp32.latency_ms['p50']:.1f} ms): {why}"
                    )
        # A variant whose device arithmetic differs from this machine's was timed here in float32: its x86 speed says
        # nothing about the device, and its gates here do not cover that arithmetic (make bench-arm's do).
        eligible = [v for v in passed if v.variant not in DEVICE_CHECKED_VARIANTS]
        if eligible:
            report.recommended_variant = min(eligible, key=lambda v: v.latency_ms.get("p50", float("inf"))).variant
        # Stamp the recommendation and the fp32 twin's latency into every installed manifest.
        for v in passed:
            vdir = self.root / v.variant
            m = Manifest.load(vdir)
            data = m.to_dict()
            data["recommended_variant"] = report.recommended_variant
            data["latency_ms"] = v.latency_ms
            Manifest.from_dict(data).save(vdir)
            (vdir / ".build-key").write_text(self._key(v.variant))
        write_model_report(self.root, report)


def detector_agreement(ref: list[list[Face]], got: list[list[Face]], iou_match: float = 0.5) -> dict[str, Any]:
    """How closely a variant's detections follow the source's: recall, IoU and landmark error of matches."""
    matched, total, extra = 0, 0, 0
    ious: list[float] = []
    lmk: list[float] = []
    for r_faces, g_faces in zip(ref, got):
        used: set[int] = set()
        total += len(r_faces)
        for rf in r_faces:
            best, best_j = 0.0, -1
            for j, gf in enumerate(g_faces):
                if j not in used:
                    iou = rf.bbox.iou(gf.bbox)
                    if iou > best:
                        best, best_j = iou, j
            if best >= iou_match:
                used.add(best_j)
                matched += 1
                ious.append(best)
                gf = g_faces[best_j]
                common = [k for k in rf.landmarks if k in gf.landmarks]
                if common:
                    err = np.mean(
                        [
                            np.hypot(rf.landmarks[k][0] - gf.landmarks[k][0], rf.landmarks[k][1] - gf.landmarks[k][1])
                            for k in common
                        ]
                    )
                    lmk.append(float(err / max(rf.bbox.width, 1.0)))
        extra += len(g_faces) - len(used)
    return {
        "source_faces": total,
        "matched": matched,
        "recall": matched / total if total else 1.0,
        "extra_faces": extra,
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
        "min_iou": float(np.min(ious)) if ious else 0.0,
        "landmark_error": float(np.mean(lmk)) if lmk else 0.0,  # mean distance / box width
    }


def _frame_640(images: Sequence[np.ndarray]) -> np.ndarray:
    """A 640x480 frame with one real face photo in it: the agent's typical input for latency."""
    import cv2

    frame = np.zeros((480, 640, 3), np.uint8)
    img = images[0]
    scale = min(480 / img.shape[0], 640 / img.shape[1], 1.0)
    small = cv2.resize(img, (int(img.shape[1] * scale), int(img.shape[0] * scale)))
    frame[: small.shape[0], : small.shape[1]] = small
    return frame


# -- reports ---------------------------------------------------------------------------------------


def write_model_report(root: Path, report: ModelReport) -> None:
    (root / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (root / "report.md").write_text(model_report_md(report))


def model_report_md(report: ModelReport) -> str:
    lines = [
        f"# {report.name} ({report.kind})",
        "",
        f"Source: {report.source['registry']} `{report.source['package']}=={report.source['version']}`, "
        f"`{report.source['file']}` (sha256 {report.source['sha256'][:16]}…)",
        "",
    ]
    if report.kind == "embedder":
        b = report.baseline
        lines += [
            f"Float source on {b.get('faces')} real faces, {b.get('pairs_same')} same / {b.get('pairs_diff')} "
            f"different pairs: AUC {b.get('auc', 0):.4f}, TAR@FAR1e-3 {b.get('tar_at_far', {}).get('1e-3', 0):.3f}",
            "",
            "| variant | status | size MB | p50 ms | fp32 p50 ms | mean cos | min cos | max abs err | AUC | "
            "TAR@1e-2 | TAR@1e-3 | thr@1e-3 | tflite-runtime cos | gates |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for v in report.variants:
            a = v.accuracy
            lines.append(
                f"| {v.variant} | {v.status} | {v.size_bytes / 1e6:.2f} | {v.latency_ms.get('p50', 0):.1f} | "
                f"{v.latency_ms.get('fp32_p50', v.latency_ms.get('p50', 0)):.1f} | {a.get('mean_cosine', 0):.4f} | "
                f"{a.get('min_cosine', 0):.4f} | {a.get('max_abs_error', 0):.4f} | {a.get('auc', 0):.4f} | "
                f"{a.get('tar_at_far', {}).get('1e-2', 0):.3f} | {a.get('tar_at_far', {}).get('1e-3', 0):.3f} | "
                f"{a.get('thresholds', {}).get('1e-3', 0):.3f} | {_rt(v)} | {'pass' if v.passed else 'FAIL'} |"
            )
    else:
        lines += [
            f"Source detector on {report.baseline.get('photos')} real photos: {report.baseline.get('faces')} faces",
            "",
            "| variant | status | size MB | p50 ms (640x480) | recall vs source | mean IoU | min IoU | "
            "landmark err (/box w) | extra faces | tflite-runtime cos | gates |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for v in report.variants:
            a = v.accuracy
            lines.append(
                f"| {v.variant} | {v.status} | {v.size_bytes / 1e6:.2f} | {v.latency_ms.get('p50', 0):.1f} | "
                f"{a.get('recall', 0):.3f} | {a.get('mean_iou', 0):.3f} | {a.get('min_iou', 0):.3f} | "
                f"{a.get('landmark_error', 0):.4f} | {a.get('extra_faces', 0)} | {_rt(v)} | "
                f"{'pass' if v.passed else 'FAIL'} |"
            )
    lines += ["", f"Recommended variant (fastest that passes the gates): **{report.recommended_variant}**", ""]
    for v in report.variants:
        for flag in v.flags:
            lines.append(f"- {v.variant}: {flag}")
        if v.reason:
            lines.append(f"- {v.variant}: {v.reason}")
        if v.ops:
            lines.append(f"- {v.variant} ops: {', '.join(v.ops)}")
    for note in report.notes:
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def _rt(v: VariantResult) -> str:
    r = v.runtimes.get("tflite-runtime")
    if not isinstance(r, dict):
        return "n/a"
    if "mean_cosine_to_source" in r:
        return f"{r['mean_cosine_to_source']:.4f} (to source)"
    return f"{r['min_cosine_to_litert']:.5f}"
