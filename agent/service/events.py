"""The MQTT contract, versioned (``SCHEMA``): topics and payloads the agent publishes.

Everything here is a pure builder producing ``facelite.service.messages.Message`` values; sinks deliver them.
Topics live under ``<prefix>/<device_id>/`` (prefix ``facelite``)::

    availability        retained "online" / "offline" (also the MQTT last will)
    events              QoS 1, durable (spooled while the broker is away): one JSON per visit event
    last_person         retained: the last recognized person (feeds the Home Assistant sensor); emptied on forget
    person/<slug>       retained presence {state: home|away, last_seen}; emptied on forget
    state               retained periodic statistics
    unknown/<k>         retained recurring stranger {k, visits, first_seen, last_seen, cameras}
    (agent/recognition/strangers.py);
                        emptied when enrolled, dropped or expired

plus Home Assistant MQTT discovery configs (retained) under ``homeassistant/<component>/facelite_<device_id>/``.
Person names reach topics only through ``slugify`` so no name can inject '+', '#' or '/'.
Timestamps are UTC ISO-8601 with milliseconds and a ``Z``; frame timestamps are epoch seconds.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from facelite.errors import ConfigError
from facelite.recognition.names import slugify
from facelite.service.messages import Message

if TYPE_CHECKING:
    from facelite.recognition.track import TrackEvent

log = logging.getLogger(__name__)

SCHEMA = 1
DEFAULT_PREFIX = "facelite"
DISCOVERY_PREFIX = "homeassistant"
ONLINE = "online"
OFFLINE = "offline"
ONLINE_PAYLOAD, OFFLINE_PAYLOAD = ONLINE.encode(), OFFLINE.encode()  # the same words as MQTT payloads
FACE_CROP_FIELD = "face_jpeg"

_DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Topics' fields and the config keys they come from: an error names the key a user can find in agent.toml.
_CONFIG_KEYS = {"device_id": "device_id", "prefix": "mqtt.base_topic", "discovery_prefix": "mqtt.discovery_prefix"}


def topic_prefix_problem(value: str) -> str | None:
    """Why ``value`` cannot prefix our topics, or None. The one rule for mqtt.base_topic and discovery_prefix:
    the config checks it when loading (so --check-config refuses what the agent would), Topics when built."""
    if not value or any(c in value for c in "+#\0") or "" in value.split("/"):
        return f"topic prefix {value!r} must be MQTT topic levels without '+', '#' or empty levels"
    return None


# JSON Schema (draft 2020-12) of the payload on <prefix>/<device_id>/events, for README and consumers.
EVENT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "facelite event",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "schema",
        "event_id",
        "type",
        "timestamp",
        "camera",
        "track_id",
        "person",
        "similarity",
        "margin",
        "decision",
        "bbox",
        "quality",
        "embedder",
        "gallery_version",
        "latency_ms",
    ],
    "properties": {
        "schema": {"const": SCHEMA, "description": "payload version; bumped on incompatible change"},
        "event_id": {"type": "string", "format": "uuid", "description": "uuid4; consumers de-duplicate on it"},
        "type": {"enum": ["recognized", "unknown", "left"], "description": "one decision and one left per visit"},
        "timestamp": {
            "type": "string",
            "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
            "description": "UTC time of the frame that caused the event",
        },
        "camera": {"type": "string"},
        "track_id": {"type": "integer", "minimum": 1, "description": "unique per agent run; ties a left to its visit"},
        "person": {"type": ["string", "null"], "description": "enrolled name; null when unknown"},
        "similarity": {"type": "number", "minimum": -1, "maximum": 1, "description": "mean cosine of the votes"},
        "margin": {"type": "number", "minimum": 0, "maximum": 2, "description": "best minus runner-up person"},
        "decision": {"enum": ["known", "unknown", "ambiguous"]},
        "bbox": {
            "type": "object",
            "additionalProperties": False,
            "required": ["x", "y", "w", "h"],
            "properties": {k: {"type": "number", "minimum": 0, "maximum": 1} for k in ("x", "y", "w", "h")},
            "description": "face box as fractions of the frame, top-left origin",
        },
        "quality": {"type": "number", "minimum": 0, "maximum": 1},
        "embedder": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "sha256"],
            "properties": {"name": {"type": "string"}, "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
        },
        "gallery_version": {"type": "integer", "minimum": 0},
        "latency_ms": {"type": "number", "minimum": 0, "description": "frame capture to publish"},
        FACE_CROP_FIELD: {
            "type": "string",
            "contentEncoding": "base64",
            "contentMediaType": "image/jpeg",
            "description": "face crop; present only when enabled in config",
        },
    },
}


# -- names and topics ----------------------------------------------------------------------------
def utc_iso(ts: float) -> str:
    """Epoch seconds -> '2026-11-25T19:00:00.123Z'."""
    dt = datetime.fromtimestamp(ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Topics:
    device_id: str
    prefix: str = DEFAULT_PREFIX
    discovery_prefix: str = DISCOVERY_PREFIX

    def __post_init__(self) -> None:
        if not _DEVICE_ID.match(self.device_id):
            raise ConfigError(
                f"device id {self.device_id!r} may only hold letters, digits, '_' and '-' (1-64)",
                _CONFIG_KEYS["device_id"],
                "it becomes part of MQTT topics and Home Assistant ids",
            )
        for name in ("prefix", "discovery_prefix"):
            problem = topic_prefix_problem(getattr(self, name))
            if problem:
                raise ConfigError(problem, _CONFIG_KEYS[name])

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def events(self) -> str:
        return f"{self.base}/events"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def last_person(self) -> str:
        return f"{self.base}/last_person"

    def person(self, name: str) -> str:
        return f"{self.base}/person/{slugify(name)}"

    def unknown(self, k: int) -> str:
        """Retained summary of recurring stranger ``k`` (agent/recognition/strangers.py)."""
        return f"{self.base}/unknown/{int(k)}"

    @property
    def command(self) -> str:
        """Where the home-automation user sends commands (agent/service/commands.py; off unless configured)."""
        return f"{self.base}/command"

    @property
    def command_reply(self) -> str:
        """Default topic of command replies (a command may name another under ``base``)."""
        return f"{self.command}/reply"

    @property
    def node_id(self) -> str:
        # HA discovery node ids allow [a-zA-Z0-9_-]; the device id is validated to that alphabet.
        return f"facelite_{self.device_id}"

    def discovery(self, component: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{object_id}/config"


def compact_json(payload: Mapping[str, Any]) -> bytes:
    """The contract's JSON: compact, UTF-8, no NaN."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _r(x: float, digits: int) -> float:
    return round(float(x), digits)


