"""Network streams (rtsp://, http(s):// MJPEG or video) through OpenCV's FFmpeg backend.

Open and read timeouts keep a dead camera from blocking the frame loop forever; credentials in the URL are
never logged or shown in the status.
"""

from __future__ import annotations

import re
from typing import Any

import cv2

from facelite.service.sources.video import CaptureSource

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")


def redact_url(url: str) -> str:
    """rtsp://user:secret@host/x -> rtsp://user:***@host/x"""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*):[^@/]*@", r"\1:***@", url)


class StreamSource(CaptureSource):
    live = True

    def __init__(self, url: str, name: str = "stream", *, timeout_s: float = 10.0, **kw: Any) -> None:
        super().__init__(name, **kw)
        self.url = url
        self._timeout_ms = int(timeout_s * 1000)

    def _label(self) -> str:
        return f"stream {redact_url(self.url)}"

    def _capture(self) -> cv2.VideoCapture:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self._timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self._timeout_ms]
        return cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
