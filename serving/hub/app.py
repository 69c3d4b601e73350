"""Hooks into PaddleHub's Flask app so that *every* bad request gets PaddleHub's JSON envelope.

PaddleHub 2.4 reads ``request.json`` itself: a body that is not JSON (or not declared as JSON) becomes Flask's HTML
415/400 page before any module code runs. Importing a shitu hub module calls :func:`install`, which wraps
``paddlehub.serving.app_compat.create_app`` (used by both the single-process and the gunicorn mode) so the app it
creates:

- answers HTTP errors (non-JSON body, body too large, unknown route) as
  ``{"status": "<http code>", "msg": "...", "results": ""}``;
- refuses bodies larger than ``Limits.max_request_bytes`` (default 64 MiB) before reading them;
- answers ``GET /health`` with the modules it serves and, under ``degraded``, the disks that are full (for load
  balancers, monitors and the test suite: still HTTP 200, reads keep working; see :func:`degraded`);
- does not serve PaddleHub's ``/gradio/<module>`` routes (they start a gradio server per module: 404);
- answers every error in the route's own format with its request id (:mod:`.envelopes`) and refuses what a web
  page on another site sends (:mod:`.browsers`);
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


def _error_response(code: int, msg: str) -> Any:
    from flask import g, jsonify, request

    from shitu.serving.hub import envelopes, request_log

    rid = getattr(g, "shitu_rid", None) or request_log.current_request_id()
    response = jsonify(envelopes.error_answer(request.path, code, msg, rid))
    response.status_code = code  # the envelope's status agrees with the HTTP code
    return response


def degraded() -> list[str]:
    """What is wrong with this server while it still answers: each disk it writes to (galleries, logs) with less
    than ``Limits.min_free_disk_bytes`` free. Gallery writes are refused then; reads keep working."""
    import shutil

    from shitu.serving.hub import connections, request_log

    found = []
    from shitu.plugins.store import home as shitu_home

    home = shitu_home()
    for what, folder in (("galleries", home / "galleries"), ("logs", request_log.log_dir())):
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        if free < connections.SETTINGS.min_free_disk_bytes:
            found.append(f"the {what} disk is full ({free} bytes free, Limits.min_free_disk_bytes)")
    return found


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
        return _error_response(exc.code or 500, messages.get(exc.code or 500, exc.description or exc.name))

    @app.errorhandler(Exception)
    def _unhandled(exc: Exception):  # noqa: ANN202 - flask handler
        if isinstance(exc, HTTPException):
            return _http_error(exc)
        if isinstance(exc, RecursionError):  # PaddleHub's request.json on JSON nested past the recursion limit
            return _error_response(400, "the request JSON is nested too deeply")
        logging.getLogger("shitu.serving").error("unhandled error: %s", exc, exc_info=exc)
        if isinstance(exc, (TypeError, ValueError, AttributeError)):
            return _error_response(400, "the request body must be a JSON object")
        return _error_response(500, f"internal error ({type(exc).__name__})")

    def _not_served(**_: Any):  # noqa: ANN202 - flask view
        from werkzeug.exceptions import NotFound

        raise NotFound("this server serves no gradio apps (the web page is at /web/)")

    # PaddleHub's gradio proxy: never served (the modules have no gradio app; PaddleHub answered a 500)
    for name in ("gradio_app", "request_gradio_app"):
        if name in app.view_functions:
            app.view_functions[name] = _not_served

    @app.route("/health", methods=["GET"])
    def _health():  # noqa: ANN202
        from paddlehub.serving.model_service.base_model_service import v2_module_info

        results = {"pid": os.getpid(), "modules": sorted(v2_module_info.modules), "degraded": degraded()}
        return jsonify({"status": "000", "msg": "", "results": results})

    from shitu.serving.hub import observability

    log_bytes, log_backups = _log_limits or (
        BY_NAME["Limits.max_log_bytes"].default,
        BY_NAME["Limits.log_backups"].default,
    )
    observability.instrument(app, log_bytes, log_backups)
    from shitu.serving.hub import connections, openapi, peers, webpage

    app.wsgi_app = connections.BodyReader(app.wsgi_app, lambda: app.config["MAX_CONTENT_LENGTH"])
    app.run = lambda host=None, port=8866, **_: connections.serve_single(app, port)  # PaddleHub's threaded=False

    peers.register(app)  # PaddleX and Paddle Serving APIs next to /predict/<module>
    openapi.register(app)
    return webpage.register(app)


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
