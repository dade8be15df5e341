"""Commands over MQTT: parsed, checked and run in the agent's frame loop, each answered and logged.

Off unless ``[commands] enabled = true`` (docs/mqtt-commands.md has the contract and a broker ACL). The sink
subscribes to ``<base>/<device_id>/command`` and queues what arrives; the frame loop, which owns the gallery and
the matcher, hands each payload to :class:`CommandProcessor` (nothing runs on the network thread, nothing needs a
lock). A command is JSON::

    {"id": "<1-64 of A-Za-z0-9._->", "command": "forget", "args": {"person": "Ada"}, "reply_to": "<optional>"}

and gets one reply (QoS 1, not retained) on ``<base>/<device_id>/command/reply`` or on ``reply_to``, which must lie
under ``<base>/<device_id>/`` and not be one of the device's own topics (a command never makes the device publish
elsewhere): ``{"id", "command", "ok": true, "result": {...}}`` or ``{"id", "command", "ok": false, "error": "..."}``.
A payload without a readable id (invalid JSON, no id) gets no reply: it is logged and counted.

Request ids are single use: an id seen within ``replay_window_s`` is refused as "replayed", also after a restart
(``commands_seen.json`` in the state folder, beside the spool, bounded by ``replay_max_ids``).

Adding a command is one function ``(CommandContext, args) -> result dict`` and one ``REGISTRY`` entry naming its
string arguments. Whatever a command writes to the gallery (its version moves), the agent then re-matches and
brings the broker in line, as after `facelite enroll` or `facelite gallery forget` from another process.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelite.errors import FaceliteError, GalleryError
from facelite.recognition.enrolment import enroll_from_event
from facelite.recognition.eventfaces import EventFaceStore
from facelite.recognition.gallery import Gallery, Hygiene
from facelite.recognition.galleryops import forget_person, list_people, reject_event, rename_person
from facelite.recognition.strangers import StrangerStore
from facelite.recognition.unknowns import drop_unknown, enroll_from_unknown
from facelite.service.events import Topics
from facelite.service.messages import Message

log = logging.getLogger(__name__)

SEEN_NAME = "commands_seen.json"
SEEN_SCHEMA = 1
ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# An oversize payload is not parsed (that is what the limit is for); its id is still read when it comes first.
_LEADING_ID = re.compile(rb'\A\s*\{\s*"id"\s*:\s*"([A-Za-z0-9._-]{1,64})"')
MAX_ARG_CHARS = 200
MAX_TOPIC_CHARS = 200


class CommandRefused(Exception):
    """A command that is not run. ``request_id`` is None when no id could be read: then nobody is answered."""

    def __init__(
        self, reason: str, *, request_id: str | None = None, command: str | None = None, reply_to: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id
        self.command = command
        self.reply_to = reply_to


@dataclass(frozen=True)
class Command:
    id: str
    name: str
    args: Mapping[str, Any]
    reply_to: str  # the topic the reply goes to


def _shown(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reply_topic_problem(topic: object, topics: Topics) -> str | None:
    """Why ``topic`` cannot receive a reply, or None: it must lie under the device's base and not be its own."""
    if not isinstance(topic, str):
        return f"reply_to must be a string (got {_shown(topic)})"
    under = topics.base + "/"
    own = {topics.command, topics.availability, topics.events, topics.state, topics.last_person}
    if len(topic) > MAX_TOPIC_CHARS or not topic.isprintable() or any(c in topic for c in "+#"):
        return f"reply_to {_shown(topic)} is not a plain topic of at most {MAX_TOPIC_CHARS} characters"
    if not topic.startswith(under) or "" in topic[len(under) :].split("/"):
        return f"reply_to {_shown(topic)} is not under {under}"
    if topic in own or topic.startswith(f"{topics.base}/person/"):
        return f"reply_to {_shown(topic)} is one of the device's own topics"
    return None


