"""Build the self-contained, versioned bundle a device installs without network access.

Layout of ``facelite-<agent version>-<content hash>/``::

    BUNDLE.json            what this bundle is for: platform, device paths, service, models, self-test
    SHA256SUMS             sha256 of every other file (``sha256sum -c`` format); the version is derived from it
    remote.py              the device-side installer (stdlib only)
    service/               facelite-agent.service (systemd) and supervisor.py (devices without systemd)
    wheels/                facelite wheel built from the repo + every dependency for the device's platform + pip
    models/<name>/<variant>/   manifest.json + .tflite files, checked against the manifest on the host
    config/agent.toml.in   the rendered agent config; @RELEASE@ becomes the release folder on the device
    selftest/<photo>       the photo the release must find faces in before it is switched on
    gallery/gallery.sqlite optional

The version is a hash of the content (SHA256SUMS), not of the time: building the same content twice gives the
same version, so deploying it again is recognised as a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from facelite.deploy.errors import BundleError
from facelite.deploy.profile import DeviceProfile, render_toml
from facelite.deploy.variants import pick_variant
from facelite.errors import FaceliteError
from facelite.model.manifest import Manifest, sha256_file

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
BUNDLE_FORMAT = 1
BUNDLE_JSON = "BUNDLE.json"
SUMS = "SHA256SUMS"
RELEASE_PLACEHOLDER = "@RELEASE@"
CREDENTIAL_NAME = "mqtt_password"
# Fixed wheel timestamps: the same sources give a byte-identical wheel, hence the same bundle version.
SOURCE_DATE_EPOCH = "315532800"
# The device runs the agent and nothing else from the wheel (remote.py and the supervisor travel beside it, stdlib
# only): the converter, deploy and the host tools (evaluation, the demo, a local broker, the benchmark) stay on the
# host. The staged copy holds agent/ without tools/, and setup.py maps only the folders it finds.
DEVICE_FOLDERS = ("agent",)
HOST_ONLY_IN_AGENT = ("tools",)
# What a device wheel does not hold: a console script pointing into one of these is dropped.
HOST_MODULES = ("facelite.converter", "facelite.deploy", "facelite.tools")
_WHEEL_SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", *DEVICE_FOLDERS)
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", "build")


def _ignore(directory: str, names: list[str]) -> set[str]:
    skipped = set(_IGNORE(directory, names))
    if Path(directory).name == "agent":
        skipped |= {n for n in names if n in HOST_ONLY_IN_AGENT}
    return skipped


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class ModelChoice:
    role: str  # detector | embedder | landmarks (an MTCNN whose O-Net places the landmarks)
    name: str
    variant: str
    source_dir: Path

    @property
    def label(self) -> str:
        return f"{self.name}/{self.variant}"

    @property
    def bundle_dir(self) -> str:
        return f"models/{self.name}/{self.variant}"


@dataclass(frozen=True)
class BundleInputs:
    """Everything a bundle is made of besides the profile; shared by the devices of one run."""

    repo: Path
    models_dir: Path
    data_dir: Path
    out_dir: Path
    wheel_cache: Path
    agent_wheel: Path


@dataclass(frozen=True)
class Bundle:
    device: str
    version: str
    directory: Path
    archive: Path
    files: dict[str, str]  # relative path -> sha256
    models: tuple[ModelChoice, ...]
    size_bytes: int
    wheels_key: str


# -- helpers -------------------------------------------------------------------------------------------------------
def default_cache() -> Path:
    return Path(os.environ.get("FACELITE_CACHE", "~/.cache/facelite")).expanduser() / "wheels"


def agent_version(repo: Path) -> str:
    text = (repo / "agent" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.M)
    if not match:
        raise BundleError("agent/__init__.py has no __version__", str(repo))
    return match.group(1)


def sums_text(files: dict[str, str]) -> str:
    return "".join(f"{digest}  {rel}\n" for rel, digest in sorted(files.items()))


def version_of(sums: str, base_version: str) -> str:
    return f"{base_version}-{hashlib.sha256(sums.encode()).hexdigest()[:12]}"


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _run(cmd: Sequence[str], what: str, runner: Runner, **kw: Any) -> subprocess.CompletedProcess[str]:
    try:
        proc = runner(list(cmd), capture_output=True, text=True, **kw)
    except OSError as exc:
        raise BundleError(f"{what}: cannot run {cmd[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip() and "WARNING" not in ln]
        raise BundleError(f"{what} failed: {lines[-1].strip() if lines else f'exit {proc.returncode}'}")
    return proc


# -- the agent wheel -----------------------------------------------------------------------------------------------
def device_pyproject(text: str) -> str:
    """The repo's pyproject.toml without the console scripts a device cannot run (a `facelite-convert` there would
    only fail to import ``facelite.converter``). Checked by parsing."""
    scripts = tomllib.loads(text).get("project", {}).get("scripts", {})
    foreign = {name for name, target in scripts.items() if target.split(":")[0].startswith(HOST_MODULES)}
    out, section = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
        key = stripped.partition("=")[0].strip() if "=" in stripped else ""
        if section == "[project.scripts]" and key in foreign:
            continue
        out.append(line)
    result = "\n".join(out) + "\n"
    try:
        kept = tomllib.loads(result).get("project", {}).get("scripts", {})
    except tomllib.TOMLDecodeError as exc:
        raise BundleError(f"cannot cut pyproject.toml down to the device packages: {exc}", "pyproject.toml") from None
    if set(kept) != set(scripts) - foreign or not all(t.startswith("facelite.") for t in kept.values()):
        raise BundleError("pyproject.toml's layout changed: the device wheel would not be agent-only", "pyproject.toml")
    return result


def build_agent_wheel(repo: Path, work_dir: Path, runner: Runner = subprocess.run) -> Path:
    """Build facelite's wheel from the working tree (a clean copy, so the repo gets no build/ or egg-info)."""
    stage = work_dir / "src"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for name in _WHEEL_SOURCES:
        src = repo / name
        if src.is_dir():
            shutil.copytree(src, stage / name, ignore=_ignore)
        elif src.is_file():
            shutil.copy2(src, stage / name)
    if not (stage / "pyproject.toml").is_file() or not (stage / "setup.py").is_file():
        raise BundleError("no pyproject.toml and setup.py to build the agent wheel from", str(repo))
    if not (stage / "LICENSE").is_file():
        raise BundleError("no LICENSE to ship in the agent wheel", str(repo / "LICENSE"))
    pyproject = stage / "pyproject.toml"
    pyproject.write_text(device_pyproject(pyproject.read_text(encoding="utf-8")), encoding="utf-8")
    out = work_dir / "agent-wheel"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(stage)]
    _run(cmd, "building the facelite wheel", runner, env=env, cwd=stage)
    wheels = sorted(out.glob("facelite-*.whl"))
    if len(wheels) != 1:
        raise BundleError(f"building the facelite wheel gave {len(wheels)} wheels", str(out))
    return wheels[0]


