#!/usr/bin/env python3
"""A plain process supervisor for devices without systemd (Termux/Android-class boards, containers).

    supervisor.py --run-dir DIR start [--env K=V ...] -- CMD [ARGS...]   detach, run CMD, restart it on failure
    supervisor.py --run-dir DIR stop | restart -- CMD | status [--json] | run -- CMD (foreground)

What systemd would do for facelite-agent.service, reduced to what the agent needs:
- Restart=on-failure: a non-zero exit or a signal restarts CMD after a growing delay; exit 0 means "done".
- StartLimitBurst/IntervalSec: more than ``--max-starts`` starts within ``--window-s`` gives up (state "failed").
- PID file (DIR/supervisor.pid), status file (DIR/status.json, written atomically), log file (DIR/agent.log,
  rotated by size) holding CMD's output and the supervisor's own lines.
- LoadCredential imitation: ``--env CREDENTIALS_DIRECTORY=...`` so the same agent config works under both.
Stdlib only, Python >= 3.9: it runs on the device's system Python, outside the agent's venv.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger("facelite.supervisor")

EXIT_NOT_RUNNING = 3  # LSB "program is not running", like `systemctl status`


@dataclass(frozen=True)
class Policy:
    max_starts: int = 5  # StartLimitBurst
    window_s: float = 60.0  # StartLimitIntervalSec
    delay_s: float = 1.0  # RestartSec, doubled after each quick failure
    max_delay_s: float = 30.0
    stop_timeout_s: float = 20.0  # TimeoutStopSec: SIGTERM, then SIGKILL
    log_max_bytes: int = 5 * 1024 * 1024
    log_keep: int = 3


@dataclass(frozen=True)
class Status:
    state: str  # starting | running | backoff | exited | failed | stopping | stopped
    supervisor_pid: int
    child_pid: int | None = None
    starts: int = 0
    restarts: int = 0
    last_exit: int | None = None  # exit code, or -signal
    since: float = 0.0
    command: list[str] = field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def pid_file(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    @property
    def log_file(self) -> Path:
        return self.root / "agent.log"

    def write_status(self, status: Status) -> None:
        tmp = self.status_file.with_name(f".status.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(status), indent=1) + "\n")
        os.replace(tmp, self.status_file)

    def read_status(self) -> Status | None:
        try:
            return Status(**json.loads(self.status_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def supervisor_pid(self) -> int | None:
        """The live supervisor's pid, or None (no pid file, or a stale one left by a crash or reboot)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _alive(pid):
            return None
        cmdline = Path(f"/proc/{pid}/cmdline")
        # A recycled pid must not be mistaken for ours (or be sent SIGTERM).
        with contextlib.suppress(OSError):
            if str(self.root).encode() not in cmdline.read_bytes():
                return None
        return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RotatingLog:
    """Append lines to a file, rotating by size (agent.log -> agent.log.1 ...). Thread-safe."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self._fh: IO[bytes] = open(path, "ab")  # kept open for the supervisor's life

    def write(self, data: bytes) -> None:
        with self._lock:
            self._fh.write(data)
            self._fh.flush()
            if self._fh.tell() >= self.max_bytes:
                self._rotate()

    def line(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.write(f"{stamp} [supervisor] {text}\n".encode())

    def _rotate(self) -> None:
        self._fh.close()
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fh = open(self.path, "ab")

    def close(self) -> None:
        with self._lock:
            self._fh.close()


class Supervisor:
    """Runs one command until told to stop; ``clock``/``sleep`` are passed in so tests can drive time."""

    def __init__(
        self,
        run_dir: RunDir,
        command: list[str],
        env: dict[str, str],
        policy: Policy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_dir = run_dir
        self.command = command
        self.env = env
        self.policy = policy
        self.clock = clock
        # Stop requests arrive in a signal handler, which Python runs in the main thread between two bytecodes,
        # wherever that thread is, even inside a `with lock:` block. So the handler takes no lock (a
        # threading.Event's set() takes its Condition's lock: when the signal landed while the main thread held
        # that lock inside Event.wait, the supervisor deadlocked on itself, its agent left a zombie). It sets a
        # plain flag and writes one byte to a self-pipe, both safe there; the main loop sleeps in select() on
        # the pipe, so a stop wakes it at once. Only the main loop reaps the child (Popen.poll/wait).
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()  # not inherited by the child (PEP 446)
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._child: subprocess.Popen[bytes] | None = None
        self._pump_thread: threading.Thread | None = None
        self._starts: list[float] = []
        self._total_starts = 0
        self._last_exit: int | None = None
        self.log = RotatingLog(run_dir.log_file, policy.log_max_bytes, policy.log_keep)

    def _status(self, state: str, message: str = "") -> None:
        child = self._child.pid if self._child and self._child.poll() is None else None
        self.run_dir.write_status(
            Status(
                state=state,
                supervisor_pid=os.getpid(),
                child_pid=child,
                starts=self._total_starts,
                restarts=max(self._total_starts - 1, 0),
                last_exit=self._last_exit,
                since=time.time(),
                command=self.command,
                message=message,
            )
        )

    def request_stop(self, *_: object) -> None:
        """Signal handler (SIGTERM, SIGINT), also callable from any thread: no locks, no logging, no waits."""
        self._stopping = True
        with contextlib.suppress(OSError):  # a full pipe already holds a wake-up
            os.write(self._wake_w, b"\0")

    def _sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds`` or until a stop is requested; True when stopping."""
        if not self._stopping:
            select.select([self._wake_r], [], [], seconds)  # PEP 475: retried after a signal, with the time left
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 512):
                pass
        return self._stopping

    def _pump(self, stream: IO[bytes]) -> None:
        for chunk in iter(stream.readline, b""):
            self.log.write(chunk)
        stream.close()

    def _start_child(self) -> subprocess.Popen[bytes]:
        self._starts.append(self.clock())
        self._total_starts += 1
        child = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # its own process group: a terminal's Ctrl-C is ours to forward
        )
        assert child.stdout is not None
        self._pump_thread = threading.Thread(target=self._pump, args=(child.stdout,), daemon=True)
        self._pump_thread.start()
        return child

    def _drain_output(self) -> None:
        """After the child is reaped: let its last lines (e.g. "agent stopped") reach the log before ours."""
        if self._pump_thread is not None:
            self._pump_thread.join(2.0)  # bounded: a grandchild may still hold the pipe open

    def _terminate_child(self) -> str:
        """Stop and reap the child (it may have exited already, e.g. signalled together with us); says how it ended."""
        child = self._child
        if child is None:
            return "no child running"
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(self.policy.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.log.line(f"child {child.pid} ignored SIGTERM for {self.policy.stop_timeout_s:.0f} s: SIGKILL")
                child.kill()
                child.wait()
        self._last_exit = child.returncode
        self._drain_output()
        return f"pid {child.pid} {_how(child.returncode)}"

    def run(self) -> int:
        """Foreground loop; returns 0 when stopped or the command finished cleanly, 1 when it gave up."""
        delay = self.policy.delay_s
        try:
            while not self._stopping:
                now = self.clock()
                self._starts = [t for t in self._starts if now - t < self.policy.window_s]
                if len(self._starts) >= self.policy.max_starts:
                    msg = (
                        f"gave up: {len(self._starts)} starts within {self.policy.window_s:.0f} s "
                        f"(last exit {self._last_exit})"
                    )
                    self.log.line(msg)
                    self._status("failed", msg)
                    return 1
                try:
                    self._child = self._start_child()
                except OSError as exc:
                    self._last_exit = 127
                    self.log.line(f"cannot start {self.command[0]}: {exc.strerror}")
                    self._status("backoff", f"cannot start {self.command[0]}: {exc.strerror}")
                else:
                    self.log.line(f"started pid {self._child.pid}: {' '.join(self.command)}")
                    self._status("running")
                    started = self.clock()
                    while self._child.poll() is None and not self._sleep(0.2):
                        pass
                    if self._stopping:
                        break
                    code = self._child.returncode
                    self._last_exit = code
                    self._drain_output()
                    if code == 0:
                        self.log.line(f"pid {self._child.pid} exited cleanly (exit 0): not restarting")
                        self._status("exited", "exit 0")
                        return 0
                    if self.clock() - started > self.policy.window_s:
                        delay = self.policy.delay_s  # it ran a good while: start over with a short delay
                    self.log.line(f"pid {self._child.pid} failed ({_how(code)}): restarting in {delay:.1f} s")
                    self._child = None  # reaped, its exit recorded: nothing to stop during the delay
                    self._status("backoff", f"failed ({_how(code)})")
                if self._sleep(delay):
                    break
                delay = min(delay * 2, self.policy.max_delay_s)
            self._status("stopping")
            ended = self._terminate_child()
            self.log.line(f"stopped ({ended})")
            self._status("stopped")
            return 0
        finally:
            # The pipe stays open for the process's life: a signal arriving after this must not write into a
            # descriptor number that a later open() has reused.
            self.log.close()


def _how(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit {code}"


# -- commands ------------------------------------------------------------------------------------------------------
def _parse_env(items: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --env expects KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def cmd_run(args: argparse.Namespace, run_dir: RunDir, policy: Policy) -> int:
    if not args.command:
        print("error: no command given after --", file=sys.stderr)
        return 2
    if run_dir.supervisor_pid() not in (None, os.getpid()):
        print(f"error: already running (pid {run_dir.supervisor_pid()}, {run_dir.root})", file=sys.stderr)
        return 1
    run_dir.pid_file.write_text(f"{os.getpid()}\n")
    sup = Supervisor(run_dir, args.command, _parse_env(args.env), policy)
    signal.signal(signal.SIGTERM, sup.request_stop)
    signal.signal(signal.SIGINT, sup.request_stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the ssh session that started us may go away
    try:
        return sup.run()
    finally:
        # Stopped: a repeated SIGTERM from here on (Python restores the default action while it exits) must not
        # turn a clean stop into a death by signal in the exit status a service manager reads.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(OSError):
            if run_dir.pid_file.read_text().strip() == str(os.getpid()):
                run_dir.pid_file.unlink()


def cmd_start(args: argparse.Namespace, run_dir: RunDir, policy: Policy) -> int:
    pid = run_dir.supervisor_pid()
    if pid is not None:
        print(f"already running (pid {pid})")
        return 0
    if not args.command:
        print("error: no command given after --", file=sys.stderr)
        return 2
    argv = [sys.executable, str(Path(__file__).resolve()), "--run-dir", str(run_dir.root)]
    argv += _policy_args(policy) + [f"--env={e}" for e in args.env] + ["run", "--", *args.command]
    with contextlib.suppress(FileNotFoundError):
        run_dir.status_file.unlink()
    with open(run_dir.log_file, "ab") as out:
        # A new session and no inherited pipes: `ssh device supervisor.py start` returns at once and the
        # supervisor outlives the session.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, close_fds=True
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status = run_dir.read_status()
        if status is not None and status.supervisor_pid == proc.pid and status.state != "starting":
            print(f"started (supervisor pid {proc.pid}, {status.state})")
            return 0 if status.state in ("running", "backoff", "exited") else 1
        if proc.poll() is not None:
            print(f"error: supervisor exited at once with {proc.returncode}: see {run_dir.log_file}", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"error: supervisor did not report within 10 s: see {run_dir.log_file}", file=sys.stderr)
    return 1


def cmd_stop(args: argparse.Namespace, run_dir: RunDir, policy: Policy) -> int:
    pid = run_dir.supervisor_pid()
    if pid is None:
        print("not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + policy.stop_timeout_s + 5
    while time.monotonic() < deadline:
        if not _alive(pid):
            print(f"stopped (was pid {pid})")
            return 0
        time.sleep(0.05)
    print(f"error: supervisor pid {pid} did not stop within {policy.stop_timeout_s + 5:.0f} s", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace, run_dir: RunDir, policy: Policy) -> int:
    pid = run_dir.supervisor_pid()
    status = run_dir.read_status()
    if pid is None and status is not None and status.state not in ("stopped", "exited", "failed"):
        status = Status(**{**asdict(status), "state": "dead", "child_pid": None, "message": "supervisor not running"})
    running = pid is not None and status is not None and status.state == "running"
    if args.json:
        print(json.dumps({"running": running, **(asdict(status) if status else {"state": "stopped"})}))
    elif status is None:
        print("stopped (never started)")
    else:
        print(f"{status.state} child={status.child_pid} restarts={status.restarts} last_exit={status.last_exit}")
    return 0 if running else EXIT_NOT_RUNNING


def _policy_args(p: Policy) -> list[str]:
    return [
        f"--max-starts={p.max_starts}",
        f"--window-s={p.window_s}",
        f"--delay-s={p.delay_s}",
        f"--max-delay-s={p.max_delay_s}",
        f"--stop-timeout-s={p.stop_timeout_s}",
        f"--log-max-bytes={p.log_max_bytes}",
    ]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1 :]
    ap = argparse.ArgumentParser(prog="facelite-supervisor", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True, help="pid, status and log files live here")
    ap.add_argument("--max-starts", type=int, default=Policy.max_starts)
    ap.add_argument("--window-s", type=float, default=Policy.window_s)
    ap.add_argument("--delay-s", type=float, default=Policy.delay_s)
    ap.add_argument("--max-delay-s", type=float, default=Policy.max_delay_s)
    ap.add_argument("--stop-timeout-s", type=float, default=Policy.stop_timeout_s)
    ap.add_argument("--log-max-bytes", type=int, default=Policy.log_max_bytes)
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the command's environment")
    ap.add_argument("--json", action="store_true", help="status as JSON")
    ap.add_argument("action", choices=("start", "stop", "restart", "status", "run"))
    args = ap.parse_args(argv)
    args.command = command
    policy = Policy(
        max_starts=args.max_starts,
        window_s=args.window_s,
        delay_s=args.delay_s,
        max_delay_s=args.max_delay_s,
        stop_timeout_s=args.stop_timeout_s,
        log_max_bytes=args.log_max_bytes,
    )
    run_dir = RunDir(args.run_dir.resolve())
    try:
        run_dir.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: run directory cannot be created: {exc.strerror} ({run_dir.root})", file=sys.stderr)
        return 2
    if args.action == "restart":
        code = cmd_stop(args, run_dir, policy)
        return code if code else cmd_start(args, run_dir, policy)
    handlers = {"start": cmd_start, "stop": cmd_stop, "status": cmd_status, "run": cmd_run}
    return handlers[args.action](args, run_dir, policy)


if __name__ == "__main__":
    sys.exit(main())
