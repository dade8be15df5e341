"""Deploy one device: bundle, probe, plan, upload, install (device side), MQTT health, rollback.

Nothing on the device changes before the plan is known and every host-side check passed (bundle complete,
device reachable, right architecture, room for the upload, broker reachable for the health watch). After the
device reports the new release running, the host itself must see it live on MQTT; otherwise it rolls the
device back and names the failing check.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelite.deploy.bundle import REPO, Bundle, BundleInputs, build_bundle, read_sums
from facelite.deploy.errors import ProfileError, RemoteError
from facelite.deploy.health import BrokerTarget, HealthWatch
from facelite.deploy.profile import DeviceProfile
from facelite.deploy.ssh import Ssh, SshTarget
from facelite.errors import FaceliteError

log = logging.getLogger(__name__)

REMOTE_SCRIPT = REPO / "deploy" / "remote.py"
UPLOAD_MARGIN = 16_000_000  # bytes left over after the upload: a full /home or /tmp breaks the login itself


@dataclass(frozen=True)
class Probe:
    machine: str
    python: str
    glibc: str
    current: str | None
    previous: str | None
    releases: tuple[str, ...]
    free_prefix: int
    free_upload: int
    service_active: bool | None
    service_detail: str
    current_sums: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Probe:
        service = data.get("service") or {}
        return cls(
            machine=str(data["machine"]),
            python=str(data["python"]),
            glibc=str(data.get("glibc") or ""),
            current=data.get("current"),
            previous=data.get("previous"),
            releases=tuple(data.get("releases", [])),
            free_prefix=int(data["free_bytes"]["prefix"]),
            free_upload=int(data["free_bytes"]["upload"]),
            service_active=service.get("active") if service else None,
            service_detail=str(service.get("detail", "not installed")) if service else "not installed",
            current_sums=data.get("current_sums"),
        )


@dataclass(frozen=True)
class Plan:
    device: str
    target: str
    current: str | None
    new: str
    changes: tuple[str, ...]
    steps: tuple[str, ...]
    noop: bool

    def render(self, max_changes: int = 25) -> str:
        lines = [f"{self.device} ({self.target})", f"  device runs: {self.current or 'nothing yet'}"]
        lines.append(f"  new bundle:  {self.new}")
        if self.noop:
            lines.append("  no change: the device already runs this exact content")
            return "\n".join(lines)
        shown = list(self.changes[:max_changes])
        if len(self.changes) > max_changes:
            shown.append(f"... and {len(self.changes) - max_changes} more")
        lines.append(f"  files ({len(self.changes)} changed): " + ("\n" + " " * 15).join(shown or ["(none)"]))
        lines += ["  steps:", *(f"    {i}. {s}" for i, s in enumerate(self.steps, 1))]
        return "\n".join(lines)


@dataclass(frozen=True)
class DeviceResult:
    device: str
    status: str  # planned | deployed | unchanged | restarted | failed | rolled-back
    version: str | None = None
    previous: str | None = None
    check: str | None = None  # the failing check, when status is failed
    message: str = ""
    seconds: float = 0.0
    plan: Plan | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def diff_files(old_sums: str | None, new: dict[str, str]) -> tuple[str, ...]:
    old = read_sums(old_sums) if old_sums else {}
    out = [f"+ {p}" for p in sorted(set(new) - set(old))]
    out += [f"~ {p}" for p in sorted(set(new) & set(old)) if new[p] != old[p]]
    out += [f"- {p}" for p in sorted(set(old) - set(new))]
    return tuple(sorted(out, key=lambda s: s[2:]))


def read_password(profile: DeviceProfile) -> str | None:
    if not profile.mqtt.password_file:
        return None
    path = Path(profile.mqtt.password_file).expanduser()
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ProfileError(
            f"MQTT password file cannot be read: {exc.strerror}", f"{path} (mqtt.password_file)"
        ) from None


def ssh_target(profile: DeviceProfile) -> SshTarget:
    s = profile.ssh
    return SshTarget(
        host=s.host,
        user=s.user,
        port=s.port,
        identity_file=Path(s.identity_file).expanduser() if s.identity_file else None,
        known_hosts=Path(s.known_hosts).expanduser() if s.known_hosts else None,
        config_file=s.config_file,
        connect_timeout_s=s.connect_timeout_s,
    )


def broker_target(profile: DeviceProfile, password: str | None) -> BrokerTarget:
    host, port = profile.health_broker
    return BrokerTarget(host, port, profile.mqtt.base_topic, profile.agent.device_id, profile.mqtt.username, password)


class Deployer:
    """One device. ``ssh_factory``/``watch_factory``/``emit`` are injected; the defaults are the real ones."""

    def __init__(
        self,
        profile: DeviceProfile,
        inputs: BundleInputs,
        *,
        emit: Callable[[str], None] = print,
        ssh_factory: Callable[[SshTarget], Ssh] = Ssh,
        watch_factory: Callable[[BrokerTarget], HealthWatch] = HealthWatch,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.inputs = inputs
        self.emit = emit
        self.ssh = ssh_factory(ssh_target(profile))
        self.watch_factory = watch_factory
        self.clock = clock

    # -- device calls --------------------------------------------------------------------------------------------
    @property
    def _sudo(self) -> list[str]:
        return ["sudo", "-n"] if self.profile.ssh.sudo else []

    def _paths_args(self) -> list[str]:
        p = self.profile.paths
        return ["--prefix", p.prefix, "--state-dir", p.state_dir, "--config-dir", p.config_dir]

    def _remote(self, argv: list[str], *, input: bytes | None, timeout: float, doing: str) -> dict[str, Any]:
        command = [*self._sudo, self.profile.paths.python, *argv]
        result = self.ssh.run(command, input=input, timeout=timeout, what=f"running the device {doing}")
        for line in reversed(result.stdout.splitlines()):
            if line.startswith("{"):
                try:
                    data = json.loads(line)
                except ValueError:
                    break
                for ln in result.stderr.splitlines():
                    log.info("%s: %s", self.profile.name, ln)
                if not data.get("ok"):
                    raise RemoteError(
                        str(data.get("message")),
                        f"{self.profile.name} {self.ssh.target.label}",
                        data.get("fix") or None,
                        check=str(data.get("check") or "remote"),
                    )
                return data
        err = result.stderr.strip().splitlines()
        last = err[-1] if err else f"exit {result.returncode}"
        if result.returncode == 127 or ("No such file or directory" in last and self.profile.paths.python in last):
            raise RemoteError(
                f"Python not found on the device at {self.profile.paths.python}",
                self.ssh.target.label,
                "install python3 or set paths.python",
                check="platform",
            )
        if "sudo" in last and ("password" in last or "not allowed" in last):
            raise RemoteError(f"sudo refused: {last}", self.ssh.target.label, "allow `sudo -n` for the deploy user")
        raise RemoteError(f"{doing} failed on the device: {last}", self.ssh.target.label, check=doing)

    def probe(self) -> Probe:
        argv = ["-", "probe", *self._paths_args(), "--upload-dir", self.profile.paths.upload_dir]
        return Probe.from_json(self._remote(argv, input=REMOTE_SCRIPT.read_bytes(), timeout=120, doing="probe"))

    # -- planning ------------------------------------------------------------------------------------------------
    def plan(self, bundle: Bundle, probe: Probe) -> Plan:
        prof = self.profile
        noop = probe.current == bundle.version and bool(probe.service_active)
        image = Path(prof.health.self_test_image).name
        host, port = prof.health_broker
        wheels = sum(1 for f in bundle.files if f.startswith("wheels/"))
        current = probe.current or "(none)"
        steps = [
            f"upload {bundle.size_bytes / 1e6:.1f} MB to {prof.paths.upload_dir}/ "
            f"({probe.free_upload / 1e9:.1f} GB free there)",
            f"verify {len(bundle.files)} files against SHA256SUMS; unpack to "
            f"{prof.paths.prefix}/releases/{bundle.version}",
            f"venv {bundle.wheels_key}: reused if the device has it, else pip install --no-index from {wheels} wheels",
            f"self-test the new release: {image} must show >= {prof.health.expect_faces} face(s)",
            f"switch {prof.paths.prefix}/current: {current} -> {bundle.version}; restart ({prof.service.manager})",
            f"health: service up for {prof.service.settle_s:.0f} s, then live 'online' and a fresh state on "
            f"{host}:{port} within {prof.health.timeout_s:.0f} s; else roll back to {probe.current or '(none: stop)'}",
            f"keep {prof.service.keep_releases} releases",
        ]
        if probe.current == bundle.version and not probe.service_active:
            steps = [f"restart the service ({prof.service.manager}: {probe.service_detail})", steps[-2]]
        return Plan(
            device=prof.name,
            target=f"{self.ssh.target.label}, {prof.platform.arch}, {prof.service.manager}",
            current=probe.current,
            new=bundle.version,
            changes=diff_files(probe.current_sums, bundle.files),
            steps=tuple(steps),
            noop=noop,
        )

    # -- the whole thing -----------------------------------------------------------------------------------------
    def run(self, *, dry_run: bool = False) -> DeviceResult:
        started = self.clock()
        name = self.profile.name
        plan: Plan | None = None
        version: str | None = None
        current: str | None = None
        try:
            password = read_password(self.profile)
            # The device first: an unreachable or different device fails in a second, before any bundle work.
            probe = self.probe()
            current = probe.current
            if probe.machine != self.profile.platform.arch:
                raise RemoteError(
                    f"wrong architecture: profile {name} is for {self.profile.platform.arch}, "
                    f"the device is {probe.machine}",
                    self.ssh.target.label,
                    "use the profile that matches this device",
                    check="platform",
                )
            bundle = build_bundle(self.profile, self.inputs)
            version = bundle.version
            plan = self.plan(bundle, probe)
            self.emit(plan.render())
            if dry_run:
                return self._result("planned", started, bundle.version, probe.current, message="dry run", plan=plan)
            if plan.noop:
                return self._result(
                    "unchanged", started, bundle.version, probe.current, message="already running", plan=plan
                )
            return self._apply(bundle, probe, password, started, plan)
        except FaceliteError as exc:
            check = getattr(exc, "check", None) or type(exc).__name__.removesuffix("Error").lower()
            return self._result("failed", started, version, current, check=check, message=exc.one_line(), plan=plan)

    def _apply(self, bundle: Bundle, probe: Probe, password: str | None, started: float, plan: Plan) -> DeviceResult:
        prof = self.profile
        # Room for the upload itself; whether the release fits next to the others is the device's check.
        if probe.free_upload < bundle.size_bytes + UPLOAD_MARGIN:
            raise RemoteError(
                f"not enough free disk space for the upload: {probe.free_upload / 1e6:.0f} MB free in "
                f"{prof.paths.upload_dir}, the bundle is {bundle.size_bytes / 1e6:.0f} MB",
                self.ssh.target.label,
                "free some space on the device or set paths.upload_dir",
                check="disk",
            )
        with self.watch_factory(broker_target(prof, password)) as watch:
            upload = prof.paths.upload_dir
            t0 = self.clock()
            self.ssh.copy([bundle.archive, REMOTE_SCRIPT], upload)
            log.info("%s: uploaded %.1f MB in %.1f s", prof.name, bundle.size_bytes / 1e6, self.clock() - t0)
            mark = watch.mark()
            argv = [f"{upload}/remote.py", "install", "--bundle", f"{upload}/{bundle.archive.name}"]
            try:
                done = self._remote(
                    argv + (["--password-stdin"] if password is not None else []),
                    input=(password + "\n").encode() if password is not None else None,
                    timeout=prof.service.self_test_timeout_s + 1800,
                    doing="install",
                )
            finally:
                self.ssh.run(["rm", "-f", "--", f"{upload}/{bundle.archive.name}", f"{upload}/remote.py"], timeout=60)
            if done.get("action") == "unchanged":
                return self._result(
                    "unchanged", started, bundle.version, probe.current, message=done["message"], plan=plan
                )
            try:
                report = watch.wait_healthy(mark, prof.health.timeout_s)
            except FaceliteError as exc:
                outcome = self._rollback(watch, failed=bundle.version, reason=exc.one_line())
                return self._result(
                    "failed", started, bundle.version, probe.current, check="health",
                    message=f"health: {exc.one_line()}; {outcome}", plan=plan,
                )  # fmt: skip
        status = "restarted" if done.get("action") == "restarted" else "deployed"
        msg = f"live 'online' + fresh state ({_state_summary(report.state)})"
        if done.get("self_test"):
            msg = f"self-test: {_self_test_summary(str(done['self_test']))}; {msg}"
        return self._result(status, started, bundle.version, probe.current, message=msg, plan=plan)

    def _rollback(self, watch: HealthWatch, *, failed: str | None, reason: str) -> str:
        mark = watch.mark()
        argv = ["-", "rollback", *self._paths_args(), "--reason", reason]
        if failed:
            argv += ["--failed", failed]
        try:
            done = self._remote(argv, input=REMOTE_SCRIPT.read_bytes(), timeout=600, doing="rollback")
        except FaceliteError as exc:
            return f"ROLLBACK FAILED: {exc.one_line()}"
        outcome = str(done.get("message"))
        if done.get("version"):
            try:
                watch.wait_healthy(mark, self.profile.health.timeout_s)
                outcome += " (healthy again)"
            except FaceliteError as exc:
                outcome += f" (but it is not healthy either: {exc.one_line()})"
        return outcome

    def rollback(self) -> DeviceResult:
        """Manual rollback to the previous release (``--rollback``)."""
        started = self.clock()
        try:
            password = read_password(self.profile)
            probe = self.probe()
            with self.watch_factory(broker_target(self.profile, password)) as watch:
                outcome = self._rollback(watch, failed=None, reason="requested by --rollback")
            status = "failed" if "FAILED" in outcome or "not healthy" in outcome else "rolled-back"
            return self._result(status, started, None, probe.current, check="rollback" if status == "failed" else None,
                                message=outcome)  # fmt: skip
        except FaceliteError as exc:
            check = getattr(exc, "check", None) or "rollback"
            return self._result("failed", started, check=check, message=exc.one_line())

    def _result(
        self,
        status: str,
        started: float,
        version: str | None = None,
        previous: str | None = None,
        *,
        check: str | None = None,
        message: str = "",
        plan: Plan | None = None,
    ) -> DeviceResult:
        return DeviceResult(self.profile.name, status, version, previous, check, message, self.clock() - started, plan)


def _self_test_summary(text: str) -> str:
    try:
        data = json.loads(text)
        people = f", {data['people_enrolled']} people enrolled" if "people_enrolled" in data else ""
        return f"{data['faces']} face(s) with {data['detector']} + {data['embedder']}{people}"
    except (ValueError, KeyError, TypeError):
        return text[:120]


def _state_summary(payload: bytes) -> str:
    try:
        state = json.loads(payload)
        return (
            f"uptime {float(state['uptime_s']):.0f} s, camera {state.get('camera', '?')}, fps {state.get('fps', '?')}"
        )
    except (ValueError, KeyError, TypeError):
        return f"{len(payload)} bytes"


def result_table(results: list[DeviceResult]) -> str:
    head = f"{'device':<16}{'status':<12}{'version':<22}{'previous':<22}{'time':>7}  detail"
    lines = [head, "-" * len(head)]
    for r in results:
        detail = r.message if r.ok else f"[{r.check}] {r.message}"
        lines.append(
            f"{r.device:<16}{r.status:<12}{r.version or '-':<22}{r.previous or '-':<22}{r.seconds:>6.0f}s  {detail}"
        )
    return "\n".join(lines)
