"""Recurring strangers, the user's side: list them, drop one, enrol one after a person confirms who it is.

``enroll_from_unknown`` is the one way a stranger's faces enter the gallery: the CLI (``facelite enroll NAME
--from-unknown k``) and the MQTT command call it. It never runs on its own: a person names the stranger. The
cluster's faces go through the same template hygiene as photos (a face closer to someone already enrolled is
refused; at most ``gallery.max_templates_per_person``, the most central), and then the cluster is erased from the
store, so the agent clears the ``unknown/<k>`` message at its next look (within 5 s, or at its next start).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from facelite.errors import GalleryError
from facelite.model.manifest import Manifest
from facelite.recognition.gallery import EnrollOutcome, Gallery, Hygiene
from facelite.recognition.openset import curve_threshold, pick_calibration
from facelite.recognition.strangers import DROPPED, ENROLLED, Cluster, StrangerStore, check_cluster_id
from facelite.service.events import utc_iso

log = logging.getLogger(__name__)


def cluster_threshold(manifest: Manifest, detector: str, far: float) -> float:
    """The similarity whose per-comparison false-accept rate is ``far`` on the embedder's calibration curve."""
    picked = pick_calibration(manifest, detector)
    if picked is None:
        raise GalleryError(
            f"{manifest.name}/{manifest.variant} has no calibration curve: recurring strangers cannot be clustered",
            "strangers.cluster_far",
            "re-run `make convert` with the LFW photos in the data directory, or set strangers.enabled = false",
        )
    return curve_threshold(picked[1], far)[0]


@dataclass(frozen=True)
class UnknownEnrollment:
    k: int
    cluster: Cluster
    outcome: EnrollOutcome
    faces: int  # faces the cluster held
    erased: int  # faces erased from the store (0 when nothing was enrolled)


def enroll_from_unknown(
    store: StrangerStore, gallery: Gallery, name: str, k: object, *, embedder_sha256: str, hygiene: Hygiene
) -> UnknownEnrollment:
    """Enrol unknown person ``k`` as ``name`` (a person confirmed it). One-line GalleryError when ``k`` is not a
    number, unknown, expired, already enrolled or dropped, seen on too few visits, from another model, or when
    every face is refused by template hygiene (then the cluster is kept)."""
    number = check_cluster_id(k)
    faces = store.faces(number)
    if faces.embedder_sha256 != embedder_sha256:
        raise GalleryError(
            f"unknown person {number} was embedded by model {faces.embedder_sha256[:12]}, "
            f"the gallery uses {embedder_sha256[:12]}",
            str(store.path),
            "enrol someone seen since the model changed",
        )
    # Best quality first: hygiene keeps the most central of them within the per-person limit.
    chosen = faces.vectors[: max(hygiene.max_templates_per_person, 1)]
    sources = [f"unknown {number} visit {i + 1}" for i in range(len(chosen))]
    qualities = list(faces.qualities[: len(chosen)])
    outcome = gallery.add_templates(name, list(chosen), sources, qualities, hygiene=hygiene)
    if outcome.added == 0 and len(outcome.refused) == len(chosen):
        refusal = outcome.refused[0]
        raise GalleryError(
            f"every face of unknown person {number} was refused for {outcome.person}: they match "
            f"{refusal.other} better ({refusal.other_similarity:.3f})",
            str(gallery.path),
            f"if this is {refusal.other}, enrol them under that name; nothing was changed",
        )
    erased = store.erase(number, ENROLLED, outcome.person)
    log.info("unknown person %d enrolled as %s: %d template(s) added", number, outcome.person, outcome.added)
    return UnknownEnrollment(number, faces.cluster, outcome, len(faces.vectors), erased)


def drop_unknown(store: StrangerStore, k: object) -> int:
    """Erase unknown person ``k`` (any live cluster, announced or not); the faces erased."""
    number = check_cluster_id(k)
    if number not in {c.k for c in store.clusters()}:
        store.require(number)  # says why: unknown, expired, enrolled or dropped
    return store.erase(number, DROPPED)


def unknowns_lines(store: StrangerStore) -> list[str]:
    """``facelite gallery unknowns``: one line per live cluster."""
    lines = []
    for c in store.clusters():
        ready = "can be enrolled" if c.visits >= store.policy.min_visits else "not announced yet"
        lines.append(
            f"{c.k}\t{c.visits} visit(s)\t{c.faces} face(s)\tfirst {utc_iso(c.first_seen)}\tlast "
            f"{utc_iso(c.last_seen)}\tcameras {','.join(c.cameras)}\t{ready}"
        )
    return lines
