"""The agent's configuration: strict, typed, and explained one line per problem.

Every section is a frozen dataclass checked by :mod:`facelite.service.schema` that refuses unknown keys (a typo must not
silently fall back to a default on a device nobody watches). Numbers and booleans are strict: ``port = "1883"``
or ``discovery = "no"`` are errors, not guesses. ``load_config`` reads TOML or YAML and turns every problem into
one line naming the file, the line, the key path (``mqtt.port``, ``cameras[0].fps_limit``) and the reason.
Relative paths are resolved against the folder of the config file, so a config works wherever it is run from.

Size: every section of the agent's configuration in one schema, plus the commented example (`EXAMPLE_TOML`, printed
by `--example-config` and read by the tests) and the loader that reports problems as file:line: key path, which
walks the same sections.
"""

from __future__ import annotations

import logging
import random
import re
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from facelite.errors import ConfigError
from facelite.recognition.track import TrackerConfig
from facelite.service.events import topic_prefix_problem
from facelite.service.schema import Context, KeyProblem, Loc, Problem, Section, key_path, setting, short, validate
from facelite.vision.quality import QualityGate

if TYPE_CHECKING:
    import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (older device images): same API from the tomli backport
    import tomli as tomllib

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Every table is @dataclass(frozen=True, kw_only=True): immutable, and built by keyword only, so required and
# defaulted keys keep the example's order (spelled out on each class, so type checkers see the dataclass).


def _resolve_path(value: Path, ctx: Context) -> Path:
    """Resolve a relative path against the config file's folder."""
    value = value.expanduser()
    if ctx.base_dir is not None and not value.is_absolute() and "$" not in str(value):
        return (ctx.base_dir / value).resolve()
    return value


def _existing_file(value: Path, ctx: Context) -> Path:
    # Files read deep inside a network thread (TLS, keys) are checked here, so the mistake surfaces at
    # start-up with its key path instead of as a reconnect loop.
    if "$" in str(value):
        return value  # expanded from the environment at use (systemd credentials), checked then
    if ctx.check_files and not value.is_file():
        raise ValueError(f"file not found: {value}")
    return value


RELATIVE = (_resolve_path,)
EXISTING_FILE = (_resolve_path, _existing_file)


def _check_name(what: str, value: str, ctx: Context) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"{what} must be 1-64 characters of letters, digits, '_' or '-' (got {value!r})")
    return value


_camera_name = partial(_check_name, "camera name")
_device_id = partial(_check_name, "device_id")


@dataclass(frozen=True, kw_only=True)
class Backoff(Section):
    """Exponential reconnect backoff with jitter (jitter spreads reconnects of many devices after an outage)."""

    initial_s: float = setting(1.0, gt=0, le=60, description="First delay after a failure, seconds.")
    max_s: float = setting(60.0, gt=0, le=3600, description="Upper bound of the delay, seconds.")
    multiplier: float = setting(2.0, ge=1, le=10, description="Delay growth per failed attempt.")
    jitter: float = setting(
        0.5, ge=0, le=1, description="Fraction of each delay that is random: 0 = fixed delays, 1 = full jitter."
    )

    def _check(self) -> None:
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must be >= initial_s ({self.initial_s})")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before reconnect attempt ``attempt`` (1-based); deterministic when ``rng`` is None."""
        exponent = min(max(attempt, 1) - 1, 64)  # bounded: no float overflow after days of outage
        base = min(self.max_s, self.initial_s * self.multiplier**exponent)
        if rng is None or self.jitter == 0:
            return base
        return base * (1.0 - self.jitter) + rng.uniform(0.0, base * self.jitter)


def _camera_source(value: Any, ctx: Context) -> int | str:
    # One clear message for every wrong kind of value, instead of one per member of int | str.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a camera index, device path, URL, file or folder (got {short(value)})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"camera index must be >= 0 (got {value})")
        return value
    if not value.strip():
        raise ValueError("must not be empty")
    if value.isdigit() or value.startswith("/dev/") or _URL_RE.match(value):
        return value
    return str(_resolve_path(Path(value), ctx))


