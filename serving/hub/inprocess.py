"""PaddleHub's in-process convention for CV modules: ``module.predict(images=[ndarray, ...])`` or
``module.predict(paths=["photo.jpg", ...])``, besides the base64 strings a request over HTTP carries.

:func:`to_request` turns such a call into the HTTP request form (base64 strings in ``images``), so the one request
handler (:mod:`shitu.serving.hub.service`) and all its limits apply unchanged. Arrays are BGR (or gray) uint8 as
OpenCV gives them, encoded losslessly (PNG); ``paths`` are read here, by the caller's process, and their file
names go to ``sources`` for gallery adds.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np

from shitu.errors import InvalidArgument


class InProcessError(InvalidArgument):
    """An in-process argument (an array or a path) cannot be used; the message names it."""


def _encode_array(image: np.ndarray, index: int) -> str:
    import cv2

    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise InProcessError(
            f"images[{index}]: expected a uint8 HxW or HxWxC (C = 1, 3, 4) BGR array, got {image.dtype} {image.shape}"
        )
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:
        raise InProcessError(f"images[{index}]: the array cannot be encoded")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def to_request(call: dict[str, Any]) -> dict[str, Any]:
    """``predict(**call)`` arguments -> the request an HTTP client would send."""
    request = dict(call)
    images, paths = request.pop("images", None), request.pop("paths", None)
    if images is None and paths is None:
        return call
    items: list[Any] = []
    if images is not None:
        if isinstance(images, np.ndarray):
            images = [images]
        if not isinstance(images, (list, tuple)):
            raise InProcessError(f"images must be a list, got {type(images).__name__}")
        items += [_encode_array(img, i) if isinstance(img, np.ndarray) else img for i, img in enumerate(images)]
    if paths is not None:
        if isinstance(paths, (str, Path)):
            paths = [paths]
        first = len(items)
        for path in paths:
            try:
                items.append(base64.b64encode(Path(path).read_bytes()).decode("ascii"))
            except OSError as exc:
                raise InProcessError(f"paths: {path}: {exc.strerror or exc}") from None
        if request.get("operation") == "add" and "sources" not in request:
            request["sources"] = [None] * first + [Path(p).name for p in paths]
    request["images"] = items
    return request
