"""`python -m facelite.deploy` end to end against this machine as the device: real sshd, real mosquitto, real models.

The "device" is a throwaway root (opt/facelite, var/lib/facelite, etc/facelite) reached over a real OpenSSH
server on a loopback port with throwaway keys; the agent runs under the plain supervisor and talks to a real
mosquitto that requires a password (delivered as a credential, never in the bundle). Dependency wheels are
downloaded for x86_64 / Python 3.11 once and cached (~/.cache/facelite/wheels), so repeat runs are offline.

The tests share one device and run in file order: first deploy, no-op, dry run, broken release, unhealthy
release (rolled back), failures that must leave the running release alone, groups, manual rollback.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import tomllib
from broker import MosquittoBroker, Subscriber, free_port
from helpers import ProcessRef
from sshd import Sshd

from facelite.deploy.bundle import (
    BUNDLE_JSON,
    SUMS,
    BundleInputs,
    build_agent_wheel,
    build_bundle,
    default_cache,
    read_sums,
)
from facelite.deploy.errors import ProfileError
from facelite.deploy.profile import DEVICES_DIR, load_profile, render_toml, resolve_targets
from facelite.model.manifest import Manifest, sha256_file

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
DEVICE_PY = "/usr/bin/python3.11"  # Debian's, like Raspberry Pi OS bookworm's: the device side never uses the venv
MQTT_USER = "facelite"


@dataclass(frozen=True)
class Device:
    name: str
    root: Path

    @property
    def prefix(self) -> Path:
        return self.root / "opt" / "facelite"

    @property
    def state_dir(self) -> Path:
        return self.root / "var" / "lib" / "facelite"

    @property
    def config_dir(self) -> Path:
        return self.root / "etc" / "facelite"

    def current(self) -> str | None:
        try:
            return Path(os.readlink(self.prefix / "current")).name
        except OSError:
            return None

    def releases(self) -> list[str]:
        folder = self.prefix / "releases"
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []

    def status(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "supervisor" / "status.json").read_text())

    def stop(self) -> None:
        """Stop the device's supervisor and agent, by SIGKILL if `stop` does not end them (or cannot run)."""
        script = self.prefix / "bin" / "facelite-supervisor.py"
        # Learn the pids first: a supervisor that stops cleanly removes its pid file.
        pids: list[ProcessRef] = []
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            status = self.status()
            pids = [ProcessRef.of(status[k]) for k in ("supervisor_pid", "child_pid") if status.get(k)]
        if script.is_file():
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run([DEVICE_PY, str(script), "--run-dir", str(self.state_dir / "supervisor"), "stop"],
                               capture_output=True, timeout=60)  # fmt: skip
        for ref in pids:
            ref.kill()


@dataclass
class Bench:
    folder: Path
    sshd: Sshd
    broker: MosquittoBroker
    password: str
    password_file: Path
    devices_dir: Path
    models_dir: Path
    data_dir: Path
    out: Path
    devices: dict[str, Device]

    def profile(self, name: str, **sections: dict[str, Any]) -> Device:
        """Write deploy/devices/local-test.toml with this bench's ports, keys and a fresh device root."""
        base = tomllib.loads((DEVICES_DIR / "local-test.toml").read_text())
        device = Device(name, self.folder / "devices" / name)
        base["ssh"].update(port=self.sshd.port, identity_file=str(self.sshd.user_key),
                           known_hosts=str(self.sshd.known_hosts), user=self.sshd.user)  # fmt: skip
        base["paths"].update(prefix=str(device.prefix), state_dir=str(device.state_dir),
                             config_dir=str(device.config_dir), upload_dir=str(device.root / "upload"),
                             python=DEVICE_PY)  # fmt: skip
        base["agent"]["device_id"] = name
        base["mqtt"].update(port=self.broker.port, username=MQTT_USER, password_file=str(self.password_file))
        for section, values in sections.items():
            base.setdefault(section, {}).update(values)
        (self.devices_dir / f"{name}.toml").write_text(render_toml(base))
        self.devices[name] = device
        return device

    def deploy(self, device: str, *extra: str, models_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
        argv = [PY, "-m", "facelite.deploy", "--device", device, "--devices-dir", str(self.devices_dir),
                "--models-dir", str(models_dir or self.models_dir), "--data-dir", str(self.data_dir),
                "--out", str(self.out), *extra]  # fmt: skip
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)

    def subscriber(self, device: str) -> Subscriber:
        return Subscriber(self.broker, [f"facelite/{device}/#"], username=MQTT_USER, password=self.password)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, data_dir: Path) -> Iterator[Bench]:
    folder = tmp_path_factory.mktemp("deploy")
    password = "pw-" + secrets.token_hex(12)
    password_file = folder / "mqtt_password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    devices_dir = folder / "profiles"
    devices_dir.mkdir()
    with Sshd(folder / "sshd") as sshd, MosquittoBroker(folder / "broker", users={MQTT_USER: password}) as broker:
        b = Bench(folder, sshd, broker, password, password_file, devices_dir, models_dir, data_dir,
                  folder / "out", {})  # fmt: skip
        try:
            yield b
        finally:
            for device in list(b.devices.values()):  # each one, even if an earlier stop raised
                try:
                    device.stop()
                except Exception as exc:  # teardown goes on to the next device
                    print(f"teardown: {device.name}: {exc!r}", file=sys.stderr)


