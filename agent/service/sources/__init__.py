"""Frame sources behind one interface: camera index / V4L2 device, RTSP/HTTP stream, video file, image folder.

``open_source(spec)`` picks the class; ``open_camera(CameraConfig)`` does the same from the config.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from facelite.errors import ConfigError
from facelite.service.config import CameraConfig
from facelite.service.sources.base import ReconnectingSource, SourceEnded, SourceLost
from facelite.service.sources.camera import CameraSource
from facelite.service.sources.folder import FolderSource
from facelite.service.sources.stream import STREAM_SCHEMES, StreamSource, redact_url
from facelite.service.sources.video import VideoFileSource
from facelite.vision.frames import Frame, FrameSource, SourceState, SourceStatus

__all__ = [
    "CameraSource",
    "FolderSource",
    "Frame",
    "FrameSource",
    "ReconnectingSource",
    "SourceEnded",
    "SourceLost",
    "SourceState",
    "SourceStatus",
    "StreamSource",
    "VideoFileSource",
    "open_camera",
    "open_source",
    "redact_url",
]


def open_source(spec: int | str | Path, *, name: str = "camera", **kw: Any) -> ReconnectingSource:
    """Choose the source for ``spec``. Keyword options: fps_limit, backoff, clock, sleep, max_attempts, rng, pace.

    A file or folder that does not exist is a setup error (ConfigError); a camera or stream that is not there
    yet is not: it is retried with backoff, since devices and cameras come up late after a power cut.
    """
    if isinstance(spec, bool):
        raise ConfigError(f"camera source must be an index, device, URL, file or folder, not {spec!r}", name)
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return CameraSource(int(spec), name=name, **kw)
    text = str(spec)
    if text.startswith("/dev/"):
        return CameraSource(text, name=name, **kw)
    if m := re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", text):
        scheme = m.group(1).lower()
        if scheme in STREAM_SCHEMES:
            return StreamSource(text, name=name, **kw)
        if scheme != "file":
            raise ConfigError(
                f"unsupported stream scheme {scheme!r}", f"camera {name}: {redact_url(text)}",
                f"use one of {', '.join(STREAM_SCHEMES)}, a device, a file or a folder",
            )  # fmt: skip
        text = text[len("file://") :]
    path = Path(text).expanduser()
    if path.is_dir():
        return FolderSource(path, name=name, **kw)
    if path.is_file():
        return VideoFileSource(path, name=name, **kw)
    raise ConfigError("camera source not found", f"camera {name}: {path}", "give an existing video file or folder")


def open_camera(camera: CameraConfig, **kw: Any) -> ReconnectingSource:
    """The source for one [[cameras]] entry, with its fps limit and reconnect backoff.

    A file played in real time stands in for a camera, so its fps limit drops frames as a camera's would.
    """
    if camera.realtime:
        kw.setdefault("pace", False)
    return open_source(camera.source, name=camera.name, fps_limit=camera.fps_limit, backoff=camera.reconnect, **kw)
