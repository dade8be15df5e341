"""Errors the user sees as one line: what went wrong, where, and (when known) the fix."""

from __future__ import annotations


class FaceliteError(Exception):
    """Base for every error that is reported to the user as one line and a non-zero exit."""

    exit_code = 2

    def __init__(self, what: str, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"({self.where})")
        line = " ".join(parts)
        if self.fix:
            line += f": {self.fix}"
        return line


class ConfigError(FaceliteError):
    """A configuration file or option is invalid."""


class ModelError(FaceliteError):
    """A model file or manifest is missing, corrupt, or does not match."""


class ImageError(FaceliteError):
    """An image could not be read or is not usable."""

    exit_code = 3


class GalleryError(FaceliteError):
    """The gallery cannot be opened or does not match the embedder."""
