"""MqttSink against a real mosquitto: topics, retain flags, availability, last will, outages, spool, TLS, auth."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker, Subscriber, free_port, make_tls_files
from helpers import wait_until

from facelite.service.config import Backoff, MqttConfig, TlsConfig
from facelite.service.messages import Message
from facelite.service.sinks.mqtt import MqttSink
from facelite.service.sinks.stdout import StdoutSink
from facelite.service.spool import Spool

REPO = Path(__file__).resolve().parents[1]
DEVICE = "dev1"
EVENTS = f"facelite/{DEVICE}/events"
STATE = f"facelite/{DEVICE}/state"
AVAILABILITY = f"facelite/{DEVICE}/availability"
FAST = Backoff(initial_s=0.1, max_s=0.5, jitter=0.5)


def event(i: int) -> Message:
    return Message(EVENTS, json.dumps({"seq": i}).encode(), qos=1, durable=True)


def seqs(received: list) -> list[int]:
    return [json.loads(m.payload)["seq"] for m in received if m.topic == EVENTS]


def first_seen(values: list[int]) -> list[int]:
    seen: set[int] = set()
    return [v for v in values if not (v in seen or seen.add(v))]


def mqtt_config(port: int, **kw: object) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=port, reconnect=FAST, close_timeout_s=5.0, **kw)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool.sqlite", max_messages=1000, max_bytes=1 << 20) as s:
        yield s


def run_child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def kill_child(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=10)


CHILD_SINK = """
    import json, sys, time
    from facelite.service.config import Backoff, MqttConfig
    from facelite.service.messages import Message
    from facelite.service.sinks.mqtt import MqttSink
    from facelite.service.spool import Spool
    port, spool_path, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    config = MqttConfig(host="127.0.0.1", port=port, reconnect=Backoff(initial_s=0.1, max_s=0.5))
    sink = MqttSink(config, Spool(spool_path, 1000, 1 << 20), device_id="dev1").start()
    for i in range(count):
        sink.publish(Message("facelite/dev1/events", json.dumps({"seq": i}).encode(), durable=True))
    if sys.argv[4] == "wait-connected":
        while not sink.connected:
            time.sleep(0.02)
    print("ready", flush=True)
    time.sleep(120)
