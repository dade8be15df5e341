"""The agent's private state files beside the spool (event faces, recurring strangers): one SQLite file each,
created 0600 before SQLite opens it (never briefly world-readable: it holds biometric data), WAL with a busy
timeout (the agent writes, the CLI reads and erases), ``secure_delete`` (erased rows leave the file bytes) and
one fsync per checkpoint (a power cut may lose the last rows, never corrupt the file). Vectors and crops are
sealed with the gallery's key (AES-GCM, agent/recognition/galleryfile.py) when the gallery is encrypted.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from facelite.recognition.galleryfile import make_aead

S = TypeVar("S", bound="PrivateStore[Any]")
P = TypeVar("P")  # the store's policy (bounds, expiry, thresholds)


class PrivateStore(Generic[P]):
    """One state file; subclasses name their ``SCHEMA`` (statements separated by ';', all IF NOT EXISTS) and
    their policy type."""

    SCHEMA: ClassVar[str] = ""

    def __init__(self, path: Path, *, key: bytes | None, policy: P, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.policy = policy
        self._clock = clock
        self._aead: Any | None = make_aead(key, self.path)
        self._conn: sqlite3.Connection | None = None
        self._failed = False  # a failed write is logged once by the subclass, never raised into the agent

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        if not self.path.exists():
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            for statement in self.SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
