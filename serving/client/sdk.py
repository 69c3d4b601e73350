"""Python SDK for a shitu-hub server: images in, typed results out; no paddle, no base64, no envelope.

::

    from shitu.serving.client.sdk import ShituClient

    with ShituClient("http://127.0.0.1:8866", token="s3cret") as client:
        client.gallery_add(["cat.jpg", "cup.jpg"], ["cat", "cup"], gallery="shop")
        for r in client.recognize("query.jpg", gallery="shop", threshold=0.5):
            print(r)                          # cat 0.912 at [16, 1, 443, 299]

It needs ``requests`` and ``numpy`` only. OpenCV is imported when a numpy image is sent (PIL is the fallback) or
when :func:`draw` is called; PIL only when a PIL image is sent.

**Images** are a path (``str`` / ``os.PathLike``: the file's bytes are sent as they are), encoded bytes, a numpy
array (BGR or gray, as OpenCV gives; sent as JPEG, or PNG with ``image_format="png"``) or a PIL image; one image
or a list (a 4-D numpy array is a list of frames). One image in, one result out; a list in, a list out, in order.
Lists are sent in requests of at most ``batch_size`` images (and ``max_batch_bytes`` encoded bytes).

**Parameters**: every method takes ``scenario=``, ``gallery=``, ``params=`` (a mapping, nested PaddleClas-style
``{"Global": {"threshold": 0.5}}``, dotted or short names) and any parameter as a keyword argument by its PP-ShiTu
name (``threshold=0.5``, ``score_thres=0.9``, ``**{"IndexProcess.return_k": 3}``); the server checks names and
types and answers unknown ones with a :class:`ServerError` that names them.

**Errors** are :class:`ShituError` subclasses:

- :class:`InputError` -- an image or argument cannot be used; nothing (more) was sent;
- :class:`ServerError` -- the server refused the request: ``status`` and ``msg`` (PaddleHub's envelope),
  ``http_status``, and ``index`` when one image is to blame (index in *your* list, across batches);
- :class:`ImageFailed` (a ``ServerError``) -- with ``raise_on_error=True`` (the default) of ``recognize`` /
  ``detect`` / ``extract``, some images failed: ``index`` is the first, ``errors`` maps every failed index to its
  reason, ``results`` holds the results of *all* images (failed ones empty, with ``.error`` set). With
  ``raise_on_error=False`` the same list is returned instead and the caller checks ``.error`` / ``.ok``;
- :class:`ConnectionFailed` (also a ``ConnectionError``) and :class:`Timeout` (also a ``TimeoutError``).

Every exception raised by a batched call has ``partial``: what the earlier batches of the call returned (for
``gallery_add``, the ids already added, so the caller can remove them).

**Retries**: a connection error, a timeout or an HTTP 502/503/504 is retried ``retries`` times with exponential
backoff (``backoff * 2**n`` seconds, at most ``max_backoff``) for the operations that are safe to repeat:
``recognize``, ``detect``, ``extract``, ``search``, ``gallery_remove`` (removing twice removes nothing more),
``gallery_info``, ``gallery_list``, ``scenarios``. ``gallery_add`` is not idempotent: it is retried only when the
connection could not even be opened (refused, connect timeout), as urllib3 does for connect errors; a read
timeout or a dropped connection after sending is raised at once, since the server may have added the images.

Longer than 600 lines: the blocking and the asyncio client share request building and answer parsing here,
so the two forms of every method change together.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

from shitu.serving.results import Match, Recognition
from shitu.serving.results.explanation import Explanation

__all__ = [
    "AsyncShituClient",
    "Box",
    "ConnectionFailed",
    "Embeddings",
    "GalleryInfo",
    "GalleryItem",
    "ImageDetections",
    "ImageFailed",
    "ImageRecognitions",
    "ImageResult",
    "InputError",
    "Match",
    "Recognition",
    "Scenario",
    "SearchHits",
    "ServerError",
    "ShituClient",
    "ShituError",
    "Timeout",
    "draw",
]

DEFAULT_URL = "http://127.0.0.1:8866"
#: HTTP answers worth retrying for safe operations (a proxy or load balancer between client and server).
RETRY_HTTP_STATUSES = frozenset({502, 503, 504})
#: Embedding rows per ``search`` / ``gallery_add(embeddings=...)`` request: the server's default
#: ``Limits.max_queries`` (a client of a server with other limits says so: ``ShituClient(max_queries=...)``).
VECTOR_BATCH = 256
#: The server's default ``Limits.max_matches``: embeddings x ``return_k`` one search request may ask for.
MAX_MATCHES = 2560
#: The server's default ``IndexProcess.return_k`` (used to size search requests that do not set it).
DEFAULT_RETURN_K = 5
_IMAGE_INDEX = re.compile(r"^image (\d+): ?(.*)$", re.S)


# ---------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------
class ShituError(Exception):
    """Base of every error the client raises. ``partial``: results of the earlier batches of the call."""

    partial: Any = None


class InputError(ShituError, ValueError):
    """An image or an argument cannot be used (client side; nothing more was sent). ``index``: the image's."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class ServerError(ShituError):
    """The server answered with an error.

    ``status``: the envelope status (``"101"`` a refused request, ``"111"`` unknown module, HTTP codes such as
    ``"415"``); ``msg``: the server's message; ``http_status``; ``index``: the failing image's position in the
    caller's list when the error names one (``"image N: ..."`` messages, per-image errors), else ``None``;
    ``module`` / ``operation``: what was called; ``request_id``: the server's id of the request (quote it to
    the operator: every log line of the request carries it), when the server gave one.
    """

    def __init__(
        self,
        msg: str,
        status: str | None = None,
        http_status: int | None = None,
        index: int | None = None,
        module: str | None = None,
        operation: str | None = None,
        request_id: str | None = None,
    ):
        self.msg, self.status, self.http_status = msg, status, http_status
        self.index, self.module, self.operation = index, module, operation
        self.request_id = request_id
        super().__init__(msg)

    def __str__(self) -> str:
        where = f"{self.module}/{self.operation}" if self.module else "server"
        notes = [f"status {self.status}"] if self.status is not None else []
        if self.http_status not in (None, 200):
            notes.append(f"HTTP {self.http_status}")
        m = _IMAGE_INDEX.match(self.msg)
        if self.index is not None and (m is None or int(m.group(1)) != self.index):
            notes.append(f"image {self.index} of the call")
        return f"{where}: {self.msg}" + (f" ({', '.join(notes)})" if notes else "")


