"""Helpers shared by the tests (import as ``from helpers import ...``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    return int(stat[stat.rindex(")") + 2 :].split()[19])


@dataclass(frozen=True)
class ProcessRef:
    """A process seen by a test, remembered with its start time so a recycled pid is never signalled."""

    pid: int
    started: int | None

    @classmethod
    def of(cls, pid: int) -> ProcessRef:
        return cls(pid, _start_time(pid))

    def alive(self) -> bool:
        """Still this process, and not a zombie waiting for its parent."""
        if self.started is None or _start_time(self.pid) != self.started:
            return False
        with contextlib.suppress(OSError):
            return "\nState:\tZ" not in Path(f"/proc/{self.pid}/status").read_text()
        return False

    def kill(self) -> None:
        """SIGKILL its process group when it leads one (our device processes start new sessions), else itself."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)


class Reaper:
    """Processes a test started (directly, or a device supervisor and its agent): all SIGKILLed at teardown.

    A failing test must not leave a supervisor or an agent running (they outlive the test's own process group
    because they start new sessions), so tests register every pid they learn about and the fixture ends them.
    """

    def __init__(self) -> None:
        self._refs: list[ProcessRef] = []
        self._popens: list[subprocess.Popen[Any]] = []

    def track(self, pid: int) -> ProcessRef:
        ref = ProcessRef.of(pid)
        self._refs.append(ref)
        return ref

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen, tracked (and waited for at teardown, so no zombie is left in the test process)."""
        proc = subprocess.Popen(argv, **kwargs)
        self._popens.append(proc)
        self.track(proc.pid)
        return proc

    def kill_all(self) -> None:
        # In registration order: a supervisor is registered before its child, and killed first, so it cannot
        # restart the child in between.
        for ref in self._refs:
            ref.kill()
        for proc in self._popens:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self._refs.clear()
        self._popens.clear()


REPO = Path(__file__).resolve().parents[1]


def facelite_cli(*args: str, timeout: float = 180, module: str = "facelite.cli") -> subprocess.CompletedProcess[str]:
    """`facelite ARGS` as a user runs it (a subprocess of the installed package), output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout
    )


def run_agent_to_end(config: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m facelite --config CONFIG` on sources that end (files, folders): exit 0 and no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "facelite", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc


def wait_until(condition: Callable[[], object], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def orthonormal_basis(dim: int, seed: int) -> np.ndarray:
    """``dim`` orthonormal float32 vectors (rows), deterministic: synthetic embeddings with known cosines."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q.T.astype(np.float32)


def mix(basis: np.ndarray, **weights: float) -> np.ndarray:
    """A unit vector with the given cosines to basis rows e0.. (e.g. e0=0.9, e1=0.3); the rest goes to the last row."""
    v = np.zeros(basis.shape[1], np.float64)
    for name, w in weights.items():
        v += w * basis[int(name[1:])]
    rest = 1.0 - sum(w * w for w in weights.values())
    assert rest >= 0
    v += np.sqrt(rest) * basis[-1]
    return v.astype(np.float32)


def enroll_by_cli(people: Mapping[str, Sequence[Path]], detector: Path, embedder: Path, gallery: Path) -> None:
    """Enrol each person with `facelite enroll` as a subprocess, exactly as a user would; fail on any refusal."""
    from facelite.tools.demo import enroll_command

    for name, photos in people.items():
        proc = subprocess.run(
            enroll_command(name, list(photos), detector, embedder, gallery), capture_output=True, text=True, cwd=REPO
        )
        assert proc.returncode == 0, f"enrolling {name}: {proc.stderr}"