# -- availability --------------------------------------------------------------------------------
def availability_message(topics: Topics, online: bool) -> Message:
    """Retained; the offline one is also the last will, so a crashed agent reads offline."""
    return Message(topics.availability, ONLINE_PAYLOAD if online else OFFLINE_PAYLOAD, qos=1, retain=True)


# -- events --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbedderInfo:
    name: str
    sha256: str


@dataclass(frozen=True)
class EventContext:
    """What every event of one agent run shares."""

    topics: Topics
    camera: str
    embedder: EmbedderInfo
    include_face_crop: bool = False


def event_payload(
    event: TrackEvent,
    ctx: EventContext,
    *,
    frame_size: tuple[int, int],
    gallery_version: int,
    now: float,
    event_id: str,
    face_jpeg: bytes | None = None,
) -> dict[str, Any]:
    """The JSON object of one event (see EVENT_SCHEMA). ``now`` is the wall clock at publish time."""
    width, height = frame_size
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {frame_size}")
    x, y, w, h = event.bbox.normalized(width, height)
    payload: dict[str, Any] = {
        "schema": SCHEMA,
        "event_id": event_id,
        "type": event.type,
        "timestamp": utc_iso(event.ts),
        "camera": ctx.camera,
        "track_id": int(event.track_id),
        "person": event.person,
        "similarity": _r(min(1.0, max(-1.0, event.similarity)), 4),
        "margin": _r(min(2.0, max(0.0, event.margin)), 4),
        "decision": event.decision,
        "bbox": {"x": _r(x, 4), "y": _r(y, 4), "w": _r(w, 4), "h": _r(h, 4)},
        "quality": _r(min(1.0, max(0.0, event.quality)), 3),
        "embedder": {"name": ctx.embedder.name, "sha256": ctx.embedder.sha256},
        "gallery_version": int(gallery_version),
        # A frame timestamp from a clock ahead of ours must not give a negative latency.
        "latency_ms": _r(max(0.0, (now - event.ts) * 1000.0), 1),
    }
    if ctx.include_face_crop and face_jpeg is not None:
        payload[FACE_CROP_FIELD] = base64.b64encode(face_jpeg).decode("ascii")
    return payload


