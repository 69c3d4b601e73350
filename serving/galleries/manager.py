"""The gallery manager: which gallery a name means, opening or creating it, and what may write into it.

An :class:`~shitu.serving.engine.engine.Engine` has one (``engine.galleries``). It owns

- **names** -- a request picks a gallery by name (``GALLERY_NAME``, never a path); the default gallery may live in
  ``IndexProcess.index_dir``, the others under the scenario's gallery folder, or in a Milvus collection;
- **open / create** -- a bounded cache of open galleries (:mod:`.open_galleries`); a folder path and the default
  gallery are created empty on first use, another name must exist unless the caller creates it (adding images);
- **model identity** -- the recogniser that made a gallery's vectors, recorded in the gallery and checked on open
  (scores between two embedding spaces mean nothing);
- **pack galleries** -- the galleries a scenario pack declares, built on first use from its image list or shipped
  vectors;
- **thumbnails** -- stored beside the images added, for browsing a gallery.

It knows nothing of models: the engine hands it the embedding size, the recogniser's :class:`ModelSpec` and an
``embed`` function.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shitu.echo import clip
from shitu.errors import InvalidArgument
from shitu.model_spec import ModelSpec
from shitu.names import GALLERY_NAME
from shitu.params import Params
from shitu.serving.galleries.open_galleries import OpenGalleries

if TYPE_CHECKING:
    from shitu.plugins.gallery_spec import GallerySpec
    from shitu.serving.gallery.backend import GalleryBackend

__all__ = ["GalleryManager", "GalleryRequestError"]


class GalleryRequestError(InvalidArgument):
    """A request names a gallery that cannot be used: a bad or unknown name, another recogniser's vectors, a pack
    gallery that cannot be built."""


class GalleryManager:
    """Gallery names, open/create, model identity, pack galleries and thumbnails of one engine."""

    def __init__(
        self,
        params: Params,
        embedding_size: int,
        extractor: ModelSpec,
        embed: Callable[[Sequence[np.ndarray]], np.ndarray],
        *,
        gallery_root: Path | None = None,
        default_gallery: str = "default",
        scenario: str = "custom",
        gallery_specs: dict[str, GallerySpec] | None = None,
        pack_extractor: ModelSpec | None = None,
    ):
        self.params = params
        self.embedding_size = embedding_size
        self.extractor = extractor
        #: The scenario pack's own recogniser, which made the vectors a pack ships (``vectors_file``); differs from
        #: the extractor when ``Global.rec_inference_model_dir`` replaced it.
        self.pack_extractor = pack_extractor or extractor
        self._embed = embed
        self.gallery_root = Path(gallery_root) if gallery_root else None
        self.default_gallery = default_gallery
        self.scenario = scenario
        #: The scenario pack's declared galleries (name -> GallerySpec): built on first use, with their own
        #: index_method / dist_type (shitu.serving.gallery.pack_gallery).
        self.specs: dict[str, GallerySpec] = dict(gallery_specs or {})
        self.open = OpenGalleries(params["Limits.max_open_galleries"])
        self._identities: dict[tuple[str, str | None], dict[str, str]] = {}  # by (model folder, projection)
        self._lock = threading.Lock()

    # -- names -----------------------------------------------------------------------------------------------------
    def path(self, name: str | None = None) -> Path:
        """Folder of gallery ``name`` (a name, never a path: requests pick galleries by name)."""
        name = name or self.default_gallery
        if not GALLERY_NAME.match(name):
            raise GalleryRequestError(f"invalid gallery name {clip(name)}: use letters, digits, '_', '-', '.' (max 64)")
        if name == self.default_gallery and self.params["IndexProcess.index_dir"]:
            return Path(self.params["IndexProcess.index_dir"])
        if self.gallery_root is None:
            raise GalleryRequestError("this engine has no gallery folder; pass gallery= or set IndexProcess.index_dir")
        return self.gallery_root / name

    def _missing(self, name: object) -> GalleryRequestError:
        return GalleryRequestError(
            f"no gallery named {name!r} in scenario {self.scenario!r} (adding images creates it)"
        )

    # -- open / create ---------------------------------------------------------------------------------------------
    def get(self, name: str | Path | GalleryBackend | None = None, create: bool = False) -> GalleryBackend:
        """The open gallery ``name``, or a folder path, or an index object as is.

        A folder path and the default gallery are created empty on first use; another gallery *name* must exist
        unless ``create`` (adding images creates it), so a mistyped name in a request is an error, not a new folder.
        """
        if name is not None and not isinstance(name, (str, Path)):
            return name
        from shitu.serving.gallery.backend import is_remote, remote_gallery_uri

        index_dir = self.params["IndexProcess.index_dir"]
        uri = name if isinstance(name, str) and is_remote(name) else None
        if uri is None and not isinstance(name, Path):
            uri = remote_gallery_uri(name, self.default_gallery, index_dir)
        if uri is not None:
            return self._remote(uri, name, create)
        path = Path(name) if isinstance(name, Path) else self.path(name)
        key = str(path.resolve())
        spec = None
        with self._lock:
            if key not in self.open:
                from shitu.serving.gallery.local import DB_NAME

                spec = self._declared(name, path)
                named = isinstance(name, str) and name != self.default_gallery
                new = not (path / DB_NAME).is_file()
                if named and not create and new and spec is None:
                    raise self._missing(name)
                if named and new:
                    self._check_room(path.parent)
            gallery: GalleryBackend = self.open.get(key, lambda: self._open_folder(path, spec))
            return gallery

    def _check_room(self, root: Path) -> None:
        """Refuse a new named gallery beyond ``Limits.max_galleries`` galleries in ``root`` (the scenario's)."""
        from shitu.serving.gallery.local import DB_NAME

        limit = self.params["Limits.max_galleries"]
        if root.is_dir() and sum(1 for d in root.iterdir() if (d / DB_NAME).is_file()) >= limit:
            raise GalleryRequestError(
                f"scenario {self.scenario!r} holds {limit} galleries, the limit (Limits.max_galleries): add to an "
                "existing gallery or remove one"
            )

    def _open_folder(self, path: Path, spec: GallerySpec | None = None) -> GalleryBackend:
        """Open or create the gallery folder ``path``; ``spec``: the pack's declaration, whose index wins."""
        from shitu.serving.gallery.backup import describe_model, gallery_model_identity, remember_model, same_model
        from shitu.serving.gallery.local import Gallery

        binary = self.params["RecPostProcess.binarize"]
        gallery = Gallery.open_or_create(
            path,
            self.embedding_size,
            index_method=spec.index_method if spec else self.params["IndexProcess.index_method"],
            dist_type="hamming" if binary else (spec.dist_type if spec else self.params["IndexProcess.dist_type"]),
            hamming_radius=self.params["IndexProcess.hamming_radius"],
            max_label_length=self.params["Limits.max_label_length"],
        )
        gallery.record_cache_capacity = self.params["Limits.gallery_record_cache"]
        recorded = gallery_model_identity(path)
        if recorded is not None and not same_model(recorded, self.model_identity):
            gallery.close()
            raise GalleryRequestError(
                f"gallery {path.name!r} holds vectors of model {describe_model(recorded)}, not of this engine's "
                f"recogniser {describe_model(self.model_identity)}: scores between two embedding spaces mean nothing. "
                "Use it with the recogniser that built it, or build a gallery with this one (shitu gallery build)"
            )
        remember_model(path, self.extractor)  # what made the vectors, checked here and by export/import
        return gallery

    def _remote(self, uri: str, name: str | Path | None, create: bool) -> GalleryBackend:
        """The gallery in a Milvus collection (``shitu.serving.gallery.milvus``); as for folders, only the
        default gallery and ``create`` make a missing one."""
        from shitu.serving.gallery.milvus import MilvusGallery

        with self._lock:
            if uri not in self.open:
                named = isinstance(name, str) and name != self.default_gallery and uri != name
                if named and not create and not MilvusGallery.exists(uri):
                    raise self._missing(name or uri)
            binary = self.params["RecPostProcess.binarize"]
            gallery: GalleryBackend = self.open.get(
                uri,
                lambda: MilvusGallery.open_or_create(
                    uri,
                    self.embedding_size,
                    index_method=self.params["IndexProcess.index_method"],
                    dist_type="hamming" if binary else self.params["IndexProcess.dist_type"],
                    hamming_radius=self.params["IndexProcess.hamming_radius"],
                    max_label_length=self.params["Limits.max_label_length"],
                ),
            )
            return gallery

    def close(self) -> None:
        with self._lock:
            self.open.close()

    # -- model identity --------------------------------------------------------------------------------------------
    @property
    def model_identity(self) -> dict[str, str]:
        """The recogniser's model identity (weights and projection sha256, :mod:`shitu.serving.gallery.backup`): a
        gallery that records another one is refused."""
        return self._identity_of(self.extractor)

    def maker_of(self, spec: GallerySpec) -> dict[str, str]:
        """The model identity of what makes the vectors of the pack's declared gallery ``spec`` when it is built:
        the pack's own recogniser for the vectors it ships (``vectors_file``), else this engine's, which embeds the
        images of its list."""
        return self._identity_of(self.pack_extractor) if spec.vectors_file is not None else self.model_identity

    def _identity_of(self, spec: ModelSpec) -> dict[str, str]:
        """:func:`~shitu.serving.gallery.backup.model_identity` of ``spec``, hashed once per model folder (the pack's
        recogniser is usually the engine's own)."""
        key = (str(Path(spec.model_dir).resolve()), spec.projection)
        if key not in self._identities:
            from shitu.serving.gallery.backup import model_identity

            self._identities[key] = model_identity(spec)
        return self._identities[key]

    # -- pack galleries --------------------------------------------------------------------------------------------
    def _declared(self, name: str | Path | None, path: Path) -> GallerySpec | None:
        """The pack's declaration of gallery ``name`` when ``path`` is its folder, built now if it declares content
        and has no folder yet (None for folders and undeclared names)."""
        spec = self.specs.get(name or self.default_gallery) if not isinstance(name, Path) else None
        if spec is None or Path(spec.dir()).resolve() != path.resolve():
            return None
        from shitu.serving.gallery.backup import remember_model
        from shitu.serving.gallery.local import GalleryError
        from shitu.serving.gallery.pack_gallery import ensure_built

        try:
            built_now = ensure_built(
                spec,
                self._embed,
                self.embedding_size,
                max_label_length=self.params["Limits.max_label_length"],
                identity=self.maker_of(spec),
            )
            if not built_now:
                remember_model(path, self.pack_extractor)  # built before galleries recorded it: by the pack's own
        except GalleryError as exc:  # the details name files on this machine: point to the command that shows them
            first = str(exc).splitlines()[0]
            source = spec.source()
            raise GalleryRequestError(
                f"gallery {spec.name!r} of scenario {self.scenario!r} cannot be built from the pack's "
                f"{source.name if source else 'files'} ({first.split(';')[0]}); `shitu gallery build --scenario "
                f"{self.scenario} --gallery {spec.name}` on the server shows why"
            ) from None
        return spec

    # -- thumbnails ------------------------------------------------------------------------------------------------
    @staticmethod
    def store_thumbnails(gallery: GalleryBackend, ids: Sequence[int], images: Sequence[np.ndarray]) -> None:
        """Thumbnails of the images just added, for browsing the gallery (web page); never fails the add."""
        from shitu.serving.gallery import thumbnails

        thumbnails.store(gallery, list(ids), list(images))
