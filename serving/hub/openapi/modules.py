"""``/predict/<module>``: one operation per module, its body a ``oneOf`` of the module's operations (field
``operation``), from each :class:`~shitu.serving.hub.service.Service` subclass's tables; the request fields' and
the results' schemas."""

from __future__ import annotations

import copy

from shitu.serving.hub.openapi.common import (
    BOX,
    EXAMPLE_GALLERY,
    EXAMPLE_IMAGE,
    GALLERY_PATTERN,
    INT_BOX,
    JSON,
    VECTOR,
    examples_of,
    http_errors,
)
from shitu.serving.hub.openapi.params import override_properties

#: PaddleHub's envelope codes of an HTTP 200 answer (``paddlehub.serving.app_compat.package_result``).
PADDLEHUB_STATUS = {
    "000": "success",
    "101": "the module refused or failed the request (`msg` says why)",
    "111": "the module is not served",
    "112": "the body is not JSON (`null`)",
}

#: The hub modules and the service class behind each (the ``service_class`` of ``hub_modules/<name>/module.py``).
MODULE_SERVICES = {
    "mainbody_detection": "DetectionService",
    "feature_extraction": "ExtractionService",
    "index_search": "SearchService",
    "image_recognition": "RecognitionService",
}


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
        "pattern": GALLERY_PATTERN,
        "description": "A gallery name of the scenario (never a path); default: the scenario's default gallery.",
    },
    "params": {"$ref": "#/components/schemas/ParamOverrides"},
    "token": {"type": "string", "description": "The admin token (or header `Authorization: Bearer ...`)."},
    "boxes": {
        "type": ["array", "null"],
        "items": {"type": ["array", "null"], "items": BOX},
        "description": "Per image, the boxes to embed (none or null: the whole image).",
    },
    "embeddings": {"type": "array", "items": VECTOR, "minItems": 1, "description": "Query or gallery embeddings."},
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

#: Whole requests, by module: the spec's examples (a tool that sends them runs every stage on a real image).
EXAMPLES: dict[str, dict[str, JSON]] = {
    "mainbody_detection": {"predict": {"images": [EXAMPLE_IMAGE], "threshold": 0.3}},
    "feature_extraction": {"predict": {"images": [EXAMPLE_IMAGE], "boxes": [[[20, 10, 110, 90]]]}},
    "index_search": {
        "info": {"operation": "info"},
        "list": {"operation": "list", "limit": 5},
    },
    "image_recognition": {
        "add": {"operation": "add", "gallery": EXAMPLE_GALLERY, "images": [EXAMPLE_IMAGE], "labels": ["example"]},
        "recognize": {"images": [EXAMPLE_IMAGE], "gallery": EXAMPLE_GALLERY},
        "explain": {"images": [EXAMPLE_IMAGE], "explain": True, "params": {"IndexProcess": {"candidates": 2}}},
        "labels": {"operation": "labels", "gallery": EXAMPLE_GALLERY, "limit": 5},
        "galleries": {"operation": "galleries"},
        "scenarios": {"operation": "scenarios"},
        "info": {"operation": "info", "gallery": EXAMPLE_GALLERY},
        "remove": {"operation": "remove", "gallery": EXAMPLE_GALLERY, "labels": ["example"]},
    },
}


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
        "bbox": INT_BOX,
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
        {"boxes": {"type": "array", "items": {"type": "object", "properties": {"bbox": INT_BOX}}}}, ["boxes"]
    ),
    ("feature_extraction", "predict"): _per_image(
        {
            "boxes": {"type": "array", "items": INT_BOX},
            "embeddings": {"type": "array", "items": VECTOR},
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


def service_classes() -> dict[str, type]:
    from shitu.serving.hub import service

    return {module: getattr(service, name) for module, name in MODULE_SERVICES.items()}


def operations(service_class: type) -> list[str]:
    """The operations a service answers (its ``op_*`` methods), its default first."""
    ops = sorted(n[3:] for n in dir(service_class) if n.startswith("op_"))
    return [service_class.default_operation] + [o for o in ops if o != service_class.default_operation]


def _operation_request(module: str, service_class: type, operation: str) -> JSON:
    from shitu.serving.hub.request_models import Request

    default = operation == service_class.default_operation
    props = {name: copy.deepcopy(schema) for name, schema in override_properties().items()}
    fields = set(service_class.requests.get(operation, Request).model_fields)  # the operation's request model
    for name in sorted(fields - {"operation"}):
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


def predict_path(module: str, service_class: type) -> JSON:
    ops = operations(service_class)
    variants = [_operation_request(module, service_class, op) for op in ops]
    body = variants[0] if len(variants) == 1 else {"oneOf": variants}
    ok = {
        "allOf": [{"$ref": "#/components/schemas/Envelope"}],
        "properties": {
            "status": {
                "enum": list(PADDLEHUB_STATUS),
                "description": "; ".join(f"`{k}`: {v}" for k, v in PADDLEHUB_STATUS.items()),
            },
            "results": {"anyOf": [{"const": ""}, *(_results(module, op) for op in ops)]},
        },
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
                "content": {"application/json": {"schema": body, "examples": examples_of(EXAMPLES.get(module, {}))}},
            },
            "responses": {
                "200": {"description": "The envelope.", "content": {"application/json": {"schema": ok}}},
                **http_errors(),
            },
        }
    }
