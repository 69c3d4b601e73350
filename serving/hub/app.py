"""Hooks into PaddleHub's Flask app so that *every* bad request gets PaddleHub's JSON envelope.

PaddleHub 2.4 reads ``request.json`` itself: a body that is not JSON (or not declared as JSON) becomes Flask's HTML
415/400 page before any module code runs. Importing a shitu hub module calls :func:`install`, which wraps
``paddlehub.serving.app_compat.create_app`` (used by both the single-process and the gunicorn mode) so the app it
creates:

- answers HTTP errors (non-JSON body, body too large, unknown route) as
  ``{"status": "<http code>", "msg": "...", "results": ""}``;
- refuses bodies larger than ``Limits.max_request_bytes`` (default 64 MiB) before reading them;
- answers ``GET /health`` with the modules it serves (for load balancers and the test suite);
- adds request ids, the request log, log rotation and ``GET /metrics`` (:mod:`.observability`);
- serves the web page at ``/web/`` (:mod:`shitu.serving.hub.webpage`);
- serves the PaddleX and Paddle Serving recognition APIs (:mod:`shitu.serving.hub.peers`);
- describes every route at ``GET /openapi.json`` (:mod:`shitu.serving.hub.openapi`);
- is served so that slow or idle clients cost a bounded amount (:mod:`shitu.serving.hub.connections`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

_installed = False
_body_limit: int | None = None
_log_limits: tuple[int, int] | None = None


def set_body_limit(max_bytes: int) -> None:
    """The largest request body the next created app accepts (the largest asked for by any module wins)."""
    global _body_limit
    _body_limit = max(_body_limit or 0, int(max_bytes))


def set_log_limits(max_bytes: int, backups: int) -> None:
    """``Limits.max_log_bytes`` / ``Limits.log_backups`` of the next created app (the largest asked for wins)."""
    global _log_limits
    old = _log_limits or (0, 0)
    _log_limits = (max(old[0], int(max_bytes)), max(old[1], int(backups)))


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
        msg = (
            "the request body must be a JSON object"
            if isinstance(exc, (TypeError, ValueError, AttributeError))
            else "the request JSON is nested too deeply"
            if isinstance(exc, RecursionError)
            else f"internal error ({type(exc).__name__})"
        )
        code = 400 if msg.startswith("the request") else 500
        response = jsonify(_envelope(str(code), msg))  # the envelope's status agrees with the HTTP code
        response.status_code = code
        return response

    @app.route("/health", methods=["GET"])
    def _health():  # noqa: ANN202
        from paddlehub.serving.model_service.base_model_service import v2_module_info

        return jsonify(
            {"status": "000", "msg": "", "results": {"pid": os.getpid(), "modules": sorted(v2_module_info.modules)}}
        )

    from shitu.serving.hub import observability

    log_bytes, log_backups = _log_limits or (
        BY_NAME["Limits.max_log_bytes"].default,
        BY_NAME["Limits.log_backups"].default,
    )
    observability.instrument(app, log_bytes, log_backups)
    from shitu.serving.hub import connections, openapi, peers, webpage

    app.wsgi_app = connections.BodyReader(app.wsgi_app, lambda: app.config["MAX_CONTENT_LENGTH"])
    app.run = lambda host=None, port=8866, **_: connections.serve_single(app, port)  # PaddleHub's threaded=False

    _drop_gradio(app)
    peers.register(app)  # PaddleX and Paddle Serving APIs next to /predict/<module>
    openapi.register(app)
    return webpage.register(app)


#: PaddleHub's gradio routes (``/gradio/<module>``, ``/gradio/<module>/<path>``) by endpoint name. The shitu modules
#: have no gradio app: PaddleHub answered them with a 500 (RuntimeError / KeyError); they are answered 404 instead.
GRADIO_ENDPOINTS = ("gradio_app", "request_gradio_app")


def _drop_gradio(app: Any) -> None:
    from flask import jsonify

    def _no_gradio(**_: Any) -> Any:
        response = jsonify(_envelope("404", "this server serves no gradio apps (the web page is at /web/)"))
        response.status_code = 404
        return response

    for endpoint in GRADIO_ENDPOINTS:
        if endpoint in app.view_functions:
            app.view_functions[endpoint] = _no_gradio


def install() -> None:
    """Wrap PaddleHub's app factory once per process (idempotent; a no-op without paddlehub)."""
    global _installed
    if _installed:
        return
    try:
        from paddlehub.serving import app_compat
    except ImportError:
        return
    from shitu.serving.hub import observability

    observability.install_hooks()
    original = app_compat.create_app

    def create_app(*args: Any, **kwargs: Any) -> Any:
        observability.prepare()  # the metrics folder, before prometheus_client is imported
        return configure(original(*args, **kwargs))

    app_compat.create_app = create_app
    from shitu.serving.hub import connections

    connections.install_gunicorn()
    _installed = True
