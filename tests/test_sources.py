"""Frame sources on real photos and real videos: skip-and-count, read-back, fps limit, reconnect, never a crash."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from facelite.errors import ConfigError
from facelite.service.config import Backoff, CameraConfig
from facelite.service.sources import (
    CameraSource,
    FolderSource,
    Frame,
    SourceState,
    SourceStatus,
    StreamSource,
    VideoFileSource,
    open_camera,
    open_source,
)
from facelite.vision.imageio import list_images, read_image

SIZE = (320, 240)
BACKOFF = Backoff(initial_s=0.5, max_s=4, multiplier=2, jitter=0)


def photos(faces_dir: Path, n: int) -> list[Path]:
    people = sorted(p for p in (faces_dir / "people").iterdir() if p.is_dir())
    found = [list_images(p)[0] for p in people if list_images(p)]
    assert len(found) >= n, f"need {n} people with photos in {faces_dir}"
    return found[:n]


def read_all(source: FolderSource | VideoFileSource | StreamSource | CameraSource) -> list[Frame]:
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame)
    return frames


class RecordingSleep:
    """The injected sleep: records each backoff delay and the status at that moment; may act at a given call."""

    def __init__(self, source_ref: list, action_at: int | None = None, action=None) -> None:
        self.delays: list[float] = []
        self.statuses: list[SourceStatus] = []
        self._ref = source_ref
        self._action_at = action_at
        self._action = action

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.statuses.append(self._ref[0].status)
        if self._action is not None and len(self.delays) == self._action_at:
            self._action()


@pytest.fixture
def clip(faces_dir: Path, tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    """A 10 fps MJPEG video written from real photos."""
    images = [cv2.resize(read_image(p), SIZE) for p in photos(faces_dir, 4)]
    sequence = [images[i % len(images)] for i in range(20)]
    path = tmp_path / "clip.mkv"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, SIZE)
    assert writer.isOpened()
    for image in sequence:
        writer.write(image)
    writer.release()
    return path, sequence


def test_folder_skips_and_counts_corrupt_and_non_image_files(faces_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    real = photos(faces_dir, 3)
    for i, src in enumerate(real):
        shutil.copy(src, folder / f"{i * 2:02d}.jpg")  # 00, 02, 04
    good = real[0].read_bytes()
    (folder / "01.jpg").write_bytes(good[: len(good) // 3])  # truncated JPEG
    (folder / "03.txt").write_text("not a picture")
    (folder / "05.png").write_bytes(b"")  # empty file
    (folder / "06.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)  # JPEG header, garbage body

    with open_source(folder, name="door") as source:
        assert isinstance(source, FolderSource)
        frames = read_all(source)
        status = source.status
    assert [f.index for f in frames] == [0, 1, 2]
    assert all(f.camera == "door" for f in frames)
    for frame, src in zip(frames, real):
        assert frame.image.dtype == np.uint8 and frame.image.ndim == 3 and frame.image.shape[2] == 3
        assert np.array_equal(frame.image, read_image(src))
    assert status.state == SourceState.ENDED
    assert status.frames == 3
    assert dict(status.skipped) == {
        "image is corrupt or truncated": 2,
        "not an image file": 1,
        "image file is empty": 1,
    }


def test_video_file_reads_back_every_frame_with_media_time(clip: tuple[Path, list[np.ndarray]]) -> None:
    path, written = clip
    with open_source(path, name="clip") as source:
        assert isinstance(source, VideoFileSource)
        frames = read_all(source)
        assert source.read() is None  # stays ended
        assert source.status.state == SourceState.ENDED
    assert len(frames) == len(written)
    assert [f.index for f in frames] == list(range(len(written)))
    assert [round(f.ts, 6) for f in frames] == [round(i / 10, 6) for i in range(len(written))]
    for frame, original in zip(frames, written):
        assert frame.image.shape == original.shape
        # MJPEG is lossy: same picture, small error; a different photo would be far off.
        assert np.abs(frame.image.astype(np.int16) - original).mean() < 6.0
    assert np.abs(frames[0].image.astype(np.int16) - written[1]).mean() > 15.0


class FakeTime:
    """The injected clock and sleep: sleeping moves the clock, and every sleep is recorded."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_fps_limit_paces_a_folder_instead_of_dropping(faces_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, src in enumerate(photos(faces_dir, 6)):
        shutil.copy(src, folder / f"{i}.jpg")
    t = FakeTime()
    with open_source(folder, fps_limit=2.0, clock=t.clock, sleep=t.sleep) as source:
        frames = read_all(source)
        status = source.status
    assert (status.frames, status.dropped_fps, len(frames)) == (6, 0, 6)  # every image, none dropped
    assert [f.index for f in frames] == list(range(6))
    assert t.sleeps == [0.5] * 5  # one slot every 0.5 s: the first at once, then a wait before each
    assert [round(f.ts - 1000.0, 6) for f in frames] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]


