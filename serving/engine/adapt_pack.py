"""``shitu adapt LIST --pack NAME``: adapt a pack's recogniser and install the result as a new version of the pack.

1. The pack version being adapted must be in the store (a built-in or entry-point pack is installed there first,
   from its own files, so that ``rollback`` has a version to return to).
2. A projection head is trained on the list's images (:mod:`.adapt`) with the recognition settings the pack
   resolves to (pooling, GeM power, pre-processing are read from the pack, never assumed).
3. A new version ``<release>+adapt.<n>`` is staged (:mod:`shitu.plugins.adapted_version`): the recogniser folder
   with the head, every file hashed in the manifest, galleries shipped as vectors mapped through the head.
4. The galleries of the adapted version (``$SHITU_HOME/galleries/<pack>[+<space>]/*``, the pack's and the user's)
   are carried into the new version's own folder (:mod:`shitu.serving.gallery.reembed`): mapped through the head,
   or embedded again from their stored images; a gallery that can be neither stops everything before any change.
5. The version is installed by the ordinary installer (hash checks, a test run of each model in a child process,
   one ``rename`` under the store's lock) and made current unless ``make_current=False``.

``shitu plugins use NAME VERSION`` / ``shitu plugins rollback NAME`` then switch recogniser and galleries together.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["adapt_pack", "ensure_in_store"]


def ensure_in_store(name: str) -> tuple[Any, bool]:
    """The current version of pack ``name``, installed into the store first when it is not there; (pack, installed)."""
    from shitu.plugins import registry, store

    pack = registry.get_pack(name)
    if pack.source == "store":
        return pack, False
    if store.installed_versions(pack.name):  # the store has other versions: add this one beside them
        registry.install(str(pack.root), name=pack.name, progress=False)
    else:
        registry.install(pack.name, name=pack.name, progress=False)
    return registry.get_pack(pack.name, pack.version), True


def adapt_pack(name: str, images: Sequence[np.ndarray], labels: Sequence[str], backgrounds: Sequence[np.ndarray], *,
               views: int = 12, steps: int = 300, seed: int = 0, make_current: bool = True,
               params: dict[str, Any] | None = None, log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Train, stage, carry the galleries over, install; returns what was done (version, report, galleries)."""
    from shitu.model_spec import ModelSpec
    from shitu.plugins import adapted_version, store
    from shitu.plugins.embedding_space import embedding_space
    from shitu.serving.engine import load_engine
    from shitu.serving.engine.adapt import adapt, write_recognizer
    from shitu.serving.engine.extraction import binarize, l2_normalize
    from shitu.serving.engine.images import load
    from shitu.serving.gallery.backup import model_identity
    from shitu.serving.gallery.pack_gallery import read_vectors, write_vectors
    from shitu.serving.gallery.reembed import plan, reembed_all

    base, installed = ensure_in_store(name)
    if installed:
        log(f"installed {base.name} {base.version} into the store, so that rollback can return to it")
    engine = load_engine(base.name, params=params)
    try:
        p = engine.params
        raw = p.override({"RecPostProcess.normalize": False, "RecPostProcess.binarize": False})
        matrix, report = adapt(lambda imgs: engine.extractor.embed(imgs, raw), images, labels, backgrounds,
                               per_image=views, steps=steps, seed=seed)
        log(f"{report.classes} labels, {report.train_views} training views, {report.steps} steps "
            f"({report.seconds:.0f} s): held-out R@1 {report.heldout_r1_before:.3f} -> {report.heldout_r1_after:.3f}")
        pooling = p["RecPostProcess.pooling"] or engine.extractor.spec.pooling
        head = matrix if engine.extractor.projection is None else engine.extractor.projection @ matrix
        version = adapted_version.next_version(base.name, base.version)
        dim = engine.embedding_size

        def rewrite_vectors(path: Path) -> None:
            vectors, vlabels, sources = read_vectors(path, dim)
            write_vectors(path, l2_normalize(vectors @ matrix), vlabels, sources, f"{base.name} {version}")

        def embed_new(imgs: list[np.ndarray]) -> np.ndarray:
            out = engine.extractor.embed(imgs, raw) @ matrix
            return l2_normalize(out) if p["RecPostProcess.normalize"] else out

        store.home().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".adapt-", dir=store.home()) as tmp:
            rec_dir = write_recognizer(engine.extractor.spec, pooling, head, Path(tmp) / "rec", report)
            trained_with = {"RecPostProcess": {"pooling": pooling, "gem_power": p["RecPostProcess.gem_power"]}}
            manifest = adapted_version.stage(
                base, rec_dir, Path(tmp) / "pack", version=version, params=trained_with,
                note=f"held-out R@1 {report.heldout_r1_before:.3f} -> {report.heldout_r1_after:.3f} on "
                     f"{report.classes} labels", rewrite_vectors=rewrite_vectors)
            old_root = base.gallery_dir(base.default_gallery).parent
            new_root = store.galleries_dir() / f"{base.name}+{embedding_space(manifest)}"
            staged_rec = ModelSpec.from_dir(Path(tmp) / "pack" / manifest.models["recognizer"].path, "extractor")
            copies = plan(old_root, new_root, mappable=True, old_identity=model_identity(engine.extractor.spec))
            galleries = reembed_all(copies, projection=matrix, embed=embed_new, read_image=lambda s: load(s),
                                    identity=model_identity(staged_rec), binarize=binarize,
                                    normalize_mapped=p["RecPostProcess.normalize"])
            for gname, done in galleries.items():
                log(f"gallery {gname}: {done['items']} items carried over ({done['how']})")
            info = adapted_version.install_staged(Path(tmp) / "pack", make_current=make_current)
    finally:
        engine.close()
    return {"name": info.name, "version": info.version, "base_version": base.version, "current": make_current,
            "report": report, "galleries": galleries}
