"""Device profiles (deploy/devices/<name>.toml) and groups (deploy/devices/groups.toml), parsed strictly.

A profile says how to reach a device (ssh), what it is (platform: arch, glibc, Python, runtime), where things
live on it (paths), how the agent runs there (service), which models it gets and the agent settings that are
rendered into its config. Unknown keys are refused with their key path: a typo in a profile must not deploy a
default to a device nobody watches. ``--set key.path=value`` overrides are applied before validation, so they are
checked the same way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from facelite.deploy.errors import ProfileError

log = logging.getLogger(__name__)

DEVICES_DIR = Path(__file__).resolve().parent / "devices"
GROUPS_FILE = "groups.toml"
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

Arch = Literal["aarch64", "x86_64", "armv7l"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _absolute(value: str) -> str:
    if not PurePosixPath(value).is_absolute():
        raise ValueError(f"must be an absolute path on the device (got {value!r})")
    return value


class SshSection(_Strict):
    host: str = Field(min_length=1, description="Device host name or address.")
    port: int = Field(22, ge=1, le=65535)
    user: str = Field(min_length=1, description="Login user (needs sudo -n rights when sudo = true).")
    identity_file: str | None = Field(None, description="Private key; default: ssh's own choice.")
    known_hosts: str | None = Field(None, description="known_hosts file; host keys are always checked strictly.")
    config_file: str | None = Field(None, description="ssh -F FILE ('none' ignores ~/.ssh/config).")
    connect_timeout_s: int = Field(10, ge=1, le=300)
    sudo: bool = Field(False, description="Run the device steps through `sudo -n` (not needed when user is root).")


class PlatformSection(_Strict):
    arch: Arch = Field(description="`uname -m` of the device.")
    glibc: str = Field("2.36", pattern=r"^2\.\d{1,2}$", description="Device glibc (bookworm: 2.36).")
    python: str = Field("3.11", pattern=r"^3\.\d{1,2}$", description="Device Python minor version.")
    runtime: Literal["ai-edge-litert", "tflite-runtime"] = "ai-edge-litert"
    cpu: Literal["cortex-a53", "cortex-a72", "cortex-a76"] | None = Field(
        None,
        description="CPU class (Pi Zero 2: cortex-a53, Pi 4: cortex-a72, Pi 5: cortex-a76): deploy picks the variants "
        "that run fewest instructions on it (make bench-arm); unset: make convert's x86 choice.",
    )

    @model_validator(mode="after")
    def _runtime_fits(self) -> PlatformSection:
        # Facts from docs/toolchain.md: refusing here is cheaper than a pip resolution error on the host.
        if self.runtime == "ai-edge-litert" and self.arch == "armv7l":
            raise ValueError("ai-edge-litert has no armv7l wheel: use runtime = 'tflite-runtime'")
        if self.runtime == "tflite-runtime" and tuple(int(p) for p in self.python.split(".")) > (3, 11):
            raise ValueError(f"tflite-runtime 2.14 has no wheel for Python {self.python} (3.11 at most)")
        return self

    @property
    def extra(self) -> str:
        """The facelite extra that pulls the runtime (pyproject optional-dependencies)."""
        return "device" if self.runtime == "ai-edge-litert" else "device-legacy"

    @property
    def pip_platforms(self) -> list[str]:
        """Every manylinux tag the device's glibc accepts: pip >= 23 wants them spelled out for a foreign host."""
        minor = int(self.glibc.split(".")[1])
        tags = [f"manylinux_2_{m}_{self.arch}" for m in range(17, minor + 1)]
        legacy = {
            "x86_64": "manylinux2014_x86_64",
            "aarch64": "manylinux2014_aarch64",
            "armv7l": "manylinux2014_armv7l",
        }
        return [*tags, legacy[self.arch], f"linux_{self.arch}"]

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")


class PathsSection(_Strict):
    python: str = Field("/usr/bin/python3", description="Interpreter on the device that runs the installer.")
    prefix: str = Field("/opt/facelite", description="Releases, venvs and the `current` link live here.")
    state_dir: str = Field("/var/lib/facelite", description="Writable agent state: gallery, spool, deploy history.")
    config_dir: str = Field("/etc/facelite", description="agent.toml link and the 0600 credentials.")
    upload_dir: str = Field(".facelite-upload", description="Where the bundle is uploaded (relative: ssh home).")

    @field_validator("python", "prefix", "state_dir", "config_dir")
    @classmethod
    def _abs(cls, value: str) -> str:
        return _absolute(value)


