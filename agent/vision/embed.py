"""Face embedder over one .tflite graph: aligned crop in, L2-normalised float32 vector out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facelite.errors import ModelError
from facelite.model.manifest import Manifest, Preprocessing
from facelite.model.runtime import Network, load_graphs
from facelite.vision.align import align_face
from facelite.vision.geometry import Face


@dataclass(frozen=True)
class Embedding:
    vector: np.ndarray  # float32, unit length
    model_sha256: str


def preprocess(crop_bgr: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Aligned uint8 BGR crop -> float32 [1,H,W,3] (or NCHW) in the model's input range."""
    img = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2RGB) if pre.color == "RGB" else crop_bgr
    x = (img.astype(np.float32) - pre.mean) / pre.std
    if pre.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return x[None]


def l2_normalize(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


class Embedder:
    """Runs the embedder artifact named by a manifest; ``network`` may be any Network (tests, converter)."""

    def __init__(self, manifest: Manifest, network: Network) -> None:
        if manifest.kind != "embedder" or manifest.alignment is None:
            raise ValueError(f"{manifest.name} is not an embedder manifest")
        self.manifest = manifest
        self.network = network
        self.size = (int(manifest.alignment.size[0]), int(manifest.alignment.size[1]))

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, *, runtime: str = "auto", num_threads: int = 1) -> Embedder:
        manifest = Manifest.load(model_dir)
        if manifest.kind != "embedder":
            raise ModelError(f"{manifest.name} is a {manifest.kind}, not an embedder", str(model_dir))
        graphs = load_graphs(manifest, model_dir, runtime=runtime, num_threads=num_threads)
        model = graphs["model"]
        out = model.output_shapes()[0]
        if out[-1] != manifest.embedding_size:
            raise ModelError(
                f"model outputs {out[-1]}-d embeddings but manifest says {manifest.embedding_size}",
                str(model_dir),
                "wrong model for this manifest; re-run `make convert`",
            )
        return cls(manifest, model)

    @property
    def sha256(self) -> str:
        return self.manifest.sha256

    def align(self, image_bgr: np.ndarray, face: Face) -> np.ndarray:
        assert self.manifest.alignment is not None
        return align_face(image_bgr, face, self.manifest.alignment.template, self.size)

    def embed_crop(self, crop_bgr: np.ndarray) -> Embedding:
        """Embed an already aligned crop."""
        out = self.network.run(preprocess(crop_bgr, self.manifest.preprocessing))[0]
        return Embedding(l2_normalize(out), self.sha256)

    def embed(self, image_bgr: np.ndarray, face: Face) -> Embedding:
        return self.embed_crop(self.align(image_bgr, face))
