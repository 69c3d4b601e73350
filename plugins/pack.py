"""One usable pack version: its manifest, its folder and what the engine needs from it (model specs, galleries,
what is missing and how to fetch it). :mod:`.registry` finds and selects them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from shitu.plugins import runtime_check
from shitu.plugins.embedding_space import embedding_space
from shitu.plugins.errors import InvalidPack, PackConflict, PackNotFound, PackUnavailable
from shitu.plugins.gallery_spec import GallerySpec
from shitu.plugins.installer import install_hint
from shitu.plugins.manifest import GalleryEntry, Manifest, ModelEntry, join
from shitu.plugins.versions import shitu_version, version_matches

__all__ = ["Pack"]


class Pack:
    """One usable pack version: its manifest, its folder and what the engine needs from it."""

    def __init__(self, manifest: Manifest, root: Path, source: str, record: dict[str, Any] | None = None):
        self._m = manifest
        self.root = Path(root)
        self.source = source
        self.record = record
        self.name = manifest.name
        self.version = manifest.version
        self.title = manifest.title
        self.description = manifest.description
        self.license = manifest.license
        self.manifest: dict[str, Any] = copy.deepcopy(manifest.raw)
        self.params: dict[str, dict[str, Any]] = copy.deepcopy(manifest.params)
        self.default_gallery = manifest.default_gallery
        rec = manifest.models["recognizer"]
        #: Where this version's galleries live (None: ``galleries/<pack>/``); see :mod:`.embedding_space`.
        self.embedding_space = embedding_space(manifest)
        self.galleries: dict[str, GallerySpec] = {n: self._gallery_spec(g, rec) for n, g in manifest.galleries.items()}

    def __repr__(self) -> str:
        return f"Pack({self.name!r}, {self.version!r}, source={self.source!r}, root={str(self.root)!r})"

    # -- models ----------------------------------------------------------------------------------------------------
    @property
    def models(self) -> dict[str, ModelEntry]:
        return self._m.models

    @property
    def shitu_hub(self) -> str:
        return self._m.shitu_hub

    @property
    def compatible(self) -> bool:
        return version_matches(shitu_version(), self._m.shitu_hub)

    def model_dir(self, role: str) -> Path:
        return self.root / self._m.models[role].path

    def missing_files(self, role: str | None = None) -> list[str]:
        """Required model files that are not present (paths relative to the pack root)."""
        roles = [role] if role else list(self._m.models)
        out = []
        for r in roles:
            m = self._m.models[r]
            for f in m.files:
                if not f.optional and not (self.root / m.path / f.path).is_file():
                    out.append(join(m.path, f.path))
        return out

    def is_available(self) -> bool:
        """Whether every required model file is present (hashes are checked by :func:`verify`)."""
        return not self.missing_files()

    def detector_spec(self):
        """The mainbody detector as a :class:`shitu.model_spec.ModelSpec`."""
        return self._spec("detector")

    def extractor_spec(self):
        """The feature extractor (the manifest's ``recognizer``) as a ``ModelSpec``."""
        return self._spec("recognizer")

    def _spec(self, role: str):
        from shitu.model_spec import ModelSpec, ModelSpecError

        if not self.compatible:
            raise PackConflict(
                f"pack {self.name!r} {self.version} needs shitu-hub {self._m.shitu_hub}; this is {shitu_version()}"
            )
        if self.missing_files(role):
            raise PackUnavailable(self.fetch_instructions())
        entry = self._m.models[role]
        try:
            spec = ModelSpec.from_dict(copy.deepcopy(entry.description), self.root / entry.path)
        except ModelSpecError as exc:
            raise InvalidPack(f"pack {self.name!r} {self.version}: models.{role}: {exc}") from None
        if self.source != "builtin" and not runtime_check.onednn_allowed(self.record, role, entry.description):
            spec.onednn = False  # only what `shitu plugins install/verify` ran in a child process is used
        return spec

    def downloads(self) -> list[tuple[str, str, str | None]]:
        """What must be fetched for the missing model files: ``(url, file name, sha256 or None)``."""
        out: list[tuple[str, str, str | None]] = []
        for m in self._m.models.values():
            missing = [f for f in m.files if not f.optional and not (self.root / m.path / f.path).is_file()]
            if not missing:
                continue
            if m.archive:
                out.append((m.archive.url, m.archive.filename, m.archive.sha256))
            else:
                out += [(f.url, Path(f.url).name if f.url else f.path, f.sha256) for f in missing if f.url]
        return out

    def fetch_instructions(self) -> str:
        missing = self.missing_files()
        head = (
            f"pack {self.name!r} {self.version} ({self.source}, {self.root}): model files are not installed "
            f"(missing: {', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})."
        )
        if self.source == "store":
            origin = (self.record or {}).get("source") or "its folder, archive or URL"
            return (
                head + f"\nThe installed copy is damaged: run `shitu plugins remove {self.name} {self.version}` "
                f"and install it again from {origin}."
            )
        return head + "\n" + install_hint(self.name, self.downloads())

    # -- galleries -------------------------------------------------------------------------------------------------
    def _gallery_spec(self, g: GalleryEntry, rec: ModelEntry) -> GallerySpec:
        return GallerySpec(
            pack=self.name,
            name=g.name,
            title=g.title,
            description=g.description,
            embedding_size=int(rec.embedding_size or 0),
            index_method=g.index_method,
            dist_type=g.dist_type,
            delimiter=g.delimiter,
            list_file=self.root / g.list_file if g.list_file else None,
            image_root=self.root / g.image_root if g.image_root else None,
            folder=self.root / g.folder if g.folder else None,
            data_url=g.data_url,
            vectors_file=self.root / g.vectors_file if g.vectors_file else None,
            space=self.embedding_space,
        )

    def gallery(self, name: str | None = None) -> GallerySpec:
        """The gallery ``name`` (default: the pack's default gallery)."""
        key = name or self.default_gallery
        try:
            return self.galleries[key]
        except KeyError:
            raise PackNotFound(
                f"pack {self.name!r} has no gallery {key!r} (galleries: {', '.join(self.galleries)})"
            ) from None

    def gallery_dir(self, name: str | None = None) -> Path:
        """``$SHITU_HOME/galleries/<pack>/<gallery>``."""
        return self.gallery(name).dir()
