"""The one error root of shitu-hub: every error the product raises on purpose derives from :class:`ShituError`.

A leaf (imports nothing of shitu), so every room and the client SDK share it. Each class says who is at fault
through ``http_status``; the server maps it to its envelope (PaddleHub, PaddleX, Paddle Serving) and HTTP code in
one place, and anything that is *not* a ``ShituError`` is a server error (logged with its traceback, answered
with the request id, never described to the client). The model is BentoML's ``exceptions`` module.

Room-specific classes (``ImageError``, ``GalleryError``, ``PackError``, ...) subclass one of these; the
``ValueError`` / ``LookupError`` bases keep old ``except ValueError`` callers working.
"""

from __future__ import annotations

from typing import ClassVar


class ShituError(Exception):
    """Root of every deliberate error. ``http_status`` is the HTTP code a server answers it with."""

    http_status: ClassVar[int] = 500


class InvalidArgument(ShituError, ValueError):
    """The caller's input is wrong (a field, a parameter, an image, a file); the message says which and why."""

    http_status = 400


class Unauthorized(ShituError):
    """The operation needs a valid admin token."""

    http_status = 401


class NotFound(ShituError, LookupError):
    """A named thing (gallery, pack, item, module) does not exist."""

    http_status = 404


class Conflict(ShituError):
    """The request contradicts what is stored (a read-only gallery, another recogniser's vectors, a busy lock)."""

    http_status = 409


class TooLarge(InvalidArgument):
    """The input exceeds one of the ``Limits`` (the message names the limit)."""

    http_status = 413


class Unavailable(ShituError):
    """A dependency is not reachable or not able to take writes now (Milvus down, a full disk); retry later."""

    http_status = 503


class InternalError(ShituError):
    """A broken invariant the server detected itself; answered as a server error."""

    http_status = 500


__all__ = [
    "Conflict",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "ShituError",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
]
