"""The host's view of a freshly deployed agent: is it saying 'online', and is it publishing state again?

The watch subscribes to ``<base>/<device>/availability`` and ``<base>/<device>/state`` on the device's broker
BEFORE the device restarts. Retained messages from the previous run are delivered at once with the retain flag
set; anything published after our subscription arrives live (retain flag clear, MQTT 3.1.1 §3.3.1.3). So "fresh"
needs no clock agreement between host and device: a live 'online' and a live state message after the restart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from facelite.deploy.errors import HealthError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerTarget:
    host: str
    port: int
    base_topic: str
    device_id: str
    username: str | None = None
    password: str | None = None

    @property
    def availability(self) -> str:
        return f"{self.base_topic}/{self.device_id}/availability"

    @property
    def state(self) -> str:
        return f"{self.base_topic}/{self.device_id}/state"

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Seen:
    topic: str
    payload: bytes
    retained: bool
    at: float  # host monotonic clock


@dataclass(frozen=True)
class HealthReport:
    online_after_s: float
    state_after_s: float
    state: bytes


class HealthWatch:
    """Context manager: subscribed on entry; ``mark()`` then ``wait_healthy(mark)`` after each restart."""

    def __init__(
        self,
        target: BrokerTarget,
        *,
        client_factory: Callable[[], mqtt.Client] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = target
        self.clock = clock
        self._cond = threading.Condition()
        self._seen: list[Seen] = []
        self._subscribed = False
        self._marks: dict[int, float] = {}
        self._connect_error: str | None = None
        self.client = client_factory() if client_factory else self._default_client()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _default_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"facelite-deploy-{self.target.device_id}-{int(time.time() * 1000) % 100000}",
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        if self.target.username:
            client.username_pw_set(self.target.username, self.target.password)
        return client

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        if getattr(rc, "is_failure", False):
            with self._cond:
                self._connect_error = str(rc)
                self._cond.notify_all()
            return
        client.subscribe([(self.target.availability, 1), (self.target.state, 1)])

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, rcs: object, props: object) -> None:
        with self._cond:
            self._subscribed = True
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self._seen.append(Seen(msg.topic, bytes(msg.payload), bool(msg.retain), self.clock()))
            self._cond.notify_all()

    def __enter__(self) -> HealthWatch:
        try:
            self.client.connect(self.target.host, self.target.port, keepalive=30)
        except OSError as exc:
            raise HealthError(
                f"cannot reach the MQTT broker to watch the device: {exc.strerror or exc}",
                self.target.label,
                "check health.mqtt_host/health.mqtt_port (the broker as this host sees it)",
            ) from None
        self.client.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: self._subscribed or self._connect_error is not None, 15)
            error, ok = self._connect_error, self._subscribed
        if not ok:
            self.__exit__()
            raise HealthError(
                f"MQTT broker refused the health watch: {error or 'no subscription within 15 s'}",
                self.target.label,
                "check mqtt.username / mqtt.password_file",
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def mark(self) -> int:
        """A point in the message stream: only messages after it count for the next ``wait_healthy``."""
        with self._cond:
            self._marks[len(self._seen)] = self.clock()
            return len(self._seen)

    def _fresh(self, since: int) -> tuple[Seen | None, Seen | None]:
        """The first live 'online' after ``since`` and the first live state after that 'online'.

        The previous process may still publish live state until it is stopped; the new process says 'online'
        when it connects and only then publishes state, so a state counts only after the new 'online'.
        A state whose ``uptime_s`` is longer than the time since the mark is also from an older process.
        """
        online = state = None
        started = self._marks.get(since, 0.0)
        for seen in self._seen[since:]:
            if seen.retained:
                continue
            if online is None:
                if seen.topic == self.target.availability and seen.payload == b"online":
                    online = seen
            elif seen.topic == self.target.state and _uptime(seen.payload) <= seen.at - started + 2.0:
                state = seen
                break
        return online, state

    def wait_healthy(self, since: int, timeout_s: float) -> HealthReport:
        start = self.clock()
        deadline = start + timeout_s
        with self._cond:
            while True:
                online, state = self._fresh(since)
                if online and state:
                    return HealthReport(online.at - start, state.at - start, state.payload)
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
            last_availability = next(
                (
                    s.payload.decode(errors="replace")
                    for s in reversed(self._seen)
                    if s.topic == self.target.availability
                ),
                None,
            )
        if not online:
            seen = f" (last availability: {last_availability!r})" if last_availability else " (nothing published)"
            raise HealthError(f"no live 'online' on {self.target.availability} within {timeout_s:.0f} s{seen}")
        raise HealthError(f"no fresh state message on {self.target.state} within {timeout_s:.0f} s after 'online'")


def _uptime(payload: bytes) -> float:
    """``uptime_s`` of a state payload; 0 when absent (then only the ordering after 'online' is checked)."""
    try:
        return float(json.loads(payload).get("uptime_s", 0.0))
    except (ValueError, TypeError, AttributeError):
        return 0.0