def _enrolled_gallery(bench: Bench, faces_dir: Path, path: Path) -> Path:
    """A real gallery (one person, real photos) enrolled with the models the bundle will ship."""
    index = json.loads((bench.models_dir / "index.json").read_text())["models"]
    profile = load_profile("local-test")
    det, emb = profile.models.detector, profile.models.embedder
    person = sorted(p for p in (faces_dir / "people").iterdir() if p.is_dir())[0]
    argv = [PY, "-c", "import sys; from facelite.cli import main; sys.exit(main(sys.argv[1:]))", "enroll",
            "--detector", str(bench.models_dir / det / index[det]["recommended_variant"]),
            "--embedder", str(bench.models_dir / emb / index[emb]["recommended_variant"]),
            "--gallery", str(path), "alice", *map(str, sorted(person.glob("*.jpg"))[:3])]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and path.is_file(), proc.stdout + proc.stderr
    return path


@pytest.fixture(scope="module")
def first(bench: Bench, faces_dir: Path) -> tuple[Device, str]:
    """The first deploy onto an empty device (with a gallery to seed it); later tests start from its release."""
    gallery = _enrolled_gallery(bench, faces_dir, bench.folder / "gallery.sqlite")
    device = bench.profile("local-test", agent={"gallery": str(gallery)})
    with bench.subscriber("local-test") as sub:
        proc = bench.deploy("local-test")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "1 people enrolled" in _row(proc, "local-test")
        sub.wait_for(1, timeout=10, topic="facelite/local-test/state")
    version = device.current()
    assert version is not None
    return device, version


def _error_lines(proc: subprocess.CompletedProcess[str], device: str) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return [ln for ln in proc.stderr.splitlines() if ln.startswith(f"error: {device}:")]


def _row(proc: subprocess.CompletedProcess[str], device: str) -> str:
    lines = proc.stdout.splitlines()
    table = lines[next(i for i, ln in enumerate(lines) if ln.startswith("device ")) :]
    rows = [ln for ln in table if ln.startswith(device + " ")]
    assert len(rows) == 1, proc.stdout
    return rows[0]


def _live_state(sub: Subscriber, device: str, timeout: float = 15) -> None:
    """A state published from now on (not the retained copy): the running agent is alive and publishing."""
    start = len(sub.messages)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(m.topic == f"facelite/{device}/state" and not m.retain for m in sub.messages[start:]):
            return
        time.sleep(0.1)
    raise AssertionError(f"no live state from {device} within {timeout} s")


