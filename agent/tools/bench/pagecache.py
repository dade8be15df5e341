"""Drop the page cache of the agent's shared libraries before the bench, so RSS is measured as after boot.

Why: where the filesystem caches files in large folios (ext4 on Linux 6.16 and later, this machine), a
library that pip has just written is mapped in large chunks on first touch. Importing cv2 then counts 34 MB
of file pages in RSS, against 14 MB for the very same file read back from disk (measured here with
/proc/self/smaps). A device starts the agent after boot, from disk: without this step the bench would
measure how pip happened to write the files, not the agent. POSIX_FADV_DONTNEED drops the cached pages of
files that no process has mapped; the bench's processes then read them back through normal readahead.

Standard library only: it runs before anything maps numpy, cv2 or the runtimes (see __main__.py).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Eviction:
    files: int
    mb: float
    roots: tuple[str, ...]

    def describe(self) -> str:
        return f"page cache dropped for {self.files} shared libraries ({self.mb:.0f} MB) under {', '.join(self.roots)}"


def library_paths(legacy_python: str | None = None) -> list[Path]:
    """Where the agent's code is loaded from: this environment's site-packages, the interpreter's extension
    modules and libpython, and the tflite-runtime venv when there is one."""
    paths = sysconfig.get_paths()
    found = {Path(paths["purelib"]), Path(paths["platlib"]), Path(paths["stdlib"]) / "lib-dynload"}
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        found.update(Path(libdir).glob("libpython*.so*"))  # not the rest of LIBDIR (the whole stdlib)
    if legacy_python:
        found.update(Path(legacy_python).parent.parent.glob("lib/python3*/site-packages"))
    return sorted(p for p in found if p.exists())


def _is_library(name: str) -> bool:
    return name.endswith(".so") or ".so." in name


def _libraries(paths: list[Path]) -> list[str]:
    out = []
    for path in paths:
        if path.is_file():
            out.append(str(path))
            continue
        for folder, _, names in os.walk(path):
            out += [os.path.join(folder, n) for n in names if _is_library(n)]
    return out


def evict(paths: list[Path]) -> Eviction:
    """Drop the cached pages of the given library files and of every library under the given folders."""
    files, size = 0, 0
    for path in _libraries(paths):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if not os.path.isfile(path):
                continue
            os.fdatasync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            files += 1
            size += os.fstat(fd).st_size
        except OSError:
            pass
        finally:
            os.close(fd)
    return Eviction(files, round(size / 2**20, 1), tuple(str(p) for p in paths))


def evict_agent_libraries() -> Eviction | None:
    if not hasattr(os, "posix_fadvise") or not sys.platform.startswith("linux"):
        return None
    return evict(library_paths(os.environ.get("FACELITE_LEGACY_PYTHON")))
