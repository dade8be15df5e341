#!/usr/bin/env python3
"""facelite device installer: runs ON the device with its system Python (stdlib only, Python >= 3.9).

    remote.py probe --prefix P --state-dir S --config-dir C [--upload-dir U] [--manager M]   -> JSON facts
    remote.py install --bundle U/facelite-<version>.tar [--password-stdin]                   -> JSON result
    remote.py rollback --prefix P --state-dir S --config-dir C [--failed V] [--reason TEXT]  -> JSON result

install: check platform and free disk space first, unpack into releases/.<version>.partial, verify every file
against SHA256SUMS (and the version against the hash of SHA256SUMS), build or reuse the venv for this wheel set
with ``pip install --no-index``, run the new release's self-test, and only then switch: service files, the
atomic ``current`` link, restart, and a settle check that the service stays up. Any failure after the switch
rolls back to the previous release; the result names the failing check. The last stdout line is one JSON object
(the host reads it); progress goes to stderr.

Layout: <prefix>/releases/<version>/, <prefix>/venvs/<wheels key>/, <prefix>/current -> releases/<version>,
<config_dir>/agent.toml -> <prefix>/current/config/agent.toml, <config_dir>/credentials/mqtt_password (0600),
<state_dir>/deploy/state.json (current, previous, history), <state_dir>/supervisor/ (plain supervisor).

Size: this file is copied to the device and run there by itself (no package, no imports from facelite), so
everything the device side of a deploy needs is in it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import pwd
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("facelite.remote")

SUMS = "SHA256SUMS"
BUNDLE_JSON = "BUNDLE.json"
PLACEHOLDER = "@RELEASE@"
UNIT_NAME = "facelite-agent.service"
SYSTEMD_DIR = Path("/etc/systemd/system")
COMPLETE = ".facelite-complete"
# Defaults baked into systemd/facelite-agent.service; replaced when a profile moves them.
UNIT_DEFAULTS = {"prefix": "/opt/facelite", "config_dir": "/etc/facelite", "state_dir": "/var/lib/facelite"}


class StepError(Exception):
    """One failed check, reported as one line: ``check`` names it (platform, disk, verify, install, ...)."""

    def __init__(self, check: str, what: str, fix: str = "") -> None:
        self.check = check
        self.what = what
        self.fix = fix
        super().__init__(f"{check}: {what}" + (f": {fix}" if fix else ""))


# -- layout and state ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    prefix: Path
    state_dir: Path
    config_dir: Path

    @property
    def releases(self) -> Path:
        return self.prefix / "releases"

    @property
    def venvs(self) -> Path:
        return self.prefix / "venvs"

    @property
    def current(self) -> Path:
        return self.prefix / "current"

    @property
    def bin(self) -> Path:
        return self.prefix / "bin"

    @property
    def deploy_dir(self) -> Path:
        return self.state_dir / "deploy"

    @property
    def state_file(self) -> Path:
        return self.deploy_dir / "state.json"

    @property
    def credentials(self) -> Path:
        return self.config_dir / "credentials"

    @property
    def config_link(self) -> Path:
        return self.config_dir / "agent.toml"

    @property
    def supervisor_dir(self) -> Path:
        return self.state_dir / "supervisor"

    def current_version(self) -> str | None:
        try:
            target = os.readlink(self.current)
        except OSError:
            return None
        name = Path(target).name
        return name if (self.releases / name).is_dir() else None

    def release(self, version: str) -> Path:
        return self.releases / version

    def load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def save_state(self, state: dict[str, Any]) -> None:
        self.deploy_dir.mkdir(parents=True, exist_ok=True)
        state["history"] = state.get("history", [])[-50:]
        _atomic_write(self.state_file, json.dumps(state, indent=1) + "\n")


def _atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)  # umask must not widen or narrow what we asked for
    os.replace(tmp, path)


def _atomic_symlink(target: str, link: Path) -> None:
    """Replace ``link`` in one rename: a reader (systemd, the agent) sees the old or the new target, never none."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(_existing_ancestor(path)).free


def _mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"


def _tail(text: str, n: int = 1) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The device's own environment minus pip settings: the install must not reach for an index or a cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PYTHONNOUSERSITE": "1", "PIP_NO_INPUT": "1"})
    env.update(extra or {})
    return env