def event_message(
    event: TrackEvent,
    ctx: EventContext,
    *,
    frame_size: tuple[int, int],
    gallery_version: int,
    now: float,
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    face_jpeg: bytes | None = None,
) -> Message:
    """QoS 1, not retained, durable: events are spooled to disk while the broker is unreachable."""
    payload = event_payload(
        event,
        ctx,
        frame_size=frame_size,
        gallery_version=gallery_version,
        now=now,
        event_id=str(new_id()),
        face_jpeg=face_jpeg,
    )
    return Message(ctx.topics.events, compact_json(payload), qos=1, retain=False, durable=True)


def last_person_message(event: TrackEvent, ctx: EventContext) -> Message | None:
    """Retained last recognized person (Home Assistant's sensor reads it); None for other event types."""
    if event.type != "recognized" or event.person is None:
        return None
    payload = {
        "schema": SCHEMA,
        "person": event.person,
        "timestamp": utc_iso(event.ts),
        "camera": ctx.camera,
        "similarity": _r(event.similarity, 4),
    }
    return Message(ctx.topics.last_person, compact_json(payload), qos=1, retain=True)


def event_messages(
    event: TrackEvent,
    ctx: EventContext,
    *,
    frame_size: tuple[int, int],
    gallery_version: int,
    now: float,
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
    face_jpeg: bytes | None = None,
) -> list[Message]:
    """Everything one tracker event publishes: the event, plus ``last_person`` when recognized."""
    out = [
        event_message(
            event,
            ctx,
            frame_size=frame_size,
            gallery_version=gallery_version,
            now=now,
            new_id=new_id,
            face_jpeg=face_jpeg,
        )
    ]
    last = last_person_message(event, ctx)
    if last is not None:
        out.append(last)
    return out


# -- state ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpoolStats:
    pending: int
    dropped: int


@dataclass(frozen=True)
class StateReport:
    fps: float
    stage_ms: Mapping[str, float]  # e.g. {"detect": 12.1, "embed": 35.0, "match": 0.4}
    frames: int
    dropped_frames: int
    skipped: Mapping[str, int]  # reason -> count, e.g. {"small_face": 12, "blurry": 3}
    spool: SpoolStats
    models: Mapping[str, str]  # role -> "name/variant", e.g. {"detector": "blazeface-full/fp32"}
    uptime_s: float
    camera: str  # "ok", "reconnecting", "failed", ...
    # The open-set threshold in force: facelite.recognition.openset.OpenSetThreshold.as_dict() (threshold, templates,
    # target and expected stranger accept rate per visit, where it came from).
    matching: Mapping[str, Any] = field(default_factory=dict)
    # MQTT command counters (facelite.service.commands.CommandCounters.as_dict()), empty when commands are off.
    commands: Mapping[str, int] = field(default_factory=dict)


def state_message(topics: Topics, report: StateReport, *, now: float) -> Message:
    """Retained, so a dashboard that connects later still sees the latest figures."""
    payload = {
        "schema": SCHEMA,
        "timestamp": utc_iso(now),
        "fps": _r(report.fps, 2),
        "stage_ms": {k: _r(v, 2) for k, v in sorted(report.stage_ms.items())},
        "frames": int(report.frames),
        "dropped_frames": int(report.dropped_frames),
        "skipped": {k: int(v) for k, v in sorted(report.skipped.items())},
        "spool": {"pending": int(report.spool.pending), "dropped": int(report.spool.dropped)},
        "models": dict(sorted(report.models.items())),
        "uptime_s": _r(report.uptime_s, 1),
        "camera": report.camera,
        "matching": dict(report.matching),
    }
    if report.commands:  # only when MQTT commands are enabled
        payload["commands"] = {k: int(v) for k, v in sorted(report.commands.items())}
    return Message(topics.state, compact_json(payload), qos=1, retain=True)


def forget_person_messages(topics: Topics, name: str, *, last_person: bool = False) -> list[Message]:
    """Empty retained payloads clear a removed person's discovery entity and presence from the broker, and
    ``last_person`` too when it names them (``last_person=True``)."""
    out = [
        Message(topics.discovery("device_tracker", f"person_{slugify(name)}"), b"", qos=1, retain=True),
        Message(topics.person(name), b"", qos=1, retain=True),
    ]
    if last_person:
        out.append(Message(topics.last_person, b"", qos=1, retain=True))
    return out


def names_person(message: Message, topics: Topics, names: Iterable[str]) -> bool:
    """True for an event on ``topics.events`` whose ``person`` is one of ``names`` (spooled events to erase)."""
    if message.topic != topics.events:
        return False
    try:
        person = json.loads(message.payload).get("person")
    except (ValueError, AttributeError):
        return False
    return isinstance(person, str) and person in set(names)
