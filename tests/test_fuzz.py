"""Bad input of every kind gives one clear line (or a counted skip), never a traceback, never a hang.

Images (random bytes, damaged photos, decompression bombs, degenerate frames, gray / 4-channel / 16-bit photos
through the real agent), models (truncated, tampered, manifest mismatches), galleries (another model's, not a
gallery) and configs (every field fuzzed, random text, YAML alias bombs). Hypothesis runs derandomized with
bounded example counts, so the file is reproducible and stays well under 90 s.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from soak import AgentProcess, enroll_gallery, pick, toml_text, write_config

from facelite.errors import GalleryError, ImageError, ModelError
from facelite.recognition.eventfaces import EventFace, EventFaceStore, StorePolicy, check_event_id
from facelite.recognition.gallery import Gallery
from facelite.recognition.matching import Matcher
from facelite.recognition.pipeline import Pipeline
from facelite.recognition.strangers import check_cluster_id
from facelite.recognition.track import Tracker, TrackerConfig
from facelite.service.commands import CommandContext, CommandProcessor, CommandRefused, ReplayLog, parse_command
from facelite.service.config import AgentConfig, ConfigError, ConfigErrors, key_path, load_config
from facelite.service.events import Topics
from facelite.service.messages import Message
from facelite.service.schema import Section, sections_of
from facelite.service.sources import Frame
from facelite.vision.detect import create_detector
from facelite.vision.embed import Embedder
from facelite.vision.imageio import IMAGE_SUFFIXES, MAX_PIXELS, read_image, to_bgr
from facelite.vision.quality import QualityGate

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def one_line(text: str) -> str:
    """The text is exactly one printable line; returns it."""
    assert "\n" not in text and "\r" not in text, repr(text)
    assert text.isprintable(), repr(text)
    return text


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout, env=dict(os.environ)
    )


@dataclass(frozen=True)
class Kit:
    detector: Path
    embedder: Path
    gallery: Path
    people: dict[str, list[Path]]  # enrolled person -> photos not used for enrolment
    photos: list[bytes]  # a few real JPEG files, as bytes


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path, models_dir: Path) -> Kit:
    work = tmp_path_factory.mktemp("kit")
    detector, embedder = pick(models_dir, "blazeface"), pick(models_dir, "mobilefacenet")
    chosen = ["fr_obama", "deepface_id00", "deepface_id01"]
    trees = {name: sorted((faces_dir / "people" / name).glob("*.jpg")) for name in chosen}
    counts = enroll_gallery(work / "gallery.sqlite", detector, embedder, {n: p[:2] for n, p in trees.items()})
    assert set(counts) == set(chosen)
    photos = [trees[n][0].read_bytes() for n in chosen]
    return Kit(detector, embedder, work / "gallery.sqlite", {n: p[2:] for n, p in trees.items()}, photos)


# -- images ----------------------------------------------------------------------------------------------------
def check_read(path: Path) -> str:
    """read_image gives 8-bit BGR or one ImageError line naming the file; returns 'ok' or the line."""
    try:
        image = read_image(path)
    except ImageError as exc:
        line = one_line(exc.one_line())
        assert str(path) in line
        return line
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.size > 0
    return "ok"


@st.composite
def damaged_files(draw: st.DrawFn, photos: list[bytes]) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "header+noise"]))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=3000))
    data = bytearray(draw(st.sampled_from(photos)))
    if kind == "truncated":
        return bytes(data[: draw(st.integers(1, len(data) - 1))])
    if kind == "flipped":
        for _ in range(draw(st.integers(1, 40))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    cut = draw(st.integers(2, 600))
    return bytes(data[:cut]) + draw(st.binary(min_size=0, max_size=2000))


def test_random_and_damaged_image_files_give_one_line_or_an_image(tmp_path: Path, kit: Kit) -> None:
    outcomes: dict[str, int] = {}

    @settings(FUZZ, max_examples=150)
    @given(data=damaged_files(kit.photos), suffix=st.sampled_from(IMAGE_SUFFIXES))
    def run(data: bytes, suffix: str) -> None:
        path = tmp_path / f"input{suffix}"
        path.write_bytes(data)
        result = check_read(path)
        key = "ok" if result == "ok" else result.split(" (")[0]
        outcomes[key] = outcomes.get(key, 0) + 1

    run()
    assert len(outcomes) >= 2, outcomes  # both decodable and refused inputs were exercised
    print(f"damaged images: {outcomes}")


def png_header(width: int, height: int, channels: int = 3) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    color = {1: 0, 3: 2, 4: 6}[channels]
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bomb_header(kind: str, width: int, height: int, jpeg: bytes) -> bytes:
    """A small file whose header declares ``width`` x ``height`` pixels."""
    if kind == "png":
        return png_header(width, height)
    if kind == "jpeg":
        data = bytearray(jpeg)
        pos = 2
        while not (0xC0 <= data[pos + 1] <= 0xC3):  # to the baseline/progressive frame header
            pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
        return bytes(data)
    if kind == "bmp":
        dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
        return b"BM" + struct.pack("<IHHI", 14 + 40 + 64, 0, 0, 54) + dib + b"\0" * 64
    if kind == "webp":
        body = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (width - 1).to_bytes(3, "little")
        body += (height - 1).to_bytes(3, "little") + b"\0" * 32  # OpenCV wants a few more bytes to say "WebP"
        return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
    if kind == "tiff":
        entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (277, 3, 1, 1)]
        ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0" * 4
        return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 64
    raise ValueError(kind)


def test_declared_huge_images_are_refused_from_the_header(tmp_path: Path, kit: Kit) -> None:
    @settings(FUZZ, max_examples=60)
    @given(
        kind=st.sampled_from(["png", "jpeg", "bmp", "webp", "tiff"]),
        width=st.integers(1, 65535),
        height=st.integers(1, 65535),
    )
    def run(kind: str, width: int, height: int) -> None:
        if kind == "webp":  # VP8X sizes are 24-bit but WebP itself stops at 16383
            width, height = min(width, 16383), min(height, 16383)
        if width * height <= MAX_PIXELS:
            width = height = 65535 if kind != "webp" else 16383
        path = tmp_path / f"bomb.{ {'jpeg': 'jpg'}.get(kind, kind) }"
        path.write_bytes(bomb_header(kind, width, height, kit.photos[0]))
        with pytest.raises(ImageError) as info:
            read_image(path)
        line = one_line(info.value.one_line())
        assert f"image is too large ({width}x{height} px" in line and str(path) in line

    run()


def compressed_png(path: Path, width: int, height: int) -> None:
    """A valid PNG of ``width`` x ``height`` black pixels, written row by row (never held in memory)."""
    comp = zlib.compressobj(9)
    row = b"\0" + b"\0" * (width * 3)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    head = png_header(width, height)
    ihdr_end = 8 + 25
    tail = struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", zlib.crc32(b"IDAT" + body) & 0xFFFFFFFF)
    path.write_bytes(head[:ihdr_end] + tail + head[-12:])


def test_decompression_bomb_is_refused_by_enroll_before_it_takes_the_memory(tmp_path: Path, kit: Kit) -> None:
    """A 250 KB PNG of 8000x8000 pixels would need 192 MB as BGR; 40000x40000 trips OpenCV's own limit."""
    real = kit.people["fr_obama"][0]
    bomb = tmp_path / "bomb.png"
    compressed_png(bomb, 8000, 8000)
    giant = tmp_path / "giant.png"
    giant.write_bytes(png_header(40000, 40000))
    # RUSAGE_CHILDREN is the peak over all children so far: each run is measured from a fresh interpreter.
    probe = textwrap.dedent(
        """
        import resource, subprocess, sys
        proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        sys.stderr.write(proc.stderr)
        sys.stdout.write(proc.stdout)
        raise SystemExit(proc.returncode)
        """
    )
    models = ["--detector", str(kit.detector), "--embedder", str(kit.embedder)]
    runs = {}
    for name, photos in (("plain", [real]), ("bombs", [real, bomb, giant])):
        args = ["-m", "facelite.cli", "enroll", "Barack", *map(str, photos), *models, "--gallery", str(tmp_path / name)]
        proc = cli("-c", probe, sys.executable, *args)
        runs[name] = (proc, int(proc.stdout.splitlines()[0]))
    (plain, plain_kb), (bombs, bombs_kb) = runs["plain"], runs["bombs"]
    assert plain.returncode == 0, plain.stderr
    assert bombs.returncode == 0, bombs.stderr
    assert "Traceback" not in bombs.stderr
    lines = bombs.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert f"skipped: image is too large (8000x8000 px, max {MAX_PIXELS} px) ({bomb})" in lines
    assert any("image is too large (40000x40000 px" in line for line in lines)
    assert "1 template(s) from 1 photo(s); 2 skipped" in bombs.stdout
    assert bombs_kb - plain_kb < 60_000, (plain_kb, bombs_kb)  # the bitmap alone would be 192 MB
    print(f"bomb: enroll peak RSS {plain_kb / 1024:.0f} MB without, {bombs_kb / 1024:.0f} MB with the bombs")