class ImageFailed(ServerError):
    """Some images of an otherwise successful call failed (``raise_on_error=True``).

    ``index``: the first failed image; ``errors``: ``{index: reason}`` for every failed image (``status`` and
    ``http_status`` are ``None``: the failures are per image); ``results``: the
    results of all images, in order (failed ones empty with ``.error`` set).
    """

    def __init__(
        self, errors: dict[int, str], results: list[Any], module: str | None = None, operation: str | None = None
    ):
        first = min(errors)
        more = f" (and {len(errors) - 1} more failed)" if len(errors) > 1 else ""
        super().__init__(f"image {first}: {errors[first]}{more}", None, None, first, module, operation)
        self.errors = dict(errors)
        self.results = results
        self.partial = results


class ConnectionFailed(ShituError, ConnectionError):
    """The server could not be reached (after the retries). ``url``, ``attempts``."""

    def __init__(self, message: str, url: str | None = None, attempts: int = 1):
        super().__init__(message)
        self.url, self.attempts = url, attempts


class Timeout(ShituError, TimeoutError):
    """The server did not answer within the client's ``timeout`` (after the retries). ``url``, ``attempts``."""

    def __init__(self, message: str, url: str | None = None, attempts: int = 1):
        super().__init__(message)
        self.url, self.attempts = url, attempts


# ---------------------------------------------------------------------------------------------------------------
# result types
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Box:
    """One detected main object: ``bbox`` ``[x1, y1, x2, y2]`` pixels, detector ``score``, ``is_whole_image``."""

    bbox: list[int]
    score: float
    is_whole_image: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Box:
        known = {"bbox", "score", "is_whole_image"}
        return cls(
            [int(v) for v in d["bbox"]],
            float(d["score"]),
            bool(d.get("is_whole_image", False)),
            {k: v for k, v in d.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "bbox": [int(v) for v in self.bbox],
            "score": round(float(self.score), 6),
            "is_whole_image": bool(self.is_whole_image),
            **self.extra,
        }

    def __str__(self) -> str:
        where = "whole image" if self.is_whole_image else f"[{', '.join(map(str, self.bbox))}]"
        return f"box {self.score:.3f} at {where}"


def _match_from_dict(d: Mapping[str, Any]) -> Match:
    return Match(int(d["id"]), str(d["label"]), float(d["score"]), d.get("source"), d.get("metadata"))


class ImageResult(list):
    """What one image gave: a list of items plus ``index`` (position in the call), ``width``, ``height`` and
    ``error`` (``None`` unless this image failed; then the list is empty). A plain ``list`` otherwise, so code
    written for the engine's ``list[list[Recognition]]`` works unchanged."""

    key = "items"
    item_type: Callable[[Mapping[str, Any]], Any] = dict

    def __init__(
        self,
        items: Iterable[Any] = (),
        index: int = 0,
        width: int | None = None,
        height: int | None = None,
        error: str | None = None,
    ):
        super().__init__(items)
        self.index, self.width, self.height, self.error = index, width, height, error

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], index: int | None = None) -> ImageResult:
        idx = int(d.get("index", 0)) if index is None else index
        if "error" in d:
            return cls((), idx, error=str(d["error"]))
        return cls([cls.item_type(x) for x in d.get(cls.key) or []], idx, d.get("width"), d.get("height"))

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"index": self.index, "error": self.error}
        d: dict[str, Any] = {"index": self.index}
        if self.width is not None:
            d.update(width=self.width, height=self.height)
        d[self.key] = [x.to_dict() if hasattr(x, "to_dict") else x for x in self]
        return d

    def _header(self) -> str:
        size = f" ({self.width}x{self.height})" if self.width is not None else ""
        return f"image {self.index}{size}"

    def __str__(self) -> str:
        if self.error is not None:
            return f"{self._header()}: error: {self.error}"
        lines = [f"{self._header()}:"] + [f"    {x}" for x in self]
        if not self:
            lines.append("    (nothing)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        extra = f", error={self.error!r}" if self.error is not None else ""
        return f"{type(self).__name__}(index={self.index}, {list.__repr__(self)}{extra})"


class ImageRecognitions(ImageResult):
    """:class:`Recognition` objects of one image, best first; ``explanation`` (an
    :class:`~shitu.serving.results.explanation.Explanation`) when asked for with ``explain=True``, else ``None``."""

    key = "results"
    item_type = staticmethod(Recognition.from_dict)
    explanation: Explanation | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], index: int | None = None) -> ImageResult:
        out = super().from_dict(d, index)
        if d.get("explanation") is not None:
            out.explanation = Explanation.from_dict(d["explanation"])  # type: ignore[attr-defined]
        return out

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.explanation is not None:
            d["explanation"] = self.explanation.to_dict()
        return d


