"""Frame sources: the value types, the protocol, and the reconnect/fps-limit logic they share.

A source never raises from ``read()``: a lost camera, stream or folder is retried with exponential backoff
(clock and sleep are passed in), and what happens is visible in ``status``. An fps limit drops the frames of a
live camera or stream that come too soon (counted in ``dropped_fps``), but paces a file or folder: every frame
is delivered, each one period after the previous one. ``read()`` returns None only when
the source has ended: a file or folder was read to its end, ``close()`` was called, or the reconnect attempts
allowed by ``max_attempts`` were used up.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType

import numpy as np

from facelite.service.config import Backoff
from facelite.vision.frames import Frame, SourceState, SourceStatus

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class SourceLost(Exception):
    """Raised inside a source when its device, stream or folder is gone; read() turns it into a reconnect."""


class SourceEnded(SourceLost):
    """Raised inside a source that cannot come back (a broken video file): read() ends instead of retrying."""


class ReconnectingSource:
    """Shared read loop. Subclasses implement _open, _grab and _release; ``live`` sources reconnect at EOF."""

    live = True

    def __init__(
        self,
        name: str,
        *,
        fps_limit: float | None = None,
        backoff: Backoff | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep | None = None,
        max_attempts: int | None = None,
        rng: random.Random | None = None,
        pace: bool | None = None,
    ) -> None:
        self.name = name
        self._period = 1.0 / fps_limit if fps_limit else 0.0
        # Files and folders wait for their slot (None: pace unless live); a file played like a camera drops.
        self._pace = (not self.live) if pace is None else pace
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._closed = threading.Event()
        # The default sleep wakes up when close() is called from another thread.
        self._sleep: Sleep = sleep or self._closed.wait  # type: ignore[assignment]
        self._max_attempts = max_attempts
        self._rng = rng or random.Random()
        self._opened = False
        self._index = 0
        self._next_due: float | None = None
        self._skipped: dict[str, int] = {}
        self._status = SourceStatus(SourceState.CONNECTING)
        self._read_lock = threading.Lock()

    # -- subclass hooks ------------------------------------------------------------------------------------

    def _open(self) -> None:
        """Open the device/stream/folder; raise SourceLost(reason) if it is not there (yet)."""
        raise NotImplementedError

    def _grab(self) -> tuple[np.ndarray, float | None] | None:
        """Next image and its media time (None = use the clock); None at end; SourceLost when lost."""
        raise NotImplementedError

    def _release(self) -> None:
        """Free the device/stream; must be safe to call twice."""

    # -- public --------------------------------------------------------------------------------------------

    @property
    def status(self) -> SourceStatus:
        return self._status

    def _set(self, **changes: object) -> None:
        self._status = replace(self._status, **changes)  # type: ignore[arg-type]

    def skip(self, reason: str, what: str) -> None:
        """Count an unreadable item (file) by reason; logged once per item, never raised."""
        self._skipped[reason] = self._skipped.get(reason, 0) + 1
        self._set(skipped=MappingProxyType(dict(self._skipped)), detail=f"{what}: {reason}")
        log.warning("source %s: skipped %s: %s", self.name, what, reason)

    def read(self) -> Frame | None:
        with self._read_lock:
            try:
                return self._read()
            finally:
                if self._closed.is_set():
                    self._release_quietly()
                    self._end("closed")

    def _read(self) -> Frame | None:
        while not self._closed.is_set():
            if not self._opened:
                try:
                    self._open()
                except SourceEnded as exc:
                    self._end(str(exc))
                    return None
                except SourceLost as exc:
                    if not self._wait_before_retry(str(exc)):
                        return None
                    continue
                self._opened = True
                if self._status.attempt:
                    log.info("source %s: reconnected after %d attempt(s)", self.name, self._status.attempt)
                self._set(state=SourceState.CONNECTED, attempt=0)
            try:
                got = self._grab()
            except SourceEnded as exc:
                self._release_quietly()
                self._end(str(exc))
                return None
            except SourceLost as exc:
                self._release_quietly()
                if not self._wait_before_retry(str(exc)):
                    return None
                continue
            if got is None:
                if self.live:  # a camera or stream has no end: treat EOF as a lost connection
                    self._release_quietly()
                    if not self._wait_before_retry("stream ended"):
                        return None
                    continue
                self._end("end of source")
                return None
            image, media_ts = got
            index = self._index
            self._index += 1
            if self._period and self._pace and not self._wait_for_slot():
                break
            ts = self._clock() if media_ts is None else media_ts
            if self._period and not self._pace and not self._due(ts):
                self._set(dropped_fps=self._status.dropped_fps + 1)
                continue
            self._set(frames=self._status.frames + 1)
            return Frame(image=image, ts=ts, camera=self.name, index=index)
        self._end("closed")
        return None

    def _due(self, ts: float) -> bool:
        # Keep the average rate at the limit: the next slot is one period after the previous slot, unless the
        # source fell behind by more than a period (then restart the grid at this frame).
        if self._next_due is not None and ts + 1e-6 < self._next_due:
            return False
        if self._next_due is None or ts - self._next_due >= self._period:
            self._next_due = ts + self._period
        else:
            self._next_due += self._period
        return True

    def _wait_for_slot(self) -> bool:
        """Sleep until the next slot of the fps limit (on the source clock); False if closed meanwhile."""
        now = self._clock()
        if self._next_due is not None and now < self._next_due:
            self._sleep(self._next_due - now)
            if self._closed.is_set():
                return False
            now = max(self._clock(), self._next_due)
        self._due(now)
        return True

    def _wait_before_retry(self, reason: str) -> bool:
        self._opened = False
        attempt = self._status.attempt + 1
        if self._max_attempts is not None and attempt > self._max_attempts:
            self._end(f"gave up after {self._max_attempts} reconnect attempt(s): {reason}")
            return False
        if attempt == 1:
            log.warning("source %s: %s; reconnecting with backoff", self.name, reason)
        self._set(state=SourceState.RECONNECTING, attempt=attempt, detail=reason)
        self._sleep(self._backoff.delay(attempt, self._rng))
        return not self._closed.is_set()

    def _end(self, detail: str) -> None:
        if self._status.state == SourceState.ENDED:
            return  # keep the first reason (e.g. "gave up after 3 attempts"), not a later "closed"
        log.info("source %s ended: %s", self.name, detail)
        self._set(state=SourceState.ENDED, detail=detail)

    def _release_quietly(self) -> None:
        self._opened = False
        try:
            self._release()
        except Exception as exc:  # releasing a dead device must not break the loop
            log.debug("source %s: release failed: %s", self.name, exc)

    def close(self) -> None:
        self._closed.set()
        # If a read() is in progress (possibly sleeping), it releases on its way out.
        if self._read_lock.acquire(blocking=False):
            try:
                self._release_quietly()
                self._end("closed")
            finally:
                self._read_lock.release()

    def __enter__(self) -> ReconnectingSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