# -- frames ----------------------------------------------------------------------------------------------------
GATE = QualityGate(min_size=60, min_sharpness=0.0, max_yaw=45.0, max_pitch=30.0)  # the config defaults


@pytest.fixture(scope="module")
def pipeline(kit: Kit) -> Iterator[Pipeline]:
    detector = create_detector(kit.detector)
    embedder = Embedder.from_model_dir(kit.embedder)
    with Gallery.open(
        kit.gallery, embedder_sha256=embedder.sha256, embedding_size=int(embedder.manifest.embedding_size or 0)
    ) as gallery:
        matcher = Matcher(threshold=embedder.manifest.threshold("1e-3"), margin=0.05)
        yield Pipeline(detector, embedder, gallery, matcher, Tracker(TrackerConfig()), GATE)


def test_degenerate_frames_are_processed_or_counted_never_raised(pipeline: Pipeline) -> None:
    clock = [0.0]

    @settings(FUZZ, max_examples=50)
    @given(
        shape=st.one_of(
            st.tuples(st.integers(0, 40), st.integers(0, 40)),
            st.sampled_from([(0, 0), (1, 1), (1, 1500), (1500, 1), (2, 3), (0, 640), (480, 0)]),
        ),
        seed=st.integers(0, 2**16),
    )
    def run(shape: tuple[int, int], seed: int) -> None:
        image = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
        before = sum(pipeline.stats.skipped.values())
        clock[0] += 0.1  # frames come in time order, as from a source
        result = pipeline.process(Frame(image=image, ts=clock[0], camera="fuzz", index=seed))
        skipped = sum(pipeline.stats.skipped.values()) - before
        if image.size == 0:
            assert skipped == 1 and pipeline.stats.skipped["empty_frame"] > 0 and result.faces == 0  # counted
        else:
            assert skipped == 0, dict(pipeline.stats.skipped)  # a tiny frame is just a frame without faces

    run()
    with pytest.raises(ImageError) as info:
        to_bgr(np.zeros((0, 0, 3), np.uint8), "camera door")
    assert one_line(info.value.one_line()) == "image is empty or has no pixels (shape (0, 0, 3)) (camera door)"


def placed(photo: Path) -> np.ndarray:
    from facelite.tools.demo import place

    return place(read_image(photo))


