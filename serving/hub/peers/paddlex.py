"""PaddleX's PP-ShiTuV2 serving API (``paddlex --serve --pipeline PP-ShiTuV2``), on this server.

Routes (``POST``, JSON) and their ``result`` objects, as PaddleX's schema ``paddlex/inference/serving/schemas/
pp_shituv2.py`` defines them:

| route | request | ``result`` |
|---|---|---|
| ``/shitu-index-build`` | ``imageLabelPairs: [{image, label}]`` | ``{indexKey, imageCount}`` |
| ``/shitu-index-add`` | ``imageLabelPairs``, ``indexKey`` | ``{imageCount}`` |
| ``/shitu-index-remove`` | ``ids`` (ints), ``indexKey`` | ``{imageCount}`` |
| ``/shitu-infer`` | ``image``; optional ``indexKey``, ``detThreshold``, ``recThreshold``, ``hammingRadius``, ``topk``, ``visualize`` | ``{detectedObjects: [{bbox, recResults: [{label, score}], score}], image}`` |

Every answer is PaddleX's envelope ``{logId, errorCode, errorMsg, result}``: ``errorCode`` 0 and ``errorMsg``
``"Success"``, or the HTTP status (422 for a request that names a bad field, 413 for a body over the limit, 500) and
a message naming the problem, without ``result``.

How it maps onto shitu-hub (the ``image_recognition`` module's service: its scenario pack, limits, admin token):

- an ``indexKey`` is a gallery name of that pack. ``/shitu-index-build`` creates a new gallery ``paddlex-<hex>``;
  any existing gallery name works as an ``indexKey`` too. Without ``indexKey``, ``/shitu-infer`` searches the
  module's default gallery;
- ``ids`` number a gallery's images from 0 in the order they were added, as PaddleX numbers an index's images
  (our gallery id minus one);
- ``detThreshold`` -> ``Global.threshold``, ``recThreshold`` -> ``IndexProcess.score_thres``, ``topk`` ->
  ``IndexProcess.return_k``, ``hammingRadius`` -> ``IndexProcess.hamming_radius``; a field left out keeps the
  server's value. As in PaddleX, every detected box is listed (``recResults`` empty when nothing in the gallery
  passes ``recThreshold``) and the whole image is searched only when no box is found (with ``score`` 0);
- ``image`` is base64; an http(s) URL is refused unless ``Limits.image_url_fetch`` is on (then it is fetched
  without redirects, within ``Limits.image_url_timeout_s`` and ``Limits.max_image_bytes``);
- ``visualize`` (default false) returns the image with the recognised boxes drawn, base64 JPEG;
- build / add / remove change a gallery and need the admin token (header ``Authorization: Bearer ...``) when the
  server has one.
"""

from __future__ import annotations

import base64
import logging
import math
import sys
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from shitu.echo import clip
from shitu.errors import ShituError
from shitu.params import ParamError
from shitu.serving.engine.detection import whole_image_box
from shitu.serving.engine.engine import GALLERY_NAME
from shitu.serving.engine.images import encode
from shitu.serving.hub.peers import PeerError, image_field, json_body, recognition_service
from shitu.serving.hub.service import RecognitionService, to_jsonable
from shitu.serving.results import Recognition
from shitu.serving.results.draw import draw_recognitions

#: PaddleX numbers an index's images from 0; a gallery's ids start at 1.
ID_OFFSET = 1
INDEX_PREFIX = "paddlex-"


def envelope(result: dict[str, Any] | None, error_code: int = 0, error_msg: str = "Success") -> dict[str, Any]:
    """PaddleX's response object (``result`` only on success); ``logId`` is the request id (``X-Request-ID``)."""
    from shitu.serving.hub.request_log import current_request_id

    rid = current_request_id()
    out: dict[str, Any] = {"logId": rid if rid != "-" else str(uuid.uuid4()), "errorCode": error_code}
    out["errorMsg"] = error_msg
    if result is not None:
        out["result"] = result
    return out


