"""What a gallery backend offers the engine, the service and the CLI, and how a gallery is named.

Two backends implement :class:`GalleryBackend`:

- :class:`shitu.serving.gallery.local.Gallery` -- a folder (SQLite + a faiss snapshot), the default;
- :class:`shitu.serving.gallery.milvus.MilvusGallery` -- a Milvus collection, named by a URI
  ``milvus://host:port/collection`` (the ``milvus`` extra: ``pip install "shitu-hub[milvus]"``).

A gallery is named by a folder path or by such a URI wherever galleries are named: ``load_engine(gallery=...)``,
``init_args`` ``gallery``, ``IndexProcess.index_dir`` (also in a pack's parameters) and ``shitu gallery ...``.
:func:`open_gallery`, :func:`create_gallery` and :func:`gallery_exists` pick the backend from the name.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from shitu.serving.engine.results import Match

__all__ = ["GalleryBackend", "is_remote", "remote_gallery_uri", "open_gallery", "create_gallery",
           "gallery_exists", "check_vectors"]

#: URI schemes of remote galleries.
REMOTE_SCHEMES = ("milvus://",)


@runtime_checkable
class GalleryBackend(Protocol):
    """The public methods of ``Gallery`` that the engine, the service and the CLI call (same signatures)."""

    readonly: bool

    @property
    def dim(self) -> int: ...
    @property
    def metric(self) -> str: ...
    @property
    def index_method(self) -> str: ...
    @property
    def hamming_radius(self) -> int: ...
    @property
    def higher_is_better(self) -> bool: ...
    @property
    def normalize(self) -> bool: ...

    def check_label(self, label: Any) -> str: ...

    def add(self, vectors: np.ndarray, labels: Sequence[str], sources: Sequence[str | None] | None = None,
            metadata: Sequence[dict | None] | None = None,
            content_hashes: Sequence[str | None] | None = None) -> list[int]: ...

    def remove(self, ids: Sequence[int] | None = None, labels: Sequence[str] | None = None) -> int: ...

    def update(self, id: int, label: str | None = None, vector: np.ndarray | None = None, *,
               source: str | None = None, metadata: dict | None = None, content_hash: str | None = None) -> None: ...

    def search(self, queries: np.ndarray, k: int = 5, labels: Sequence[str] | None = None) -> list[list[Match]]: ...

    def get(self, id: int, with_vector: bool = False) -> dict[str, Any] | None: ...

    def list(self, label: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]: ...

    def label_counts(self) -> dict[str, int]: ...

    def has_hash(self, content_hash: str) -> bool: ...

    def hashes_present(self, hashes: Iterable[str]) -> set[str]: ...

    def info(self) -> dict[str, Any]: ...

    def checkpoint(self) -> None: ...

    def close(self) -> None: ...

    def __len__(self) -> int: ...


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

    from shitu.serving.gallery.local import DB_NAME

    return (Path(target) / DB_NAME).is_file()


def check_vectors(vectors: Any, dim: int, binary: bool, normalize: bool, what: str = "vectors") -> np.ndarray:
    """``vectors`` as a C-contiguous ``[n, dim]`` float32 array (``[n, dim / 8]`` uint8 packed bits when
    ``binary``), L2-normalised when ``normalize``; ``ValueError`` naming the problem otherwise."""
    arr = np.asarray(vectors)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if binary:
        width = dim // 8
        if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != width:
            raise ValueError(f"{what} must be packed bits, uint8 [n, {width}] for this {dim}-bit hamming gallery; "
                             f"got {arr.dtype} {list(arr.shape)}")
        return np.ascontiguousarray(arr)
    if arr.ndim != 2 or arr.shape[1] != dim or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{what} must be float [n, {dim}]; got {arr.dtype} {list(arr.shape)}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    if normalize:
        arr = arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
    return arr