def test_fps_limit_paces_a_video_file_keeping_media_time(clip: tuple[Path, list[np.ndarray]]) -> None:
    path, written = clip
    t = FakeTime()
    with open_source(path, fps_limit=4.0, clock=t.clock, sleep=t.sleep) as source:
        frames = read_all(source)
        status = source.status
    assert (status.frames, status.dropped_fps) == (len(written), 0)
    assert [round(f.ts, 6) for f in frames] == [round(i / 10, 6) for i in range(len(written))]  # media time kept
    assert t.sleeps == [0.25] * (len(written) - 1)


def test_fps_limit_paces_only_the_wait_left_when_processing_is_slow(faces_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, src in enumerate(photos(faces_dir, 3)):
        shutil.copy(src, folder / f"{i}.jpg")
    t = FakeTime()
    with open_source(folder, fps_limit=2.0, clock=t.clock, sleep=t.sleep) as source:
        assert source.read() is not None
        t.now += 0.3  # the pipeline took 0.3 s on the first frame: 0.2 s left to wait
        assert source.read() is not None
        t.now += 0.9  # slower than the limit: no wait at all
        assert source.read() is not None
    assert t.sleeps == [0.2]


def test_fps_limit_drops_and_counts_frames_of_a_source_played_like_a_camera(
    clip: tuple[Path, list[np.ndarray]],
) -> None:
    path, written = clip
    with open_source(path, fps_limit=4.0, pace=False) as source:
        frames = read_all(source)
        status = source.status
    # 20 frames at 10 fps = 2 s of video: 4 fps keeps one slot per 0.25 s -> frames at 0.0, 0.3, 0.5, 0.8, ...
    assert status.frames == len(frames) == 8
    assert status.dropped_fps == len(written) - 8
    gaps = np.diff([f.ts for f in frames])
    assert gaps.min() >= 0.2 - 1e-6 and abs(np.mean(gaps) - 0.25) < 0.03


def test_folder_that_disappears_reconnects_and_resumes(faces_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "usb"
    folder.mkdir()
    for i, src in enumerate(photos(faces_dir, 4)):
        shutil.copy(src, folder / f"{i}.jpg")
    hidden = tmp_path / "unplugged"
    ref: list = []
    sleep = RecordingSleep(ref, action_at=3, action=lambda: hidden.rename(folder))  # plugged back in
    source = open_source(folder, name="usb", backoff=BACKOFF, sleep=sleep)
    ref.append(source)
    first, second = source.read(), source.read()
    assert first is not None and second is not None
    folder.rename(hidden)  # unplugged mid-run

    third = source.read()  # blocks through 3 backoff sleeps, then the folder is back
    assert third is not None and third.index == 2
    assert [s.state for s in sleep.statuses] == [SourceState.RECONNECTING] * 3
    assert [s.attempt for s in sleep.statuses] == [1, 2, 3]
    assert "disappeared" in sleep.statuses[0].detail
    assert sleep.delays == [0.5, 1.0, 2.0]  # exponential
    assert source.status.state == SourceState.CONNECTED and source.status.attempt == 0
    rest = read_all(source)
    assert [f.index for f in rest] == [3]
    assert source.status.state == SourceState.ENDED and source.status.frames == 4


def test_folder_gone_for_good_ends_after_max_attempts_without_raising(faces_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "share"
    folder.mkdir()
    shutil.copy(photos(faces_dir, 1)[0], folder / "a.jpg")
    ref: list = []
    sleep = RecordingSleep(ref)
    source = open_source(folder, backoff=BACKOFF, sleep=sleep, max_attempts=3)
    ref.append(source)
    shutil.rmtree(folder)
    assert source.read() is None
    assert source.status.state == SourceState.ENDED
    assert "gave up after 3" in source.status.detail
    assert sleep.delays == [0.5, 1.0, 2.0]


def test_missing_camera_is_retried_then_ended_never_raised(tmp_path: Path) -> None:
    for spec in (7, "/dev/video7"):
        if Path(f"/dev/video{7}").exists():
            pytest.fail("this test needs /dev/video7 to be absent")
        ref: list = []
        sleep = RecordingSleep(ref)
        source = open_source(spec, name="cam", backoff=BACKOFF, sleep=sleep, max_attempts=2)
        ref.append(source)
        assert isinstance(source, CameraSource)
        assert source.read() is None
        assert [s.state for s in sleep.statuses] == [SourceState.RECONNECTING] * 2
        assert "cannot be opened" in sleep.statuses[0].detail
        assert source.status.state == SourceState.ENDED


class MjpegServer:
    """An IP-camera-like MJPEG-over-HTTP server (multipart/x-mixed-replace) that drops each client after N frames."""

    def __init__(self, jpegs: list[bytes], frames_per_connection: int) -> None:
        outer = self
        self.connections = 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                for i in range(frames_per_connection):
                    jpeg = jpegs[i % len(jpegs)]
                    head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                    self.wfile.write(head + jpeg + b"\r\n")
                    self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://user:topsecret@127.0.0.1:{self.server.server_address[1]}/stream.mjpg"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mjpeg(faces_dir: Path) -> Iterator[tuple[MjpegServer, list[np.ndarray]]]:
    images = [cv2.resize(read_image(p), SIZE) for p in photos(faces_dir, 3)]
    jpegs = [cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for im in images]
    server = MjpegServer(jpegs, frames_per_connection=5)
    yield server, images
    server.stop()


def test_stream_lost_reconnects_with_backoff_and_resumes(mjpeg: tuple[MjpegServer, list[np.ndarray]]) -> None:
    server, images = mjpeg
    ref: list = []
    sleep = RecordingSleep(ref)
    clock_values = iter(range(1000))
    source = open_source(
        server.url, name="ipcam", backoff=BACKOFF, sleep=sleep, clock=lambda: next(clock_values), max_attempts=2
    )
    ref.append(source)
    assert isinstance(source, StreamSource)
    frames = [source.read() for _ in range(8)]  # 5 from the first connection, 3 after the reconnect
    assert all(f is not None for f in frames)
    assert server.connections == 2
    assert len(sleep.statuses) == 1 and sleep.statuses[0].state == SourceState.RECONNECTING
    assert sleep.statuses[0].attempt == 1 and sleep.delays == [0.5]
    assert source.status.state == SourceState.CONNECTED
    for i, frame in enumerate(frames):
        assert frame is not None and frame.camera == "ipcam"
        assert np.abs(frame.image.astype(np.int16) - images[(i % 5) % 3]).mean() < 6.0
    assert [f.index for f in frames if f is not None] == list(range(8))

    server.stop()  # camera gone for good: the 2 frames already sent are read, then 2 failed attempts
    rest = read_all(source)
    assert len(rest) == 2
    assert [s.attempt for s in sleep.statuses] == [1, 1, 2]
    assert source.status.state == SourceState.ENDED and "gave up after 2" in source.status.detail
    assert "topsecret" not in source.status.detail and "topsecret" not in repr(sleep.statuses)
    assert "user:***@" in sleep.statuses[-1].detail


def test_close_from_another_thread_interrupts_a_reconnect_wait(tmp_path: Path, faces_dir: Path) -> None:
    folder = tmp_path / "nas"
    folder.mkdir()
    shutil.copy(photos(faces_dir, 1)[0], folder / "a.jpg")
    source = open_source(folder, backoff=Backoff(initial_s=30, max_s=60))  # real sleep: waits on close()
    assert source.read() is not None
    shutil.rmtree(folder)
    timer = threading.Timer(0.3, source.close)
    timer.start()
    started = time.monotonic()
    assert source.read() is None
    assert time.monotonic() - started < 5
    assert source.status.state == SourceState.ENDED
    timer.join()


def test_open_source_refuses_missing_paths_and_unknown_schemes_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        open_source(tmp_path / "nope.mp4", name="door")
    assert str(info.value) == f"camera source not found (camera door: {tmp_path / 'nope.mp4'})" + (
        ": give an existing video file or folder"
    )
    with pytest.raises(ConfigError, match=r"unsupported stream scheme 'ftp'.*user:\*\*\*@") as info:
        open_source("ftp://user:pw@host/x")
    assert "pw@" not in str(info.value) and "\n" not in str(info.value)


def test_open_camera_applies_the_config(clip: tuple[Path, list[np.ndarray]]) -> None:
    path, written = clip
    config = CameraConfig(name="porch", source=str(path), fps_limit=5.0)
    t = FakeTime()
    with open_camera(config, clock=t.clock, sleep=t.sleep) as source:
        frames = read_all(source)
    assert {f.camera for f in frames} == {"porch"}
    assert len(frames) == len(written) and t.sleeps == [0.2] * (len(written) - 1)  # a file is paced
    realtime = CameraConfig(name="porch", source=str(path), fps_limit=5.0, realtime=True)
    with open_camera(realtime) as source:
        frames = read_all(source)
    assert len(frames) == len(written) // 2  # a file played in real time stands in for a camera: it drops