def test_gray_four_channel_and_16_bit_photos_are_recognised_and_bad_files_counted_by_the_agent(
    tmp_path: Path, kit: Kit
) -> None:
    """A folder camera: the same visitors as gray, BGRA and 16-bit files between broken files and a bomb."""
    folder = tmp_path / "frames"
    folder.mkdir()
    blank = np.full((480, 640, 3), 90, np.uint8)
    visits = [
        ("gray", "fr_obama", lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2GRAY), ".png"),
        ("bgra", "deepface_id00", lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2BGRA), ".png"),
        ("16bit", "deepface_id01", lambda im: im.astype(np.uint16) * 257, ".png"),
        ("grayjpeg", "deepface_id00", lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2GRAY), ".jpg"),
    ]
    n = 0
    for kind, person, convert, suffix in visits:
        image = convert(placed(kit.people[person][0]))
        for _ in range(3):
            assert cv2.imwrite(str(folder / f"{n:04d}-{kind}{suffix}"), image)
            n += 1
        for _ in range(3):
            cv2.imwrite(str(folder / f"{n:04d}-blank.jpg"), blank)
            n += 1
    real = kit.photos[0]
    bad = {
        "truncated.jpg": real[: len(real) // 2],
        "empty.png": b"",
        "text.jpg": b"not an image at all",
        "notes.txt": b"a note",
        "bomb.png": png_header(40000, 40000),
        "huge.bmp": bomb_header("bmp", 20000, 20000, real),
    }
    for i, (name, data) in enumerate(bad.items()):
        (folder / f"{i * 6 + 2:04d}-{name}").write_bytes(data)
    config = {
        "device_id": "fuzz",
        "state_interval_s": 1,
        "cameras": [{"name": "door", "source": str(folder)}],
        "models": {"detector": str(kit.detector), "embedder": str(kit.embedder), "num_threads": 1},
        "tracking": {"min_votes": 2, "max_missed_frames": 1, "max_missed_seconds": 0.001},
        "spool": {"path": str(tmp_path / "spool.sqlite")},
        "gallery": {"path": str(kit.gallery)},
    }
    with AgentProcess(write_config(tmp_path / "agent.toml", config)) as agent:
        assert agent.wait(180) == 0, agent.stderr[-3000:]
        stdout = list(agent._out)
    assert "Traceback" not in agent.stderr
    messages = [json.loads(line) for line in stdout if line.startswith("{")]
    events = [m["payload"] for m in messages if m["topic"] == "facelite/fuzz/events"]
    decided = [e for e in events if e["type"] in ("recognized", "unknown")]
    assert [(e["type"], e["person"]) for e in decided] == [("recognized", person) for _, person, _, _ in visits]
    state = [m["payload"] for m in messages if m["topic"] == "facelite/fuzz/state"][-1]
    assert state["skipped"] == {
        "source:file is not an image format OpenCV can read": 1,
        "source:image file is empty": 1,
        "source:image is corrupt or truncated": 1,
        "source:image is too large": 2,
        "source:not an image file": 1,
    }
    warnings = [line for line in agent.lines if "skipped" in line]
    assert len(warnings) == len(bad)  # one line per bad file
    for line in warnings:
        one_line(line)
    print(f"folder: {[(e['person'], e['similarity']) for e in decided]}; skipped {state['skipped']}")


# -- models ----------------------------------------------------------------------------------------------------
def artifact_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_manifest(folder: Path, change: Any) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=1))


def refit_manifest(folder: Path) -> None:
    """Make the manifest's sha256/size match the (tampered) model, as if someone regenerated it."""
    import hashlib

    data = (folder / "model.tflite").read_bytes()

    def fix(m: dict[str, Any]) -> None:
        m["graphs"]["model"]["sha256"] = hashlib.sha256(data).hexdigest()
        m["graphs"]["model"]["size_bytes"] = len(data)

    rewrite_manifest(folder, fix)


