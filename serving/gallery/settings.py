"""A gallery's own recognition settings, kept in its ``meta`` table beside its model identity (issue #28).

One JSON object under the key ``recognition``: ``framing`` (how its items were framed before embedding, which
queries against it must follow: :mod:`shitu.serving.engine.framing`) and ``score_thres`` (the threshold
``IndexProcess.score_thres: auto`` derived from its items: :mod:`shitu.serving.engine.calibration`). A gallery
without the key (built before issue #28) reads as ``{}``. A Milvus gallery keeps the same object in its collection's
settings property (``MilvusGallery.recognition`` / ``update_recognition``). Writes are best effort: a read-only
gallery keeps working without them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from shitu.serving.gallery.errors import GalleryError
from shitu.serving.gallery.store import meta_json

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


def _remote(gallery: Any) -> bool:
    """A backend that records the settings itself (Milvus)."""
    return callable(getattr(gallery, "update_recognition", None))


def can_record(gallery: Any) -> bool:
    """Whether ``gallery`` keeps settings (a folder gallery or a Milvus collection; not an in-memory index)."""
    return _db(gallery) is not None or _remote(gallery)


def read_settings(gallery: Any) -> dict[str, Any]:
    """The settings the gallery records (``{}`` when none or unreadable)."""
    db = _db(gallery)
    try:
        if _remote(gallery):
            value = gallery.recognition()
        elif db is None:
            return {}
        else:
            value = meta_json(db.parent, KEY)
    except (GalleryError, ValueError, OSError) as e:
        log.warning("%s: recognition settings not read: %s", db.parent if db else "gallery", e)
        return {}
    return value if isinstance(value, dict) else {}


def update_settings(gallery: Any, **entries: Any) -> bool:
    """Merge ``entries`` into the recorded settings (an entry ``None`` removes its key); whether it was written."""
    db = _db(gallery)
    if (db is None and not _remote(gallery)) or getattr(gallery, "readonly", False):
        return False

    def merged(current: Any) -> dict[str, Any]:
        out = {**(current if isinstance(current, dict) else {}), **entries}
        return {k: v for k, v in out.items() if v is not None}

    try:
        if db is None:
            gallery.update_recognition(merged)
        else:
            meta_json(db.parent, KEY, merged)
    except (GalleryError, ValueError, OSError) as e:
        log.warning("%s: recognition settings not recorded: %s", db.parent if db else "gallery", e)
        return False
    return True