@dataclass(frozen=True, kw_only=True)
class CameraConfig(Section):
    name: str = setting(description="Camera name used in topics and events.", after=(_camera_name,))
    source: int | str = setting(
        description="Camera index (0), V4L2 device (/dev/video0), rtsp:// or http(s):// URL, video file or folder.",
        before=_camera_source,
    )
    fps_limit: float | None = setting(
        None,
        gt=0,
        le=120,
        description="Process at most this many frames per second: a camera or stream drops the frames in between, "
        "a file or folder is paced (every frame is processed, one per period).",
    )
    reconnect: Backoff = setting(default_factory=Backoff, description="Backoff when the camera or stream is lost.")
    realtime: bool = setting(
        False,
        description="Play a video file at its own frame rate, as a camera would deliver it (default: as fast as "
        "the pipeline goes). No effect on live cameras and streams.",
    )


@dataclass(frozen=True, kw_only=True)
class ModelsConfig(Section):
    detector: Path = setting(description="Folder of the converted detector (holds manifest.json).", after=RELATIVE)
    embedder: Path = setting(description="Folder of the converted embedder (holds manifest.json).", after=RELATIVE)
    landmarks: Path | None = setting(
        None,
        description="Folder of a converted MTCNN whose O-Net places the five landmarks on the detector's faces "
        "(BlazeFace + O-Net aligns better than BlazeFace's own points: docs/experiments/onet_landmarks.md). "
        "Unset: the detector's own landmarks.",
        after=RELATIVE,
    )
    runtime: Literal["auto", "ai-edge-litert", "tflite-runtime"] = setting(
        "auto", description="TFLite runtime: auto tries ai-edge-litert first, then tflite-runtime."
    )
    num_threads: int = setting(2, ge=1, le=16, description="Interpreter threads per model.")


@dataclass(frozen=True, kw_only=True)
class DetectionConfig(Section):
    min_face: int = setting(40, ge=8, le=4096, description="Smallest face side to detect, pixels.")
    score_threshold: float = setting(0.7, gt=0, lt=1, description="Detector confidence needed to keep a face.")


@dataclass(frozen=True, kw_only=True)
class QualityConfig(Section):
    min_size: int = setting(60, ge=8, le=4096, description="Smallest face side used for recognition, pixels.")
    min_sharpness: float = setting(
        0.0, ge=0, le=10000, description="Minimum variance of the Laplacian of the aligned face."
    )
    max_yaw: float = setting(45.0, ge=0, le=90, description="Largest head turn (left/right) accepted, degrees.")
    max_pitch: float = setting(30.0, ge=0, le=90, description="Largest head tilt (up/down) accepted, degrees.")

    def gate(self) -> QualityGate:
        """The quality gate this section describes."""
        return QualityGate(
            min_size=self.min_size, min_sharpness=self.min_sharpness, max_yaw=self.max_yaw, max_pitch=self.max_pitch
        )


def _exponent_float(value: Any, ctx: Context) -> Any:
    # YAML 1.1 (PyYAML) reads 1e-3 as a string, as it wants a dot before the exponent; TOML reads a float.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


@dataclass(frozen=True, kw_only=True)
class MatchingConfig(Section):
    stranger_accept_rate: float = setting(
        1e-3,
        gt=0,
        lt=0.5,
        before=_exponent_float,
        description=(
            "Chance that a stranger's visit is announced as someone enrolled. The agent turns it into a "
            "similarity threshold from the embedder's calibration curve for the gallery's size (README)."
        ),
    )
    threshold: float | None = setting(
        None, ge=-1, le=1, description="Cosine similarity threshold; overrides the manifest's calibrated one."
    )
    ambiguous_margin: float = setting(
        0.05, ge=0, le=1, description="Best match must beat the second person by this much, else 'ambiguous'."
    )