# -- services ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceState:
    active: bool
    restarts: int
    detail: str


class Service:
    def __init__(self, layout: Layout, info: dict[str, Any]) -> None:
        self.layout = layout
        self.info = info

    def install(self, release: Path) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def state(self) -> ServiceState:
        raise NotImplementedError

    def logs(self) -> str:
        return ""


class SupervisorService(Service):
    """Devices without systemd: deploy/supervisor.py, kept in <prefix>/bin and run from there."""

    @property
    def script(self) -> Path:
        return self.layout.bin / "facelite-supervisor.py"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, str(self.script), "--run-dir", str(self.layout.supervisor_dir), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def install(self, release: Path) -> None:
        self.layout.bin.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.script, (release / "service" / "supervisor.py").read_text(), 0o755)

    def restart(self) -> None:
        agent = self.layout.current / "venv" / "bin" / "facelite-agent"
        proc = self._run(
            f"--env=CREDENTIALS_DIRECTORY={self.layout.credentials}",
            "restart",
            "--",
            str(agent),
            "--config",
            str(self.layout.config_link),
            timeout=90,
        )
        if proc.returncode != 0:
            raise StepError("service", f"supervisor restart failed: {_tail(proc.stderr + proc.stdout)}")

    def stop(self) -> None:
        if self.script.is_file():
            self._run("stop", timeout=60)

    def state(self) -> ServiceState:
        if not self.script.is_file():
            return ServiceState(False, 0, "supervisor not installed")
        proc = self._run("--json", "status")
        try:
            data = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return ServiceState(False, 0, f"supervisor status unreadable: {_tail(proc.stderr)}")
        detail = f"{data.get('state')} (restarts {data.get('restarts', 0)}, last exit {data.get('last_exit')})"
        return ServiceState(bool(data.get("running")), int(data.get("restarts", 0)), detail)

    def logs(self) -> str:
        try:
            return _tail((self.layout.supervisor_dir / "agent.log").read_text(errors="replace"), 3)
        except OSError:
            return ""