class ServiceSection(_Strict):
    manager: Literal["systemd", "supervisor"] = Field("systemd", description="supervisor: devices without systemd.")
    user: str = Field("facelite", description="Service user (systemd), created in group video when missing.")
    keep_releases: int = Field(3, ge=2, le=50, description="Releases kept on the device (current and previous too).")
    min_free_mb: int = Field(200, ge=0, description="Refuse to install when less would be left free.")
    settle_s: float = Field(5.0, ge=0, le=600, description="The service must stay up this long after a restart.")
    self_test_timeout_s: float = Field(300.0, gt=0, le=7200, description="Deadline of the release self-test.")


class ModelsSection(_Strict):
    detector: str = Field(description="Model name in build/models/index.json.")
    embedder: str = Field(description="Model name in build/models/index.json.")
    detector_variant: str | None = Field(None, description="Default: the recommended variant in index.json.")
    embedder_variant: str | None = Field(None, description="Default: the recommended variant in index.json.")
    landmarks: str | None = Field(
        None,
        description="An MTCNN model in index.json whose O-Net places the five landmarks on the detector's faces "
        "(agent [models] landmarks). Default: the detector's own landmarks.",
    )
    landmarks_variant: str | None = Field(None, description="Default: the recommended variant in index.json.")


class AgentSection(_Strict):
    device_id: str
    camera: int | str = Field(0, description="Camera index, /dev/video0, stream URL, video file or folder.")
    camera_name: str = "camera"
    state_interval_s: float = Field(60.0, ge=1, le=3600)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    num_threads: int = Field(2, ge=1, le=16)
    gallery: str | None = Field(
        None,
        description="Host gallery.sqlite shipped with the bundle; seeds a device that has none (never overwrites).",
    )

    @field_validator("device_id", "camera_name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"must be 1-64 letters, digits, '_' or '-' (got {value!r})")
        return value


class MqttSection(_Strict):
    host: str = Field(min_length=1, description="Broker as the device sees it.")
    port: int = Field(1883, ge=1, le=65535)
    base_topic: str = "facelite"
    username: str | None = None
    password_file: str | None = Field(
        None, description="Host file holding the password: delivered as a 0600 credential, never in the bundle."
    )

    @model_validator(mode="after")
    def _password_needs_user(self) -> MqttSection:
        if self.password_file and not self.username:
            raise ValueError("password_file needs a username")
        return self


class HealthSection(_Strict):
    mqtt_host: str | None = Field(None, description="Broker as this host sees it (default: mqtt.host).")
    mqtt_port: int | None = Field(None, ge=1, le=65535, description="Default: mqtt.port.")
    timeout_s: float = Field(90.0, gt=0, le=3600, description="Deadline for live 'online' and a fresh state.")
    self_test_image: str = Field(
        "faces/scenes/couple.jpg", description="Photo (relative to the data dir) the release must find faces in."
    )
    expect_faces: int = Field(2, ge=0, le=1000)


class DeviceProfile(_Strict):
    name: str
    description: str = ""
    ssh: SshSection
    platform: PlatformSection
    paths: PathsSection = Field(default_factory=PathsSection)
    service: ServiceSection = Field(default_factory=ServiceSection)
    models: ModelsSection
    agent: AgentSection
    mqtt: MqttSection
    health: HealthSection = Field(default_factory=HealthSection)

    @property
    def health_broker(self) -> tuple[str, int]:
        return (self.health.mqtt_host or self.mqtt.host, self.health.mqtt_port or self.mqtt.port)

    @property
    def ssh_label(self) -> str:
        return f"{self.ssh.user}@{self.ssh.host}:{self.ssh.port}"


# -- overrides -----------------------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``ssh.port=2222`` -> (["ssh", "port"], 2222); the value is read as TOML, else taken as a plain string."""
    key, sep, raw = text.partition("=")
    path = [p.strip() for p in key.split(".")]
    if not sep or not all(path):
        raise ProfileError(f"--set expects KEY.PATH=VALUE, got {text!r}", fix="e.g. --set ssh.host=10.0.0.7")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ProfileError(f"--set {text}: {part} is not a table")
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


# -- loading -------------------------------------------------------------------------------------------------------
def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError("file not found", str(path)) from None
    except OSError as exc:
        raise ProfileError(f"cannot read: {exc.strerror}", str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"not valid TOML: {exc}", str(path)) from None


def _problem(error: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"]) or "(root)"
    if error["type"] == "extra_forbidden":
        return f"unknown key {loc}"
    if error["type"] == "missing":
        return f"missing key {loc}"
    msg = str(error["msg"]).removeprefix("Value error, ")
    return f"{loc}: {msg}"


def profile_names(devices_dir: Path = DEVICES_DIR) -> list[str]:
    return sorted(p.stem for p in devices_dir.glob("*.toml") if p.name != GROUPS_FILE)


def group_table(devices_dir: Path = DEVICES_DIR) -> dict[str, list[str]]:
    path = devices_dir / GROUPS_FILE
    if not path.is_file():
        return {}
    data = _read_toml(path)
    unknown = sorted(set(data) - {"groups"})
    if unknown:
        raise ProfileError(f"unknown key {unknown[0]} (only [groups] is allowed)", str(path))
    groups = data.get("groups", {})
    if not isinstance(groups, dict):
        raise ProfileError("groups must be a table of name = [members]", str(path))
    known = set(profile_names(devices_dir))
    out: dict[str, list[str]] = {}
    for name, members in groups.items():
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise ProfileError(f"groups.{name} must be a non-empty list of profile names", str(path))
        missing = [m for m in members if m not in known]
        if missing:
            raise ProfileError(f"groups.{name} names unknown device {missing[0]!r}", str(path))
        if name in known:
            raise ProfileError(f"group {name!r} has the same name as a device profile", str(path))
        out[str(name)] = [str(m) for m in members]
    return out


def resolve_targets(spec: str, devices_dir: Path = DEVICES_DIR) -> list[str]:
    """``pi``, ``pi,kitchen`` or a group name -> profile names, in order, without duplicates."""
    names = profile_names(devices_dir)
    groups = group_table(devices_dir)
    out: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if part in groups:
            members = groups[part]
        elif part in names:
            members = [part]
        else:
            choices = ", ".join(names + [f"{g} (group)" for g in groups]) or "none"
            raise ProfileError(f"unknown device {part!r}", str(devices_dir), f"choose from {choices}")
        out += [m for m in members if m not in out]
    return out


def load_profile(name: str, devices_dir: Path = DEVICES_DIR, overrides: Sequence[str] = ()) -> DeviceProfile:
    path = devices_dir / f"{name}.toml"
    if not _NAME_RE.match(name) or not path.is_file():
        raise ProfileError(
            f"unknown device {name!r}", str(devices_dir), f"choose from {', '.join(profile_names(devices_dir))}"
        )
    data = apply_overrides(_read_toml(path), overrides)
    if "name" in data:
        raise ProfileError("unknown key name (the profile's name is its file name)", str(path))
    try:
        return DeviceProfile.model_validate({"name": name, **data})
    except ValidationError as exc:
        problems = [_problem(e) for e in exc.errors()]
        more = f" (+{len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise ProfileError(problems[0] + more, str(path)) from None


# -- TOML writing (agent config, test profiles): tables of str/int/float/bool/lists, nothing more ----------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        text = str(value)
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def render_toml(data: Mapping[str, Any], _prefix: str = "") -> str:
    """Write nested mappings as TOML; lists of tables become ``[[name]]`` arrays; None values are left out."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, list[Mapping[str, Any]]]] = []
    for key, value in data.items():
        full = f"{_prefix}{key}"
        if value is None:
            continue
        if isinstance(value, Mapping):
            tables.append((full, value))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            arrays.append((full, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for full, items in arrays:
        for item in items:
            lines += ["", f"[[{full}]]", render_toml(item, f"{full}.").rstrip("\n")]
    for full, table in tables:
        lines += ["", f"[{full}]", render_toml(table, f"{full}.").rstrip("\n")]
    return "\n".join(line for line in lines).lstrip("\n") + "\n"
