"""Copying galleries into another recogniser's embedding space (``shitu adapt --pack``).

Each gallery folder under the old space's root (``$SHITU_HOME/galleries/<pack>/`` or ``<pack>+<space>/``, see
:mod:`shitu.plugins.embedding_space`) gets a twin under the new root with the same ids, labels, sources, metadata,
content hashes and thumbnails, and vectors of the new recogniser:

- **mapped**: when the new recogniser is the old one followed by a linear head ``W`` (a projection), and the
  gallery's vectors are float vectors the old recogniser made (its recorded model identity, or none recorded),
  each new vector is ``normalize(v @ W)``, exactly what embedding the image again would give (the head acts on
  un-normalised features and normalising commutes with a linear map up to scale). No image is needed;
- **from images**: otherwise each item's image must be found, by its content hash (sha256 of the file) among the
  images the caller knows (``shitu adapt``: the list it trains on, and ``--gallery-images`` folders), or at the
  path its ``source`` records, still with that content; it is embedded again;
- anything else is refused *before* a gallery is written: :class:`ReembedError` names each gallery and how many of
  its items have no image to embed again (thumbnails are too small to stand in for them). The old galleries are
  only read; each new one is built in a hidden sibling folder and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shitu.names import GALLERY_NAME
from shitu.serving.gallery.local import DB_NAME, Gallery, GalleryError
from shitu.serving.gallery.store import read_items, write_thumbnails

__all__ = ["ReembedError", "GalleryCopy", "locator", "plan", "reembed_all"]

#: Images read and embedded at a time when a gallery is embedded again (bounds the memory).
IMAGE_CHUNK = 64
EmbedFn = Callable[[list[np.ndarray]], np.ndarray]
ReadImage = Callable[[str], np.ndarray]
#: ``(source, content_hash) -> image file or None``.
Locate = Callable[[str | None, str | None], Path | None]


class ReembedError(GalleryError):
    """Some gallery cannot be moved to the new recogniser; nothing was written."""


@dataclass
class GalleryCopy:
    """One gallery to carry over: where from, where to, and how (``mapped`` | ``images``)."""

    name: str
    src: Path
    dest: Path
    how: str
    count: int = 0
    missing: list[str] = field(default_factory=list)  # items without a usable image (for "images")
    images: dict[int, Path] = field(default_factory=dict)  # item id -> its image file (for "images")


def _read(src: Path) -> tuple[dict[str, str], list[tuple], dict[int, bytes]]:
    """``(meta, rows, thumbnails)`` in one read transaction; rows: id, label, source, metadata, hash, vector."""
    meta, rows, thumbs = read_items(src, thumbnails=True)
    return meta, [(*r[:5], r[6]) for r in rows], thumbs


def locator(known: dict[str, Path] | None = None) -> Locate:
    """Find an item's image: by content hash among ``known`` (sha256 -> file), else at its recorded ``source``
    path when that file is there and (if the item records a hash) has that content."""
    known = dict(known or {})

    def locate(source: str | None, content_hash: str | None) -> Path | None:
        if content_hash is not None and content_hash in known:
            return known[content_hash]
        if not source or not Path(source).is_absolute() or not Path(source).is_file():
            return None
        if content_hash is None or hashlib.sha256(Path(source).read_bytes()).hexdigest() == content_hash:
            return Path(source)
        return None

    return locate


def plan(
    old_root: Path,
    new_root: Path | None,
    *,
    mappable: bool,
    old_identity: dict[str, str] | None,
    locate: Locate | None = None,
) -> list[GalleryCopy]:
    """What :func:`reembed_all` would do; raises :class:`ReembedError` naming every gallery it cannot carry over.

    ``mappable``: the new recogniser is the old one plus a linear head. ``old_identity``: the old recogniser's
    model identity (galleries recording another one are not mapped). ``new_root`` None: only check (before
    training, when the new space is not known yet). ``locate``: finds items' images (default :func:`locator`)."""
    locate = locate or locator()
    out: list[GalleryCopy] = []
    refused: list[GalleryCopy] = []
    if not Path(old_root).is_dir():
        return out
    # named galleries only: a hidden sibling is one being built or carried over right now (not a gallery yet)
    for src in sorted(p for p in Path(old_root).iterdir() if GALLERY_NAME.match(p.name) and (p / DB_NAME).is_file()):
        dest = Path(new_root if new_root is not None else old_root) / src.name
        if new_root is not None and (dest / DB_NAME).is_file():
            continue  # carried over already (the same recogniser made before)
        meta, rows, _ = _read(src)
        recorded = json.loads(meta["model_identity"]) if meta.get("model_identity") else None
        same_model = recorded is None or old_identity is None or recorded == old_identity
        if mappable and same_model and meta.get("metric") != "hamming":
            out.append(GalleryCopy(src.name, src, dest, "mapped", len(rows)))
            continue
        copy = GalleryCopy(src.name, src, dest, "images", len(rows))
        for r in rows:
            found = locate(r[2], r[4])
            if found is None:
                copy.missing.append(f"{r[0]} ({r[1]})")
            else:
                copy.images[r[0]] = found
        (refused if copy.missing else out).append(copy)
    if refused:
        lines = [
            f"gallery {c.name!r}: {len(c.missing)} of {c.count} items have no stored image to embed again "
            f"(ids {', '.join(c.missing[:5])}{', ...' if len(c.missing) > 5 else ''})"
            for c in refused
        ]
        raise ReembedError(
            "the new recogniser cannot take these galleries along (nothing was changed):\n"
            + "\n".join(lines)
            + "\nre-add their images, or remove these galleries first"
        )
    return out


