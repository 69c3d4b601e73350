"""How every route answers an error: in the route's own JSON format, with its request id, from one table.

- :func:`envelope_of`: the one table from :mod:`shitu.errors` to PaddleHub's envelope ``status`` and the HTTP code.
  The service (:mod:`.service`) raises a client's fault as its :class:`~shitu.errors.ShituError` and turns any other
  exception into a :class:`ServerFault` (logged with its traceback, described to the client only by its request id).
- :func:`error_answer` / :func:`error_body` / :func:`raw_response`: the error object of each API. The app's error
  handlers, the body reader, the browser checks and the HTTP servers' own refusals (a request line or headers too
  long: ``414`` / ``431``, a body too large: ``413``) all answer through them, so a client gets the format its
  route speaks whatever refused it:

| route | body |
|---|---|
| ``/shitu-index-*``, ``/shitu-infer`` (PaddleX) | ``{"logId": <request id>, "errorCode": <http code>, "errorMsg": ...}`` |
| ``/recognition/prediction`` (Paddle Serving) | ``{"err_no": 5000 (client) / 10000 (server), "err_msg": ..., "key": [], "value": [], "tensors": [], "request_id": ...}`` |
| everything else (PaddleHub) | ``{"status": "<http code>", "msg": ..., "results": "", "request_id": ...}`` |
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from shitu.errors import InternalError, ShituError

__all__ = [
    "PADDLEX_PREFIX",
    "PADDLE_SERVING_ROUTE",
    "ServerFault",
    "envelope_of",
    "error_answer",
    "error_body",
    "raw_response",
]

PADDLEX_PREFIX = "/shitu-"
PADDLE_SERVING_ROUTE = "/recognition/prediction"
#: Paddle Serving's ``CustomExceptionCode`` values: bad input, anything else.
PADDLE_SERVING_INPUT_ERROR, PADDLE_SERVING_UNKNOWN = 5000, 10000


def error_answer(path: str, code: int, msg: str, request_id: str) -> dict[str, Any]:
    """The error object of ``path``'s API for HTTP status ``code``."""
    if path.startswith(PADDLEX_PREFIX):
        return {"logId": request_id, "errorCode": code, "errorMsg": msg}
    if path == PADDLE_SERVING_ROUTE:
        err_no = PADDLE_SERVING_INPUT_ERROR if code < 500 else PADDLE_SERVING_UNKNOWN
        return {"err_no": err_no, "err_msg": msg, "key": [], "value": [], "tensors": [], "request_id": request_id}
    return {"status": str(code), "msg": msg, "results": "", "request_id": request_id}


def error_body(path: str, code: int, msg: str, request_id: str) -> bytes:
    return json.dumps(error_answer(path, code, msg, request_id), ensure_ascii=False).encode("utf-8")


def reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def raw_response(code: int, path: str, msg: str, request_id: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, for refusals written by the server before any app runs."""
    body = error_body(path, code, msg, request_id)
    head = (
        f"HTTP/1.1 {code} {reason(code)}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"X-Request-ID: {request_id}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


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
