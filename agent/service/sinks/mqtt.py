"""MQTT sink: durable events through a disk spool, retained state re-published after every reconnect.

Delivery rules:
- Durable messages (events) are written to the Spool first and sent from it in id order at QoS >= 1; a message
  leaves the spool only when the broker PUBACKs it. After a reconnect the spool is re-sent from its oldest
  unacked message, so nothing is lost and order is kept (a message in flight when the link dropped may arrive
  twice: at-least-once, as QoS 1 promises).
- Non-durable retained messages (state, presence) are remembered, latest per topic, and re-published after every
  CONNACK: a broker restarted without persistence gets them back. An empty retained payload clears a topic on the
  broker (a forgotten person): it replaces the topic's entry and is itself dropped once the broker has
  acknowledged it, so no reconnect re-publishes what was cleared. Non-durable, non-retained messages are
  best-effort: sent when connected, counted as discarded otherwise.
- Availability: the last will is "offline" (retained), "online" (retained) is published only from the CONNACK
  handler, and ``close()`` publishes "offline" itself before a clean DISCONNECT (which cancels the will).

Threading: one thread owns the paho client and does all network I/O with paho's external-loop API
(``loop_read``/``loop_write``/``loop_misc`` around our own ``select``), so paho is never used from two threads.
``publish()`` only touches the spool and a locked outbox, then wakes that thread through a socketpair.
Every connection attempt uses a fresh paho client: paho's own resend queue never competes with the spool.

Inbound (MQTT commands, only when ``subscribe`` names a topic): subscribed after every CONNACK (a fresh client and
a clean session each time), and each message received is put on a bounded queue that the frame loop drains with
``receive()``; when it is full the message is dropped and counted. Nothing is executed on the network thread.

Size: one state machine (connect, drain the spool, publish with acknowledgements, reconnect with backoff, close with
a deadline) on one thread; splitting it would spread the states over files.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from facelite.errors import ConfigError
from facelite.service.config import MqttConfig
from facelite.service.events import OFFLINE_PAYLOAD as OFFLINE
from facelite.service.events import ONLINE_PAYLOAD as ONLINE
from facelite.service.events import Topics
from facelite.service.messages import Message
from facelite.service.spool import Spool

log = logging.getLogger(__name__)

_OFFLINE_GRACE_S = 1.0  # after the close deadline, how long to wait for the "offline" PUBACK

ClientFactory = Callable[[str], mqtt.Client]


def paho_client_factory(client_id: str) -> mqtt.Client:
    """A paho 2.x client speaking MQTT 3.1.1 with a clean session (the spool, not the broker, keeps our backlog)."""
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv311,
        clean_session=True,
    )


@dataclass(frozen=True)
class SinkStats:
    connected: bool
    published: int  # acknowledged by the broker (QoS >= 1) or written to the socket (QoS 0)
    pending: int  # durable messages waiting in the spool
    dropped: int  # durable messages lost: spool overflow (oldest first) or disk full
    discarded: int  # non-durable, non-retained messages published while offline
    rejected: int  # invalid messages (bad topic/QoS) refused without sending
    reconnects: int  # connections established after the first one
    last_error: str | None
    inbound_dropped: int = 0  # received commands dropped because the inbound queue was full


def _valid(message: Message) -> str | None:
    if not message.topic or any(c in message.topic for c in "+#\0"):
        return f"invalid topic {message.topic!r}"
    if message.qos not in (0, 1, 2):
        return f"invalid QoS {message.qos}"
    return None


class MqttSink:
    """Publishes Messages to one broker; ``publish`` never raises and never blocks on the network."""

    def __init__(
        self,
        config: MqttConfig,
        spool: Spool,
        *,
        device_id: str,
        client_id: str | None = None,
        client_factory: ClientFactory = paho_client_factory,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        environ: Mapping[str, str] | None = None,
        max_inflight: int = 20,
        connack_timeout_s: float = 10.0,
        subscribe: str | None = None,
        inbox_size: int = 32,
    ) -> None:
        self._config = config
        self._spool = spool
        self.client_id = client_id or config.client_id or f"facelite-{device_id}"
        self.availability_topic = Topics(device_id, config.base_topic).availability
        self._factory = client_factory
        self._clock = clock
        self._rng = rng or random.Random()
        self._max_inflight = max_inflight
        self._connack_timeout_s = connack_timeout_s
        # Setup problems (missing password, unreadable CA) fail here, at start-up, with their key path.
        self._password = config.password(os.environ if environ is None else environ)
        self._tls = self._tls_context(config)

        self._lock = threading.Lock()
        self._retained: dict[str, Message] = {}
        self._outbox: collections.deque[Message] = collections.deque()
        self._connected = False
        self._published = 0
        self._discarded = 0
        self._rejected = 0
        self._connects = 0
        self._last_error: str | None = None
        self._subscribe = subscribe
        self._inbox: queue.Queue[Message] = queue.Queue(maxsize=inbox_size)
        self._inbound_dropped = 0

        # Loop-thread state (touched only by the thread that owns the client).
        self._client: mqtt.Client | None = None
        self._inflight: dict[int, int] = {}  # paho mid -> spool id
        self._user_mids: set[int] = set()  # mids of non-durable user messages (for the published counter)
        self._clearing: dict[int, Message] = {}  # mid -> empty retained message, dropped from _retained once acked
        self._acked: list[int] = []
        self._sent_upto = 0  # highest spool id handed to the current connection
        self._offline_mid: int | None = None
        self._offline_acked = False
        self._offline_deadline = 0.0
        self._failures = 0

        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._closing = threading.Event()
        self._close_deadline = 0.0
        self._close_warned = False  # "closing with N event(s) still spooled" is said once
        self._thread = threading.Thread(target=self._run, name="mqtt-sink", daemon=True)

    @staticmethod
    def _tls_context(config: MqttConfig) -> ssl.SSLContext | None:
        if config.tls is None:
            return None
        tls = config.tls
        try:
            context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"CA file cannot be loaded: {exc}", f"mqtt.tls.ca_file {tls.ca_file}") from None
        if tls.cert_file and tls.key_file:
            try:
                context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"client certificate/key cannot be loaded: {exc}", f"mqtt.tls.cert_file {tls.cert_file}"
                ) from None
        return context

    # -- public API ----------------------------------------------------------------------------------------

    def start(self) -> MqttSink:
        self._thread.start()
        return self

    def __enter__(self) -> MqttSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(self, message: Message) -> None:
        """Queue a message for delivery. Never raises: problems are counted and logged."""
        try:
            problem = _valid(message)
            if problem:
                with self._lock:
                    self._rejected += 1
                    self._last_error = problem
                log.warning("mqtt: message refused: %s", problem)
                return
            if message.durable:
                self._spool.put(message)  # counts its own drops (overflow, disk full)
            else:
                with self._lock:
                    if message.retain:
                        self._retained[message.topic] = message
                    if self._connected:
                        self._outbox.append(message)
                    elif not message.retain:
                        self._discarded += 1
            self._wake()
        except Exception:  # the frame loop must survive any sink bug
            log.exception("mqtt: publish failed unexpectedly")

    def purge_spool(self, match: Callable[[Message], bool]) -> int:
        """Erase spooled (undelivered) messages for which ``match`` is true; returns how many. Never raises."""
        try:
            return self._spool.purge(match)
        except Exception:
            log.exception("mqtt: spool purge failed unexpectedly")
            return 0

    def receive(self) -> list[Message]:
        """Messages received on the subscribed topic since the last call (never blocks, never raises)."""
        out: list[Message] = []
        while True:
            try:
                out.append(self._inbox.get_nowait())
            except queue.Empty:
                return out

    def stats(self) -> SinkStats:
        spool = self._spool.stats()
        with self._lock:
            return SinkStats(
                connected=self._connected,
                published=self._published,
                pending=spool.pending,
                dropped=spool.dropped,
                discarded=self._discarded,
                rejected=self._rejected,
                reconnects=max(0, self._connects - 1),
                last_error=self._last_error,
                inbound_dropped=self._inbound_dropped,
            )

    @property
    def connected(self) -> bool:
        return self._connected

    def close(self, timeout_s: float | None = None) -> None:
        """Publish "offline", flush the spool for at most ``timeout_s`` (config close_timeout_s), disconnect."""
        timeout = self._config.close_timeout_s if timeout_s is None else timeout_s
        self._close_deadline = self._clock() + timeout
        self._closing.set()
        self._wake()
        if self._thread.is_alive():
            # The loop checks the deadline every pass; a blocking TCP/TLS connect adds at most its own timeout.
            self._thread.join(timeout + _OFFLINE_GRACE_S + self._connack_timeout_s + 1.0)
            if self._thread.is_alive():
                log.warning("mqtt: sink thread did not stop in time")
        self._wake_r.close()
        self._wake_w.close()

    # -- loop thread ---------------------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (buffer full) or closing

    def _wait(self, seconds: float) -> None:
        """Sleep for the backoff delay, but return at once when closing."""
        deadline = self._clock() + seconds
        while True:
            remaining = deadline - self._clock()
            if self._closing.is_set():
                # Closing with events spooled: keep the backoff, but never past the close deadline.
                remaining = min(remaining, self._close_deadline - self._clock())
            if remaining <= 0:
                return
            select.select([self._wake_r], [], [], min(remaining, 1.0))
            self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _retry_while_closing(self) -> bool:
        """Closing while the broker is away and events are still spooled: keep trying until the deadline."""
        pending = self._spool.pending
        if pending and self._clock() < self._close_deadline:
            return True
        if pending and not self._close_warned:
            self._close_warned = True
            log.warning(
                "mqtt: closing with %d event(s) still spooled; they are delivered after the next start", pending
            )
        return False

    def _run(self) -> None:
        while not self._closing.is_set() or self._retry_while_closing():
            try:
                established = self._session()
            except Exception as exc:  # never let the thread die: a dead sink thread silently loses events
                log.exception("mqtt: unexpected error in the network loop")
                self._note_failure(f"internal error: {exc}")
                established = False
            if established:
                self._failures = 0
            if self._closing.is_set() and not self._retry_while_closing():
                break
            self._failures += 1
            delay = self._config.reconnect.delay(self._failures, self._rng)
            log.debug("mqtt: reconnect attempt %d in %.1f s", self._failures, delay)
            self._wait(delay)

    def _new_client(self) -> mqtt.Client:
        client = self._factory(self.client_id)
        client.will_set(self.availability_topic, OFFLINE, qos=1, retain=True)
        if self._config.username:
            client.username_pw_set(self._config.username, self._password)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        client.max_inflight_messages_set(self._max_inflight)
        client.connect_timeout = self._connack_timeout_s
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _session(self) -> bool:
        """One connection: connect, run until it drops (or close() finishes). True if CONNACK was accepted."""
        client = self._new_client()
        self._client = client
        self._inflight.clear()
        self._user_mids.clear()
        self._clearing.clear()
        self._sent_upto = 0
        self._offline_mid = None
        self._offline_acked = False
        established = False
        cfg = self._config
        try:
            client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive)
        except Exception as exc:  # OSError, ssl errors, DNS: all mean "try again later"
            self._note_failure(f"cannot connect to {cfg.host}:{cfg.port}: {exc}")
            self._client = None
            return False
        started = self._clock()
        try:
            while True:
                sock = client.socket()
                if sock is None:
                    break
                if self._connected:
                    established = True
                if self._closing.is_set() and self._finish_close(client):
                    break
                if not self._connected and self._clock() - started > self._connack_timeout_s:
                    self._note_failure(f"no CONNACK from {cfg.host}:{cfg.port} in {self._connack_timeout_s:.0f} s")
                    break
                if self._connected:
                    self._flush_outbox(client)
                    self._pump(client)
                # TLS may hold decrypted bytes select() cannot see: read them without waiting.
                ready = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
                wlist = [sock] if client.want_write() else []
                readable, writable, _ = select.select([sock, self._wake_r], wlist, [], 0 if ready else 1.0)
                if self._wake_r in readable:
                    self._drain_wake()
                if (ready or sock in readable) and client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                if sock in writable and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                if client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                self._ack_delivered()
        finally:
            self._ack_delivered()
            established = established or self._connected
            self._end_session(client)
        return established

    def _end_session(self, client: mqtt.Client) -> None:
        with self._lock:
            was_connected = self._connected
            self._connected = False
            dropped = [m for m in self._outbox if not m.retain]
            self._discarded += len(dropped)
            self._outbox.clear()
        sock = client.socket()
        if sock is not None:
            # Abort without DISCONNECT, so the broker publishes our will ("offline").
            try:
                sock.close()
            except OSError:
                pass
        self._client = None
        if was_connected and not self._closing.is_set():
            log.warning("mqtt: connection to %s:%d lost; events are spooled", self._config.host, self._config.port)

    def _finish_close(self, client: mqtt.Client) -> bool:
        """Closing: drain the spool until done or the deadline, say "offline", DISCONNECT. True = done."""
        now = self._clock()
        if not self._connected:
            # Still waiting for CONNACK: worth it until the deadline, there may be spooled events to flush.
            return now >= self._close_deadline
        if self._offline_mid is None:
            drained = self._spool.pending == 0 and not self._inflight
            if not drained and now < self._close_deadline:
                return False
            if not drained:
                log.warning("mqtt: closing with %d event(s) still spooled", self._spool.pending)
            # "offline" goes last, after the events: the device was online while it sent them.
            info = client.publish(self.availability_topic, OFFLINE, qos=1, retain=True)
            self._offline_mid = info.mid
            self._offline_deadline = now + _OFFLINE_GRACE_S
            return False
        if self._offline_acked or now >= self._offline_deadline:
            client.disconnect()  # clean: the broker discards the will; "offline" was published above
            while client.want_write() and client.loop_write() == MQTTErrorCode.MQTT_ERR_SUCCESS:
                pass
            with self._lock:
                self._connected = False
            return True
        return False

    def _flush_outbox(self, client: mqtt.Client) -> None:
        while True:
            with self._lock:
                if not self._outbox:
                    return
                message = self._outbox.popleft()
            info = client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._track(message, info.mid)

    def _pump(self, client: mqtt.Client) -> None:
        """Send spooled messages after the last one sent on this connection, up to the in-flight window."""
        room = self._max_inflight - len(self._inflight)
        if room <= 0:
            return
        for item in self._spool.peek(room, after=self._sent_upto):
            message = item.message
            try:
                # Durable means acknowledged: QoS 0 would give no PUBACK to remove it from the spool on.
                info = client.publish(message.topic, message.payload, qos=max(1, message.qos), retain=message.retain)
            except ValueError as exc:  # e.g. payload over the MQTT limit: it can never be sent, do not block on it
                log.error("mqtt: spooled message %d cannot be sent (%s); dropped", item.id, exc)
                with self._lock:
                    self._rejected += 1
                self._acked.append(item.id)
                self._sent_upto = item.id
                continue
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # connection lost: the session loop notices and the spool is re-sent after reconnect
            self._inflight[info.mid] = item.id
            self._sent_upto = item.id

    def _track(self, message: Message, mid: int) -> None:
        # paho reports a QoS 0 publish from inside publish() itself, before we know its mid: count it here.
        if message.qos == 0:
            with self._lock:
                self._published += 1
            if message.retain and not message.payload:
                self._cleared(message)
        else:
            self._user_mids.add(mid)
            if message.retain and not message.payload:
                self._clearing[mid] = message

    def _cleared(self, message: Message) -> None:
        """The broker has cleared this topic: forget it, unless something newer was published there since."""
        with self._lock:
            if self._retained.get(message.topic) is message:
                del self._retained[message.topic]

    def _ack_delivered(self) -> None:
        if self._acked:
            ids, self._acked = self._acked, []
            self._spool.ack(ids)

    def _note_failure(self, text: str) -> None:
        with self._lock:
            self._last_error = text
        # The first failure of an outage is worth a warning; the retries are not.
        if self._failures == 0:
            log.warning("mqtt: %s (retrying with backoff)", text)
        else:
            log.debug("mqtt: %s (attempt %d)", text, self._failures + 1)

    # -- paho callbacks (run inside loop_read on the loop thread) -------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if client is not self._client:
            return
        if reason_code.is_failure:
            self._note_failure(f"broker refused the connection: {reason_code}")
            return
        with self._lock:
            self._connected = True
            self._connects += 1
            retained = list(self._retained.values())
            connects = self._connects
        log.info(
            "mqtt: connected to %s:%d as %s%s",
            self._config.host,
            self._config.port,
            self.client_id,
            f" (reconnect {connects - 1})" if connects > 1 else "",
        )
        if self._subscribe is not None:
            client.subscribe(self._subscribe, qos=1)  # a clean session forgets subscriptions: every CONNACK
        # Only now, after CONNACK, is "online" true.
        client.publish(self.availability_topic, ONLINE, qos=1, retain=True)
        for message in retained:
            info = client.publish(message.topic, message.payload, qos=message.qos, retain=True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._track(message, info.mid)
        self._pump(client)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if client is self._client:
            with self._lock:
                self._connected = False

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        if client is not self._client:
            return
        spool_id = self._inflight.pop(mid, None)
        if mid == self._offline_mid:
            self._offline_acked = True
        is_user = spool_id is not None or mid in self._user_mids
        self._user_mids.discard(mid)
        cleared = self._clearing.pop(mid, None)
        if cleared is not None:
            self._cleared(cleared)
        if spool_id is not None:
            self._acked.append(spool_id)
        if is_user:
            with self._lock:
                self._published += 1

    def _on_message(self, client: mqtt.Client, userdata: Any, message: Any) -> None:
        if client is not self._client:
            return
        try:
            inbound = Message(str(message.topic), bytes(message.payload), qos=0, retain=bool(message.retain))
            self._inbox.put_nowait(inbound)
        except queue.Full:
            with self._lock:
                self._inbound_dropped += 1
                dropped = self._inbound_dropped
            if dropped == 1 or dropped % 100 == 0:
                log.warning("mqtt: inbound queue full: %d command(s) dropped so far", dropped)
        except Exception:  # a strange message must not take the connection down
            log.exception("mqtt: inbound message dropped")
