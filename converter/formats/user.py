"""A recipe for the user's own embedder file (``facelite-convert --source PATH``).

The format is detected from the content; the facts a catalogued recipe writes by hand (embedding size,
crop size) are read from the loaded graph instead, so they cannot disagree with the model.
Detectors from user files are refused: the agent needs decoding code per detector family.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from facelite.converter.formats import FormatError
from facelite.converter.formats.detect import detect_format, load_any
from facelite.converter.recipe import GraphSource
from facelite.model.manifest import Alignment, Preprocessing, Source
from facelite.vision.align import TEMPLATES
from facelite.vision.embed import preprocess

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def source_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative paths and contents, in sorted order)."""
    from facelite.model.manifest import sha256_file

    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        digest.update(bytes.fromhex(sha256_file(f)))
    return digest.hexdigest()


@dataclass
class UserRecipe:
    """An embedder from a local file; graph-derived facts (embedding size, crop size) load on first use."""

    name: str
    path: Path
    format: str
    preprocessing: Preprocessing
    template: str
    size: list[int] | None  # [W, H]; None: the model input's
    inputs: Sequence[str] | None = None
    outputs: Sequence[str] | None = None
    input_shape: Sequence[int] | None = None
    sample_images: Sequence[np.ndarray] = ()  # photos for onnx2tf's internal checks (ONNX only)
    kind: Literal["detector", "embedder"] = "embedder"
    detector_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    default_variants: Sequence[str] = ("fp32", "int8")
    _graph: GraphSource | None = field(default=None, init=False, repr=False)
    _embedding_size: int | None = field(default=None, init=False, repr=False)
    _sha256: str | None = field(default=None, init=False, repr=False)

    # -- facts read from the model ---------------------------------------------------------------
    def _load(self) -> GraphSource:
        if self._graph is None:
            kw: dict[str, Any] = {"inputs": self.inputs, "outputs": self.outputs, "input_shape": self.input_shape}
            if self.format == "onnx":
                kw["sample_images"] = list(self.sample_images)
            graph = load_any(self.path, **kw)
            where = str(self.path)
            shape = graph.input_shape
            if len(shape) != 4 or shape[3] != 3:
                raise FormatError(
                    f"embedder input must be one NHWC image [1,H,W,3], the model's is {shape}",
                    where,
                    "name the image input with --inputs / --input-shape",
                )
            if any(s < 0 for s in shape):
                raise FormatError(f"embedder input {shape} has unknown dimensions", where, "pass --input-shape 1,H,W,3")
            if self.size is not None and [self.size[1], self.size[0]] != shape[1:3]:
                raise FormatError(
                    f"--size {self.size[0]},{self.size[1]} (W,H) does not match the model input {shape}", where
                )
            out = graph.reference.run(np.zeros(shape, np.float32))
            if len(out) != 1:
                raise FormatError(
                    f"an embedder has one output, this model has {len(out)} (shapes {[list(o.shape) for o in out]})",
                    where,
                    "name the embedding output with --outputs",
                )
            emb = out[0]
            if emb.ndim < 2 or emb.shape[0] != 1 or int(np.prod(emb.shape[1:])) != emb.shape[-1]:
                raise FormatError(f"embedding output has shape {list(emb.shape)}, expected [1, D]", where)
            self._embedding_size = int(emb.shape[-1])
            self._graph = graph
            log.info("%s: %s input %s, %d-d embeddings", self.name, self.format, shape, self._embedding_size)
        return self._graph

    @property
    def embedding_size(self) -> int | None:
        self._load()
        return self._embedding_size

    @property
    def alignment(self) -> Alignment | None:
        if self.size is not None:
            return Alignment(self.template, list(self.size))
        shape = self._load().input_shape
        return Alignment(self.template, [int(shape[2]), int(shape[1])])

    # -- Recipe ----------------------------------------------------------------------------------
    def source(self) -> Source:
        if self._sha256 is None:
            self._sha256 = source_sha256(self.path)
        return Source(
            registry="file",
            package=self.path.name,
            version="",
            file=str(self.path),
            sha256=self._sha256,
            format=self.format,
        )

    def graphs(self) -> list[GraphSource]:
        return [self._load()]

    def calibration_samples(self, graph: str, images: Sequence[np.ndarray], count: int) -> list[list[np.ndarray]]:
        return [[preprocess(c, self.preprocessing)] for c in images[:count]]

    def detector(self, networks: dict[str, Any]) -> Any:
        raise FormatError(f"{self.name} is an embedder")


def _sample_photos(args: Any, limit: int = 20) -> list[np.ndarray]:
    from facelite.errors import FaceliteError
    from facelite.tools.dataset import data_dir
    from facelite.vision.imageio import list_images, read_image

    folder = getattr(args, "calibration", None)
    if folder is None:
        try:
            folder = data_dir(getattr(args, "data_dir", None)) / "faces" / "people"
        except FaceliteError:
            return []
    folder = Path(folder)
    if not folder.is_dir():
        return []
    dirs = [folder, *[d for d in sorted(folder.iterdir()) if d.is_dir()]]
    paths = [p for d in dirs for p in list_images(d)]
    images = []
    for p in paths[:limit]:
        try:
            images.append(read_image(p))
        except FaceliteError as exc:
            log.warning("skipped %s", exc.one_line())
    return images


def user_recipe(args: Any) -> UserRecipe:
    """The recipe for ``--source``: checks every option before any model is loaded."""
    path = Path(args.source)
    kind = getattr(args, "kind", "embedder")
    if kind != "embedder":
        raise FormatError(
            f"--kind {kind}: only embedders can be converted from your own file",
            str(path),
            "detectors need per-family decoding in the agent; use a catalogued detector (mtcnn, blazeface)",
        )
    name = getattr(args, "name", None)
    if not name:
        raise FormatError("--name is required with --source", str(path), "e.g. --name mynet")
    if not NAME_RE.match(name):
        raise FormatError(f"--name {name!r} must be lower-case letters, digits, '_', '-' or '.'", fix="e.g. mynet")
    if args.template not in TEMPLATES:
        raise FormatError(f"unknown --template {args.template!r}", fix=f"known: {', '.join(sorted(TEMPLATES))}")
    size = list(args.size) if args.size else None
    if size is not None and (len(size) != 2 or min(size) < 8):
        raise FormatError(f"--size must be W,H (each >= 8), got {args.size}")
    if not args.std or args.std <= 0:
        raise FormatError(f"--std must be > 0, got {args.std}")
    fmt = detect_format(path)
    samples = _sample_photos(args) if fmt == "onnx" else []
    return UserRecipe(
        name=name,
        path=path.resolve(),
        format=fmt,
        preprocessing=Preprocessing(color=args.color, mean=float(args.mean), std=float(args.std)),
        template=args.template,
        size=size,
        inputs=args.inputs,
        outputs=args.outputs,
        input_shape=args.input_shape,
        sample_images=samples,
    )
