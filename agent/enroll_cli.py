"""``facelite enroll NAME --from-event EVENT_ID`` and ``facelite enroll NAME --camera SOURCE``.

The command-line side only: reading the options, opening models, gallery and sources, printing. The work is in
agent/recognition/enrolment.py (an event's face) and agent/recognition/capture.py (guided capture). Kept out of
agent/cli.py so that file
stays a dispatcher.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from facelite.errors import FaceliteError

log = logging.getLogger(__name__)

CAMERA_ATTEMPTS = 2  # a missing camera is reported after this many tries, not retried for ever as the agent does


def add_options(p: argparse.ArgumentParser) -> None:
    """The enroll options of this module (photos stay positional in agent/cli.py)."""
    p.add_argument("--from-event", metavar="EVENT_ID", help="enrol the face of a recent recognized/unknown event")
    p.add_argument(
        "--camera",
        metavar="SOURCE",
        help="guided capture from a camera index, device, URL, video file or folder (as a camera `source`)",
    )
    p.add_argument("--poses", default="front,left,right", help="with --camera: poses to ask for, in order")
    p.add_argument("--per-pose", type=int, default=1, help="with --camera: faces kept per pose")
    p.add_argument("--timeout-s", type=float, default=60.0, help="with --camera: stop after this many seconds")


def wanted(args: argparse.Namespace) -> bool:
    """True when the command is one of this module's (and checks that only one kind of enrolment is asked)."""
    given = [
        bool(args.images),
        args.from_event is not None,
        args.camera is not None,
        getattr(args, "from_unknown", None) is not None,
    ]
    if sum(given) != 1:
        raise FaceliteError(
            "give photos, --from-event EVENT_ID, --camera SOURCE or --from-unknown K (exactly one of them)",
            "facelite enroll",
        )
    return not args.images


def run(args: argparse.Namespace) -> int:
    from facelite.recognition.capture import CaptureSettings, parse_poses
    from facelite.recognition.eventfaces import check_event_id
    from facelite.recognition.gallery import Gallery
    from facelite.wiring import gallery_key_from_args, hygiene_from_args, models_from_args

    # Bad input is refused before the models load (seconds on a Pi).
    if args.from_event is not None:
        check_event_id(args.from_event, "facelite enroll --from-event")
        if not args.config:
            raise FaceliteError(
                "enroll --from-event needs --config", "facelite enroll", "the agent's state folder keeps event faces"
            )
        settings = None
    else:
        settings = CaptureSettings(parse_poses(args.poses), args.per_pose, args.timeout_s)
    detector, embedder, gallery_path = models_from_args(args)
    hygiene = hygiene_from_args(args, detector, embedder)
    with Gallery.for_embedder(gallery_path, embedder, key=gallery_key_from_args(args)) as gallery:
        if settings is None:
            return _from_event(args, gallery, embedder, hygiene)
        return _from_camera(args, settings, gallery, detector, embedder, hygiene)


def _from_event(args: argparse.Namespace, gallery: Any, embedder: Any, hygiene: Any) -> int:
    from facelite.recognition.enrolment import enroll_from_event
    from facelite.service.app import open_event_faces
    from facelite.service.config import load_config

    with open_event_faces(load_config(args.config)) as store:
        done = enroll_from_event(
            gallery, store, event_id=args.from_event, name=args.name, embedder_sha256=embedder.sha256, hygiene=hygiene
        )
    if done.outcome is not None and done.outcome.refused:
        print(f"error: {done.line()}", file=sys.stderr)
        return 1
    for lookalike in done.outcome.lookalikes if done.outcome is not None else ():
        print(lookalike.line(), file=sys.stderr)
    print(done.line())
    return 0


def _from_camera(
    args: argparse.Namespace, settings: Any, gallery: Any, detector: Any, embedder: Any, hygiene: Any
) -> int:
    from facelite.recognition.capture import Capture, enrolment_gate, run_capture
    from facelite.service.app import make_gate
    from facelite.service.config import Backoff, load_config
    from facelite.service.sources import open_source, redact_url

    configured = make_gate(load_config(args.config)) if args.config else None
    gate = enrolment_gate(configured)
    # The source's own reconnect warnings would add lines around ours: the capture reports what went wrong.
    logging.getLogger("facelite.service.sources").setLevel(logging.ERROR)
    source = open_source(
        args.camera,
        name="enroll",
        max_attempts=CAMERA_ATTEMPTS,
        backoff=Backoff(initial_s=0.5, max_s=1.0),
        pace=False,
    )
    capture = Capture(settings, gate, lambda image, face: embedder.embed(image, face).vector)
    result = run_capture(
        source,
        detector.detect,
        capture,
        clock=time.monotonic,
        say=lambda text: print(f"pose {text}", file=sys.stderr, flush=True),
    )
    if not result.kept:
        print(f"error: nothing enrolled for {args.name}: {result.summary()}", file=sys.stderr)
        return 1
    where = redact_url(str(args.camera))  # a stream URL's password must not end up in the gallery
    outcome = gallery.add_templates(
        args.name,
        [k.vector for k in result.kept],
        [f"camera {where} frame {k.frame} ({k.pose})" for k in result.kept],
        [k.quality for k in result.kept],
        hygiene=hygiene,
    )
    for refusal in outcome.refused:
        print(refusal.line(), file=sys.stderr)
    for lookalike in outcome.lookalikes:
        print(lookalike.line(), file=sys.stderr)
    print(result.summary())
    if len(outcome.refused) == len(result.kept):
        print(f"error: every face of {outcome.person} was refused: nothing enrolled", file=sys.stderr)
        return 1
    print(
        f"enrolled {outcome.person}: {outcome.added} template(s) from the camera; {len(outcome.refused)} refused; "
        f"gallery version {outcome.version}"
    )
    return 0


def run_from_unknown(args: argparse.Namespace) -> int:
    """``facelite enroll NAME --from-unknown K``: a person confirmed who recurring stranger K is."""
    from facelite.recognition.gallery import Gallery
    from facelite.recognition.strangers import check_cluster_id
    from facelite.recognition.unknowns import enroll_from_unknown
    from facelite.wiring import gallery_key_from_args, hygiene_from_args, models_from_args, strangers_from_args

    k = check_cluster_id(args.from_unknown)
    detector, embedder, gallery_path = models_from_args(args)
    with (
        strangers_from_args(args, detector, embedder) as store,
        Gallery.for_embedder(gallery_path, embedder, key=gallery_key_from_args(args)) as gallery,
    ):
        hygiene = hygiene_from_args(args, detector, embedder)
        done = enroll_from_unknown(store, gallery, args.name, k, embedder_sha256=embedder.sha256, hygiene=hygiene)
    for line in [r.line() for r in done.outcome.refused] + [la.line() for la in done.outcome.lookalikes]:
        print(line, file=sys.stderr)
    print(
        f"enrolled {done.outcome.person}: {done.outcome.added} template(s) from unknown person {k} "
        f"({done.cluster.visits} visits, {done.faces} face(s)); {len(done.outcome.refused)} refused; their faces "
        f"were erased from the stranger store; gallery version {done.outcome.version}"
    )
    return 0
