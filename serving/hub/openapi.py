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

What only this module knows is the JSON Schema of each request field (:data:`REQUEST_FIELDS`, a test checks that
every field a service reads has one) and of each operation's ``results``. The schemas describe today's wire format:
``/predict/<module>`` answers HTTP 200 with PaddleHub's envelope ``{status, msg, results}`` whatever the module
made of the request (``status`` ``"000"`` or an error code with ``msg``), and HTTP 4xx/5xx envelopes only for what
never reaches a module (a body that is not JSON, too large or too slow, too many connections).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from shitu.names import GALLERY_NAME
from shitu.params.schema import FIELDS, SHORT, Field

JSON = dict[str, Any]

#: The hub modules and the service class behind each (the ``service_class`` of ``hub_modules/<name>/module.py``).
MODULE_SERVICES = {
    "mainbody_detection": "DetectionService",
    "feature_extraction": "ExtractionService",
    "index_search": "SearchService",
    "image_recognition": "RecognitionService",
}

_GALLERY_PATTERN = GALLERY_NAME.pattern.replace(r"\Z", "$")  # JSON Schema's ECMA dialect has no \Z
_BOX = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4, "description": "[x1, y1, x2, y2]"}
_INT_BOX = {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4}
_VECTOR = {"type": "array", "items": {"type": "number"}, "description": "one embedding (uint8 bytes when binary)"}


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

#: The JSON Schema of every request field a service reads, by name (the common ones and each operation's extras).
REQUEST_FIELDS: dict[str, JSON] = {
    "images": {
        "type": "array",
        "items": {"type": "string"},
        "minItems": 1,
        "examples": [[EXAMPLE_IMAGE]],
        "description": "Encoded image files (JPEG, PNG, BMP, WebP, TIFF) as base64 strings; `data:` URLs accepted.",
    },
    "scenario": {"type": "string", "description": "The scenario pack to use (default: the module's)."},
    "gallery": {
        "type": "string",
        "pattern": _GALLERY_PATTERN,
        "description": "A gallery name of the scenario (never a path); default: the scenario's default gallery.",
    },
    "params": {"$ref": "#/components/schemas/ParamOverrides"},
    "token": {"type": "string", "description": "The admin token (or header `Authorization: Bearer ...`)."},
    "boxes": {
        "type": ["array", "null"],
        "items": {"type": ["array", "null"], "items": _BOX},
        "description": "Per image, the boxes to embed (none or null: the whole image).",
    },
    "embeddings": {"type": "array", "items": _VECTOR, "minItems": 1, "description": "Query or gallery embeddings."},
    "labels": {
        "type": "array",
        "items": {"type": "string"},
        "examples": [["example"]],
        "description": "One label per added item / labels.",
    },
    "metadata": {
        "type": "array",
        "items": {"type": ["object", "null"]},
        "description": "One JSON object (or null) per added item (`Limits.max_metadata_bytes`, `max_metadata_depth`).",
    },
    "sources": {
        "type": "array",
        "items": {"type": ["string", "null"]},
        "description": "One name per added item (e.g. its file name; `Limits.max_source_length`).",
    },
    "ids": {"type": "array", "items": {"type": "integer", "minimum": 0}, "description": "Gallery item ids."},
    "label": {"type": "string", "description": "Only items with this label."},
    "limit": {"type": "integer", "minimum": 0, "description": "At most this many."},
    "offset": {"type": "integer", "minimum": 0, "description": "Skip this many first."},
    "explain": {"type": "boolean", "description": "Also answer how each box was decided (`explanation`)."},
    "contains": {"type": "string", "description": "Only labels containing this text (case-insensitive)."},
    "per_label": {"type": "integer", "minimum": 0, "description": "Items (with thumbnails) listed per label."},
}

#: Fields an operation cannot do without (``remove`` needs ``ids`` or ``labels``: an ``anyOf``).
REQUIRED = {
    ("mainbody_detection", "predict"): ["images"],
    ("feature_extraction", "predict"): ["images"],
    ("index_search", "search"): ["embeddings"],
    ("index_search", "add"): ["labels"],
    ("image_recognition", "recognize"): ["images"],
    ("image_recognition", "add"): ["images", "labels"],
}

