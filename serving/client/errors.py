"""The SDK's errors, rooted in :mod:`shitu.errors` (``except shitu.errors.ShituError`` catches every one).

- :class:`InputError` (an :class:`~shitu.errors.InvalidArgument`, so a ``ValueError``) -- an image or argument
  cannot be used; nothing (more) was sent;
- :class:`ServerError` -- the server refused the request: ``status`` and ``msg`` (PaddleHub's envelope),
  ``http_status``, and ``index`` when one image is to blame (index in *your* list, across batches);
- :class:`ImageFailed` (a ``ServerError``) -- some images of a call failed (``raise_on_error=True``);
- :class:`ConnectionFailed` (also a ``ConnectionError``) and :class:`Timeout` (also a ``TimeoutError``), both
  :class:`~shitu.errors.Unavailable`.

Each has ``partial``: what the earlier batches of a batched call returned (for ``gallery_add``, the ids already
added, so the caller can remove them).
"""

from __future__ import annotations

import re
from typing import Any

from shitu.errors import InvalidArgument, ShituError, Unavailable

__all__ = ["CLIENT_ERRORS", "ConnectionFailed", "ImageFailed", "InputError", "ServerError", "ShituError", "Timeout"]

#: ``image N: reason`` -- a server message that names the image to blame.
IMAGE_INDEX = re.compile(r"^image (\d+): ?(.*)$", re.S)


class InputError(InvalidArgument):
    """An image or an argument cannot be used (client side; nothing more was sent). ``index``: the image's."""

    partial: Any = None

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class ServerError(ShituError):
    """The server answered with an error.

    ``status``: the envelope status (``"101"`` a refused request, ``"111"`` unknown module, HTTP codes such as
    ``"415"``); ``msg``: the server's message; ``http_status``: the HTTP code of the answer; ``index``: the failing
    image's position in the caller's list when the error names one (``"image N: ..."`` messages, per-image errors),
    else ``None``; ``module`` / ``operation``: what was called; ``request_id``: the server's id of the request
    (quote it to the operator: every log line of the request carries it), when the server gave one.
    """

    partial: Any = None

    def __init__(
        self,
        msg: str,
        status: str | None = None,
        http_status: int | None = None,
        index: int | None = None,
        module: str | None = None,
        operation: str | None = None,
        request_id: str | None = None,
    ):
        self.msg, self.status = msg, status
        self.http_status = http_status  # type: ignore[misc,assignment]  # the code this answer came with
        self.index, self.module, self.operation = index, module, operation
        self.request_id = request_id
        super().__init__(msg)

    def __str__(self) -> str:
        where = f"{self.module}/{self.operation}" if self.module else "server"
        notes = [f"status {self.status}"] if self.status is not None else []
        if self.http_status not in (None, 200):
            notes.append(f"HTTP {self.http_status}")
        m = IMAGE_INDEX.match(self.msg)
        if self.index is not None and (m is None or int(m.group(1)) != self.index):
            notes.append(f"image {self.index} of the call")
        return f"{where}: {self.msg}" + (f" ({', '.join(notes)})" if notes else "")


class ImageFailed(ServerError):
    """Some images of an otherwise successful call failed (``raise_on_error=True``).

    ``index``: the first failed image; ``errors``: ``{index: reason}`` for every failed image (``status`` and
    ``http_status`` are ``None``: the failures are per image); ``results``: the results of all images, in order
    (failed ones empty with ``.error`` set).
    """

    def __init__(
        self, errors: dict[int, str], results: list[Any], module: str | None = None, operation: str | None = None
    ):
        first = min(errors)
        more = f" (and {len(errors) - 1} more failed)" if len(errors) > 1 else ""
        super().__init__(f"image {first}: {errors[first]}{more}", None, None, first, module, operation)
        self.errors = dict(errors)
        self.results = results
        self.partial = results


class ConnectionFailed(Unavailable, ConnectionError):
    """The server could not be reached (after the retries). ``url``, ``attempts``."""

    partial: Any = None

    def __init__(self, message: str, url: str | None = None, attempts: int = 1):
        super().__init__(message)
        self.url, self.attempts = url, attempts


class Timeout(Unavailable, TimeoutError):
    """The server did not answer within the client's ``timeout`` (after the retries). ``url``, ``attempts``."""

    partial: Any = None

    def __init__(self, message: str, url: str | None = None, attempts: int = 1):
        super().__init__(message)
        self.url, self.attempts = url, attempts


#: Every error the client raises (each carries ``partial``).
CLIENT_ERRORS = (InputError, ServerError, ConnectionFailed, Timeout)