@dataclass(frozen=True, kw_only=True)
class TrackingConfig(Section):
    iou_threshold: float = setting(0.3, gt=0, le=1, description="Box overlap to continue a track.")
    max_missed_frames: int = setting(10, ge=0, le=10000, description="Frames a track survives without a detection.")
    max_missed_seconds: float = setting(2.0, gt=0, le=3600, description="Seconds a track survives without a detection.")
    min_votes: int = setting(3, ge=1, le=100, description="Agreeing recognitions before an identity is announced.")
    recheck_interval_s: float = setting(
        5.0, gt=0, le=3600, description="Re-run recognition on a known track this often."
    )

    def tracker(self, *, min_votes: int | None = None) -> TrackerConfig:
        """The tracker settings this section describes (``min_votes`` overridden by the Python API's option)."""
        return TrackerConfig(
            iou_threshold=self.iou_threshold,
            max_missed_frames=self.max_missed_frames,
            max_missed_seconds=self.max_missed_seconds,
            min_votes=self.min_votes if min_votes is None else min_votes,
            recheck_interval_s=self.recheck_interval_s,
        )


@dataclass(frozen=True, kw_only=True)
class TlsConfig(Section):
    ca_file: Path | None = setting(
        None, description="CA bundle to verify the broker; None = system CAs.", after=EXISTING_FILE
    )
    cert_file: Path | None = setting(None, description="Client certificate (mutual TLS).", after=EXISTING_FILE)
    key_file: Path | None = setting(None, description="Client private key (mutual TLS).", after=EXISTING_FILE)

    def _check(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")


def _topic_prefix(value: str, ctx: Context) -> str:
    # The agent's own rule (facelite.service.events.Topics applies it too): what --check-config passes, the agent
    # accepts.
    problem = topic_prefix_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _env_name(value: str, ctx: Context) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(f"must be an environment variable name (got {value!r})")
    return value


def _password_file(value: str, ctx: Context) -> str:
    # A str field (it may hold $CREDENTIALS_DIRECTORY) with the checks of an existing-file path.
    return str(_existing_file(_resolve_path(Path(value), ctx), ctx))


@dataclass(frozen=True, kw_only=True)
class MqttConfig(Section):
    host: str = setting(min_length=1, max_length=253, description="Broker host name or address.")
    port: int = setting(1883, ge=1, le=65535, description="Broker port (8883 is usual with TLS).")
    client_id: str | None = setting(
        None, min_length=1, max_length=128, description="MQTT client id; default facelite-<device_id>."
    )
    base_topic: str = setting(
        "facelite", description="Topic prefix: <base_topic>/<device_id>/...", after=(_topic_prefix,)
    )
    tls: TlsConfig | None = setting(None, description="Enable TLS (an empty table uses the system CAs).")
    username: str | None = setting(None, min_length=1, description="Broker user name.")
    password_env: str | None = setting(
        None, description="Name of the environment variable holding the password.", after=(_env_name,)
    )
    password_file: str | None = setting(
        None,
        description="File holding the password, e.g. '$CREDENTIALS_DIRECTORY/mqtt_password' for systemd credentials.",
        after=(_password_file,),
    )
    keepalive: int = setting(60, ge=5, le=3600, description="MQTT keepalive, seconds.")
    qos: int = setting(1, ge=0, le=2, description="QoS for events (durable events always use at least 1).")
    discovery: bool = setting(True, description="Publish Home Assistant MQTT discovery.")
    discovery_prefix: str = setting(
        "homeassistant", description="Home Assistant discovery topic prefix.", after=(_topic_prefix,)
    )
    publish_crops: bool = setting(False, description="Attach face crops (JPEG) to events.")
    reconnect: Backoff = setting(
        default_factory=lambda: Backoff(initial_s=1.0, max_s=120.0), description="Backoff when the broker is lost."
    )
    close_timeout_s: float = setting(5.0, ge=0, le=120, description="On shutdown, wait this long to flush the spool.")

    def _check(self) -> None:
        if self.password_env and self.password_file:
            raise ValueError("give password_env or password_file, not both")
        if (self.password_env or self.password_file) and not self.username:
            raise ValueError("a password needs a username")

    @classmethod
    def unknown_key_reason(cls, key: str) -> str:
        if key == "password":
            return "unknown key: never put a password in the config; use password_env or password_file"
        return super().unknown_key_reason(key)

    def password(self, environ: Mapping[str, str]) -> str | None:
        """Read the password from its env var or file; the value is never logged or stored in the config."""
        if self.password_env:
            value = environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"environment variable {self.password_env} is not set", "mqtt.password_env")
            return value
        if self.password_file:
            try:
                expanded = string.Template(self.password_file).substitute(environ)
            except (KeyError, ValueError) as exc:
                raise ConfigError(
                    f"cannot expand {self.password_file!r}: variable {exc} is not set", "mqtt.password_file"
                ) from None
            try:
                # A trailing newline from `echo > file` is not part of the password.
                return Path(expanded).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(
                    f"password file cannot be read: {exc.strerror}", f"mqtt.password_file {expanded}"
                ) from None
        return None