def _copy_one(
    copy: GalleryCopy,
    projection: np.ndarray | None,
    embed: EmbedFn,
    read_image: ReadImage,
    identity: dict[str, str] | None,
    binarize: Callable[[np.ndarray], np.ndarray],
    normalize_mapped: bool,
) -> int:
    from shitu.serving.gallery.backup import set_gallery_model_identity, staged

    meta, rows, thumbs = _read(copy.src)
    dim, metric = int(meta["dim"]), meta["metric"]
    normalize = bool(int(meta.get("normalize", "0")))
    if copy.how == "mapped":
        old = np.frombuffer(b"".join(r[5] for r in rows), "<f4").reshape(len(rows), dim)
        vectors = old @ projection
        if normalize_mapped:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    else:
        late = [r[0] for r in rows if r[0] not in copy.images]
        if late:
            raise ReembedError(f"gallery {copy.name!r}: items {late[:5]} were added while adapting; run it again")
        parts = [
            np.asarray(embed([read_image(str(copy.images[r[0]])) for r in rows[i : i + IMAGE_CHUNK]]))
            for i in range(0, len(rows), IMAGE_CHUNK)
        ]  # a chunk of images in memory at a time
        vectors = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
        if metric == "hamming":
            vectors = binarize(vectors)
    with staged(copy.dest, "reembed", ReembedError) as tmp:
        with Gallery.create(
            tmp,
            dim,
            index_method=meta["index_method"],
            dist_type="cosine" if normalize else metric,
            hamming_radius=int(meta.get("hamming_radius", 100)),
        ) as gallery:
            gallery.add(
                np.asarray(vectors),
                [r[1] for r in rows],
                sources=[r[2] for r in rows],
                metadata=[json.loads(r[3]) if r[3] else None for r in rows],
                content_hashes=[r[4] for r in rows],
                ids=[r[0] for r in rows],
            )
            gallery.checkpoint()
        if thumbs:
            _copy_thumbnails(tmp, thumbs)
        if identity is not None:
            set_gallery_model_identity(tmp, identity)
    return len(rows)


def _copy_thumbnails(folder: Path, thumbs: dict[int, bytes]) -> None:
    write_thumbnails(folder / DB_NAME, list(thumbs.items()))


def reembed_all(
    copies: list[GalleryCopy],
    *,
    projection: np.ndarray | None,
    embed: EmbedFn,
    read_image: ReadImage,
    identity: dict[str, str] | None,
    binarize: Callable[[np.ndarray], np.ndarray],
    normalize_mapped: bool = True,
) -> dict[str, Any]:
    """Carry out :func:`plan`'s copies; ``{gallery name: {"items": n, "how": ...}}``. ``embed``: images -> the new
    recogniser's vectors; ``normalize_mapped``: L2-normalise mapped vectors (``RecPostProcess.normalize``)."""
    return {
        c.name: {
            "items": _copy_one(c, projection, embed, read_image, identity, binarize, normalize_mapped),
            "how": c.how,
        }
        for c in copies
    }