def _fields(body: dict[str, Any], required: set[str], optional: set[str] = frozenset()) -> dict[str, Any]:
    missing = sorted(n for n in required if body.get(n) is None)
    if missing:
        raise PeerError(f"missing field(s) {missing}")
    unknown = sorted(set(body) - required - optional)
    if unknown:
        raise PeerError(f"unknown field(s) {unknown}; this route takes {sorted(required | optional)}")
    return body


def _index_key(value: Any) -> str:
    if not isinstance(value, str) or not GALLERY_NAME.match(value):
        raise PeerError(
            f"invalid indexKey {value!r}: an index key is a gallery name (letters, digits, '_', '-', '.'; at most 64)"
        )
    return value


def _pairs(body: dict[str, Any], params: Any) -> tuple[list[str], list[str]]:
    pairs = body["imageLabelPairs"]
    if not isinstance(pairs, list) or not pairs:
        raise PeerError("field 'imageLabelPairs' must be a non-empty list of {image, label} objects")
    images, labels = [], []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict) or set(pair) != {"image", "label"}:
            raise PeerError(f"imageLabelPairs[{i}] must be an object with exactly 'image' and 'label'")
        images.append(image_field(pair["image"], f"imageLabelPairs[{i}].image", params))
        labels.append(pair["label"])
    return images, labels


def _number(body: dict[str, Any], name: str, integral: bool = False) -> float | int | None:
    """A number field, or None when absent. JSON's ``NaN`` / ``Infinity`` (which Python's json reads) and numbers no
    float holds are refused here: ``int()`` / ``float()`` of them raised (a 500)."""
    value = body.get(name)
    if value is None:
        return None
    what = "an integer" if integral else "a finite number"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and isinstance(value, float):
        number = math.isfinite(value) and (not integral or value.is_integer())
    elif number and not integral:
        number = abs(value) <= sys.float_info.max  # an int too large for a float (int vs float compares exactly)
    if not number:
        raise PeerError(f"field {name!r} must be {what}, got {clip(value)}")
    if integral and abs(value) >= 2**31:
        raise PeerError(f"field {name!r} must be an integer below 2**31, got {clip(value)}")
    return int(value) if integral else float(value)


def _image_count(service: RecognitionService, key: str) -> int:
    return int(service.handle({"operation": "info", "gallery": key})["count"])


def build_index(service: RecognitionService, body: dict[str, Any]) -> dict[str, Any]:
    _fields(body, {"imageLabelPairs"})
    service.authorize({}, write=True)  # before any image URL is fetched
    images, labels = _pairs(body, service.engine({}).params)
    key = INDEX_PREFIX + uuid.uuid4().hex[:20]
    service.handle({"operation": "add", "gallery": key, "images": images, "labels": labels})
    return {"indexKey": key, "imageCount": _image_count(service, key)}


def add_images(service: RecognitionService, body: dict[str, Any]) -> dict[str, Any]:
    _fields(body, {"imageLabelPairs", "indexKey"})
    key = _index_key(body["indexKey"])
    service.authorize({}, write=True)
    engine = service.engine({})
    engine.gallery(key)  # an unknown index key is an error, not a new gallery
    images, labels = _pairs(body, engine.params)
    service.handle({"operation": "add", "gallery": key, "images": images, "labels": labels})
    return {"imageCount": _image_count(service, key)}


def remove_images(service: RecognitionService, body: dict[str, Any]) -> dict[str, Any]:
    _fields(body, {"ids", "indexKey"})
    key = _index_key(body["indexKey"])
    ids = body["ids"]
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise PeerError("field 'ids' must be a list of integers >= 0")
    service.authorize({}, write=True)
    if ids:
        service.handle({"operation": "remove", "gallery": key, "ids": [i + ID_OFFSET for i in ids]})
    return {"imageCount": _image_count(service, key)}


