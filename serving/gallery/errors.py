"""The errors of both gallery backends (local and Milvus), rooted on :mod:`shitu.errors`.

A leaf (no faiss, no pymilvus): the Milvus backend, the CLI and the service import it without loading an index
library. :class:`GalleryError` is the base of them all; ``http_status`` says who is at fault:

| class | also a | HTTP | raised for |
|---|---|---|---|
| :class:`GalleryError` | ``ShituError`` | 400 | a request the gallery refuses (bad vectors, ``k``, dimension or metric) |
| :class:`LabelError` | ``InvalidArgument`` | 400 | an invalid label (see :mod:`.validation`) |
| :class:`GalleryNotFound` | ``NotFound`` | 404 | no gallery at that folder or URI |
| :class:`ItemNotFound` | ``NotFound`` | 404 | no item with that id |
| :class:`GalleryReadOnly` | ``Conflict`` | 409 | a write to a gallery opened read-only |
| :class:`GalleryExists` | ``Conflict`` | 409 | creating a gallery where one is, or opening one of another dimension |
| :class:`GalleryCorrupt` | ``InternalError`` | 500 | a damaged database or snapshot (``shitu gallery repair``) |
| :class:`GalleryUnavailable` | ``Unavailable`` | 503 | Milvus down, a disk that takes no writes; retry later |
| :class:`BackupError` | | 400 | a backup, restore, export or import that cannot be done |
"""

from __future__ import annotations

from shitu.errors import Conflict, InternalError, InvalidArgument, NotFound, ShituError, Unavailable

__all__ = [
    "BackupError",
    "GalleryCorrupt",
    "GalleryError",
    "GalleryExists",
    "GalleryNotFound",
    "GalleryReadOnly",
    "GalleryUnavailable",
    "ItemNotFound",
    "LabelError",
    "MilvusUnavailable",
]


class GalleryError(ShituError):
    """A gallery cannot be created, opened, read or changed; the message names the path or the problem."""

    http_status = 400


class LabelError(GalleryError, InvalidArgument):
    """An invalid label (empty, invisible, too long, control or bidi characters); the message names it."""

    http_status = 400


class GalleryNotFound(GalleryError, NotFound):
    """No gallery at the folder or URI named."""

    http_status = 404


class ItemNotFound(GalleryError, NotFound):
    """No item with the id named."""

    http_status = 404


class GalleryReadOnly(GalleryError, Conflict):
    """A write to a gallery opened read-only."""

    http_status = 409


class GalleryExists(GalleryError, Conflict):
    """A gallery exists already where one is created, or holds other vectors than the caller's."""

    http_status = 409


class GalleryCorrupt(GalleryError, InternalError):
    """A damaged ``gallery.db`` or snapshot; the message names the file and the command that repairs it."""

    http_status = 500


class GalleryUnavailable(GalleryError, Unavailable):
    """The store does not answer or take writes now (Milvus down or restarting, a full disk); retry later."""

    http_status = 503


class MilvusUnavailable(GalleryUnavailable):
    """The Milvus server did not answer (down, restarting, overloaded); the call may be retried."""


class Cancelled(Exception):
    """A background index rebuild was cancelled (the gallery is closing); never leaves the gallery."""


class BackupError(GalleryError):
    """A backup, restore, export or import cannot be done; the message says why and names the folder."""
