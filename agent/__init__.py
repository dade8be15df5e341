"""facelite: face recognition converted on a workstation, run on a Raspberry Pi, reporting over MQTT.

This package (the folder agent/, mapped by setup.py) is what a device runs: detect, align, embed, match, track and
publish faces, on tflite runtimes only. Nothing under it may import TensorFlow (tests/test_no_tensorflow.py proves
it). The host's parts share the namespace: ``facelite.converter`` (converter/), ``facelite.deploy`` (deploy/) and
``facelite.tools`` (evaluation, the demo, the benchmarks); they import from the device layers, never the other way.

The Python API is reachable from here (``facelite.FaceRecognizer``, ``facelite.RecognizerOptions``, ...), loaded on
first use: ``import facelite`` alone maps no numpy, so the service's start-up memory stays inside its budget.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it (facelite.api and the image reader its users need beside it)
_LAZY = {
    "FaceRecognizer": "facelite.api",
    "RecognizerOptions": "facelite.api",
    "RecognitionResult": "facelite.api",
    "RecognizedFace": "facelite.api",
    "RunningMode": "facelite.api",
    "VisitEvent": "facelite.api",
    "read_image": "facelite.vision.imageio",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'facelite' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