# -- profiles ----------------------------------------------------------------------------------------------------
def test_shipped_profiles_parse_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    pi = load_profile("pi")
    assert (pi.platform.arch, pi.platform.python, pi.platform.runtime) == ("aarch64", "3.11", "ai-edge-litert")
    assert "manylinux_2_27_aarch64" in pi.platform.pip_platforms
    assert "manylinux_2_34_aarch64" in pi.platform.pip_platforms
    assert load_profile("local-test").service.manager == "supervisor"
    assert resolve_targets("home") == ["pi"]

    (tmp_path / "typo.toml").write_text((DEVICES_DIR / "pi.toml").read_text().replace("[ssh]\n", "[ssh]\nhots = 1\n"))
    with pytest.raises(ProfileError, match=r"unknown key ssh\.hots"):
        load_profile("typo", tmp_path)
    with pytest.raises(ProfileError, match=r"ai-edge-litert has no armv7l wheel"):
        load_profile("pi", overrides=["platform.arch=armv7l"])
    with pytest.raises(ProfileError, match=r"unknown device 'nosuch'"):
        resolve_targets("nosuch")
    assert load_profile("pi", overrides=["ssh.port=2201", "ssh.host=10.0.0.7"]).ssh_label == "pi@10.0.0.7:2201"


# -- bundle ------------------------------------------------------------------------------------------------------
def test_bundle_hashes_every_file_and_its_version_is_its_content(
    bench: Bench, tmp_path: Path, models_dir: Path, data_dir: Path
) -> None:
    bench.profile("bundle-only")
    profile = load_profile("bundle-only", bench.devices_dir)
    wheel = build_agent_wheel(REPO, tmp_path / "w")
    inputs = BundleInputs(REPO, models_dir, data_dir, tmp_path / "out", default_cache(), wheel)
    bundle = build_bundle(profile, inputs)

    sums = read_sums((bundle.directory / SUMS).read_text())
    on_disk = {p.relative_to(bundle.directory).as_posix() for p in bundle.directory.rglob("*") if p.is_file()}
    assert set(sums) == on_disk - {SUMS}
    for rel, digest in sums.items():
        assert sha256_file(bundle.directory / rel) == digest, rel
    info = json.loads((bundle.directory / BUNDLE_JSON).read_text())
    assert info["platform"] == {"arch": "x86_64", "glibc": "2.36", "python": "3.11", "runtime": "ai-edge-litert",
                                "extra": "device"}  # fmt: skip
    wheels = [r for r in sums if r.startswith("wheels/")]
    assert any(r.startswith("wheels/ai_edge_litert-2.3.0-cp311-cp311-manylinux") and "x86_64" in r for r in wheels)
    assert any(r.startswith("wheels/facelite-") for r in wheels) and any(r.startswith("wheels/pip-") for r in wheels)
    for model in bundle.models:
        manifest = Manifest.load(bundle.directory / model.bundle_dir)
        manifest.verify_files(bundle.directory / model.bundle_dir)
    # The MQTT password is delivered separately: no bundle file, nor the archive, holds it.
    assert bench.password.encode() not in bundle.archive.read_bytes()
    config = (bundle.directory / "config" / "agent.toml.in").read_text()
    assert 'password_file = "$CREDENTIALS_DIRECTORY/mqtt_password"' in config

    again = build_bundle(profile, inputs)
    assert again.version == bundle.version and again.archive == bundle.archive
    changed = build_bundle(load_profile("bundle-only", bench.devices_dir, ["agent.state_interval_s=7.0"]), inputs)
    assert changed.version != bundle.version


def test_the_pi_bundle_ships_the_agent_and_its_license_and_no_converter_code(
    tmp_path: Path, models_dir: Path, data_dir: Path
) -> None:
    """The device runs the agent only: no converter or benchmark code in the wheel, and the MIT LICENSE with it."""
    wheel = build_agent_wheel(REPO, tmp_path / "w")
    inputs = BundleInputs(REPO, models_dir, data_dir, tmp_path / "out", default_cache(), wheel)
    bundle = build_bundle(load_profile("pi"), inputs)
    shipped = [r for r in bundle.files if r.startswith("wheels/facelite-")]
    assert len(shipped) == 1, shipped
    with zipfile.ZipFile(bundle.directory / shipped[0]) as zf:
        names = zf.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        license_text = zf.read(f"{dist_info}/LICENSE").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    # One namespace: no top-level agent, converter or deploy on the device either.
    assert {n.split("/")[0] for n in names} == {"facelite", dist_info}, sorted({n.split("/")[0] for n in names})
    assert not [n for n in names if "converter" in n or "/bench/" in n or n.startswith("facelite/deploy/")]
    assert "facelite/cli.py" in names and not [n for n in names if n.startswith("facelite/tools/")]  # host tools stay
    assert license_text == (REPO / "LICENSE").read_text() and license_text.startswith("MIT License")
    assert "Copyright (c) 2026 the facelite authors" in license_text
    assert "facelite-agent = facelite.cli:agent_main" in entry_points and "converter" not in entry_points