_EXAMPLE_GALLERY = "openapi-example"
#: Whole requests, by module: the spec's examples (a tool that sends them runs every stage on a real image).
EXAMPLES: dict[str, dict[str, JSON]] = {
    "mainbody_detection": {"predict": {"images": [EXAMPLE_IMAGE], "threshold": 0.3}},
    "feature_extraction": {"predict": {"images": [EXAMPLE_IMAGE], "boxes": [[[20, 10, 110, 90]]]}},
    "index_search": {
        "info": {"operation": "info"},
        "list": {"operation": "list", "limit": 5},
    },
    "image_recognition": {
        "add": {"operation": "add", "gallery": _EXAMPLE_GALLERY, "images": [EXAMPLE_IMAGE], "labels": ["example"]},
        "recognize": {"images": [EXAMPLE_IMAGE], "gallery": _EXAMPLE_GALLERY},
        "explain": {"images": [EXAMPLE_IMAGE], "explain": True, "params": {"IndexProcess": {"candidates": 2}}},
        "labels": {"operation": "labels", "gallery": _EXAMPLE_GALLERY, "limit": 5},
        "galleries": {"operation": "galleries"},
        "scenarios": {"operation": "scenarios"},
        "info": {"operation": "info", "gallery": _EXAMPLE_GALLERY},
        "remove": {"operation": "remove", "gallery": _EXAMPLE_GALLERY, "labels": ["example"]},
    },
}
PADDLEX_EXAMPLES: dict[str, JSON] = {
    "/shitu-index-build": {"imageLabelPairs": [{"image": EXAMPLE_IMAGE, "label": "example"}]},
    "/shitu-index-add": {"imageLabelPairs": [{"image": EXAMPLE_IMAGE, "label": "more"}], "indexKey": _EXAMPLE_GALLERY},
    "/shitu-index-remove": {"ids": [0], "indexKey": _EXAMPLE_GALLERY},
    "/shitu-infer": {"image": EXAMPLE_IMAGE, "visualize": True, "topk": 2},
}


def _examples(requests: Mapping[str, JSON]) -> JSON:
    """OpenAPI's ``examples`` of a media type."""
    return {name: {"value": value} for name, value in requests.items()}


#: One line per operation (the module docstrings and the README say more).
SUMMARIES = {
    "predict": "Mainbody detection (boxes per image) or feature extraction (one embedding per box).",
    "recognize": "The whole pipeline: detect, embed, search the gallery.",
    "search": "Top-k gallery matches of embeddings.",
    "add": "Add items (images, or embeddings on index_search) with labels to a gallery.",
    "remove": "Remove gallery items by id or label.",
    "info": "A gallery's size, metric and models.",
    "list": "A gallery's items, optionally of one label.",
    "scenarios": "The scenario packs installed, the default marked.",
    "galleries": "The scenario's galleries and the values of the web page's sliders.",
    "labels": "A gallery's labels with counts and thumbnails of their first items.",
}

_NUMBERS = {"index": {"type": "integer"}, "width": {"type": "integer"}, "height": {"type": "integer"}}
_FAILED_IMAGE = {"type": "object", "required": ["index", "error"], "properties": {"index": {"type": "integer"}}}
_RECOGNITION = {
    "type": "object",
    "required": ["bbox", "label", "score", "det_score", "is_whole_image"],
    "properties": {
        "bbox": _INT_BOX,
        "label": {"type": "string"},
        "score": {"type": "number"},
        "det_score": {"type": "number"},
        "is_whole_image": {"type": "boolean"},
        "id": {"type": "integer"},
    },
}
_MATCH = {"type": "object", "required": ["label", "score"], "properties": {"label": {"type": "string"}}}


def _per_image(properties: JSON, required: list[str]) -> JSON:
    """A list with one entry per image: its answer, or ``{index, error}`` for an image that failed."""
    ok = {"type": "object", "required": ["index", *required], "properties": {**_NUMBERS, **properties}}
    return {"type": "array", "items": {"anyOf": [ok, _FAILED_IMAGE]}}


_ADDED = {
    "type": "object",
    "required": ["ids", "added"],
    "properties": {"ids": {"type": "array", "items": {"type": "integer"}}, "added": {"type": "integer"}},
}
_OBJECT = {"type": "object"}

