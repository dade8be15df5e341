"""Truncated JPEGs are refused the same way whatever libjpeg the device's OpenCV was built with."""

from __future__ import annotations

from pathlib import Path

import pytest

from facelite.errors import ImageError
from facelite.vision.imageio import jpeg_is_complete, read_image


def jpegs(faces_dir: Path) -> list[Path]:
    return [p for p in sorted(faces_dir.rglob("*.jpg")) if p.read_bytes()[:3] == b"\xff\xd8\xff"]


def test_every_real_jpeg_is_complete(faces_dir: Path) -> None:
    files = jpegs(faces_dir)
    assert len(files) > 50
    assert [p.name for p in files if not jpeg_is_complete(p.read_bytes())] == []


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_jpeg_is_refused_in_one_line(faces_dir: Path, tmp_path: Path, keep: float) -> None:
    data = jpegs(faces_dir)[0].read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: int(len(data) * keep)])
    assert not jpeg_is_complete(cut.read_bytes())
    with pytest.raises(ImageError, match=r"corrupt or truncated \(JPEG ends before its end marker\)") as err:
        read_image(cut)
    assert str(cut) in str(err.value) and "\n" not in str(err.value)


def test_data_after_the_end_marker_is_accepted(faces_dir: Path, tmp_path: Path) -> None:
    """Phones append data after the image (motion photos, maker trailers): still one good picture."""
    src = jpegs(faces_dir)[0]
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(src.read_bytes() + b"\x00trailer" * 1000)
    assert (read_image(padded) == read_image(src)).all()