@dataclass(frozen=True, kw_only=True)
class SpoolConfig(Section):
    path: Path = setting(
        Path("/var/lib/facelite/spool.sqlite"), description="SQLite file holding undelivered events.", after=RELATIVE
    )
    max_messages: int = setting(10000, ge=1, le=10_000_000, description="Oldest events are dropped beyond this.")
    max_bytes: int = setting(
        64 * 1024 * 1024, ge=1024, le=16 * 1024**3, description="Oldest events are dropped beyond this size."
    )


@dataclass(frozen=True, kw_only=True)
class GalleryConfig(Section):
    path: Path = setting(
        Path("/var/lib/facelite/gallery.sqlite"), description="SQLite file of enrolled people.", after=RELATIVE
    )
    key_file: Path | None = setting(
        None, description="Key that encrypts embeddings at rest (optional).", after=EXISTING_FILE
    )
    max_templates_per_person: int = setting(
        10, ge=1, le=1000, description="Templates kept per person at enrolment (the most central ones)."
    )
    event_faces_keep_s: float = setting(
        3 * 86400.0,
        ge=0,
        le=90 * 86400,
        description="Keep the face of each recognized and unknown event this long, for `facelite gallery reject` "
        "and `facelite enroll --from-event` (0: keep none), seconds.",
    )
    event_faces_max: int = setting(
        200, ge=1, le=100_000, description="At most this many event faces are kept (oldest erased first)."
    )


@dataclass(frozen=True, kw_only=True)
class StrangersConfig(Section):
    enabled: bool = setting(
        False, description="Keep the faces of unknown visits (encrypted like the gallery) to spot recurring strangers."
    )
    keep_s: float = setting(
        7 * 86400.0, gt=0, le=90 * 86400, description="An unknown visit's face is erased this long after it, seconds."
    )
    max_visits: int = setting(500, ge=1, le=100_000, description="At most this many unknown visits (oldest erased).")
    min_visits: int = setting(
        2, ge=2, le=1000, description="Separate visits before a stranger is announced (unknown/<k>) and enrolable."
    )
    min_gap_s: float = setting(
        0.0, ge=0, le=86400, description="Two visits are separate when the later starts this long after the earlier."
    )
    cluster_far: float = setting(
        3e-6,
        gt=0,
        lt=0.5,
        before=_exponent_float,
        description=(
            "Per-comparison false-accept rate of the similarity at which a visit joins a stranger's earlier one, "
            "read off the embedder's calibration curve (chosen on LFW calibration folds: make eval-strangers)."
        ),
    )


@dataclass(frozen=True, kw_only=True)
class PresenceConfig(Section):
    away_after_s: float = setting(
        300.0, ge=0, le=7 * 86400, description="A person reads 'away' this long after their last sighting, seconds."
    )
    last_seen_interval_s: float = setting(
        30.0,
        ge=1,
        le=3600,
        description="While a person is in view, move their retained last_seen forward at most this often, seconds.",
    )


def _known_commands(value: list[str], ctx: Context) -> list[str]:
    from facelite.service.commands import REGISTRY  # the registry is the one list of commands (imported late: no cycle)

    unknown = sorted({name for name in value if name not in REGISTRY})
    if unknown:
        raise ValueError(f"unknown command(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(REGISTRY))}")
    return value


