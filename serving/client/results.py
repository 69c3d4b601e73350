"""What the SDK's calls return: typed, printable results that convert back to the wire's dicts (``to_dict``).

:class:`ImageResult` and its kinds are plain lists (of :class:`~shitu.serving.results.Recognition`, :class:`Box`,
:class:`~shitu.serving.results.Match`) with the image's ``index``, size and ``error``, so code written for the
engine's ``list[list[Recognition]]`` works unchanged. Imports numpy and :mod:`shitu.serving.results` only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from shitu.serving.results import Match, Recognition
from shitu.serving.results.explanation import Explanation

__all__ = [
    "Box",
    "Embeddings",
    "GalleryInfo",
    "GalleryItem",
    "ImageDetections",
    "ImageRecognitions",
    "ImageResult",
    "Scenario",
    "SearchHits",
]


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


R = TypeVar("R", bound="ImageResult")
RR = TypeVar("RR", bound="ImageRecognitions")


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
        self.index = index  # type: ignore[method-assign,assignment]  # the wire's name; shadows list.index
        self.width, self.height, self.error = width, height, error

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_dict(cls: type[R], d: Mapping[str, Any], index: int | None = None) -> R:
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
    def from_dict(cls: type[RR], d: Mapping[str, Any], index: int | None = None) -> RR:
        out = super().from_dict(d, index)
        if d.get("explanation") is not None:
            out.explanation = Explanation.from_dict(d["explanation"])
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
