"""Reading images safely: every failure becomes one ImageError naming the file and the reason."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from facelite.errors import ImageError

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


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG, JPEG, BMP, WebP or TIFF file; None if not recognised.

    Read before decoding because OpenCV allocates the full bitmap from these numbers: a few hundred KB of
    compressed zeros can declare gigabytes of pixels (decompression bomb) and take the Pi down with it.
    """
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data.startswith(b"\xff\xd8"):
            pos = 2
            while pos + 9 <= len(data) and data[pos] == 0xFF:
                marker = data[pos + 1]
                if marker == 0xFF:  # fill byte
                    pos += 1
                elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                    height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
                    return width, height
                elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
                    pos += 2
                else:
                    pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
            return None
        if data.startswith(b"BM") and len(data) >= 26:
            if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 header: 16-bit sizes
                return struct.unpack("<HH", data[18:22])
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            chunk = data[12:16]
            if chunk == b"VP8X":
                return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
            if chunk == b"VP8 ":
                width, height = struct.unpack("<HH", data[26:30])
                return width & 0x3FFF, height & 0x3FFF
            return None
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            order = "<" if data[:2] == b"II" else ">"
            ifd = struct.unpack(order + "I", data[4:8])[0]
            tags: dict[int, int] = {}
            for i in range(min(struct.unpack(order + "H", data[ifd : ifd + 2])[0], 512)):
                entry = data[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
                tag, kind = struct.unpack(order + "HH", entry[:4])
                if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
                    tags[tag] = struct.unpack(
                        order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12]
                    )[0]
            return (tags[256], tags[257]) if len(tags) == 2 else None
    except (struct.error, IndexError):
        return None  # a header too short to hold the sizes: let the decoder call it corrupt
    return None


def jpeg_is_complete(data: bytes) -> bool:
    """Walk a JPEG's segments to its end-of-image marker; False when the file stops before it.

    Some libjpeg builds (OpenCV 4.x) decode a truncated JPEG into a half-grey picture with only a warning,
    others refuse it: checking the structure ourselves gives the same answer on every device. The walk
    follows segment lengths (so an EXIF thumbnail's own end marker is skipped) and scans entropy-coded
    data for the next real marker (0xFF00 is a stuffed byte, 0xFFD0-D7 restart markers).
    """
    n = len(data)
    i = 2  # after SOI
    while i + 2 <= n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2
            continue
        if i + 4 > n:
            return False
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
        if marker == 0xDA:  # start of scan: entropy-coded data until the next non-stuffed, non-RST marker
            while True:
                i = data.find(b"\xff", i)
                if i < 0 or i + 1 >= n:
                    return False
                follower = data[i + 1]
                if follower != 0x00 and not 0xD0 <= follower <= 0xD7:
                    break
                i += 2
    return False


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
    header_ok = cv2.haveImageReader(str(path)) if hasattr(cv2, "haveImageReader") else True
    if not header_ok:
        raise ImageError("file is not an image format OpenCV can read", str(path))
    # Check the header's size before decoding the pixels.
    declared = _declared_size(data[: 1 << 20].tobytes())
    if declared is not None and declared[0] * declared[1] > MAX_PIXELS:
        raise ImageError(f"image is too large ({declared[0]}x{declared[1]} px, max {MAX_PIXELS} px)", str(path))
    if data[:3].tobytes() == b"\xff\xd8\xff" and not jpeg_is_complete(data.tobytes()):
        raise ImageError("image is corrupt or truncated (JPEG ends before its end marker)", str(path))
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # e.g. OpenCV's own size limit on a format we do not sniff
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "decoder error"
        raise ImageError(f"image cannot be decoded ({reason})", str(path)) from None
    if image is None:
        raise ImageError("image is corrupt or truncated (cannot be decoded)", str(path))
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise ImageError(f"image is too large ({image.shape[1]}x{image.shape[0]} px, max {MAX_PIXELS} px)", str(path))
    return to_bgr(image, str(path))


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
