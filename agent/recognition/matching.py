"""Open-set matching of one face against every template: the decision rule and the matrix it runs on.

Matching keeps all templates in one float32 matrix (rows grouped by person) rebuilt on every gallery change:
one matrix-vector product, a per-person max (``np.maximum.reduceat``) and two argmax calls per query.
Corrections (negatives of a person, agent/recognition/gallery.py) take a person out of the running for a probe
closer to one of
their negatives than to their templates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from facelite.errors import ConfigError, GalleryError

Decision = Literal["known", "unknown", "ambiguous"]


@dataclass(frozen=True)
class Match:
    """Result of one open-set query.

    ``person`` is the best candidate when the decision is ``known`` or ``ambiguous`` and None when
    ``unknown``; ``runner_up`` is always the second-best *person* (None with fewer than two people).
    ``margin`` is best minus runner-up similarity; with no runner-up it is measured against -1, the
    lowest cosine possible, so it stays comparable instead of being a made-up constant.
    """

    person: str | None
    similarity: float
    margin: float
    decision: Decision
    runner_up: str | None
    refused: str | None = None  # best-scoring person refused by their negatives (a correction), if any


@dataclass(frozen=True)
class Matcher:
    """Open-set decision rule: a person is announced at similarity >= ``threshold`` (agent/recognition/openset.py
    computes
    it for the gallery's size; agent/model/metrics.py uses the same >= rule), ``margin`` from config."""

    threshold: float
    margin: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and -1.0 <= self.threshold <= 1.0):
            raise ConfigError(f"match threshold must be a cosine in [-1, 1], got {self.threshold}", "matcher.threshold")
        if not (math.isfinite(self.margin) and 0.0 <= self.margin <= 2.0):
            raise ConfigError(f"match margin must be in [0, 2], got {self.margin}", "matcher.margin")

    def match(self, index: TemplateIndex, vector: np.ndarray) -> Match:
        """Decide on an already validated, unit-length float32 ``vector`` of ``index.dim`` values."""
        if index.size == 0:
            return Match(None, -1.0, 0.0, "unknown", None)
        scores = index.matrix @ vector
        per_person = np.maximum.reduceat(scores, index.starts)
        refused: str | None = None
        if index.negatives.shape[0]:
            # The correction rule: a person whose negatives are closer to the probe than their templates are is
            # out of the running (score -inf); the open-set rule then decides among everyone else.
            closest_negative = np.full(per_person.shape, -np.inf, np.float32)
            np.maximum.at(closest_negative, index.negative_owner, index.negatives @ vector)
            out = closest_negative > per_person
            if out.any():
                refused = index.names[int(np.argmax(np.where(out, per_person, -np.inf)))]
                per_person = np.where(out, -np.inf, per_person)
        best = int(np.argmax(per_person))
        best_score = float(per_person[best])
        if not math.isfinite(best_score):  # everyone refused
            return Match(None, -1.0, 0.0, "unknown", None, refused)
        runner_up: str | None = None
        second_score = -1.0
        if per_person.size > 1:
            per_person[best] = -np.inf  # reduceat/where returned a fresh array: safe to overwrite
            second = int(np.argmax(per_person))
            if math.isfinite(float(per_person[second])):
                second_score = float(per_person[second])
                runner_up = index.names[second]
        margin = best_score - second_score
        if best_score < self.threshold:
            return Match(None, best_score, margin, "unknown", runner_up, refused)
        if runner_up is not None and second_score >= self.threshold and margin < self.margin:
            return Match(index.names[best], best_score, margin, "ambiguous", runner_up, refused)
        return Match(index.names[best], best_score, margin, "known", runner_up, refused)


@dataclass(frozen=True, eq=False)
class TemplateIndex:
    """All templates as one matrix, rows grouped by person: ``rows starts[i]..starts[i+1]`` are ``names[i]``."""

    matrix: np.ndarray  # [N, dim] float32, unit rows
    starts: np.ndarray  # [P] int64
    names: tuple[str, ...]
    dim: int
    negatives: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # [M, dim] unit rows
    negative_owner: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [M] index into names

    @property
    def size(self) -> int:
        return int(self.matrix.shape[0])

    @classmethod
    def empty(cls, dim: int) -> TemplateIndex:
        return cls(np.zeros((0, dim), np.float32), np.zeros(0, np.int64), (), dim)

    def negatives_of(self, person: str) -> np.ndarray:
        try:
            i = self.names.index(person)
        except ValueError:
            return self.negatives[:0]
        return self.negatives[self.negative_owner == i]

    def rows_of(self, person: str) -> np.ndarray:
        try:
            i = self.names.index(person)
        except ValueError:
            return self.matrix[:0]
        end = int(self.starts[i + 1]) if i + 1 < len(self.starts) else self.size
        return self.matrix[int(self.starts[i]) : end]


@dataclass
class IndexBuilder:
    dim: int
    names: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)

    def add(self, name: str, vector: np.ndarray) -> None:
        if not self.names or self.names[-1] != name:
            self.names.append(name)
            self.starts.append(len(self.rows))
        self.rows.append(vector)

    def build(self, negatives: Sequence[tuple[str, np.ndarray]] = ()) -> TemplateIndex:
        if not self.rows:
            return TemplateIndex.empty(self.dim)
        matrix = np.ascontiguousarray(np.stack(self.rows).astype(np.float32, copy=False))
        # Negatives of a person without templates cannot refuse anything: they are kept in the file, not here.
        owned = [(self.names.index(n), v) for n, v in negatives if n in self.names]
        neg = np.ascontiguousarray(np.stack([v for _, v in owned]).astype(np.float32)) if owned else None
        return TemplateIndex(
            matrix,
            np.asarray(self.starts, np.int64),
            tuple(self.names),
            self.dim,
            neg if neg is not None else np.zeros((0, self.dim), np.float32),
            np.asarray([i for i, _ in owned], np.int64),
        )


def check_vector(vector: Any, dim: int, where: str) -> np.ndarray:
    """A finite, non-zero vector of ``dim`` values -> unit-length float32 [dim]; GalleryError otherwise."""
    v = np.asarray(vector, dtype=np.float32)
    if v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.shape != (dim,):
        raise GalleryError(f"embedding has shape {tuple(v.shape)}, expected ({dim},)", where, "wrong embedder?")
    if not np.isfinite(v).all():
        raise GalleryError("embedding contains NaN or infinity", where, "the embedder output is broken")
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        raise GalleryError("embedding is all zeros", where, "the embedder output is broken")
    return (v / norm).astype(np.float32)
