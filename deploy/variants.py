"""Which variant of a converted model a device gets: the one rule, used by `make deploy` and `make bench-arm`.

1. A variant pinned in the device profile (``models.detector_variant`` / ``models.embedder_variant``).
2. Else, when the profile names its CPU (``platform.cpu``), the variant that executes the fewest instructions on that
   CPU in the profile's runtime, as `make bench-arm` measured it under qemu (``<model>/by_cpu.json`` beside the
   variants), provided it saves at least ``MIN_SAVING`` of fp32's instructions there; else fp32. The figures count
   only while they belong to the artifacts on disk: each variant's sha256 is recorded with them, and a rebuilt
   variant makes them stale.
3. Else the converter's recommendation (``recommended_variant`` in index.json: fastest on *this* machine, x86),
   with a warning when a CPU was named, because x86 int8 kernels (VNNI) rank variants differently from a Pi's.

A variant whose arithmetic differs on the device (``DEVICE_CHECKED_VARIANTS``: fp16-arith) is only ever picked in 2.
where `make bench-arm` checked it on that CPU against fp32 and it passed (``checks`` in by_cpu.json); pinned, a failed
check refuses the deploy and a missing one is a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facelite.errors import FaceliteError
from facelite.model.manifest import DEVICE_CHECKED_VARIANTS, Manifest

log = logging.getLogger(__name__)

BY_CPU_FILE = "by_cpu.json"
REFERENCE_VARIANT = "fp32"  # the variant closest to its source model: what a device keeps unless another clearly wins
# Instruction counts are work, not time (no caches or stalls under qemu): a variant that differs from fp32 in its
# arithmetic or weights must save a share of the work that time cannot erase, not 1,400 instructions of 60 M
# (BlazeFace fp16-arith on a Cortex-A72, which runs float32 kernels there).
MIN_SAVING = 0.02
CPUS = ("cortex-a53", "cortex-a72", "cortex-a76")  # the classes `make bench-arm` emulates


class VariantCheckError(FaceliteError):
    """A pinned variant failed make bench-arm's check on the profile's CPU."""


@dataclass(frozen=True)
class VariantChoice:
    variant: str | None
    reason: str  # said in the deploy log and the bench-arm report


def artifact_sha256(model_dir: Path, variant: str) -> str | None:
    try:
        return Manifest.load(model_dir / variant).sha256
    except FaceliteError:
        return None


def fewest_instructions(by_variant: Mapping[str, float]) -> str:
    """The variant that executes the fewest instructions; ties go to the name that sorts first (stable files).
    Where fp32 was measured too, a cheaper variant must save at least ``MIN_SAVING`` of its instructions, else fp32."""
    if not by_variant:
        raise ValueError("no variant measured: nothing to choose from")
    best = min(sorted(by_variant), key=lambda v: by_variant[v])
    reference = by_variant.get(REFERENCE_VARIANT)
    if reference is not None and by_variant[best] > (1.0 - MIN_SAVING) * reference:
        return REFERENCE_VARIANT
    return best


def eligible(by_variant: Mapping[str, float], checks: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The measured variants a CPU may be given: device-checked ones only where their check on it passed."""
    return {
        v: n
        for v, n in by_variant.items()
        if v not in DEVICE_CHECKED_VARIANTS or _dict(checks.get(v)).get("passed") is True
    }


