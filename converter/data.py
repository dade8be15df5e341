"""Fetch the project's photo set from its pinned public sources when no local mirror is given.

Every file is listed in converter/data/faces_sources.csv with its repository, full commit, path and
sha256; a file whose bytes do not match is refused. ``pairs.csv`` (labels) ships with the project.

    python -m converter.data --out build/data
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent / "data"
RAW = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def fetch(out: Path, timeout: float = 60.0) -> int:
    faces = out / "faces"
    faces.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "faces_pairs.csv", faces / "pairs.csv")
    failures = 0
    with open(HERE / "faces_sources.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        rel = row["file"]
        dest = (out / rel) if rel.startswith("models/") else (faces / rel)
        if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == row["sha256"]:
            continue
        url = RAW.format(repo=row["repository"], commit=row["commit"], path=row["path_in_repository"])
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                data = resp.read()
        except OSError as exc:
            print(f"error: cannot fetch {rel} from {url}: {exc}", file=sys.stderr)
            failures += 1
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != row["sha256"]:
            print(f"error: {rel}: sha256 {digest[:16]}… does not match pinned {row['sha256'][:16]}…", file=sys.stderr)
            failures += 1
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(dest.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(dest)
    print(f"data: {len(rows) - failures}/{len(rows)} files in {out}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m converter.data", description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    return fetch(ap.parse_args(argv).out)


if __name__ == "__main__":
    raise SystemExit(main())
