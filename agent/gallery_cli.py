"""`facelite gallery list|remove|forget|rename|export|import|reject|unknowns|drop-unknown`: the gallery as the
agent's own files hold it (the rules live in agent/recognition/galleryops.py, shared with the MQTT commands)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from facelite.errors import FaceliteError
from facelite.wiring import strangers_from_args


def _unknowns_cmd(args: argparse.Namespace, detector: Any, embedder: Any) -> str:
    """``gallery unknowns`` and ``gallery drop-unknown K``."""
    from facelite.recognition.unknowns import drop_unknown, unknowns_lines

    with strangers_from_args(args, detector, embedder) as store:
        if args.action == "drop-unknown":
            erased = drop_unknown(store, args.args[0])
            return f"dropped unknown person {int(args.args[0])}: {erased} face(s) erased"
        lines = unknowns_lines(store)
        return "\n".join([*lines, f"{len(lines)} unknown person(s) kept"])


def gallery_cmd(args: argparse.Namespace) -> int:
    from facelite.recognition.gallery import Gallery
    from facelite.wiring import gallery_key_from_args, models_from_args

    detector, embedder, gallery_path = models_from_args(args)
    with Gallery.for_embedder(gallery_path, embedder, key=gallery_key_from_args(args)) as g:
        if args.action == "list":
            for p in g.people():
                print(f"{p.name}\t{p.templates} template(s)\t{p.negatives} negative(s)\tslug={p.slug}")
            print(f"{len(g.people())} people, gallery version {g.version}")
            print(_threshold_line(args, detector, embedder, g.index.size))
        elif args.action == "remove":
            g.remove(args.args[0])
            print(f"removed {args.args[0]}")
        elif args.action in ("unknowns", "drop-unknown"):
            print(_unknowns_cmd(args, detector, embedder))
        elif args.action == "forget":
            strangers = _forget_strangers(args, g, detector, embedder, args.args[0])  # before the templates go
            outcome = _forget(args, g)
            print(
                f"forgot {outcome.person}"
                + (f" and {outcome.faces_erased} face(s) of their recent events" if outcome.faces_erased else "")
                + (f" and {strangers} face(s) of unknown visits that match them" if strangers else "")
                + ("" if outcome.complete else " (another process holds the file: traces vanish when it closes)")
            )
        elif args.action == "reject":
            print(_reject(args, g, embedder))
        elif args.action == "rename":
            from facelite.recognition.galleryops import rename_person

            old, new = rename_person(g, args.args[0], args.args[1])
            print(f"renamed {old} -> {new}")
        elif args.action == "export":
            n = g.export(Path(args.args[0]))
            print(f"exported {n} template(s) to {args.args[0]}")
        elif args.action == "import":
            n = g.import_(Path(args.args[0]))
            print(f"imported {n} template(s) from {args.args[0]}")
    return 0


def _forget(args: argparse.Namespace, gallery: Any) -> Any:
    """Forget a person; with --config also the faces of their recent events (the agent does it too, within 5 s)."""
    from facelite.recognition.galleryops import forget_person

    if not getattr(args, "config", None):
        return forget_person(gallery, None, args.args[0])
    from facelite.service.app import open_event_faces
    from facelite.service.config import load_config

    with open_event_faces(load_config(args.config)) as store:
        return forget_person(gallery, store, args.args[0])


def _forget_strangers(args: argparse.Namespace, gallery: Any, detector: Any, embedder: Any, person: str) -> int:
    """Erase the unknown visits that look like ``person`` (seen before they were enrolled) from the stranger store."""
    if not getattr(args, "config", None):
        return 0
    from facelite.recognition.names import normalize_name
    from facelite.service.config import load_config

    if not load_config(args.config).strangers.enabled and not _strangers_file(args).exists():
        return 0
    name = normalize_name(person)
    try:
        with strangers_from_args(args, detector, embedder) as store:
            return store.forget_like(gallery.index.rows_of(name), embedder.sha256, name)
    except FaceliteError as exc:
        # A damaged stranger store must not stop a forget: the person still leaves the gallery, and is told.
        print(f"warning: unknown visits not searched for {name}: {exc.one_line()}", file=sys.stderr)
        return 0


def _strangers_file(args: argparse.Namespace) -> Path:
    from facelite.recognition.strangers import store_path
    from facelite.service.config import load_config

    return store_path(load_config(args.config).spool.path)


def _reject(args: argparse.Namespace, gallery: Any, embedder: Any) -> str:
    """``facelite gallery reject EVENT_ID``: the event's face becomes a negative of the person it was announced as."""
    from facelite.recognition.eventfaces import check_event_id
    from facelite.recognition.galleryops import reject_event
    from facelite.service.app import open_event_faces
    from facelite.service.config import load_config

    event_id = check_event_id(args.args[0])
    if not getattr(args, "config", None):
        raise FaceliteError(
            "gallery reject needs --config", "facelite gallery reject", "the agent's state folder keeps event faces"
        )
    with open_event_faces(load_config(args.config)) as store:
        r = reject_event(gallery, store, embedder.sha256, event_id)
    if not r.added:
        return f"event {r.event_id} was already rejected as {r.person} ({r.negatives} negative(s))"
    return (
        f"rejected event {r.event_id}: that face was not {r.person}; {r.person} has {r.negatives} negative(s), a face "
        f"closer to one of them than to {r.person}'s templates is no longer announced as {r.person} "
        f"(gallery version {r.version})"
    )


def _threshold_line(args: argparse.Namespace, detector: Any, embedder: Any, templates: int) -> str:
    """The open-set threshold this gallery gets, as the agent would compute it (agent/recognition/openset.py)."""
    from facelite.recognition.openset import resolve_threshold

    rate, fixed = 1e-3, None
    if args.config:
        from facelite.service.config import load_config

        matching = load_config(args.config).matching
        rate, fixed = matching.stranger_accept_rate, matching.threshold
    o = resolve_threshold(
        embedder.manifest,
        detector=detector.pipeline,
        stranger_accept_rate=rate,
        templates=templates,
        fixed=fixed,
    )
    expected = f"{o.expected_visit_far:.2g}" if o.expected_visit_far is not None else "unknown"
    return (
        f"match threshold {o.threshold:.4f} for {templates} template(s): expected stranger accept rate per visit "
        f"{expected} (target {o.target_visit_far if o.target_visit_far is not None else 'none: fixed threshold'}; "
        f"{o.source})"
    )