# -- dependency wheels ---------------------------------------------------------------------------------------------
_cache_locks: dict[Path, threading.Lock] = {}
_cache_locks_guard = threading.Lock()


def _cache_lock(path: Path) -> threading.Lock:
    with _cache_locks_guard:
        return _cache_locks.setdefault(path, threading.Lock())


def fetch_wheels(
    profile: DeviceProfile, agent_wheel: Path, dest: Path, cache_root: Path, runner: Runner = subprocess.run
) -> list[Path]:
    """Download facelite[extra] + pip for the device's platform into ``dest``; cached per platform.

    The cache is tried first without any index (repeat builds are offline and give the same versions); the
    registry is asked only when the cache cannot satisfy the requirements.
    """
    plat = profile.platform
    cache = cache_root / f"{plat.arch}-glibc{plat.glibc}-{plat.abi}"
    cache.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(dest)]
    base += ["--only-binary=:all:", "--python-version", plat.python, "--implementation", "cp", "--abi", plat.abi]
    for tag in plat.pip_platforms:
        base += ["--platform", tag]
    reqs = [f"facelite[{plat.extra}] @ {agent_wheel.resolve().as_uri()}", "pip"]
    with _cache_lock(cache):
        offline = runner([*base, "--no-index", "--find-links", str(cache), *reqs], capture_output=True, text=True)
        if offline.returncode != 0:
            log.info("%s: wheels for %s not all cached, asking the registry", profile.name, cache.name)
            for f in dest.glob("*.whl"):
                f.unlink()
            _run(
                [*base, "--find-links", str(cache), *reqs],
                f"downloading wheels for {plat.arch} / Python {plat.python} / glibc {plat.glibc}",
                runner,
            )
        for wheel in dest.glob("*.whl"):
            if not wheel.name.startswith("facelite-") and not (cache / wheel.name).exists():
                shutil.copy2(wheel, cache / wheel.name)
    wheels = sorted(dest.glob("*.whl"))
    if not any(w.name.startswith("facelite-") for w in wheels):
        raise BundleError("the facelite wheel is missing from the downloaded set", str(dest))
    return wheels