def test_damaged_model_or_mismatching_manifest_is_one_line(tmp_path: Path, kit: Kit, models_dir: Path) -> None:
    def truncate(d: Path) -> None:
        data = (d / "model.tflite").read_bytes()
        (d / "model.tflite").write_bytes(data[: len(data) // 2])

    def flip(d: Path) -> None:
        data = bytearray((d / "model.tflite").read_bytes())
        data[len(data) // 3] ^= 0xFF
        (d / "model.tflite").write_bytes(bytes(data))

    def shape(m: dict[str, Any]) -> None:
        m["graphs"]["model"]["inputs"][0]["shape"] = [1, 128, 128, 3]

    def size(m: dict[str, Any]) -> None:
        m["embedding_size"] = 512

    def sha(m: dict[str, Any]) -> None:
        m["graphs"]["model"]["sha256"] = "0" * 64

    cases = {
        "truncated": (truncate, "(truncated?)"),
        "one byte changed": (flip, "sha256"),
        "manifest sha256": (lambda d: rewrite_manifest(d, sha), "sha256"),
        "manifest input shape": (lambda d: rewrite_manifest(d, shape), "does not match manifest"),
        "manifest embedding size": (lambda d: rewrite_manifest(d, size), "manifest says 512"),
        "manifest not JSON": (lambda d: (d / "manifest.json").write_text("{"), "manifest"),
        "model missing": (lambda d: (d / "model.tflite").unlink(), "model.tflite"),
        "a detector": (None, "not an embedder"),
    }
    for name, (damage, says) in cases.items():
        folder = kit.detector if damage is None else artifact_copy(kit.embedder, tmp_path / name.replace(" ", "_"))
        if damage is not None:
            damage(folder)
        with pytest.raises(ModelError) as info:
            Embedder.from_model_dir(folder)
        line = one_line(info.value.one_line())
        assert says in line and str(folder) in line, (name, line)
    # And what the user of the real agent sees, for two of them: one line, exit 2.
    for name, says in (("truncated", "(truncated?)"), ("manifest input shape", "does not match manifest")):
        config = {
            "device_id": "fuzz",
            "cameras": [{"name": "door", "source": 0}],
            "models": {"detector": str(kit.detector), "embedder": str(tmp_path / name.replace(" ", "_"))},
            "gallery": {"path": str(tmp_path / "g.sqlite")},
            "spool": {"path": str(tmp_path / "s.sqlite")},
        }
        write_config(tmp_path / "agent.toml", config)
        proc = cli(
            "-m", "facelite", "--config", str(tmp_path / "agent.toml"), "--self-test", str(tmp_path / "none.jpg")
        )
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("error: ") and says in line, line


TAMPER_CHILD = """
import hashlib, json, random, shutil, sys
from pathlib import Path
import numpy as np
from facelite.vision.embed import Embedder
from facelite.errors import ModelError
src, work, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
original = (src / "model.tflite").read_bytes()
for case in range(int(sys.argv[4])):
    data = bytearray(original)
    how = rng.choice(["head", "tail", "anywhere", "truncate", "zeros", "magic"])
    if how == "truncate":
        data = data[: rng.randrange(8, len(data))]
    elif how == "zeros":
        start = rng.randrange(len(data))
        data[start : start + 256] = bytes(len(data[start : start + 256]))
    elif how == "magic":
        data[4:8] = b"XXXX"
    else:
        lo, hi = {"head": (0, 4096), "tail": (len(data) - 65536, len(data)), "anywhere": (0, len(data))}[how]
        for _ in range(rng.choice([1, 8, 64])):
            data[rng.randrange(lo, hi)] = rng.randrange(256)
    folder = work / f"case{case}"
    shutil.copytree(src, folder)
    (folder / "model.tflite").write_bytes(bytes(data))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["graphs"]["model"]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    manifest["graphs"]["model"]["size_bytes"] = len(data)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    print(json.dumps({"case": case, "how": how, "started": True}), flush=True)
    try:
        emb = Embedder.from_model_dir(folder)
        out = emb.embed_crop(np.full((112, 112, 3), 128, np.uint8)).vector
        result = {"case": case, "how": how, "loaded": True, "finite": bool(np.isfinite(out).all())}
    except ModelError as exc:
        result = {"case": case, "how": how, "error": exc.one_line()}
    print(json.dumps(result), flush=True)
    shutil.rmtree(folder)
"""


def test_tampered_model_with_a_regenerated_manifest_fails_in_one_line_or_loads_never_crashes(
    tmp_path: Path, kit: Kit
) -> None:
    """The sha256 check catches any change; this is the runtime's own defence behind it (flatbuffer checks)."""
    proc = cli("-c", TAMPER_CHILD, str(kit.embedder), str(tmp_path), "7", "24", timeout=300)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    finished = [r for r in results if "started" not in r]
    crashed = [r for r in results if "started" in r and not any(f["case"] == r["case"] for f in finished)]
    assert proc.returncode == 0 and not crashed, (proc.returncode, crashed, proc.stderr[-2000:])
    assert len(finished) == 24
    errors = [r["error"] for r in finished if "error" in r]
    for line in errors:
        one_line(line)
        assert "cannot load the model" in line or "does not match manifest" in line or "manifest says" in line, line
    assert errors, "no tampering was detected at all"
    print(f"tampered models: {len(errors)} refused in one line, {len(finished) - len(errors)} still loaded")


@pytest.mark.slow  # the rebuild imports TensorFlow (~10 s): not in make test-fast
def test_damaged_tflite_files_give_one_line_or_a_float_rebuild(tmp_path: Path) -> None:
    """The converter's float rebuild of a shipped .tflite (BlazeFace int8, converter/formats/tflite_float.py)."""
    from facelite.converter.formats import FormatError
    from facelite.converter.formats.tflite_float import FloatTFLiteGraph
    from facelite.converter.sources import source_files

    shipped = source_files("blazeface-short")[0].read_bytes()
    outcomes: dict[str, int] = {}

    @settings(FUZZ, max_examples=60)
    @given(data=damaged_files([shipped]))
    def run(data: bytes) -> None:
        path = tmp_path / "model.tflite"
        path.write_bytes(data)
        try:
            FloatTFLiteGraph(path).function()
            key = "rebuilt"
        except FormatError as exc:
            line = one_line(exc.one_line())
            assert str(path) in line
            key = line.split(":")[0].split(" (")[0]
        outcomes[key] = outcomes.get(key, 0) + 1

    run()
    assert len(outcomes) >= 2, outcomes  # more than one kind of damage was exercised
    (tmp_path / "model.tflite").write_bytes(shipped)
    assert FloatTFLiteGraph(tmp_path / "model.tflite").function()  # the intact file is not refused
    print(f"damaged .tflite files: {outcomes}")


# -- galleries -------------------------------------------------------------------------------------------------
def test_gallery_of_another_model_or_not_a_gallery_is_one_line(tmp_path: Path, kit: Kit, models_dir: Path) -> None:
    embedder = Embedder.from_model_dir(kit.embedder)
    dim = int(embedder.manifest.embedding_size or 0)
    # The built MobileFaceNet variant the kit's gallery was not enrolled with (fp32 or int8, whichever is not picked).
    (variant,) = {"fp32", "int8"} - {kit.embedder.name}
    sibling = Embedder.from_model_dir(models_dir / "mobilefacenet" / variant)
    assert sibling.sha256 != embedder.sha256
    facenet = Embedder.from_model_dir(pick(models_dir, "facenet"))
    other_variant, other_model = tmp_path / f"{variant}.sqlite", tmp_path / "facenet.sqlite"
    for path, emb in ((other_variant, sibling), (other_model, facenet)):
        size = int(emb.manifest.embedding_size or 0)
        with Gallery.open(path, embedder_sha256=emb.sha256, embedding_size=size) as g:
            g.enroll("Someone", [np.ones(size, np.float32)], ["x.jpg"])
    noise = tmp_path / "noise.sqlite"
    noise.write_bytes(random.Random(3).randbytes(20000))
    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes(kit.gallery.read_bytes()[:5000])
    text = tmp_path / "notes.sqlite"
    text.write_text("SQLite format 3 but not really\n" * 10)
    cases = {
        other_variant: "re-enroll",
        other_model: "re-enroll",
        noise: "not a gallery file",
        truncated: "gallery",
        text: "not a gallery file",
    }
    for path, says in cases.items():
        with pytest.raises(GalleryError) as info:
            Gallery.open(path, embedder_sha256=embedder.sha256, embedding_size=dim).close()
        line = one_line(info.value.one_line())
        assert says in line and str(path) in line, line
    # The real agent, started on the other model's gallery: one line and exit 2, before any camera is opened.
    config = {
        "device_id": "fuzz",
        "cameras": [{"name": "door", "source": 0}],
        "models": {"detector": str(kit.detector), "embedder": str(kit.embedder)},
        "gallery": {"path": str(other_model)},
        "spool": {"path": str(tmp_path / "s.sqlite")},
    }
    write_config(tmp_path / "agent.toml", config)
    proc = cli("-m", "facelite", "--config", str(tmp_path / "agent.toml"), timeout=60)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: gallery was enrolled with embedder") and "facelite enroll" in line


# -- corrections: `facelite gallery reject` ---------------------------------------------------------------------
@FUZZ
@given(text=st.text(max_size=80) | st.uuids().map(str) | st.uuids().map(lambda u: f" {str(u).upper()}\n"))
def test_event_ids_are_a_uuid_or_one_line(text: str) -> None:
    try:
        got = check_event_id(text)
    except GalleryError as exc:
        assert "not an event id" in one_line(exc.one_line())
        return
    assert str(uuid.UUID(got)) == got


COMMAND_TOPICS = Topics("fuzz")
COMMAND_DOCS = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=70), st.sampled_from(["a", "req-1", "x" * 64]), st.integers()),
        "command": st.one_of(st.sampled_from(["ping", "list", "forget", "reject", "rename", "nope"]), st.text()),
        "args": st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), st.integers(), st.none())),
        "reply_to": st.one_of(st.text(max_size=30), st.just("facelite/fuzz/x"), st.just("facelite/fuzz/command")),
    },
)


