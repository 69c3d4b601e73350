"""``shitu gallery migrate SRC DST``: copy a gallery between backends (a folder and a Milvus collection).

Every record is copied with its vector, label, source, metadata and content hash, in batches. A Milvus
destination keeps the source's ids; a folder destination numbers items from 1 again (the local backend assigns
ids itself), and the report says so. The copy is then verified: the counts must be equal, and the first
``verify`` items' own vectors searched in both galleries must give the same best label and score; otherwise
:class:`MigrationError` names the difference. The source is never changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shitu.serving.gallery.backend import create_gallery, gallery_exists, is_remote, open_gallery
from shitu.serving.gallery.local import GalleryError

__all__ = ["MigrationError", "MigrationReport", "migrate"]

_PAGE = 1000


class MigrationError(GalleryError):
    """The copy does not match its source (the message says how)."""


@dataclass
class MigrationReport:
    source: str
    destination: str
    copied: int
    source_count: int
    destination_count: int
    ids_kept: bool
    checked: int
    agreeing: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        ids = "ids kept" if self.ids_kept else "ids renumbered"
        return (
            f"copied {self.copied} items ({ids}); counts {self.source_count} -> {self.destination_count}; "
            f"search check {self.agreeing}/{self.checked} agree"
        )


def _records(g: Any) -> Iterator[list[dict[str, Any]]]:
    """Pages of records with their ``vector``, from either backend."""
    from shitu.serving.gallery.milvus import MilvusGallery

    if isinstance(g, MilvusGallery):
        yield from g.iter_records(_PAGE)
        return
    offset = 0
    while True:
        page = g.list(limit=_PAGE, offset=offset)
        if not page:
            return
        offset += len(page)
        out = []
        for rec in page:
            full = g.get(rec["id"], with_vector=True)
            if full is not None:  # removed meanwhile
                out.append(full)
        yield out


def migrate(
    src: str | os.PathLike, dst: str | os.PathLike, verify: int = 50, progress: Callable[[int], None] | None = None
) -> MigrationReport:
    """Copy gallery ``src`` into a new gallery ``dst`` (folder or ``milvus://`` URI) and verify it."""
    if str(src) == str(dst):
        raise MigrationError("source and destination are the same gallery")
    if gallery_exists(dst):
        raise MigrationError(f"{dst}: a gallery exists already; migrate copies into a new one")
    with open_gallery(src, readonly=True) as s:
        keep_ids = is_remote(str(dst))
        dist = "cosine" if s.normalize else s.metric
        with create_gallery(
            dst,
            s.dim,
            index_method=s.index_method,
            dist_type=dist,
            hamming_radius=s.hamming_radius,
            max_label_length=max(s.max_label_length, 1),
        ) as d:
            copied = 0
            for page in _records(s):
                if not page:
                    continue
                vecs = np.stack([r["vector"] for r in page])
                kw: dict[str, Any] = {"ids": [r["id"] for r in page]} if keep_ids else {}
                d.add(
                    vecs,
                    [r["label"] for r in page],
                    sources=[r["source"] for r in page],
                    metadata=[r["metadata"] for r in page],
                    content_hashes=[r["content_hash"] for r in page],
                    **kw,
                )
                copied += len(page)
                if progress:
                    progress(copied)
            d.checkpoint()
            report = MigrationReport(str(src), str(dst), copied, len(s), len(d), keep_ids, 0, 0)
            if report.source_count != report.destination_count:
                raise MigrationError(
                    f"counts differ after the copy: {report.source_count} in {src}, {report.destination_count} in {dst}"
                )
            sample = s.list(limit=max(0, int(verify)))
            if sample:
                queries = np.stack([s.get(r["id"], with_vector=True)["vector"] for r in sample])
                a, b = s.search(queries, 1), d.search(queries, 1)
                for ra, rb in zip(a, b):
                    report.checked += 1
                    same = (
                        bool(ra)
                        and bool(rb)
                        and ra[0].label == rb[0].label
                        and abs(ra[0].score - rb[0].score) <= 1e-3 * max(1.0, abs(ra[0].score))
                    )
                    report.agreeing += int(same)
                if report.agreeing < report.checked:
                    raise MigrationError(
                        f"search check: {report.checked - report.agreeing} of {report.checked} "
                        f"queries give a different best match in {dst}"
                    )
    return report
