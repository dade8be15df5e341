"""`facelite enroll NAME --camera SOURCE` on a clip built from real photos: real models, the real CLI process.

The clip holds frames without a face, blurred faces, faces too small for the gate, frames with two people, then one
frontal photo, one photo of the same person turned to one side and its mirror image (mirroring flips the sign of
the yaw), then more frames the capture must not need. The report must count each kind exactly as the clip holds it,
and the enrolled person must then be recognised on held-out photos of theirs (the agent's --self-test path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from soak import enroll_gallery, pick, write_config

from facelite.tools.demo import FRAME, place
from facelite.vision.imageio import read_image

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
PERSON = "deepface_id04"  # img17 frontal, img16 turned (yaw about +30, its mirror about -25), img62 and img59 held out
GREY = 90


def cli(*args: str, module: str = "facelite.cli") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=300
    )


def on_canvas(image: np.ndarray, scale: float) -> np.ndarray:
    """The frame shrunk by ``scale`` on an empty grey frame (the person far from the camera)."""
    canvas = np.full((FRAME[1], FRAME[0], 3), GREY, np.uint8)
    small = cv2.resize(image, (int(FRAME[0] * scale), int(FRAME[1] * scale)), interpolation=cv2.INTER_AREA)
    canvas[100 : 100 + small.shape[0], 100 : 100 + small.shape[1]] = small
    return canvas


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    canvas = np.full((FRAME[1], FRAME[0], 3), GREY, np.uint8)
    half = (FRAME[0] // 2, FRAME[1] // 2)
    canvas[120 : 120 + half[1], : half[0]] = cv2.resize(left, half, interpolation=cv2.INTER_AREA)
    canvas[120 : 120 + half[1], half[0] :] = cv2.resize(right, half, interpolation=cv2.INTER_AREA)
    return canvas


def write_clip(path: Path, frames: list[np.ndarray]) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10, FRAME)
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, faces_dir: Path, models_dir: Path) -> dict[str, object]:
    work = tmp_path_factory.mktemp("capture")
    people = faces_dir / "people"
    detector, embedder = pick(models_dir, "blazeface"), pick(models_dir, "mobilefacenet")
    others = {n: sorted((people / n).glob("*.jpg"))[:3] for n in ("deepface_id00", "deepface_id01")}
    assert set(enroll_gallery(work / "gallery.sqlite", detector, embedder, others)) == set(others)
    config = {
        "device_id": "capture",
        "cameras": [{"name": "door", "source": str(people / PERSON / "img62.jpg")}],
        "models": {"detector": str(detector), "embedder": str(embedder), "num_threads": 1},
        "spool": {"path": str(work / "state" / "spool.sqlite")},
        "gallery": {"path": str(work / "gallery.sqlite")},
    }
    front = place(read_image(people / PERSON / "img17.jpg"))
    turned = place(read_image(people / PERSON / "img16.jpg"))
    stranger = place(read_image(people / "deepface_id01" / "img45.jpg"))
    blank = np.full((FRAME[1], FRAME[0], 3), GREY, np.uint8)
    side = 150.0  # px, the frontal face's side in `front` (BlazeFace)
    clip = {
        "no_face": [blank] * 5,
        # sigma = face/25 .. face/15 leaves a sharpness under 9 (quality.py), the gate wants 15.
        "blurred": [cv2.GaussianBlur(front, (0, 0), side / k) for k in (15, 20, 25, 30)],
        # The face at 50-55 px: found by the detector (min_face 40), under quality.min_size (60).
        "too_small": [on_canvas(front, s) for s in (0.33, 0.35, 0.36)],
        "several": [side_by_side(front, stranger)] * 2,
        "good": [front, turned, cv2.flip(turned, 1)],
        "after": [front] * 4,  # never read: every pose has its face by then
    }
    frames = [f for part in clip.values() for f in part]
    return {
        "work": work,
        "config": write_config(work / "agent.toml", config),
        "clip": write_clip(work / "clip.avi", frames),
        "counts": {k: len(v) for k, v in clip.items()},
        "held_out": [people / PERSON / "img62.jpg", people / PERSON / "img59.jpg"],
        "blank": write_clip(work / "blank.avi", [blank] * 3 + clip["blurred"]),
    }


def test_capture_from_a_clip_keeps_one_face_per_pose_counts_the_rest_and_the_person_is_then_recognised(
    world: dict[str, object],
) -> None:
    config, counts = str(world["config"]), world["counts"]
    assert isinstance(counts, dict)
    proc = cli("enroll", "Dee", "--camera", str(world["clip"]), "--config", config)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    read = sum(v for k, v in counts.items() if k != "after")
    summary = (
        f"kept 3 template(s) (front 1, left 1, right 1); "
        f"refused {counts['blurred'] + counts['too_small']} face(s): {counts['blurred']} blurred, "
        f"{counts['too_small']} too small; {counts['no_face']} frame(s) without a face; "
        f"{counts['several']} frame(s) with several faces ({read} frame(s), stopped: complete)"
    )
    assert summary in proc.stdout.splitlines(), proc.stdout
    assert "enrolled Dee: 3 template(s) from the camera; 0 refused" in proc.stdout
    prompts = [line for line in proc.stderr.splitlines() if line.startswith("pose ")]
    assert prompts == [
        "pose front: look straight at the camera",
        "pose left: turn your head a little to your left",
        "pose right: turn your head a little to your right",
    ], proc.stderr
    listing = cli("gallery", "list", "--config", config)
    assert "Dee\t3 template(s)" in listing.stdout, listing.stdout

    # Held-out photos of her are recognised as Dee through the agent's own matcher and open-set threshold.
    held_out = world["held_out"]
    assert isinstance(held_out, list)
    for photo in held_out:
        test = cli("--config", config, "--self-test", str(photo), module="agent")
        assert test.returncode == 0, test.stderr
        (match,) = json.loads(test.stdout)["matches"]
        assert (match["person"], match["decision"]) == ("Dee", "known"), (photo.name, match)


def test_capture_that_keeps_nothing_fails_in_one_line_and_enrols_no_one(world: dict[str, object]) -> None:
    config = str(world["config"])
    proc = cli("enroll", "Eve", "--camera", str(world["blank"]), "--config", config)
    assert proc.returncode == 1 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("pose ")]
    assert len(errors) == 1 and errors[0].startswith("error: nothing enrolled for Eve: kept 0 template(s)")
    assert "refused 4 face(s): 4 blurred; 3 frame(s) without a face" in errors[0]
    assert "stopped: end of source" in errors[0] and "no face for: front, left, right" in errors[0]
    assert "Eve" not in cli("gallery", "list", "--config", config).stdout