def write_by_cpu(
    model_dir: Path,
    instructions: Mapping[str, Mapping[str, float]],
    *,
    runtime: str,
    generated: str,
    checks: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Record, per CPU, the variant with the fewest instructions (``instructions[cpu][variant]``) for one model,
    among those it may be given (``checks[cpu][variant]``: make bench-arm's device check, see ``eligible``)."""
    checks = checks or {}
    cpus: dict[str, Any] = {}
    for cpu, by_variant in sorted(instructions.items()):
        allowed = eligible(by_variant, checks.get(cpu, {}))
        if allowed:
            cpus[cpu] = {
                "variant": fewest_instructions(allowed),
                "instructions": {v: round(n) for v, n in sorted(by_variant.items())},
            }
            if checks.get(cpu):
                cpus[cpu]["checks"] = {v: dict(c) for v, c in sorted(checks[cpu].items())}
    variants = sorted({v for by_variant in instructions.values() for v in by_variant})
    data = {
        "command": "make bench-arm",
        "generated": generated,
        "runtime": runtime,
        "cpus": cpus,
        "sha256": {v: artifact_sha256(model_dir, v) for v in variants},
    }
    (model_dir / BY_CPU_FILE).write_text(json.dumps(data, indent=2) + "\n")
    return data


def pick_variant(
    models_dir: Path,
    name: str,
    entry: Mapping[str, Any],
    *,
    pinned: str | None,
    cpu: str | None,
    runtime: str,
) -> VariantChoice:
    """The variant of model ``name`` (its index.json ``entry``) a device with this CPU and runtime gets."""
    if pinned:
        if pinned in DEVICE_CHECKED_VARIANTS:
            return _pinned_device_checked(models_dir / name, name, pinned, cpu, runtime)
        return VariantChoice(pinned, "pinned in the device profile")
    fallback = entry.get("recommended_variant")
    if cpu is None:
        return VariantChoice(fallback, "recommended by make convert (no platform.cpu in the profile)")
    measured, problem = _measured_pick(models_dir / name, cpu, runtime, entry)
    if measured is None:
        log.warning("%s: %s; using make convert's x86 recommendation %s", name, problem, fallback)
        return VariantChoice(fallback, f"recommended by make convert on x86 ({problem})")
    return VariantChoice(measured, f"fewest instructions on {cpu} in {runtime} (make bench-arm)")


def _pinned_device_checked(model_dir: Path, name: str, pinned: str, cpu: str | None, runtime: str) -> VariantChoice:
    """A pinned variant whose device arithmetic only make bench-arm checks: refused where that check failed."""
    data = _dict(_read_by_cpu(model_dir))
    entry = _dict(_dict(data.get("cpus")).get(cpu or "")) if data.get("runtime") == runtime else {}
    check = _dict(entry.get("checks")).get(pinned)
    fresh = _dict(data.get("sha256")).get(pinned) == artifact_sha256(model_dir, pinned)
    verdict = _dict(check).get("passed")
    if cpu is None or not isinstance(verdict, bool) or not fresh:
        log.warning(
            "%s/%s is pinned but its device arithmetic has not been checked on %s in %s: run `make bench-arm`",
            name, pinned, cpu or "this profile's CPU (no platform.cpu)", runtime,
        )  # fmt: skip
        return VariantChoice(pinned, f"pinned in the device profile (not checked on {cpu or 'its CPU'})")
    if not verdict:
        summary = _dict(check).get("summary", "?")
        raise VariantCheckError(
            f"{name}/{pinned} is pinned, but make bench-arm's check on {cpu} failed: {summary}",
            str(model_dir / BY_CPU_FILE),
            "pin another variant (fp32) in the device profile",
        )
    return VariantChoice(pinned, f"pinned in the device profile (checked on {cpu} by make bench-arm)")


def _dict(value: Any) -> dict[str, Any]:
    """``value`` where it is a JSON object, else an empty one: by_cpu.json is read leniently (a hand-edited or
    truncated file is a warning and make convert's choice, never a crash)."""
    return value if isinstance(value, dict) else {}


def _read_by_cpu(model_dir: Path) -> Any:
    try:
        return json.loads((model_dir / BY_CPU_FILE).read_text())
    except (OSError, ValueError):
        return None


def _measured_pick(model_dir: Path, cpu: str, runtime: str, entry: Mapping[str, Any]) -> tuple[str | None, str]:
    """(variant from by_cpu.json, "") when its figures hold for these artifacts, else (None, why not)."""
    path = model_dir / BY_CPU_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"no {BY_CPU_FILE}: run `make bench-arm` for per-CPU figures"
    except (OSError, ValueError) as exc:
        return None, f"{path} cannot be read ({exc})"
    if not isinstance(data, dict):
        return None, f"{path} is not a JSON object"
    if data.get("runtime") != runtime:
        return None, f"{path} was measured in {data.get('runtime')}, not {runtime}"
    cpus = data.get("cpus")
    entry_cpu = cpus.get(cpu) if isinstance(cpus, dict) else None
    pick = entry_cpu.get("variant") if isinstance(entry_cpu, dict) else None
    if not isinstance(pick, str):
        return None, f"{path} has no figures for {cpu}"
    if (
        pick in DEVICE_CHECKED_VARIANTS
        and _dict(_dict(_dict(entry_cpu).get("checks")).get(pick)).get("passed") is not True
    ):
        return None, f"{path} picks {pick!r} without a passed device check on {cpu}"
    if pick not in entry.get("variants", []):
        return None, f"{path} picks {pick!r}, which is not a built variant that passed its gates"
    shas = data.get("sha256")
    if not isinstance(shas, dict) or shas.get(pick) != artifact_sha256(model_dir, pick):
        return None, f"{path} is stale: {pick} was rebuilt after it was measured"
    return pick, ""
