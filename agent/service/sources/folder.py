"""A folder of images, read in name order. Unreadable files are skipped and counted, never fatal.

If the folder disappears (unmounted USB stick, network share) the source reconnects with backoff and, when the
folder is back, continues after the last file it read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from facelite.errors import ImageError
from facelite.service.sources.base import ReconnectingSource, SourceLost
from facelite.vision.imageio import IMAGE_SUFFIXES, read_image


class FolderSource(ReconnectingSource):
    live = False

    def __init__(self, folder: str | Path, name: str = "folder", **kw: Any) -> None:
        super().__init__(name, **kw)
        self.folder = Path(folder)
        self._queue: list[Path] = []
        self._last_name: str | None = None

    def _open(self) -> None:
        try:
            entries = sorted(p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith("."))
        except FileNotFoundError:
            raise SourceLost(f"folder {self.folder} not found") from None
        except OSError as exc:
            raise SourceLost(f"folder {self.folder} cannot be listed: {exc.strerror}") from None
        last = self._last_name
        self._queue = [p for p in entries if last is None or p.name > last]

    def _grab(self) -> tuple[np.ndarray, float | None] | None:
        while self._queue:
            path = self._queue.pop(0)
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                self._last_name = path.name
                self.skip("not an image file", str(path))
                continue
            try:
                image = read_image(path)
            except ImageError as exc:
                if not self.folder.is_dir():
                    self._queue.insert(0, path)  # not this file's fault: retry it when the folder is back
                    raise SourceLost(f"folder {self.folder} disappeared") from None
                self._last_name = path.name
                # "image is too large (6000x9000 px, ...)" -> "image is too large": one counter per kind.
                self.skip(re.sub(r"\s*\(.*\)$", "", exc.what), str(path))
                continue
            self._last_name = path.name
            return image, None
        if not self.folder.is_dir():
            raise SourceLost(f"folder {self.folder} disappeared")
        return None
