"""Video files, and the OpenCV capture base shared by cameras and streams."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facelite.errors import ImageError
from facelite.service.sources.base import ReconnectingSource, SourceEnded, SourceLost
from facelite.vision.imageio import to_bgr

log = logging.getLogger(__name__)


class CaptureSource(ReconnectingSource):
    """A cv2.VideoCapture behind the reconnect loop. Subclasses say how to open it."""

    def __init__(self, name: str, **kw: Any) -> None:
        super().__init__(name, **kw)
        self._cap: cv2.VideoCapture | None = None

    def _capture(self) -> cv2.VideoCapture:
        raise NotImplementedError

    def _label(self) -> str:
        raise NotImplementedError

    def _open(self) -> None:
        try:
            cap = self._capture()
        except cv2.error as exc:
            raise SourceLost(f"{self._label()} cannot be opened: {exc}") from None
        if not cap.isOpened():
            cap.release()
            raise SourceLost(f"{self._label()} cannot be opened")
        self._cap = cap

    def _read_capture(self) -> np.ndarray | None:
        assert self._cap is not None
        try:
            ok, image = self._cap.read()
        except cv2.error as exc:
            raise (SourceLost if self.live else SourceEnded)(f"{self._label()} read failed: {exc}") from None
        if not ok or image is None:
            return None
        try:
            return to_bgr(image, self._label())
        except ImageError as exc:
            raise (SourceLost if self.live else SourceEnded)(exc.one_line()) from None

    def _grab(self) -> tuple[np.ndarray, float | None] | None:
        image = self._read_capture()
        if image is None:
            if self.live:
                raise SourceLost(f"{self._label()} stopped delivering frames")
            return None
        return image, None

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


class VideoFileSource(CaptureSource):
    """A video file, read once to its end; timestamps are media time (frame index / fps)."""

    live = False

    def __init__(self, path: str | Path, name: str = "video", **kw: Any) -> None:
        super().__init__(name, **kw)
        self.path = Path(path)
        self._fps = 0.0
        self._position = 0

    def _label(self) -> str:
        return f"video {self.path}"

    def _capture(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)

    def _open(self) -> None:
        if self._position:
            # Reopening a file mid-way would replay it from the start: a file that broke has ended.
            raise SourceEnded(f"{self._label()} cannot be resumed")
        if not self.path.is_file():
            raise SourceEnded(f"{self._label()} not found")
        try:
            super()._open()
        except SourceLost as exc:  # a file that cannot be opened now will not open later either
            raise SourceEnded(str(exc)) from None
        assert self._cap is not None
        self._fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)

    def _grab(self) -> tuple[np.ndarray, float | None] | None:
        assert self._cap is not None
        msec = float(self._cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0)
        image = self._read_capture()
        if image is None:
            return None
        # Media time, so tracking timeouts mean the same whether the file is read faster or slower than real time.
        ts = self._position / self._fps if self._fps > 0 else msec / 1000.0
        self._position += 1
        return image, ts