def parse_command(payload: bytes, topics: Topics, *, max_bytes: int) -> Command:
    """The command in ``payload``, or CommandRefused (the only exception this raises, whatever the bytes)."""
    default = topics.command_reply
    if len(payload) > max_bytes:
        head = _LEADING_ID.match(payload[:256])
        raise CommandRefused(
            f"payload of {len(payload)} bytes is over the limit of {max_bytes} (commands.max_payload_bytes)",
            request_id=head.group(1).decode() if head else None,
            reply_to=default,
        )
    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CommandRefused(f"not JSON: {_shown(str(exc), 80)}") from None
    if not isinstance(doc, dict):
        raise CommandRefused(f"a command is a JSON object (got {type(doc).__name__})")
    request_id = doc.get("id")
    if not isinstance(request_id, str) or not ID_RE.fullmatch(request_id):
        raise CommandRefused(f"missing or bad id {_shown(request_id)}: 1-64 characters of A-Za-z0-9._-")
    name = doc.get("command")
    command = name if isinstance(name, str) and len(name) <= 64 and name.isprintable() else None
    reply_to = default
    if "reply_to" in doc:
        problem = reply_topic_problem(doc["reply_to"], topics)
        if problem:
            raise CommandRefused(problem, request_id=request_id, command=command, reply_to=default)
        reply_to = doc["reply_to"]
    unknown = sorted(set(doc) - {"id", "command", "args", "reply_to"})
    if unknown:
        raise CommandRefused(
            f"unknown key(s) {', '.join(_shown(k) for k in unknown[:3])}", request_id=request_id, command=command,
            reply_to=reply_to,
        )  # fmt: skip
    if command is None:
        raise CommandRefused(
            f"missing or bad command {_shown(name)}", request_id=request_id, command=None, reply_to=reply_to
        )
    args = doc.get("args", {})
    if not isinstance(args, dict):
        raise CommandRefused(
            f"args must be a JSON object (got {type(args).__name__})", request_id=request_id, command=command,
            reply_to=reply_to,
        )  # fmt: skip
    return Command(request_id, command, args, reply_to)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# -- the commands ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CommandContext:
    """What a command may touch: the agent's own gallery and event face store, and how it matches now."""

    gallery: Gallery
    faces: EventFaceStore | None
    embedder_sha256: str
    matching: Callable[[], Mapping[str, Any]]  # the open-set threshold in force (OpenSetThreshold.as_dict())
    hygiene: Hygiene = field(default_factory=Hygiene)  # template hygiene for the enrolling commands, as the CLI's
    strangers: StrangerStore | None = None  # recurring strangers ([strangers] enabled), for enroll_unknown


Args = Mapping[str, str]


def _ping(ctx: CommandContext, args: Args) -> dict[str, Any]:
    return {"pong": True, "gallery_version": ctx.gallery.version}


def _list(ctx: CommandContext, args: Args) -> dict[str, Any]:
    people = [{"name": p.name, "templates": p.templates, "negatives": p.negatives} for p in list_people(ctx.gallery)]
    return {"people": people, "gallery_version": ctx.gallery.version, "matching": dict(ctx.matching())}


def _forget(ctx: CommandContext, args: Args) -> dict[str, Any]:
    outcome = forget_person(ctx.gallery, ctx.faces, args["person"])
    return {"person": outcome.person, "faces_erased": outcome.faces_erased, "gallery_version": ctx.gallery.version}


def _rename(ctx: CommandContext, args: Args) -> dict[str, Any]:
    old, new = rename_person(ctx.gallery, args["old"], args["new"])
    return {"old": old, "new": new, "gallery_version": ctx.gallery.version}


def _no_event_faces() -> GalleryError:
    return GalleryError("this agent keeps no event faces", "gallery.event_faces_keep_s = 0")


def _reject(ctx: CommandContext, args: Args) -> dict[str, Any]:
    if ctx.faces is None:
        raise _no_event_faces()
    r = reject_event(ctx.gallery, ctx.faces, ctx.embedder_sha256, args["event_id"])
    return {"event_id": r.event_id, "person": r.person, "added": r.added, "negatives": r.negatives,
            "gallery_version": r.version}  # fmt: skip


def _enroll_event(ctx: CommandContext, args: Args) -> dict[str, Any]:
    """`facelite enroll NAME --from-event EVENT_ID` over MQTT: the same rules (agent/recognition/enrolment.py)."""
    if ctx.faces is None:
        raise _no_event_faces()
    r = enroll_from_event(
        ctx.gallery,
        ctx.faces,
        event_id=args["event_id"],
        name=args["person"],
        embedder_sha256=ctx.embedder_sha256,
        hygiene=ctx.hygiene,
    )
    if r.outcome is not None and not r.outcome.added:
        raise GalleryError(r.line(), "template hygiene")  # refused: say why, as the CLI does, and change nothing
    return {"event_id": r.event_id, "person": r.person, "added": r.added, "line": r.line(),
            "gallery_version": ctx.gallery.version}  # fmt: skip


def _stranger_store(ctx: CommandContext) -> StrangerStore:
    if ctx.strangers is None:
        raise GalleryError("this agent keeps no recurring strangers", "strangers.enabled = false")
    return ctx.strangers


def _enroll_unknown(ctx: CommandContext, args: Args) -> dict[str, Any]:
    """`facelite enroll NAME --from-unknown K` over MQTT (agent/recognition/unknowns.py): a person confirmed who K
    is."""
    r = enroll_from_unknown(
        _stranger_store(ctx), ctx.gallery, args["person"], args["k"], embedder_sha256=ctx.embedder_sha256,
        hygiene=ctx.hygiene,
    )  # fmt: skip
    return {"k": r.k, "person": r.outcome.person, "added": r.outcome.added, "faces": r.faces,
            "gallery_version": ctx.gallery.version}  # fmt: skip


