"""The web page: ``GET /web/`` on the same server as the JSON API (registered by :mod:`shitu.serving.hub.app`).

A plain HTML/JS/CSS page (files in ``serving/hub/web/``) that calls the documented JSON API
(``POST /predict/image_recognition``) from the browser: upload or drop a photo and see the answer drawn on it,
change ``threshold`` / ``max_det_results`` / ``score_thres`` with sliders, browse a gallery by label with
thumbnails, add and remove items. Nothing is loaded from outside the server: the answers carry a
``Content-Security-Policy`` that lets the page fetch only from its own origin (plus ``data:``/``blob:`` images).

``GET /`` (PaddleHub's "no visual interface" text) redirects to the page; ``GET /favicon.ico`` is the page's icon
(``web/favicon.ico``), which browsers ask for at the root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The page's static files.
WEB_DIR = Path(__file__).resolve().with_name("web")
#: The page's icon, also answered at ``/favicon.ico``.
FAVICON = "favicon.ico"
#: Sent with every file of the page: own origin only, nothing from a CDN, no framing by other sites.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def register(app: Any) -> Any:
    """Add ``/web/`` (the page and its files) to a Flask app and point ``GET /`` at it."""
    from flask import redirect, request, send_from_directory

    def _send(name: str, **kwargs: Any) -> Any:
        response = send_from_directory(WEB_DIR, name, max_age=0, **kwargs)  # 404 (JSON envelope) outside WEB_DIR
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.route("/web/", methods=["GET"])
    def _web_index():  # noqa: ANN202 - flask view
        return _send("index.html")

    @app.route("/web/<path:name>", methods=["GET"])
    def _web_file(name: str):  # noqa: ANN202 - flask view
        return _send(name)

    @app.route("/favicon.ico", methods=["GET"])
    def _favicon():  # noqa: ANN202 - flask view
        return _send(FAVICON, mimetype="image/x-icon")

    paddlehub_index = app.view_functions.get("index")
    if paddlehub_index is not None:

        def index():  # noqa: ANN202 - GET / shows the page; anything else keeps PaddleHub's answer
            return redirect("/web/") if request.method == "GET" else paddlehub_index()

        app.view_functions["index"] = index
    return app
