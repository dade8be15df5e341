"""Person names: how a name is written (normalize_name) and the id it becomes in topics and Home Assistant (slugify).

Both the gallery (which refuses two names with one slug) and the MQTT contract use them, so they live below both.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from facelite.errors import GalleryError

MAX_NAME_LENGTH = 64


def normalize_name(person: object) -> str:
    """NFC, trimmed, 1..64 characters, no control characters: names show up in logs, topics and HA."""
    if not isinstance(person, str):
        raise GalleryError(f"person name must be text, got {type(person).__name__}")
    name = unicodedata.normalize("NFC", person).strip()
    if not name:
        raise GalleryError("person name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise GalleryError(f"person name is {len(name)} characters, at most {MAX_NAME_LENGTH} allowed", name[:20])
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise GalleryError("person name contains control characters", repr(name))
    return name


def slugify(name: str) -> str:
    """A topic- and Home-Assistant-safe id for a person name: [a-z0-9_], never empty, deterministic.

    Accents are folded ("José" -> "jose"); a name with no latin letters or digits gets a short hash,
    so it still has a stable, distinct slug. The gallery refuses two names with the same slug.
    """
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "_", folded).strip("_")
    if not slug:
        slug = "p_" + hashlib.sha256(unicodedata.normalize("NFC", name).encode()).hexdigest()[:10]
    return slug
