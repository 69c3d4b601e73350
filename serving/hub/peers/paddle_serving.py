"""Paddle Serving's recognition pipeline API, as PaddleClas's ``deploy/paddleserving/recognition`` serves it.

``POST /recognition/prediction`` with ``{"key": ["image"], "value": ["<base64>"]}`` (PaddleClas's
``pipeline_http_client.py`` sends it *without* a Content-Type header; an optional ``logid`` is accepted) answers,
as Paddle Serving writes it::

    {"err_no": 0, "err_msg": "", "key": ["result"], "value": ["[{'bbox': [x1, y1, x2, y2], 'rec_docs': 'label',
     'rec_scores': 0.83}]"], "tensors": []}

``value[0]`` is Python's ``str()`` of the list of recognised objects, best first: the whole pipeline of the
``image_recognition`` module (its default scenario and gallery, parameters and limits; image URLs are refused, as
Paddle Serving takes none). Errors keep HTTP 200 and
set ``err_no`` as Paddle Serving does: 5000 for bad input (the message names the problem), 10000 otherwise.

``paddle-serving-server`` itself has no wheel for Python 3.11; this route takes its place for HTTP clients. Its
gRPC/brpc clients (``paddle_serving_client``) are not served.
"""

from __future__ import annotations

import logging
from typing import Any

from shitu.errors import ShituError
from shitu.serving.hub.peers import PeerError, image_field, json_body, recognition_service
from shitu.serving.hub.request_log import current_request_id

ROUTE = "/recognition/prediction"
#: Paddle Serving's ``CustomExceptionCode`` values used here.
OK, INPUT_PARAMS_ERROR, UNKNOWN = 0, 5000, 10000


def response(err_no: int, err_msg: str, value: str | None = None) -> dict[str, Any]:
    """Paddle Serving's pipeline response object."""
    return {
        "err_no": err_no,
        "err_msg": err_msg,
        "key": ["result"] if value is not None else [],
        "value": [value] if value is not None else [],
        "tensors": [],
    }


def rec_docs(results: list[dict[str, Any]]) -> str:
    """Recognition results -> the ``str(list)`` PaddleClas's recognition web service returns."""
    return str(
        [
            {"bbox": [int(v) for v in r["bbox"]], "rec_docs": r["label"], "rec_scores": float(r["score"])}
            for r in results
        ]
    )


def predict(body: dict[str, Any]) -> dict[str, Any]:
    """One request object -> the response object (errors raise PeerError or another ShituError)."""
    keys, values = body.get("key"), body.get("value")
    if not isinstance(keys, list) or not isinstance(values, list) or len(keys) != len(values):
        raise PeerError(
            "the request must hold 'key' and 'value', two lists of the same length "
            '({"key": ["image"], "value": ["<base64 image>"]})'
        )
    if not all(isinstance(k, str) for k in keys):
        raise PeerError("every entry of 'key' must be a string (the name of the value at the same place)")
    unknown = set(body) - {"key", "value", "logid"}
    if unknown:
        raise PeerError(f"unknown field(s) {sorted(unknown)}; a request holds 'key', 'value' and optionally 'logid'")
    fields = dict(zip(keys, values))
    if "image" not in fields:
        raise PeerError(f"no 'image' among the keys {keys}")
    image = image_field(fields["image"], "image")
    (result,) = recognition_service().handle({"operation": "recognize", "images": [image]})
    return response(OK, "", rec_docs(result["results"]))


def register(app: Any) -> None:
    from flask import jsonify, request
    from werkzeug.exceptions import HTTPException

    @app.route(ROUTE, methods=["POST"])
    def _paddle_serving_recognition():  # noqa: ANN202 - flask view
        try:
            answer = predict(json_body(request.get_data()))
        except ShituError as exc:  # a server's fault says only its request id (shitu.serving.hub.service)
            answer = response(INPUT_PARAMS_ERROR if exc.http_status < 500 else UNKNOWN, str(exc))
        except HTTPException:
            raise  # body too large: the app's handler answers it
        except Exception as exc:  # noqa: BLE001 - answered in the peer's envelope, logged here
            logging.getLogger("shitu.serving").error("paddle serving route: %s", exc, exc_info=exc)
            answer = response(UNKNOWN, f"internal error ({type(exc).__name__})")
        if answer["err_no"] != OK:
            answer["request_id"] = current_request_id()
        return jsonify(answer)