class ImageDetections(ImageResult):
    """:class:`Box` objects of one image (the whole-image box last when the server appends it)."""

    key = "boxes"
    item_type = staticmethod(Box.from_dict)


class SearchHits(ImageResult):
    """:class:`Match` objects of one query embedding, best first; ``index`` is the query's."""

    key = "matches"
    item_type = staticmethod(_match_from_dict)

    def _header(self) -> str:
        return f"query {self.index}"

    def __str__(self) -> str:
        lines = [f"{self._header()}:"] + [f"    {m.label} {m.score:.3f} (id {m.id})" for m in self]
        return "\n".join(lines if self else lines + ["    (no match)"])


@dataclass(repr=False)
class Embeddings:
    """Embeddings of one image: ``vectors[i]`` (``float32``, or ``uint8`` packed bits when ``binary``) is the
    embedding of ``boxes[i]``. ``error`` is set (and ``vectors`` empty) when this image failed."""

    index: int
    vectors: np.ndarray
    boxes: list[list[int]] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    dim: int | None = None
    normalized: bool | None = None
    binary: bool | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def __len__(self) -> int:
        return len(self.vectors)

    def __repr__(self) -> str:
        tail = f", error={self.error!r}" if self.error is not None else f", boxes={self.boxes}"
        return f"Embeddings(index={self.index}, vectors=<{self.vectors.dtype} {list(self.vectors.shape)}>{tail})"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], index: int | None = None) -> Embeddings:
        idx = int(d.get("index", 0)) if index is None else index
        if "error" in d:
            return cls(idx, np.zeros((0, 0), np.float32), error=str(d["error"]))
        binary = bool(d.get("binary", False))
        vectors = np.asarray(d.get("embeddings") or [], np.uint8 if binary else np.float32)
        return cls(
            idx,
            vectors.reshape(len(vectors), -1) if vectors.size else vectors.reshape(0, 0),
            [[int(v) for v in b] for b in d.get("boxes") or []],
            d.get("width"),
            d.get("height"),
            d.get("dim"),
            d.get("normalized"),
            binary,
        )

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"index": self.index, "error": self.error}
        return {
            "index": self.index,
            "width": self.width,
            "height": self.height,
            "boxes": self.boxes,
            "embeddings": self.vectors.tolist(),
            "dim": self.dim,
            "normalized": self.normalized,
            "binary": self.binary,
        }

    def __str__(self) -> str:
        if self.error is not None:
            return f"image {self.index}: error: {self.error}"
        kind = "binary" if self.binary else ("normalised" if self.normalized else "raw")
        return f"image {self.index}: {len(self.vectors)} x {self.dim}-d {kind} embedding(s) for boxes {self.boxes}"


def _split_known(d: Mapping[str, Any], known: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    names = set(known)
    return {k: d.get(k) for k in names}, {k: v for k, v in d.items() if k not in names}


@dataclass
class GalleryItem:
    """One gallery record (``gallery_list``)."""

    id: int
    label: str
    source: str | None = None
    metadata: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GalleryItem:
        k, rest = _split_known(d, ("id", "label", "source", "metadata"))
        return cls(int(k["id"]), str(k["label"]), k["source"], k["metadata"], rest)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "source": self.source, "metadata": self.metadata, **self.extra}

    def __str__(self) -> str:
        return f"{self.id:8d}  {self.label}  {self.source or ''}".rstrip()