# -- deploys -----------------------------------------------------------------------------------------------------
def test_first_deploy_installs_offline_self_tests_and_serves(bench: Bench, first: tuple[Device, str]) -> None:
    device, version = first
    assert device.releases() == [version]
    release = device.prefix / "releases" / version
    assert os.readlink(device.config_dir / "agent.toml") == str(device.prefix / "current" / "config" / "agent.toml")
    status = device.status()
    assert status["state"] == "running" and status["restarts"] == 0
    assert Path(f"/proc/{status['child_pid']}").is_dir()
    cmdline = Path(f"/proc/{status['child_pid']}/cmdline").read_bytes().split(b"\0")
    assert any(str(device.prefix / "current" / "venv" / "bin" / "facelite-agent").encode() in a for a in cmdline)
    assert (release / "venv").is_symlink() and (release / "venv" / ".facelite-complete").is_file()
    gallery = device.state_dir / "gallery.sqlite"
    assert gallery.stat().st_mode & 0o777 == 0o600 and (release / "gallery" / "gallery.sqlite").is_file()
    # The credential: 0600, only readable by its owner, and the agent used it (the broker requires it).
    cred = device.config_dir / "credentials" / "mqtt_password"
    assert cred.stat().st_mode & 0o777 == 0o600
    assert cred.read_text() == bench.password
    assert not any(bench.password.encode() in p.read_bytes() for p in release.rglob("*") if p.is_file() and
                   not p.is_symlink() and "venv" not in p.parts)  # fmt: skip
    with bench.subscriber("local-test") as sub:
        online = sub.wait_for(1, topic="facelite/local-test/availability")
        assert online[-1].payload == b"online" and online[-1].retain
        state = json.loads(sub.wait_for(1, topic="facelite/local-test/state")[-1].payload)
        assert set(state["models"]) == {"detector", "embedder"}


