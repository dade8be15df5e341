"""Local cameras: an index (0) or a V4L2 device (/dev/video0). A camera that is unplugged or not there yet is
retried with backoff; it never stops the agent."""

from __future__ import annotations

from typing import Any

import cv2

from facelite.service.sources.video import CaptureSource


class CameraSource(CaptureSource):
    live = True

    def __init__(self, device: int | str, name: str = "camera", **kw: Any) -> None:
        super().__init__(name, **kw)
        self.device = device

    def _label(self) -> str:
        return f"camera {self.device}"

    def _capture(self) -> cv2.VideoCapture:
        return cv2.VideoCapture(self.device, cv2.CAP_V4L2)
