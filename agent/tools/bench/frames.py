"""Test frames and streams composed from the real photos (no synthetic faces anywhere).

Each face is cut from a real photo around the face the device's own detector finds, and placed on a
grey 'doorway' at a controlled size, so frame size and face count are the only things that change
between scaling points. Runs in the orchestrator, without TensorFlow.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facelite.errors import ImageError
from facelite.tools.bench.common import BenchError
from facelite.tools.dataset import people_tree
from facelite.tools.demo import plan
from facelite.vision.align import align_face
from facelite.vision.detect import Detector
from facelite.vision.geometry import BBox
from facelite.vision.imageio import read_image

log = logging.getLogger(__name__)

GREY = 90
FACE_BOX_FACTOR = 2.4  # square crop side / face box side: head and some shoulders, like a doorway camera
MAX_FACE_SIDE = 0.6  # square crop side as a fraction of the frame height (one face: ~0.25 H face box)
STREAM_FPS = 25.0
FACE_COUNTS = (1, 2, 3, 5, 8)
RESOLUTIONS = ((320, 240), (640, 480), (1280, 720), (1920, 1080))


@dataclass(frozen=True)
class Stream:
    """A video of visits for the agent end-to-end run: ``faces`` people in view at once per visit."""

    name: str
    faces: int
    video: Path
    frames: int
    frames_with_faces: int
    visits: int
    fps: float


@dataclass(frozen=True)
class CropSet:
    """Aligned uint8 BGR crops (npz: ``crops`` [N,H,W,3], ``persons``, ``sources``) at one alignment size."""

    size: tuple[int, int]
    path: Path
    count: int


@dataclass(frozen=True)
class Prepared:
    people_dir: Path  # the folder-per-person tree every accuracy figure is computed on
    photos: int
    one_face: list[Path]  # 640x480 frames with one face each (different people)
    by_faces: dict[int, list[Path]]  # face count -> 640x480 frames
    by_resolution: dict[str, list[Path]]  # "WxH" -> frames with one face
    streams: list[Stream]
    enroll: dict[str, CropSet]  # "WxH" alignment size -> crops of the enrolment photos (demo.plan split)
    probes: dict[str, CropSet]  # "WxH" -> crops of every photo (embedder latency inputs)


@dataclass(frozen=True)
class PrepOptions:
    people_dir: Path
    work: Path
    quick: bool
    alignments: dict[str, tuple[str, tuple[int, int]]]  # "WxH" -> (template, size) of the embedders benched


def size_key(size: Sequence[int]) -> str:
    return f"{int(size[0])}x{int(size[1])}"


def quick_people(people_dir: Path, dest: Path, count: int = 6, per_person: int = 3) -> Path:
    """A small folder-per-person tree of symlinks: the ``count`` people whose photos are smallest on disk
    (fast to decode and detect), at most ``per_person`` photos each, so ``--quick`` runs in seconds."""
    tree = {k: v for k, v in people_tree(people_dir).items() if len(v) >= 2}
    ranked = sorted(tree, key=lambda p: (sum(f.stat().st_size for f in tree[p][:per_person]), p))
    dest.mkdir(parents=True, exist_ok=True)
    for person in sorted(ranked[:count]):
        folder = dest / person
        folder.mkdir(exist_ok=True)
        for photo in tree[person][:per_person]:
            link = folder / photo.name
            if not link.exists():
                os.symlink(photo.resolve(), link)
    return dest


def square_crop(image: np.ndarray, box: BBox, out: int, factor: float = FACE_BOX_FACTOR) -> np.ndarray:
    """A square of ``factor`` x the face box around its centre, grey where it leaves the photo, ``out`` px."""
    cx, cy = box.center
    half = factor * max(box.width, box.height) / 2
    x0, y0, x1, y1 = (round(v) for v in (cx - half, cy - half, cx + half, cy + half))
    h, w = image.shape[:2]
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    if pad:
        image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(GREY, GREY, GREY))
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    return cv2.resize(image[y0:y1, x0:x1], (out, out), interpolation=cv2.INTER_AREA)


def compose(heads: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """``heads`` (square crops) on a grey frame of ``size`` = (W, H), in a grid that fits them all."""
    width, height = size
    frame = np.full((height, width, 3), GREY, np.uint8)
    n = len(heads)
    if n == 0:
        return frame
    cols = math.ceil(math.sqrt(n * width / height))
    rows = math.ceil(n / cols)
    cell_w, cell_h = width // cols, height // rows
    side = min(cell_w, cell_h, int(MAX_FACE_SIDE * height))
    for i, head in enumerate(heads):
        r, c = divmod(i, cols)
        x = c * cell_w + (cell_w - side) // 2
        y = r * cell_h + (cell_h - side) // 2
        frame[y : y + side, x : x + side] = cv2.resize(head, (side, side), interpolation=cv2.INTER_AREA)
    return frame


def _write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise BenchError("OpenCV cannot write a frame", str(path))
    return path


def write_stream(path: Path, groups: Sequence[Sequence[np.ndarray]], visit: int, gap: int) -> tuple[int, int]:
    """An MJPG video: each group of heads in view for ``visit`` frames, then ``gap`` empty frames
    (long enough for the tracker to end the visit). Returns (frames, frames with faces)."""
    size = (640, 480)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), STREAM_FPS, size)
    if not writer.isOpened():
        raise BenchError("OpenCV cannot write an MJPG video", str(path))
    empty = compose([], size)
    frames = with_faces = 0
    for heads in groups:
        frame = compose(heads, size)
        for _ in range(visit):
            writer.write(frame)
        for _ in range(gap):
            writer.write(empty)
        frames += visit + gap
        with_faces += visit
    writer.release()
    return frames, with_faces


def _crop_set(
    path: Path, size: tuple[int, int], crops: list[np.ndarray], persons: list[str], sources: list[str]
) -> CropSet:
    if not crops:
        raise BenchError("no faces found to build aligned crops from", str(path))
    np.savez(path, crops=np.stack(crops), persons=np.array(persons), sources=np.array(sources))
    return CropSet(size, path, len(crops))


@dataclass(frozen=True)
class _PhotoFaces:
    """What the bench keeps of one photo (never the full image: some are 12 MP)."""

    person: str
    head: np.ndarray  # 600x600 square around the face
    aligned: dict[str, np.ndarray]  # alignment key -> aligned crop


def _photo_faces(detector: Detector, tree: dict[str, list[Path]], opts: PrepOptions) -> dict[Path, _PhotoFaces]:
    out: dict[Path, _PhotoFaces] = {}
    for person, photos in tree.items():
        for photo in photos:
            try:
                image = read_image(photo)
            except ImageError as exc:
                log.warning("skipped %s", exc.one_line())
                continue
            found = detector.detect(image)
            if not found:
                log.info("no face in %s/%s: left out of frames and crops", person, photo.name)
                continue
            face = max(found, key=lambda f: f.bbox.area)
            aligned = {key: align_face(image, face, t, s) for key, (t, s) in opts.alignments.items()}
            out[photo] = _PhotoFaces(person, square_crop(image, face.bbox, 600), aligned)
    return out


def prepare(detector: Detector, opts: PrepOptions) -> Prepared:
    """Detect the largest face of every photo once, then write frames, streams and aligned crops."""
    work = opts.work
    people = quick_people(opts.people_dir, work / "people") if opts.quick else opts.people_dir
    tree = people_tree(people)
    enroll_sets, visits = plan(people)
    faces = _photo_faces(detector, tree, opts)
    # Heads for frames come from the visit photos (people the gallery did not enroll from these photos).
    heads = [faces[v.photo].head for v in visits if v.photo in faces]
    if len(heads) < 2:
        raise BenchError(f"only {len(heads)} visit photos with a face; need at least 2", str(people))
    k = 2 if opts.quick else 6  # different frames per point, so one photo does not decide a figure

    def rotate(n: int, j: int) -> list[np.ndarray]:
        return [heads[(j * n + i) % len(heads)] for i in range(n)]

    frames_dir = work / "frames"
    one_face = [_write_png(frames_dir / f"one_{j}.png", compose(rotate(1, j), (640, 480))) for j in range(k)]
    counts = FACE_COUNTS[:2] if opts.quick else FACE_COUNTS
    by_faces = {
        n: [_write_png(frames_dir / f"faces{n}_{j}.png", compose(rotate(n, j), (640, 480))) for j in range(k)]
        for n in counts
    }
    resolutions = RESOLUTIONS[:2] if opts.quick else RESOLUTIONS
    by_res = {
        size_key(s): [_write_png(frames_dir / f"res{size_key(s)}_{j}.png", compose(rotate(1, j), s)) for j in range(k)]
        for s in resolutions
    }
    streams = []
    visit, gap = (10, 6) if opts.quick else (30, 6)
    for n, groups_wanted in ((1, 3 if opts.quick else 12), (5, 1 if opts.quick else 4)):
        groups = [rotate(n, j) for j in range(groups_wanted)]
        video = work / "streams" / f"faces{n}.avi"
        video.parent.mkdir(parents=True, exist_ok=True)
        total, shown = write_stream(video, groups, visit, gap)
        streams.append(Stream(f"{n} face{'s' if n > 1 else ''}", n, video, total, shown, len(groups), STREAM_FPS))
    crops_dir = work / "crops"
    crops_dir.mkdir(parents=True, exist_ok=True)
    enrolled = {photo: person for person, photos in enroll_sets.items() for photo in photos}
    enroll: dict[str, CropSet] = {}
    probes: dict[str, CropSet] = {}
    for key, (_, size) in opts.alignments.items():
        chosen = [(p, f) for p, f in faces.items() if p in enrolled]
        enroll[key] = _crop_set(
            crops_dir / f"enroll_{key}.npz",
            size,
            [f.aligned[key] for _, f in chosen],
            [f.person for _, f in chosen],
            [p.name for p, _ in chosen],
        )
        probes[key] = _crop_set(
            crops_dir / f"probes_{key}.npz",
            size,
            [f.aligned[key] for f in faces.values()],
            [f.person for f in faces.values()],
            [p.name for p in faces],
        )
    return Prepared(
        people_dir=people,
        photos=sum(map(len, tree.values())),
        one_face=one_face,
        by_faces=by_faces,
        by_resolution=by_res,
        streams=streams,
        enroll=enroll,
        probes=probes,
    )


def load_frames(paths: Sequence[Path]) -> list[np.ndarray]:
    out = []
    for p in paths:
        image = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if image is None:
            raise BenchError("frame cannot be read", str(p))
        out.append(image)
    return out


def load_crops(crop_set: CropSet) -> tuple[np.ndarray, list[str], list[str]]:
    data = np.load(crop_set.path)
    return data["crops"], [str(p) for p in data["persons"]], [str(s) for s in data["sources"]]
