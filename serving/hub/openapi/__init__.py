"""The OpenAPI 3.1 description of every HTTP route of ``hub serving`` / ``shitu serve``, served at ``GET /openapi.json``.

Built from the code's own tables rather than written by hand, so it cannot drift from them:

- the parameter overrides (``params`` and the top-level override keys) from :data:`shitu.params.schema.FIELDS`
  (type, bounds, choices, nullability, default, documentation; only the ``per_request`` ones, in the three
  spellings :func:`shitu.params.flatten` reads: nested sections, ``Section.key`` and unambiguous short names);
- the operations of each module, their extra fields, their default operation and which ones need the admin token
  from each :class:`~shitu.serving.hub.service.Service` subclass (``op_*`` methods, ``fields``,
  ``default_operation``, ``write_operations``);
- the PaddleX routes from :data:`shitu.serving.hub.peers.paddlex.ROUTES`, the Paddle Serving route from
  :mod:`shitu.serving.hub.peers.paddle_serving`.

What only this package knows is the JSON Schema of each request field (:data:`.modules.REQUEST_FIELDS`; a test
checks that every field a service reads has one) and of each operation's ``results``. The schemas describe today's wire format:
``/predict/<module>`` answers HTTP 200 with PaddleHub's envelope ``{status, msg, results}`` whatever the module
made of the request (``status`` ``"000"`` or an error code with ``msg``), and HTTP 4xx/5xx envelopes only for what
never reaches a module (a body that is not JSON, too large or too slow, too many connections).

Parts: :mod:`.common`, :mod:`.params` (the parameters), :mod:`.modules` (``/predict/<module>``), :mod:`.peers`
(PaddleX, Paddle Serving), :mod:`.routes` (the rest).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shitu.serving.hub.openapi.common import EXAMPLE_IMAGE, JSON, example_image
from shitu.serving.hub.openapi.modules import MODULE_SERVICES, REQUEST_FIELDS, operations, predict_path, service_classes
from shitu.serving.hub.openapi.peers import paddle_serving_path, paddlex_paths
from shitu.serving.hub.openapi.routes import components, other_paths

__all__ = [
    "MODULE_SERVICES",
    "REQUEST_FIELDS",
    "build",
    "example_image",
    "operations",
    "register",
    "served_modules",
    "service_classes",
]


def build(modules: Mapping[str, type] | None = None, version: str = "") -> JSON:
    """The OpenAPI 3.1 document for a server serving ``modules`` (name -> service class; default: all four)."""
    services = dict(modules) if modules is not None else service_classes()
    paths: JSON = {f"/predict/{m}": predict_path(m, cls) for m, cls in sorted(services.items())}
    paths.update(paddlex_paths())
    paths.update(paddle_serving_path())
    paths.update(other_paths())
    return _with_image(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "shitu-hub",
                "version": version or _version(),
                "description": "Image recognition (PP-ShiTu) as PaddleHub modules, with PaddleX's and Paddle Serving's "
                "APIs beside them. Gallery changes need the admin token (header `Authorization: Bearer ...` or field "
                "`token`) when the server has one; with `protect_reads`, every operation does.",
            },
            "security": [{}, {"adminToken": []}],
            "paths": _with_request_id(paths),
            "components": components(),
        },
        example_image(),
    )


def _with_request_id(paths: JSON) -> JSON:
    """Every answer carries the ``X-Request-ID`` header (the client's own when it sent one), except the ``503`` and
    ``408`` written by :mod:`~shitu.serving.hub.connections` before a request exists."""
    header = {
        "description": "This request's id (as in the server's request log); the client's own when it sent one.",
        "schema": {"type": "string"},
    }
    for methods in paths.values():
        for operation in methods.values():
            for response in operation["responses"].values():
                response.setdefault("headers", {})["X-Request-ID"] = header
    return paths


def _with_image(value: Any, image: str) -> Any:
    """``value`` with every :data:`EXAMPLE_IMAGE` replaced by ``image``."""
    if isinstance(value, dict):
        return {k: _with_image(v, image) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_image(v, image) for v in value]
    return image if value == EXAMPLE_IMAGE else value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shitu-hub")
    except PackageNotFoundError:
        return "0"


def served_modules() -> dict[str, type]:
    """The served modules' names -> their service classes (PaddleHub's table of the modules this process serves)."""
    from paddlehub.serving.model_service.base_model_service import v2_module_info

    from shitu.serving.hub.service import Service

    out = {}
    for name in v2_module_info.modules or {}:
        service = getattr(v2_module_info.get_module_info(name).get("module"), "service", None)
        if isinstance(service, Service):
            out[name] = type(service)
    return out


def register(app: Any) -> None:
    """``GET /openapi.json`` on PaddleHub's Flask ``app``: the description of the modules this server serves."""
    from flask import jsonify

    cache: dict[str, Any] = {}

    @app.route("/openapi.json", methods=["GET"])
    def _openapi():  # noqa: ANN202 - flask view
        if "spec" not in cache:
            cache["spec"] = build(served_modules())
        return jsonify(cache["spec"])