@dataclass(frozen=True, kw_only=True)
class CommandsConfig(Section):
    """Commands over MQTT (docs/mqtt-commands.md): off unless enabled; the broker's ACL decides who may send."""

    enabled: bool = setting(
        False, description="Accept commands on <base_topic>/<device_id>/command (needs [mqtt] and a broker ACL)."
    )
    allowed: list[str] | None = setting(
        None, min_length=1, description="Commands accepted (default: all).", after=(_known_commands,)
    )
    max_payload_bytes: int = setting(
        4096, ge=128, le=1_048_576, description="Larger command payloads are refused unread, bytes."
    )
    replay_window_s: float = setting(
        7 * 86400.0,
        ge=0,
        le=365 * 86400,
        description="A request id seen this long ago is refused as replayed (kept across restarts), seconds.",
    )
    replay_max_ids: int = setting(
        10000, ge=1, le=1_000_000, description="At most this many request ids are remembered (oldest forgotten)."
    )


def _upper(value: Any, ctx: Context) -> Any:
    return value.upper() if isinstance(value, str) else value


def _unique_names(value: list[CameraConfig], ctx: Context) -> list[CameraConfig]:
    names = [c.name for c in value]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"camera names must be unique (repeated: {', '.join(duplicates)})")
    return value


@dataclass(frozen=True, kw_only=True)
class AgentConfig(Section):
    device_id: str = setting(
        description="Unique device name, used in topics and as MQTT client id.",
        after=(_device_id,),
    )
    cameras: list[CameraConfig] = setting(
        min_length=1, max_length=16, description="Frame sources ([[cameras]]).", after=(_unique_names,)
    )
    models: ModelsConfig = setting(description="Converted model folders and runtime.")
    detection: DetectionConfig = setting(default_factory=DetectionConfig, description="Face detection.")
    quality: QualityConfig = setting(default_factory=QualityConfig, description="Quality gate before recognition.")
    matching: MatchingConfig = setting(default_factory=MatchingConfig, description="Gallery matching.")
    tracking: TrackingConfig = setting(default_factory=TrackingConfig, description="Tracking and identity voting.")
    mqtt: MqttConfig | None = setting(None, description="Broker; without it events are printed as JSON lines.")
    spool: SpoolConfig = setting(default_factory=SpoolConfig, description="Disk queue for events during outages.")
    gallery: GalleryConfig = setting(default_factory=GalleryConfig, description="Enrolled people.")
    presence: PresenceConfig = setting(
        default_factory=PresenceConfig, description="Per-person home/away (kept in presence.json beside the spool)."
    )
    commands: CommandsConfig = setting(default_factory=CommandsConfig, description="Commands over MQTT (off).")
    strangers: StrangersConfig = setting(
        default_factory=StrangersConfig, description="Recurring strangers (opt-in; kept beside the spool)."
    )
    state_interval_s: float = setting(60.0, ge=1, le=3600, description="Publish the state message this often.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting(
        "INFO", description="Agent log level.", before=_upper
    )

    def _check(self) -> None:
        if self.commands.enabled and self.mqtt is None:
            raise KeyProblem(("commands", "enabled"), "commands need a broker: add an [mqtt] table or disable them")

    @staticmethod
    def example_toml() -> str:
        """A complete, commented example (README and `facelite-agent --example-config`)."""
        return EXAMPLE_TOML


