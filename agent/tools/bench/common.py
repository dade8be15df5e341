"""Value objects and small helpers shared by the bench workers and the report.

Kept free of TensorFlow and of anything numpy 2 only: the tflite-runtime worker imports this module in
.venv-legacy (Python 3.11, numpy<2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from facelite.errors import FaceliteError
from facelite.logsetup import add_logging_flags, level_of, setup_logging
from facelite.model.metrics import Latency, latency_summary, wilson_interval

log = logging.getLogger(__name__)

T = TypeVar("T")


class BenchError(FaceliteError):
    """The bench cannot run a step (missing artifact, failed worker, bad option)."""


def latency_of(times_ms: Sequence[float]) -> Latency:
    if not times_ms:
        raise BenchError("no timings to summarise")
    return latency_summary(times_ms)


def time_runs(fn: Callable[[], object], runs: int, warmup: int = 1) -> Latency:
    """Run ``fn`` ``warmup`` times untimed (first-invoke delegate setup, caches), then ``runs`` times timed."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return latency_of(times)


def proc_status_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmHWM = peak RSS, VmRSS = now) in MiB; 0 where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


# -- JSON for frozen dataclasses ----------------------------------------------------------------------------------
def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def from_jsonable(tp: Any, data: Any) -> Any:
    """Rebuild a (nested) dataclass value from ``to_jsonable`` output, following the type hints."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if data is None:
            return None
        return from_jsonable(args[0], data)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        kwargs = {f.name: from_jsonable(hints[f.name], data[f.name]) for f in dataclasses.fields(tp) if f.name in data}
        return tp(**kwargs)
    if origin in (list, Sequence):
        (arg,) = typing.get_args(tp) or (Any,)
        return [from_jsonable(arg, v) for v in data]
    if origin is tuple:
        items = typing.get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis:
            return tuple(from_jsonable(items[0], v) for v in data)
        return tuple(from_jsonable(a, v) for a, v in zip(items, data))
    if origin is dict:
        _, vt = typing.get_args(tp) or (Any, Any)
        return {k: from_jsonable(vt, v) for k, v in data.items()}
    if tp is Path:
        return Path(data)
    if tp is float and isinstance(data, int):
        return float(data)
    return data


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2) + "\n")
    tmp.replace(path)


def read_json(path: Path, cls: type[T]) -> T:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise BenchError("worker result not found", str(path)) from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"worker result is not valid JSON: {exc.msg}", str(path)) from None
    return typing.cast(T, from_jsonable(cls, data))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def report_main(run: Callable[[Any], int], args: Any) -> int:
    """Entry point of a report command: logging configured here, a FaceliteError as one line and its exit code."""
    import sys

    setup_logging(level_of(args))
    try:
        return run(args)
    except FaceliteError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code


def lfw_report_parser(prog: str, doc: str, repo: Path, out: str) -> argparse.ArgumentParser:
    """The arguments every LFW report shares (corrections, strangers): where the models, photos, cache and report
    are, the pipeline measured (the pi one by default) and the seed of its random choices."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    ap.add_argument("--models", type=Path, default=repo / "build" / "models")
    ap.add_argument("--data-dir", type=Path, default=repo.parent / "shared")
    ap.add_argument("--out", type=Path, default=repo / "build" / out)
    ap.add_argument("--cache", type=Path, default=repo / "build" / "cache" / "lfw", help="detections and embeddings")
    ap.add_argument("--detector", default="blazeface/fp32")
    ap.add_argument("--embedder", default="mobilefacenet/fp32")
    ap.add_argument("--seed", type=int, default=20261203)
    add_logging_flags(ap)
    return ap


@dataclass(frozen=True)
class Rate:
    """``count`` of ``trials`` with its Wilson 95% interval: how the benchmarks report every proportion."""

    count: int
    trials: int
    rate: float
    ci95: tuple[float, float]

    @classmethod
    def of(cls, count: int, trials: int) -> Rate:
        return cls(count, trials, count / trials if trials else float("nan"), wilson_interval(count, trials))

    def md(self, digits: int = 3) -> str:
        lo, hi = self.ci95
        return f"{self.count}/{self.trials} = {self.rate:.{digits}f} (95% CI {lo:.{digits}f}-{hi:.{digits}f})"


@dataclass(frozen=True)
class ProfilePipeline:
    """A device profile's detector (with O-Net landmarks or not) and embedder, each with the variant it ships."""

    detector: str
    detector_variant: str
    embedder: str
    embedder_variant: str
    landmarks: str | None = None

    @property
    def variants(self) -> dict[str, str]:
        return {self.detector: self.detector_variant, self.embedder: self.embedder_variant}

    @property
    def label(self) -> str:
        """``blazeface/fp32+onet + mobilefacenet/fp32``: how the reports name a pipeline."""
        onet = "+onet" if self.landmarks == "mtcnn" else ""
        return f"{self.detector}/{self.detector_variant}{onet} + {self.embedder}/{self.embedder_variant}"


def profile_pipeline(recommended: dict[str, str], profile: str = "pi") -> ProfilePipeline:
    """A device profile's pipeline as `make deploy` ships it on a host without per-CPU figures: the variant the
    profile pins (the pi profiles pin MobileFaceNet fp32 for its accuracy), else make convert's recommendation.
    Benchmarks that speak of "the pi pipeline" measure this."""
    from facelite.deploy.profile import load_profile

    models = load_profile(profile).models
    return ProfilePipeline(
        detector=models.detector,
        detector_variant=models.detector_variant or recommended[models.detector],
        embedder=models.embedder,
        embedder_variant=models.embedder_variant or recommended[models.embedder],
        landmarks=models.landmarks,
    )
