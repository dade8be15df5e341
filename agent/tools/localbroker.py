"""A real Debian mosquitto on a free loopback port, for `make demo`, tests and local trials.

Generated config, stop/restart on the same port (outage tests), optional password file and TLS.
Tests import it through tests/broker.py and build their own fixtures, so each test decides whether it
needs persistence, a password file or TLS. Never used by the running agent itself.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

log = logging.getLogger(__name__)

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate (openssl CLI)."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=facelite-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-out", f"{name}.crt", *ext)  # fmt: skip
    return TlsFiles(
        folder / "ca.crt", folder / "server.crt", folder / "server.key", folder / "client.crt", folder / "client.key"
    )


class MosquittoBroker:
    """One mosquitto process on 127.0.0.1:<port>; ``restart()`` keeps the port (for outage tests)."""

    def __init__(
        self,
        folder: Path,
        *,
        port: int | None = None,
        persistence: bool = False,
        users: dict[str, str] | None = None,
        tls: TlsFiles | None = None,
        require_client_cert: bool = False,
        acl: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls
        self.log_file = self.folder / "mosquitto.log"
        self.config_file = self.folder / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            # Tests run as root in CI containers: without this mosquitto switches to user "mosquitto" and
            # cannot read the generated files.
            "user root",
            f"log_dest file {self.log_file}",
            "log_type all",
            "connection_messages true",
        ]
        if persistence:
            # Only for tests that must not depend on who reconnects first after a restart: a subscriber's
            # persistent session (and its queued QoS 1 messages) survives the broker restart.
            lines += ["persistence true", f"persistence_location {self.folder}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        if users:
            password_file = self.folder / "passwords"
            password_file.write_text("")
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(password_file), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:  # mosquitto's acl_file text (docs/mqtt-commands.md)
            acl_file = self.folder / "acl"
            acl_file.write_text(acl)
            lines.append(f"acl_file {acl_file}")
        if tls:
            lines += [f"cafile {tls.ca_cert}", f"certfile {tls.server_cert}", f"keyfile {tls.server_key}"]
            lines.append(f"require_certificate {'true' if require_client_cert else 'false'}")
        self.config_file.write_text("\n".join(lines) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        if self.running:
            return self
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_file)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {err.strip()} {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"mosquitto did not accept connections on port {self.port} in {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (mosquitto saves its persistence file on the way out)."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._close_pipes()
        self._proc = None
        # The port is free again only once the listener is gone; restart() relies on that.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    time.sleep(0.05)
            except OSError:
                return

    def restart(self) -> MosquittoBroker:
        self.stop()
        return self.start()

    def kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            self._close_pipes()
            self._proc = None

    def _close_pipes(self) -> None:
        if self._proc is not None and self._proc.stderr is not None:
            self._proc.stderr.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int


class Subscriber:
    """A paho client that records every message it receives; re-subscribes after each reconnect."""

    def __init__(
        self,
        broker: MosquittoBroker,
        topics: list[str],
        *,
        client_id: str = "",
        clean_session: bool = True,
        qos: int = 1,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.broker = broker
        self.topics = topics
        self.qos = qos
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._subscribed = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=clean_session,
        )
        if username:
            self.client.username_pw_set(username, password)
        if broker.tls:
            tls = broker.tls
            self.client.tls_set(ca_certs=str(tls.ca_cert), certfile=str(tls.client_cert), keyfile=str(tls.client_key))
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        if not getattr(rc, "is_failure", False):
            client.subscribe([(t, self.qos) for t in self.topics])

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, rcs: object, props: object) -> None:
        with self._cond:
            self._subscribed += 1
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self._messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), int(msg.qos)))
            self._cond.notify_all()

    def start(self, timeout: float = 10.0) -> Subscriber:
        self.client.connect("127.0.0.1", self.broker.port, keepalive=30)
        self.client.loop_start()
        self.wait_subscribed(1, timeout)
        return self

    def wait_subscribed(self, count: int, timeout: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._subscribed >= count, timeout):
                raise AssertionError(f"subscriber not subscribed to {self.topics} within {timeout} s")

    @property
    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    def wait_for(self, n: int, timeout: float = 10.0, topic: str | None = None) -> list[Received]:
        """Wait until at least ``n`` messages (on ``topic``, if given) arrived; returns them all."""

        def matching() -> list[Received]:
            return [m for m in self._messages if topic is None or m.topic == topic]

        with self._cond:
            if not self._cond.wait_for(lambda: len(matching()) >= n, timeout):
                got = matching()
                raise AssertionError(f"expected {n} message(s){f' on {topic}' if topic else ''}, got {len(got)}")
            return matching()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
