"""Galleries: labeled embeddings and their search index.

- :mod:`.backend` -- the backend interface (:class:`GalleryBackend`) the engine, service and builder use.
- :mod:`.local` -- the local backend: SQLite (source of truth) + an atomic faiss snapshot, shared by processes.
- :mod:`.list_file` -- PaddleClas gallery list files and label/image folder trees.
- :mod:`.build` -- building a gallery from list entries through the engine's extractor.

``from shitu.serving.gallery import Gallery`` works and imports faiss only when called for.
"""

from __future__ import annotations

from typing import Any

from shitu.serving.gallery.backend import GalleryBackend  # no faiss import

__all__ = ["DB_NAME", "Gallery", "GalleryBackend", "GalleryError", "LabelError"]

_LAZY = {"Gallery", "GalleryError", "LabelError", "DB_NAME"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from shitu.serving.gallery import local

        return getattr(local, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