def test_second_deploy_of_the_same_content_is_a_noop(bench: Bench, first: tuple[Device, str]) -> None:
    device, version = first
    child = device.status()["child_pid"]
    proc = bench.deploy("local-test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no change: the device already runs this exact content" in proc.stdout
    assert "unchanged" in _row(proc, "local-test")
    assert device.current() == version and device.status()["child_pid"] == child
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("next: mosquitto_sub ") and "-t 'facelite/#' -v" in last


def test_dry_run_prints_the_change_and_touches_nothing(bench: Bench, first: tuple[Device, str]) -> None:
    device, version = first
    child = device.status()["child_pid"]
    proc = bench.deploy("local-test", "--dry-run", "--set", "agent.state_interval_s=3.0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"device runs: {version}" in proc.stdout
    assert "files (1 changed): ~ config/agent.toml.in" in proc.stdout
    assert "planned" in _row(proc, "local-test")
    assert device.current() == version and device.releases() == [version]
    assert device.status()["child_pid"] == child


def _profile_models(models_dir: Path, target: Path) -> tuple[Path, Path]:
    """A copy of index.json and the local-test profile's models (recommended variants); returns the embedder dir."""
    index = json.loads((models_dir / "index.json").read_text())
    target.mkdir()
    (target / "index.json").write_text(json.dumps(index))
    profile = load_profile("local-test")
    for name in (profile.models.detector, profile.models.embedder):
        variant = index["models"][name]["recommended_variant"]
        shutil.copytree(models_dir / name / variant, target / name / variant)
    embedder = profile.models.embedder
    return target, target / embedder / index["models"][embedder]["recommended_variant"]


def _broken_models(models_dir: Path, target: Path) -> Path:
    """The profile's models where the embedder is garbage with a matching manifest (a bad conversion)."""
    target, folder = _profile_models(models_dir, target)
    manifest = Manifest.load(folder)
    graphs = {}
    for key, graph in manifest.graphs.items():
        path = folder / graph.file
        data = bytearray(path.read_bytes())
        data[len(data) // 3 : len(data) // 3 + 4096] = os.urandom(4096)
        data[:8] = b"NOTFLITE"
        path.write_bytes(bytes(data))
        graphs[key] = replace(graph, sha256=sha256_file(path), size_bytes=path.stat().st_size)
    replace(manifest, graphs=graphs).save(folder)
    return target


def test_broken_release_fails_its_self_test_and_the_old_one_keeps_serving(
    bench: Bench, first: tuple[Device, str], tmp_path: Path
) -> None:
    device, version = first
    child = device.status()["child_pid"]
    broken = _broken_models(bench.models_dir, tmp_path / "models")
    with bench.subscriber("local-test") as sub:
        proc = bench.deploy("local-test", models_dir=broken)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        errors = _error_lines(proc, "local-test")
        assert len(errors) == 1 and "[self-test]" in errors[0], proc.stderr
        assert device.current() == version and device.releases() == [version]
        assert device.status()["child_pid"] == child
        _live_state(sub, "local-test")


def test_unhealthy_release_is_rolled_back_and_the_failing_check_named(bench: Bench, first: tuple[Device, str]) -> None:
    device, version = first
    # The new config points the agent at a broker port nobody listens on: it passes its self-test (no MQTT
    # there), stays up (it keeps retrying), but never says 'online' -> the host's health check must catch it.
    proc = bench.deploy("local-test", "--set", f"mqtt.port={free_port()}",
                        "--set", f"health.mqtt_port={bench.broker.port}", "--set", "health.timeout_s=10.0")  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = _error_lines(proc, "local-test")
    assert len(errors) == 1, proc.stderr
    assert "[health]" in errors[0] and "no live 'online'" in errors[0]
    assert f"rolled back to {version} (healthy again)" in errors[0]
    assert device.current() == version and device.releases() == [version]
    with bench.subscriber("local-test") as sub:
        assert sub.wait_for(1, topic="facelite/local-test/availability")[-1].payload == b"online"
        _live_state(sub, "local-test")


def test_a_tampered_bundle_is_refused_by_the_device(bench: Bench, first: tuple[Device, str], tmp_path: Path) -> None:
    device, version = first
    archive = max((bench.out / "local-test").glob("facelite-*.tar"), key=lambda p: p.stat().st_mtime)
    tampered = tmp_path / archive.name
    with tarfile.open(archive) as src, tarfile.open(tampered, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name.endswith("selftest/couple.jpg") and data is not None:
                data = data[:-10] + b"0123456789"
            dst.addfile(member, None if data is None else io.BytesIO(data))
    argv = [DEVICE_PY, str(REPO / "deploy" / "remote.py"), "install", "--bundle", str(tampered), "--password-stdin"]
    proc = subprocess.run(argv, input=bench.password, capture_output=True, text=True, timeout=120)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 1 and result["check"] == "verify"
    assert result["message"] == "sha256 mismatch: selftest/couple.jpg"
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == [
        "error: verify: sha256 mismatch: selftest/couple.jpg: the bundle was damaged in transfer; deploy again"
    ]
    assert device.current() == version and device.releases() == [version]


@pytest.mark.parametrize(
    ("args", "check", "expected"),
    [
        (["--set", "platform.arch=aarch64"], "platform",
         "wrong architecture: profile local-test is for aarch64, the device is x86_64"),
        (["--set", "service.min_free_mb=100000000"], "disk", "not enough free disk space at "),
        (["--set", "models.embedder=no-such-net"], "bundle",
         "model 'no-such-net' is missing from the converted models"),
        (["--set", "ssh.port=PORT"], "ssh",
         "connection refused (no ssh server on that port?) while running the device probe"),
        (["--set", "ssh.identity_file=OTHERKEY"], "ssh", "authentication refused while running the device probe"),
        (["--set", "ssh.known_hosts=EMPTYFILE"], "ssh",
         "host key unknown or not trusted while running the device probe"),
        (["--set", "paths.python=/usr/bin/python3.99"], "platform",
         "Python not found on the device at /usr/bin/python3.99"),
    ],
    ids=["wrong-arch", "full-disk", "missing-model", "unreachable", "auth-refused", "unknown-host-key", "no-python"],
)  # fmt: skip
def test_failures_are_one_line_and_keep_the_running_release(
    bench: Bench, first: tuple[Device, str], args: list[str], check: str, expected: str, tmp_path: Path
) -> None:
    device, version = first
    child = device.status()["child_pid"]
    other_key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    (tmp_path / "empty").write_text("")
    places = {"PORT": str(free_port()), "OTHERKEY": str(other_key), "EMPTYFILE": str(tmp_path / "empty")}
    for placeholder, value in places.items():
        args = [a.replace(f"={placeholder}", f"={value}") for a in args]
    proc = bench.deploy("local-test", *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = _error_lines(proc, "local-test")
    assert len(errors) == 1, proc.stderr
    assert f"[{check}] " in errors[0] and expected in errors[0], errors[0]
    assert device.current() == version and device.releases() == [version]
    assert device.status()["child_pid"] == child


def test_a_model_that_does_not_match_its_manifest_never_leaves_the_host(
    bench: Bench, first: tuple[Device, str], tmp_path: Path
) -> None:
    device, version = first
    models, folder = _profile_models(bench.models_dir, tmp_path / "models")
    embedder, variant = folder.parent.name, folder.name
    graph = next(folder.glob("*.tflite"))
    data = bytearray(graph.read_bytes())
    data[100] ^= 0xFF
    graph.write_bytes(bytes(data))
    proc = bench.deploy("local-test", models_dir=models)
    errors = _error_lines(proc, "local-test")
    assert proc.returncode == 1 and len(errors) == 1
    assert f"[bundle] model {embedder}/{variant} is not deployable: model sha256" in errors[0]
    assert device.current() == version


def test_unknown_device_is_one_line(bench: Bench) -> None:
    proc = bench.deploy("nosuch")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    known = ", ".join(sorted(p.stem for p in bench.devices_dir.glob("*.toml"))) or "none"
    assert proc.stderr.strip().splitlines() == [
        f"error: unknown device 'nosuch' ({bench.devices_dir}): choose from {known}"
    ]


def test_group_deploys_in_parallel_and_reports_every_device(bench: Bench, first: tuple[Device, str]) -> None:
    device, version = first
    bench.profile("far-away", ssh={"port": free_port()})
    (bench.devices_dir / "groups.toml").write_text('[groups]\nbench = ["local-test", "far-away"]\n')
    try:
        proc = bench.deploy("bench")
    finally:
        (bench.devices_dir / "groups.toml").unlink()
        (bench.devices_dir / "far-away.toml").unlink()
        del bench.devices["far-away"]
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "unchanged" in _row(proc, "local-test")
    assert "failed" in _row(proc, "far-away") and "[ssh]" in _row(proc, "far-away")
    assert len(_error_lines(proc, "far-away")) == 1 and not _error_lines(proc, "local-test")
    assert device.current() == version


def test_new_release_then_manual_rollback(bench: Bench, first: tuple[Device, str]) -> None:
    device, version = first
    proc = bench.deploy("local-test", "--set", "agent.state_interval_s=3.0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    new = device.current()
    assert new != version and device.releases() == sorted([version, new])
    assert "deployed" in _row(proc, "local-test")
    back = bench.deploy("local-test", "--rollback")
    assert back.returncode == 0, back.stdout + back.stderr
    assert f"rolled back to {version} (healthy again)" in _row(back, "local-test")
    assert device.current() == version
    # Keep the last N (2 here): the next release replaces the oldest one that is neither current nor previous.
    third = bench.deploy("local-test", "--set", "agent.state_interval_s=4.0")
    assert third.returncode == 0, third.stdout + third.stderr
    newest = device.current()
    assert newest not in (version, new) and device.releases() == sorted([version, newest])
