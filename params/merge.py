"""Merging parameter layers into one validated :class:`Params`.

Precedence, lowest first: schema defaults < scenario pack < ``config.json`` ``init_args`` < per-request overrides.
Each layer is a mapping in any of three spellings, mixed freely:

- nested, as in PaddleClas YAML: ``{"Global": {"threshold": 0.3}}``
- dotted: ``{"Global.threshold": 0.3}``
- short, where unambiguous: ``{"threshold": 0.3}`` (aliases such as ``rec_nms_threshold`` too)

Unknown names and ill-typed values raise :class:`ParamError` naming the parameter; nothing is silently ignored.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

from shitu.echo import MAX_SUGGEST_CHARS, clip
from shitu.errors import InvalidArgument
from shitu.params.schema import BY_NAME, FIELDS, SECTIONS, SHORT, Field


class ParamError(InvalidArgument):
    """A parameter name is unknown or its value is invalid. ``name`` is the offending parameter."""

    def __init__(self, name: str, message: str):
        super().__init__(f"parameter {clip(name)}: {message}")
        self.name = name


def resolve(name: str) -> Field:
    """The field a dotted or short name refers to, or :class:`ParamError`."""
    if name in BY_NAME:
        return BY_NAME[name]
    if name in SHORT:
        found = SHORT[name]
        if found is None:
            options = sorted(f.name for f in FIELDS if f.key == name or name in f.aliases)
            raise ParamError(name, f"ambiguous, say one of {options}")
        return found
    raise ParamError(name, "unknown parameter" + _suggest(name))


def _suggest(name: str) -> str:
    import difflib

    if len(name) > MAX_SUGGEST_CHARS:
        return ""
    close = difflib.get_close_matches(name, [*BY_NAME, *SHORT], n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def coerce(f: Field, value: Any) -> Any:
    """``value`` checked (and widened where lossless, int -> float) for field ``f``."""
    if value is None:
        if f.nullable:
            return None
        raise ParamError(f.name, "must not be null")
    expected = f.type
    if isinstance(expected, tuple) and f.choices is not None:  # mixed types: one of the choices, type included
        if not any(type(value) is type(c) and value == c for c in f.choices):
            raise ParamError(f.name, f"expected {' or '.join(json.dumps(c) for c in f.choices)}, got {value!r}")
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float (JSON allows it)
            raise ParamError(f.name, f"must be a finite number, got {clip(value)}") from None
    if expected is bool:
        if not isinstance(value, bool):
            raise ParamError(f.name, f"expected true or false, got {type(value).__name__} {clip(value)}")
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(f.name, f"expected an integer, got {type(value).__name__} {clip(value)}")
    elif not isinstance(value, expected) or isinstance(value, bool):
        raise ParamError(f.name, f"expected {getattr(expected, '__name__', expected)}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ParamError(f.name, f"must be a finite number, got {clip(value)}")
    if f.minimum is not None and value < f.minimum:
        raise ParamError(f.name, f"must be >= {f.minimum}, got {clip(value)}")
    if f.maximum is not None and value > f.maximum:
        raise ParamError(f.name, f"must be <= {f.maximum}, got {clip(value)}")
    if f.choices is not None and value not in f.choices:
        raise ParamError(f.name, f"must be one of {list(f.choices)}, got {clip(value)}")
    if f.check is not None:
        problem = f.check(value)
        if problem:
            raise ParamError(f.name, problem)
    return copy.deepcopy(value) if isinstance(value, (list, dict)) else value


def flatten(layer: Mapping[str, Any] | None) -> dict[str, Any]:
    """One layer in any spelling -> ``{"Section.key": value}``, validated."""
    out: dict[str, Any] = {}
    if not layer:
        return out
    if not isinstance(layer, Mapping):
        raise ParamError("<params>", f"expected a mapping of parameters, got {type(layer).__name__}")
    for name, value in layer.items():
        if not isinstance(name, str):
            raise ParamError(repr(name), "parameter names must be strings")
        if name in SECTIONS and isinstance(value, Mapping):
            for key, sub in value.items():
                f = resolve(f"{name}.{key}")
                out[f.name] = coerce(f, sub)
            continue
        f = resolve(name)
        out[f.name] = coerce(f, value)
    return out


class Params(Mapping[str, Any]):
    """An immutable, validated set of every parameter, addressed by ``Section.key``.

    ``params["Global.threshold"]``, ``params.get("threshold")`` (short names work), ``params.section("Global")``.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any] | None = None):
        base = {f.name: copy.deepcopy(f.default) for f in FIELDS}
        base.update(flatten(values))
        self._values = base

    def __getitem__(self, name: str) -> Any:
        return self._values[resolve(name).name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        changed = {k: v for k, v in self._values.items() if v != BY_NAME[k].default}
        return f"Params({changed})"

    def section(self, name: str) -> dict[str, Any]:
        """One section as a plain ``{key: value}`` dict."""
        prefix = name + "."
        return {k[len(prefix) :]: v for k, v in self._values.items() if k.startswith(prefix)}

    def nested(self) -> dict[str, dict[str, Any]]:
        """All parameters as PaddleClas-style nested sections."""
        return {s: self.section(s) for s in SECTIONS}

    def override(self, *layers: Mapping[str, Any] | None, per_request: bool = False) -> Params:
        """A new :class:`Params` with ``layers`` (any spelling, validated here) applied on top (later wins).

        With ``per_request=True`` only parameters that may change per request are accepted; changing a load-time
        parameter (model folders, threads) is a :class:`ParamError`.
        """
        out = self
        for layer in layers:
            out = out.apply(flatten(layer), per_request=per_request)
        return out

    def apply(self, flat: Mapping[str, Any], per_request: bool = False) -> Params:
        """A new :class:`Params` with ``flat`` on top: a layer :func:`flatten` already validated (``{"Section.key":
        value}``), as a parsed request carries it, so nothing is validated twice.

        ``per_request``: load-time parameters are refused, and the ``IndexProcess.labels`` filter is bounded by
        ``Limits.max_filter_labels`` (a request's filter, checked before any work).
        """
        if not flat:
            return self
        if per_request:
            for name in flat:
                if not BY_NAME[name].per_request:
                    raise ParamError(name, "is fixed when the service starts and cannot be set per request")
            labels, limit = flat.get("IndexProcess.labels"), self._values["Limits.max_filter_labels"]
            if labels is not None and len(labels) > limit:
                raise ParamError(
                    "IndexProcess.labels",
                    f"{len(labels)} labels, more than the limit of {limit} (Limits.max_filter_labels)",
                )
        new = Params.__new__(Params)
        new._values = {**self._values, **flat}
        return new


def merge(*layers: Mapping[str, Any] | None) -> Params:
    """Defaults < ``layers[0]`` < ``layers[1]`` < ... as one validated :class:`Params`."""
    return Params().override(*layers)
