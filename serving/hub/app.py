"""Hooks into PaddleHub's Flask app so that *every* bad request gets PaddleHub's JSON envelope.

PaddleHub 2.4 reads ``request.json`` itself: a body that is not JSON (or not declared as JSON) becomes Flask's HTML
415/400 page before any module code runs. Importing a shitu hub module calls :func:`install`, which wraps
``paddlehub.serving.app_compat.create_app`` (used by both the single-process and the gunicorn mode) so the app it
creates:

- answers HTTP errors (non-JSON body, body too large, unknown route) as
  ``{"status": "<http code>", "msg": "...", "results": ""}``;
- refuses bodies larger than ``Limits.max_request_bytes`` (default 64 MiB) before reading them;
- answers ``GET /health`` with the modules it serves (for load balancers and the test suite).
"""
from __future__ import annotations

import logging
import os
from typing import Any

_installed = False
_body_limit: int | None = None


def set_body_limit(max_bytes: int) -> None:
    """The largest request body the next created app accepts (the largest asked for by any module wins)."""
    global _body_limit
    _body_limit = max(_body_limit or 0, int(max_bytes))


def _envelope(status: str, msg: str) -> dict[str, Any]:
    return {"status": status, "msg": msg, "results": ""}


def configure(app: Any) -> Any:
    """Add the envelope error handlers, the body limit and ``/health`` to a Flask app."""
    from flask import jsonify
    from werkzeug.exceptions import HTTPException

    from shitu.params import BY_NAME

    app.config["MAX_CONTENT_LENGTH"] = _body_limit or BY_NAME["Limits.max_request_bytes"].default

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # noqa: ANN202 - flask handler
        messages = {
            400: "the request body is not valid JSON",
            413: f"the request body is larger than the limit of {app.config['MAX_CONTENT_LENGTH']} bytes",
            415: "the request body must be JSON (Content-Type: application/json)",
        }
        msg = messages.get(exc.code or 500, exc.description or exc.name)
        response = jsonify(_envelope(str(exc.code), msg))
        response.status_code = exc.code or 500
        return response

    @app.errorhandler(Exception)
    def _unhandled(exc: Exception):  # noqa: ANN202 - flask handler
        if isinstance(exc, HTTPException):
            return _http_error(exc)
        logging.getLogger("shitu.serving").error("unhandled error: %s", exc, exc_info=exc)
        msg = "the request body must be a JSON object" if isinstance(exc, (TypeError, ValueError, AttributeError)) \
            else f"internal error ({type(exc).__name__})"
        code = 400 if msg.startswith("the request") else 500
        response = jsonify(_envelope(str(code), msg))  # the envelope's status agrees with the HTTP code
        response.status_code = code
        return response

    @app.route("/health", methods=["GET"])
    def _health():  # noqa: ANN202
        from paddlehub.serving.model_service.base_model_service import v2_module_info

        return jsonify({"status": "000", "msg": "", "results": {"pid": os.getpid(),
                                                                "modules": sorted(v2_module_info.modules)}})

    return app


def install() -> None:
    """Wrap PaddleHub's app factory once per process (idempotent; a no-op without paddlehub)."""
    global _installed
    if _installed:
        return
    try:
        from paddlehub.serving import app_compat
    except ImportError:
        return
    original = app_compat.create_app

    def create_app(*args: Any, **kwargs: Any) -> Any:
        return configure(original(*args, **kwargs))

    app_compat.create_app = create_app
    _installed = True