#: The ``results`` of each operation's successful answer, by (module, operation); ``None`` module: any module.
RESULTS: dict[tuple[str | None, str], JSON] = {
    ("mainbody_detection", "predict"): _per_image(
        {"boxes": {"type": "array", "items": {"type": "object", "properties": {"bbox": _INT_BOX}}}}, ["boxes"]
    ),
    ("feature_extraction", "predict"): _per_image(
        {
            "boxes": {"type": "array", "items": _INT_BOX},
            "embeddings": {"type": "array", "items": _VECTOR},
            "dim": {"type": "integer"},
            "normalized": {"type": "boolean"},
            "binary": {"type": "boolean"},
        },
        ["boxes", "embeddings", "dim"],
    ),
    ("index_search", "search"): {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["index", "matches"],
            "properties": {"index": {"type": "integer"}, "matches": {"type": "array", "items": _MATCH}},
        },
    },
    ("index_search", "list"): {"type": "array", "items": _OBJECT},
    ("image_recognition", "recognize"): _per_image(
        {"results": {"type": "array", "items": _RECOGNITION}, "explanation": _OBJECT}, ["results"]
    ),
    ("image_recognition", "scenarios"): {
        "type": "array",
        "items": {"type": "object", "required": ["default"], "properties": {"default": {"type": "boolean"}}},
    },
    ("image_recognition", "galleries"): {
        "type": "object",
        "required": ["scenario", "default", "galleries", "params"],
        "properties": {
            "scenario": {"type": "string"},
            "default": {"type": "string"},
            "galleries": {"type": "array", "items": {"type": "string"}},
            "params": _OBJECT,
        },
    },
    ("image_recognition", "labels"): {
        "type": "object",
        "required": ["total", "offset", "labels"],
        "properties": {
            "total": {"type": "integer"},
            "offset": {"type": "integer"},
            "labels": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["label", "count", "items"],
                    "properties": {
                        "label": {"type": "string"},
                        "count": {"type": "integer"},
                        "items": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["id", "thumbnail"],
                                "properties": {"id": {"type": "integer"}, "thumbnail": {"type": ["string", "null"]}},
                            },
                        },
                    },
                },
            },
        },
    },
    (None, "add"): _ADDED,
    (None, "remove"): {"type": "object", "required": ["removed"], "properties": {"removed": {"type": "integer"}}},
    (None, "info"): {"type": "object", "not": {"required": ["path"]}},  # no server paths in answers
}


# -- parameters ---------------------------------------------------------------------------------------------------
def field_schema(f: Field) -> JSON:
    """The JSON Schema of one parameter's value, from its :class:`Field` (what :func:`shitu.params.coerce` takes)."""
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    out: JSON = {"description": f.doc}
    if f.choices is not None:
        out["enum"] = [*f.choices, *([None] if f.nullable else [])]
    else:
        types = [names[t] for t in (f.type if isinstance(f.type, tuple) else (f.type,))]
        out["type"] = types + ["null"] if f.nullable else (types[0] if len(types) == 1 else types)
        if "array" in types and f.section == "IndexProcess" and f.key == "labels":
            out["items"] = {"type": "string"}
    if f.minimum is not None:
        out["minimum"] = f.minimum
    if f.maximum is not None:
        out["maximum"] = f.maximum
    if f.default is not None or f.nullable:
        out["default"] = f.default
    return out


def _ref(f: Field) -> JSON:
    return {"$ref": f"#/components/schemas/param.{f.name}"}


def override_properties() -> dict[str, JSON]:
    """Every spelling of every per-request parameter -> its schema: ``Section`` (an object of its keys),
    ``Section.key`` / ``Section.alias``, and each unambiguous short name (``threshold``)."""
    per_request = [f for f in FIELDS if f.per_request]
    props: dict[str, JSON] = {}
    for section in dict.fromkeys(f.section for f in per_request):
        keys = {k: _ref(f) for f in per_request if f.section == section for k in (f.key, *f.aliases)}
        props[section] = {"type": "object", "properties": keys, "additionalProperties": False}
    for f in per_request:
        for key in (f.key, *f.aliases):
            props[f"{f.section}.{key}"] = _ref(f)
    for short, f in SHORT.items():
        if f is not None and f.per_request and "." not in short:
            props[short] = _ref(f)
    return props


# -- /predict/<module> ----------------------------------------------------------------------------------------------
def _service_classes() -> dict[str, type]:
    from shitu.serving.hub import service

    return {module: getattr(service, name) for module, name in MODULE_SERVICES.items()}


