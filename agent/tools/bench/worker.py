"""One bench step in its own process: ``python -m facelite.tools.bench.worker TASK JOB.json RESULT.json``.

Each task reads a typed job and writes a typed result, so the orchestrator can place it in the right
interpreter (.venv or .venv-legacy) and on the right CPUs (``taskset -c 0`` for single-core figures).
The module imports nothing heavy itself: the legacy runtime worker imports only agent code and numpy.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facelite.errors import FaceliteError
from facelite.tools.bench.common import read_json, write_json
from facelite.tools.bench.models import SourceJob, SourceResult
from facelite.tools.bench.pipelines import AccuracyJob, AccuracyResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostJob:
    """The TensorFlow worker: float source rows (and the shared inputs), then every accuracy figure."""

    source: SourceJob
    accuracy: AccuracyJob


@dataclass(frozen=True)
class HostResult:
    source: SourceResult
    accuracy: AccuracyResult


def _host() -> tuple[type, Callable[[Any], Any]]:
    from facelite.tools.bench.models import run_source
    from facelite.tools.bench.pipelines import run_accuracy

    def run(job: HostJob) -> HostResult:
        keep: dict[str, Any] = {}
        source = run_source(job.source, keep)
        accuracy = run_accuracy(job.accuracy, keep)
        return HostResult(source, accuracy)

    return HostJob, run


def _runtime() -> tuple[type, Callable[[Any], Any]]:
    from facelite.tools.bench.models import RuntimeJob, run_runtime

    return RuntimeJob, run_runtime


def _e2e() -> tuple[type, Callable[[Any], Any]]:
    from facelite.tools.bench.agent_e2e import E2EJob, run_e2e

    return E2EJob, run_e2e


def _peers() -> tuple[type, Callable[[Any], Any]]:
    from facelite.tools.bench.peers import PeersJob, run_peers

    return PeersJob, run_peers


TASKS: dict[str, Callable[[], tuple[type, Callable[[Any], Any]]]] = {
    "host": _host,
    "runtime": _runtime,
    "e2e": _e2e,
    "peers": _peers,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m facelite.tools.bench.worker", description=__doc__)
    ap.add_argument("task", choices=sorted(TASKS))
    ap.add_argument("job", type=Path)
    ap.add_argument("result", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    job_type, run = TASKS[args.task]()
    try:
        result = run(read_json(args.job, job_type))
    except FaceliteError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    write_json(args.result, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