# -- models --------------------------------------------------------------------------------------------------------
def choose_models(profile: DeviceProfile, models_dir: Path) -> tuple[ModelChoice, ...]:
    """The profile's models in their recommended (or pinned) variants, checked against their manifests."""
    index_path = models_dir / "index.json"
    try:
        index = json.loads(index_path.read_text())["models"]
    except FileNotFoundError:
        raise BundleError("no converted models", str(index_path), "run `make convert` first") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"index.json cannot be read: {exc}", str(index_path), "re-run `make convert`") from None
    out = []
    roles: list[tuple[str, str, str | None]] = [
        ("detector", profile.models.detector, profile.models.detector_variant),
        ("embedder", profile.models.embedder, profile.models.embedder_variant),
    ]
    if profile.models.landmarks:
        roles.append(("landmarks", profile.models.landmarks, profile.models.landmarks_variant))
    for role, name, pinned in roles:
        kind = "detector" if role == "landmarks" else role
        where = f"{index_path} (profile {profile.name}: models.{role})"
        entry = index.get(name)
        if not isinstance(entry, dict):
            raise BundleError(
                f"model {name!r} is missing from the converted models (has: {', '.join(sorted(index)) or 'none'})",
                where,
                f"run `make convert` for {name} or change models.{role}",
            )
        if entry.get("kind") != kind:
            raise BundleError(f"model {name!r} is a {entry.get('kind')}, not a {kind}", where)
        choice = pick_variant(
            models_dir, name, entry, pinned=pinned, cpu=profile.platform.cpu, runtime=profile.platform.runtime
        )
        variant = choice.variant
        log.info("%s: %s/%s (%s)", profile.name, name, variant, choice.reason)
        if not variant:
            raise BundleError(f"no variant of {name!r} passed its gates", where, "see its report.md")
        if variant not in entry.get("variants", []):
            raise BundleError(f"variant {variant!r} of {name!r} was not built or did not pass its gates", where)
        folder = models_dir / name / variant
        try:
            manifest = Manifest.load(folder)
            manifest.verify_files(folder)
        except FaceliteError as exc:
            raise BundleError(f"model {name}/{variant} is not deployable: {exc.one_line()}") from None
        if manifest.kind != kind:
            raise BundleError(f"{folder} holds a {manifest.kind}, not a {kind}")
        if role == "landmarks" and manifest.detector_type != "mtcnn":
            raise BundleError(f"model {name!r} has no O-Net to place landmarks (it is {manifest.detector_type})", where)
        out.append(ModelChoice(role, name, variant, folder))
    return tuple(out)


def _copy_model(choice: ModelChoice, root: Path) -> None:
    manifest = Manifest.load(choice.source_dir)
    target = root / choice.bundle_dir
    target.mkdir(parents=True, exist_ok=True)
    _link_or_copy(choice.source_dir / "manifest.json", target / "manifest.json")
    for graph in manifest.graphs.values():
        _link_or_copy(choice.source_dir / graph.file, target / graph.file)


