"""MQTT commands without models: the parser's refusals, the replay record, the processor on a real gallery and
event face store (synthetic embeddings), the [commands] config, and the sink's inbound queue on a real mosquitto.

The agent process end to end (real models, real photos) is tests/test_commands_mqtt.py.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from broker import MosquittoBroker, Subscriber
from helpers import mix, orthonormal_basis, wait_until

from facelite.recognition.eventfaces import EventFace, EventFaceStore, StorePolicy
from facelite.recognition.gallery import Gallery, Hygiene
from facelite.recognition.strangers import StrangerPolicy, StrangerStore, Visit
from facelite.service.commands import (
    REGISTRY,
    SEEN_NAME,
    CommandContext,
    CommandProcessor,
    CommandRefused,
    ReplayLog,
    parse_command,
)
from facelite.service.config import Backoff, ConfigErrors, MqttConfig, load_config
from facelite.service.events import Topics
from facelite.service.messages import Message
from facelite.service.sinks.mqtt import MqttSink
from facelite.service.spool import Spool

TOPICS = Topics("hall")
SHA = "ab" * 32
DIM = 16
REPLY = "facelite/hall/command/reply"


def cmd(**doc: object) -> bytes:
    return json.dumps(doc).encode()


def refused(payload: bytes, max_bytes: int = 4096) -> CommandRefused:
    with pytest.raises(CommandRefused) as info:
        parse_command(payload, TOPICS, max_bytes=max_bytes)
    return info.value


# -- parsing ---------------------------------------------------------------------------------------------------
def test_a_command_is_parsed_with_its_reply_topic() -> None:
    c = parse_command(cmd(id="r-1.a_B", command="forget", args={"person": "Ada"}), TOPICS, max_bytes=4096)
    assert (c.id, c.name, dict(c.args), c.reply_to) == ("r-1.a_B", "forget", {"person": "Ada"}, REPLY)
    c = parse_command(cmd(id="r2", command="ping", reply_to="facelite/hall/ha/replies"), TOPICS, max_bytes=4096)
    assert (c.args, c.reply_to) == ({}, "facelite/hall/ha/replies")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b'{"id": "a", "command": "ping", "args": {"x": NaN}}', "not JSON"),
        (b"[1, 2]", "a command is a JSON object (got list)"),
        (cmd(command="ping"), "missing or bad id None"),
        (cmd(id="", command="ping"), "missing or bad id ''"),
        (cmd(id="x" * 65, command="ping"), "missing or bad id"),
        (cmd(id="a/b", command="ping"), "missing or bad id 'a/b'"),
        (cmd(id=7, command="ping"), "missing or bad id 7"),
    ],
)
def test_without_a_readable_id_the_refusal_names_no_one_to_answer(payload: bytes, reason: str) -> None:
    r = refused(payload)
    assert r.request_id is None and r.reason.startswith(reason), r.reason


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"command": 3}, "missing or bad command 3"),
        ({}, "missing or bad command None"),
        ({"command": "forget", "args": ["Ada"]}, "args must be a JSON object (got list)"),
        ({"command": "ping", "extra": 1}, "unknown key(s) 'extra'"),
        ({"command": "ping", "reply_to": "elsewhere/topic"}, "reply_to 'elsewhere/topic' is not under facelite/hall/"),
        ({"command": "ping", "reply_to": "facelite/other/x"}, "is not under facelite/hall/"),
        ({"command": "ping", "reply_to": "facelite/hall/"}, "is not under facelite/hall/"),
        ({"command": "ping", "reply_to": "facelite/hall/a//b"}, "is not under facelite/hall/"),
        ({"command": "ping", "reply_to": "facelite/hall/#"}, "is not a plain topic"),
        ({"command": "ping", "reply_to": "facelite/hall/x\n"}, "is not a plain topic"),
        ({"command": "ping", "reply_to": 5}, "reply_to must be a string"),
        ({"command": "ping", "reply_to": "facelite/hall/command"}, "one of the device's own topics"),
        ({"command": "ping", "reply_to": "facelite/hall/state"}, "one of the device's own topics"),
        ({"command": "ping", "reply_to": "facelite/hall/person/ada"}, "one of the device's own topics"),
    ],
)
def test_refusals_with_an_id_are_answered_on_the_default_reply_topic(doc: dict[str, object], reason: str) -> None:
    r = refused(cmd(id="q1", **doc))
    assert r.request_id == "q1" and r.reply_to == REPLY and reason in r.reason, r.reason


def test_an_oversize_payload_is_refused_unread_and_answered_when_its_id_comes_first() -> None:
    big = cmd(id="big-1", command="forget", args={"person": "A" * 5000})
    r = refused(big, max_bytes=4096)
    assert r.request_id == "big-1" and "over the limit of 4096" in r.reason
    late_id = cmd(command="forget", args={"person": "A" * 5000}, id="big-2")
    assert refused(late_id, max_bytes=4096).request_id is None  # not parsed: no id to answer


# -- the replay record -------------------------------------------------------------------------------------------
def test_replayed_ids_are_remembered_across_restarts_within_the_window_and_bounded(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / SEEN_NAME
    log = ReplayLog(path, window_s=100, max_ids=3, clock=lambda: now[0])
    log.remember("a")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = ReplayLog(path, window_s=100, max_ids=3, clock=lambda: now[0])  # the agent restarted
    assert again.seen("a") and not again.seen("b")
    now[0] += 101
    assert not again.seen("a")  # outside the window
    for i in "bcde":
        again.remember(i)
    assert [i for i in "bcde" if again.seen(i)] == ["c", "d", "e"]  # at most 3, the oldest forgotten
    assert set(json.loads(path.read_text())["ids"]) == {"c", "d", "e"}


def test_an_unwritable_or_damaged_record_is_one_line_and_ids_stay_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    log = ReplayLog(blocker / SEEN_NAME, window_s=100, max_ids=10, clock=time.time)  # ENOTDIR: as a full disk
    with caplog.at_level(logging.ERROR, logger="facelite.service.commands"):
        log.remember("a")
        log.remember("b")
    assert log.seen("a") and log.seen("b")
    assert len([r for r in caplog.records if "cannot be written" in r.getMessage()]) == 1
    damaged = tmp_path / SEEN_NAME
    damaged.write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING, logger="facelite.service.commands"):
        assert not ReplayLog(damaged, window_s=100, max_ids=10, clock=time.time).seen("a")
    assert any("unreadable" in r.getMessage() for r in caplog.records)


# -- the processor on a real gallery -----------------------------------------------------------------------------
@pytest.fixture
def world(tmp_path: Path) -> tuple[Gallery, EventFaceStore, np.ndarray]:
    basis = orthonormal_basis(DIM, seed=3)
    gallery = Gallery.open(tmp_path / "gallery.sqlite", embedder_sha256=SHA, embedding_size=DIM)
    gallery.enroll("Ada", [mix(basis, e0=1.0), mix(basis, e0=0.9, e1=0.3)], ["a1", "a2"])
    gallery.enroll("Bob", [mix(basis, e2=1.0)], ["b1"])
    faces = EventFaceStore(tmp_path / "event_faces.sqlite", key=None, policy=StorePolicy())
    return gallery, faces, basis


def processor(tmp_path: Path, allowed: tuple[str, ...] | None = None) -> CommandProcessor:
    replay = ReplayLog(tmp_path / SEEN_NAME, window_s=3600, max_ids=100, clock=time.time)
    return CommandProcessor(TOPICS, allowed=allowed, max_bytes=4096, replay=replay)


def send(p: CommandProcessor, ctx: CommandContext, payload: bytes, retain: bool = False) -> tuple[list[dict], bool]:
    handled = p.handle(Message(TOPICS.command, payload, qos=1, retain=retain), ctx)
    for m in handled.replies:
        assert (m.qos, m.retain, m.durable) == (1, False, False)
    return [json.loads(m.payload) | {"topic": m.topic} for m in handled.replies], handled.gallery_changed


def test_forget_rename_list_reject_and_ping_change_the_gallery_as_the_cli_does(
    tmp_path: Path, world: tuple[Gallery, EventFaceStore, np.ndarray]
) -> None:
    gallery, faces, basis = world
    ctx = CommandContext(gallery, faces, SHA, lambda: {"threshold": 0.5})
    p = processor(tmp_path)
    event_id = str(uuid.uuid4())
    assert faces.put(EventFace(event_id, time.time(), "Ada", "door", SHA, mix(basis, e0=0.6, e3=0.8)))

    (reply,), changed = send(p, ctx, cmd(id="1", command="list"))
    assert not changed and reply["ok"] and reply["topic"] == REPLY
    assert reply["result"]["people"] == [
        {"name": "Ada", "templates": 2, "negatives": 0},
        {"name": "Bob", "templates": 1, "negatives": 0},
    ]
    assert reply["result"]["matching"] == {"threshold": 0.5}

    (reply,), changed = send(p, ctx, cmd(id="2", command="reject", args={"event_id": event_id}))
    assert changed and reply["ok"], reply
    assert {k: reply["result"][k] for k in ("event_id", "person", "added", "negatives")} == {
        "event_id": event_id, "person": "Ada", "added": True, "negatives": 1,
    }  # fmt: skip
    (reply,), changed = send(p, ctx, cmd(id="3", command="reject", args={"event_id": event_id}))
    assert reply["ok"] and reply["result"]["added"] is False and not changed  # rejecting twice changes nothing

    (reply,), changed = send(p, ctx, cmd(id="4", command="rename", args={"old": "Bob", "new": "Robert"}))
    assert changed and reply["result"]["new"] == "Robert"
    (reply,), changed = send(p, ctx, cmd(id="5", command="forget", args={"person": "Ada"}, reply_to=REPLY + "/ha"))
    assert changed and reply["ok"] and reply["topic"] == REPLY + "/ha" and reply["result"]["faces_erased"] == 1
    assert [x.name for x in gallery.people()] == ["Robert"]
    with sqlite3.connect(gallery.path) as con:
        assert con.execute("SELECT COUNT(*) FROM negatives").fetchone()[0] == 0  # Ada's negatives went with her
    (reply,), changed = send(p, ctx, cmd(id="6", command="ping"))
    assert reply["ok"] and reply["result"]["pong"] is True and not changed
    assert p.counters.as_dict() == {"received": 6, "ok": 6, "refused": 0, "invalid": 0, "ignored_retained": 0}


def test_refused_commands_answer_with_a_reason_and_change_nothing(
    tmp_path: Path, world: tuple[Gallery, EventFaceStore, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    gallery, faces, _ = world
    ctx = CommandContext(gallery, faces, SHA, dict)
    p = processor(tmp_path, allowed=("ping", "list", "forget"))
    version = gallery.version
    cases = [
        (cmd(id="u1", command="format_disk"), "unknown command 'format_disk'"),
        (cmd(id="u2", command="rename", args={"old": "Ada", "new": "Eve"}), "'rename' is not allowed here"),
        (cmd(id="u3", command="forget"), "missing argument 'person' for forget (takes person)"),
        (cmd(id="u4", command="forget", args={"person": 3}), "argument 'person' must be 1-200 printable"),
        (cmd(id="u5", command="forget", args={"person": "Ada", "all": True}), "unknown argument 'all'"),
        (cmd(id="u6", command="forget", args={"person": "Nobody"}), "no person 'Nobody' in the gallery"),
        (cmd(id="u7", command="ping", reply_to="homeassistant/x"), "is not under facelite/hall/"),
        (cmd(id="u1", command="ping"), "replayed"),
    ]
    for payload, reason in cases:
        with caplog.at_level(logging.INFO, logger="facelite.service.commands"):
            (reply,), changed = send(p, ctx, payload)
        request_id = json.loads(payload)["id"]
        assert reply["ok"] is False and reason in reply["error"] and reply["id"] == request_id, (reason, reply)
        assert reply["topic"] == REPLY and not changed
        assert f"command id={request_id} " in caplog.records[-1].getMessage()  # each command logged, one line
    assert send(p, ctx, b"{garbage") == ([], False)  # no id: no reply, counted
    assert send(p, ctx, cmd(id="r1", command="forget", args={"person": "Ada"}), retain=True) == ([], False)
    assert gallery.version == version and [x.name for x in gallery.people()] == ["Ada", "Bob"]
    assert p.counters.as_dict() == {"received": 10, "ok": 0, "refused": 8, "invalid": 1, "ignored_retained": 1}
    # A replayed id is refused after a restart too (the record is on disk).
    (reply,), _ = send(processor(tmp_path), ctx, cmd(id="u6", command="ping"))
    assert reply["error"] == "replayed"


def test_reject_without_kept_faces_is_a_refusal_with_the_config_key(
    tmp_path: Path, world: tuple[Gallery, EventFaceStore, np.ndarray]
) -> None:
    gallery, _, _ = world
    p = processor(tmp_path)
    no_faces = CommandContext(gallery, None, SHA, dict)
    (reply,), _ = send(p, no_faces, cmd(id="n1", command="reject", args={"event_id": str(uuid.uuid4())}))
    assert "keeps no event faces" in reply["error"] and "gallery.event_faces_keep_s = 0" in reply["error"]
    (reply,), _ = send(p, no_faces, cmd(id="n2", command="reject", args={"event_id": "not-an-id"}))
    assert "keeps no event faces" in reply["error"]
    # A gallery that cannot be written (full disk) through the real agent: tests/test_faults.py.
    (reply,), changed = send(p, no_faces, cmd(id="n3", command="forget", args={"person": "Ada"}))
    assert reply["ok"] and changed


def test_enroll_event_makes_an_unknown_face_a_template_by_the_clis_rules(
    tmp_path: Path, world: tuple[Gallery, EventFaceStore, np.ndarray]
) -> None:
    """`enroll_event` is `facelite enroll NAME --from-event ID` over MQTT (agent/recognition/enrolment.py): an
    unknown face
    becomes a template; the same event twice changes nothing; a face announced as someone else, a face that
    template hygiene refuses (it matches another person better) and a missing store are refusals with the reason."""
    gallery, faces, basis = world
    hygiene = Hygiene(max_templates_per_person=10, threshold_for=lambda n: 0.5)
    ctx = CommandContext(gallery, faces, SHA, dict, hygiene)
    p = processor(tmp_path)
    lee, ada_lookalike, as_ada = (str(uuid.uuid4()) for _ in range(3))
    assert faces.put(EventFace(lee, time.time(), None, "door", SHA, mix(basis, e4=1.0)))
    assert faces.put(EventFace(ada_lookalike, time.time(), None, "door", SHA, mix(basis, e0=0.95, e5=0.3)))
    assert faces.put(EventFace(as_ada, time.time(), "Ada", "door", SHA, mix(basis, e0=0.8, e6=0.6)))

    (reply,), changed = send(p, ctx, cmd(id="e1", command="enroll_event", args={"event_id": lee, "person": "Lee"}))
    assert changed and reply["ok"] and reply["result"]["added"] == 1 and reply["result"]["person"] == "Lee", reply
    assert {x.name: x.templates for x in gallery.people()} == {"Ada": 2, "Bob": 1, "Lee": 1}
    (reply,), changed = send(p, ctx, cmd(id="e2", command="enroll_event", args={"event_id": lee, "person": "Lee"}))
    assert reply["ok"] and reply["result"]["added"] == 0 and "already a template" in reply["result"]["line"]
    assert not changed

    version = gallery.version
    (reply,), _ = send(p, ctx, cmd(id="e3", command="enroll_event", args={"event_id": as_ada, "person": "Lee"}))
    assert not reply["ok"] and "announced as Ada" in reply["error"] and "gallery reject" in reply["error"]
    (reply,), _ = send(p, ctx, cmd(id="e4", command="enroll_event", args={"event_id": ada_lookalike, "person": "Mia"}))
    assert not reply["ok"] and "Ada" in reply["error"], reply  # hygiene: it is closer to Ada than to a new person
    (reply,), _ = send(
        p,
        CommandContext(gallery, None, SHA, dict),
        cmd(id="e5", command="enroll_event", args={"event_id": lee, "person": "Lee"}),
    )
    assert not reply["ok"] and "keeps no event faces" in reply["error"]
    assert gallery.version == version and "Mia" not in {x.name for x in gallery.people()}


def test_enroll_unknown_and_drop_unknown_work_on_recurring_strangers_as_the_cli_does(
    tmp_path: Path, world: tuple[Gallery, EventFaceStore, np.ndarray]
) -> None:
    """`enroll_unknown` = `facelite enroll NAME --from-unknown K`, `drop_unknown` = `gallery drop-unknown K`
    (agent/recognition/unknowns.py), on a real stranger store; refusals name why."""
    gallery, faces, basis = world
    policy = StrangerPolicy(threshold=0.6, keep_s=1000.0, max_visits=50)
    store = StrangerStore(tmp_path / "strangers.sqlite", key=None, policy=policy, clock=lambda: 10_000.0)
    now = 9_000.0

    def visit(vector: np.ndarray, at: float) -> Visit:
        return Visit(at, at + 5.0, "door", SHA, vector, 0.8)

    cleo = store.add(visit(mix(basis, e4=0.95), now))
    store.add(visit(mix(basis, e4=0.9, e5=0.3), now + 100))
    once = store.add(visit(mix(basis, e6=1.0), now + 200))
    other = store.add(visit(mix(basis, e7=1.0), now + 300))
    ctx = CommandContext(gallery, faces, SHA, dict, Hygiene(10, lambda n: 0.5), store)
    p = processor(tmp_path)

    (reply,), changed = send(p, ctx, cmd(id="s1", command="enroll_unknown", args={"k": str(cleo), "person": "Cleo"}))
    assert changed and reply["ok"], reply
    assert {k: reply["result"][k] for k in ("k", "person", "added", "faces")} == {
        "k": cleo, "person": "Cleo", "added": 2, "faces": 2,
    }  # fmt: skip
    assert {x.name: x.templates for x in gallery.people()}["Cleo"] == 2
    (reply,), _ = send(p, ctx, cmd(id="s2", command="enroll_unknown", args={"k": str(cleo), "person": "Cleo"}))
    assert not reply["ok"] and "already enrolled as Cleo" in reply["error"]
    (reply,), _ = send(p, ctx, cmd(id="s3", command="enroll_unknown", args={"k": str(once), "person": "Dan"}))
    assert not reply["ok"] and "seen on 1 visit" in reply["error"]
    (reply,), _ = send(p, ctx, cmd(id="s4", command="enroll_unknown", args={"k": "x", "person": "Dan"}))
    assert not reply["ok"] and "not an unknown person's number" in reply["error"]

    (reply,), changed = send(p, ctx, cmd(id="s5", command="drop_unknown", args={"k": str(other)}))
    assert reply["ok"] and reply["result"] == {"k": other, "faces_erased": 1} and not changed
    (reply,), _ = send(p, ctx, cmd(id="s6", command="drop_unknown", args={"k": str(other)}))
    assert not reply["ok"] and str(other) in reply["error"]
    (reply,), _ = send(
        p, CommandContext(gallery, faces, SHA, dict), cmd(id="s7", command="drop_unknown", args={"k": str(once)})
    )
    assert not reply["ok"] and "strangers.enabled = false" in reply["error"]
    store.close()


# -- configuration -----------------------------------------------------------------------------------------------
def test_commands_are_off_by_default_and_need_mqtt(tmp_path: Path) -> None:
    base = 'device_id = "d"\n[[cameras]]\nname = "c"\nsource = 0\n[models]\ndetector = "d"\nembedder = "e"\n'
    path = tmp_path / "agent.toml"
    path.write_text(base)
    assert load_config(path, check_files=False).commands.enabled is False
    path.write_text(base + "[commands]\nenabled = true\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(path, check_files=False)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:9: commands.enabled: commands need a broker: add an [mqtt] table or disable them"
    ]
    path.write_text(base + '[mqtt]\nhost = "h"\n[commands]\nenabled = true\nallowed = ["ping", "rm_rf"]\n')
    with pytest.raises(ConfigErrors) as info:
        load_config(path, check_files=False)
    (problem,) = info.value.problems
    assert problem.key == "commands.allowed" and problem.line == 12 and "unknown command(s) 'rm_rf'" in problem.reason
    path.write_text(base + '[mqtt]\nhost = "h"\n[commands]\nenabled = true\nallowed = ["ping"]\n')
    assert load_config(path, check_files=False).commands.allowed == ["ping"]
    assert set(REGISTRY) == {
        "ping", "list", "forget", "rename", "reject", "enroll_event", "enroll_unknown", "drop_unknown",
    }  # fmt: skip


# -- the sink's inbound side on a real broker ---------------------------------------------------------------------
def subacks(broker: MosquittoBroker, client_id: str) -> int:
    """How many subscriptions the broker has acknowledged to ``client_id`` (its log survives restarts)."""
    return broker.log_file.read_text(errors="replace").count(f"Sending SUBACK to {client_id}")


def test_sink_subscribes_after_every_connect_and_bounds_its_inbound_queue(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "b") as broker:
        config = MqttConfig(
            host="127.0.0.1", port=broker.port, reconnect=Backoff(initial_s=0.1, max_s=0.5), close_timeout_s=2
        )
        spool = Spool(tmp_path / "spool.sqlite", 100, 1 << 20)
        sink = MqttSink(config, spool, device_id="hall", subscribe=TOPICS.command, inbox_size=3).start()
        pub = Subscriber(broker, ["unused/#"])  # a second client, to publish with
        try:
            pub.start()
            wait_until(lambda: subacks(broker, sink.client_id) == 1, what="the sink's subscription")
            pub.client.publish(TOPICS.command, b"one", qos=1).wait_for_publish(5)
            got: list[Message] = []
            wait_until(lambda: got.extend(sink.receive()) or got, what="first command")
            assert [(m.topic, m.payload, m.retain) for m in got] == [(TOPICS.command, b"one", False)]

            broker.restart()  # no persistence: the subscription must be made again
            wait_until(lambda: subacks(broker, sink.client_id) == 2, what="subscribed again after the restart")
            wait_until(pub.client.is_connected, what="publisher back")
            for i in range(5):  # a queue of 3 that nobody drains: two are dropped and counted
                pub.client.publish(TOPICS.command, f"m{i}".encode(), qos=1).wait_for_publish(5)
            wait_until(lambda: sink.stats().inbound_dropped == 2, what="two dropped")
            assert [m.payload for m in sink.receive()] == [b"m0", b"m1", b"m2"]
            assert sink.receive() == []
        finally:
            pub.stop()
            sink.close()
            spool.close()


def documented_acl() -> str:
    """The ACL block of docs/mqtt-commands.md, as a user would copy it."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "mqtt-commands.md").read_text()
    block = text.split("<!-- acl:", 1)[1].split("```", 2)[1]
    return block.lstrip("\n")


