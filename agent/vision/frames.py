"""Frames and what delivers them: the value types every stage shares (the sources themselves are in
agent/service/sources)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Protocol

import numpy as np


@dataclass(frozen=True, eq=False)
class Frame:
    image: np.ndarray  # 8-bit BGR, HxWx3
    ts: float  # seconds: media time for files, the source clock for live sources and folders
    camera: str
    index: int  # position in the source (frames dropped by the fps limit still count), from 0


class SourceState(str, Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    ENDED = "ended"


@dataclass(frozen=True)
class SourceStatus:
    state: SourceState
    attempt: int = 0  # reconnect attempts in the current outage (0 when connected)
    frames: int = 0  # frames delivered by read()
    dropped_fps: int = 0  # live frames dropped to respect the fps limit (files and folders are paced instead)
    skipped: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))  # unreadable files, by reason
    detail: str = ""  # the last problem, for the state message and logs


class FrameSource(Protocol):
    name: str

    @property
    def status(self) -> SourceStatus: ...

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...

    def __enter__(self) -> FrameSource: ...

    def __exit__(self, *exc: object) -> None: ...
