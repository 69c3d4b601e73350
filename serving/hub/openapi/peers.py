"""The PaddleX routes (:data:`shitu.serving.hub.peers.paddlex.ROUTES`) and Paddle Serving's recognition route."""

from __future__ import annotations

from shitu.serving.hub.openapi.common import (
    BOX,
    EXAMPLE_GALLERY,
    EXAMPLE_IMAGE,
    GALLERY_PATTERN,
    JSON,
    examples_of,
    http_errors,
)

PADDLEX_EXAMPLES: dict[str, JSON] = {
    "/shitu-index-build": {"imageLabelPairs": [{"image": EXAMPLE_IMAGE, "label": "example"}]},
    "/shitu-index-add": {"imageLabelPairs": [{"image": EXAMPLE_IMAGE, "label": "more"}], "indexKey": EXAMPLE_GALLERY},
    "/shitu-index-remove": {"ids": [0], "indexKey": EXAMPLE_GALLERY},
    "/shitu-infer": {"image": EXAMPLE_IMAGE, "visualize": True, "topk": 2},
}


_PADDLEX_PAIRS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["image", "label"],
        "properties": {"image": {"type": "string", "minLength": 1}, "label": {"type": "string"}},
        "additionalProperties": False,
    },
    "examples": [[{"image": EXAMPLE_IMAGE, "label": "example"}]],
}
_INDEX_KEY = {"type": "string", "pattern": GALLERY_PATTERN, "description": "A gallery name."}
PADDLEX_REQUESTS: dict[str, JSON] = {
    "/shitu-index-build": {"required": ["imageLabelPairs"], "properties": {"imageLabelPairs": _PADDLEX_PAIRS}},
    "/shitu-index-add": {
        "required": ["imageLabelPairs", "indexKey"],
        "properties": {"imageLabelPairs": _PADDLEX_PAIRS, "indexKey": _INDEX_KEY},
    },
    "/shitu-index-remove": {
        "required": ["ids", "indexKey"],
        "properties": {"ids": {"type": "array", "items": {"type": "integer", "minimum": 0}}, "indexKey": _INDEX_KEY},
    },
    "/shitu-infer": {
        "required": ["image"],
        "properties": {
            "image": {
                "type": "string",
                "minLength": 1,
                "description": "base64 (a URL only with Limits.image_url_fetch)",
                "examples": [EXAMPLE_IMAGE],
            },
            "indexKey": {"type": ["string", "null"], "pattern": GALLERY_PATTERN},
            "detThreshold": {"type": ["number", "null"], "description": "Global.threshold"},
            "recThreshold": {"type": ["number", "null"], "description": "IndexProcess.score_thres"},
            "hammingRadius": {"type": ["integer", "null"], "description": "IndexProcess.hamming_radius"},
            "topk": {"type": ["integer", "null"], "description": "IndexProcess.return_k"},
            "visualize": {"type": ["boolean", "null"]},
        },
    },
}
_COUNT = {"type": "object", "required": ["imageCount"], "properties": {"imageCount": {"type": "integer"}}}
PADDLEX_RESULTS: dict[str, JSON] = {
    "/shitu-index-build": {
        "type": "object",
        "required": ["indexKey", "imageCount"],
        "properties": {"indexKey": {"type": "string"}, "imageCount": {"type": "integer"}},
    },
    "/shitu-index-add": _COUNT,
    "/shitu-index-remove": _COUNT,
    "/shitu-infer": {
        "type": "object",
        "required": ["detectedObjects", "image"],
        "properties": {
            "detectedObjects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["bbox", "recResults", "score"],
                    "properties": {
                        "bbox": BOX,
                        "score": {"type": "number"},
                        "recResults": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["label", "score"],
                                "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
                            },
                        },
                    },
                },
            },
            "image": {"type": ["string", "null"]},
        },
    },
}


def paddlex_paths() -> dict[str, JSON]:
    from shitu.serving.hub.peers.paddlex import ROUTES

    paths = {}
    for route, handler in ROUTES.items():
        request = {"type": "object", "additionalProperties": False, **PADDLEX_REQUESTS[route]}
        ok = {
            "allOf": [{"$ref": "#/components/schemas/PaddleXEnvelope"}],
            "required": ["result"],
            "properties": {"errorCode": {"const": 0}, "result": PADDLEX_RESULTS[route]},
        }
        err = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/PaddleXEnvelope"}}}}
        paths[route] = {
            "post": {
                "operationId": "paddlex" + route.replace("-", "_").replace("/", "_"),
                "tags": ["PaddleX"],
                "summary": f"PaddleX PP-ShiTuV2 `{route}` ({(handler.__doc__ or handler.__name__).splitlines()[0]})",
                "description": "PaddleX's serving API on the `image_recognition` module. Any body is read as JSON.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": request,
                            "examples": examples_of({"example": PADDLEX_EXAMPLES[route]}),
                        }
                    },
                },
                "responses": {
                    "200": {"description": "Success (`errorCode` 0).", "content": {"application/json": {"schema": ok}}},
                    "413": {"description": "The body is larger than `Limits.max_request_bytes`.", **err},
                    "422": {"description": "The request names a bad field (`errorMsg` says which).", **err},
                    "500": {"description": "An internal error (PaddleX's envelope; logged).", **err},
                },
            }
        }
    return paths


def paddle_serving_path() -> dict[str, JSON]:
    from shitu.serving.hub.peers import paddle_serving

    request = {
        "type": "object",
        "required": ["key", "value"],
        "properties": {
            "key": {"type": "array", "items": {"type": "string"}, "examples": [["image"]]},
            "value": {"type": "array", "items": {"type": "string"}, "examples": [[EXAMPLE_IMAGE]]},
            "logid": {},
        },
        "additionalProperties": False,
        "description": "`key` and `value` of the same length, `image` among the keys (its value base64).",
    }
    answer = {
        "type": "object",
        "required": ["err_no", "err_msg", "key", "value", "tensors"],
        "properties": {
            "err_no": {
                "enum": [paddle_serving.OK, paddle_serving.INPUT_PARAMS_ERROR, paddle_serving.UNKNOWN],
                "description": "0: success; 5000: bad input (`err_msg` says which); 10000: internal error",
            },
            "err_msg": {"type": "string"},
            "key": {"type": "array", "items": {"const": "result"}, "maxItems": 1},
            "value": {"type": "array", "items": {"type": "string"}, "maxItems": 1},
            "tensors": {"type": "array", "maxItems": 0},
        },
    }
    return {
        paddle_serving.ROUTE: {
            "post": {
                "operationId": "paddle_serving_recognition",
                "tags": ["Paddle Serving"],
                "summary": "PaddleClas's Paddle Serving recognition pipeline (the body is read as JSON whatever its "
                "Content-Type)",
                "description": "`value[0]` is Python's `str()` of the list of `{bbox, rec_docs, rec_scores}`, best "
                "first. Errors keep HTTP 200, as Paddle Serving does.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": request,
                            "examples": examples_of({"example": {"key": ["image"], "value": [EXAMPLE_IMAGE]}}),
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "Paddle Serving's answer.",
                        "content": {"application/json": {"schema": answer}},
                    },
                    "413": http_errors()["413"],
                },
            }
        }
    }