def operations(service_class: type) -> list[str]:
    """The operations a service answers (its ``op_*`` methods), its default first."""
    ops = sorted(n[3:] for n in dir(service_class) if n.startswith("op_"))
    return [service_class.default_operation] + [o for o in ops if o != service_class.default_operation]


def _operation_request(module: str, service_class: type, operation: str) -> JSON:
    from shitu.serving.hub.service import COMMON_FIELDS

    default = operation == service_class.default_operation
    props = {name: copy.deepcopy(schema) for name, schema in override_properties().items()}
    for name in sorted(COMMON_FIELDS - {"operation"} | service_class.fields.get(operation, set())):
        props[name] = copy.deepcopy(REQUEST_FIELDS[name])  # a request field wins over a parameter's short name
    props["operation"] = {"const": operation}
    if default:
        props["operation"]["description"] = "May be left out: this is the module's default operation."
    schema: JSON = {
        "title": f"{module}.{operation}",
        "description": SUMMARIES.get(operation, operation)
        + (" Needs the admin token when the server has one." if operation in service_class.write_operations else ""),
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        "required": (["operation"] if not default else []) + REQUIRED.get((module, operation), []),
    }
    if operation == "remove":
        schema["anyOf"] = [{"required": ["ids"]}, {"required": ["labels"]}]
    return schema


def _results(module: str, operation: str) -> JSON:
    return RESULTS.get((module, operation)) or RESULTS.get((None, operation)) or {}


def _predict_path(module: str, service_class: type) -> JSON:
    ops = operations(service_class)
    variants = [_operation_request(module, service_class, op) for op in ops]
    body = variants[0] if len(variants) == 1 else {"oneOf": variants}
    ok = {
        "allOf": [{"$ref": "#/components/schemas/Envelope"}],
        "properties": {"results": {"anyOf": [{"const": ""}, *(_results(module, op) for op in ops)]}},
    }
    writes = sorted(service_class.write_operations & set(ops))
    return {
        "post": {
            "operationId": f"predict_{module}",
            "tags": ["modules"],
            "summary": f"The {module} module: operations {', '.join(ops)} (field `operation`, default {ops[0]})",
            "description": "PaddleHub's module API. The answer is HTTP 200 with the envelope `{status, msg, results}`:"
            " status `000` and the operation's `results`, or an error status (`101`: the request was refused or"
            ' failed, `msg` says why) with `results` `""` and the `request_id`.'
            + (f" {', '.join(writes)} need(s) the admin token when the server has one." if writes else ""),
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": body, "examples": _examples(EXAMPLES.get(module, {}))}},
            },
            "responses": {
                "200": {"description": "The envelope.", "content": {"application/json": {"schema": ok}}},
                **_http_errors(),
            },
        }
    }


def _http_errors() -> dict[str, JSON]:
    """What the server answers before a module runs: PaddleHub's envelope with the HTTP code as ``status``."""
    err = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}}}
    return {
        "400": {"description": "The body is not valid JSON, or not a JSON object.", **err},
        "408": {"description": "The body came too slowly (`Limits.request_timeout`).", **err},
        "413": {"description": "The body is larger than `Limits.max_request_bytes`.", **err},
        "415": {"description": "The body is not declared as JSON (`Content-Type`).", **err},
        "503": {"description": "Too many connections (`Limits.max_connections`); retry.", **err},
    }


# -- the peers ------------------------------------------------------------------------------------------------------
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
_INDEX_KEY = {"type": "string", "pattern": _GALLERY_PATTERN, "description": "A gallery name."}
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
            "indexKey": {"type": ["string", "null"], "pattern": _GALLERY_PATTERN},
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
                        "bbox": _BOX,
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


def _paddlex_paths() -> dict[str, JSON]:
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
                            "examples": _examples({"example": PADDLEX_EXAMPLES[route]}),
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


def _paddle_serving_path() -> dict[str, JSON]:
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
                            "examples": _examples({"example": {"key": ["image"], "value": [EXAMPLE_IMAGE]}}),
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "Paddle Serving's answer.",
                        "content": {"application/json": {"schema": answer}},
                    },
                    "413": _http_errors()["413"],
                },
            }
        }
    }


# -- the rest -------------------------------------------------------------------------------------------------------
def _get(operation_id: str, tag: str, summary: str, responses: JSON, **extra: Any) -> JSON:
    return {"get": {"operationId": operation_id, "tags": [tag], "summary": summary, "responses": responses, **extra}}


