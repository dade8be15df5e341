"""systemd's sd_notify protocol (READY, WATCHDOG, STOPPING, STATUS) without a dependency.

A no-op when not run under systemd (no NOTIFY_SOCKET), so the agent behaves the same elsewhere.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET")
        usec = env.get("WATCHDOG_USEC")
        # Ping at half the watchdog interval, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if usec and usec.isdigit() else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, state: str) -> None:
        if not self._address:
            return
        address = self._address
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(address)
                sock.sendall(state.encode())
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", state.split("=")[0], exc)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")
