"""The error answer of every route in the route's own JSON format, with its request id (one place for all of them).

The app's error handlers, the body reader, the browser checks and the HTTP servers' own refusals (a request line or
headers too long: ``414`` / ``431``, a body too large: ``413``) all answer through :func:`error_body`, so a client
gets the format its route speaks whatever refused it:

| route | body |
|---|---|
| ``/shitu-index-*``, ``/shitu-infer`` (PaddleX) | ``{"logId": <request id>, "errorCode": <http code>, "errorMsg": ...}`` |
| ``/recognition/prediction`` (Paddle Serving) | ``{"err_no": 5000 (client) / 10000 (server), "err_msg": ..., "key": [], "value": [], "tensors": [], "request_id": ...}`` |
| everything else (PaddleHub) | ``{"status": "<http code>", "msg": ..., "results": "", "request_id": ...}`` |
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

__all__ = ["error_answer", "error_body", "raw_response", "PADDLEX_PREFIX", "PADDLE_SERVING_ROUTE"]

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