def infer(service: RecognitionService, body: dict[str, Any]) -> dict[str, Any]:
    _fields(body, {"image"}, {"indexKey", "detThreshold", "recThreshold", "hammingRadius", "topk", "visualize"})
    service.authorize({}, write=False)
    key = _index_key(body["indexKey"]) if body.get("indexKey") is not None else None
    visualize = body.get("visualize")
    if visualize is not None and not isinstance(visualize, bool):
        raise PeerError("field 'visualize' must be true or false")
    overrides: dict[str, Any] = {"Global.append_whole_image": False}
    for field, param, integral in (
        ("detThreshold", "Global.threshold", False),
        ("recThreshold", "IndexProcess.score_thres", False),
        ("hammingRadius", "IndexProcess.hamming_radius", True),
        ("topk", "IndexProcess.return_k", True),
    ):
        value = _number(body, field, integral)
        if value is not None:
            overrides[param] = value
    engine = service.engine({})
    try:
        params = engine.request_params(overrides)
    except ParamError as exc:
        raise PeerError(str(exc).replace("parameter ", "field mapped to parameter ", 1)) from None
    engine.gallery(key)  # an unknown index key fails before any image is decoded
    (image,) = service.decode_images([image_field(body["image"], "image", params)], engine, strict=True)
    assert isinstance(image, np.ndarray)
    h, w = image.shape[:2]
    det = engine.detector.detect(image, params)
    if len(det) == 0:  # PaddleX searches the whole image when nothing is detected, with score 0
        det = whole_image_box(h, w)
        det.scores[:] = 0.0
    (feats,) = engine.extract([image], [det.xyxy.tolist()], **overrides)
    hits = engine.search(feats, gallery=key, **overrides)
    objects = [
        {
            "bbox": [float(v) for v in box],
            "score": float(score),
            "recResults": [{"label": m.label, "score": float(m.score)} for m in matches],
        }
        for box, score, matches in zip(det.xyxy, det.scores, hits)
    ]
    drawn = None
    if visualize:
        found = [
            Recognition(
                [int(round(v)) for v in o["bbox"]], o["recResults"][0]["label"], o["recResults"][0]["score"], o["score"]
            )
            for o in objects
            if o["recResults"]
        ]
        drawn = base64.b64encode(encode(draw_recognitions(image, found))).decode("ascii")
    return to_jsonable({"detectedObjects": objects, "image": drawn})


ROUTES: dict[str, Callable[[RecognitionService, dict[str, Any]], dict[str, Any]]] = {
    "/shitu-index-build": build_index,
    "/shitu-index-add": add_images,
    "/shitu-index-remove": remove_images,
    "/shitu-infer": infer,
}


def handle(route: str, raw: bytes) -> tuple[dict[str, Any], int]:
    """One request body for ``route`` -> (PaddleX envelope, HTTP status)."""
    try:
        return envelope(ROUTES[route](recognition_service(), json_body(raw))), 200
    except ShituError as exc:  # a client's fault: 422; a server's (its message: the request id) keeps its code
        status = 422 if exc.http_status < 500 else exc.http_status
        return envelope(None, status, str(exc)), status


def register(app: Any) -> None:
    from flask import jsonify, request
    from werkzeug.exceptions import HTTPException

    def view(route: str) -> Callable[[], Any]:
        def _paddlex_view():  # noqa: ANN202 - flask view
            try:
                answer, status = handle(route, request.get_data())
            except HTTPException as exc:
                answer, status = envelope(None, exc.code or 400, str(exc.description)), exc.code or 400
            except Exception as exc:  # noqa: BLE001 - answered in PaddleX's envelope, logged here
                logging.getLogger("shitu.serving").error("paddlex route %s: %s", route, exc, exc_info=exc)
                answer, status = envelope(None, 500, f"internal error ({type(exc).__name__})"), 500
            response = jsonify(answer)
            response.status_code = status
            return response

        _paddlex_view.__name__ = "paddlex" + route.replace("-", "_").replace("/", "_")
        return _paddlex_view

    for route in ROUTES:
        app.add_url_rule(route, view_func=view(route), methods=["POST"])
