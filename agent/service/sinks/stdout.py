"""A sink that prints every message as one JSON line (``--dry-run``, or no broker configured).

JSON payloads are embedded as JSON (so ``| jq .payload`` works); other payloads as text, or base64 if binary.
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from facelite.service.messages import Message
from facelite.service.sinks.mqtt import SinkStats

log = logging.getLogger(__name__)


def message_json(message: Message) -> str:
    line: dict[str, Any] = {"topic": message.topic, "qos": message.qos, "retain": message.retain}
    if message.durable:
        line["durable"] = True
    try:
        line["payload"] = json.loads(message.payload)
    except (UnicodeDecodeError, ValueError):
        try:
            line["payload_text"] = message.payload.decode("utf-8")
        except UnicodeDecodeError:
            line["payload_b64"] = base64.b64encode(message.payload).decode("ascii")
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


class StdoutSink:
    """Writes messages as JSON lines to a text stream; never raises (a closed pipe counts as dropped)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        self._published = 0
        self._dropped = 0
        self._last_error: str | None = None

    def publish(self, message: Message) -> None:
        try:
            text = message_json(message)
            with self._lock:
                self._stream.write(text + "\n")
                self._stream.flush()
                self._published += 1
        except (OSError, ValueError) as exc:  # BrokenPipe (| head), closed stream
            with self._lock:
                if self._last_error is None:
                    log.warning("stdout sink: cannot write (%s); messages are dropped", exc)
                self._dropped += 1
                self._last_error = str(exc)

    def purge_spool(self, match: Callable[[Message], bool]) -> int:
        """Nothing is held back here: every message was printed at once."""
        return 0

    def stats(self) -> SinkStats:
        with self._lock:
            return SinkStats(
                connected=True,
                published=self._published,
                pending=0,
                dropped=self._dropped,
                discarded=0,
                rejected=0,
                reconnects=0,
                last_error=self._last_error,
            )

    def close(self, timeout_s: float | None = None) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> StdoutSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