@settings(FUZZ, max_examples=400)
@given(
    payload=st.one_of(
        st.binary(max_size=600),
        COMMAND_DOCS.map(lambda d: json.dumps(d).encode()),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.text(max_size=5), lambda c: st.lists(c, max_size=3)
        ).map(lambda v: json.dumps(v).encode()),
        st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
    ),
    max_bytes=st.sampled_from([128, 4096, 1 << 20]),
)
def test_the_command_parser_gives_a_command_or_its_own_refusal_for_any_bytes(payload: bytes, max_bytes: int) -> None:
    try:
        command = parse_command(payload, COMMAND_TOPICS, max_bytes=max_bytes)
    except CommandRefused as refused:
        one_line(refused.reason)
        assert refused.request_id is None or re.fullmatch(r"[A-Za-z0-9._-]{1,64}", refused.request_id)
        return
    assert len(payload) <= max_bytes and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", command.id)
    assert command.reply_to.startswith("facelite/fuzz/") and command.reply_to != COMMAND_TOPICS.command


def test_the_command_processor_answers_at_most_once_in_one_line_and_never_raises(tmp_path: Path) -> None:
    sha = "ab" * 32
    gallery = Gallery.open(tmp_path / "gallery.sqlite", embedder_sha256=sha, embedding_size=8)
    gallery.enroll("Ada", [np.eye(8, dtype=np.float32)[0]], ["a.jpg"])
    replay = ReplayLog(tmp_path / "commands_seen.json", window_s=3600, max_ids=50, clock=dt.datetime.now().timestamp)
    processor = CommandProcessor(COMMAND_TOPICS, allowed=None, max_bytes=4096, replay=replay)
    ctx = CommandContext(gallery, None, sha, dict)
    shapes = {"ok": {"id", "command", "ok", "result"}, "refused": {"id", "command", "ok", "error"}}

    @settings(FUZZ, max_examples=300)
    @given(
        payload=st.one_of(
            st.binary(max_size=300),
            COMMAND_DOCS.map(lambda d: json.dumps(d).encode()),
            st.builds(  # well-formed ones too, so the answered path is fuzzed as well
                lambda n, c: json.dumps({"id": f"ok-{n}", "command": c}).encode(),
                st.integers(0, 10**9),
                st.sampled_from(["ping", "list"]),
            ),
        ),
        retain=st.booleans(),
    )
    def run(payload: bytes, retain: bool) -> None:
        handled = processor.handle(Message(COMMAND_TOPICS.command, payload, qos=1, retain=retain), ctx)
        assert len(handled.replies) <= 1
        for reply in handled.replies:
            body = json.loads(reply.payload)
            assert set(body) == shapes["ok" if body["ok"] else "refused"], body
            assert reply.topic.startswith("facelite/fuzz/") and reply.topic != COMMAND_TOPICS.command
            if not body["ok"]:
                one_line(body["error"])

    run()
    with gallery:
        counts = processor.counters.as_dict()
    assert counts["ok"] > 0 and counts["refused"] > 0 and counts["invalid"] > 0, counts
    assert counts["received"] == counts["ok"] + counts["refused"] + counts["invalid"] + counts["ignored_retained"]


def state_config(tmp_path: Path, kit: Kit) -> tuple[Path, Path, Path]:
    """A copy of the kit's gallery and an agent config with a state folder; returns (config, gallery, state)."""
    state = tmp_path / "state"
    state.mkdir()
    gallery = tmp_path / "gallery.sqlite"
    shutil.copy(kit.gallery, gallery)
    config = {
        "device_id": "fuzz",
        "cameras": [{"name": "door", "source": 0}],
        "models": {"detector": str(kit.detector), "embedder": str(kit.embedder)},
        "gallery": {"path": str(gallery)},
        "spool": {"path": str(state / "spool.sqlite")},
    }
    return write_config(tmp_path / "agent.toml", config), gallery, state


def test_reject_with_bad_ids_or_a_damaged_event_face_store_is_one_line(tmp_path: Path, kit: Kit) -> None:
    _, gallery, state = state_config(tmp_path, kit)

    def reject(event_id: str) -> str:
        proc = cli("-m", "facelite.cli", "gallery", "reject", event_id, "--config", str(tmp_path / "agent.toml"))
        assert proc.returncode != 0 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
        return one_line(proc.stderr.strip())

    known = str(uuid.uuid4())
    for bad in ("", " ", "x" * 5000, "ünïcode-ïd", "-1", f"{known}x", known.replace("-", "")):
        assert "not an event id" in reject(bad)
    assert "no event faces are kept" in reject(known)  # the agent never kept any here
    store = state / "event_faces.sqlite"
    damage = {
        "noise": random.Random(5).randbytes(20000),
        "text": b"SQLite format 3 but not really\n" * 10,
        "empty-header": b"SQLite format 3\x00" + bytes(4080),
    }
    for name, raw in damage.items():
        store.write_bytes(raw)
        line = reject(known)
        assert "event face store" in line and str(store) in line, (name, line)
    store.unlink()
    sha = Embedder.from_model_dir(kit.embedder).sha256
    with EventFaceStore(store, key=None, policy=StorePolicy()) as faces:  # a face announced as someone since gone
        faces.put(EventFace(known, dt.datetime.now().timestamp(), "Nobody", "door", sha, np.ones(192, np.float32)))
    assert "who is no longer in the gallery" in reject(known)
    with Gallery.open(gallery, embedder_sha256=sha, embedding_size=192) as g:
        assert sum(p.negatives for p in g.people()) == 0


