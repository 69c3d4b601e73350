"""The gallery backend interface, and how a gallery is named.

What the engine, the service, the builder and the CLI use from a gallery is :class:`GalleryBackend`; two backends
implement it:

- :class:`shitu.serving.gallery.local.Gallery` -- a folder (SQLite + a faiss snapshot), the default;
- :class:`shitu.serving.gallery.milvus.MilvusGallery` -- a Milvus collection, named by a URI
  ``milvus://host:port/collection`` (the ``milvus`` extra: ``pip install "shitu-hub[milvus]"``).

The interface holds only methods both have; anything else (``compact``, ``repair``, snapshots, tuning) is specific
to one backend. A gallery is named by a folder path or by such a URI wherever galleries are named:
``load_engine(gallery=...)``, ``init_args`` ``gallery``, ``IndexProcess.index_dir`` (also in a pack's parameters)
and ``shitu gallery ...``. :func:`open_gallery`, :func:`create_gallery` and :func:`gallery_exists` pick the backend
from the name.

``score`` of a :class:`Match` (defined in ``shitu.serving.results``) is the raw metric: similarity when
``higher_is_better`` (inner product), a distance otherwise (squared L2, hamming).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from shitu.serving.gallery.validation import check_vectors
from shitu.serving.results.types import Match  # the result type, in the leaf the client shares

__all__ = [
    "GalleryBackend",
    "Match",
    "check_vectors",
    "create_gallery",
    "gallery_exists",
    "is_remote",
    "open_gallery",
    "remote_gallery_uri",
]

#: URI schemes of remote galleries.
REMOTE_SCHEMES = ("milvus://",)


@runtime_checkable
class GalleryBackend(Protocol):
    """A labelled embedding store searched at recognition time (one gallery)."""

    readonly: bool

    @property
    def dim(self) -> int:
        """Embedding size (bits for binary embeddings)."""
        ...

    @property
    def metric(self) -> str:
        """``"IP"``, ``"L2"`` or ``"hamming"``."""
        ...

    @property
    def higher_is_better(self) -> bool:
        """True when a larger ``score`` is a better match (IP)."""
        ...

    @property
    def index_method(self) -> str:
        """The index type (``Flat``, ``IVF``, ``HNSW32`` or a faiss factory string; Milvus maps it)."""
        ...

    @property
    def hamming_radius(self) -> int:
        """The gallery's own default largest hamming distance (binary galleries)."""
        ...

    @property
    def normalize(self) -> bool:
        """Whether added and searched float vectors are L2-normalised."""
        ...

    def check_label(self, label: Any) -> str:
        """``label`` as stored, or :class:`~shitu.serving.gallery.local.LabelError` naming the problem."""
        ...

    def add(
        self,
        vectors: np.ndarray,
        labels: Sequence[str],
        sources: Sequence[str | None] | None = None,
        metadata: Sequence[dict | None] | None = None,
        content_hashes: Sequence[str | None] | None = None,
    ) -> list[int]:
        """Add items in one step; their new ids, in order."""
        ...

    def remove(self, ids: Sequence[int] | None = None, labels: Sequence[str] | None = None) -> int:
        """Remove items by id and/or label; how many were removed. Searches never return them afterwards."""
        ...

    def update(
        self,
        id: int,
        label: str | None = None,
        vector: np.ndarray | None = None,
        *,
        source: str | None = None,
        metadata: dict | None = None,
        content_hash: str | None = None,
    ) -> None:
        """Relabel an item and/or replace its vector; the id stays the same."""
        ...

    def search(self, queries: np.ndarray, k: int = 5, labels: Sequence[str] | None = None) -> list[list[Match]]:
        """The ``k`` best matches of each query, best first; ``labels`` restricts the labels searched.

        A backend holding binary (``hamming``) galleries also takes ``hamming_radius=`` (keyword): the largest
        distance returned by this call (``IndexProcess.hamming_radius`` per request)."""
        ...

    def get(self, id: int, with_vector: bool = False) -> dict[str, Any] | None:
        """The record of item ``id`` (``id``, ``label``, ``source``, ``metadata``, ``content_hash``, times)."""
        ...

    def list(self, label: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Records by id (optionally of one label), ``limit`` from ``offset``."""
        ...

    def label_counts(self) -> dict[str, int]:
        """Items per label."""
        ...

    def has_hash(self, content_hash: str) -> bool:
        """Whether some item has ``content_hash``."""
        ...

    def hashes_present(self, hashes: Iterable[str]) -> set[str]:
        """Which of ``hashes`` some item has as its content hash (duplicate detection when building)."""
        ...

    def info(self) -> dict[str, Any]:
        """At least ``count``, ``labels``, ``dim``, ``metric``, ``index_method``; more per backend."""
        ...

    def __len__(self) -> int:
        """Number of searchable items."""
        ...

    def checkpoint(self) -> None:
        """Make everything added so far durable and fast to search (a snapshot; a Milvus flush)."""
        ...

    def close(self) -> None:
        """Release the backend (idempotent); everything added is kept."""
        ...


def is_remote(target: Any) -> bool:
    """Whether ``target`` names a remote gallery (a ``milvus://`` URI) rather than a folder."""
    return isinstance(target, str) and target.lower().startswith(REMOTE_SCHEMES)


def remote_gallery_uri(name: str | None, default_gallery: str, index_dir: str | None) -> str | None:
    """The URI of gallery ``name`` when the engine's galleries are remote, else ``None``.

    ``index_dir`` (``IndexProcess.index_dir``) set to ``milvus://host:port/collection`` puts the default gallery in
    that collection and every other gallery *name* in a collection of that name on the same server (``-`` and
    ``.`` become ``_``), so a served instance keeps no gallery on its own disk.
    """
    if not is_remote(index_dir):
        return None
    assert index_dir is not None
    if not name or name == default_gallery:
        return index_dir
    from shitu.serving.gallery.milvus import parse_uri

    return parse_uri(index_dir).with_collection(name).uri


def open_gallery(target: str | os.PathLike, readonly: bool = False, **kw: Any) -> Any:
    """Open the existing gallery ``target`` (folder or URI)."""
    if is_remote(target):
        from shitu.serving.gallery.milvus import MilvusGallery

        return MilvusGallery.open(str(target), readonly=readonly, **kw)
    from shitu.serving.gallery.local import Gallery

    return Gallery.open(target, readonly=readonly, **kw)


def create_gallery(target: str | os.PathLike, dim: int, **kw: Any) -> Any:
    """Create gallery ``target`` (folder or URI); ``Gallery.create``'s arguments."""
    if is_remote(target):
        from shitu.serving.gallery.milvus import MilvusGallery

        return MilvusGallery.create(str(target), dim, **kw)
    from shitu.serving.gallery.local import Gallery

    return Gallery.create(target, dim, **kw)


def gallery_exists(target: str | os.PathLike) -> bool:
    """Whether a gallery exists at ``target`` (folder or URI)."""
    if is_remote(target):
        from shitu.serving.gallery.milvus import MilvusGallery

        return MilvusGallery.exists(str(target))
    from pathlib import Path

    from shitu.serving.gallery.store import DB_NAME

    return (Path(target) / DB_NAME).is_file()
