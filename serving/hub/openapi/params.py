"""The parameter overrides' schemas, generated from :data:`shitu.params.schema.FIELDS` (the per-request ones)."""

from __future__ import annotations

from shitu.params.schema import FIELDS, SHORT, Field
from shitu.serving.hub.openapi.common import JSON


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
