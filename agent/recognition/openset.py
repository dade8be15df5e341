"""Open-set decisions at the gallery's real size: the user's per-visit risk becomes a per-comparison threshold.

The user says how often a stranger's visit may be announced as someone enrolled (``matching.
stranger_accept_rate``, default 1e-3). A stranger is announced when their best score over all N templates
of the gallery passes the threshold, so the per-comparison rate must be ``f = 1 - (1 - P)^(1/N)``
(``facelite.model.metrics.per_comparison_far``), and the threshold is read off the embedder manifest's calibration
curve at ``f`` for the detector the agent runs. It is recomputed whenever the gallery changes size.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

from facelite.errors import ModelError
from facelite.model.manifest import Calibration, Manifest
from facelite.model.metrics import per_comparison_far, visit_far
from facelite.recognition.gallery import Hygiene

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenSetThreshold:
    threshold: float  # accept a comparison at score >= threshold
    templates: int  # N, the gallery's templates when it was computed
    target_visit_far: float | None  # what the user asked for (None: a fixed threshold from the config)
    per_comparison_far: float | None  # f the curve was read at
    expected_visit_far: float | None  # what the curve promises at this threshold for N templates
    source: str  # where the threshold came from, for logs, `gallery list` and the state message

    def as_dict(self) -> dict[str, object]:
        return {
            "threshold": round(self.threshold, 5),
            "templates": self.templates,
            "target_stranger_accept_rate": self.target_visit_far,
            "per_comparison_far": self.per_comparison_far,
            "expected_stranger_accept_rate": self.expected_visit_far,
            "source": self.source,
        }


def curve_threshold(calibration: Calibration, far: float) -> tuple[float, float]:
    """(threshold, the rate it holds) at per-comparison rate ``far``: log-linear between curve points.

    Beyond the curve's lowest rate the last point's threshold is returned with that point's rate, so
    the caller can say the target is out of the calibration's reach rather than pretend.
    """
    points = calibration.curve
    if far >= points[0].far:
        return points[0].threshold, points[0].far
    for hi, lo in itertools.pairwise(points):
        if lo.far <= far <= hi.far:
            w = (math.log10(hi.far) - math.log10(far)) / (math.log10(hi.far) - math.log10(lo.far))
            return hi.threshold + w * (lo.threshold - hi.threshold), far
    return points[-1].threshold, points[-1].far


def pick_calibration(manifest: Manifest, detector: str) -> tuple[str, Calibration] | None:
    """The calibration measured through ``detector`` (its name, e.g. "blazeface"), or the first one."""
    if not manifest.calibration:
        return None
    if detector in manifest.calibration:
        return detector, manifest.calibration[detector]
    name = sorted(manifest.calibration)[0]
    log.warning(
        "%s/%s has no calibration through detector %r; using the one through %r",
        manifest.name,
        manifest.variant,
        detector,
        name,
    )
    return name, manifest.calibration[name]


def resolve_threshold(
    manifest: Manifest, *, detector: str, stranger_accept_rate: float, templates: int, fixed: float | None = None
) -> OpenSetThreshold:
    """The match threshold for a gallery of ``templates`` templates."""
    n = max(int(templates), 1)
    picked = pick_calibration(manifest, detector)
    if fixed is not None:
        expected = None
        if picked is not None:
            far = _far_at(picked[1], fixed)
            expected = visit_far(far, n) if far is not None else None
        return OpenSetThreshold(fixed, templates, None, None, expected, "config matching.threshold")
    if picked is None:
        # An uncalibrated model (e.g. converted without LFW): the per-comparison 1e-3 threshold is the best
        # there is, and it says so rather than claiming the per-visit rate.
        if "1e-3" not in manifest.thresholds:
            raise ModelError(
                f"manifest of {manifest.name}/{manifest.variant} has no calibration curve and no threshold",
                fix="re-run `make convert` with the LFW photos in the data directory, or set matching.threshold",
            )
        return OpenSetThreshold(
            manifest.thresholds["1e-3"],
            templates,
            stranger_accept_rate,
            1e-3,
            visit_far(1e-3, n),
            "manifest threshold at per-comparison FAR 1e-3 (uncalibrated model)",
        )
    return threshold_from_calibration(picked[1], stranger_accept_rate, templates)


def threshold_from_calibration(cal: Calibration, stranger_accept_rate: float, templates: int) -> OpenSetThreshold:
    """The threshold holding ``stranger_accept_rate`` per visit over ``templates`` templates, from one curve."""
    n = max(int(templates), 1)
    wanted = per_comparison_far(stranger_accept_rate, n)
    threshold, held = curve_threshold(cal, wanted)
    if held > wanted * (1 + 1e-9):
        log.warning(
            "a stranger accept rate of %g over %d templates needs a per-comparison rate of %.2g, below the "
            "calibration's reach (%.2g): using its strictest threshold, expected rate %.2g",
            stranger_accept_rate,
            n,
            wanted,
            held,
            visit_far(held, n),
        )
    source = f"calibration through {cal.detector} on {cal.people}"
    return OpenSetThreshold(threshold, templates, stranger_accept_rate, wanted, visit_far(held, n), source)


def _far_at(calibration: Calibration, threshold: float) -> float | None:
    """Per-comparison rate at ``threshold`` (log-linear between points); None above the curve's reach."""
    points = calibration.curve
    if threshold <= points[0].threshold:
        return points[0].far
    for hi, lo in itertools.pairwise(points):
        if hi.threshold <= threshold <= lo.threshold:
            if lo.threshold == hi.threshold:
                return lo.far
            w = (threshold - hi.threshold) / (lo.threshold - hi.threshold)
            return float(10 ** (math.log10(hi.far) + w * (math.log10(lo.far) - math.log10(hi.far))))
    return None


def enrolment_hygiene(
    manifest: Manifest, *, detector: str, max_templates: int, stranger_accept_rate: float, fixed: float | None
) -> Hygiene:
    """Template hygiene for every way of enrolling (CLI, commands): the per-person limit, and the threshold the
    gallery will use at its new size (refuse a face that another person would claim, warn of look-alikes).
    Without a calibration curve or a fixed threshold, only the limit applies."""

    def threshold_for(templates: int) -> float:
        return resolve_threshold(
            manifest, detector=detector, stranger_accept_rate=stranger_accept_rate, templates=templates, fixed=fixed
        ).threshold

    try:
        threshold_for(1)
    except ModelError:
        return Hygiene(max_templates)
    return Hygiene(max_templates, threshold_for)
