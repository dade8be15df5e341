"""The gallery file: its SQLite schema and migration, private creation, the key check, and the export format.

agent/recognition/gallery.py is the gallery's behaviour (enrol, match, forget, hygiene); this is how it sits on
disk. A file is
created 0600 before SQLite opens it, holds one ``meta`` table (schema, embedder sha256, embedding size, version, key
check) and is migrated forward in one transaction; an export is one JSON document (format, schema, people with
base64 little-endian float32 vectors).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import numpy as np

from facelite.errors import GalleryError
from facelite.recognition.matching import check_vector
from facelite.recognition.names import normalize_name

log = logging.getLogger(__name__)


def _short(sha: str) -> str:
    return sha[:12]


GALLERY_SCHEMA = 2  # 2: negatives (corrections); a schema 1 file is migrated when opened
EXPORT_FORMAT = "facelite-gallery"
EXPORT_SCHEMA = 2  # 2: people carry "negatives"; schema 1 exports are still imported
NONCE_BYTES = 12
KEY_CHECK = b"facelite gallery key check v1"
# Vectors are stored little-endian whatever the host: a gallery file or export moves between x86 and ARM.
F32 = np.dtype("<f4")

SCHEMA_SQL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE people (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    slug TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE templates (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    nonce BLOB,
    source TEXT NOT NULL,
    quality REAL,
    created REAL NOT NULL
);
CREATE INDEX templates_person ON templates(person_id);
CREATE TABLE IF NOT EXISTS negatives (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    nonce BLOB,
    source TEXT NOT NULL,
    event_id TEXT UNIQUE,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS negatives_person ON negatives(person_id);
"""
# Schema 1 -> 2: the negatives table (the last two statements above).
MIGRATE_1_TO_2 = SCHEMA_SQL[SCHEMA_SQL.index("CREATE TABLE IF NOT EXISTS negatives") :]


def make_aead(key: bytes | None, path: Path) -> Any | None:
    if key is None:
        return None
    if not isinstance(key, bytes) or len(key) not in (16, 24, 32):
        size = len(key) if isinstance(key, bytes) else type(key).__name__
        raise GalleryError(f"gallery key must be 16, 24 or 32 bytes, got {size}", str(path))
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise GalleryError(
            "gallery encryption needs the 'cryptography' package", str(path), "pip install cryptography"
        ) from None
    return AESGCM(key)


def create_private(path: Path) -> None:
    """Create ``path`` as an empty 0600 file (never briefly world-readable); tighten an existing one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if p.exists() and stat.S_IMODE(p.stat().st_mode) & 0o077:
                log.warning("%s was readable by others; setting mode 0600 (it holds biometric templates)", p)
                p.chmod(0o600)
        return
    except OSError as exc:
        raise GalleryError(f"cannot create gallery file: {exc.strerror}", str(path)) from None
    os.close(fd)


def configure(conn: sqlite3.Connection, path: Path) -> None:
    try:
        # 2 KiB rows (512 float32) fit once per default 4 KiB page; 16 KiB pages hold seven, halving the
        # file. Only takes effect when the file is created (before the first table).
        conn.execute("PRAGMA page_size=16384")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        conn.execute("PRAGMA foreign_keys=ON")
        # Freed cells are overwritten with zeros, so removed names and vectors do not linger in pages.
        conn.execute("PRAGMA secure_delete=ON")
        # Enrolment is rare and precious; the cost of FULL is irrelevant next to losing it on power loss.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
    except sqlite3.DatabaseError as exc:
        raise GalleryError(
            f"not a gallery file ({exc})", str(path), "point to a gallery made by `facelite enroll`"
        ) from None
    if str(mode).lower() != "wal":
        log.warning("gallery %s: journal mode is %s, not WAL (filesystem without shared memory?)", path, mode)


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def meta_int(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def init_or_check(conn: sqlite3.Connection, path: Path, sha: str, dim: int, aead: Any | None, keyed: bool) -> None:
    # Look for the tables under the write lock: two processes creating the same new file must not both
    # try to create the schema.
    conn.execute("BEGIN IMMEDIATE")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        check = b""
        if aead is not None:
            nonce = os.urandom(NONCE_BYTES)
            check = nonce + aead.encrypt(nonce, KEY_CHECK, None)
        meta = {
            "schema": str(GALLERY_SCHEMA),
            "embedder_sha256": sha,
            "embedding_size": str(dim),
            "version": "0",
            "encrypted": "1" if aead is not None else "0",
            "key_check": base64.b64encode(check).decode("ascii"),
        }
        try:
            for statement in SCHEMA_SQL.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items()))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        log.info(
            "created gallery %s for embedder %s (%d-d, %s)", path, _short(sha), dim, "encrypted" if aead else "plain"
        )
        return
    conn.execute("COMMIT")
    if "meta" not in tables:
        raise GalleryError(
            "not a facelite gallery (no meta table)", str(path), "point to a gallery made by `facelite enroll`"
        )
    meta = read_meta(conn)
    schema = meta.get("schema")
    if schema == "1":
        migrate_1_to_2(conn, path)
        schema = meta["schema"] = str(GALLERY_SCHEMA)
    if schema != str(GALLERY_SCHEMA):
        raise GalleryError(f"gallery schema {schema} is not supported (expected {GALLERY_SCHEMA})", str(path))
    stored = meta.get("embedder_sha256", "")
    if stored != sha:
        raise GalleryError(
            f"gallery was enrolled with embedder {_short(stored)}, the model in use is {_short(sha)}",
            str(path),
            "re-enroll with `facelite enroll` for this model (or use the gallery made for it)",
        )
    if meta.get("embedding_size") != str(dim):
        raise GalleryError(
            f"gallery holds {meta.get('embedding_size')}-d templates, the model makes {dim}-d", str(path)
        )
    encrypted = meta.get("encrypted") == "1"
    if encrypted and not keyed:
        raise GalleryError("gallery is encrypted but no key was given", str(path), "pass the gallery key file")
    if keyed and not encrypted:
        raise GalleryError(
            "gallery is not encrypted but a key was given",
            str(path),
            "drop the key, or export it and import into a new gallery opened with the key",
        )
    if aead is not None:
        from cryptography.exceptions import InvalidTag

        blob = base64.b64decode(meta.get("key_check", ""))
        try:
            aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], None)
        except (InvalidTag, ValueError):
            raise GalleryError(
                "gallery key does not match this gallery", str(path), "use the key it was created with"
            ) from None


def migrate_1_to_2(conn: sqlite3.Connection, path: Path) -> None:
    """Schema 1 -> 2: add the negatives table (corrections), under the write lock, once."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == "1":
            for statement in MIGRATE_1_TO_2.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
            log.info("gallery %s migrated from schema 1 to 2 (negatives for corrections)", path)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


