"""Small JPEG thumbnails of gallery items, for browsing a gallery (the web page's gallery view).

A thumbnail is stored when an item is added *with its image* (``Engine.gallery_add``: the server's ``add``
operation, ``shitu gallery add``): the image scaled so that its longer side is at most :data:`THUMB_SIDE` pixels,
JPEG quality :data:`THUMB_QUALITY` (a few kilobytes). Items added as bare embeddings have none.

Storage: a side table ``thumbnails (id INTEGER PRIMARY KEY, jpeg BLOB)`` in the gallery's own ``gallery.db``,
keyed by the item id, created on first use together with a trigger that deletes an item's thumbnail in the same
transaction that deletes the item (``remove``), so no orphan remains. The gallery's tables are not changed, and
thumbnails never appear in ``list`` / ``search`` answers: they are read only by :func:`fetch`.

A thumbnail is written in its own transaction right after the item's add has committed; a failure there (a full
disk, a read-only folder) is logged and leaves the item without a thumbnail, never undoes the add.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shitu.serving.gallery.errors import GalleryError
from shitu.serving.gallery.store import read_thumbnails, write_thumbnails

#: Longer side of a stored thumbnail, in pixels.
THUMB_SIDE = 96
#: JPEG quality of stored thumbnails.
THUMB_QUALITY = 80


_log = logging.getLogger("shitu.gallery")


def make_thumbnail(image_bgr: np.ndarray, side: int = THUMB_SIDE, quality: int = THUMB_QUALITY) -> bytes:
    """A BGR image -> JPEG bytes whose longer side is at most ``side`` pixels (never enlarged)."""
    h, w = image_bgr.shape[:2]
    scale = min(1.0, side / max(h, w, 1))
    small = (
        image_bgr
        if scale >= 1.0
        else cv2.resize(image_bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    )
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cannot encode a thumbnail")
    return buf.tobytes()


def _db_of(gallery: Any) -> Path | None:
    """The ``gallery.db`` of a local gallery (None for other index objects)."""
    db = getattr(gallery, "db_path", None)
    return Path(db) if db is not None else None


def store(gallery: Any, ids: Sequence[int], images: Sequence[np.ndarray]) -> int:
    """Store one thumbnail per added item (``ids[i]`` <- ``images[i]``); returns how many were stored.

    Never raises for a storage problem: the items are already committed; the problem is logged.
    """
    db = _db_of(gallery)
    if db is None or not ids or getattr(gallery, "readonly", False):
        return 0
    try:
        rows = [(int(i), make_thumbnail(img)) for i, img in zip(ids, images)]
        write_thumbnails(db, rows)
        return len(rows)
    except (GalleryError, ValueError, cv2.error) as exc:
        _log.warning("%s: thumbnails of items %s not stored: %s", db, list(ids)[:5], exc)
        return 0


def fetch(gallery: Any, ids: Iterable[int]) -> dict[int, bytes]:
    """Thumbnails (JPEG bytes) of those ``ids`` that have one."""
    db = _db_of(gallery)
    wanted = sorted({int(i) for i in ids})
    if db is None or not wanted or not db.is_file():
        return {}
    return read_thumbnails(db, wanted)
