"""A gallery's own recognition settings, kept in its ``meta`` table beside its model identity (issue #28).

One JSON object under the key ``recognition``: ``framing`` (how its items were framed before embedding, which
queries against it must follow: :mod:`shitu.serving.engine.framing`) and ``score_thres`` (the threshold
``IndexProcess.score_thres: auto`` derived from its items: :mod:`shitu.serving.engine.calibration`). A gallery
without the key (built before issue #28) reads as ``{}``; galleries in Milvus keep none (their callers fall back to
the pre-#28 rules). Reads and writes are best effort for writes: a read-only gallery keeps working without them.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KEY = "recognition"


def _db(gallery: Any) -> Path | None:
    """The ``gallery.db`` of a folder gallery (``None`` for Milvus and in-memory indexes)."""
    from shitu.serving.gallery.local import DB_NAME

    path = gallery if isinstance(gallery, Path) else getattr(gallery, "path", None)  # a folder, or a gallery
    if not isinstance(path, Path):
        return None
    db = path / DB_NAME
    return db if db.is_file() else None


def can_record(gallery: Any) -> bool:
    """Whether ``gallery`` keeps settings (a folder gallery; not Milvus)."""
    return _db(gallery) is not None


def read_settings(gallery: Any) -> dict[str, Any]:
    """The settings the gallery records (``{}`` when none or unreadable)."""
    db = _db(gallery)
    if db is None:
        return {}
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (KEY,)).fetchone()
        finally:
            conn.close()
        value = json.loads(row[0]) if row and row[0] else {}
    except (sqlite3.Error, ValueError, OSError) as e:
        log.warning("%s: recognition settings not read: %s", db.parent, e)
        return {}
    return value if isinstance(value, dict) else {}


def update_settings(gallery: Any, **entries: Any) -> bool:
    """Merge ``entries`` into the recorded settings (an entry ``None`` removes its key); whether it was written."""
    db = _db(gallery)
    if db is None or getattr(gallery, "readonly", False):
        return False
    try:
        conn = sqlite3.connect(str(db), isolation_level=None, timeout=30)
        try:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (KEY,)).fetchone()
            current = json.loads(row[0]) if row and row[0] else {}
            current = current if isinstance(current, dict) else {}
            current.update(entries)
            current = {k: v for k, v in current.items() if v is not None}
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (KEY, json.dumps(current, sort_keys=True))
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
    except (sqlite3.Error, ValueError, OSError) as e:
        log.warning("%s: recognition settings not recorded: %s", db.parent, e)
        return False
    return True