EXAMPLE_TOML = """\
# facelite agent configuration. Unknown keys are errors; relative paths are relative to this file.
device_id = "frontdoor"
state_interval_s = 60
log_level = "INFO"

[[cameras]]
name = "door"
source = 0                 # index, "/dev/video0", "rtsp://user@host/stream", "clip.mp4" or "frames/"
fps_limit = 5
reconnect = { initial_s = 1, max_s = 60 }

[models]
# The recommended pipeline (`make eval-lfw`: best true-accept rate at the default stranger rate within 25 fps on
# one core, chosen on LFW calibration people): BlazeFace fp32 + MobileFaceNet fp32, as the pi profile deploys.
detector = "models/blazeface/fp32"
embedder = "models/mobilefacenet/fp32"
# MTCNN's O-Net placing the five landmarks on BlazeFace's faces: LFW 98.08% -> 98.67%, TAR at FAR 1e-3 0.960 ->
# 0.971, for 0.6 ms per face and 3.6 MB of memory (docs/experiments/onet_landmarks.md).
# landmarks = "models/mtcnn/fp32"
runtime = "auto"           # auto | ai-edge-litert | tflite-runtime
num_threads = 2

[detection]
min_face = 40
score_threshold = 0.7

[quality]
min_size = 60
min_sharpness = 0.0
max_yaw = 45
max_pitch = 30

[matching]
stranger_accept_rate = 1e-3 # chance a stranger's visit is announced as someone enrolled (per visit)
ambiguous_margin = 0.05
# threshold = 0.45          # a fixed similarity threshold instead (then the rate above is not held)

[tracking]
iou_threshold = 0.3
max_missed_frames = 10
max_missed_seconds = 2.0
min_votes = 3
recheck_interval_s = 5.0

[mqtt]
host = "localhost"
port = 1883
base_topic = "facelite"
keepalive = 60
qos = 1
discovery = true
discovery_prefix = "homeassistant"
publish_crops = false
# username = "facelite"
# password_file = "$CREDENTIALS_DIRECTORY/mqtt_password"   # systemd LoadCredential=; or password_env = "MQTT_PASSWORD"
# [mqtt.tls]
# ca_file = "/etc/facelite/ca.crt"

[spool]
path = "/var/lib/facelite/spool.sqlite"
max_messages = 10000
max_bytes = 67108864

[gallery]
path = "/var/lib/facelite/gallery.sqlite"
# key_file = "/etc/facelite/gallery.key"
max_templates_per_person = 10 # the most central templates of each person are kept
event_faces_keep_s = 259200  # event faces kept 3 days for `gallery reject`, `enroll --from-event` (0: none)
event_faces_max = 200

[presence]
away_after_s = 300         # home -> away this long after the last sighting
last_seen_interval_s = 30  # while someone is in view, their last_seen moves at most this often

[commands]
# Commands over MQTT on <base_topic>/<device_id>/command (docs/mqtt-commands.md). Off by default: enable them
# only with a broker ACL that lets the home-automation user alone publish there.
enabled = false
# allowed = ["ping", "list", "forget", "reject", "rename"]   # default: all
max_payload_bytes = 4096
replay_window_s = 604800   # a request id seen within this window is refused as "replayed"
replay_max_ids = 10000

[strangers]
enabled = false            # opt-in: keep unknown visits' faces to announce recurring strangers (unknown/<k>)
keep_s = 604800            # each face erased 7 days after its visit
max_visits = 500
min_visits = 2             # separate visits before unknown/<k> is published and `--from-unknown k` may enrol
min_gap_s = 0
cluster_far = 3e-6         # per-comparison false-accept rate of the clustering threshold (make eval-strangers)
"""


# --------------------------------------------------------------------------------------------------------------
# Loading and one-line error reporting


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    line: int | None
    key: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.reason}" if self.key else f"{where}: {self.reason}"


class ConfigErrors(ConfigError):
    """All problems of one config file; ``str()`` gives one line per problem."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"{len(problems)} problem(s) in the configuration")

    def one_line(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def _toml_key_lines(text: str) -> dict[Loc, int]:
    """Map key paths to the line that defines them, by scanning the TOML text (tomllib keeps no positions)."""
    lines: dict[Loc, int] = {}
    aot_counts: dict[Loc, int] = {}
    table: Loc = ()
    depth = 0  # open brackets of a multi-line array or inline table: their lines define no keys of ours
    in_multiline_string = False

    def with_indices(parts: list[str]) -> Loc:
        out: list[str | int] = []
        for part in parts:
            out.append(part)
            if tuple(out) in aot_counts:
                out.append(aot_counts[tuple(out)] - 1)
        return tuple(out)

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        quotes = line.count('"""') + line.count("'''")
        if in_multiline_string:
            in_multiline_string = quotes % 2 == 0
            continue
        if depth > 0:
            depth += _bracket_balance(line)
            continue
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"^\[\[\s*([^\]]+?)\s*\]\]", line):
            parts = _split_key(m.group(1))
            parent = with_indices(parts[:-1])
            name = (*parent, parts[-1])
            aot_counts[name] = aot_counts.get(name, 0) + 1
            table = (*name, aot_counts[name] - 1)
            lines.setdefault(name, number)
            lines[table] = number
            continue
        if m := re.match(r"^\[\s*([^\]]+?)\s*\]", line):
            table = with_indices(_split_key(m.group(1)))
            lines.setdefault(table, number)
            continue
        if m := re.match(r"^([A-Za-z0-9_\-.\"' ]+?)\s*=\s*(.*)$", line):
            lines.setdefault((*table, *_split_key(m.group(1))), number)
            value = m.group(2)
            in_multiline_string = (value.count('"""') + value.count("'''")) % 2 == 1
            depth = _bracket_balance(value)
    return lines


