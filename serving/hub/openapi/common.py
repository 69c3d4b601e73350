"""What the parts of the spec share: the gallery-name pattern, boxes and vectors, the example image, examples,
the envelope of the answers made before a module runs, a GET operation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shitu.names import GALLERY_NAME

JSON = dict[str, Any]
EXAMPLE_GALLERY = "openapi-example"

GALLERY_PATTERN = GALLERY_NAME.pattern.replace(r"\Z", "$")  # JSON Schema's ECMA dialect has no \Z
BOX = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4, "description": "[x1, y1, x2, y2]"}
INT_BOX = {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4}
VECTOR = {"type": "array", "items": {"type": "number"}, "description": "one embedding (uint8 bytes when binary)"}


def example_image() -> str:
    """A small real JPEG (a red disc on a blue-grey ground), base64: the spec's example image, so that tools that
    send the examples (Schemathesis' examples phase) run the whole pipeline, not only the request checks."""
    import base64

    import cv2
    import numpy as np

    from shitu.serving.engine.images import encode

    image = np.full((96, 128, 3), (150, 110, 90), np.uint8)
    cv2.circle(image, (64, 48), 30, (40, 40, 220), -1)
    return base64.b64encode(encode(image, quality=80)).decode("ascii")


#: Stands for :func:`example_image` in the tables below; :func:`build` puts the image in its place.
EXAMPLE_IMAGE = "<example image>"


def examples_of(requests: Mapping[str, JSON]) -> JSON:
    """OpenAPI's ``examples`` of a media type."""
    return {name: {"value": value} for name, value in requests.items()}


def http_errors() -> dict[str, JSON]:
    """What the server answers before a module runs: PaddleHub's envelope with the HTTP code as ``status``."""
    err = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}}
    return {
        "400": {"description": "The body is not valid JSON, or not a JSON object.", **err},
        "408": {"description": "The body came too slowly (`Limits.request_timeout`).", **err},
        "413": {"description": "The body is larger than `Limits.max_request_bytes`.", **err},
        "415": {"description": "The body is not declared as JSON (`Content-Type`).", **err},
        "503": {"description": "Too many connections (`Limits.max_connections`); retry.", **err},
    }


ENVELOPE_REF = {"$ref": "#/components/schemas/Envelope"}


def get_operation(operation_id: str, tag: str, summary: str, responses: JSON, **extra: Any) -> JSON:
    return {"get": {"operationId": operation_id, "tags": [tag], "summary": summary, "responses": responses, **extra}}
