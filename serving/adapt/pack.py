"""``shitu adapt LIST --pack NAME``: adapt a pack's recogniser and install the result as a new version of the pack.

1. The pack version being adapted must be in the store (a built-in or entry-point pack is installed there first,
   from its own files, so that ``rollback`` has a version to return to).
2. A projection head is trained on the list's images (:mod:`.head`) with the recognition settings the pack
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["METHODS", "adapt_pack", "train_recognizer"]

#: ``head``: a projection head on frozen features; ``finetune``: the head, then the network's last layers too.
METHODS = ("head", "finetune")


def _centre_of(engine: Any) -> np.ndarray | None:
    """The vector the extractor subtracts after pooling, where the parameter schema has one
    (``RecPostProcess.centering``); fine-tuning must subtract it too to train what is served."""
    get = getattr(engine.extractor, "centering", None)
    if get is None:
        return None
    try:
        name = engine.params["RecPostProcess.centering"]
    except (KeyError, ValueError):  # not a parameter of this schema
        return None
    return get(name)


def framed_embedder(src: Path, embed: Callable[[Sequence[np.ndarray]], np.ndarray], params: Any) -> Any:
    """``embed`` framing images as gallery ``src`` records (whole images for one that records none)."""
    from shitu.serving.engine.framing import Framing, fill_colour
    from shitu.serving.engine.gallery_rules import FramedEmbedder
    from shitu.serving.gallery.settings import read_settings

    framing = Framing.from_dict(read_settings(src).get("framing")) or Framing("whole_image", 0.0)
    return FramedEmbedder(embed, framing, fill_colour(params["RecPreProcess.transform_ops"]))


def carry_and_recalibrate(src: Path, dest: Path) -> float | None:
    """Record ``src``'s framing rule in its copy ``dest`` and compute the copy's ``score_thres: auto`` (the adapted
    recogniser's scores have another scale); the new threshold (``None``: no estimate)."""
    from shitu.serving.engine.calibration import calibrate
    from shitu.serving.gallery.local import Gallery
    from shitu.serving.gallery.settings import read_settings, update_settings

    framing = read_settings(src).get("framing")
    with Gallery.open(dest) as g:
        record = calibrate(g)
        update_settings(g, framing=framing, score_thres=record)
    return record["auto"] if record else None


def train_recognizer(
    engine: Any,
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    backgrounds: Sequence[np.ndarray],
    out: Path,
    *,
    method: str = "head",
    views: int = 12,
    steps: int = 300,
    finetune_steps: int = 40,
    seed: int = 0,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Train ``engine``'s recogniser on the images and write the new recogniser folder ``out``.

    Returns ``{"report", "head", "finetuned"}``: the last stage's :class:`~.adapt.AdaptReport`, the head trained
    on top of the engine's current one (what maps the old vectors when the network is unchanged), and whether
    the network itself changed."""
    from shitu.serving.adapt.head import adapt, write_recognizer

    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    p = engine.params
    raw = p.override({"RecPostProcess.normalize": False, "RecPostProcess.binarize": False})
    matrix, report = adapt(
        lambda imgs: engine.extractor.embed(imgs, raw),
        images,
        labels,
        backgrounds,
        per_image=views,
        steps=steps,
        seed=seed,
    )
    log(
        f"head: {report.classes} labels, {report.train_views} training views, {report.steps} steps "
        f"({report.seconds:.0f} s): held-out R@1 {report.heldout_r1_before:.3f} -> {report.heldout_r1_after:.3f}"
    )
    pooling = p["RecPostProcess.pooling"] or engine.extractor.spec.pooling
    centering = p["RecPostProcess.centering"] or engine.extractor.spec.centering
    head = matrix if engine.extractor.projection is None else engine.extractor.projection @ matrix
    if method == "head":
        write_recognizer(engine.extractor.spec, pooling, head, out, report, centering=centering)
        return {"report": report, "head": matrix, "finetuned": False}
    from shitu.serving.adapt.finetune import finetune, save_network

    net, ft = finetune(
        engine.extractor.spec,
        pooling,
        p["RecPostProcess.gem_power"],
        head,
        images,
        labels,
        backgrounds,
        steps=finetune_steps,
        seed=seed,
        centre=_centre_of(engine),
        log=log,
    )
    log(
        f"fine-tune: {ft.steps} steps ({ft.seconds:.0f} s): held-out R@1 {ft.heldout_r1_before:.3f} -> "
        f"{ft.heldout_r1_after:.3f}"
    )
    ft.heldout_r1_before = report.heldout_r1_before  # before any adapting, as the head's report gives it
    write_recognizer(
        engine.extractor.spec,
        pooling,
        net.head.numpy().astype(np.float32),
        out,
        ft,
        save_network=lambda d: save_network(net, engine.extractor.spec, d),
        centering=centering,
    )
    return {"report": ft, "head": matrix, "finetuned": True}


def adapt_pack(
    name: str,
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    backgrounds: Sequence[np.ndarray],
    *,
    method: str = "head",
    views: int = 12,
    steps: int = 300,
    finetune_steps: int = 40,
    seed: int = 0,
    make_current: bool = True,
    image_files: Sequence[Path] = (),
    params: dict[str, Any] | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Train, stage, carry the galleries over, install; returns what was done (version, report, galleries).

    ``image_files``: images (the training list's, any the user points to) in which gallery items are looked up by
    content hash when they must be embedded again."""
    from shitu.files import sha256_file
    from shitu.model_spec import ModelSpec
    from shitu.plugins import adapted_version, registry, store
    from shitu.plugins.embedding_space import embedding_space
    from shitu.plugins.errors import PackError
    from shitu.serving.engine import load_engine
    from shitu.serving.engine.engine import runtime_options
    from shitu.serving.engine.extraction import FeatureExtractor, binarize, l2_normalize
    from shitu.serving.engine.images import load
    from shitu.serving.gallery.backup import model_identity
    from shitu.serving.gallery.pack_gallery import read_vectors, write_vectors
    from shitu.serving.gallery.reembed import locator, plan, reembed_all

    pack = registry.get_pack(name)
    engine = load_engine(pack.name, params=params)
    try:
        p = engine.params
        finetuning = method == "finetune"
        shipped = [g.name for g in pack.galleries.values() if g.vectors_file is not None]
        if finetuning and shipped:
            raise PackError(
                f"pack {pack.name!r} ships gallery vectors ({', '.join(shipped)}) that only a projection "
                "head can carry over; adapt it with --method head"
            )
        old_root = pack.gallery_dir(pack.default_gallery).parent
        locate = locator({sha256_file(f): Path(f) for f in image_files})
        plan(old_root, None, mappable=not finetuning, old_identity=model_identity(engine.extractor.spec), locate=locate)
        base, installed = adapted_version.ensure_in_store(pack.name)
        if installed:
            log(f"installed {base.name} {base.version} into the store, so that rollback can return to it")
        version = adapted_version.next_version(base.name, base.version)
        dim = engine.embedding_size
        store.home().mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".adapt-", dir=store.home()) as tmp:
            trained = train_recognizer(
                engine,
                images,
                labels,
                backgrounds,
                Path(tmp) / "rec",
                method=method,
                views=views,
                steps=steps,
                finetune_steps=finetune_steps,
                seed=seed,
                log=log,
            )
            report, matrix = trained["report"], trained["head"]

            def rewrite_vectors(path: Path) -> None:
                old = read_vectors(path, dim)
                write_vectors(
                    path,
                    l2_normalize(old.vectors @ matrix),
                    old.labels,
                    old.sources,
                    f"{base.name} {version}",
                    thumbnails=old.thumbnails,
                )

            pooling = p["RecPostProcess.pooling"] or engine.extractor.spec.pooling
            trained_with = {"RecPostProcess": {"pooling": pooling, "gem_power": p["RecPostProcess.gem_power"]}}
            manifest = adapted_version.stage(
                base,
                Path(tmp) / "rec",
                Path(tmp) / "pack",
                version=version,
                params=trained_with,
                note=f"{method}: held-out R@1 {report.heldout_r1_before:.3f} -> {report.heldout_r1_after:.3f} on "
                f"{report.classes} labels",
                rewrite_vectors=None if trained["finetuned"] else rewrite_vectors,
            )
            new_root = store.galleries_dir() / f"{base.name}+{embedding_space(manifest)}"
            new_spec = ModelSpec.from_dir(Path(tmp) / "pack" / manifest.models["recognizer"].path, "extractor")
            new_extractor = FeatureExtractor(
                new_spec.with_transform_ops(p["RecPreProcess.transform_ops"]), runtime_options(p, "rec")
            )
            copies = plan(
                old_root,
                new_root,
                mappable=not trained["finetuned"],
                old_identity=model_identity(engine.extractor.spec),
                locate=locate,
            )
            galleries = {}
            for copy in copies:  # each with its own framing rule, recalibrated after (issue #28)
                galleries.update(
                    reembed_all(
                        [copy],
                        projection=matrix,
                        embed=framed_embedder(copy.src, lambda imgs: new_extractor.embed(imgs, p), p),
                        read_image=lambda s: load(s),
                        identity=model_identity(new_spec),
                        binarize=binarize,
                        normalize_mapped=p["RecPostProcess.normalize"],
                    )
                )
                galleries[copy.name]["score_thres"] = carry_and_recalibrate(copy.src, copy.dest)
            for gname, done in galleries.items():
                log(
                    f"gallery {gname}: {done['items']} items carried over ({done['how']}), score_thres auto "
                    f"{done['score_thres']}"
                )
            info = adapted_version.install_staged(Path(tmp) / "pack", make_current=make_current)
    finally:
        engine.close()
    return {
        "name": info.name,
        "version": info.version,
        "base_version": base.version,
        "current": make_current,
        "report": report,
        "galleries": galleries,
    }
