"""One logging setup for every facelite command: the same flags and one line per record.

Flags: ``--log-level {DEBUG,INFO,WARNING,ERROR}`` and ``-v/--verbose`` (= DEBUG), added by ``add_logging_flags``.
Format: ``LEVEL module: message``, with the time in front on the host (`facelite convert`, `deploy`, the benches)
and without it for the device service, whose lines journald stamps itself. Configured once, at the entry point;
every module logs through ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import argparse
import logging
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEVICE_FORMAT = "%(levelname)s %(name)s: %(message)s"
HOST_FORMAT = "%(asctime)s " + DEVICE_FORMAT
# Libraries that log at INFO about their own internals (TensorFlow's start-up, paho's keepalives, font caches).
NOISY = ("tensorflow", "absl", "h5py", "paho", "matplotlib", "PIL")


def add_logging_flags(ap: argparse.ArgumentParser, default: str | None = "INFO") -> None:
    """``--log-level`` and ``-v``; ``default`` None leaves the level to the caller (the agent's config file)."""
    ap.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        default=default,
        help=f"log level (default: {default or 'log_level of the config'})",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="same as --log-level DEBUG")


def level_of(args: argparse.Namespace, fallback: str = "INFO") -> str:
    if getattr(args, "verbose", False):
        return "DEBUG"
    return str(getattr(args, "log_level", None) or fallback).upper()


def setup_logging(level: str, *, timestamps: bool = True) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format=HOST_FORMAT if timestamps else DEVICE_FORMAT,
        datefmt="%H:%M:%S",
    )
    if level.upper() != "DEBUG":
        for name in NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)