class SystemdService(Service):
    def _ctl(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=timeout)

    def _render_unit(self, release: Path) -> str:
        text = (release / "service" / UNIT_NAME).read_text()
        paths = self.info["paths"]
        for key, default in UNIT_DEFAULTS.items():
            text = text.replace(default, paths[key])
        user = self.info["service"]["user"]
        return text.replace("User=facelite", f"User={user}").replace("Group=facelite", f"Group={user}")

    def _ensure_user(self) -> None:
        user = self.info["service"]["user"]
        try:
            pwd.getpwnam(user)
            return
        except KeyError:
            pass
        cmd = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(self.layout.state_dir)]
        cmd += ["--shell", "/usr/sbin/nologin"]
        if subprocess.run(["getent", "group", "video"], capture_output=True).returncode == 0:
            cmd += ["--groups", "video"]  # camera access without root
        proc = subprocess.run([*cmd, user], capture_output=True, text=True)
        if proc.returncode != 0:
            raise StepError("service", f"cannot create user {user}: {_tail(proc.stderr)}")

    def install(self, release: Path) -> None:
        self._ensure_user()
        user = pwd.getpwnam(self.info["service"]["user"])
        # The agent writes only here (ProtectSystem=strict, ReadWritePaths=state_dir).
        for path in [self.layout.state_dir, *self.layout.state_dir.glob("*.sqlite*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(self.layout.state_dir, 0o750)
        unit = SYSTEMD_DIR / UNIT_NAME
        text = self._render_unit(release)
        if not unit.is_file() or unit.read_text() != text:
            _atomic_write(unit, text)
            self._ctl("daemon-reload")
        self._ctl("enable", UNIT_NAME)

    def restart(self) -> None:
        # Type=notify: this returns once the agent said READY=1, or fails after TimeoutStartSec.
        proc = self._ctl("restart", UNIT_NAME)
        if proc.returncode != 0:
            raise StepError("service", f"systemctl restart failed: {_tail(proc.stderr)} {self.logs()}")

    def stop(self) -> None:
        self._ctl("stop", UNIT_NAME)

    def state(self) -> ServiceState:
        proc = self._ctl("show", "-p", "ActiveState", "-p", "SubState", "-p", "NRestarts", UNIT_NAME, timeout=30)
        props = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
        active = props.get("ActiveState") == "active"
        restarts = int(props.get("NRestarts") or 0)
        return ServiceState(
            active, restarts, f"{props.get('ActiveState')}/{props.get('SubState')} (restarts {restarts})"
        )

    def logs(self) -> str:
        proc = subprocess.run(
            ["journalctl", "-u", UNIT_NAME, "-n", "3", "--no-pager", "-o", "cat"], capture_output=True, text=True
        )
        return _tail(proc.stdout, 3)


def make_service(layout: Layout, info: dict[str, Any]) -> Service:
    manager = info["service"]["manager"]
    if manager == "systemd":
        return SystemdService(layout, info)
    if manager == "supervisor":
        return SupervisorService(layout, info)
    raise StepError("bundle", f"unknown service manager {manager!r}")


# -- bundle reading and verification -------------------------------------------------------------------------------
def _read_member(tar: tarfile.TarFile, name: str) -> bytes:
    try:
        member = tar.getmember(name)
        fh = tar.extractfile(member)
    except KeyError:
        raise StepError("verify", f"{name} is missing from the bundle") from None
    if fh is None:
        raise StepError("verify", f"{name} is not a file in the bundle")
    return fh.read()


def read_bundle(path: Path) -> tuple[str, dict[str, Any], str, int]:
    """(version, BUNDLE.json, SHA256SUMS text, unpacked size) without unpacking anything."""
    try:
        tar = tarfile.open(path, "r:")
    except FileNotFoundError:
        raise StepError("upload", f"bundle not found: {path}") from None
    except (tarfile.TarError, OSError) as exc:
        raise StepError("verify", f"bundle is not a readable tar ({exc}): {path}") from None
    with tar:
        members = tar.getmembers()
        tops = {m.name.split("/")[0] for m in members}
        if len(tops) != 1:
            raise StepError("verify", f"bundle must hold one folder, found {sorted(tops)[:3]}")
        top = tops.pop()
        sums = _read_member(tar, f"{top}/{SUMS}").decode()
        try:
            info = json.loads(_read_member(tar, f"{top}/{BUNDLE_JSON}"))
        except ValueError as exc:
            raise StepError("verify", f"{BUNDLE_JSON} is not valid JSON: {exc}") from None
        size = sum(m.size for m in members if m.isfile())
    version = f"{info.get('agent_version')}-{hashlib.sha256(sums.encode()).hexdigest()[:12]}"
    if top != f"facelite-{version}":
        raise StepError("verify", f"bundle folder {top} does not match its content (version {version})")
    return version, info, sums, size


def _safe_extract(path: Path, dest: Path, top: str) -> None:
    with tarfile.open(path, "r:") as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            if name.is_absolute() or ".." in name.parts or name.parts[0] != top:
                raise StepError("verify", f"unsafe path in bundle: {member.name}")
            if not (member.isfile() or member.isdir()):
                raise StepError("verify", f"bundle member is not a plain file or folder: {member.name}")
        for member in tar.getmembers():
            rel = Path(*Path(member.name).parts[1:]) if len(Path(member.name).parts) > 1 else Path(".")
            target = dest / rel
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.chmod(target, 0o644)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_tree(root: Path, sums: str) -> int:
    expected: dict[str, str] = {}
    for line in sums.splitlines():
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64:
            raise StepError("verify", f"malformed {SUMS} line: {line[:80]!r}")
        expected[rel] = digest
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {SUMS}
    missing = sorted(set(expected) - present)
    if missing:
        raise StepError("verify", f"file listed in {SUMS} is missing: {missing[0]}")
    extra = sorted(present - set(expected))
    if extra:
        raise StepError("verify", f"file not listed in {SUMS}: {extra[0]}")
    for rel, digest in sorted(expected.items()):
        if sha256_file(root / rel) != digest:
            raise StepError("verify", f"sha256 mismatch: {rel}", "the bundle was damaged in transfer; deploy again")
    return len(expected)


# -- install steps -------------------------------------------------------------------------------------------------
def check_platform(info: dict[str, Any]) -> None:
    want = info["platform"]
    machine = platform.machine()
    if machine != want["arch"]:
        raise StepError(
            "platform",
            f"wrong architecture: the bundle is for {want['arch']}, this device is {machine}",
            "deploy with the profile that matches this device",
        )
    have_py = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if have_py != want["python"]:
        raise StepError(
            "platform",
            f"the bundle's wheels are for Python {want['python']}, this installer runs on {have_py} ({sys.executable})",
            "set paths.python / platform.python in the profile",
        )
    libc, version = platform.libc_ver()
    if libc == "glibc" and version and _vtuple(version) < _vtuple(want["glibc"]):
        raise StepError("platform", f"device glibc {version} is older than the bundle's {want['glibc']}")


def _vtuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def check_disk(layout: Layout, needed: int, min_free: int) -> None:
    free = free_bytes(layout.prefix)
    if free - needed < min_free:
        raise StepError(
            "disk",
            f"not enough free disk space at {_existing_ancestor(layout.prefix)}: {_mb(free)} free, the release needs "
            f"{_mb(needed)} and {_mb(min_free)} must stay free (service.min_free_mb)",
            "free some space or lower service.keep_releases",
        )


def _no_space(exc: OSError, what: str) -> StepError:
    if exc.errno == errno.ENOSPC:
        return StepError("disk", f"no space left on device while {what}")
    return StepError("install", f"{what} failed: {exc.strerror or exc}")


def ensure_venv(layout: Layout, release: Path, info: dict[str, Any]) -> Path:
    """The venv of this wheel set, built once and shared by every release with the same wheels."""
    venv = layout.venvs / info["wheels_key"]
    if (venv / COMPLETE).is_file():
        log.info("venv %s reused", venv.name)
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    wheels = release / "wheels"
    pips = sorted(wheels.glob("pip-*.whl"))
    if not pips:
        raise StepError("install", "no pip wheel in the bundle")
    started = time.monotonic()
    # --without-pip + pip run from its wheel: no dependency on Debian's python3-venv/ensurepip.
    steps = [
        ([sys.executable, "-m", "venv", "--without-pip", str(venv)], "creating the venv"),
        (
            [str(venv / "bin" / "python"), str(pips[-1] / "pip"), "install", "--no-index", "--find-links", str(wheels),
             "--no-cache-dir", "--disable-pip-version-check", "--no-warn-script-location", "-q",
             f"facelite[{info['platform']['extra']}]=={info['agent_version']}"],
            "installing the wheels offline",
        ),
    ]  # fmt: skip
    for cmd, what in steps:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), timeout=1800)
        except OSError as exc:
            shutil.rmtree(venv, ignore_errors=True)
            raise _no_space(exc, what) from None
        if proc.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            output = proc.stderr + proc.stdout
            if "No space left on device" in output:
                raise StepError("disk", f"no space left on device while {what}")
            raise StepError("install", f"{what} failed: {_tail(output)}")
    (venv / COMPLETE).write_text(f"{info['wheels_key']}\n")
    log.info("venv %s built in %.0f s", venv.name, time.monotonic() - started)
    return venv