def test_the_documented_acl_lets_only_the_home_automation_user_command_the_device(tmp_path: Path) -> None:
    users = {"facelite": "dev-pw", "homeassistant": "ha-pw", "guest": "guest-pw"}
    with MosquittoBroker(tmp_path / "b", users=users, acl=documented_acl()) as broker:
        config = MqttConfig(
            host="127.0.0.1", port=broker.port, username="facelite", password_env="PW",
            reconnect=Backoff(initial_s=0.1, max_s=0.5), close_timeout_s=2,
        )  # fmt: skip
        spool = Spool(tmp_path / "spool.sqlite", 100, 1 << 20)
        sink = MqttSink(config, spool, device_id="hall", subscribe=TOPICS.command, environ={"PW": "dev-pw"}).start()
        ha = Subscriber(broker, ["facelite/#", "homeassistant/#"], username="homeassistant", password="ha-pw")
        guest = Subscriber(broker, ["facelite/#"], username="guest", password="guest-pw")
        try:
            ha.start()
            guest.start()
            wait_until(lambda: subacks(broker, sink.client_id) == 1, what="the device's subscription")
            # Denied writes are acknowledged and dropped by mosquitto: once acked, they were judged.
            guest.client.publish(TOPICS.command, b"from-guest", qos=1).wait_for_publish(5)
            sink.publish(Message(TOPICS.command, b"from-device", qos=1))  # the device cannot command itself
            sink.publish(Message(TOPICS.command_reply + "/ha", b"reply", qos=1))
            sink.publish(Message(TOPICS.state, b"state", qos=1, retain=True))
            sink.publish(Message("homeassistant/sensor/facelite_hall/fps/config", b"{}", qos=1, retain=True))
            ha.wait_for(1, topic="homeassistant/sensor/facelite_hall/fps/config")
            ha.wait_for(1, topic=TOPICS.state)
            ha.wait_for(1, topic=TOPICS.command_reply + "/ha")
            ha.client.publish(TOPICS.command, b"from-ha", qos=1).wait_for_publish(5)
            got: list[Message] = []
            wait_until(lambda: got.extend(sink.receive()) or got, what="the home-automation user's command")
            time.sleep(0.3)
            got += sink.receive()
            assert [m.payload for m in got] == [b"from-ha"]
            assert guest.messages == []  # the guest reads nothing under facelite/
            assert [m.payload for m in ha.messages if m.topic == TOPICS.command] == [b"from-ha"]
        finally:
            ha.stop()
            guest.stop()
            sink.close()
            spool.close()
