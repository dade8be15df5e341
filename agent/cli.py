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

from facelite.errors import FaceliteError
from facelite.logsetup import add_logging_flags, level_of, setup_logging

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
    from facelite.service.config import AgentConfig, load_config

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
    from facelite.service.app import Agent, load_models, open_event_faces, open_gallery, open_sources
    from facelite.service.roster import RECORD_NAME, RecordFile
    from facelite.service.sinks.mqtt import MqttSink
    from facelite.service.sinks.stdout import StdoutSink
    from facelite.service.spool import Spool

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
        from facelite.service.app import open_strangers

        strangers = open_strangers(config, models.embedder.manifest, models.detector.pipeline)
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
    # Armed before the agent announces itself: a SIGTERM that follows "online" closely (a service manager stopping
    # a fresh start) must stop and flush it, not kill it by the default action (exit -15, the spool unflushed).
    handler = _stop_on_signal(agent)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    agent.announce()
    if config.mqtt is not None:
        sink.start()
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
    from facelite.service.events import Topics

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
    from facelite.service.app import load_models, make_matcher, open_gallery
    from facelite.vision.imageio import read_image

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


def _image_paths(items: list[Path]) -> list[Path]:
    from facelite.vision.imageio import list_images

    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            paths.extend(list_images(item))
        else:
            paths.append(item)
    return paths


def enroll(args: argparse.Namespace) -> int:
    from facelite import enroll_cli
    from facelite.recognition.gallery import Gallery
    from facelite.vision.imageio import read_image
    from facelite.wiring import gallery_key_from_args, hygiene_from_args, models_from_args

    if enroll_cli.wanted(args):  # --from-event / --camera / --from-unknown (checks that exactly one is asked)
        return enroll_cli.run_from_unknown(args) if args.from_unknown is not None else enroll_cli.run(args)
    detector, embedder, gallery_path = models_from_args(args)
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
    with Gallery.for_embedder(gallery_path, embedder, key=gallery_key_from_args(args)) as gallery:
        hygiene = hygiene_from_args(args, detector, embedder)
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


# One command family: `facelite <command>`. These run another entry point with the rest of the command line
# (their own flags and --help); the names they had stay as aliases (facelite-agent, facelite-convert, python -m ...).
FAMILY: dict[str, tuple[str, str, str]] = {
    "agent": ("facelite.cli", "agent_main", "run the agent (as facelite-agent): --config, --check-config, --self-test"),
    "convert": ("facelite.converter.cli", "main", "convert the models (as facelite-convert / make convert; host only)"),
    "deploy": ("facelite.deploy.cli", "main", "deploy to a device profile (as make deploy; host only)"),
    "bench": ("facelite.tools.bench", "", "speed and accuracy benchmark (as make bench; host only)"),
    "bench-arm": (
        "facelite.tools.bench.arm",
        "main",
        "ARM instruction counts under qemu (as make bench-arm; host only)",
    ),
    "eval-lfw": (
        "facelite.tools.bench.lfw",
        "main",
        "LFW View 2 report of every pipeline (as make eval-lfw; host only)",
    ),
}


def _run_family(command: str, rest: list[str]) -> int:
    module, function, _ = FAMILY[command]
    if not function:
        # The benchmark drops the page cache before anything maps numpy or a runtime (agent/tools/bench/__main__.py),
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
        if (exc.name or "").startswith(("facelite.converter", "facelite.deploy", "facelite.tools")):
            return _fail(_host_only(command))
        raise
    return int(entry(rest))


def _host_only(command: str) -> FaceliteError:
    return FaceliteError(
        f"`facelite {command}` runs on the host: this installation is a device bundle (no converter, deploy or "
        "evaluation tools)",
        f"facelite {command}",
        "run it in the source tree (make setup)",
    )


def main(argv: list[str] | None = None) -> int:
    from facelite.enroll_cli import add_options as enroll_options

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
    p.add_argument(
        "--detector-model",
        default="blazeface",
        help="with --models: the detector (recommended variant); blazeface+onet: with MTCNN's O-Net landmarks",
    )
    model_flags(p)
    args = ap.parse_args(argv)
    _setup_logging(level_of(args))
    needs = {"remove": 1, "forget": 1, "rename": 2, "export": 1, "import": 1, "list": 0, "reject": 1}
    needs.update({"unknowns": 0, "drop-unknown": 1})
    if args.command == "gallery" and len(args.args) != needs[args.action]:
        ap.error(f"gallery {args.action} takes {needs[args.action]} argument(s)")
    try:
        from facelite.eval_cli import eval_cmd
        from facelite.gallery_cli import gallery_cmd

        return {"enroll": enroll, "gallery": gallery_cmd, "eval": eval_cmd}[args.command](args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").startswith("facelite.tools"):  # a device bundle ships no evaluation tools
            return _fail(_host_only(args.command))
        raise
    except FaceliteError as exc:
        return _fail(exc)


if __name__ == "__main__":
    raise SystemExit(main())