ExportedPerson = tuple[
    str, float, list[tuple[np.ndarray, str, float | None, float]], list[tuple[np.ndarray, str, str | None, float]]
]


def read_export(path: Path, sha: str, dim: int) -> list[ExportedPerson]:
    """Parse and check a gallery export: every vector decoded and validated before anything is written."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise GalleryError("export file not found", str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GalleryError(f"export file cannot be read: {exc}", str(path)) from None
    except json.JSONDecodeError as exc:
        raise GalleryError(f"export file is not valid JSON: {exc.msg} at line {exc.lineno}", str(path)) from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise GalleryError("not a facelite gallery export", str(path))
    if doc.get("schema") not in (1, EXPORT_SCHEMA):
        raise GalleryError(
            f"export schema {doc.get('schema')} is not supported (expected 1 or {EXPORT_SCHEMA})", str(path)
        )
    other = str(doc.get("embedder_sha256", ""))
    if other != sha:
        raise GalleryError(
            f"export was made with embedder {_short(other)}, this gallery uses {_short(sha)}",
            str(path),
            "re-enroll with `facelite enroll` for this model",
        )
    if doc.get("embedding_size") != dim:
        raise GalleryError(f"export holds {doc.get('embedding_size')}-d templates, expected {dim}-d", str(path))
    people = doc.get("people")
    if not isinstance(people, list):
        raise GalleryError("export has no 'people' list", str(path))
    out = []
    for i, p in enumerate(people):
        where = f"{path}: people[{i}]"
        if not isinstance(p, dict) or not isinstance(p.get("templates"), list):
            raise GalleryError("person entry needs 'name' and a 'templates' list", where)
        name = normalize_name(p.get("name"))
        templates = []
        for j, t in enumerate(p["templates"]):
            twhere = f"{where}.templates[{j}]"
            try:
                raw = base64.b64decode(str(t["vector"]), validate=True)
            except (KeyError, TypeError, binascii.Error):
                raise GalleryError("template needs a base64 'vector'", twhere) from None
            if len(raw) != dim * 4:
                raise GalleryError(f"vector has {len(raw) // 4} values, expected {dim}", twhere)
            vec = check_vector(np.frombuffer(raw, F32), dim, twhere)
            quality = t.get("quality")
            templates.append(
                (
                    vec,
                    str(t.get("source", "")),
                    None if quality is None else float(quality),
                    float(t.get("created", 0.0)),
                )
            )
        negatives = []
        raw_negatives = p.get("negatives", [])
        if not isinstance(raw_negatives, list):
            raise GalleryError("'negatives' must be a list", where)
        for j, t in enumerate(raw_negatives):
            nwhere = f"{where}.negatives[{j}]"
            try:
                raw = base64.b64decode(str(t["vector"]), validate=True)
            except (KeyError, TypeError, binascii.Error):
                raise GalleryError("negative needs a base64 'vector'", nwhere) from None
            if len(raw) != dim * 4:
                raise GalleryError(f"vector has {len(raw) // 4} values, expected {dim}", nwhere)
            event_id = t.get("event_id")
            negatives.append(
                (
                    check_vector(np.frombuffer(raw, F32), dim, nwhere),
                    str(t.get("source", "")),
                    None if event_id is None else str(event_id),
                    float(t.get("created", 0.0)),
                )
            )
        out.append((name, float(p.get("created", 0.0)), templates, negatives))
    return out