def write_credentials(layout: Layout, password: str | None) -> None:
    """The MQTT password as a 0600 file (systemd LoadCredential= source; the supervisor points at the folder)."""
    layout.credentials.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.credentials, 0o700)
    target = layout.credentials / "mqtt_password"
    if password is not None:
        _atomic_write(target, password, 0o600)
    elif not target.exists():
        # LoadCredential= fails the unit when its source is missing, even if the config never reads it.
        _atomic_write(target, "", 0o600)


def self_test(layout: Layout, release: Path, info: dict[str, Any]) -> str:
    agent = release / "venv" / "bin" / "facelite-agent"
    if not agent.is_file():
        raise StepError("install", f"facelite-agent is missing from the venv ({agent})")
    config = release / "config" / "agent.toml"
    env = _clean_env({"CREDENTIALS_DIRECTORY": str(layout.credentials)})
    timeout = float(info["service"]["self_test_timeout_s"])
    image = release / info["selftest"]["image"]
    expect = str(info["selftest"]["expect_faces"])
    checks = [
        ("config", [str(agent), "--config", str(config), "--check-config"]),
        ("self-test", [str(agent), "--config", str(config), "--self-test", str(image), "--expect-faces", expect]),
    ]
    output = ""
    for check, cmd in checks:
        started = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=str(release))
        except subprocess.TimeoutExpired:
            raise StepError(check, f"{check} of the new release did not finish within {timeout:.0f} s") from None
        if proc.returncode != 0:
            raise StepError(
                check, f"{check} of the new release failed (exit {proc.returncode}): {_tail(proc.stderr + proc.stdout)}"
            )
        # The self-test prints one JSON summary on stdout; the rest is runtime chatter on stderr.
        output = _tail(proc.stdout) if proc.stdout.strip() else _tail(proc.stderr)
        log.info("%s passed in %.1f s: %s", check, time.monotonic() - started, output)
    return output


