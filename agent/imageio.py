"""Reading images safely: every failure becomes one ImageError naming the file and the reason."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from agent.errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_PIXELS = 50_000_000  # refuse decompression bombs before they eat the Pi's memory


def to_bgr(image: np.ndarray, where: str = "frame") -> np.ndarray:
    """Normalise grayscale / BGRA / 16-bit frames to 8-bit BGR; refuse empty ones."""
    if image is None or image.size == 0 or image.ndim not in (2, 3) or min(image.shape[:2]) == 0:
        shape = None if image is None else image.shape
        raise ImageError(f"image is empty or has no pixels (shape {shape})", where)
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        else:
            image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if channels == 3:
        return image
    raise ImageError(f"image has {channels} channels; expected 1, 3 or 4", where)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as 8-bit BGR."""
    path = Path(path)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError("image file not found", str(path)) from None
    except OSError as exc:
        raise ImageError(f"image cannot be read: {exc.strerror}", str(path)) from None
    if data.size == 0:
        raise ImageError("image file is empty", str(path))
    # Check the header's size before decoding the pixels.
    header_ok = cv2.haveImageReader(str(path)) if hasattr(cv2, "haveImageReader") else True
    if not header_ok:
        raise ImageError("file is not an image format OpenCV can read", str(path))
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError("image is corrupt or truncated (cannot be decoded)", str(path))
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise ImageError(f"image is too large ({image.shape[1]}x{image.shape[0]} px, max {MAX_PIXELS} px)", str(path))
    return to_bgr(image, str(path))


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