@dataclass
class GalleryInfo:
    """What the server says about a gallery (``gallery_info``): counts, embedding size, metric, index type;
    everything else it reports is in ``extra``."""

    count: int
    labels: int | None = None
    dim: int | None = None
    metric: str | None = None
    index: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GalleryInfo:
        k, rest = _split_known(d, ("count", "labels", "dim", "metric", "index"))
        return cls(int(k["count"] or 0), k["labels"], k["dim"], k["metric"], k["index"], rest)

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "labels": self.labels,
            "dim": self.dim,
            "metric": self.metric,
            "index": self.index,
            **self.extra,
        }

    def __str__(self) -> str:
        return f"{self.count} items, {self.labels} labels, {self.dim}-d {self.metric}, index {self.index}"


@dataclass
class Scenario:
    """A scenario pack the server knows (``scenarios``); ``default`` marks the one used when none is named."""

    name: str
    title: str = ""
    version: str | None = None
    available: bool = True
    default: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scenario:
        k, rest = _split_known(d, ("name", "title", "version", "available", "default"))
        return cls(
            str(k["name"]),
            str(k["title"] or ""),
            k["version"],
            bool(k["available"] in (None, True)),
            bool(k["default"]),
            rest,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "version": self.version,
            "available": self.available,
            "default": self.default,
            **self.extra,
        }

    def __str__(self) -> str:
        flags = (" (default)" if self.default else "") + ("" if self.available else " (not installed)")
        return f"{self.name} {self.version or ''}: {self.title}{flags}"


# ---------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------
def _is_pil(obj: Any) -> bool:
    return hasattr(obj, "mode") and hasattr(obj, "size") and hasattr(obj, "save") and not isinstance(obj, np.ndarray)


def _is_single_image(obj: Any) -> bool:
    if isinstance(obj, np.ndarray):
        return obj.ndim != 4
    return isinstance(obj, (str, bytes, bytearray, memoryview, os.PathLike)) or _is_pil(obj)


def _as_list(images: Any) -> tuple[bool, list[Any]]:
    """(single?, list of images). A list/tuple/iterable is many; a 4-D array is many frames."""
    if _is_single_image(images):
        return True, [images]
    if isinstance(images, np.ndarray):  # N x H x W x C
        return False, list(images)
    if isinstance(images, Iterable):
        return False, list(images)
    raise InputError(f"cannot use a {type(images).__name__} as an image (path, bytes, numpy array or PIL image)")


def _encode_array(a: np.ndarray, fmt: str, quality: int) -> bytes:
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)) or 0 in a.shape[:2]:
        raise ValueError(f"expected an H x W or H x W x 1/3/4 image array, got shape {a.shape}")
    if a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"unsupported image dtype {a.dtype} (use uint8, as OpenCV gives)")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if fmt == "jpeg" and (a.dtype == np.uint16 or (a.ndim == 3 and a.shape[2] == 4)):
        fmt = "png"  # JPEG holds neither 16-bit samples nor alpha
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        ext, flags = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality]) if fmt == "jpeg" else (".png", [])
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(a), flags)
        if not ok:
            raise ValueError(f"OpenCV could not encode the array as {fmt}")
        return buf.tobytes()
    from PIL import Image  # no OpenCV: PIL, with BGR(A) -> RGB(A)

    if a.dtype == np.uint16:
        a = (a / 257).astype(np.uint8)
    if a.ndim == 3:
        a = a[:, :, [2, 1, 0, 3][: a.shape[2]]]
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(out, format=fmt.upper(), quality=quality)
    return out.getvalue()


def _encode_pil(img: Any, fmt: str, quality: int) -> bytes:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        fmt = "png"
    if fmt == "jpeg" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, format=fmt.upper(), **({"quality": quality} if fmt == "jpeg" else {}))
    return out.getvalue()


