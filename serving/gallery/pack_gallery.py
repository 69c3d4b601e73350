"""A scenario pack's declared galleries, built the first time they are used (or with ``shitu gallery build``).

A pack's ``pack.yaml`` may give each gallery its content: a ``list_file`` (PaddleClas ``path<TAB>label`` lines),
a ``folder`` (one sub-folder of images per label) or a ``vectors_file`` (embeddings computed by the pack's own
recogniser, JSON; how general-lite ships its demo gallery). :func:`ensure_built` turns that into the gallery
folder ``$SHITU_HOME/galleries/<pack>/<gallery>`` with the gallery's declared ``index_method`` and ``dist_type``,
once: a gallery folder that exists is used as it is (its later changes are the user's).

The build happens in a hidden sibling folder that is renamed into place when complete, so a process killed
halfway, or two workers building at once, never leave half a gallery behind. Bad list lines stop the build
before anything is created, all of them reported at once with the pack file's name and line number.

Vectors file format (``format`` 1)::

    {"format": 1, "dim": 512, "model": "nanodet-g-backbone-embed", "metric": "IP",
     "items": [{"label": "cat", "source": "skimage.data.chelsea", "vector": [0.01, ...],
                "thumbnail": "<base64 JPEG, optional>"}, ...]}

An item's ``thumbnail`` (what the web page's gallery view shows; a pack ships no images, only embeddings) is
stored with the item when the gallery is built.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from shitu.serving.gallery.list_file import DEFAULT_MAX_LABEL_LENGTH
from shitu.serving.gallery.local import DB_NAME, Gallery, GalleryError

VECTORS_FORMAT = 1
EmbedFn = Callable[[list[np.ndarray]], np.ndarray]


def is_built(spec: Any) -> bool:
    """Whether the gallery folder of ``spec`` (a :class:`shitu.plugins.registry.GallerySpec`) holds a gallery."""
    return (spec.dir() / DB_NAME).is_file()


class PackVectors(NamedTuple):
    """A vectors file's items: ``vectors`` [n, dim] float32, and per item its label, source and thumbnail."""

    vectors: np.ndarray
    labels: list[str]
    sources: list[str | None]
    thumbnails: list[bytes | None]


def read_vectors(path: str | os.PathLike, dim: int) -> PackVectors:
    """The items of a vectors file; errors name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GalleryError(f"{path}: cannot read the gallery vectors: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != VECTORS_FORMAT or not isinstance(data.get("items"), list):
        raise GalleryError(f"{path}: not a gallery vectors file (format {VECTORS_FORMAT} with 'items')")
    if data.get("dim") != dim:
        raise GalleryError(f"{path}: vectors of dimension {data.get('dim')}, the recogniser gives {dim}")
    try:
        vectors = np.asarray([item["vector"] for item in data["items"]], np.float32).reshape(-1, dim)
        labels = [str(item["label"]) for item in data["items"]]
        thumbs = [
            base64.b64decode(t, validate=True) if (t := item.get("thumbnail")) else None for item in data["items"]
        ]
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise GalleryError(f"{path}: bad item: {exc}") from None
    sources = [item.get("source") for item in data["items"]]
    return PackVectors(vectors, labels, sources, thumbs)


def write_vectors(
    path: str | os.PathLike,
    vectors: np.ndarray,
    labels: Sequence[str],
    sources: Sequence[str | None],
    model: str,
    metric: str = "IP",
    thumbnails: Sequence[bytes | None] | None = None,
) -> None:
    """Write a vectors file (6 decimals: cosine scores change by less than 1e-5)."""
    vectors = np.asarray(vectors, np.float32)
    items: list[dict[str, Any]] = [
        {"label": lab, "source": src, "vector": [round(float(x), 6) for x in vec]}
        for lab, src, vec in zip(labels, sources, vectors)
    ]
    for item, thumb in zip(items, thumbnails or ()):
        if thumb:
            item["thumbnail"] = base64.b64encode(thumb).decode()
    doc = {"format": VECTORS_FORMAT, "dim": int(vectors.shape[1]), "model": model, "metric": metric, "items": items}
    Path(path).write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")


def ensure_built(
    spec: Any,
    embed_fn: EmbedFn,
    dim: int,
    *,
    max_label_length: int = DEFAULT_MAX_LABEL_LENGTH,
    progress: bool = False,
    skip_bad: bool = False,
    identity: dict[str, str] | None = None,
) -> bool:
    """Build the declared gallery ``spec`` if its folder has none yet; return whether it was built now.

    ``identity``: the model identity of the recogniser that made its vectors (``embed_fn``'s, or the pack's own for
    a ``vectors_file``), recorded in the gallery (:mod:`.backup`). Galleries that declare no content are left
    alone (they start empty, created by the first ``add``)."""
    source = spec.source()
    if source is None or is_built(spec):
        return False
    from shitu.serving.gallery.build import GalleryBuildError, all_bad, build_from_entries
    from shitu.serving.gallery.list_file import GalleryFileError, read_entries

    entries: list[Any] = []
    if spec.vectors_file is None:
        errors: list[GalleryFileError] = []  # bad lines and missing images, all of them
        entries = read_entries(source, spec.image_root, spec.delimiter, errors, max_label_length=max_label_length)
        if errors and not skip_bad:
            raise GalleryBuildError(all_bad(errors, entries))
    target = spec.dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    thumbs: list[tuple[int, bytes]] = []  # (item id, JPEG) the vectors file ships
    staging = target.parent / f".{target.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if progress:
        print(
            f"building gallery {spec.pack}/{spec.name} from {source.name} ({spec.index_method}, {spec.dist_type}) ...",
            file=sys.stderr,
        )
    try:
        with Gallery.create(
            staging, dim, index_method=spec.index_method, dist_type=spec.dist_type, max_label_length=max_label_length
        ) as gallery:
            if spec.vectors_file is not None:
                shipped = read_vectors(spec.vectors_file, dim)
                ids = gallery.add(shipped.vectors, shipped.labels, sources=shipped.sources)
                thumbs = [(i, t) for i, t in zip(ids, shipped.thumbnails) if t]
            else:
                build_from_entries(gallery, entries, embed_fn, skip_bad=skip_bad, progress=progress)
                framing = getattr(embed_fn, "framing", None)  # the rule embed_fn framed the images with (#28)
                if framing is not None:
                    from shitu.serving.gallery.settings import update_settings

                    update_settings(gallery, framing=framing.as_dict())
            gallery.checkpoint()
        if thumbs:
            from shitu.serving.gallery.store import write_thumbnails

            write_thumbnails(staging / DB_NAME, thumbs)
        if identity is not None:
            from shitu.serving.gallery.backup import set_gallery_model_identity

            set_gallery_model_identity(staging, identity)
        try:
            os.rename(staging, target)
        except OSError:
            if not is_built(spec):  # not another process's build that won the race
                raise
            return False
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True
