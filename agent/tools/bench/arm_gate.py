"""`make bench-arm`'s check of the variants whose arithmetic differs on the device (issue 11).

`make convert` gates every variant on this machine, where an ``fp16-arith`` variant computes in float32: those gates
say nothing about the float16 arithmetic a Cortex-A76 runs (facelite.model.manifest.DEVICE_CHECKED_VARIANTS). Here
the variant and its model's fp32 run on the same emulated core, in the device runtime, on real inputs, and the host
compares what the agent would make of the two sets of outputs:

- embedders: faces of faces/people, found by BlazeFace fp32 and aligned as the agent aligns them; every face's
  embedding within ``MIN_FACE_COSINE`` of fp32's on that core, and the verification AUC over every labelled pair
  within ``MAX_AUC_DROP`` of fp32's (the converter's AUC gate);
- detectors (BlazeFace): the photos of faces/scenes and faces/people, letterboxed as the agent does; the agent's own
  decoder and NMS run over both raw outputs, and the variant must find ``MIN_RECALL`` of fp32's faces at IoU 0.5 with
  mean IoU ``MIN_MEAN_IOU`` (the converter's detector gates, held against fp32 on that core instead of the source).

The guest runs come in through ``GuestRunner`` (arm.py runs them under qemu), so this module is numpy and the agent.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facelite.model.manifest import Manifest
from facelite.model.metrics import roc_auc
from facelite.tools.bench.boxmatch import greedy_match, iou_matrix
from facelite.tools.dataset import people_tree
from facelite.vision.align import align_face
from facelite.vision.detect.blazeface import GRAPH, BlazeFaceConfig, BlazeFaceDetector, prepare_input
from facelite.vision.embed import l2_normalize, preprocess
from facelite.vision.geometry import Face
from facelite.vision.imageio import list_images, read_image

log = logging.getLogger(__name__)

# fp16 arithmetic is a rounding of fp32's, not a quantisation: docs/experiments/fp16_arith.md measured cosine 0.99996
# (min 0.99994) on the A76, so a face below 0.999 means the arithmetic went wrong, not that it is coarse.
MIN_FACE_COSINE = 0.999
MAX_AUC_DROP = 0.002  # the converter's Gates.max_auc_drop
MIN_RECALL = 0.95  # the converter's Gates.min_detector_recall
MIN_MEAN_IOU = 0.85  # the converter's Gates.min_detector_iou
IOU_MATCH = 0.5

# (cpu, graph file, inputs [N, ...]) -> the graph's outputs, each [N, ...], in its output order, run on that core.
GuestRunner = Callable[[str, Path, np.ndarray], list[np.ndarray]]


@dataclass(frozen=True)
class DeviceCheck:
    """One variant against its model's fp32, both run on one emulated core in one runtime."""

    model: str
    variant: str
    cpu: str
    runtime: str
    inputs: int  # faces (embedders) or photos (detectors)
    figures: dict[str, float]
    gates: dict[str, bool]
    reason: str = ""  # why it could not be checked (then it did not pass)

    @property
    def passed(self) -> bool:
        return bool(self.gates) and all(self.gates.values()) and not self.reason

    def summary(self) -> str:
        if self.reason:
            return self.reason
        shown = ", ".join(f"{k} {v:.5g}" for k, v in self.figures.items())
        failed = [k for k, ok in self.gates.items() if not ok]
        return shown + (f"; failed {', '.join(failed)}" if failed else "")


# -- comparisons (pure) ------------------------------------------------------------------------------------------------
def embedder_gates(ref: np.ndarray, got: np.ndarray, people: Sequence[str]) -> tuple[dict[str, float], dict[str, bool]]:
    """Figures and gates of embeddings ``got`` against ``ref`` ([N, D] each, raw) of faces of ``people``."""
    ref = np.stack([l2_normalize(v) for v in ref])
    got = np.stack([l2_normalize(v) for v in got])
    cos = np.sum(ref * got, axis=1)
    pairs = list(itertools.combinations(range(len(people)), 2))
    same = np.array([people[i] == people[j] for i, j in pairs], bool)

    def auc(e: np.ndarray) -> float:
        scores = np.array([float(e[i] @ e[j]) for i, j in pairs])
        return roc_auc(scores[same], scores[~same])

    auc_ref, auc_got = auc(ref), auc(got)
    figures = {
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "auc_fp32": auc_ref,
        "auc": auc_got,
    }
    gates = {
        f"min_cosine>={MIN_FACE_COSINE}": figures["min_cosine"] >= MIN_FACE_COSINE,
        f"auc_drop<={MAX_AUC_DROP}": auc_ref - auc_got <= MAX_AUC_DROP,
    }
    return figures, gates


def detector_gates(
    ref: Sequence[Sequence[Face]], got: Sequence[Sequence[Face]]
) -> tuple[dict[str, float], dict[str, bool]]:
    """Figures and gates of the faces ``got`` in each photo against ``ref``'s (fp32's on the same core)."""
    if len(ref) != len(got):
        raise ValueError(f"{len(got)} photos of detections against {len(ref)}")
    total = matched = extra = 0
    ious: list[float] = []
    for r_faces, g_faces in zip(ref, got):
        iou = iou_matrix(_boxes(g_faces), _boxes(r_faces))
        pairs = greedy_match(iou, IOU_MATCH)
        total += len(r_faces)
        matched += len(pairs)
        extra += len(g_faces) - len(pairs)
        ious += [float(iou[d, r]) for d, r in pairs]
    figures = {
        "fp32_faces": float(total),
        "recall": matched / total if total else 1.0,
        "mean_iou": float(np.mean(ious)) if ious else (1.0 if not total else 0.0),
        "extra_faces": float(extra),
    }
    gates = {
        f"recall>={MIN_RECALL}": figures["recall"] >= MIN_RECALL,
        f"mean_iou>={MIN_MEAN_IOU}": figures["mean_iou"] >= MIN_MEAN_IOU,
    }
    return figures, gates


