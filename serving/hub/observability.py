"""Wiring metrics, request ids and request logs into PaddleHub's Flask app (see :mod:`.metrics`,
:mod:`.request_log`). :mod:`.app` calls :func:`prepare` before PaddleHub creates its app, :func:`instrument` on the
app, and :func:`install_hooks` once per process.

Per request: ``before_request`` picks the request id and starts the clock; PaddleHub's ``predict_v2`` (wrapped)
runs the module with a fresh stage timer and notes module, operation, status, images and boxes, adding
``request_id`` to an error envelope; ``after_request`` answers the ``X-Request-ID`` header (and adds the id to
HTTP error envelopes), updates the metrics and writes the request's log line.
"""

from __future__ import annotations

import contextvars
import json
import os
import time
from typing import Any

from shitu.serving.hub import connections, request_log
from shitu.serving.hub import metrics as shitu_metrics

__all__ = ["prepare", "instrument", "install_hooks", "note_error"]

#: Exception class name of the failure of the request in this context (set by the hub module).
_ERROR: contextvars.ContextVar[BaseException | None] = contextvars.ContextVar("shitu_error", default=None)
_hooks_installed = False


def prepare() -> None:
    """Before the app (and prometheus_client) exist: the multi-process metrics folder."""
    shitu_metrics.prepare()


def note_error(exc: BaseException) -> None:
    """Called by the hub module when a request fails: remembers it for the envelope, the metrics and the log."""
    _ERROR.set(exc)


def _module_and_operation(module_info: dict[str, Any], body: Any) -> tuple[str, str]:
    module = str(module_info.get("name") or "unknown")
    service = getattr(module_info.get("module"), "service", None)
    default = getattr(service, "default_operation", "predict")
    op = body.get("operation", default) if isinstance(body, dict) else default
    if not isinstance(op, str) or (service is not None and not hasattr(service, f"op_{op}")):
        op = "invalid"  # bounded label values: only operations that exist
    return module, op


def _count_boxes(results: Any) -> int | None:
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        return None
    key = next((k for k in ("results", "boxes") if any(k in r for r in results)), None)
    if key is None:
        return None
    return sum(len(r.get(key) or []) for r in results if isinstance(r.get(key), list))


def _wrap_predict_v2(original: Any) -> Any:
    from flask import g, has_request_context

    from shitu.serving.engine.timing import StageTimer, timing_scope

    def predict_v2(module_info: dict, input: dict) -> dict:  # noqa: A002 - PaddleHub's signature
        timer = StageTimer()
        from shitu.serving.hub.envelopes import envelope_of

        token = _ERROR.set(None)
        try:
            with timing_scope(timer):
                out = original(module_info, input)
            error = _ERROR.get()
        finally:
            _ERROR.reset(token)
        kind = type(error).__name__ if error is not None else None
        http = 200
        if error is not None and isinstance(out, dict):  # PaddleHub answered "101": the one table says what it is
            out["status"], http = envelope_of(error)
        if has_request_context():
            module, operation = _module_and_operation(module_info, input)
            images = input.get("images") if isinstance(input, dict) else None
            status = str(out.get("status")) if isinstance(out, dict) else "500"
            g.shitu_info = {
                "module": module,
                "operation": operation,
                "status": status,
                "stages": timer.values,
                "images": len(images) if isinstance(images, list) else None,
                "boxes": _count_boxes(out.get("results")) if status == "000" else None,
                "error_kind": (kind or "Error") if status != "000" else None,
                "error": out.get("msg") if status != "000" else None,
            }
            if status != "000" and isinstance(out, dict):
                out["request_id"] = request_log.current_request_id()
        return (out, http) if http != 200 else out

    predict_v2.__wrapped__ = original  # type: ignore[attr-defined]
    return predict_v2