"""


def test_topics_payloads_and_retain_flags(broker: MosquittoBroker, spool: Spool) -> None:
    with Subscriber(broker, ["facelite/#"]) as live:
        with MqttSink(mqtt_config(broker.port), spool, device_id=DEVICE) as sink:
            wait_until(lambda: sink.connected, what="connect")
            sink.publish(event(1))
            sink.publish(Message(STATE, b'{"faces": 0}', qos=1, retain=True))
            sink.publish(Message(f"facelite/{DEVICE}/presence/alice", b"home", qos=0, retain=False))
            got = live.wait_for(4)
            wait_until(lambda: sink.stats().published == 3, what="3 acknowledged publishes")
            stats = sink.stats()
            assert (stats.connected, stats.pending, stats.dropped, stats.discarded) == (True, 0, 0, 0)

            by_topic = {m.topic: m for m in got}
            assert by_topic[AVAILABILITY].payload == b"online"
            assert by_topic[EVENTS].payload == b'{"seq": 1}' and by_topic[EVENTS].qos == 1
            assert by_topic[STATE].payload == b'{"faces": 0}'
            assert by_topic[f"facelite/{DEVICE}/presence/alice"].payload == b"home"
            assert got[0].topic == AVAILABILITY  # "online" comes first, before anything else

            # A late subscriber sees exactly what was retained: availability and state, not the event.
            with Subscriber(broker, ["facelite/#"]) as late:
                retained = late.wait_for(2)
                time.sleep(0.3)
                assert {(m.topic, m.payload, m.retain) for m in late.messages} == {
                    (AVAILABILITY, b"online", True),
                    (STATE, b'{"faces": 0}', True),
                }
                assert len(retained) == 2


def test_online_only_after_connack_and_password_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    users = {"watcher": "w-secret", "device": "correct-horse-battery"}
    with (
        MosquittoBroker(tmp_path / "b", users=users) as broker,
        Subscriber(broker, [AVAILABILITY], username="watcher", password="w-secret") as watcher,
    ):
        cfg = mqtt_config(broker.port, username="device", password_env="FACELITE_TEST_PW")
        wrong = MqttSink(cfg, Spool(tmp_path / "a.sqlite", 10, 1 << 20), device_id=DEVICE, environ={
            "FACELITE_TEST_PW": "wrong-password-xyz"
        }).start()  # fmt: skip
        try:
            wait_until(lambda: wrong.stats().last_error is not None, what="a refused CONNACK")
            time.sleep(0.5)  # several refused attempts
            assert "refused" in (wrong.stats().last_error or "")
            assert not wrong.connected
            assert watcher.messages == []  # no "online" without an accepted CONNACK
        finally:
            wrong.close(timeout_s=1)

        good = MqttSink(cfg, Spool(tmp_path / "b.sqlite", 10, 1 << 20), device_id=DEVICE, environ={
            "FACELITE_TEST_PW": "correct-horse-battery"
        }).start()  # fmt: skip
        try:
            got = watcher.wait_for(1)
            assert (got[0].topic, got[0].payload) == (AVAILABILITY, b"online")
        finally:
            good.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "correct-horse-battery" not in logged and "wrong-password-xyz" not in logged


def test_last_will_offline_when_the_client_process_is_killed(broker: MosquittoBroker, tmp_path: Path) -> None:
    with Subscriber(broker, [AVAILABILITY]) as watcher:
        child = run_child(CHILD_SINK, str(broker.port), str(tmp_path / "child.sqlite"), "0", "wait-connected")
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            online = watcher.wait_for(1)
            assert online[0].payload == b"online"
            os.kill(child.pid, signal.SIGKILL)
            got = watcher.wait_for(2, timeout=10)
            assert [m.payload for m in got] == [b"online", b"offline"]
        finally:
            kill_child(child)
    with Subscriber(broker, [AVAILABILITY]) as late:
        (retained,) = late.wait_for(1)
        assert (retained.payload, retained.retain) == (b"offline", True)


def test_close_flushes_spool_then_publishes_offline(broker: MosquittoBroker, spool: Spool) -> None:
    with Subscriber(broker, ["facelite/#"]) as sub:
        sink = MqttSink(mqtt_config(broker.port), spool, device_id=DEVICE).start()
        for i in range(200):
            sink.publish(event(i))
        sink.close()
        got = sub.wait_for(202)  # online + 200 events + offline
        assert seqs(got) == list(range(200))
        assert (got[-1].topic, got[-1].payload) == (AVAILABILITY, b"offline")
        assert spool.pending == 0
        sink.publish(event(999))  # after close: must not raise


def test_broker_restart_mid_stream_loses_nothing_and_keeps_order(tmp_path: Path, spool: Spool) -> None:
    total = 150
    # The subscriber's persistent session survives the restart, so the check does not depend on whether the
    # subscriber or the sink reconnects first.
    broker = MosquittoBroker(tmp_path / "b", persistence=True).start()
    sub = Subscriber(broker, [EVENTS], client_id="persistent-watcher", clean_session=False).start()
    sink = MqttSink(mqtt_config(broker.port), spool, device_id=DEVICE).start()
    try:
        wait_until(lambda: sink.connected, what="connect")

        def produce() -> None:
            for i in range(total):
                sink.publish(event(i))
                time.sleep(0.01)

        producer = threading.Thread(target=produce)
        producer.start()
        wait_until(lambda: len(sub.messages) >= 30, what="first events")
        broker.stop()
        wait_until(lambda: not sink.connected, what="sink noticing the outage")
        time.sleep(0.4)  # events keep coming while the broker is down
        spooled_during_outage = spool.pending
        broker.start()
        producer.join()
        got = sub.wait_for(total, timeout=20)
        wait_until(lambda: spool.pending == 0, what="spool drained")
    finally:
        sink.close()
        sub.stop()
        broker.kill()
    values = seqs(got)
    assert spooled_during_outage > 0
    assert first_seen(values) == list(range(total))  # nothing lost, order kept
    assert sink.stats().reconnects >= 1
    assert sink.stats().dropped == 0


def test_retained_state_is_republished_after_broker_restart(broker: MosquittoBroker, spool: Spool) -> None:
    with MqttSink(mqtt_config(broker.port), spool, device_id=DEVICE) as sink:
        wait_until(lambda: sink.connected, what="connect")
        sink.publish(Message(STATE, b"old", retain=True))
        sink.publish(Message(STATE, b"latest", retain=True))
        wait_until(lambda: sink.stats().published == 2, what="state acknowledged")
        broker.restart()  # no persistence: the broker forgot every retained message
        wait_until(lambda: sink.stats().reconnects == 1 and sink.connected, what="reconnect")
        with Subscriber(broker, ["facelite/#"]) as late:
            late.wait_for(2)
            time.sleep(0.3)
            assert {(m.topic, m.payload, m.retain) for m in late.messages} == {
                (AVAILABILITY, b"online", True),
                (STATE, b"latest", True),
            }


def test_cleared_retained_topic_is_cleared_on_reconnect_and_never_republished(tmp_path: Path, spool: Spool) -> None:
    """An empty retained payload (a forgotten person) published while the broker is away clears the topic when it
    returns, and once acknowledged it leaves the sink's cache: later reconnects re-publish only the state."""
    person = f"facelite/{DEVICE}/person/ada"
    with MosquittoBroker(tmp_path / "persistent", persistence=True) as broker:
        with MqttSink(mqtt_config(broker.port), spool, device_id=DEVICE) as sink:
            wait_until(lambda: sink.connected, what="connect")
            sink.publish(Message(person, b'{"state": "home"}', retain=True))
            sink.publish(Message(STATE, b"state", retain=True))
            wait_until(lambda: sink.stats().published == 2, what="presence and state acknowledged")
            broker.stop()  # the broker persists the retained presence
            wait_until(lambda: not sink.connected, what="disconnect")
            sink.publish(Message(person, b"", retain=True))  # forgotten while the broker is away
            broker.start()
            # After CONNACK the cache goes out: the state and the clearing of the person, nothing else.
            wait_until(lambda: sink.connected and sink.stats().published == 4, 20, what="cache re-published")
            with Subscriber(broker, ["facelite/#"]) as late:
                late.wait_for(2)
                time.sleep(0.3)
                assert {(m.topic, m.payload) for m in late.messages} == {(AVAILABILITY, b"online"), (STATE, b"state")}
            broker.restart()
            wait_until(lambda: sink.stats().reconnects == 2 and sink.connected, 20, what="second reconnect")
            wait_until(lambda: sink.stats().published == 5, what="state re-published")
            time.sleep(0.5)
            assert sink.stats().published == 5  # the state alone: the acknowledged clearing was not sent again
            with Subscriber(broker, ["facelite/#"]) as late:
                late.wait_for(2)
                time.sleep(0.3)
                assert {(m.topic, m.payload) for m in late.messages} == {(AVAILABILITY, b"online"), (STATE, b"state")}