# -- enrolment: `facelite enroll NAME --from-event EVENT_ID` and `--camera SOURCE` -------------------------------
def test_enroll_from_event_with_bad_ids_a_damaged_store_or_a_replay_is_one_line(tmp_path: Path, kit: Kit) -> None:
    config, gallery, state = state_config(tmp_path, kit)

    def enroll(event_id: str, *more: str, ok: bool = False) -> str:
        proc = cli("-m", "facelite.cli", "enroll", "Newcomer", *more, "--from-event", event_id, "--config", str(config))
        assert "Traceback" not in proc.stderr and (proc.returncode == 0) is ok, proc.stderr
        return one_line(proc.stdout.strip() if ok else proc.stderr.strip())

    def templates() -> dict[str, int]:
        with Gallery.open(gallery, embedder_sha256=sha, embedding_size=192) as g:
            return {p.name: p.templates for p in g.people()}

    known = str(uuid.uuid4())
    for bad in ("", "x" * 5000, "ünïcode-ïd", f"{known}x", known.replace("-", "")):
        assert "not an event id (facelite enroll --from-event)" in enroll(bad)
    assert "exactly one of them" in enroll(known, str(kit.people["fr_obama"][0]))
    assert "no event faces are kept" in enroll(known)
    store = state / "event_faces.sqlite"
    store.write_bytes(random.Random(6).randbytes(20000))
    line = enroll(known)
    assert "event face store" in line and str(store) in line
    store.unlink()
    sha = Embedder.from_model_dir(kit.embedder).sha256
    now = dt.datetime.now().timestamp()
    ids = {k: str(uuid.uuid4()) for k in ("stranger", "old", "other_model", "obama")}
    vec = np.random.default_rng(8).standard_normal(192).astype(np.float32)
    with EventFaceStore(store, key=None, policy=StorePolicy()) as faces:
        faces.put(EventFace(ids["stranger"], now, None, "door", sha, vec / np.linalg.norm(vec)))
        faces.put(EventFace(ids["old"], now - 400000, None, "door", sha, vec / np.linalg.norm(vec)))
        faces.put(EventFace(ids["other_model"], now, None, "door", "f" * 64, vec / np.linalg.norm(vec)))
        faces.put(EventFace(ids["obama"], now, "fr_obama", "door", sha, np.ones(192, np.float32) / np.sqrt(192)))
    assert "unknown event" in enroll(known)
    assert "has expired" in enroll(ids["old"])
    assert "was embedded by model ffffffffffff" in enroll(ids["other_model"])
    assert f"facelite gallery reject {ids['obama']}" in enroll(ids["obama"])
    before = templates()
    assert enroll(ids["stranger"], ok=True).startswith(f"enrolled Newcomer from event {ids['stranger']}")
    assert "already a template of Newcomer" in enroll(ids["stranger"], ok=True)  # replayed: harmless
    assert templates() == {**before, "Newcomer": 1}


def mjpg_clip(path: Path, photos: list[bytes], frames: int = 6) -> bytes:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, (320, 240))
    assert writer.isOpened()
    for i in range(frames):
        image = cv2.imdecode(np.frombuffer(photos[i % len(photos)], np.uint8), cv2.IMREAD_COLOR)
        writer.write(cv2.resize(image, (320, 240)))
    writer.release()
    return path.read_bytes()


def test_damaged_videos_give_a_capture_report_or_one_line_never_a_traceback(tmp_path: Path, kit: Kit) -> None:
    from facelite.errors import FaceliteError
    from facelite.recognition.capture import Capture, CaptureSettings, run_capture
    from facelite.service.sources import open_source
    from facelite.vision.quality import DEFAULT_GATE

    detector, embedder = create_detector(kit.detector), Embedder.from_model_dir(kit.embedder)
    clip = mjpg_clip(tmp_path / "clip.avi", kit.photos)
    outcomes: dict[str, int] = {}

    @settings(FUZZ, max_examples=30)
    @given(data=damaged_files([clip]))
    def run(data: bytes) -> None:
        path = tmp_path / "input.avi"
        path.write_bytes(data)
        capture = Capture(CaptureSettings(timeout_s=30.0), DEFAULT_GATE, lambda i, f: embedder.embed(i, f).vector)
        try:
            result = run_capture(
                open_source(path, name="fuzz", max_attempts=1), detector.detect, capture, clock=time.monotonic,
                say=lambda s: None,
            )  # fmt: skip
        except FaceliteError as exc:
            assert "no frame could be read" in one_line(exc.one_line())
            outcomes["one line"] = outcomes.get("one line", 0) + 1
            return
        one_line(result.summary())
        assert result.frames >= 1 and len(result.kept) <= 3
        outcomes["report"] = outcomes.get("report", 0) + 1

    run()
    assert len(outcomes) == 2, outcomes  # both readable and unreadable clips were exercised
    print(f"damaged videos: {outcomes}")


def test_enroll_camera_with_bad_sources_or_options_is_one_line(tmp_path: Path, kit: Kit) -> None:
    flags = ["--detector", str(kit.detector), "--embedder", str(kit.embedder), "--gallery", str(tmp_path / "g.db")]
    shutil.copy(kit.gallery, tmp_path / "g.db")
    (tmp_path / "empty").mkdir()
    (tmp_path / "noise.avi").write_bytes(random.Random(9).randbytes(5000))
    cases = {
        str(tmp_path / "missing.avi"): ([], "camera source not found"),
        str(tmp_path / "noise.avi"): ([], "no frame could be read"),
        str(tmp_path / "empty"): ([], "no frame could be read"),
        "ftp://camera/x": ([], "unsupported stream scheme"),
        "/dev/video-facelite-missing": ([], "gave up after 2 reconnect attempt(s)"),
        "0x": (["--poses", "front,up"], "poses must be distinct names"),
        "0y": (["--per-pose", "0"], "faces per pose must be 1..20"),
        "0z": (["--timeout-s", "nan"], "timeout must be > 0 seconds"),
    }
    for source, (more, says) in cases.items():
        proc = cli("-m", "facelite.cli", "enroll", "Newcomer", "--camera", source, *more, *flags)
        assert proc.returncode != 0 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
        assert says in one_line(proc.stderr.strip()), (source, proc.stderr)


# -- recurring strangers: `facelite enroll NAME --from-unknown K`, `gallery drop-unknown K` ---------------------------
@FUZZ
@given(text=st.text(max_size=40) | st.integers(-(2**40), 2**40).map(str) | st.integers(1, 10**9))
def test_cluster_numbers_are_a_whole_number_or_one_line(text: str | int) -> None:
    try:
        got = check_cluster_id(text)
    except GalleryError as exc:
        assert "not an unknown person's number" in one_line(exc.one_line())
        return
    assert got >= 1 and str(got) == str(text).strip()


