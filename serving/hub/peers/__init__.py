"""Peer APIs: the HTTP APIs of PaddleX and Paddle Serving, served next to ``/predict/<module>``.

People who deploy shitu-hub often already have PP-ShiTu clients. These routes let those clients work unchanged
against this server (only the host name changes):

- :mod:`.paddlex` -- PaddleX's PP-ShiTuV2 serving API (``/shitu-index-build``, ``/shitu-index-add``,
  ``/shitu-index-remove``, ``/shitu-infer``; envelope ``{logId, errorCode, errorMsg, result}``);
- :mod:`.paddle_serving` -- the Paddle Serving recognition pipeline of PaddleClas
  (``/recognition/prediction``, ``{key, value}`` in and ``{err_no, err_msg, key, value, tensors}`` out).

Both call the ``image_recognition`` module's :class:`~shitu.serving.hub.service.RecognitionService` (its scenario
pack, galleries, parameters, limits and admin token), so they need that module served. They are registered on
PaddleHub's Flask app by :func:`shitu.serving.hub.app.configure`.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from shitu.serving.hub.service import RecognitionService, RequestError

#: The hub module whose service the peer APIs use.
RECOGNITION_MODULE = "image_recognition"


class PeerError(RequestError):
    """A peer API request is invalid; the message says which field and why."""


def recognition_service() -> RecognitionService:
    """The :class:`RecognitionService` of the served ``image_recognition`` module (PeerError when not served)."""
    from paddlehub.serving.model_service.base_model_service import v2_module_info

    modules = v2_module_info.modules or {}
    names = [RECOGNITION_MODULE] + sorted(n for n in modules if n != RECOGNITION_MODULE)
    for name in names:
        if name in modules:
            service = getattr(v2_module_info.get_module_info(name).get("module"), "service", None)
            if isinstance(service, RecognitionService):
                return service
    raise PeerError(
        f"this server does not serve the {RECOGNITION_MODULE!r} module, which the PaddleX and Paddle "
        f"Serving APIs use; start hub serving with it (served: {sorted(modules)})"
    )


#: Digits accepted in one JSON number (a 4000-digit number costs quadratic time to convert and fits no field).
MAX_NUMBER_DIGITS = 64


def _constant(name: str) -> Any:
    raise PeerError(f"the request body is not valid JSON: {name} is not a JSON number")


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_DIGITS:
        raise PeerError(f"the request body holds a number of more than {MAX_NUMBER_DIGITS} characters")
    value = float(text)
    if not math.isfinite(value):
        raise PeerError(f"the request body holds the number {text[:32]}, beyond the range of a float")
    return value


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS:
        raise PeerError(f"the request body holds a number of more than {MAX_NUMBER_DIGITS} digits")
    return int(text)


def json_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, whatever its Content-Type (Paddle Serving clients send none).

    Strict: ``NaN`` / ``Infinity``, numbers beyond a float or of more than :data:`MAX_NUMBER_DIGITS` characters and
    nesting past Python's recursion limit are refused with a PeerError naming the problem."""
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_constant, parse_float=_float, parse_int=_int)
    except RecursionError:
        raise PeerError("the request JSON is nested too deeply") from None
    except PeerError:
        raise
    except (UnicodeDecodeError, ValueError):
        raise PeerError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise PeerError("the request body must be a JSON object")
    return body


def is_url(value: str) -> bool:
    return value[:8].lower().startswith(("http://", "https://", "ftp://", "file:"))


def image_field(value: Any, name: str, params: Any = None) -> str:
    """A base64 image field. A URL is fetched only when ``Limits.image_url_fetch`` is on in ``params``; else refused."""
    if not isinstance(value, str) or not value:
        raise PeerError(f"field {name!r} must be a non-empty base64 string of an image file")
    if not is_url(value):
        return value
    if params is None or not params["Limits.image_url_fetch"]:
        raise PeerError(
            f"field {name!r} is a URL; this server does not fetch images from URLs (no server-side "
            "fetches unless Limits.image_url_fetch is on): send the image file's bytes as base64"
        )
    return base64.b64encode(fetch_image(value, name, params)).decode("ascii")


def fetch_image(url: str, name: str, params: Any) -> bytes:
    """GET an http(s) image URL: no redirects, at most ``Limits.max_image_bytes``, within ``image_url_timeout_s``."""
    import time

    import requests

    if not url.lower().startswith(("http://", "https://")):
        raise PeerError(f"field {name!r}: only http and https image URLs are fetched")
    limit, timeout = params["Limits.max_image_bytes"], params["Limits.image_url_timeout_s"]
    deadline = time.monotonic() + timeout
    try:
        with requests.get(url, stream=True, allow_redirects=False, timeout=(timeout, timeout)) as response:
            if response.status_code != 200:
                raise PeerError(f"field {name!r}: fetching the image URL answered HTTP {response.status_code}")
            data = bytearray()
            for chunk in response.iter_content(65536):
                data += chunk
                if len(data) > limit:
                    raise PeerError(
                        f"field {name!r}: the image at the URL is larger than the limit of {limit} "
                        "bytes (Limits.max_image_bytes)"
                    )
                if time.monotonic() > deadline:
                    raise PeerError(
                        f"field {name!r}: fetching the image URL took longer than {timeout} s "
                        "(Limits.image_url_timeout_s)"
                    )
    except requests.RequestException as exc:
        raise PeerError(f"field {name!r}: cannot fetch the image URL ({type(exc).__name__})") from None
    return bytes(data)


def register(app: Any) -> None:
    """Add the PaddleX and Paddle Serving routes to PaddleHub's Flask ``app``."""
    from shitu.serving.hub.peers import paddle_serving, paddlex

    paddlex.register(app)
    paddle_serving.register(app)