def image_bytes(image: Any, image_format: str = "jpeg", quality: int = 95) -> bytes:
    """One image (path, bytes, numpy BGR array, PIL image) -> encoded file bytes, as sent to the server."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, np.ndarray):
        try:
            data = _encode_array(image, image_format, quality)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    elif _is_pil(image):
        data = _encode_pil(image, image_format, quality)
    else:
        raise InputError(f"cannot use a {type(image).__name__} as an image (path, bytes, numpy array or PIL image)")
    if not data:
        raise InputError("empty image data")
    return data


def load_image(image: Any) -> np.ndarray:
    """One image (path, bytes, numpy array, PIL image) -> BGR uint8 array (needs OpenCV)."""
    from shitu.serving.engine.images import ImageError, load

    try:
        return load(image)
    except ImageError as exc:
        raise InputError(str(exc)) from None


def draw(image: Any, results: Iterable[Any], prefix: str = "") -> np.ndarray:
    """A BGR copy of ``image`` with ``results`` drawn on it: :class:`Recognition` or :class:`Box` objects (or
    their dicts), e.g. what ``recognize`` / ``detect`` gave for that image; an :class:`ImageRecognitions` with an
    ``explanation`` also shows, dashed, the boxes the answer left out and why. Needs OpenCV."""
    from shitu.serving.results.draw import draw_explanation, draw_recognitions

    explanation = getattr(results, "explanation", None)
    if explanation is not None:
        return draw_explanation(load_image(image), list(results), explanation)

    recs = []
    for r in results:
        if isinstance(r, Mapping):
            r = Recognition.from_dict(r) if "label" in r else Box.from_dict(r)
        if isinstance(r, Box):
            r = Recognition(list(r.bbox), "object", r.score, r.score, r.is_whole_image)
        recs.append(r)
    return draw_recognitions(load_image(image), recs, prefix=prefix)


# ---------------------------------------------------------------------------------------------------------------
# the client
# ---------------------------------------------------------------------------------------------------------------
def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _never_connected(exc: requests.RequestException) -> bool:
    """True when the request cannot have reached the server (refused / unresolvable / connect timeout)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        from urllib3.exceptions import NewConnectionError

        cause = exc.args[0] if exc.args else None
        return isinstance(cause, NewConnectionError) or isinstance(getattr(cause, "reason", None), NewConnectionError)
    return False


def _return_k(params: Mapping[str, Any]) -> int:
    """The ``return_k`` a request's parameters ask for (short, dotted or nested name), else the server default."""
    nested = params.get("IndexProcess")
    for value in (
        params.get("return_k"),
        params.get("IndexProcess.return_k"),
        nested.get("return_k") if isinstance(nested, Mapping) else None,
    ):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return DEFAULT_RETURN_K