def install_hooks() -> None:
    """Once per process: wrap PaddleHub's ``predict_v2`` and add the gunicorn ``child_exit`` hook."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    from paddlehub.serving import app_compat

    app_compat.predict_v2 = _wrap_predict_v2(app_compat.predict_v2)
    try:
        from paddlehub.serving import http_server
    except ImportError:  # pragma: no cover
        return
    app_class = getattr(http_server, "StandaloneApplication", None)
    original = getattr(app_class, "load_config", None)
    if original is None:  # pragma: no cover - Windows stub
        return

    def load_config(self: Any) -> None:
        original(self)

        def child_exit(server: Any, worker: Any) -> None:
            shitu_metrics.get().worker_exited(worker.pid)

        self.cfg.set("child_exit", child_exit)

    app_class.load_config = load_config


def instrument(app: Any, max_log_bytes: int, log_backups: int) -> None:
    """Request ids, the request log, log rotation and ``GET /metrics`` on PaddleHub's Flask ``app``."""
    from flask import Response, g, request

    request_log.configure_logs(app.logger, max_log_bytes, log_backups)
    shitu_metrics.get()  # created in the master: forked workers inherit them

    @app.before_request
    def _shitu_start() -> None:
        rid = request_log.new_request_id(request.headers.get(request_log.HEADER))
        g.shitu_rid_token = request_log.REQUEST_ID.set(rid)
        g.shitu_rid = rid
        g.shitu_t0 = time.perf_counter()

    @app.after_request
    def _shitu_finish(response: Any) -> Any:
        rid = getattr(g, "shitu_rid", None) or request_log.new_request_id()
        response.headers[request_log.HEADER] = rid
        info = getattr(g, "shitu_info", None)
        envelope_status = None
        if info is None and response.is_json and (response.content_length or 0) < 65536:
            try:  # an envelope not made by a module (HTTP errors, PaddleHub's "111"/"112"): small; add the id
                body = response.get_json(silent=True)
                if isinstance(body, dict) and "status" in body:
                    envelope_status = str(body["status"])
                    if envelope_status != "000":
                        body["request_id"] = rid
                        response.set_data(json.dumps(body))
            except Exception:  # noqa: BLE001 - never fail an answer over its id
                pass
        if not request.path.startswith("/predict/"):
            return response
        seconds = time.perf_counter() - getattr(g, "shitu_t0", time.perf_counter())
        if info is None:
            name = request.path[len("/predict/") :]
            from paddlehub.serving.model_service.base_model_service import v2_module_info

            module = name if name in v2_module_info.modules else "unknown"
            code = envelope_status or str(response.status_code)
            info = {
                "module": module,
                "operation": "-",
                "status": code,
                "stages": {},
                "images": None,
                "boxes": None,
                "error_kind": f"http_{code}" if code not in ("000", "200") else None,
                "error": None,
            }
        shitu_metrics.get().observe(
            info["module"],
            info["operation"],
            info["status"],
            seconds,
            info["stages"],
            info["images"],
            info["boxes"],
            info["error_kind"],
        )
        request_log.log_request(
            request_id=rid,
            pid=os.getpid(),
            method=request.method,
            path=request.path,
            module=info["module"],
            operation=info["operation"],
            status=info["status"],
            http=response.status_code,
            ms=round(seconds * 1000, 1),
            images=info["images"],
            boxes=info["boxes"],
            remote=request.remote_addr,
            error=info["error"],
        )
        return response

    def _shitu_refused(environ: dict[str, Any], code: int, msg: str, rid: str) -> None:
        """A request refused before the app ran (browser checks, body limits, deadlines): its metrics and log line."""
        path = environ.get("PATH_INFO", "")
        module = "-"
        if path.startswith("/predict/"):
            from paddlehub.serving.model_service.base_model_service import v2_module_info

            name = path[len("/predict/") :]
            module = name if name in v2_module_info.modules else "unknown"
            shitu_metrics.get().observe(module, "-", str(code), 0.0, {}, None, None, f"http_{code}")
        request_log.log_request(
            request_id=rid,
            pid=os.getpid(),
            method=environ.get("REQUEST_METHOD", "-"),
            path=path,
            module=module,
            operation="-",
            status=str(code),
            http=code,
            ms=0.0,
            images=None,
            boxes=None,
            remote=environ.get("REMOTE_ADDR"),
            error=msg,
        )

    if not any(getattr(h, "__name__", "") == "_shitu_refused" for h in connections.REFUSAL_HOOKS):
        connections.REFUSAL_HOOKS.append(_shitu_refused)

    @app.teardown_request
    def _shitu_teardown(_exc: Any) -> None:
        token = getattr(g, "shitu_rid_token", None)
        if token is not None:
            try:
                request_log.REQUEST_ID.reset(token)
            except ValueError:  # set in another context (should not happen)
                pass

    @app.route("/metrics", methods=["GET"])
    def _shitu_metrics() -> Any:
        if not connections.metrics_allowed(connections.bearer_token()):
            return Response(
                "/metrics needs the admin token of a module that protects reads (header 'Authorization: Bearer ...')\n",
                status=401,
                mimetype="text/plain",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Response(
            shitu_metrics.Metrics.render(), mimetype=None, headers={"Content-Type": shitu_metrics.CONTENT_TYPE}
        )
