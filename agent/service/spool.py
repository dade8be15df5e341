"""A crash-safe, bounded, FIFO disk queue for durable messages (events that must survive a broker outage).

Storage is SQLite in WAL mode rather than hand-written segment files: one transaction drops the oldest rows,
inserts the new one and updates the persisted drop counters atomically, and SQLite's recovery after a crash or
power cut is far better tested than any framing/checksum code we would write. ``put`` commits with
``synchronous=FULL`` (the WAL is fsynced: an event that was accepted survives a power cut); ``ack`` commits with
``synchronous=NORMAL`` (a lost ack only means a re-send, which QoS 1 consumers must tolerate anyway), so
draining a long backlog does not cost one fsync per message.

Nothing here raises into the frame loop: a full disk or an I/O error while writing drops that message, counts
it, and reports the problem once per episode through ``on_error`` and the log.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from facelite.errors import FaceliteError
from facelite.service.messages import Message

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_COUNTERS = ("dropped_overflow", "dropped_disk_full", "dropped_write_error")


@dataclass(frozen=True)
class SpooledMessage:
    id: int  # increasing, never reused (AUTOINCREMENT): FIFO order and safe acks across drops
    message: Message


@dataclass(frozen=True)
class SpoolStats:
    pending: int
    pending_bytes: int
    dropped_overflow: int  # oldest dropped to respect max_messages / max_bytes
    dropped_disk_full: int  # could not be written: disk full (ENOSPC / SQLITE_FULL)
    dropped_write_error: int  # could not be written: other I/O error

    @property
    def dropped(self) -> int:
        return self.dropped_overflow + self.dropped_disk_full + self.dropped_write_error


def message_size(message: Message) -> int:
    return len(message.payload) + len(message.topic.encode("utf-8"))


class Spool:
    """Bounded FIFO of durable messages on disk; thread-safe (the frame loop puts, the MQTT thread acks)."""

    def __init__(
        self,
        path: str | Path,
        max_messages: int,
        max_bytes: int,
        *,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise FaceliteError(f"spool limits must be >= 1 (max_messages={max_messages}, max_bytes={max_bytes})")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._on_error = on_error
        self._lock = threading.Lock()
        self._reported: set[str] = set()
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._unsaved_counters = False
        self._lock_fd = self._take_file_lock()
        self._db: sqlite3.Connection | None = None
        try:
            self._db = self._open()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._pending, self._pending_bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM messages"
        ).fetchone()
        for name, value in self._db.execute("SELECT name, value FROM counters"):
            if name in self._counters:
                self._counters[name] = int(value)
        log.info("spool %s: %d pending message(s), %d dropped so far", self.path, self._pending, self.dropped)

    # -- setup ---------------------------------------------------------------------------------------------

    def _take_file_lock(self) -> int:
        # Two agents draining one spool would send every event twice and race on acks: refuse at start-up.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise FaceliteError(
                f"spool folder is not writable: {exc.strerror}", str(self.path.parent), "set spool.path"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise FaceliteError("spool is in use by another process", str(self.path)) from None
        return fd

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            # A corrupt spool must not keep the device from starting: keep the file for inspection, start empty.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.replace(Path(str(aside) + suffix))
            self._report("corrupt", f"spool {self.path} was unreadable ({exc}); moved to {aside}, starting empty")
            try:
                return self._connect()
            except sqlite3.Error as exc2:
                raise FaceliteError(f"spool cannot be created: {exc2}", str(self.path)) from None
        except OSError as exc:
            raise FaceliteError(f"spool cannot be opened: {exc.strerror}", str(self.path)) from None

    def _connect(self) -> sqlite3.Connection:
        # Events name people and may carry face crops: the file is private, and SQLite gives its WAL and
        # shared-memory files the database file's mode (its own default is 0644 whatever the umask).
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        if stat.S_IMODE(self.path.stat().st_mode) & 0o077:
            self.path.chmod(0o600)
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves, one transaction per operation.
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA secure_delete=ON")  # acked events (names, face crops) do not linger in free pages
            db.execute(
                "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,"
                " payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, size INTEGER NOT NULL)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"spool schema version {version}, expected {SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    # -- queue ---------------------------------------------------------------------------------------------

    def put(self, message: Message) -> int | None:
        """Append a message; returns its id, or None if it was dropped (counted, reported). Never raises."""
        size = message_size(message)
        with self._lock:
            if self._db is None:
                log.warning("spool %s is closed; message for %s dropped", self.path, message.topic)
                return None
            if size > self.max_bytes:
                self._counters["dropped_overflow"] += 1
                self._unsaved_counters = True
                log.warning("spool: message for %s is %d bytes, larger than max_bytes; dropped", message.topic, size)
                return None
            try:
                new_id, freed_count, freed_bytes = self._put_locked(message, size)
            except (sqlite3.Error, OSError) as exc:
                self._rollback()
                self._count_write_failure(exc, message.topic)
                return None
            self._pending += 1 - freed_count
            self._pending_bytes += size - freed_bytes
            self._reported.discard("disk_full")
            self._reported.discard("write_error")
            return new_id

    def _put_locked(self, message: Message, size: int) -> tuple[int, int, int]:
        db = self._db
        assert db is not None  # the caller holds the lock and checked the spool is open
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")
        need_count = self._pending + 1 - self.max_messages
        need_bytes = self._pending_bytes + size - self.max_bytes
        freed_count = freed_bytes = 0
        last_id = None
        if need_count > 0 or need_bytes > 0:
            for row_id, row_size in db.execute("SELECT id, size FROM messages ORDER BY id"):
                if freed_count >= need_count and freed_bytes >= need_bytes:
                    break
                last_id = row_id
                freed_count += 1
                freed_bytes += row_size
        counters = dict(self._counters)
        if last_id is not None:
            db.execute("DELETE FROM messages WHERE id <= ?", (last_id,))
            counters["dropped_overflow"] += freed_count
        cursor = db.execute(
            "INSERT INTO messages (topic, payload, qos, retain, size) VALUES (?, ?, ?, ?, ?)",
            (message.topic, message.payload, message.qos, int(message.retain), size),
        )
        if last_id is not None or self._unsaved_counters:
            db.executemany("INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)", counters.items())
        db.execute("COMMIT")
        # Counters change in memory only once the transaction holding them is committed.
        if freed_count:
            self._report("overflow", f"spool {self.path} is full: dropping the oldest messages")
        self._counters = counters
        self._unsaved_counters = False
        assert cursor.lastrowid is not None
        return cursor.lastrowid, freed_count, freed_bytes

    def _rollback(self) -> None:
        db = self._db
        assert db is not None  # only called after a failed write on the open connection
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the connection rolls back on its own when the statement failed hard

    def _count_write_failure(self, exc: BaseException, topic: str) -> None:
        disk_full = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or (
            isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        )
        kind = "disk_full" if disk_full else "write_error"
        self._counters[f"dropped_{kind}"] += 1
        self._unsaved_counters = True  # saved with the next successful write
        what = "disk is full" if disk_full else f"write failed ({exc})"
        self._report(kind, f"spool {self.path}: {what}; dropping durable messages (first: {topic})")

    def _report(self, kind: str, text: str) -> None:
        if kind in self._reported:
            return
        self._reported.add(kind)
        log.error("%s", text)
        if self._on_error is not None:
            try:
                self._on_error(text)
            except Exception:  # a reporting callback must not break the queue
                log.exception("spool error callback failed")

    def peek(self, n: int, after: int = 0) -> list[SpooledMessage]:
        """Up to ``n`` oldest pending messages with id > ``after``, oldest first."""
        with self._lock:
            if self._db is None:
                return []
            try:
                rows = self._db.execute(
                    "SELECT id, topic, payload, qos, retain FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                    (after, n),
                ).fetchall()
            except sqlite3.Error as exc:
                self._report("read_error", f"spool {self.path}: read failed ({exc})")
                return []
        return [
            SpooledMessage(row_id, Message(topic, bytes(payload), qos=qos, retain=bool(retain), durable=True))
            for row_id, topic, payload, qos, retain in rows
        ]

    def ack(self, ids: Iterable[int]) -> None:
        """Remove delivered messages. Unknown ids (already dropped or acked) are ignored. Never raises."""
        ids = sorted(set(ids))
        if not ids:
            return
        with self._lock:
            if self._db is None:
                return
            try:
                db = self._db
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("BEGIN IMMEDIATE")
                count = size = 0
                for start in range(0, len(ids), 500):  # stay below SQLite's bound-parameter limit
                    chunk = ids[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    c, s = db.execute(
                        f"SELECT count(*), coalesce(sum(size), 0) FROM messages WHERE id IN ({marks})", chunk
                    ).fetchone()
                    db.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk)
                    count += c
                    size += s
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._report("ack_error", f"spool {self.path}: ack failed ({exc}); messages will be re-sent")
                return
            self._pending -= count
            self._pending_bytes -= size
            if count:
                self._reported.discard("overflow")  # the next overflow is a new episode worth reporting

    def purge(self, match: Callable[[Message], bool]) -> int:
        """Erase every pending message for which ``match`` is true (a forgotten person's events and face crops).

        The file runs with secure_delete (freed cells are zeroed, delivered events included); the purge also
        rewrites it (VACUUM) and truncates the WAL, which still holds old page images. Returns how many were
        erased. Never raises; it blocks the queue for the rewrite, so it is for rare events (forget).
        """
        with self._lock:
            if self._db is None:
                return 0
            db = self._db
            try:
                rows = db.execute("SELECT id, topic, payload, qos, retain, size FROM messages ORDER BY id").fetchall()
                doomed = [
                    (row_id, size)
                    for row_id, topic, payload, qos, retain, size in rows
                    if match(Message(topic, bytes(payload), qos=qos, retain=bool(retain), durable=True))
                ]
                db.execute("PRAGMA synchronous=FULL")
                db.execute("BEGIN IMMEDIATE")
                ids = [row_id for row_id, _ in doomed]
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    db.execute(f"DELETE FROM messages WHERE id IN ({','.join('?' * len(chunk))})", chunk)
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                self._report("purge_error", f"spool {self.path}: purge failed ({exc})")
                return 0
            self._pending -= len(doomed)
            self._pending_bytes -= sum(size for _, size in doomed)
            try:
                # Delivered events of the person may sit in free pages written before secure_delete was on:
                # rewrite the file without them, then empty the WAL that still holds old page images.
                db.execute("VACUUM")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                self._report("purge_error", f"spool {self.path}: rewrite after purge failed ({exc})")
        if doomed:
            log.info("spool %s: erased %d pending message(s)", self.path, len(doomed))
        return len(doomed)

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def dropped(self) -> int:
        return sum(self._counters.values())

    def stats(self) -> SpoolStats:
        with self._lock:
            return SpoolStats(pending=self._pending, pending_bytes=self._pending_bytes, **self._counters)

    def close(self) -> None:
        with self._lock:
            if self._db is None:
                return
            try:
                if self._unsaved_counters:
                    self._db.executemany(
                        "INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)", self._counters.items()
                    )
                self._db.close()
            except sqlite3.Error as exc:
                log.warning("spool %s: close failed (%s)", self.path, exc)
            finally:
                self._db = None
                os.close(self._lock_fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