# -- agent config --------------------------------------------------------------------------------------------------
def agent_config(profile: DeviceProfile, models: Sequence[ModelChoice]) -> dict[str, Any]:
    """The agent config this device runs; model paths point into the release via @RELEASE@."""
    mqtt: dict[str, Any] = {
        "host": profile.mqtt.host,
        "port": profile.mqtt.port,
        "base_topic": profile.mqtt.base_topic,
        "client_id": f"facelite-{profile.agent.device_id}",
    }
    if profile.mqtt.username:
        mqtt["username"] = profile.mqtt.username
    if profile.mqtt.password_file:
        # systemd LoadCredential= (and the plain supervisor, imitating it) sets CREDENTIALS_DIRECTORY.
        mqtt["password_file"] = f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}"
    return {
        "device_id": profile.agent.device_id,
        "state_interval_s": profile.agent.state_interval_s,
        "log_level": profile.agent.log_level,
        "cameras": [{"name": profile.agent.camera_name, "source": profile.agent.camera}],
        "models": {
            **{m.role: f"{RELEASE_PLACEHOLDER}/{m.bundle_dir}" for m in models},  # detector, embedder, landmarks
            "runtime": profile.platform.runtime,
            "num_threads": profile.agent.num_threads,
        },
        "mqtt": mqtt,
        "spool": {"path": f"{profile.paths.state_dir}/spool.sqlite"},
        "gallery": {"path": f"{profile.paths.state_dir}/gallery.sqlite"},
    }


def check_config(text: str, profile: DeviceProfile, work: Path) -> None:
    """Validate the rendered config with the agent's own strict loader before it travels anywhere."""
    from facelite.service.config import load_config

    probe = work / "agent.toml"
    probe.write_text(text.replace(RELEASE_PLACEHOLDER, f"{profile.paths.prefix}/releases/check"))
    try:
        load_config(probe, check_files=False)
    except FaceliteError as exc:
        raise BundleError(
            f"the rendered agent config is invalid: {exc.one_line()}", f"profile {profile.name}"
        ) from None


# -- the bundle ----------------------------------------------------------------------------------------------------
def _hash_tree(root: Path) -> dict[str, str]:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != SUMS:
            files[path.relative_to(root).as_posix()] = sha256_file(path)
    return files


def wheels_key(files: dict[str, str], profile: DeviceProfile) -> str:
    """Identity of the installed environment: a release whose wheels did not change reuses the device's venv."""
    wheels = "".join(f"{p}:{d};" for p, d in sorted(files.items()) if p.startswith("wheels/"))
    return hashlib.sha256(f"{profile.platform.python}|{profile.platform.extra}|{wheels}".encode()).hexdigest()[:16]


