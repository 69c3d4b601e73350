"""The server's own routes (``/health``, ``/metrics``, ``/openapi.json``), the web page's, and the components."""

from __future__ import annotations

from shitu.params.schema import FIELDS
from shitu.serving.hub.openapi.common import ENVELOPE_REF, JSON, get_operation
from shitu.serving.hub.openapi.params import field_schema, override_properties


def other_paths() -> dict[str, JSON]:
    from shitu.serving.hub.metrics import CONTENT_TYPE

    html = {"text/html": {"schema": {"type": "string"}}}
    not_found = {"description": "No such file.", "content": {"application/json": {"schema": ENVELOPE_REF}}}
    return {
        "/health": get_operation(
            "health",
            "server",
            "The modules served and the answering process (for load balancers)",
            {
                "200": {
                    "description": "Serving.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "allOf": [ENVELOPE_REF],
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
        "/metrics": get_operation(
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
        "/openapi.json": get_operation(
            "openapi",
            "server",
            "This description (OpenAPI 3.1)",
            {"200": {"description": "The spec.", "content": {"application/json": {"schema": {"type": "object"}}}}},
        ),
        "/": {
            **get_operation(
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
        "/web/": get_operation(
            "web_page", "web page", "The web page", {"200": {"description": "The page.", "content": html}}
        ),
        "/web/{name}": get_operation(
            "web_file",
            "web page",
            "A file of the web page (its script, style sheet, icon)",
            {
                "200": {"description": "The file.", "content": {"*/*": {"schema": {"type": "string"}}}},
                "404": not_found,
            },
            parameters=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
        ),
        "/favicon.ico": get_operation(
            "favicon",
            "web page",
            "The icon",
            {"200": {"description": "An ICO file.", "content": {"image/x-icon": {"schema": {"type": "string"}}}}},
        ),
    }


def components() -> JSON:
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