def _drop_unknown(ctx: CommandContext, args: Args) -> dict[str, Any]:
    """`facelite gallery drop-unknown K` over MQTT: erase a recurring stranger's faces."""
    return {"k": int(args["k"]), "faces_erased": drop_unknown(_stranger_store(ctx), args["k"])}


@dataclass(frozen=True)
class CommandSpec:
    run: Callable[[CommandContext, Args], dict[str, Any]]
    args: tuple[str, ...] = ()  # required string arguments (no others are accepted)


REGISTRY: dict[str, CommandSpec] = {
    "ping": CommandSpec(_ping),
    "list": CommandSpec(_list),
    "forget": CommandSpec(_forget, ("person",)),
    "rename": CommandSpec(_rename, ("old", "new")),
    "reject": CommandSpec(_reject, ("event_id",)),
    "enroll_event": CommandSpec(_enroll_event, ("event_id", "person")),
    "enroll_unknown": CommandSpec(_enroll_unknown, ("k", "person")),
    "drop_unknown": CommandSpec(_drop_unknown, ("k",)),
}


def check_args(name: str, spec: CommandSpec, args: Mapping[str, Any]) -> dict[str, str]:
    """The command's arguments as strings, or CommandRefused's reason as ValueError."""
    takes = ", ".join(spec.args) or "no arguments"
    extra = sorted(set(args) - set(spec.args))
    if extra:
        raise ValueError(f"unknown argument {_shown(extra[0])} for {name} (takes {takes})")
    out: dict[str, str] = {}
    for key in spec.args:
        value = args.get(key)
        if value is None:
            raise ValueError(f"missing argument {key!r} for {name} (takes {takes})")
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_ARG_CHARS or not value.isprintable():
            raise ValueError(f"argument {key!r} must be 1-{MAX_ARG_CHARS} printable characters (got {_shown(value)})")
        out[key] = value
    return out


# -- replay protection -------------------------------------------------------------------------------------------
class ReplayLog:
    """Request ids seen, with when: in memory, and in a JSON file (``path``; None: memory only) across restarts.

    A write that fails (disk full, read-only) is logged once and never raised: ids stay remembered in memory."""

    def __init__(self, path: Path | None, *, window_s: float, max_ids: int, clock: Callable[[], float]) -> None:
        self.path = path
        self.window_s = window_s
        self.max_ids = max_ids
        self._clock = clock
        self._failed = False
        self._seen: dict[str, float] = self._load()

    def _load(self) -> dict[str, float]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if doc.get("schema") != SEEN_SCHEMA:
                raise ValueError(f"schema {doc.get('schema')!r}, expected {SEEN_SCHEMA}")
            seen = {str(k): float(v) for k, v in doc["ids"].items() if ID_RE.fullmatch(str(k))}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("command id record %s unreadable (%s); replays of earlier commands are not detected", self.path,
                        exc)  # fmt: skip
            return {}
        return seen

    def seen(self, request_id: str) -> bool:
        at = self._seen.get(request_id)
        return at is not None and self._clock() - at <= self.window_s

    def remember(self, request_id: str) -> None:
        now = self._clock()
        self._seen[request_id] = now
        self._seen = {k: t for k, t in self._seen.items() if now - t <= self.window_s}
        if len(self._seen) > self.max_ids:
            newest = sorted(self._seen.items(), key=lambda kv: kv[1])[-self.max_ids :]
            self._seen = dict(newest)
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps({"schema": SEEN_SCHEMA, "ids": self._seen}))
            os.replace(tmp, self.path)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            if not self._failed:
                log.error("command id record %s cannot be written (%s); kept in memory only", self.path, exc)
            self._failed = True
            return
        self._failed = False


# -- the processor -----------------------------------------------------------------------------------------------
@dataclass
class CommandCounters:
    received: int = 0
    ok: int = 0
    refused: int = 0  # answered with ok=false
    invalid: int = 0  # no readable id: not answered
    ignored_retained: int = 0  # retained commands are never run (they would come back at every subscribe)

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass(frozen=True)
class Handled:
    replies: list[Message] = field(default_factory=list)
    # The gallery's version moved (also when the command failed half-way): the agent re-matches and re-syncs.
    gallery_changed: bool = False