def install_gallery(layout: Layout, release: Path, info: dict[str, Any], version: str) -> bool:
    """Seed the device with the bundle's gallery when it has none; True if we put it there.

    A gallery already on the device (people enrolled there) is never overwritten: replacing a SQLite file under a
    running agent (and next to its -wal/-shm files) would corrupt it. `facelite gallery import` merges instead.
    Installed before the self-test, so the self-test proves the gallery matches the new release's embedder.
    """
    target = layout.state_dir / "gallery.sqlite"
    if not info.get("gallery"):
        return False
    if target.exists():
        log.info("gallery kept: the device has its own (%s)", target)
        return False
    tmp = target.with_name(f".gallery.{os.getpid()}.tmp")
    shutil.copy2(release / info["gallery"], tmp)
    os.chmod(tmp, 0o600)
    os.replace(tmp, target)
    log.info("gallery installed from the bundle: %s", target)
    return True


def remove_gallery(layout: Layout) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            (layout.state_dir / f"gallery.sqlite{suffix}").unlink()


def activate(layout: Layout, version: str, service: Service) -> None:
    """Service files, then one atomic link switch, then restart."""
    release = layout.release(version)
    service.install(release)
    layout.config_dir.mkdir(parents=True, exist_ok=True)
    if layout.config_link.exists() and not layout.config_link.is_symlink():
        os.replace(layout.config_link, layout.config_link.with_suffix(".toml.before-deploy"))
    _atomic_symlink(str(layout.current / "config" / "agent.toml"), layout.config_link)
    _atomic_symlink(f"releases/{version}", layout.current)
    service.restart()


def settle(service: Service, seconds: float) -> ServiceState:
    """The service must be up now and still up, without a restart, ``seconds`` later."""
    first = service.state()
    deadline = time.monotonic() + seconds
    state = first
    while True:
        if not state.active or state.restarts > first.restarts:
            raise StepError("service", f"service is not staying up: {state.detail} {service.logs()}".strip())
        if time.monotonic() >= deadline:
            return state
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0.01)))
        state = service.state()