@FUZZ
@given(raw=st.binary(max_size=6000), header=st.booleans())
def test_damaged_stranger_store_never_raises_in_the_agent_and_is_one_line_in_the_cli(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes, header: bool
) -> None:
    from facelite.recognition.strangers import StrangerPolicy, StrangerStore, Visit
    from facelite.service.events import Topics

    path = tmp_path_factory.mktemp("strangers") / "strangers.sqlite"
    path.write_bytes((b"SQLite format 3\x00" if header else b"") + raw)
    vector = np.ones(8, np.float32) / np.sqrt(8)
    with StrangerStore(path, key=None, policy=StrangerPolicy(threshold=0.5)) as store:
        k = store.add(Visit(1.0, 2.0, "door", "sha", vector, 0.9))  # the agent: a cluster number or None, no raise
        store.sync(Topics("fuzz"))
        try:
            store.require(1)
        except GalleryError as exc:
            one_line(exc.one_line())
        else:
            raise AssertionError(f"cluster {k} of one visit passed require()")


def test_stranger_commands_with_bad_numbers_or_a_damaged_store_are_one_line(tmp_path: Path, kit: Kit) -> None:
    state = tmp_path / "state"
    state.mkdir()
    gallery = tmp_path / "gallery.sqlite"
    shutil.copy(kit.gallery, gallery)
    config = {
        "device_id": "fuzz",
        "cameras": [{"name": "door", "source": 0}],
        "models": {"detector": str(kit.detector), "embedder": str(kit.embedder)},
        "gallery": {"path": str(gallery)},
        "spool": {"path": str(state / "spool.sqlite")},
        "strangers": {"enabled": True},
    }
    write_config(tmp_path / "agent.toml", config)

    def fails(*args: str) -> str:
        proc = cli("-m", "facelite.cli", *args, "--config", str(tmp_path / "agent.toml"))
        assert proc.returncode != 0 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
        return one_line(proc.stderr.strip())

    for bad in ("", " ", "x" * 5000, "ünï", "-1", "0", "1.0", "0x1", "1e2", "1 2"):
        assert "not an unknown person's number" in fails("enroll", "Cleo", "--from-unknown", bad)
        assert "not an unknown person's number" in fails("gallery", "drop-unknown", bad)
    assert "no strangers are kept here" in fails("enroll", "Cleo", "--from-unknown", "1")
    assert "give photos, --from-event EVENT_ID, --camera SOURCE or --from-unknown K" in fails("enroll", "Cleo")
    photo = str(kit.people[next(iter(kit.people))][0])
    assert "(exactly one of them)" in fails("enroll", "Cleo", photo, "--from-unknown", "1")
    store = state / "strangers.sqlite"
    damage = {
        "noise": random.Random(7).randbytes(20000),
        "text": b"SQLite format 3 but not really\n" * 10,
        "empty-header": b"SQLite format 3\x00" + bytes(4080),
    }
    for name, raw in damage.items():
        store.write_bytes(raw)
        for args in (
            ("enroll", "Cleo", "--from-unknown", "1"),
            ("gallery", "unknowns"),
            ("gallery", "drop-unknown", "1"),
        ):
            line = fails(*args)
            assert "stranger store" in line and str(store) in line, (name, args, line)
    with Gallery.open(gallery, embedder_sha256=Embedder.from_model_dir(kit.embedder).sha256, embedding_size=192) as g:
        assert "Cleo" not in {p.name for p in g.people()}
        someone = g.people()[0].name
    # A damaged store does not stop a forget: one warning line, the person leaves the gallery.
    proc = cli("-m", "facelite.cli", "gallery", "forget", someone, "--config", str(tmp_path / "agent.toml"))
    assert proc.returncode == 0 and proc.stdout.startswith(f"forgot {someone}"), proc.stderr
    assert "warning: unknown visits not searched" in one_line(proc.stderr.strip())
    with Gallery.open(gallery, embedder_sha256=Embedder.from_model_dir(kit.embedder).sha256, embedding_size=192) as g:
        assert someone not in {p.name for p in g.people()}


# -- configs ---------------------------------------------------------------------------------------------------
BASE: dict[str, Any] = {
    "device_id": "door1",
    "state_interval_s": 60.0,
    "log_level": "INFO",
    "cameras": [
        {
            "name": "door",
            "source": 0,
            "fps_limit": 5.0,
            "reconnect": {"initial_s": 1.0, "max_s": 60.0, "multiplier": 2.0, "jitter": 0.5},
            "realtime": False,
        }
    ],
    "models": {
        "detector": "models/d",
        "embedder": "models/e",
        "landmarks": "models/l",
        "runtime": "auto",
        "num_threads": 2,
    },
    "detection": {"min_face": 40, "score_threshold": 0.7},
    "quality": {"min_size": 60, "min_sharpness": 0.0, "max_yaw": 45.0, "max_pitch": 30.0},
    "matching": {"stranger_accept_rate": 1e-3, "threshold": 0.5, "ambiguous_margin": 0.05},
    "tracking": {
        "iou_threshold": 0.3,
        "max_missed_frames": 10,
        "max_missed_seconds": 2.0,
        "min_votes": 3,
        "recheck_interval_s": 5.0,
    },
    "mqtt": {
        "host": "localhost",
        "port": 1883,
        "client_id": "cam1",
        "base_topic": "facelite",
        "tls": {"ca_file": "ca.crt", "cert_file": "client.crt", "key_file": "client.key"},
        "username": "facelite",
        "password_env": "MQTT_PASSWORD",
        "password_file": None,  # exclusive with password_env: fuzzed alone, it must give a cross-field line
        "keepalive": 60,
        "qos": 1,
        "discovery": True,
        "discovery_prefix": "homeassistant",
        "publish_crops": False,
        "reconnect": {"initial_s": 1.0, "max_s": 120.0, "multiplier": 2.0, "jitter": 0.5},
        "close_timeout_s": 5.0,
    },
    "spool": {"path": "spool.sqlite", "max_messages": 100, "max_bytes": 1048576},
    "gallery": {
        "path": "gallery.sqlite",
        "key_file": "gallery.key",
        "max_templates_per_person": 10,
        "event_faces_keep_s": 259200.0,
        "event_faces_max": 200,
    },
    "presence": {"away_after_s": 300.0, "last_seen_interval_s": 30.0},
    # Off here, so fuzzing [mqtt] away is no problem of [commands]; fuzzing enabled = true alone is fine.
    "commands": {
        "enabled": False,
        "allowed": ["ping", "forget"],
        "max_payload_bytes": 4096,
        "replay_window_s": 86400.0,
        "replay_max_ids": 1000,
    },
    "strangers": {
        "enabled": True,
        "keep_s": 604800.0,
        "max_visits": 500,
        "min_visits": 2,
        "min_gap_s": 0.0,
        "cluster_far": 3e-6,
    },
}
Loc = tuple[str | int, ...]


