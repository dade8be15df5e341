"""One module per source format; each exposes ``load_graph(path, *, inputs, outputs, input_shape) -> GraphSource``."""

from __future__ import annotations

from facelite.errors import FaceliteError


class FormatError(FaceliteError):
    """A model file is missing, corrupt, of the wrong format, or its tensor names are wrong."""