def prune(layout: Layout, keep: int, protect: set[str]) -> list[str]:
    """Keep the newest ``keep`` releases (never the current or previous one) and the venvs they use."""
    removed = []
    for partial in layout.releases.glob(".*.partial"):
        shutil.rmtree(partial, ignore_errors=True)
    releases = sorted(
        (p for p in layout.releases.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    kept = [p for p in releases if p.name in protect]
    for p in releases:
        if p.name not in protect and len(kept) < keep:
            kept.append(p)
    for p in releases:
        if p not in kept:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    used = {Path(os.readlink(p / "venv")).name for p in kept if (p / "venv").is_symlink()}
    if layout.venvs.is_dir():
        for venv in layout.venvs.iterdir():
            if venv.name not in used:
                shutil.rmtree(venv, ignore_errors=True)
    return removed


@contextlib.contextmanager
def deploy_lock(layout: Layout) -> Any:
    layout.prefix.mkdir(parents=True, exist_ok=True)
    with open(layout.prefix / ".deploy.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StepError(
                "lock", f"another deploy is running on this device ({layout.prefix}/.deploy.lock)"
            ) from None
        yield


def _history(state: dict[str, Any], action: str, version: str | None, **extra: Any) -> None:
    state.setdefault("history", []).append({"at": time.time(), "action": action, "version": version, **extra})


def _rollback_to(layout: Layout, previous: str | None, service: Service, settle_s: float) -> str:
    """Switch back to ``previous`` and check it stays up; returns a short description for the result."""
    if previous is None or not layout.release(previous).is_dir():
        service.stop()
        with contextlib.suppress(FileNotFoundError):
            layout.current.unlink()
        return "no previous release: service stopped"
    prev_info = json.loads((layout.release(previous) / BUNDLE_JSON).read_text())
    prev_service = make_service(layout, prev_info)
    activate(layout, previous, prev_service)
    try:
        settle(prev_service, settle_s)
    except StepError as exc:
        return f"rolled back to {previous}, but it is not healthy either: {exc.what}"
    return f"rolled back to {previous}"


def cmd_install(args: argparse.Namespace) -> dict[str, Any]:
    bundle = Path(args.bundle)
    password = sys.stdin.read().rstrip("\r\n") if args.password_stdin else None
    version, info, sums, size = read_bundle(bundle)
    paths = info["paths"]
    layout = Layout(Path(paths["prefix"]), Path(paths["state_dir"]), Path(paths["config_dir"]))
    check_platform(info)
    if info.get("credentials") and password is None:
        raise StepError("credentials", "the config reads an MQTT password but none was delivered")
    service = make_service(layout, info)
    settle_s = float(info["service"]["settle_s"])
    result: dict[str, Any] = {"version": version, "device": info.get("device")}
    with deploy_lock(layout):
        state = layout.load_state()
        current = layout.current_version()
        release = layout.release(version)
        result["previous"] = current
        if current == version and (release / COMPLETE).is_file():
            write_credentials(layout, password)
            if service.state().active:
                with contextlib.suppress(OSError):
                    bundle.unlink()
                return {**result, "ok": True, "action": "unchanged", "message": f"{version} is already running"}
            service.restart()
            settle(service, settle_s)
            return {**result, "ok": True, "action": "restarted", "message": f"{version} was not running: restarted"}
        venv_new = not (layout.venvs / info["wheels_key"] / COMPLETE).is_file()
        wheel_bytes = _wheel_bytes(bundle)
        # Unpacked wheels take about three times their size in a venv.
        needed = size + (3 * wheel_bytes if venv_new else 0)
        check_disk(layout, needed, int(info["service"]["min_free_mb"]) * 1_000_000)

        partial = layout.releases / f".{version}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(release, ignore_errors=True)  # a leftover of a failed attempt
        try:
            partial.mkdir(parents=True)
            _safe_extract(bundle, partial, f"facelite-{version}")
        except OSError as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise _no_space(exc, "unpacking the bundle") from None
        try:
            count = verify_tree(partial, sums)
        except StepError:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        log.info("verified %d files against %s", count, SUMS)
        os.rename(partial, release)
        seeded = False
        try:
            # The agent (and its self-test) keep gallery and spool here; systemd installs chown it later.
            layout.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            template = (release / "config" / "agent.toml.in").read_text()
            _atomic_write(release / "config" / "agent.toml", template.replace(PLACEHOLDER, str(release)))
            venv = ensure_venv(layout, release, info)
            os.symlink(os.path.relpath(venv, release), release / "venv")
            write_credentials(layout, password)
            seeded = install_gallery(layout, release, info, version)
            result["self_test"] = self_test(layout, release, info)
        except (StepError, OSError) as exc:
            if seeded:
                remove_gallery(layout)
            shutil.rmtree(release, ignore_errors=True)
            if isinstance(exc, OSError):
                raise _no_space(exc, "installing the release") from None
            raise
        (release / COMPLETE).write_text(version + "\n")
        os.utime(release)  # prune() orders releases by install time

        try:
            activate(layout, version, service)
            result["service"] = settle(service, settle_s).detail
        except (StepError, OSError, subprocess.SubprocessError) as exc:
            check = exc.check if isinstance(exc, StepError) else "service"
            what = exc.what if isinstance(exc, StepError) else str(exc)
            outcome = _rollback_to(layout, current, service, settle_s)
            shutil.rmtree(release, ignore_errors=True)
            _history(state, "failed", version, check=check, reason=what)
            state.update({"current": layout.current_version()})
            layout.save_state(state)
            raise StepError(check, f"{what}; {outcome}") from None

        previous = current
        _history(state, "deployed", version, previous=previous)
        state.update({"current": version, "previous": previous})
        result["pruned"] = prune(
            layout, int(info["service"]["keep_releases"]), {version, *([previous] if previous else [])}
        )
        layout.save_state(state)
        # Keep a copy of the installer on the device: a manual `remote.py rollback` needs no host.
        layout.bin.mkdir(parents=True, exist_ok=True)
        _atomic_write(layout.bin / "facelite-deploy.py", (release / "remote.py").read_text(), 0o755)
    with contextlib.suppress(OSError):
        bundle.unlink()
    return {**result, "ok": True, "action": "deployed", "message": f"{version} is running"}


def _wheel_bytes(bundle: Path) -> int:
    with tarfile.open(bundle, "r:") as tar:
        return sum(m.size for m in tar.getmembers() if m.isfile() and "/wheels/" in m.name)


def cmd_rollback(args: argparse.Namespace) -> dict[str, Any]:
    layout = Layout(Path(args.prefix), Path(args.state_dir), Path(args.config_dir))
    with deploy_lock(layout):
        state = layout.load_state()
        current = layout.current_version()
        if current is None:
            raise StepError("rollback", f"nothing is deployed at {layout.prefix}")
        if args.failed and current != args.failed:
            raise StepError("rollback", f"the device runs {current}, not {args.failed}: nothing rolled back")
        info = json.loads((layout.release(current) / BUNDLE_JSON).read_text())
        previous = state.get("previous") if state.get("current") == current else None
        service = make_service(layout, info)
        outcome = _rollback_to(layout, previous, service, float(info["service"]["settle_s"]))
        if args.failed:
            shutil.rmtree(layout.release(current), ignore_errors=True)
        _history(state, "rolled-back", current, to=previous, reason=args.reason)
        state.update({"current": layout.current_version(), "previous": None})
        layout.save_state(state)
    return {"ok": True, "action": "rolled-back", "version": layout.current_version(), "previous": current,
            "message": outcome}  # fmt: skip


def cmd_probe(args: argparse.Namespace) -> dict[str, Any]:
    layout = Layout(Path(args.prefix), Path(args.state_dir), Path(args.config_dir))
    current = layout.current_version()
    sums = None
    service_state: ServiceState | None = None
    if current is not None:
        with contextlib.suppress(OSError):
            sums = (layout.release(current) / SUMS).read_text()
        with contextlib.suppress(OSError, ValueError, KeyError, subprocess.SubprocessError):
            info = json.loads((layout.release(current) / BUNDLE_JSON).read_text())
            service_state = make_service(layout, info).state()
    releases = []
    if layout.releases.is_dir():
        releases = sorted(p.name for p in layout.releases.iterdir() if p.is_dir() and not p.name.startswith("."))
    upload = Path(args.upload_dir).expanduser() if args.upload_dir else layout.prefix
    return {
        "ok": True,
        "machine": platform.machine(),
        "python": platform.python_version(),
        "glibc": platform.libc_ver()[1],
        "uid": os.geteuid(),
        "current": current,
        "previous": layout.load_state().get("previous"),
        "releases": releases,
        "free_bytes": {"prefix": free_bytes(layout.prefix), "upload": free_bytes(upload)},
        "service": None if service_state is None else {"active": service_state.active, "detail": service_state.detail},
        "current_sums": sums,
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="device %(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    ap = argparse.ArgumentParser(prog="facelite-deploy-remote", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("probe", "rollback"):
        p = sub.add_parser(name)
        p.add_argument("--prefix", required=True)
        p.add_argument("--state-dir", required=True)
        p.add_argument("--config-dir", required=True)
        if name == "probe":
            p.add_argument("--upload-dir", default=None)
        else:
            p.add_argument("--failed", default=None, help="only roll back if this version is the current one")
            p.add_argument("--reason", default="requested")
    p = sub.add_parser("install")
    p.add_argument("--bundle", required=True)
    p.add_argument("--password-stdin", action="store_true", help="read the MQTT password from stdin")
    args = ap.parse_args(argv)
    handlers = {"probe": cmd_probe, "install": cmd_install, "rollback": cmd_rollback}
    try:
        result = handlers[args.cmd](args)
    except StepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(json.dumps({"ok": False, "action": "failed", "check": exc.check, "message": exc.what, "fix": exc.fix}))
        return 1
    except OSError as exc:
        step = _no_space(exc, args.cmd)
        print(f"error: {step}", file=sys.stderr)
        print(json.dumps({"ok": False, "action": "failed", "check": step.check, "message": step.what}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