def _other_paths() -> dict[str, JSON]:
    from shitu.serving.hub.metrics import CONTENT_TYPE

    html = {"text/html": {"schema": {"type": "string"}}}
    not_found = {"description": "No such file.", "content": {"application/json": {"schema": _ENVELOPE_REF}}}
    return {
        "/health": _get(
            "health",
            "server",
            "The modules served and the answering process (for load balancers)",
            {
                "200": {
                    "description": "Serving.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "allOf": [_ENVELOPE_REF],
                                "properties": {
                                    "status": {"const": "000"},
                                    "results": {
                                        "type": "object",
                                        "required": ["pid", "modules"],
                                        "properties": {
                                            "pid": {"type": "integer"},
                                            "modules": {"type": "array", "items": {"type": "string"}},
                                        },
                                    },
                                },
                            }
                        }
                    },
                }
            },
        ),
        "/metrics": _get(
            "metrics",
            "server",
            "Prometheus metrics (needs the admin token only when a module protects reads)",
            {
                "200": {
                    "description": "Prometheus text format.",
                    "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
                },
                "401": {
                    "description": "Reads are protected and the Bearer token is missing or wrong.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
            },
        ),
        "/openapi.json": _get(
            "openapi",
            "server",
            "This description (OpenAPI 3.1)",
            {"200": {"description": "The spec.", "content": {"application/json": {"schema": {"type": "object"}}}}},
        ),
        "/": {
            **_get(
                "index",
                "web page",
                "Redirects to the web page",
                {"302": {"description": "To `/web/`.", "headers": {"Location": {"schema": {"type": "string"}}}}},
            ),
            "post": {
                "operationId": "index_post",
                "tags": ["web page"],
                "summary": "PaddleHub's text saying that there is no visual interface (kept as PaddleHub answers it)",
                "responses": {"200": {"description": "A line of text.", "content": html}},
            },
        },
        "/web/": _get("web_page", "web page", "The web page", {"200": {"description": "The page.", "content": html}}),
        "/web/{name}": _get(
            "web_file",
            "web page",
            "A file of the web page (its script, style sheet, icon)",
            {
                "200": {"description": "The file.", "content": {"*/*": {"schema": {"type": "string"}}}},
                "404": not_found,
            },
            parameters=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        ),
        "/favicon.ico": _get(
            "favicon",
            "web page",
            "The icon",
            {"200": {"description": "An ICO file.", "content": {"image/x-icon": {"schema": {"type": "string"}}}}},
        ),
    }


_ENVELOPE_REF = {"$ref": "#/components/schemas/Envelope"}


def _components() -> JSON:
    per_request = [f for f in FIELDS if f.per_request]
    schemas: JSON = {f"param.{f.name}": field_schema(f) for f in per_request}
    schemas["ParamOverrides"] = {
        "type": ["object", "null"],
        "description": "Per-request parameter overrides, in PaddleClas's nested spelling, `Section.key` or short "
        "names; every one is also accepted as a top-level field of the request.",
        "properties": override_properties(),
        "additionalProperties": False,
    }
    schemas["Envelope"] = {
        "type": "object",
        "required": ["status", "msg", "results"],
        "properties": {
            "status": {"type": "string", "description": "`000`: success; else an error code (`101`, an HTTP code)"},
            "msg": {"type": "string"},
            "results": {},
            "request_id": {"type": "string", "description": "On errors: the `X-Request-ID` of this request."},
        },
    }
    schemas["PaddleXEnvelope"] = {
        "type": "object",
        "required": ["logId", "errorCode", "errorMsg"],
        "properties": {
            "logId": {"type": "string"},
            "errorCode": {"type": "integer"},
            "errorMsg": {"type": "string"},
            "result": {"type": "object"},
        },
    }
    return {
        "schemas": schemas,
        "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer", "description": "The admin token."}},
    }


def build(modules: Mapping[str, type] | None = None, version: str = "") -> JSON:
    """The OpenAPI 3.1 document for a server serving ``modules`` (name -> service class; default: all four)."""
    services = dict(modules) if modules is not None else _service_classes()
    paths: JSON = {f"/predict/{m}": _predict_path(m, cls) for m, cls in sorted(services.items())}
    paths.update(_paddlex_paths())
    paths.update(_paddle_serving_path())
    paths.update(_other_paths())
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
            "components": _components(),
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