def test_purge_spool_erases_undelivered_events_of_a_person(broker: MosquittoBroker, spool: Spool) -> None:
    sink = MqttSink(mqtt_config(broker.port), spool, device_id=DEVICE)  # not started yet: events stay spooled
    try:
        for i, person in enumerate(["ada", "bob", "ada"]):
            sink.publish(Message(EVENTS, json.dumps({"seq": i, "person": person}).encode(), durable=True))
        assert sink.purge_spool(lambda m: json.loads(m.payload)["person"] == "ada") == 2
        assert sink.stats().pending == 1
        with Subscriber(broker, [EVENTS]) as live:
            sink.start()
            wait_until(lambda: sink.stats().pending == 0, 20, what="spool drained")
            live.wait_for(1)
            time.sleep(0.3)
            assert [json.loads(m.payload) for m in live.messages] == [{"seq": 1, "person": "bob"}]
    finally:
        sink.close()


def test_spool_overflow_while_offline_drops_oldest_and_counts(tmp_path: Path) -> None:
    # The watcher's persistent session is registered before the outage, so it gets every event the sink
    # delivers after the broker comes back, whoever reconnects first.
    broker = MosquittoBroker(tmp_path / "b", persistence=True).start()
    sub = Subscriber(broker, [EVENTS], client_id="overflow-watcher", clean_session=False).start()
    broker.stop()
    spool = Spool(tmp_path / "s.sqlite", max_messages=10, max_bytes=1 << 20)
    sink = MqttSink(mqtt_config(broker.port), spool, device_id=DEVICE).start()
    try:
        for i in range(30):
            sink.publish(event(i))
        sink.publish(Message(f"facelite/{DEVICE}/presence/bob", b"home"))  # not durable, not retained
        stats = sink.stats()
        assert (stats.connected, stats.pending, stats.dropped, stats.discarded) == (False, 10, 20, 1)
        broker.start()
        got = sub.wait_for(10, timeout=15)
        wait_until(lambda: sink.stats().pending == 0, what="spool drained")
        time.sleep(0.3)
        assert seqs(sub.messages) == list(range(20, 30))
        assert [m.payload for m in got] == [event(i).payload for i in range(20, 30)]
        assert sink.stats().dropped == 20
    finally:
        sink.close(timeout_s=1)
        spool.close()
        sub.stop()
        broker.kill()


