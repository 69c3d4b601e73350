"""Building a gallery from images: read, hash, skip what the gallery has, embed in batches, add in one go.

:func:`build_from_entries` takes any ``embed_fn(list of BGR uint8 images) -> [n, d] array`` (the engine's
``embed``, or a fake in tests). Images are read as bytes, hashed (sha256 of the file bytes: the content hash) and
decoded with ``decode_fn(bytes) -> BGR uint8`` (raising ``ValueError`` with the reason): the CLI passes the engine's
decoder with its ``Limits`` (``shitu.serving.engine.images.decode``: byte and pixel limits checked before decoding);
without one, plain ``cv2.imdecode`` reads trusted files. Images whose hash the gallery already holds (or that appeared earlier in the same
build) are skipped without being embedded, so re-running a build over the same list only embeds the new images.

Everything is added with **one** :meth:`Gallery.add` call -- one transaction -- at the end. A bad entry (missing,
unreadable or undecodable image, or a bad list line passed in as ``pre_bad``) stops the build before anything
changes (:class:`GalleryBuildError`, listing them with file name and line), unless ``skip_bad`` is set: then bad
entries are skipped and listed in :attr:`BuildReport.bad`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shitu.files import sha256_file
from shitu.serving.gallery.list_file import GalleryFileError, ListEntry, read_entries
from shitu.serving.gallery.local import Gallery, GalleryError

__all__ = [
    "BuildReport",
    "GalleryBuildError",
    "all_bad",
    "build_from_entries",
    "build_from_source",
    "sha256_file",
    "unreadable",
]

EmbedFn = Callable[[list[np.ndarray]], np.ndarray]
#: Encoded file bytes -> BGR uint8 image; raises ``ValueError`` (e.g. ``ImageError``) saying why it cannot.
DecodeFn = Callable[[bytes], np.ndarray]
BadEntry = tuple[str, "int | None", str]


@dataclass
class BuildReport:
    """What a build did: ``added`` items (their ``ids``), ``skipped_existing`` images already in the gallery (or
    repeated in the list), and ``bad`` entries as ``(source, line_no, reason)``."""

    added: int = 0
    skipped_existing: int = 0
    bad: list[BadEntry] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)

    def summary(self) -> str:
        return f"added {self.added}, skipped {self.skipped_existing} already present, {len(self.bad)} bad"


def format_bad(bad: Sequence[BadEntry], limit: int = 20) -> str:
    lines = [f"  {src}:{line}: {reason}" if line is not None else f"  {src}: {reason}" for src, line, reason in bad]
    if len(lines) > limit:
        lines = lines[:limit] + [f"  ... and {len(lines) - limit} more"]
    return "\n".join(lines)


class GalleryBuildError(GalleryError):
    """A build stopped before changing anything because of bad entries (``.bad``: ``(source, line_no, reason)``)."""

    def __init__(self, bad: Sequence[BadEntry]):
        self.bad = list(bad)
        super().__init__(
            f"{len(self.bad)} bad gallery entr{'y' if len(self.bad) == 1 else 'ies'}; nothing was added "
            f"(fix them or pass skip_bad / --skip-bad):\n{format_bad(self.bad)}"
        )


def _decode(data: bytes, decode_fn: DecodeFn | None) -> np.ndarray | str:
    """The image, or why it cannot be used."""
    if decode_fn is not None:
        try:
            return decode_fn(data)
        except ValueError as exc:
            return str(exc)
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    return img if img is not None and img.size else "not an image (unknown or corrupt format)"


def _as_bad(err: GalleryFileError | BadEntry) -> BadEntry:
    if isinstance(err, GalleryFileError):
        return (err.file, err.line_no, err.message)
    return err


def unreadable(entries: Sequence[ListEntry], decode_fn: DecodeFn | None = None) -> list[BadEntry]:
    """Entries whose image cannot be read or decoded. Checked once a build has failed anyway, so that every bad
    entry (bad lines, missing, unreadable and undecodable images) is reported in one round."""
    bad: list[BadEntry] = []
    for e in entries:
        try:
            data = Path(e.path).read_bytes()
        except OSError as exc:
            bad.append((e.source, e.line_no, f"cannot read {e.path}: {exc.strerror or exc}"))
            continue
        image = _decode(data, decode_fn)
        if isinstance(image, str):
            bad.append((e.source, e.line_no, f"not a readable image: {e.path} ({image})"))
    return bad


def all_bad(
    known: Sequence[GalleryFileError | BadEntry], entries: Sequence[ListEntry], decode_fn: DecodeFn | None = None
) -> list[BadEntry]:
    """``known`` problems plus the unreadable ``entries`` not among them, in file and line order."""
    out = [_as_bad(b) for b in known]
    seen = {(src, line) for src, line, _ in out}
    out += [b for b in unreadable(entries, decode_fn) if (b[0], b[1]) not in seen]
    return sorted(out, key=lambda b: (str(b[0]), b[1] if b[1] is not None else -1))


def build_from_entries(
    gallery: Gallery,
    entries: Sequence[ListEntry],
    embed_fn: EmbedFn,
    batch_size: int = 16,
    skip_bad: bool = False,
    progress: bool = True,
    *,
    pre_bad: Iterable[GalleryFileError | BadEntry] = (),
    desc: str = "embedding",
    decode_fn: DecodeFn | None = None,
) -> BuildReport:
    """Embed ``entries`` not yet in ``gallery`` and add them in one transaction (see the module doc)."""
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    report = BuildReport(bad=[_as_bad(e) for e in pre_bad])

    def fail_if_bad() -> None:
        if report.bad and not skip_bad:
            raise GalleryBuildError(all_bad(report.bad, todo, decode_fn))  # with the images not reached yet

    # Cheap checks first, so a list with missing images fails before any embedding.
    todo: list[ListEntry] = []
    for e in entries:
        problem = None
        if not Path(e.path).is_file():
            problem = f"image not found: {e.path}"
        else:
            try:
                gallery.check_label(e.label)
            except GalleryError as exc:
                problem = str(exc)
        if problem:
            report.bad.append((e.source, e.line_no, problem))
        else:
            todo.append(e)
    fail_if_bad()

    seen: set[str] = set()
    vectors: list[np.ndarray] = []
    labels: list[str] = []
    sources: list[str] = []
    hashes: list[str] = []

    def read_new(chunk: Sequence[ListEntry]) -> list[tuple[ListEntry, str, bytes]]:
        """Read and hash a chunk; keep the images not yet in the gallery (nor earlier in this build)."""
        read: list[tuple[ListEntry, bytes, str]] = []
        for e in chunk:
            try:
                data = Path(e.path).read_bytes()
            except OSError as exc:
                report.bad.append((e.source, e.line_no, f"cannot read {e.path}: {exc.strerror or exc}"))
                continue
            read.append((e, data, hashlib.sha256(data).hexdigest()))
        present = gallery.hashes_present(h for _e, _d, h in read)
        fresh = []
        for e, data, h in read:
            if h in present or h in seen:
                report.skipped_existing += 1
                continue
            seen.add(h)
            fresh.append((e, h, data))
        return fresh

    def embed_chunk(fresh: list[tuple[ListEntry, str, bytes]], decoded: list[np.ndarray | str]) -> None:
        images: list[np.ndarray] = []
        keep: list[tuple[ListEntry, str]] = []
        for (e, h, _data), img in zip(fresh, decoded):
            if isinstance(img, str):
                report.bad.append((e.source, e.line_no, f"not a readable image: {e.path} ({img})"))
                continue
            images.append(img)
            keep.append((e, h))
        fail_if_bad()
        if images:
            out = np.asarray(embed_fn(images))
            if out.ndim != 2 or len(out) != len(images):
                raise GalleryError(
                    f"embed_fn returned shape {list(out.shape)} for {len(images)} images; expected [n, d]"
                )
            vectors.append(out)
            for e, h in keep:
                labels.append(e.label)
                sources.append(e.record_source)
                hashes.append(h)

    # Decoding the next chunk (a thread: OpenCV releases the GIL) overlaps the model's work on this one.
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress, leave=False)
    pending: tuple[list[tuple[ListEntry, str, bytes]], Future[list[np.ndarray | str]], int] | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="gallery-decode") as pool:
        try:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                fresh = read_new(chunk)
                decoding = pool.submit(lambda items: [_decode(d, decode_fn) for _e, _h, d in items], fresh)
                if pending is not None:
                    embed_chunk(pending[0], pending[1].result())
                    bar.update(pending[2])
                pending = (fresh, decoding, len(chunk))
            if pending is not None:
                embed_chunk(pending[0], pending[1].result())
                bar.update(pending[2])
        finally:
            bar.close()
    fail_if_bad()
    if vectors:
        report.ids = gallery.add(np.concatenate(vectors), labels, sources, None, hashes)
        report.added = len(report.ids)
    return report


def build_from_source(
    gallery: Gallery,
    source: str | os.PathLike,
    embed_fn: EmbedFn,
    image_root: str | os.PathLike | None = None,
    delimiter: str = "\t",
    batch_size: int = 16,
    skip_bad: bool = False,
    progress: bool = True,
    decode_fn: DecodeFn | None = None,
) -> BuildReport:
    """Build from a list file (PaddleClas format and variants) or a folder tree ``label/image``."""
    errors: list[GalleryFileError] = []
    entries = read_entries(source, image_root, delimiter, errors, max_label_length=gallery.max_label_length)
    return build_from_entries(
        gallery,
        entries,
        embed_fn,
        batch_size=batch_size,
        skip_bad=skip_bad,
        progress=progress,
        pre_bad=errors,
        decode_fn=decode_fn,
    )


def embed_images_fn(engine: Any, gallery: Any = None) -> EmbedFn:
    """The engine's bulk embedding (``Engine.embed_bulk``: batches split over single-thread recogniser copies) as an
    ``embed_fn``, framing images as ``gallery`` records (``Engine.gallery_embedder``; ``None``: a gallery about to
    be made); ``engine.embed`` for an engine without one."""
    framed = getattr(engine, "gallery_embedder", None)
    if framed is not None:
        embed: EmbedFn = framed(gallery)
        return embed
    bulk = getattr(engine, "embed_bulk", None)
    return bulk if bulk is not None else (lambda images: engine.embed(images))