def _split_key(key: str) -> list[str]:
    return [p.strip().strip("\"'") for p in key.split(".")]


def _bracket_balance(text: str) -> int:
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'[^\']*\'', "", text)  # brackets inside strings do not count
    text = text.split("#", 1)[0]
    return text.count("[") + text.count("{") - text.count("]") - text.count("}")


def _yaml_key_lines(
    node: yaml.Node,
    path: Loc,
    out: dict[Loc, int],
    problems: list[tuple[Loc, int, str]],
    seen: set[int] | None = None,
) -> None:
    # An alias is the very node object of its anchor: walk each node once, or ten lines of nested aliases
    # ("billion laughs") would keep the agent busy forever.
    import yaml  # already loaded by _read

    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*path, str(key_node.value))
            if key in out:
                problems.append((key, key_node.start_mark.line + 1, "duplicate key"))
            out.setdefault(key, key_node.start_mark.line + 1)
            _yaml_key_lines(value_node, key, out, problems, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            out.setdefault((*path, index), item.start_mark.line + 1)
            _yaml_key_lines(item, (*path, index), out, problems, seen)


def _line_for(loc: Loc, lines: Mapping[Loc, int]) -> int | None:
    # A missing key has no line of its own: the nearest enclosing table that exists is the place to add it.
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _read(path: Path) -> tuple[Any, dict[Loc, int], list[ConfigProblem]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8 text", str(path)) from None
    except OSError as exc:
        raise ConfigError(f"config file cannot be read: {exc.strerror}", str(path)) from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML: {exc}", str(path)) from None
        return data, _toml_key_lines(text), []
    if suffix in (".yaml", ".yml"):
        import yaml  # only YAML configs pay for it

        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"invalid YAML: {_flat(exc.problem or exc)}", where) from None
        except yaml.YAMLError as exc:  # e.g. a control character: PyYAML's text spans two lines
            raise ConfigError(f"invalid YAML: {_flat(exc)}", str(path)) from None
        lines: dict[Loc, int] = {}
        dupes: list[tuple[Loc, int, str]] = []
        if node is not None:
            _yaml_key_lines(node, (), lines, dupes)
        return data, lines, [ConfigProblem(str(path), n, key_path(k), r) for k, n, r in dupes]
    raise ConfigError(f"unknown config format {suffix or '(no suffix)'!r}", str(path), "use .toml, .yaml or .yml")


def _flat(text: object) -> str:
    return " ".join(str(text).split())


def load_config(path: str | Path, *, check_files: bool = True) -> AgentConfig:
    """Read and validate a TOML or YAML config; every problem is one line of the raised ConfigErrors."""
    path = Path(path).expanduser()
    data, lines, problems = _read(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a table of keys, not {type(data).__name__}", str(path))
    found: list[Problem] = []
    config = validate(AgentConfig, data, Context(path.resolve().parent, check_files), (), found)
    problems += [ConfigProblem(str(path), _line_for(p.loc, lines), key_path(p.loc), p.reason) for p in found]
    problems.sort(key=lambda p: (p.line is None, p.line or 0))
    if problems:
        raise ConfigErrors(problems)
    log.debug("config %s loaded: device %s, %d camera(s)", path, config.device_id, len(config.cameras))
    return config