def test_sigkilled_process_spool_is_delivered_by_the_next_one(tmp_path: Path) -> None:
    port = free_port()
    spool_path = tmp_path / "shared.sqlite"
    child = run_child(CHILD_SINK, str(port), str(spool_path), "25", "no-wait")
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    finally:
        kill_child(child)
    assert child.returncode == -signal.SIGKILL
    with (
        MosquittoBroker(tmp_path / "b", port=port) as broker,
        Subscriber(broker, [EVENTS]) as sub,
        Spool(spool_path, 1000, 1 << 20) as spool,
    ):
        assert spool.pending == 25
        with MqttSink(mqtt_config(port), spool, device_id=DEVICE):
            got = sub.wait_for(25)
            wait_until(lambda: spool.pending == 0, what="spool drained")
        assert seqs(got) == list(range(25))


def test_tls_with_ca_and_client_certificate(tmp_path: Path, spool: Spool) -> None:
    tls = make_tls_files(tmp_path / "tls")
    with (
        MosquittoBroker(tmp_path / "b", tls=tls, require_client_cert=True) as broker,
        Subscriber(broker, [EVENTS]) as sub,
    ):
        cfg = mqtt_config(broker.port, tls=TlsConfig(ca_file=tls.ca_cert, cert_file=tls.client_cert,
                                                     key_file=tls.client_key))  # fmt: skip
        with MqttSink(cfg, spool, device_id=DEVICE) as sink:
            sink.publish(event(7))
            got = sub.wait_for(1)
        assert seqs(got) == [7]
        # Without the CA the broker's certificate is not trusted: no connection, a clear reason, no exception.
        untrusted = MqttSink(
            mqtt_config(broker.port, tls=TlsConfig()), spool, device_id="other", client_id="untrusted"
        ).start()
        try:
            wait_until(lambda: untrusted.stats().last_error is not None, what="a TLS failure")
            assert "certificate verify failed" in (untrusted.stats().last_error or "")
            assert not untrusted.connected
        finally:
            untrusted.close(timeout_s=0.5)


def test_invalid_messages_are_refused_without_raising(broker: MosquittoBroker, spool: Spool) -> None:
    with MqttSink(mqtt_config(broker.port), spool, device_id=DEVICE) as sink:
        sink.publish(Message("facelite/dev1/#", b"x", durable=True))
        sink.publish(Message("", b"x"))
        sink.publish(Message(EVENTS, b"x", qos=3))
        stats = sink.stats()
        assert stats.rejected == 3 and stats.pending == 0
        assert "invalid" in (stats.last_error or "")


def test_stdout_sink_prints_json_lines_and_survives_a_closed_stream() -> None:
    stream = io.StringIO()
    sink = StdoutSink(stream)
    sink.publish(event(3))
    sink.publish(Message(STATE, b"plain text", retain=True))
    sink.publish(Message(f"facelite/{DEVICE}/crop", b"\xff\xd8\xff\x00", qos=0))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines == [
        {"topic": EVENTS, "qos": 1, "retain": False, "durable": True, "payload": {"seq": 3}},
        {"topic": STATE, "qos": 1, "retain": True, "payload_text": "plain text"},
        {"topic": f"facelite/{DEVICE}/crop", "qos": 0, "retain": False, "payload_b64": "/9j/AA=="},
    ]
    stream.close()
    sink.publish(event(4))  # closed stream (e.g. `| head` exited): counted, not raised
    stats = sink.stats()
    assert (stats.published, stats.dropped) == (3, 1)