def field_paths(section: type[Section], prefix: Loc = ()) -> list[Loc]:
    """Every key of the config schema, nested tables included (list items as index 0)."""
    import dataclasses
    import typing

    out: list[Loc] = []
    inner = sections_of(section)
    hints = typing.get_type_hints(section)
    for field in dataclasses.fields(section):
        path = (*prefix, field.name)
        out.append(path)
        if field.name in inner:
            is_list = typing.get_origin(hints[field.name]) is list
            out += field_paths(inner[field.name], (*path, 0) if is_list else path)
    return out


FIELDS = field_paths(AgentConfig)


def with_value(base: dict[str, Any], path: Loc, value: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(base))
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return data


def drop_none(value: Any) -> Any:
    """TOML has no null: a None is a key left out."""
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(v) for v in value if v is not None]
    return value


def toml_inline(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_inline(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_inline(str(k))} = {toml_inline(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def serialize(data: dict[str, Any], fmt: str) -> str:
    if fmt == "yaml":
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    return "\n".join(f"{toml_inline(k)} = {toml_inline(v)}" for k, v in drop_none(data).items()) + "\n"


TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-5, 100_000),
    st.floats(),
    st.floats(-10, 10_000),
    TEXT,
    st.sampled_from(["", "auto", "1e-2", "0", "-1", "/dev/video0", "rtsp://u:p@h/x", "$CREDENTIALS_DIRECTORY/x"]),
    st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1)),
)
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(TEXT, c, max_size=3), max_leaves=6)


def related(problem_key: str, field: str) -> bool:
    """A problem is about the fuzzed key, something inside it, or the table holding it (cross-field rules)."""
    if problem_key == field:
        return True
    inside = problem_key.startswith((field + ".", field + "["))
    around = field.startswith((problem_key + ".", problem_key + "[")) or problem_key == ""
    return inside or around


def test_base_config_is_valid_and_covers_every_field(tmp_path: Path) -> None:
    for fmt in ("toml", "yaml"):
        path = tmp_path / f"agent.{fmt}"
        path.write_text(serialize(BASE, fmt))
        load_config(path, check_files=False)
    covered = {path for path in FIELDS if _has(BASE, path)}
    assert covered == set(FIELDS), set(FIELDS) - covered
    assert len(FIELDS) > 60


def _has(data: Any, path: Loc) -> bool:
    for part in path:
        if isinstance(part, int):
            if not isinstance(data, list) or len(data) <= part:
                return False
        elif not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def test_every_config_field_fuzzed_gives_one_line_per_problem_with_its_key_path(tmp_path: Path) -> None:
    seen: dict[str, int] = {"valid": 0, "refused": 0}

    @settings(FUZZ, max_examples=400)
    @given(path=st.sampled_from(FIELDS), value=VALUES, fmt=st.sampled_from(["toml", "yaml"]))
    def run(path: Loc, value: Any, fmt: str) -> None:
        data = with_value(BASE, path, value)
        config = tmp_path / f"agent.{fmt}"
        config.write_text(serialize(data, fmt), encoding="utf-8")
        field = key_path(path)
        try:
            load_config(config, check_files=False)
        except ConfigErrors as exc:
            seen["refused"] += 1
            assert exc.problems
            for problem in exc.problems:
                line = one_line(str(problem))
                if problem.line is None:  # only a missing top-level key has no line to point at
                    assert problem.reason == "required key is missing" and len(path) == 1, line
                    assert line.startswith(f"{config}: "), line
                else:
                    assert line.startswith(f"{config}:{problem.line}: "), line
                assert related(problem.key, field), (field, line)
        except ConfigError as exc:  # the serialiser above only writes valid TOML/YAML
            pytest.fail(f"file-level error for {field}={value!r}: {exc.one_line()}")
        else:
            seen["valid"] += 1

    run()
    assert seen["refused"] > 200 and seen["valid"] > 0, seen
    print(f"config fuzz: {seen}")


def test_random_config_text_is_one_line_per_problem(tmp_path: Path) -> None:
    @settings(FUZZ, max_examples=150)
    @given(
        text=st.one_of(TEXT, st.text(max_size=300), st.binary(max_size=300)),
        fmt=st.sampled_from(["toml", "yaml", "yml"]),
    )
    def run(text: str | bytes, fmt: str) -> None:
        config = tmp_path / f"agent.{fmt}"
        if isinstance(text, bytes):
            config.write_bytes(text)
        else:
            config.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(config, check_files=False)
        except ConfigError as exc:
            for line in exc.one_line().splitlines():
                one_line(line)
                assert line.startswith(str(config)) or f"({config}" in line, line

    run()


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A ten-line YAML file whose aliases expand to width**levels values (billion laughs)."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines)


def test_malformed_configs_through_the_cli_are_one_line_each_never_a_traceback_or_a_hang(tmp_path: Path) -> None:
    cases = {
        "control.toml": 'device_id = "x"\n"evil\\nkey\\u001b[2J" = 1\n'
        + toml_text({"cameras": [{"name": "door", "source": 0}], "models": {"detector": "d", "embedder": "e"}}),
        "types.toml": toml_text(
            {
                "device_id": 7,
                "cameras": [{"name": "bad name!", "source": True, "reconnect": {"initial_s": -1}}],
                "models": {"detector": "d", "embedder": "e", "num_threads": "2"},
                "mqtt": {"host": "h", "password": "hunter2"},
            }
        ),
        "bomb.yaml": alias_bomb()
        + "\ndevice_id: *a8\ncameras: [{name: door, source: 0}]\nmodels: {detector: a, embedder: b}\n",
        "broken.toml": "[mqtt\nhost = \n",
        "binary.yaml": "\x00\x01\x02 not: [yaml",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        proc = cli("-m", "facelite", "--config", str(path), "--check-config", timeout=30)
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        for line in lines:
            one_line(line)
            assert str(path) in line, line
        assert "hunter2" not in proc.stderr
    print("cli config errors ok")
