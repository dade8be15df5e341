"""Shared fixtures. Photos come only through the data directory (FACELITE_DATA_DIR), never a fixed path."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Reaper

from facelite.tools.dataset import data_dir as resolve_data_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The data directory holding faces/ (set FACELITE_DATA_DIR; `make test` sets it from DATA_DIR)."""
    return resolve_data_dir(os.environ.get("FACELITE_DATA_DIR"))


@pytest.fixture(scope="session")
def faces_dir(data_dir: Path) -> Path:
    return data_dir / "faces"


@pytest.fixture(scope="session")
def detector_photos(faces_dir: Path) -> list[Any]:
    """What `facelite convert` calibrates and verifies detectors on: the people photos, then the scenes."""
    from facelite.vision.imageio import list_images, read_image

    people = [p for d in sorted((faces_dir / "people").iterdir()) if d.is_dir() for p in list_images(d)]
    return [read_image(p) for p in [*people, *list_images(faces_dir / "scenes")]]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Artifacts of `make convert` (FACELITE_MODELS_DIR, default build/models)."""
    path = Path(os.environ.get("FACELITE_MODELS_DIR", REPO / "build" / "models"))
    if not path.is_dir():
        pytest.fail(f"no converted models at {path}: run `make convert` first (make test does)")
    return path


@pytest.fixture
def reaper() -> Iterator[Reaper]:
    """Register every process a test starts; whatever is still running at teardown is SIGKILLed (pass or fail)."""
    r = Reaper()
    try:
        yield r
    finally:
        r.kill_all()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that needs converted models (the models_dir fixture, itself or through another fixture) is marked
    slow, so `make test-fast` (-m "not slow") runs the rest, also on a machine without build/models."""
    for item in items:
        if "models_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under -m "not slow", a module that marks itself slow as a whole (a top-level `pytestmark = pytest.mark.slow`)
    is not even imported: importing TensorFlow only to deselect all its tests cost the fast tier ~10 s."""
    if config.getoption("markexpr", "") != "not slow" or collection_path.suffix != ".py":
        return None
    try:
        text = collection_path.read_text(encoding="utf-8")
    except OSError:
        return None
    return True if re.search(r"^pytestmark = pytest\.mark\.slow\b", text, re.MULTILINE) else None
