"""The gallery backend interface: what the engine, the service, the builder and the CLI use from a gallery.

:class:`shitu.serving.gallery.local.Gallery` (SQLite + faiss in a folder) is the local backend; another backend
(e.g. a vector database) implements the same methods and is handed to the engine in its place. The interface holds
only public methods the local backend has today; anything else (``compact``, ``repair``, snapshots, tuning) is
specific to one backend.

``score`` of a :class:`Match` (also ``shitu.serving.engine.results.Match``) is the raw metric: similarity when
``higher_is_better`` (inner product), a distance otherwise (squared L2, hamming).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["GalleryBackend", "Match"]


@dataclass
class Match:
    """One gallery hit: item ``id``, its ``label`` and the raw metric ``score`` (IP: similarity; L2/hamming: distance)."""

    id: int
    label: str
    score: float
    source: str | None = None
    metadata: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score"] = round(float(self.score), 6)
        return d


@runtime_checkable
class GalleryBackend(Protocol):
    """A labelled embedding store searched at recognition time (one gallery)."""

    @property
    def dim(self) -> int:
        """Embedding size (bits for binary embeddings)."""
        ...

    @property
    def metric(self) -> str:
        """``"IP"``, ``"L2"`` or ``"hamming"``."""
        ...

    @property
    def higher_is_better(self) -> bool:
        """True when a larger ``score`` is a better match (IP)."""
        ...

    def check_label(self, label: Any) -> str:
        """``label`` as stored, or :class:`~shitu.serving.gallery.local.LabelError` naming the problem."""
        ...

    def add(self, vectors: np.ndarray, labels: Sequence[str], sources: Sequence[str | None] | None = None,
            metadata: Sequence[dict | None] | None = None,
            content_hashes: Sequence[str | None] | None = None) -> list[int]:
        """Add items in one step; their new ids, in order."""
        ...

    def remove(self, ids: Sequence[int] | None = None, labels: Sequence[str] | None = None) -> int:
        """Remove items by id and/or label; how many were removed. Searches never return them afterwards."""
        ...

    def update(self, id: int, label: str | None = None, vector: np.ndarray | None = None, *,
               source: str | None = None, metadata: dict | None = None, content_hash: str | None = None) -> None:
        """Relabel an item and/or replace its vector; the id stays the same."""
        ...

    def search(self, queries: np.ndarray, k: int = 5, labels: Sequence[str] | None = None) -> list[list[Match]]:
        """The ``k`` best matches of each query, best first; ``labels`` restricts the labels searched.

        A backend holding binary (``hamming``) galleries also takes ``hamming_radius=`` (keyword): the largest
        distance returned by this call (``IndexProcess.hamming_radius`` per request)."""
        ...

    def get(self, id: int, with_vector: bool = False) -> dict[str, Any] | None:
        """The record of item ``id`` (``id``, ``label``, ``source``, ``metadata``, ``content_hash``, times)."""
        ...

    def list(self, label: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Records by id (optionally of one label), ``limit`` from ``offset``."""
        ...

    def label_counts(self) -> dict[str, int]:
        """Items per label."""
        ...

    def hashes_present(self, hashes: Iterable[str]) -> set[str]:
        """Which of ``hashes`` some item has as its content hash (duplicate detection when building)."""
        ...

    def info(self) -> dict[str, Any]:
        """At least ``count``, ``labels``, ``dim``, ``metric``, ``index_method``; more per backend."""
        ...

    def __len__(self) -> int:
        """Number of searchable items."""
        ...

    def close(self) -> None:
        """Release the backend (idempotent); everything added is kept."""
        ...
