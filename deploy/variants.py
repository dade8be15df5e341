"""Which variant of a converted model a device gets: the one rule, used by `make deploy` and `make bench-arm`.

1. A variant pinned in the device profile (``models.detector_variant`` / ``models.embedder_variant``).
2. Else, when the profile names its CPU (``platform.cpu``), the variant that executes the fewest instructions on that
   CPU in the profile's runtime, as `make bench-arm` measured it under qemu (``<model>/by_cpu.json`` beside the
   variants). The figures count only while they belong to the artifacts on disk: each variant's sha256 is recorded
   with them, and a rebuilt variant makes them stale.
3. Else the converter's recommendation (``recommended_variant`` in index.json: fastest on *this* machine, x86),
   with a warning when a CPU was named, because x86 int8 kernels (VNNI) rank variants differently from a Pi's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facelite.errors import FaceliteError
from facelite.model.manifest import Manifest

log = logging.getLogger(__name__)

BY_CPU_FILE = "by_cpu.json"
CPUS = ("cortex-a53", "cortex-a72", "cortex-a76")  # the classes `make bench-arm` emulates


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
    """The variant that executes the fewest instructions; ties go to the name that sorts first (stable files)."""
    if not by_variant:
        raise ValueError("no variant measured: nothing to choose from")
    return min(sorted(by_variant), key=lambda v: by_variant[v])


def write_by_cpu(
    model_dir: Path,
    instructions: Mapping[str, Mapping[str, float]],
    *,
    runtime: str,
    generated: str,
) -> dict[str, Any]:
    """Record, per CPU, the variant with the fewest instructions (``instructions[cpu][variant]``) for one model."""
    cpus: dict[str, Any] = {}
    for cpu, by_variant in sorted(instructions.items()):
        if by_variant:
            cpus[cpu] = {
                "variant": fewest_instructions(by_variant),
                "instructions": {v: round(n) for v, n in sorted(by_variant.items())},
            }
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
        return VariantChoice(pinned, "pinned in the device profile")
    fallback = entry.get("recommended_variant")
    if cpu is None:
        return VariantChoice(fallback, "recommended by make convert (no platform.cpu in the profile)")
    measured, problem = _measured_pick(models_dir / name, cpu, runtime, entry)
    if measured is None:
        log.warning("%s: %s; using make convert's x86 recommendation %s", name, problem, fallback)
        return VariantChoice(fallback, f"recommended by make convert on x86 ({problem})")
    return VariantChoice(measured, f"fewest instructions on {cpu} in {runtime} (make bench-arm)")


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
    if pick not in entry.get("variants", []):
        return None, f"{path} picks {pick!r}, which is not a built variant that passed its gates"
    shas = data.get("sha256")
    if not isinstance(shas, dict) or shas.get(pick) != artifact_sha256(model_dir, pick):
        return None, f"{path} is stale: {pick} was rebuilt after it was measured"
    return pick, ""
