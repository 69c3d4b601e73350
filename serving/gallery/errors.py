"""The errors of both gallery backends (local and Milvus), rooted on :mod:`shitu.errors`.

A leaf (no faiss, no pymilvus): the Milvus backend, the CLI and the service import it without loading an index
library. :class:`GalleryError` is the base of them all; each class's ``http_status`` (and its ``shitu.errors``
base) says who is at fault: the caller (400, 404, 409), the server (500) or a dependency (503).
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
