"""Command lines: `facelite-agent` (the service) and `facelite` (enroll, gallery, eval).

Every user-facing failure is one line on stderr and a non-zero exit; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import FaceliteError
from agent.logsetup import add_logging_flags, level_of, setup_logging

log = logging.getLogger("agent")


def _quiet_native_logs() -> None:
    """OpenCV and FFmpeg print their own warnings (every reconnect attempt) straight to stderr, around our
    one-line logging: keep them to errors. Must run before cv2 is imported; the user's setting wins."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    # Setting this makes OpenCV install its own FFmpeg log callback, which printf()s to *stdout*, where the stdout
    # sink's JSON lines and the CLI reports go: so AV_LOG_QUIET. The sources report what failed in their own line.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET


def _setup_logging(level: str) -> None:
    # The device side: journald adds its own timestamps (agent/logsetup.py).
    setup_logging(level, timestamps=False)


def _fail(exc: FaceliteError) -> int:
    print(f"error: {exc.one_line()}", file=sys.stderr)
    return exc.exit_code


# -- facelite-agent ------------------------------------------------------------------------------


def agent_main(argv: list[str] | None = None) -> int:
    _quiet_native_logs()
    ap = argparse.ArgumentParser(prog="facelite-agent", description="Run face recognition on cameras, publish MQTT.")
    ap.add_argument("--config", type=Path, help="agent configuration (TOML or YAML)")
    ap.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    ap.add_argument("--example-config", action="store_true", help="print a complete example configuration")
    ap.add_argument(
        "--self-test",
        type=Path,
        metavar="IMAGE",
        help="load models and gallery, run the pipeline on IMAGE, exit 0 if enough faces are found",
    )
    ap.add_argument("--expect-faces", type=int, default=1)
    add_logging_flags(ap, default=None)
    args = ap.parse_args(argv)
    from agent.config import AgentConfig, load_config

    if args.example_config:
        print(AgentConfig.example_toml(), end="")
        return 0
    if args.config is None:
        ap.error("--config is required")
    try:
        config = load_config(args.config)
    except FaceliteError as exc:
        print(str(exc) if "\n" in str(exc) else f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    _setup_logging(level_of(args, config.log_level))
    if args.check_config:
        print(f"{args.config}: ok")
        return 0
    try:
        if args.self_test:
            return self_test(config, args.self_test, args.expect_faces)
        return run_agent(config)
    except FaceliteError as exc:
        return _fail(exc)


def run_agent(config: Any) -> int:
    from agent.app import Agent, load_models, open_event_faces, open_gallery, open_sources
    from agent.roster import RECORD_NAME, RecordFile
    from agent.sinks.mqtt import MqttSink
    from agent.sinks.stdout import StdoutSink
    from agent.spool import Spool

    models = load_models(config)
    gallery = open_gallery(config, models.embedder)
    if config.mqtt is not None:
        spool = Spool(config.spool.path, config.spool.max_messages, config.spool.max_bytes)
        # Started once the agent has announced: the spool must lose forgotten people's events before it is sent.
        sink: Any = MqttSink(config.mqtt, spool, device_id=config.device_id, subscribe=_command_topic(config))
    else:
        sink = StdoutSink()
    sources = open_sources(config)
    # The presence record lives beside the spool: the device's state folder, private to this agent. A dry run
    # (no broker) publishes nothing that lasts, so it keeps none.
    record = RecordFile(Path(config.spool.path).with_name(RECORD_NAME) if config.mqtt is not None else None)
    # Faces of recognized events (for `facelite gallery reject`) live in the state folder the spool made.
    state_dir = Path(config.spool.path).parent
    faces = open_event_faces(config) if config.gallery.event_faces_keep_s > 0 and state_dir.is_dir() else None
    receive = sink.receive if config.commands.enabled else None  # config: commands need [mqtt]
    strangers = None
    if config.strangers.enabled and state_dir.is_dir():
        from agent.unknowns import open_strangers

        strangers = open_strangers(config, models.embedder.manifest, models.detector.manifest.name)
    agent = Agent(
        config,
        models,
        gallery,
        sink,
        sources,
        record=record,
        faces=faces,
        receive_commands=receive,
        strangers=strangers,
    )
    agent.announce()
    if config.mqtt is not None:
        sink.start()

    handler = _stop_on_signal(agent)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    try:
        agent.run()
    finally:
        sink.close()
        gallery.close()
        if faces is not None:
            faces.close()
        if strangers is not None:
            strangers.close()
        # Stopped and flushed: a SIGTERM repeated from here on (Python restores the default action while it exits)
        # must not turn exit 0 into a death by signal in what systemd or the supervisor reads.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return 0


def _command_topic(config: Any) -> str | None:
    """The topic the sink subscribes to: the device's command topic when commands are enabled, else none."""
    if not config.commands.enabled:
        return None
    from agent.events import Topics

    return Topics(config.device_id, config.mqtt.base_topic, config.mqtt.discovery_prefix).command


def _stop_on_signal(agent: Any) -> Callable[[int, Any], None]:
    """The SIGTERM/SIGINT handler. Python runs a handler in the main thread between two bytecodes, wherever that
    thread is, even inside a lock it holds (logging's, or the Event's inside agent.stop() and its waits): taking
    such a lock there can deadlock the agent, as it did the device supervisor. So the handler only writes the
    signal number to a pipe; a thread waiting on the pipe logs it and stops the agent."""
    read_fd, write_fd = os.pipe()  # open for the process's life; not inherited (PEP 446)
    os.set_blocking(write_fd, False)

    def stopper() -> None:
        signum = os.read(read_fd, 1)
        log.info("signal %d: finishing the frame in hand, then flushing", signum[0])
        agent.stop()

    threading.Thread(target=stopper, name="signal-stop", daemon=True).start()

    def handler(signum: int, _frame: Any) -> None:
        # One stop is enough: further SIGTERM/SIGINT are ignored from here on (SIGKILL still ends it). Left armed,
        # a flood of signals re-enters this handler between its own bytecodes until the stack overflows.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(OSError):  # a full pipe: the stop is already on its way
            os.write(write_fd, bytes([signum]))

    return handler


def self_test(config: Any, image_path: Path, expect: int) -> int:
    """Device self-test before a release goes live: models verify, gallery opens, faces are found."""
    from agent.app import load_models, make_matcher, open_gallery
    from agent.imageio import read_image

    models = load_models(config)
    with open_gallery(config, models.embedder) as gallery:
        matcher, _ = make_matcher(config, models, gallery.index.size)
        image = read_image(image_path)
        faces = models.detector.detect(image)
        vectors = [models.embedder.embed(image, f).vector for f in faces]
        matches = [gallery.match(v, matcher) for v in vectors]
        people = len(gallery.people())
    det, emb = models.detector.manifest, models.embedder.manifest
    print(
        json.dumps(
            {
                "detector": f"{det.name}/{det.variant}",
                "embedder": f"{emb.name}/{emb.variant}",
                "faces": len(faces),
                "people_enrolled": people,
                "matches": [
                    {"person": m.person, "decision": m.decision, "similarity": round(m.similarity, 4)} for m in matches
                ],
            }
        )
    )
    if len(faces) < expect:
        print(
            f"error: self-test found {len(faces)} face(s) in {image_path}, expected at least {expect}", file=sys.stderr
        )
        return 1
    return 0


# -- facelite (enroll, gallery, eval) ------------------------------------------------------------


@dataclass
class EnrollReport:
    enrolled: list[str] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    several_faces: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def _models_from(args: argparse.Namespace) -> tuple[Any, Any, Path]:
    """Detector, embedder and gallery path from --config or from explicit flags."""
    from agent.detect import create_detector
    from agent.embed import Embedder

    if args.config:
        from agent.app import load_models
        from agent.config import load_config

        config = load_config(args.config)
        models = load_models(config)
        return models.detector, models.embedder, Path(config.gallery.path)
    if not (args.detector and args.embedder and args.gallery):
        raise FaceliteError("give --config, or all of --detector, --embedder and --gallery")
    return create_detector(args.detector), Embedder.from_model_dir(args.embedder), args.gallery


def _gallery_key(args: argparse.Namespace) -> bytes | None:
    from agent.app import read_key

    if getattr(args, "config", None):
        from agent.config import load_config

        return read_key(load_config(args.config).gallery.key_file)
    return read_key(args.key_file) if getattr(args, "key_file", None) else None


def _image_paths(items: list[Path]) -> list[Path]:
    from agent.imageio import list_images

    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            paths.extend(list_images(item))
        else:
            paths.append(item)
    return paths


def _threshold_for(args: argparse.Namespace, detector: Any, embedder: Any) -> Any:
    """n -> the open-set threshold the agent would use for a gallery of n templates (None if there is none)."""
    from agent.errors import ModelError
    from agent.openset import resolve_threshold

    rate, fixed = 1e-3, None
    if getattr(args, "config", None):
        from agent.config import load_config

        matching = load_config(args.config).matching
        rate, fixed = matching.stranger_accept_rate, matching.threshold

    def threshold_for(templates: int) -> float:
        return resolve_threshold(
            embedder.manifest,
            detector=detector.manifest.name,
            stranger_accept_rate=rate,
            templates=templates,
            fixed=fixed,
        ).threshold

    try:
        threshold_for(1)
    except ModelError:
        return None
    return threshold_for


def _hygiene(args: argparse.Namespace, detector: Any, embedder: Any) -> Any:
    from agent.gallery import Hygiene

    limit = 10
    if getattr(args, "config", None):
        from agent.config import load_config

        limit = load_config(args.config).gallery.max_templates_per_person
    return Hygiene(max_templates_per_person=limit, threshold_for=_threshold_for(args, detector, embedder))


def enroll(args: argparse.Namespace) -> int:
    from agent import enroll_cli
    from agent.gallery import Gallery
    from agent.imageio import read_image

    if enroll_cli.wanted(args):  # --from-event / --camera / --from-unknown (checks that exactly one is asked)
        return _enroll_unknown(args) if args.from_unknown is not None else enroll_cli.run(args)
    detector, embedder, gallery_path = _models_from(args)
    report = EnrollReport()
    vectors, sources = [], []
    for path in _image_paths(args.images):
        try:
            image = read_image(path)
        except FaceliteError as exc:
            report.unreadable.append(exc.one_line())
            continue
        faces = detector.detect(image)
        if not faces:
            report.no_face.append(str(path))
            continue
        if len(faces) > 1 and not args.largest:
            report.several_faces.append(f"{path} ({len(faces)} faces)")
            continue
        face = max(faces, key=lambda f: f.bbox.area)
        vectors.append(embedder.embed(image, face).vector)
        sources.append(path.name)
        report.enrolled.append(str(path))
    for line in report.unreadable:
        print(f"skipped: {line}", file=sys.stderr)
    for p in report.no_face:
        print(f"skipped: no face found ({p})", file=sys.stderr)
    for p in report.several_faces:
        print(f"skipped: several faces, use --largest to take the biggest ({p})", file=sys.stderr)
    if not vectors:
        print(f"error: no usable photo of {args.name}: nothing enrolled", file=sys.stderr)
        return 1
    with Gallery.open(
        gallery_path,
        embedder_sha256=embedder.sha256,
        embedding_size=int(embedder.manifest.embedding_size or 0),
        key=_gallery_key(args),
    ) as gallery:
        hygiene = _hygiene(args, detector, embedder)
        outcome = gallery.add_templates(args.name, vectors, sources, hygiene=hygiene)
    for refusal in outcome.refused:
        print(refusal.line(), file=sys.stderr)
    if outcome.dropped:
        print(
            f"kept the {hygiene.max_templates_per_person} most central templates of {outcome.person} "
            f"(gallery.max_templates_per_person); left out: {', '.join(outcome.dropped)}",
            file=sys.stderr,
        )
    for lookalike in outcome.lookalikes:
        print(lookalike.line(), file=sys.stderr)
    if len(outcome.refused) == len(vectors):
        print(f"error: every photo of {outcome.person} was refused: nothing enrolled", file=sys.stderr)
        return 1
    print(
        f"enrolled {outcome.person}: {outcome.added} template(s) from {len(report.enrolled)} photo(s); "
        f"{len(report.no_face) + len(report.several_faces) + len(report.unreadable)} skipped; "
        f"{len(outcome.refused)} refused; gallery version {outcome.version}"
    )
    return 0


def _enroll_unknown(args: argparse.Namespace) -> int:
    """``facelite enroll NAME --from-unknown K``: a person confirmed who recurring stranger K is."""
    from agent.gallery import Gallery
    from agent.strangers import check_cluster_id
    from agent.unknowns import enroll_from_unknown, strangers_from_args

    k = check_cluster_id(args.from_unknown)
    detector, embedder, gallery_path = _models_from(args)
    with (
        strangers_from_args(args, detector, embedder) as store,
        Gallery.open(
            gallery_path,
            embedder_sha256=embedder.sha256,
            embedding_size=int(embedder.manifest.embedding_size or 0),
            key=_gallery_key(args),
        ) as gallery,
    ):
        hygiene = _hygiene(args, detector, embedder)
        done = enroll_from_unknown(store, gallery, args.name, k, embedder_sha256=embedder.sha256, hygiene=hygiene)
    for line in [r.line() for r in done.outcome.refused] + [la.line() for la in done.outcome.lookalikes]:
        print(line, file=sys.stderr)
    print(
        f"enrolled {done.outcome.person}: {done.outcome.added} template(s) from unknown person {k} "
        f"({done.cluster.visits} visits, {done.faces} face(s)); {len(done.outcome.refused)} refused; their faces "
        f"were erased from the stranger store; gallery version {done.outcome.version}"
    )
    return 0


def _unknowns_cmd(args: argparse.Namespace, detector: Any, embedder: Any) -> str:
    """``gallery unknowns`` and ``gallery drop-unknown K``."""
    from agent.unknowns import drop_unknown, strangers_from_args, unknowns_lines

    with strangers_from_args(args, detector, embedder) as store:
        if args.action == "drop-unknown":
            erased = drop_unknown(store, args.args[0])
            return f"dropped unknown person {int(args.args[0])}: {erased} face(s) erased"
        lines = unknowns_lines(store)
        return "\n".join([*lines, f"{len(lines)} unknown person(s) kept"])


def gallery_cmd(args: argparse.Namespace) -> int:
    from agent.gallery import Gallery

    detector, embedder, gallery_path = _models_from(args)
    with Gallery.open(
        gallery_path,
        embedder_sha256=embedder.sha256,
        embedding_size=int(embedder.manifest.embedding_size or 0),
        key=_gallery_key(args),
    ) as g:
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
            from agent.galleryops import rename_person

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
    from agent.galleryops import forget_person

    if not getattr(args, "config", None):
        return forget_person(gallery, None, args.args[0])
    from agent.app import open_event_faces
    from agent.config import load_config

    with open_event_faces(load_config(args.config)) as store:
        return forget_person(gallery, store, args.args[0])


def _forget_strangers(args: argparse.Namespace, gallery: Any, detector: Any, embedder: Any, person: str) -> int:
    """Erase the unknown visits that look like ``person`` (seen before they were enrolled) from the stranger store."""
    if not getattr(args, "config", None):
        return 0
    from agent.config import load_config
    from agent.gallery import normalize_name
    from agent.unknowns import strangers_from_args

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
    from agent.config import load_config
    from agent.strangers import store_path

    return store_path(load_config(args.config).spool.path)


def _reject(args: argparse.Namespace, gallery: Any, embedder: Any) -> str:
    """``facelite gallery reject EVENT_ID``: the event's face becomes a negative of the person it was announced as."""
    from agent.app import open_event_faces
    from agent.config import load_config
    from agent.eventfaces import check_event_id
    from agent.galleryops import reject_event

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
    """The open-set threshold this gallery gets, as the agent would compute it (agent/openset.py)."""
    from agent.openset import resolve_threshold

    rate, fixed = 1e-3, None
    if args.config:
        from agent.config import load_config

        matching = load_config(args.config).matching
        rate, fixed = matching.stranger_accept_rate, matching.threshold
    o = resolve_threshold(
        embedder.manifest,
        detector=detector.manifest.name,
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


def _eval_pipelines(args: argparse.Namespace) -> list[tuple[Any, Any]]:
    """(detector, embedder) pairs to evaluate: every built embedder variant (with --models), or one pipeline."""
    from agent.detect import create_detector
    from agent.embed import Embedder

    if args.models:
        index = json.loads((args.models / "index.json").read_text())["models"]
        det_name = args.detector_model
        if det_name not in index:
            raise FaceliteError(f"no built detector {det_name!r}", str(args.models), "run `make convert`")
        detector = create_detector(args.models / det_name / index[det_name]["recommended_variant"])
        return [
            (detector, Embedder.from_model_dir(args.models / name / variant))
            for name, entry in index.items()
            if entry["kind"] == "embedder"
            for variant in entry["variants"]
        ]
    if args.config:
        detector, embedder, _ = _models_from(args)
        return [(detector, embedder)]
    if not (args.detector and args.embedder):
        raise FaceliteError("give --models, --config, or --detector and --embedder")
    return [(create_detector(args.detector), Embedder.from_model_dir(args.embedder))]


def eval_lfw(args: argparse.Namespace) -> int:
    """``facelite eval faces/lfw --protocol lfw``: LFW View 2 for each pipeline (agent/lfw_eval.py)."""
    from dataclasses import asdict

    from agent.lfw import LfwView2, read_view2
    from agent.lfw_eval import evaluate_pipeline, photo_groups, pipeline_vectors

    view2 = read_view2(args.data)
    folds = args.folds or list(range(1, view2.folds + 1))
    view2 = LfwView2(view2.root, tuple(p for p in view2.pairs if p.fold in folds), view2.folds)
    groups = photo_groups(view2, folds)
    results = []
    for detector, embedder in _eval_pipelines(args):
        det, emb = detector.manifest, embedder.manifest
        name = f"{det.name}/{det.variant} + {emb.name}/{emb.variant}"
        cal = emb.calibration.get(det.name)
        if cal is None:
            raise FaceliteError(
                f"{emb.name}/{emb.variant} has no calibration through {det.name}", fix="re-run `make convert`"
            )
        pv = pipeline_vectors(detector, det.sha256, embedder, groups, args.out / "cache")
        r = evaluate_pipeline(name, pv, groups, view2, cal, cal.people, stranger_accept_rate=args.stranger_accept_rate)
        results.append(r)
        tf = r.ten_fold
        print(
            f"{name}: LFW accuracy {100 * tf.mean:.2f}% ± {100 * tf.std:.2f} over {len(tf.fold_accuracy)} folds "
            f"(95% CI {100 * tf.ci95[0]:.2f}-{100 * tf.ci95[1]:.2f}), {tf.failed_pairs} of {tf.pairs} pairs failed "
            f"(no face), AUC {tf.auc:.4f}"
        )
        for o in r.open_set:
            print(
                f"  gallery of {o.gallery_people}: strangers accepted {o.stranger_false_accepts}/{o.stranger_probes} "
                f"= {o.stranger_far:.2g} (95% CI {o.stranger_far_ci[0]:.2g}-{o.stranger_far_ci[1]:.2g}), "
                f"TAR {o.tar:.3f}, threshold {o.threshold:.4f}"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "lfw.json"
    path.write_text(json.dumps([asdict(r) for r in results], indent=2, default=str) + "\n")
    print(f"report: {path}")
    return 0


def eval_cmd(args: argparse.Namespace) -> int:
    from agent.evaluate import evaluate, markdown, quantisation_loss, read_lfw_pairs, write_reports

    if args.protocol == "lfw":
        return eval_lfw(args)
    pairs = None
    if args.pairs:
        if args.pairs.suffix == ".csv":
            from agent.dataset import read_pairs_csv

            pairs = read_pairs_csv(args.pairs)
        else:
            pairs = read_lfw_pairs(args.pairs, args.data)
    results = [
        evaluate(
            detector,
            embedder,
            args.data,
            pairs=pairs,
            stranger_accept_rate=args.stranger_accept_rate,
            enroll_k=args.enroll_k,
        )
        for detector, embedder in _eval_pipelines(args)
    ]
    written = write_reports(results, args.out)
    print(markdown(results), end="")
    quant = quantisation_loss(results)
    if quant:
        print("\nQuantisation loss (same images, same detector):\n" + quant, end="")
    print(f"reports: {', '.join(str(p) for p in written)}")
    return 0


# One command family: `facelite <command>`. These run another entry point with the rest of the command line
# (their own flags and --help); the names they had stay as aliases (facelite-agent, facelite-convert, python -m ...).
FAMILY: dict[str, tuple[str, str, str]] = {
    "agent": ("agent.cli", "agent_main", "run the agent (as facelite-agent): --config, --check-config, --self-test"),
    "convert": ("converter.cli", "main", "convert the models (as facelite-convert / make convert; host only)"),
    "deploy": ("deploy.cli", "main", "deploy to a device profile (as make deploy; host only)"),
    "bench": ("converter.bench", "", "speed and accuracy benchmark (as make bench; host only)"),
    "bench-arm": ("converter.bench.arm", "main", "ARM instruction counts under qemu (as make bench-arm; host only)"),
    "eval-lfw": ("converter.bench.lfw", "main", "LFW View 2 report of every pipeline (as make eval-lfw; host only)"),
}


def _run_family(command: str, rest: list[str]) -> int:
    module, function, _ = FAMILY[command]
    if not function:
        # The benchmark drops the page cache before anything maps numpy or a runtime (converter/bench/__main__.py),
        # so it needs a fresh interpreter, not this one.
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the parent package is missing (a device bundle has no converter/)
            found = False
        if not found:
            return _fail(_host_only(command))
        os.execv(sys.executable, [sys.executable, "-m", module, *rest])
    try:
        entry = getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("converter", "deploy"):
            return _fail(_host_only(command))
        raise
    return int(entry(rest))


def _host_only(command: str) -> FaceliteError:
    return FaceliteError(
        f"`facelite {command}` runs on the host: this installation has no converter or deploy code (a device bundle)",
        f"facelite {command}",
        "run it in the source tree (make setup)",
    )


def main(argv: list[str] | None = None) -> int:
    from agent.enroll_cli import add_options as enroll_options

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FAMILY:
        return _run_family(argv[0], argv[1:])
    _quiet_native_logs()
    ap = argparse.ArgumentParser(
        prog="facelite", description="Enroll people, manage the gallery, evaluate; convert, run, deploy, benchmark."
    )
    add_logging_flags(ap, default="WARNING")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, (_, _, summary) in FAMILY.items():
        sub.add_parser(name, help=summary, add_help=False)  # listed in --help; dispatched above, never parsed here

    def model_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="agent configuration (models, gallery, key)")
        p.add_argument("--detector", type=Path, help="detector artifact folder (without --config)")
        p.add_argument("--embedder", type=Path, help="embedder artifact folder (without --config)")
        p.add_argument("--gallery", type=Path, help="gallery file (without --config)")
        p.add_argument("--key-file", type=Path, help="gallery encryption key (without --config)")

    p = sub.add_parser("enroll", help="enroll a person from photos (files or folders), an event or a camera")
    p.add_argument("name")
    p.add_argument("images", type=Path, nargs="*")
    p.add_argument(
        "--from-unknown", metavar="K", help="enrol recurring stranger K (the k of an unknown/<k> message) instead"
    )
    p.add_argument("--largest", action="store_true", help="with several faces in a photo, take the largest")
    enroll_options(p)
    model_flags(p)
    p = sub.add_parser(
        "gallery",
        help="list | remove NAME | forget NAME | rename OLD NEW | export FILE | import FILE | reject EVENT_ID | "
        "unknowns | drop-unknown K",
    )
    p.add_argument(
        "action",
        choices=("list", "remove", "forget", "rename", "export", "import", "reject", "unknowns", "drop-unknown"),
    )
    p.add_argument("args", nargs="*")
    model_flags(p)
    p = sub.add_parser("eval", help="accuracy of the full pipeline on a folder-per-person photo tree, or on LFW")
    p.add_argument("data", type=Path, help="folder with one sub-folder of photos per person (lfw: faces/lfw)")
    p.add_argument(
        "--protocol",
        choices=("folders", "lfw"),
        default="folders",
        help="lfw: LFW View 2 10-fold, calibration check and open set (DATA is faces/lfw with pairs.txt)",
    )
    p.add_argument("--folds", type=lambda v: [int(f) for f in v.split(",")], default=None, help="lfw: folds to run")
    p.add_argument("--pairs", type=Path, help="pairs.csv (image_a,image_b,same_person) or LFW pairs.txt")
    p.add_argument(
        "--stranger-accept-rate",
        type=float,
        default=1e-3,
        help="per-visit stranger rate the match threshold is set for (as matching.stranger_accept_rate)",
    )
    p.add_argument("--enroll-k", type=int, default=None, help="photos enrolled per person (default: half)")
    p.add_argument("--out", type=Path, default=Path("build/eval"))
    p.add_argument("--models", type=Path, help="evaluate every built embedder variant in this `make convert` folder")
    p.add_argument("--detector-model", default="blazeface", help="with --models: the detector (recommended variant)")
    model_flags(p)
    args = ap.parse_args(argv)
    _setup_logging(level_of(args))
    needs = {"remove": 1, "forget": 1, "rename": 2, "export": 1, "import": 1, "list": 0, "reject": 1}
    needs.update({"unknowns": 0, "drop-unknown": 1})
    if args.command == "gallery" and len(args.args) != needs[args.action]:
        ap.error(f"gallery {args.action} takes {needs[args.action]} argument(s)")
    try:
        return {"enroll": enroll, "gallery": gallery_cmd, "eval": eval_cmd}[args.command](args)
    except FaceliteError as exc:
        return _fail(exc)


if __name__ == "__main__":
    raise SystemExit(main())
