"""How the hub routes answer an error: the one table from :mod:`shitu.errors` to PaddleHub's envelope and HTTP.

The service (:mod:`.service`) raises a client's fault as its :class:`~shitu.errors.ShituError`, and turns any other
exception into a :class:`ServerFault` (logged here with its traceback, described to the client only by its request
id); the observability hook sets the envelope's ``status`` and the HTTP code from :func:`envelope_of`.
"""

from __future__ import annotations

import logging

from shitu.errors import InternalError, ShituError


class ServerFault(InternalError):
    """An unexpected failure inside the server: answered with the request id only (the log has the traceback)."""

    @classmethod
    def of(cls, exc: BaseException) -> ServerFault:
        """Log ``exc`` with its traceback under the current request id; the fault to answer instead."""
        from shitu.serving.hub.request_log import current_request_id

        rid = current_request_id()
        logging.getLogger("shitu.serving").error("request %s failed: %r", rid, exc, exc_info=exc)
        return cls(f"internal server error (request id {rid}); the server log has the details")


def envelope_of(exc: BaseException) -> tuple[str, int]:
    """The PaddleHub envelope's ``status`` and the HTTP code answering ``exc``.

    A client's fault (a :class:`~shitu.errors.ShituError` under 500: bad field, token, unknown gallery, conflict,
    too large) keeps PaddleHub's own answer, status ``"101"`` with HTTP 200; a dependency down is ``"503"``/503;
    anything else (an :class:`~shitu.errors.InternalError`, any exception that is not a ``ShituError``) is a
    server error, ``"500"``/500.
    """
    code = exc.http_status if isinstance(exc, ShituError) else 500
    if code < 500:
        return "101", 200
    return ("503", 503) if code == 503 else ("500", 500)


def is_legacy_client_error(exc: BaseException) -> bool:
    """Room errors not yet re-rooted onto :mod:`shitu.errors` in this tree (packs, galleries): client faults."""
    from shitu.plugins.errors import PackError
    from shitu.serving.gallery.local import GalleryError

    return isinstance(exc, (PackError, GalleryError))