class CommandProcessor:
    """Runs commands one at a time for the frame loop. ``handle`` never raises."""

    def __init__(
        self,
        topics: Topics,
        *,
        allowed: tuple[str, ...] | None,
        max_bytes: int,
        replay: ReplayLog,
        registry: Mapping[str, CommandSpec] = REGISTRY,
    ) -> None:
        self.topics = topics
        self.allowed = set(registry) if allowed is None else set(allowed)
        self.max_bytes = max_bytes
        self.replay = replay
        self.registry = registry
        self.counters = CommandCounters()

    def handle(self, message: Message, ctx: CommandContext) -> Handled:
        version = ctx.gallery.version
        handled = self._handle(message, ctx)
        return Handled(handled.replies, gallery_changed=ctx.gallery.version != version)

    def _handle(self, message: Message, ctx: CommandContext) -> Handled:
        self.counters.received += 1
        if message.retain:
            self.counters.ignored_retained += 1
            log.warning("command ignored: retained on %s (publish commands without retain)", message.topic)
            return Handled()
        try:
            command = parse_command(message.payload, self.topics, max_bytes=self.max_bytes)
            if self.replay.seen(command.id):
                raise CommandRefused("replayed", request_id=command.id, command=command.name, reply_to=command.reply_to)
            self.replay.remember(command.id)
            return self._run(command, ctx)
        except CommandRefused as refused:
            return self._refused(refused)
        except Exception:  # a bug must cost one command, never the agent
            log.exception("command failed unexpectedly")
            self.counters.invalid += 1
            return Handled()

    def _run(self, command: Command, ctx: CommandContext) -> Handled:
        spec = self.registry.get(command.name)
        where = dict(request_id=command.id, command=command.name, reply_to=command.reply_to)
        if spec is None:
            raise CommandRefused(f"unknown command {_shown(command.name)}", **where)
        if command.name not in self.allowed:
            raise CommandRefused(f"command {command.name!r} is not allowed here (commands.allowed)", **where)
        try:
            args = check_args(command.name, spec, command.args)
        except ValueError as exc:
            raise CommandRefused(str(exc), **where) from None
        try:
            result = spec.run(ctx, args)
        except FaceliteError as exc:
            raise CommandRefused(exc.one_line(), **where) from None
        except Exception as exc:
            log.exception("command %s id=%s failed unexpectedly", command.name, command.id)
            raise CommandRefused(f"internal error: {type(exc).__name__}", **where) from None
        self.counters.ok += 1
        log.info("command id=%s %s: ok", command.id, command.name)
        body = {"id": command.id, "command": command.name, "ok": True, "result": result}
        return Handled([self._reply(command.reply_to, body)])

    def _refused(self, refused: CommandRefused) -> Handled:
        reason = " ".join(refused.reason.split())  # one line, whatever an error carried
        if refused.request_id is None:
            self.counters.invalid += 1
            log.warning("command ignored (no id to answer): %s", reason)
            return Handled()
        self.counters.refused += 1
        log.info("command id=%s %s: refused: %s", refused.request_id, refused.command or "?", reason)
        body = {"id": refused.request_id, "command": refused.command, "ok": False, "error": reason}
        return Handled([self._reply(refused.reply_to or self.topics.command_reply, body)])

    @staticmethod
    def _reply(topic: str, body: Mapping[str, Any]) -> Message:
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
        return Message(topic, payload, qos=1, retain=False)


def seen_path(spool_path: Path) -> Path:
    """The record of command ids lives in the agent's state folder, beside the spool."""
    return Path(spool_path).with_name(SEEN_NAME)


@dataclass(frozen=True)
class CommandInbox:
    """The processor and where its messages come from (the MQTT sink's ``receive``)."""

    processor: CommandProcessor
    receive: Callable[[], list[Message]]

    def drain(
        self, ctx: CommandContext, *, gallery_changed: Callable[[], None], publish: Callable[[Message], None]
    ) -> None:
        """Run every command received since the last call (the frame loop calls this once per pass)."""
        for message in self.receive():
            handled = self.processor.handle(message, ctx)
            if handled.gallery_changed:  # first: a forgotten person's retained topics are cleared before the reply
                gallery_changed()
            for reply in handled.replies:
                publish(reply)

    def counters(self, dropped: int) -> dict[str, int]:
        """For the state message: the processor's counters and the commands the sink dropped (queue full)."""
        return {**self.processor.counters.as_dict(), "dropped": int(dropped)}


def open_commands(
    config: Any, topics: Topics, receive: Callable[[], list[Message]], clock: Callable[[], float]
) -> CommandInbox:
    """The agent's command inbox from its ``[commands]`` config; ids seen are kept beside the spool."""
    c = config.commands
    path = seen_path(config.spool.path)
    replay = ReplayLog(
        path if path.parent.is_dir() else None, window_s=c.replay_window_s, max_ids=c.replay_max_ids, clock=clock
    )
    allowed = tuple(c.allowed) if c.allowed is not None else None
    return CommandInbox(
        CommandProcessor(topics, allowed=allowed, max_bytes=c.max_payload_bytes, replay=replay), receive
    )