def _boxes(faces: Sequence[Face]) -> np.ndarray:
    return np.array([[f.bbox.x1, f.bbox.y1, f.bbox.x2, f.bbox.y2] for f in faces], np.float64).reshape(-1, 4)


class _Replay:
    """A Network that returns the outputs a graph gave on the guest, for the inputs it was given there, in order."""

    def __init__(self, inputs: np.ndarray, outputs: list[np.ndarray]) -> None:
        self.inputs, self.outputs, self.next = inputs, outputs, 0

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        i = self.next
        if i >= len(self.inputs) or not np.array_equal(inputs[0][0], self.inputs[i]):
            raise RuntimeError(f"replayed input {i} is not the one run on the device")
        self.next += 1
        return [o[i][None] for o in self.outputs]


# -- inputs (host) -----------------------------------------------------------------------------------------------------
def photos(data_dir: Path) -> list[Path]:
    """The detector check's photos: group scenes, then every photo of faces/people."""
    faces = data_dir / "faces"
    return list_images(faces / "scenes") + [p for ps in people_tree(faces / "people").values() for p in ps]


def frames(manifest: Manifest, data_dir: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """(photos, the detector's letterboxed inputs [N, H, W, 3]) as the agent prepares them, no zoom-out."""
    size = BlazeFaceConfig.from_extra(manifest.extra, f"model {manifest.name}").input_size
    images = [read_image(p) for p in photos(data_dir)]
    return images, np.stack([prepare_input(im, size, manifest.preprocessing)[0][0] for im in images])


def faces(manifest: Manifest, data_dir: Path, detector: BlazeFaceDetector) -> tuple[list[str], np.ndarray]:
    """(person of each face, the embedder's inputs [N, ...]): the largest face of every faces/people photo."""
    if manifest.alignment is None:
        raise ValueError(f"{manifest.name} has no alignment: not an embedder")
    size = (int(manifest.alignment.size[0]), int(manifest.alignment.size[1]))
    people, xs = [], []
    for person, paths in people_tree(data_dir / "faces" / "people").items():
        for path in paths:
            image = read_image(path)
            found = detector.detect(image)
            if found:
                face = max(found, key=lambda f: f.bbox.area * f.score)
                crop = align_face(image, face, manifest.alignment.template, size)
                people.append(person)
                xs.append(preprocess(crop, manifest.preprocessing)[0])
    return people, np.stack(xs)


def detections(
    manifest: Manifest, images: Sequence[np.ndarray], x: np.ndarray, outputs: list[np.ndarray], min_face: int
) -> list[list[Face]]:
    """The agent's faces (one look, no retry) from outputs the graph gave on the device for inputs ``x``."""
    detector = BlazeFaceDetector(manifest, {GRAPH: _Replay(x, outputs)}, min_face=min_face, retry=False)
    return [detector.detect_once(im) for im in images]


# -- one check ---------------------------------------------------------------------------------------------------------
def check_variant(
    models_dir: Path,
    data_dir: Path,
    model: str,
    variant: str,
    cpus: Sequence[str],
    runtime: str,
    run: GuestRunner,
    *,
    min_face: int,
) -> list[DeviceCheck]:
    """``model/variant`` against ``model/fp32`` on each CPU: one DeviceCheck per CPU (inputs made once)."""
    fp32, cand = Manifest.load(models_dir / model / "fp32"), Manifest.load(models_dir / model / variant)

    def refused(reason: str) -> list[DeviceCheck]:
        return [DeviceCheck(model, variant, cpu, runtime, 0, {}, {}, reason) for cpu in cpus]

    graph = GRAPH if cand.kind == "detector" else next(iter(cand.graphs))
    files = (
        models_dir / model / "fp32" / fp32.graphs[graph].file,
        models_dir / model / variant / cand.graphs[graph].file,
    )
    if cand.kind == "embedder":
        detector = BlazeFaceDetector.from_model_dir(models_dir / "blazeface" / "fp32", min_face=min_face)
        people, x = faces(cand, data_dir, detector)
        out = []
        for cpu in cpus:
            ref_emb, got_emb = (run(cpu, f, x)[0].reshape(len(x), -1) for f in files)
            figures, gates = embedder_gates(ref_emb, got_emb, people)
            out.append(DeviceCheck(model, variant, cpu, runtime, len(x), figures, gates))
        return out
    if cand.detector_type != "blazeface":
        return refused(f"no device check for {cand.detector_type} detectors: not deployable per CPU")
    images, x = frames(cand, data_dir)
    out = []
    for cpu in cpus:
        ref_faces, got_faces = (detections(m, images, x, run(cpu, f, x), min_face) for m, f in zip((fp32, cand), files))
        figures, gates = detector_gates(ref_faces, got_faces)
        out.append(DeviceCheck(model, variant, cpu, runtime, len(images), figures, gates))
    return out


def as_by_cpu(checks: Sequence[DeviceCheck]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{cpu: {variant: {"passed", "summary"}}}`` of one model: what by_cpu.json records for make deploy."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for c in checks:
        out.setdefault(c.cpu, {})[c.variant] = {"passed": c.passed, "summary": c.summary()}
    return out
