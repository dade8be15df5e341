"""What a command line names, opened: models, the gallery's key and template hygiene, from ``--config`` (the
agent's own file, so the CLI acts on exactly what the agent runs) or from explicit ``--detector/--embedder/
--gallery/--key-file`` flags. Shared by `facelite enroll` and `facelite gallery` (agent/cli.py, agent/enroll_cli.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from facelite.errors import FaceliteError, GalleryError
from facelite.recognition.gallery import Hygiene
from facelite.recognition.openset import enrolment_hygiene
from facelite.recognition.strangers import StrangerStore
from facelite.service.app import load_models, open_strangers, read_key
from facelite.service.config import MatchingConfig, load_config
from facelite.vision.detect import create_detector
from facelite.vision.embed import Embedder


def models_from_args(args: argparse.Namespace) -> tuple[Any, Any, Path]:
    """Detector, embedder and gallery path from --config or from explicit flags."""
    if getattr(args, "config", None):
        config = load_config(args.config)
        models = load_models(config)
        return models.detector, models.embedder, Path(config.gallery.path)
    if not (args.detector and args.embedder and args.gallery):
        raise FaceliteError("give --config, or all of --detector, --embedder and --gallery")
    return create_detector(args.detector), Embedder.from_model_dir(args.embedder), args.gallery


def gallery_key_from_args(args: argparse.Namespace) -> bytes | None:
    if getattr(args, "config", None):
        return read_key(load_config(args.config).gallery.key_file)
    return read_key(args.key_file) if getattr(args, "key_file", None) else None


def hygiene_from_args(args: argparse.Namespace, detector: Any, embedder: Any) -> Hygiene:
    """The agent's template hygiene: its config's limit and matching settings, or their defaults."""
    limit, matching = Hygiene().max_templates_per_person, MatchingConfig()
    if getattr(args, "config", None):
        config = load_config(args.config)
        limit, matching = config.gallery.max_templates_per_person, config.matching
    return enrolment_hygiene(
        embedder.manifest,
        detector=detector.pipeline,
        max_templates=limit,
        stranger_accept_rate=matching.stranger_accept_rate,
        fixed=matching.threshold,
    )


def strangers_from_args(args: argparse.Namespace, detector: Any, embedder: Any) -> StrangerStore:
    """The stranger store named by ``--config`` (the agent's state folder holds it)."""
    if not getattr(args, "config", None):
        raise GalleryError(
            "recurring strangers need --config", "facelite", "the agent's state folder keeps the strangers' faces"
        )
    return open_strangers(load_config(Path(args.config)), embedder.manifest, detector.pipeline)
