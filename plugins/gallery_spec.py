"""One gallery a scenario pack declares: where its folder is and how it is indexed (a registry value type)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shitu.plugins import store

__all__ = ["GallerySpec"]


@dataclass(frozen=True)
class GallerySpec:
    """One gallery of a pack: where its folder is and how it is indexed (input for ``Gallery.open_or_create``)."""

    pack: str
    name: str
    title: str
    description: str
    embedding_size: int
    index_method: str
    dist_type: str
    delimiter: str
    list_file: Path | None = None  # "<image path><delimiter><label>" lines, inside the pack
    image_root: Path | None = None  # the list's image paths are relative to it (default: the list's folder)
    folder: Path | None = None  # alternative to list_file: one sub-folder of images per label
    data_url: str | None = None  # where published demo images live (never downloaded automatically)
    vectors_file: Path | None = None  # precomputed embeddings (JSON) the gallery starts with
    space: str | None = None  # the recogniser's embedding space, for locally made versions (.embedding_space)

    def source(self) -> Path | None:
        """What the gallery is built from on first use (list file, folder or vectors file), if anything."""
        return self.list_file or self.folder or self.vectors_file

    def dir(self) -> Path:
        """``$SHITU_HOME/galleries/<pack>/<gallery>``, or ``galleries/<pack>+<space>/<gallery>`` for a version made
        on this machine (``SHITU_HOME`` read now; see :mod:`shitu.plugins.embedding_space`)."""
        return store.galleries_dir() / (f"{self.pack}+{self.space}" if self.space else self.pack) / self.name

    def open_args(self) -> dict[str, Any]:
        """Keyword arguments for ``shitu.serving.gallery.local.Gallery.open_or_create``."""
        return {
            "path": self.dir(),
            "dim": self.embedding_size,
            "index_method": self.index_method,
            "dist_type": self.dist_type,
        }