class ShituClient:
    """A shitu-hub server's four modules as methods. Thread-safe (one keep-alive session per thread).

    ``base_url``: the server (``http://host:8866``); ``timeout``: seconds per request (or ``(connect, read)``);
    ``retries``: extra attempts for safe operations; ``token``: admin token for gallery changes (sent as
    ``Authorization: Bearer``); ``batch_size``: images per request; ``scenario`` / ``gallery`` / ``params``:
    defaults for every call; ``max_batch_bytes``: encoded image bytes per request (keep under the server's
    ``Limits.max_request_bytes``, 64 MiB by default); ``image_format`` (``"jpeg"`` / ``"png"``) and
    ``jpeg_quality``: how numpy and PIL images are encoded; ``session``: a ``requests.Session`` to use (proxies,
    certificates) instead of the client's own per-thread sessions; ``max_queries`` / ``max_matches``: the server's
    ``Limits`` of the same names (embedding rows per request; rows x ``return_k`` per search), when not the
    defaults: vectors are sent in requests that fit them.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float | tuple[float, float] = 60.0,
        retries: int = 2,
        token: str | None = None,
        batch_size: int = 8,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_batch_bytes: int = 32 * 1024 * 1024,
        image_format: str = "jpeg",
        jpeg_quality: int = 95,
        session: requests.Session | None = None,
        max_queries: int = VECTOR_BATCH,
        max_matches: int = MAX_MATCHES,
    ):
        if "://" not in base_url:
            base_url = "http://" + base_url
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if max_queries < 1 or max_matches < 1:
            raise ValueError(f"max_queries and max_matches must be >= 1, got {max_queries} and {max_matches}")
        self.max_queries, self.max_matches = max_queries, max_matches
        if image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout, self.retries, self.batch_size = timeout, retries, batch_size
        self.scenario, self.gallery, self.params = scenario, gallery, dict(params or {})
        self.backoff, self.max_backoff, self.max_batch_bytes = backoff, max_backoff, max_batch_bytes
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._shared = session
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ShituClient({self.base_url!r}, batch_size={self.batch_size}, retries={self.retries})"

    # -- plumbing ------------------------------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        if self._shared is not None:
            return self._shared
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            with self._lock:
                self._sessions.append(s)
            self._local.session = s
        return s

    def close(self) -> None:
        """Close the keep-alive connections (the client stays usable: new ones open on the next call)."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()
        self._local = threading.local()

    def __enter__(self) -> ShituClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _sleep_before_retry(self, attempt: int) -> None:
        delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        if delay > 0:
            time.sleep(delay * random.uniform(0.8, 1.0))

    def _post(self, module: str, payload: dict[str, Any], idempotent: bool) -> Any:
        """POST one request; retry what is safe to retry; the envelope's ``results`` or a typed error."""
        url = f"{self.base_url}/predict/{module}"
        operation = payload.get("operation")
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self._session().post(url, data=body, headers=self._headers, timeout=self.timeout)
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                if attempt <= self.retries and (idempotent or _never_connected(exc)):
                    self._sleep_before_retry(attempt)
                    continue
                tries = f" after {attempt} attempt{'s' if attempt > 1 else ''}"
                if isinstance(exc, requests.exceptions.Timeout):
                    raise Timeout(f"{url}: no answer within {self.timeout} s{tries}", url, attempt) from exc
                raise ConnectionFailed(f"{url}: cannot connect{tries}: {_reason(exc)}", url, attempt) from exc
            except requests.RequestException as exc:
                raise ConnectionFailed(f"{url}: {exc}", url, attempt) from exc
            if resp.status_code in RETRY_HTTP_STATUSES and idempotent and attempt <= self.retries:
                resp.close()
                self._sleep_before_retry(attempt)
                continue
            return self._unwrap(resp, module, operation)

    @staticmethod
    def _unwrap(resp: requests.Response, module: str, operation: str | None) -> Any:
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "status" not in body:
            text = " ".join(resp.text.split())[:300] or resp.reason or ""
            raise ServerError(
                f"HTTP {resp.status_code}: not a shitu-hub answer: {text}",
                str(resp.status_code),
                resp.status_code,
                None,
                module,
                operation,
            )
        status = str(body.get("status"))
        if status != "000" or resp.status_code >= 400:
            msg = str(body.get("msg") or f"error status {status}")
            m = _IMAGE_INDEX.match(msg)
            raise ServerError(
                msg,
                status,
                resp.status_code,
                int(m.group(1)) if m else None,
                module,
                operation,
                request_id=body.get("request_id") or resp.headers.get("X-Request-ID"),
            )
        return body.get("results")

    def _payload(
        self,
        operation: str,
        scenario: str | None,
        gallery: str | None,
        params: Mapping[str, Any] | None,
        overrides: Mapping[str, Any],
        **fields: Any,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"operation": operation}
        scenario = scenario or self.scenario
        gallery = gallery or self.gallery
        if scenario:
            payload["scenario"] = scenario
        if gallery:
            payload["gallery"] = gallery
        merged = _deep_merge(_deep_merge(self.params, params or {}), overrides)
        if merged:
            payload["params"] = merged  # under "params": never confused with an operation's own fields
        payload.update({k: v for k, v in fields.items() if v is not None})
        return payload

    def _batches(self, images: list[Any]) -> Iterator[tuple[int, list[str]]]:
        """(start, base64 strings) per request: at most ``batch_size`` images and ``max_batch_bytes`` bytes."""
        start, batch, size = 0, [], 0
        for i, img in enumerate(images):
            try:
                data = image_bytes(img, self.image_format, self.jpeg_quality)
            except InputError as exc:
                raise InputError(f"image {i}: {exc}", i) from None
            encoded = base64.b64encode(data).decode("ascii")
            if batch and (len(batch) >= self.batch_size or size + len(encoded) > self.max_batch_bytes):
                yield start, batch
                start, batch, size = i, [], 0
            batch.append(encoded)
            size += len(encoded)
        if batch:
            yield start, batch

    def _per_image(
        self,
        module: str,
        operation: str,
        images: Any,
        parse: Callable[[Mapping[str, Any], int], Any],
        raise_on_error: bool,
        payload: Callable[[list[str], int], dict[str, Any]],
    ) -> Any:
        """Send ``images`` in batches; per-image results in order; failed images per ``raise_on_error``."""
        single, items = _as_list(images)
        if not items:
            return []
        out: list[Any] = []

        def send(start: int, encoded: list[str]) -> list[Any]:
            try:
                answer = self._post(module, payload(encoded, start), idempotent=True)
            except ServerError as exc:
                if exc.index is None or not 0 <= exc.index < len(encoded):
                    raise
                if len(encoded) == 1:  # the one image of this request failed: a per-image error
                    reason = _IMAGE_INDEX.match(exc.msg)
                    return [parse({"index": 0, "error": reason.group(2) if reason else exc.msg}, start)]
                # Every image of the batch failed (or one failed the whole request): ask image by image, so
                # each image gets its own result or reason. Safe: these operations change nothing.
                return [r for k, enc in enumerate(encoded) for r in send(start + k, [enc])]
            if not isinstance(answer, list) or len(answer) != len(encoded):
                raise ServerError(
                    f"expected {len(encoded)} results, got {_describe(answer)}", "000", 200, None, module, operation
                )
            return [parse(r, start + k) for k, r in enumerate(answer)]

        try:
            for start, encoded in self._batches(items):
                out.extend(send(start, encoded))
        except ShituError as exc:
            exc.partial = out
            raise
        errors = {r.index: r.error for r in out if r.error is not None}
        if errors and raise_on_error:
            raise ImageFailed(errors, out, module, operation)
        return out[0] if single else out

    # -- operations ----------------------------------------------------------------------------------------------
    def recognize(
        self,
        images: Any,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        raise_on_error: bool = True,
        explain: bool = False,
        **overrides: Any,
    ) -> Any:
        """What and where: one :class:`ImageRecognitions` (a list of :class:`Recognition`, best first) per image;
        one image in, one out; a list in, a list out. ``explain``: each also carries its ``explanation``."""
        return self._per_image(
            "image_recognition",
            "recognize",
            images,
            lambda d, i: ImageRecognitions.from_dict(d, i),
            raise_on_error,
            lambda enc, start: self._payload(
                "recognize", scenario, gallery, params, overrides, images=enc, explain=True if explain else None
            ),
        )

    def detect(
        self,
        images: Any,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        raise_on_error: bool = True,
        **overrides: Any,
    ) -> Any:
        """Main-object boxes: one :class:`ImageDetections` (a list of :class:`Box`) per image."""
        return self._per_image(
            "mainbody_detection",
            "predict",
            images,
            lambda d, i: ImageDetections.from_dict(d, i),
            raise_on_error,
            lambda enc, start: self._payload("predict", scenario, gallery, params, overrides, images=enc),
        )

    def extract(
        self,
        images: Any,
        boxes: Sequence[Sequence[Sequence[float]] | None] | None = None,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        raise_on_error: bool = True,
        **overrides: Any,
    ) -> Any:
        """Embeddings: one :class:`Embeddings` per image, one row per box of ``boxes[i]`` (``[[x1, y1, x2, y2],
        ...]``; the whole image when ``boxes`` or ``boxes[i]`` is None). For one image, ``boxes`` is its list."""
        single, items = _as_list(images)
        if boxes is not None:
            boxes = [boxes] if single else list(boxes)
            if len(boxes) != len(items):
                raise InputError(f"boxes: one list per image expected ({len(items)}), got {len(boxes)}")
            boxes = [None if b is None else np.asarray(b, np.float64).reshape(-1, 4).tolist() for b in boxes]

        def payload(enc: list[str], start: int) -> dict[str, Any]:
            part = boxes[start : start + len(enc)] if boxes is not None else None
            if part is not None and all(b is None for b in part):
                part = None
            return self._payload(
                "predict",
                scenario,
                gallery,
                params,
                overrides,
                images=enc,
                boxes=None if part is None else [b or [] for b in part],
            )

        out = self._per_image(
            "feature_extraction", "predict", items, lambda d, i: Embeddings.from_dict(d, i), raise_on_error, payload
        )
        return out[0] if single else out

    def search(
        self,
        embeddings: Any,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Any:
        """Gallery matches per embedding: one :class:`SearchHits` (a list of :class:`Match`) per row. Takes a
        ``[n, d]`` array or list of rows (a list out), one ``[d]`` vector (one out) or an :class:`Embeddings`
        (its rows; a list out). ``return_k=`` and ``score_thres=`` are the usual knobs."""
        if isinstance(embeddings, Embeddings):
            embeddings = embeddings.vectors
        arr = np.asarray(embeddings)
        single = arr.ndim == 1
        arr = arr.reshape(1, -1) if single else arr
        if arr.ndim != 2 or arr.dtype.kind not in "uif":
            raise InputError(f"embeddings must be numbers of shape [n, d] or [d], got {arr.dtype} {arr.shape}")
        out: list[SearchHits] = []
        k = _return_k(self._payload("search", scenario, gallery, params, overrides).get("params") or {})
        per_request = max(1, min(self.max_queries, self.max_matches // k))
        try:
            for start in range(0, len(arr), per_request):
                rows = arr[start : start + per_request].tolist()
                answer = self._post(
                    "index_search",
                    self._payload("search", scenario, gallery, params, overrides, embeddings=rows),
                    idempotent=True,
                )
                out.extend(SearchHits.from_dict(r, start + k) for k, r in enumerate(answer))
        except ShituError as exc:
            exc.partial = out
            raise
        return out[0] if single else out

    def gallery_add(
        self,
        images: Any = None,
        labels: str | Sequence[str] | None = None,
        *,
        embeddings: Any = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> list[int]:
        """Add images (or precomputed ``embeddings``) under ``labels`` (one per item, or one label for all);
        returns the new gallery ids in order. Needs the admin token when the server has one. Each request is all
        or nothing; when a later batch fails, the exception's ``partial`` holds the ids already added."""
        if (images is None) == (embeddings is None):
            raise InputError("gallery_add needs images or embeddings (one of them)")
        if images is not None:
            single, items = _as_list(images)
            count = len(items)
        else:
            vecs = np.asarray(embeddings.vectors if isinstance(embeddings, Embeddings) else embeddings)
            vecs = vecs.reshape(1, -1) if vecs.ndim == 1 else vecs
            if vecs.ndim != 2 or vecs.dtype.kind not in "uif":
                raise InputError(f"embeddings must be numbers of shape [n, d], got {vecs.dtype} {vecs.shape}")
            count = len(vecs)
        if isinstance(labels, str):
            labels = [labels] * count
        labels = list(labels or [])
        if not count:
            raise InputError("gallery_add: no images or embeddings given")
        if len(labels) != count:
            raise InputError(f"{count} items but {len(labels)} labels")
        if metadata is not None and len(metadata) != count:
            raise InputError(f"{count} items but {len(metadata)} metadata entries")
        ids: list[int] = []

        # Image files keep their names on the server (the items' `source`); other images are "request:<i>".
        names = (
            [Path(x).name if isinstance(x, (str, os.PathLike)) else None for x in items] if images is not None else None
        )

        def fields(start: int, n: int) -> dict[str, Any]:
            meta = None if metadata is None else [None if m is None else dict(m) for m in metadata[start : start + n]]
            out = {"labels": labels[start : start + n], "metadata": meta}
            if names is not None and any(names[start : start + n]):
                out["sources"] = names[start : start + n]
            return out

        try:
            if images is not None:
                for start, enc in self._batches(items):
                    payload = self._payload(
                        "add", scenario, gallery, params, overrides, images=enc, **fields(start, len(enc))
                    )
                    try:
                        answer = self._post("image_recognition", payload, idempotent=False)
                    except ServerError as exc:
                        if exc.index is not None:
                            exc.index += start
                        raise
                    ids.extend(int(i) for i in answer["ids"])
            else:
                for start in range(0, count, self.max_queries):
                    rows = vecs[start : start + self.max_queries].tolist()
                    payload = self._payload(
                        "add", scenario, gallery, params, overrides, embeddings=rows, **fields(start, len(rows))
                    )
                    ids.extend(int(i) for i in self._post("index_search", payload, idempotent=False)["ids"])
        except ShituError as exc:
            exc.partial = ids
            raise
        return ids

    def gallery_remove(
        self,
        ids: int | Sequence[int] | None = None,
        labels: str | Sequence[str] | None = None,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> int:
        """Remove items by id and/or every item of some labels; returns how many were removed."""
        ids = [ids] if isinstance(ids, (int, np.integer)) else ids
        labels = [labels] if isinstance(labels, str) else labels
        if not ids and not labels:
            raise InputError("gallery_remove needs ids or labels")
        payload = self._payload(
            "remove",
            scenario,
            gallery,
            params,
            overrides,
            ids=[int(i) for i in ids] if ids else None,
            labels=list(labels) if labels else None,
        )
        return int(self._post("image_recognition", payload, idempotent=True)["removed"])

    def gallery_info(
        self,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> GalleryInfo:
        """Counts and configuration of a gallery (the server's default gallery when none is named)."""
        payload = self._payload("info", scenario, gallery, params, overrides)
        return GalleryInfo.from_dict(self._post("image_recognition", payload, idempotent=True))

    def gallery_list(
        self,
        label: str | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> list[GalleryItem]:
        """Gallery records by id (optionally of one ``label``), ``limit`` from ``offset``."""
        payload = self._payload("list", scenario, gallery, params, overrides, label=label, limit=limit, offset=offset)
        return [GalleryItem.from_dict(r) for r in self._post("index_search", payload, idempotent=True)]

    def scenarios(
        self,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> list[Scenario]:
        """The scenario packs the server knows; ``default`` marks the one it uses when none is named."""
        payload = self._payload("scenarios", scenario, gallery, params, overrides)
        return [Scenario.from_dict(d) for d in self._post("image_recognition", payload, idempotent=True)]

    def health(self) -> dict[str, Any]:
        """``GET /health``: the modules served and the answering process (no retries)."""
        url = f"{self.base_url}/health"
        try:
            resp = self._session().get(url, timeout=self.timeout)
        except requests.exceptions.Timeout as exc:
            raise Timeout(f"{url}: no answer within {self.timeout} s", url) from exc
        except requests.RequestException as exc:
            raise ConnectionFailed(f"{url}: cannot connect: {_reason(exc)}", url) from exc
        return self._unwrap(resp, "health", None)

    draw = staticmethod(draw)


def _reason(exc: Exception) -> str:
    """The innermost useful words of a requests/urllib3 error (``Connection refused``...)."""
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return m.group(1).strip() if m else type(exc).__name__


def _describe(value: Any) -> str:
    return f"{len(value)} items" if isinstance(value, list) else type(value).__name__


# ---------------------------------------------------------------------------------------------------------------
# async
# ---------------------------------------------------------------------------------------------------------------
class AsyncShituClient:
    """``await``-able twin of :class:`ShituClient` (same arguments and methods): each call runs the synchronous
    client in a worker thread (``asyncio.to_thread``), so many calls may be in flight at once."""

    _CALLS = (
        "recognize",
        "detect",
        "extract",
        "search",
        "gallery_add",
        "gallery_remove",
        "gallery_info",
        "gallery_list",
        "scenarios",
        "health",
    )

    def __init__(self, *args: Any, **kwargs: Any):
        self.client = ShituClient(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name not in self._CALLS:
            return getattr(self.client, name)
        method = getattr(self.client, name)

        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kwargs)

        return call

    async def close(self) -> None:
        self.client.close()

    async def __aenter__(self) -> AsyncShituClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.client.close()
