"""Fetch the project's photo set from its pinned public sources when no local mirror is given.

Every file is listed in converter/data/*_sources.csv (the sample photos, LFW, the WIDER FACE slice) with
its repository, full commit, path and sha256; a file whose bytes do not match is refused. ``pairs.csv``
(labels) ships with the project; WIDER's ``gt.txt`` is cut from the official ground truth it fetches.

    python -m facelite.converter.data --out build/data
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent / "data"
RAW = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"


# (pinned list, what it holds): every path in a list is relative to faces/ (models/ to the data folder).
SOURCE_LISTS = (
    ("faces_sources.csv", "85 photos of 25 people, group photos, YuNet"),
    ("lfw_sources.csv", "LFW View 2: 7,701 photos and pairs.txt"),
    ("wider_sources.csv", "WIDER FACE validation slice: 187 photos and the official ground truth"),
)


def _fetch_one(row: dict[str, str], out: Path, timeout: float) -> str | None:
    """Fetch one pinned file (skipped when already there with the right sha256); an error line or None."""
    rel = row["file"]
    dest = (out / rel) if rel.startswith("models/") else (out / "faces" / rel)
    if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == row["sha256"]:
        return None
    url = RAW.format(repo=row["repository"], commit=row["commit"], path=row["path_in_repository"])
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = resp.read()
    except OSError as exc:
        return f"error: cannot fetch {rel} from {url}: {exc}"
    digest = hashlib.sha256(data).hexdigest()
    if digest != row["sha256"]:
        return f"error: {rel}: sha256 {digest[:16]}… does not match pinned {row['sha256'][:16]}…"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return None


def wider_slice_gt(full_gt: Path, images: Path) -> str:
    """The official ground-truth blocks of the photos present under ``images``, unchanged and in file order
    (how faces/wider/gt.txt is cut from wider_face_val_bbx_gt.txt)."""
    lines = full_gt.read_text().splitlines(keepends=True)
    out: list[str] = []
    i = 0
    while i < len(lines):
        name = lines[i].strip()
        count = int(lines[i + 1])
        block = lines[i : i + 2 + max(count, 1)]
        if (images / name).is_file():
            out += block
        i += 2 + max(count, 1)
    return "".join(out)


def fetch(out: Path, timeout: float = 60.0, workers: int = 8) -> int:
    faces = out / "faces"
    faces.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "faces_pairs.csv", faces / "pairs.csv")
    failures = total = 0
    for list_name, what in SOURCE_LISTS:
        with open(HERE / list_name, newline="") as fh:
            rows = list(csv.DictReader(fh))
        with ThreadPoolExecutor(workers) as pool:
            errors = [e for e in pool.map(lambda r: _fetch_one(r, out, timeout), rows) if e]
        for line in errors:
            print(line, file=sys.stderr)
        failures += len(errors)
        total += len(rows)
        print(f"data: {what}: {len(rows) - len(errors)}/{len(rows)} files")
    full_gt = faces / "wider" / "wider_face_val_bbx_gt.txt"
    if full_gt.is_file():
        (faces / "wider" / "gt.txt").write_text(wider_slice_gt(full_gt, faces / "wider" / "images"))
    print(f"data: {total - failures}/{total} files in {out}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m facelite.converter.data", description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    return fetch(ap.parse_args(argv).out)


if __name__ == "__main__":
    raise SystemExit(main())
