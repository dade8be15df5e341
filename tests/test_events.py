"""The MQTT contract: exact topics, payload keys and types, retain/QoS flags, presence, HA discovery.

The last test sends the built messages through a real mosquitto, so retain flags and topic validity
are checked by a broker, not by our own reading of the spec.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from broker import MosquittoBroker, Subscriber
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from facelite import __version__
from facelite.errors import ConfigError
from facelite.recognition.track import TrackEvent
from facelite.service.discovery import discovery_messages, person_discovery_message
from facelite.service.events import (
    EVENT_SCHEMA,
    FACE_CROP_FIELD,
    SCHEMA,
    EmbedderInfo,
    EventContext,
    SpoolStats,
    StateReport,
    Topics,
    availability_message,
    event_message,
    event_messages,
    forget_person_messages,
    last_person_message,
    names_person,
    slugify,
    state_message,
    utc_iso,
)
from facelite.service.messages import Message
from facelite.service.presence import Presence, PresenceTracker, presence_message
from facelite.vision.geometry import BBox

SHA = "ab" * 32
TOPICS = Topics("hall-pi")
CTX = EventContext(TOPICS, camera="front", embedder=EmbedderInfo("facenet-int8", SHA))
T = 1_764_097_200.123  # epoch seconds with milliseconds
FRAME = (640, 480)
EVENT_KEYS = set(EVENT_SCHEMA["required"])
VALIDATOR = jsonschema.Draft202012Validator(EVENT_SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def track_event(kind: str = "recognized", person: str | None = "alice", decision: str = "known") -> TrackEvent:
    return TrackEvent(
        type=kind,  # type: ignore[arg-type]
        track_id=7,
        ts=T,
        person=person,
        similarity=0.71234,
        margin=0.21,
        decision=decision,  # type: ignore[arg-type]
        bbox=BBox(64.0, 48.0, 192.0, 240.0),
        quality=0.876,
        first_seen=T - 1.0,
        last_seen=T,
    )


def payload(msg: Message) -> dict:
    return json.loads(msg.payload)


# -- topics and names --------------------------------------------------------------------------------
def test_topics_are_exactly_under_prefix_and_device() -> None:
    assert (TOPICS.availability, TOPICS.events, TOPICS.state, TOPICS.last_person) == (
        "facelite/hall-pi/availability",
        "facelite/hall-pi/events",
        "facelite/hall-pi/state",
        "facelite/hall-pi/last_person",
    )
    assert TOPICS.person("Anna Smith") == "facelite/hall-pi/person/anna_smith"
    assert Topics("d1", prefix="home/faces").events == "home/faces/d1/events"
    assert TOPICS.discovery("sensor", "fps") == "homeassistant/sensor/facelite_hall-pi/fps/config"


@pytest.mark.parametrize("device_id", ["", "a/b", "a+b", "a#", "has space", "x" * 65])
def test_bad_device_id_refused(device_id: str) -> None:
    with pytest.raises(ConfigError) as info:
        Topics(device_id)
    assert "device_id" in str(info.value) and "mqtt.device_id" not in str(info.value)  # the config's key


@pytest.mark.parametrize("prefix", ["", "/facelite", "facelite/", "a//b", "a/+", "#"])
def test_bad_prefix_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.base_topic"):
        Topics("d1", prefix=prefix)
    with pytest.raises(ConfigError, match=r"mqtt\.discovery_prefix"):
        Topics("d1", discovery_prefix=prefix)


@pytest.mark.parametrize(
    ("name", "slug"),
    [("Anna Smith", "anna_smith"), ("José Ñúñez", "jose_nunez"), ("a/b+c#d", "a_b_c_d"), ("  --Bob--  ", "bob")],
)
def test_slugify_examples(name: str, slug: str) -> None:
    assert slugify(name) == slug


def test_slug_of_non_latin_names_is_a_stable_distinct_hash() -> None:
    a, b = slugify("李雷"), slugify("王芳")
    assert re.fullmatch(r"p_[0-9a-f]{10}", a) and re.fullmatch(r"p_[0-9a-f]{10}", b)
    assert a != b and a == slugify("李雷")


@given(st.text(min_size=1, max_size=64))
def test_any_name_gives_one_safe_topic_level(name: str) -> None:
    slug = slugify(name)
    assert re.fullmatch(r"[a-z0-9_]+", slug)
    topic = TOPICS.person(name)
    assert topic.split("/") == ["facelite", "hall-pi", "person", slug]


def test_utc_iso_has_milliseconds_and_z() -> None:
    expected = datetime.fromtimestamp(T, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert utc_iso(T) == expected
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", utc_iso(0.0))


# -- availability ----------------------------------------------------------------------------------
def test_availability_is_retained_online_or_offline() -> None:
    assert availability_message(TOPICS, True) == Message("facelite/hall-pi/availability", b"online", 1, True, False)
    assert availability_message(TOPICS, False) == Message("facelite/hall-pi/availability", b"offline", 1, True, False)


# -- events ----------------------------------------------------------------------------------------
def test_event_message_flags_keys_and_values() -> None:
    fixed = uuid.UUID("12345678-1234-4678-9234-567812345678")
    msg = event_message(track_event(), CTX, frame_size=FRAME, gallery_version=12, now=T + 0.0456, new_id=lambda: fixed)
    assert (msg.topic, msg.qos, msg.retain, msg.durable) == ("facelite/hall-pi/events", 1, False, True)
    p = payload(msg)
    assert set(p) == EVENT_KEYS
    assert p["schema"] == SCHEMA == 1
    assert p["event_id"] == str(fixed)
    assert (p["type"], p["person"], p["decision"], p["track_id"], p["camera"]) == (
        "recognized",
        "alice",
        "known",
        7,
        "front",
    )
    assert p["timestamp"] == utc_iso(T)
    assert p["bbox"] == {"x": 64 / 640, "y": 48 / 480, "w": 128 / 640, "h": 192 / 480}
    assert (p["similarity"], p["margin"], p["quality"]) == (round(0.71234, 4), 0.21, 0.876)
    assert p["embedder"] == {"name": "facenet-int8", "sha256": SHA}
    assert p["gallery_version"] == 12
    assert p["latency_ms"] == pytest.approx(45.6, abs=0.05)
    VALIDATOR.validate(p)


def test_event_ids_are_fresh_uuid4() -> None:
    ids = {
        payload(event_message(track_event(), CTX, frame_size=FRAME, gallery_version=0, now=T))["event_id"]
        for _ in range(5)
    }
    assert len(ids) == 5 and all(uuid.UUID(i).version == 4 for i in ids)


@pytest.mark.parametrize(
    ("kind", "person", "decision"),
    [
        ("unknown", None, "unknown"),
        ("unknown", None, "ambiguous"),
        ("left", "alice", "known"),
        ("left", None, "unknown"),
    ],
)
def test_every_event_kind_matches_the_schema(kind: str, person: str | None, decision: str) -> None:
    p = payload(event_message(track_event(kind, person, decision), CTX, frame_size=FRAME, gallery_version=3, now=T))
    VALIDATOR.validate(p)
    assert (p["type"], p["person"], p["decision"]) == (kind, person, decision)


def test_face_crop_only_when_enabled() -> None:
    jpeg = b"\xff\xd8\xff\xe0 not really a jpeg \xff\xd9"
    off = payload(event_message(track_event(), CTX, frame_size=FRAME, gallery_version=0, now=T, face_jpeg=jpeg))
    assert FACE_CROP_FIELD not in off
    ctx_on = EventContext(TOPICS, "front", CTX.embedder, include_face_crop=True)
    on = payload(event_message(track_event(), ctx_on, frame_size=FRAME, gallery_version=0, now=T, face_jpeg=jpeg))
    assert set(on) == EVENT_KEYS | {FACE_CROP_FIELD}
    assert base64.b64decode(on[FACE_CROP_FIELD]) == jpeg
    VALIDATOR.validate(on)


def test_latency_never_negative_and_box_clipped_to_frame() -> None:
    e = track_event()
    e = TrackEvent(**{**e.__dict__, "bbox": BBox(-20.0, 400.0, 100.0, 600.0)})
    p = payload(event_message(e, CTX, frame_size=FRAME, gallery_version=0, now=T - 5))
    assert p["latency_ms"] == 0.0
    assert p["bbox"] == {"x": 0.0, "y": round(400 / 480, 4), "w": round(100 / 640, 4), "h": round(80 / 480, 4)}
    VALIDATOR.validate(p)


def test_last_person_only_for_recognized() -> None:
    msg = last_person_message(track_event(), CTX)
    assert msg is not None and (msg.topic, msg.qos, msg.retain, msg.durable) == (TOPICS.last_person, 1, True, False)
    assert payload(msg) == {
        "schema": 1,
        "person": "alice",
        "timestamp": utc_iso(T),
        "camera": "front",
        "similarity": 0.7123,
    }
    assert last_person_message(track_event("unknown", None, "unknown"), CTX) is None
    assert last_person_message(track_event("left"), CTX) is None
    both = event_messages(track_event(), CTX, frame_size=FRAME, gallery_version=0, now=T)
    assert [m.topic for m in both] == [TOPICS.events, TOPICS.last_person]
    left = event_messages(track_event("left"), CTX, frame_size=FRAME, gallery_version=0, now=T)
    assert [m.topic for m in left] == [TOPICS.events]


# -- presence --------------------------------------------------------------------------------------
def visit(kind: str, track_id: int, person: str, at: float) -> TrackEvent:
    e = track_event(kind, person)
    return TrackEvent(**{**e.__dict__, "track_id": track_id, "ts": at, "first_seen": at, "last_seen": at})


def test_presence_home_while_visits_open_away_after_timeout() -> None:
    p = PresenceTracker(["alice", "bob"], away_after_s=60)
    assert p.snapshot() == [Presence("alice", "away", None), Presence("bob", "away", None)]
    assert p.on_event(visit("recognized", 1, "alice", 100.0)) == [Presence("alice", "home", 100.0)]
    assert p.on_event(visit("recognized", 2, "alice", 110.0)) == []  # already home: no flood
    assert p.on_event(visit("left", 1, "alice", 120.0)) == []
    assert p.tick(1000.0) == []  # track 2 still open: home however long ago the last sighting
    assert p.on_event(visit("left", 2, "alice", 130.0)) == []
    assert p.tick(130.0 + 59.9) == []
    assert p.tick(130.0 + 60.0) == [Presence("alice", "away", 130.0)]
    assert p.tick(500.0) == []
    assert p.on_event(visit("recognized", 3, "alice", 600.0)) == [Presence("alice", "home", 600.0)]


def test_presence_last_seen_moves_while_in_view_throttled() -> None:
    p = PresenceTracker(["alice", "bob"], away_after_s=60, refresh_s=30)
    assert p.on_sighting(["alice"], 99.0) == []  # not announced yet: the recognized event comes first
    assert p.on_event(visit("recognized", 1, "alice", 100.0)) == [Presence("alice", "home", 100.0)]
    assert p.on_sighting(["alice", "bob"], 110.0) == []  # within 30 s of the last published last_seen; bob away
    assert p.on_sighting(["alice"], 129.9) == []
    assert p.on_sighting(["alice"], 130.0) == [Presence("alice", "home", 130.0)]
    assert p.on_sighting(["alice"], 145.0) == []
    assert p.tick(10_000.0) == []  # the visit is open: home
    # The visit's end publishes its final sighting, so the retained last_seen is exact, then away 60 s later.
    assert p.on_event(visit("left", 1, "alice", 150.0)) == [Presence("alice", "home", 150.0)]
    assert p.on_sighting(["alice"], 151.0) == []  # no open visit
    assert p.tick(209.9) == [] and p.tick(210.0) == [Presence("alice", "away", 150.0)]


def test_presence_restored_after_restart_keeps_home_and_last_seen() -> None:
    before = {"alice": Presence("alice", "home", 100.0), "gone": Presence("gone", "home", 90.0)}
    p = PresenceTracker(["alice", "bob"], away_after_s=60, restored=before, refresh_s=30)
    assert p.snapshot() == [Presence("alice", "home", 100.0), Presence("bob", "away", None)]  # gone: not enrolled
    assert p.tick(159.0) == []
    assert p.tick(160.0) == [Presence("alice", "away", 100.0)]  # the timeout still counts from the last sighting


def test_presence_ignores_unknown_faces_and_follows_gallery() -> None:
    p = PresenceTracker(["alice"], away_after_s=10)
    assert p.on_event(visit("unknown", 1, None, 1.0)) == []  # type: ignore[arg-type]
    assert p.set_people(["alice", "carol"]) == [Presence("carol", "away", None)]
    assert p.set_people(["carol"]) == []
    assert [x.person for x in p.snapshot()] == ["carol"]


def test_presence_refuses_negative_timeout() -> None:
    with pytest.raises(ConfigError, match=r"presence\.away_after_s"):
        PresenceTracker([], away_after_s=-1)


def test_presence_message_retained_per_person() -> None:
    msg = presence_message(TOPICS, Presence("Anna Smith", "home", T))
    assert (msg.topic, msg.qos, msg.retain, msg.durable) == ("facelite/hall-pi/person/anna_smith", 1, True, False)
    assert payload(msg) == {"schema": 1, "person": "Anna Smith", "state": "home", "last_seen": utc_iso(T)}
    assert payload(presence_message(TOPICS, Presence("bob", "away", None)))["last_seen"] is None


# -- state -----------------------------------------------------------------------------------------
def test_state_message_keys_and_types() -> None:
    report = StateReport(
        fps=7.8912,
        stage_ms={"embed": 35.123, "detect": 12.0},
        frames=1000,
        dropped_frames=4,
        skipped={"too_small": 12, "blurry": 3},
        spool=SpoolStats(pending=2, dropped=0),
        models={"detector": "blazeface-full/fp32", "embedder": "facenet/int8"},
        uptime_s=3600.04,
        camera="ok",
        matching={"threshold": 0.61234, "templates": 12, "expected_stranger_accept_rate": 0.001},
    )
    msg = state_message(TOPICS, report, now=T)
    assert (msg.topic, msg.qos, msg.retain, msg.durable) == ("facelite/hall-pi/state", 1, True, False)
    assert payload(msg) == {
        "schema": 1,
        "timestamp": utc_iso(T),
        "fps": 7.89,
        "stage_ms": {"detect": 12.0, "embed": 35.12},
        "frames": 1000,
        "dropped_frames": 4,
        "skipped": {"blurry": 3, "too_small": 12},
        "spool": {"pending": 2, "dropped": 0},
        "models": {"detector": "blazeface-full/fp32", "embedder": "facenet/int8"},
        "uptime_s": 3600.0,
        "camera": "ok",
        "matching": {"threshold": 0.61234, "templates": 12, "expected_stranger_accept_rate": 0.001},
    }


# -- Home Assistant discovery ----------------------------------------------------------------------
def test_discovery_topics_and_entity_configs() -> None:
    msgs = discovery_messages(TOPICS, ["Anna Smith", "bob"])
    node = "homeassistant/{}/facelite_hall-pi/{}/config"
    assert [m.topic for m in msgs] == [
        node.format("binary_sensor", "status"),
        node.format("sensor", "last_person"),
        node.format("sensor", "fps"),
        node.format("event", "visit"),
        node.format("device_tracker", "person_anna_smith"),
        node.format("device_tracker", "person_bob"),
    ]
    assert all(m.retain and m.qos == 1 and not m.durable for m in msgs)
    configs = {m.topic.split("/")[3]: payload(m) for m in msgs}
    device = {
        "identifiers": ["facelite_hall-pi"],
        "name": "facelite hall-pi",
        "manufacturer": "facelite",
        "model": "facelite agent",
        "sw_version": __version__,
    }
    assert all(c["device"] == device for c in configs.values())
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)

    status = configs["status"]
    assert (status["state_topic"], status["payload_on"], status["payload_off"], status["device_class"]) == (
        TOPICS.availability,
        "online",
        "offline",
        "connectivity",
    )
    assert "availability_topic" not in status  # offline must read "off", not "unavailable"
    last = configs["last_person"]
    assert (last["state_topic"], last["value_template"], last["availability_topic"]) == (
        TOPICS.last_person,
        "{{ value_json.person if value_json is defined else 'None' }}",  # also when emptied by a forget
        TOPICS.availability,
    )
    anna = configs["person_anna_smith"]
    assert anna["name"] == "Anna Smith"
    assert (anna["state_topic"], anna["value_template"], anna["payload_home"], anna["payload_not_home"]) == (
        TOPICS.person("Anna Smith"),
        "{{ value_json.state }}",
        "home",
        "away",
    )
    assert (anna["payload_available"], anna["payload_not_available"]) == ("online", "offline")
    visit = configs["visit"]
    assert (visit["state_topic"], visit["event_types"], visit["availability_topic"]) == (
        TOPICS.events,
        ["recognized", "unknown", "left"],
        TOPICS.availability,
    )
    for m in msgs:  # HA: node_id and object_id are [a-zA-Z0-9_-]
        assert re.fullmatch(r"homeassistant/[a-z_]+/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/config", m.topic)


def test_forget_clears_retained_discovery_and_presence() -> None:
    msgs = forget_person_messages(TOPICS, "Anna Smith")
    assert [(m.topic, m.payload, m.retain) for m in msgs] == [
        (person_discovery_message(TOPICS, "Anna Smith").topic, b"", True),
        (TOPICS.person("Anna Smith"), b"", True),
    ]
    named = forget_person_messages(TOPICS, "Anna Smith", last_person=True)
    assert [(m.topic, m.payload, m.retain) for m in named[2:]] == [(TOPICS.last_person, b"", True)]


def test_names_person_picks_only_events_of_those_people() -> None:
    anna = event_message(track_event("recognized", "Anna Smith"), CTX, frame_size=FRAME, gallery_version=1, now=T)
    bob = event_message(track_event("recognized", "bob"), CTX, frame_size=FRAME, gallery_version=1, now=T)
    stranger = event_message(track_event("unknown", None), CTX, frame_size=FRAME, gallery_version=1, now=T)
    assert [names_person(m, TOPICS, ["Anna Smith"]) for m in (anna, bob, stranger)] == [True, False, False]
    assert not names_person(Message(TOPICS.person("Anna Smith"), b'{"person": "Anna Smith"}'), TOPICS, ["Anna Smith"])
    assert not names_person(Message(TOPICS.events, b"\xff not json"), TOPICS, ["Anna Smith"])


# -- through a real broker -------------------------------------------------------------------------
@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker") as b:
        yield b


def publish_all(broker: MosquittoBroker, messages: list[Message]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="events-test-publisher")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        for m in messages:
            client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def retained_now(broker: MosquittoBroker) -> dict[str, bytes]:
    """What a client connecting now is given: retained messages, synced by a marker published after SUBACK."""
    with Subscriber(broker, ["facelite/#", "homeassistant/#", "sync/#"]) as sub:
        publish_all(broker, [Message("sync/marker", b"x", qos=1)])
        sub.wait_for(1, topic="sync/marker")
        got = sub.messages
    return {m.topic: m.payload for m in got if m.retain}


def test_contract_through_mosquitto(broker: MosquittoBroker) -> None:
    name = "Eve #1/+"  # every MQTT special character a name might carry
    presence = PresenceTracker([name], away_after_s=60)
    recognized = TrackEvent(**{**track_event().__dict__, "person": name})
    with Subscriber(broker, ["facelite/#", "homeassistant/#"]) as live:
        messages = [
            availability_message(TOPICS, True),
            *discovery_messages(TOPICS, [name]),
            *event_messages(recognized, CTX, frame_size=FRAME, gallery_version=1, now=T),
            *[presence_message(TOPICS, p) for p in presence.on_event(recognized)],
        ]
        publish_all(broker, messages)
        live.wait_for(len(messages))
        assert [m.topic for m in live.messages] == [m.topic for m in messages]
        [ev] = [m for m in live.messages if m.topic == TOPICS.events]
        assert payload(Message(ev.topic, ev.payload))["person"] == name

    retained = retained_now(broker)
    expected = {m.topic: m.payload for m in messages if m.retain}
    assert retained == expected
    assert TOPICS.events not in retained  # events are not retained: a late subscriber must not replay one
    assert json.loads(retained[TOPICS.person(name)])["state"] == "home"

    publish_all(broker, forget_person_messages(TOPICS, name))
    after = retained_now(broker)
    assert TOPICS.person(name) not in after
    assert person_discovery_message(TOPICS, name).topic not in after
    assert TOPICS.availability in after