def build_bundle(profile: DeviceProfile, inputs: BundleInputs, runner: Runner = subprocess.run) -> Bundle:
    device_out = inputs.out_dir / profile.name
    device_out.mkdir(parents=True, exist_ok=True)
    models = choose_models(profile, inputs.models_dir)
    image = inputs.data_dir / profile.health.self_test_image
    if not image.is_file():
        raise BundleError(
            "self-test photo not found", str(image), "set health.self_test_image (relative to the data dir)"
        )
    gallery = Path(profile.agent.gallery).expanduser() if profile.agent.gallery else None
    if gallery is not None and not gallery.is_file():
        raise BundleError("gallery file not found", f"{gallery} (profile {profile.name}: agent.gallery)")
    for src in (
        REPO / "deploy" / "remote.py",
        REPO / "deploy" / "supervisor.py",
        REPO / "systemd" / "facelite-agent.service",
    ):
        if not src.is_file():
            raise BundleError("deploy file missing", str(src))

    work = Path(tempfile.mkdtemp(prefix=".build-", dir=device_out))
    try:
        root = work / "bundle"
        root.mkdir()
        fetch_wheels(profile, inputs.agent_wheel, root / "wheels", inputs.wheel_cache, runner)
        for choice in models:
            _copy_model(choice, root)
        config_text = "# Rendered by facelite deploy for device profile " + profile.name + ".\n"
        config_text += render_toml(agent_config(profile, models))
        check_config(config_text, profile, work)
        (root / "config").mkdir()
        (root / "config" / "agent.toml.in").write_text(config_text)
        (root / "selftest").mkdir()
        shutil.copy2(image, root / "selftest" / image.name)
        if gallery is not None:
            (root / "gallery").mkdir()
            shutil.copy2(gallery, root / "gallery" / "gallery.sqlite")
        (root / "service").mkdir()
        shutil.copy2(REPO / "systemd" / "facelite-agent.service", root / "service" / "facelite-agent.service")
        shutil.copy2(REPO / "deploy" / "supervisor.py", root / "service" / "supervisor.py")
        shutil.copy2(REPO / "deploy" / "remote.py", root / "remote.py")
        files_wo_info = _hash_tree(root)
        base_version = agent_version(inputs.repo)
        info = {
            "format": BUNDLE_FORMAT,
            "device": profile.name,
            "agent_version": base_version,
            "platform": {
                "arch": profile.platform.arch,
                "glibc": profile.platform.glibc,
                "python": profile.platform.python,
                "runtime": profile.platform.runtime,
                "extra": profile.platform.extra,
            },
            "paths": {
                "prefix": profile.paths.prefix,
                "state_dir": profile.paths.state_dir,
                "config_dir": profile.paths.config_dir,
            },
            "service": {
                "manager": profile.service.manager,
                "user": profile.service.user,
                "keep_releases": profile.service.keep_releases,
                "min_free_mb": profile.service.min_free_mb,
                "settle_s": profile.service.settle_s,
                "self_test_timeout_s": profile.service.self_test_timeout_s,
            },
            "models": {m.role: m.label for m in models},
            "selftest": {"image": f"selftest/{image.name}", "expect_faces": profile.health.expect_faces},
            "gallery": "gallery/gallery.sqlite" if gallery is not None else None,
            "wheels_key": wheels_key(files_wo_info, profile),
            "credentials": [CREDENTIAL_NAME] if profile.mqtt.password_file else [],
        }
        (root / BUNDLE_JSON).write_text(json.dumps(info, indent=2) + "\n")
        files = _hash_tree(root)
        sums = sums_text(files)
        (root / SUMS).write_text(sums)
        version = version_of(sums, base_version)
        final = device_out / f"facelite-{version}"
        archive = device_out / f"facelite-{version}.tar"
        if final.is_dir() and archive.is_file() and (final / SUMS).read_text() == sums:
            log.info("%s: bundle %s already built", profile.name, version)
        else:
            shutil.rmtree(final, ignore_errors=True)
            root.rename(final)
            tmp_tar = archive.with_suffix(".tar.tmp")
            # Uncompressed: wheels and .tflite files do not shrink, and the device unpacks faster.
            with tarfile.open(tmp_tar, "w") as tar:
                tar.add(final, arcname=final.name)
            tmp_tar.replace(archive)
            _prune_host_bundles(device_out, keep=3)
            log.info("%s: bundle %s built (%.1f MB)", profile.name, version, archive.stat().st_size / 1e6)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Bundle(
        device=profile.name,
        version=version,
        directory=final,
        archive=archive,
        files=files,
        models=models,
        size_bytes=archive.stat().st_size,
        wheels_key=str(info["wheels_key"]),
    )


def _prune_host_bundles(device_out: Path, keep: int) -> None:
    """Old bundles on the workstation are rebuilt on demand; keep a few for inspection, not a disk full."""
    archives = sorted(device_out.glob("facelite-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()
        shutil.rmtree(old.with_suffix(""), ignore_errors=True)


def read_sums(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        digest, _, rel = line.partition("  ")
        if rel:
            out[rel] = digest
    return out
