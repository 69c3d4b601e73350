"""Typed requests: each operation's JSON object parsed once, at the edge, into a pydantic model.

A model holds the fields of its operation (shapes and types: a list is a list, a gallery is a name); every other
top-level key, with ``params``, is a parameter override, validated by :func:`shitu.params.flatten` in the same
parse (:func:`parse`). Checks that need the engine's ``Limits`` (counts, sizes) run on the typed values. Messages
keep the wording clients and tests know (``missing field 'images'``, ``field 'explain' must be true or false``):
each validator raises its own message, and :func:`parse` answers the first as a :class:`RequestError`.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from shitu.echo import clip
from shitu.errors import InvalidArgument
from shitu.names import GALLERY_NAME
from shitu.params import flatten


class RequestError(InvalidArgument):
    """The request is invalid; the message says which field and why."""


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("shitu_request", "{message}", {"message": message})


def _optional_list(value: Any, info: ValidationInfo) -> Any:
    if value is not None and not isinstance(value, list):
        raise _fail(f"field {info.field_name!r} must be a list, got {type(value).__name__}")
    return value


def _required_list(value: Any, info: ValidationInfo) -> Any:
    if value is None:
        raise _fail(f"missing field {info.field_name!r}")
    _optional_list(value, info)
    if not value:
        raise _fail(f"field {info.field_name!r} is an empty list")
    return value


def _string(value: Any, info: ValidationInfo) -> Any:
    if value is not None and not isinstance(value, str):
        raise _fail(f"field {info.field_name!r} must be a string")
    return value


def _gallery(value: Any) -> Any:
    if value is not None and (not isinstance(value, str) or not GALLERY_NAME.match(value)):
        raise _fail(
            f"invalid gallery name {clip(value)}: a gallery is named with letters, digits, "
            "'_', '-' and '.' (max 64), never by a path"
        )
    return value


def _flag(value: Any, info: ValidationInfo) -> Any:
    if not isinstance(value, bool):
        raise _fail(f"field {info.field_name!r} must be true or false, got {type(value).__name__}")
    return value


def _int_in(low: int, high: int) -> BeforeValidator:
    def check(value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise _fail(f"field {info.field_name!r} must be an integer in {low}..{high}")
        return value

    return BeforeValidator(check)


OptionalList = Annotated[list[Any] | None, BeforeValidator(_optional_list)]
RequiredList = Annotated[list[Any], BeforeValidator(_required_list)]
OptionalString = Annotated[str | None, BeforeValidator(_string)]
GalleryName = Annotated[str | None, BeforeValidator(_gallery)]


class Request(BaseModel):
    """Fields every operation understands; any other key is a parameter override (see :func:`parse`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    operation: Any = None  # checked, with the token, before the request is parsed
    token: Any = None
    images: Any = None  # read only by the operations that take images (their models say how)
    scenario: OptionalString = None
    gallery: GalleryName = None
    params: dict[str, Any] | None = None  # checked by parse(), before the fields


class ImagesRequest(Request):
    images: RequiredList


class DetectRequest(ImagesRequest):
    pass


class ExtractRequest(ImagesRequest):
    boxes: OptionalList = None


class RecognizeRequest(ImagesRequest):
    explain: Annotated[bool, BeforeValidator(_flag)] = False


class AddRequest(Request):
    """``add``: ``images`` (embedded here) or, for ``index_search``, ``embeddings``; ``labels`` per item."""

    images: OptionalList = None
    labels: OptionalList = None
    metadata: OptionalList = None
    sources: OptionalList = None


class AddEmbeddingsRequest(AddRequest):
    embeddings: OptionalList = None


class SearchRequest(Request):
    embeddings: RequiredList


class RemoveRequest(Request):
    ids: OptionalList = None
    labels: OptionalList = None

    @model_validator(mode="after")
    def _ids_or_labels(self) -> RemoveRequest:
        if not self.ids and not self.labels:
            raise _fail("remove needs 'ids' (list of integers) or 'labels' (list of strings)")
        if self.ids and not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**63 for i in self.ids):
            raise _fail("field 'ids' must be a list of integers in 0..2**63-1")
        if self.labels and not all(isinstance(lab, str) and is_text(lab) for lab in self.labels):
            raise _fail("field 'labels' must be a list of strings (valid Unicode)")
        return self


class ListRequest(Request):
    label: OptionalString = None
    limit: Annotated[int, _int_in(0, 10_000)] = 100
    offset: Annotated[int, _int_in(0, 10_000)] = 0


#: Bounds of the ``labels`` operation's paging fields (answers stay small: thumbnails are a few kB each).
MAX_LABELS_PER_PAGE = 200
MAX_ITEMS_PER_LABEL = 24


class LabelsRequest(Request):
    """``labels`` (browsing a gallery: :mod:`shitu.serving.hub.gallery_view`)."""

    contains: Annotated[str, BeforeValidator(lambda v: v or "")] = ""
    limit: Annotated[int, _int_in(0, MAX_LABELS_PER_PAGE)] = 50
    offset: Annotated[int, _int_in(0, 10**9)] = 0
    per_label: Annotated[int, _int_in(0, MAX_ITEMS_PER_LABEL)] = 6

    @model_validator(mode="before")
    @classmethod
    def _contains_is_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("contains") and not isinstance(data["contains"], str):
            raise _fail("field 'contains' must be a string")
        return data


R = TypeVar("R", bound=Request)


def parse(model: type[R], raw: dict[str, Any]) -> tuple[R, dict[str, Any]]:
    """``raw`` (a request's JSON object) as ``model``, and its parameter overrides (``params`` and every top-level
    key that is not a field of ``model``) flattened and validated (``{"Section.key": value}``): the one parse of a
    request. The overrides are checked first, as they always were (a bad parameter is named before a missing field).
    """
    params = raw.get("params")
    if params is not None and not isinstance(params, dict):
        raise RequestError("field 'params' must be an object of parameter overrides")
    layer = dict(params or {})
    layer.update({k: v for k, v in raw.items() if k not in model.model_fields})
    overrides = flatten(layer)  # names and types checked before any work
    try:
        return model.model_validate(raw), overrides
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "missing":
            raise RequestError(f"missing field {first['loc'][0]!r}") from None
        raise RequestError(str(first.get("ctx", {}).get("message") or first["msg"])) from None


def is_text(text: str) -> bool:
    """Whether ``text`` is valid Unicode (JSON's ``\\ud800`` escapes can carry lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
