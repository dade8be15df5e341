"""Peak RSS of the agent service with and without O-Net landmarks (docs/experiments/onet_landmarks.md).

Run from the repository root after `make convert`:
    .venv/bin/python docs/experiments/onet_landmarks_rss.py --models build/models --data-dir ../shared

Writes a 400-frame 640x480 MJPG video of sample photos (one face in view), starts mosquitto on a free loopback
port, and runs `python -m facelite --config` on it (one core, one interpreter thread) with the pi pipeline
(blazeface/fp32 + mobilefacenet/fp32), then the same with ``[models] landmarks`` set; each twice. `make bench`
measures the figure held against the 120 MB target on its own stream; this compares the two pipelines.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from facelite.vision.imageio import list_images, read_image


def make_video(people: Path, out: Path) -> Path:
    photos = [p for d in sorted(people.iterdir()) if d.is_dir() for p in list_images(d)][:20]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 480))
    for i in range(400):
        image = read_image(photos[(i // 20) % len(photos)])
        s = 360 / max(image.shape[:2])
        image = cv2.resize(image, None, fx=s, fy=s)
        frame = np.zeros((480, 640, 3), np.uint8)
        frame[60 : 60 + image.shape[0], 100 : 100 + image.shape[1]] = image
        writer.write(frame)
    writer.release()
    return out


def config(work: Path, name: str, models: Path, video: Path, port: int, landmarks: bool) -> Path:
    path = work / f"{name}.toml"
    extra = f'landmarks = "{models / "mtcnn" / "fp32"}"\n' if landmarks else ""
    path.write_text(
        f'device_id = "rss-{name}"\nstate_interval_s = 5\nlog_level = "WARNING"\n\n'
        f'[[cameras]]\nname = "door"\nsource = "{video}"\n\n'
        f'[models]\ndetector = "{models / "blazeface" / "fp32"}"\nembedder = "{models / "mobilefacenet" / "fp32"}"\n'
        f"{extra}num_threads = 1\n\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\ndiscovery = false\n\n'
        f'[spool]\npath = "{work / (name + "-spool.sqlite")}"\n\n'
        f'[gallery]\npath = "{work / (name + "-gallery.sqlite")}"\n'
    )
    return path


def peak_rss_mb(config_path: Path) -> float:
    """ru_maxrss of one agent run (a fresh helper process, so RUSAGE_CHILDREN is this agent's alone)."""
    code = (
        "import resource, subprocess, sys\n"
        "p = subprocess.run(['taskset', '-c', '0', sys.executable, '-m', 'facelite', '--config', sys.argv[1]])\n"
        "sys.exit(p.returncode) if p.returncode else print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(config_path)], capture_output=True, text=True, check=True)
    for stale in config_path.parent.glob("*.sqlite*"):
        stale.unlink()
    return int(proc.stdout.strip()) / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=Path("build/models"))
    ap.add_argument("--data-dir", type=Path, default=Path("../shared"))
    args = ap.parse_args()
    models = args.models.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        video = make_video(args.data_dir / "faces" / "people", work / "one.avi")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        broker = subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for name, landmarks in (("plain", False), ("onet", True)) * 2:
                mb = peak_rss_mb(config(work, name, models, video, port, landmarks))
                print(f"{name:<5} peak RSS {mb:.1f} MB", flush=True)
        finally:
            broker.terminate()
            broker.wait()


if __name__ == "__main__":
    main()
