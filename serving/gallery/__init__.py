"""Galleries: labeled embeddings and their search index.

- :mod:`.backend` -- the backend interface (:class:`GalleryBackend`) the engine, service and builder use.
- :mod:`.local` -- the local backend: SQLite (source of truth) + an atomic faiss snapshot, shared by processes.
- :mod:`.milvus` -- the Milvus backend.
- :mod:`.validation` and :mod:`.errors` -- what both backends accept, and what they raise.
- :mod:`.list_file` -- PaddleClas gallery list files and label/image folder trees.
- :mod:`.build` -- building a gallery from list entries through the engine's extractor.

``from shitu.serving.gallery import Gallery`` works and imports faiss only when called for.
"""

from __future__ import annotations

from typing import Any

from shitu.serving.gallery.backend import GalleryBackend  # no faiss import
from shitu.serving.gallery.errors import GalleryError, LabelError
from shitu.serving.gallery.store import DB_NAME

__all__ = ["DB_NAME", "Gallery", "GalleryBackend", "GalleryError", "LabelError"]


def __getattr__(name: str) -> Any:
    if name == "Gallery":
        from shitu.serving.gallery.local import Gallery

        return Gallery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
