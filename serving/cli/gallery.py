"""``shitu gallery build|add|remove|list|info|search|compact|repair|migrate`` on a gallery folder or Milvus URI
(``backup``, ``restore``, ``export``, ``import`` and ``import-paddleclas`` are in :mod:`.gallery_ops`).

``register(subparsers)`` adds the ``gallery`` command to the ``shitu`` CLI. faiss, OpenCV and the engine are
imported inside the commands, so ``shitu --help`` stays fast.

Examples::

    shitu gallery build ./my_gallery gallery/list.txt               # PaddleClas list file (path<TAB>label)
    shitu gallery build ./my_gallery photos/                        # folder tree label/image.jpg
    shitu gallery add ./my_gallery new.jpg other.jpg --label "Coca Cola"
    shitu gallery search ./my_gallery query.jpg -k 3
    shitu gallery remove ./my_gallery --label "Coca Cola"
    shitu gallery info ./my_gallery --json
    shitu gallery migrate ./my_gallery milvus://127.0.0.1:19530/shop   # to Milvus (and back the same way)
    shitu gallery build --gallery mine my_photos/                   # a named gallery of the scenario
    shitu gallery list --gallery mine --labels [--server http://127.0.0.1:8866]

One grammar in every subcommand: GALLERY is a folder (or URI); ``--gallery NAME`` names a gallery of the scenario
as the engine sees it (the pack's declared galleries and every gallery folder of the scenario, those a server made
included), or with ``--server`` a gallery of that server; neither is the default gallery. With ``--gallery`` every
positional is a SOURCE / IMAGE. The options are the same with and without ``--server``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from shitu.serving.cli.toolkit import (
    EXIT_NOTHING,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_gallery_option,
    add_param_option,
    add_token_option,
    fail,
    gallery_target,
    guard,
    param_overrides,
    print_info,
    take_gallery,
)


def _guard(fn: Any) -> Any:
    """The toolkit's :func:`guard`, after ``--scenario NAME --gallery NAME`` is resolved to the pack's folder."""

    def resolved(args: argparse.Namespace) -> int:
        _resolve_pack_gallery(args)
        return fn(args)

    resolved.__name__, resolved.__doc__ = fn.__name__, fn.__doc__
    return guard(resolved)


#: The positionals that follow GALLERY, by subcommand: with ``--gallery`` they start with the value argparse gave
#: GALLERY (:func:`~shitu.serving.cli.toolkit.take_gallery`).
REST_OF = {"build": "sources", "add": "sources", "search": "images"}
#: Subcommands that create the gallery ``--gallery NAME`` names when it does not exist yet.
CREATING = ("build",)


def _resolve_pack_gallery(args: argparse.Namespace) -> None:
    """GALLERY (a folder or Milvus URI) or ``--gallery NAME|DIR`` (:func:`resolve_gallery`'s rule: a folder, a
    URI, else a gallery name of ``--scenario``'s pack, as the engine sees it: :func:`named_gallery`); neither: the
    pack's default gallery. Sets ``args.gallery`` to the folder or URI and ``args.pack_gallery`` to the pack's
    declaration (or None).

    A gallery the pack brings (``list_file`` / ``folder`` / ``vectors_file`` in its ``pack.yaml``) is built here
    first if it has no folder yet, with its declared ``index_method`` and ``dist_type`` (except by ``build``, which
    builds it itself)."""
    command = getattr(args, "gallery_command", None)
    args.gallery, spec = gallery_target(args, REST_OF.get(command or ""), create=command in CREATING)
    args.pack_gallery = spec
    if spec is not None and spec.source() is not None and command != "build":
        from shitu.serving.gallery.build import embed_images_fn
        from shitu.serving.gallery.pack_gallery import ensure_built, is_built

        if not is_built(spec):
            engine = _load_engine(args)
            try:
                ensure_built(
                    spec, embed_images_fn(engine), engine.embedding_size, progress=True, identity=engine.maker_of(spec)
                )
            finally:
                engine.close()


def _open(target: Any, **kw: Any) -> Any:
    """The gallery ``target``: a folder, or a ``milvus://host:port/collection`` URI."""
    from shitu.serving.gallery.backend import open_gallery

    return open_gallery(target, **kw)


def _load_engine(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Any:
    from shitu.serving.engine.engine import load_engine

    params = {**(extra or {}), **param_overrides(getattr(args, "param", None))}
    kwargs: dict[str, Any] = {"params": params or None}
    if getattr(args, "scenario", None):
        kwargs["scenario"] = args.scenario
    return load_engine(**kwargs)


def _decode_fn(engine: Any):
    """The engine's image decoder with its limits (``Limits.max_image_bytes``, ``Limits.max_pixels``)."""
    from shitu.serving.engine.images import ImageLimits, decode

    limits = ImageLimits.from_params(engine.params)
    return lambda data: decode(data, limits)


def _probe_dim(engine: Any) -> tuple[int, bool]:
    """The embedding width (bits for binary embeddings) and whether embeddings are binary."""
    import numpy as np

    out = np.asarray(engine.embed([np.full((64, 64, 3), 127, np.uint8)]))
    if out.dtype == np.uint8:
        return int(out.shape[1]) * 8, True
    return int(out.shape[1]), False


def _print_report(report: Any, gallery: Any, as_json: bool) -> None:
    from shitu.serving.gallery.build import format_bad

    if as_json:
        print(
            json.dumps(
                {
                    "added": report.added,
                    "skipped_existing": report.skipped_existing,
                    "bad": [list(b) for b in report.bad],
                    "count": len(gallery),
                }
            )
        )
        return
    print(f"{gallery.path}: {report.summary()}; {len(gallery)} items")
    if report.bad:
        print("skipped bad entries:\n" + format_bad(report.bad, limit=1000), file=sys.stderr)


def _build_or_add(args: argparse.Namespace, create: bool) -> int:
    from shitu.serving.gallery.backend import create_gallery, gallery_exists, is_remote, open_gallery
    from shitu.serving.gallery.build import build_from_entries, embed_images_fn
    from shitu.serving.gallery.list_file import GalleryFileError, ListEntry, read_entries
    from shitu.serving.gallery.local import GalleryError

    path = args.gallery if is_remote(args.gallery) else Path(args.gallery)
    exists = gallery_exists(path)
    spec = getattr(args, "pack_gallery", None)
    if not args.sources:
        if spec is None or spec.source() is None:
            raise UsageError(
                "give a list file, a folder or images to add"
                + (f" (gallery {spec.name!r} of pack {spec.pack!r} declares no content)" if spec else "")
            )
        from shitu.serving.gallery.pack_gallery import ensure_built

        if exists:
            print(f"{path}: already built ({spec.pack}/{spec.name}); add more with `shitu gallery add`")
            return EXIT_OK
        engine = _load_engine(args)
        try:
            ensure_built(
                spec,
                embed_images_fn(engine),
                engine.embedding_size,
                progress=not args.no_progress,
                skip_bad=args.skip_bad,
                max_label_length=args.max_label_length,
                identity=engine.maker_of(spec),
            )
        finally:
            engine.close()
        with open_gallery(path, readonly=True) as g:
            print(
                f"{path}: built {spec.pack}/{spec.name} from {spec.source().name}: {len(g)} items, "
                f"index {g.info()['index_method']}, metric {g.metric}"
            )
        return EXIT_OK
    if not create and not exists:
        return fail(f"{path}: not a gallery (use `shitu gallery build` to create one)")

    # Entries first: a bad list fails before loading any model.
    errors: list[GalleryFileError] = []
    if getattr(args, "label", None) is not None:
        entries = []
        for src in args.sources:
            p = Path(src)
            entries.append(ListEntry(p, args.label, None, str(p), p.as_posix()))
    else:
        if len(args.sources) != 1:
            return fail("give one list file or folder, or images with --label")
        entries = read_entries(
            args.sources[0], args.image_root, args.delimiter, errors, max_label_length=args.max_label_length
        )
    if errors and not args.skip_bad:  # every bad entry at once, unreadable images included
        from shitu.serving.gallery.build import GalleryBuildError, all_bad

        raise GalleryBuildError(all_bad(errors, entries))

    extra: dict[str, Any] = {}
    dist_type = getattr(args, "dist_type", None)
    if dist_type == "hamming":
        extra["RecPostProcess.binarize"] = True
    elif exists:
        with _open(path, readonly=True) as g:
            if g.metric == "hamming":
                extra["RecPostProcess.binarize"] = True
    engine = _load_engine(args, extra)
    try:
        if exists:
            gallery = _open(path, max_label_length=args.max_label_length)
        else:
            dim, binary = _probe_dim(engine)
            if binary and dist_type not in (None, "hamming"):
                raise GalleryError("the extractor gives binary embeddings: use --dist-type hamming")
            gallery = create_gallery(
                path,
                dim,
                index_method=args.index_method
                or (spec.index_method if spec else engine.params["IndexProcess.index_method"]),
                dist_type=dist_type
                or ("hamming" if binary else spec.dist_type if spec else engine.params["IndexProcess.dist_type"]),
                hamming_radius=args.hamming_radius
                if args.hamming_radius is not None
                else engine.params["IndexProcess.hamming_radius"],
                exist_ok=True,
                max_label_length=args.max_label_length,
            )
        from shitu.serving.gallery.backup import remember_model

        # What made the vectors, checked by export/import (an engine without a model file has no identity).
        remember_model(path, getattr(getattr(engine, "extractor", None), "spec", None))
        with gallery:
            report = build_from_entries(
                gallery,
                entries,
                embed_images_fn(engine, gallery),
                batch_size=args.batch_size,
                skip_bad=args.skip_bad,
                progress=not args.no_progress,
                pre_bad=errors,
                decode_fn=_decode_fn(engine),
            )
            gallery.checkpoint()
            rules = getattr(engine, "rules", None)
            if rules is not None:  # score_thres: auto follows the gallery (issue #28)
                rules.recalibrate(gallery)
            _print_report(report, gallery, args.json)
    finally:
        close = getattr(engine, "close", None)
        if close:
            close()
    return EXIT_OK


@_guard
def cmd_build(args: argparse.Namespace) -> int:
    """Create (if needed) and fill a gallery from a list file or a folder tree."""
    return _build_or_add(args, create=True)


@_guard
def cmd_add(args: argparse.Namespace) -> int:
    """Add images to an existing gallery."""
    return _build_or_add(args, create=False)


@_guard
def cmd_remove(args: argparse.Namespace) -> int:
    if not args.id and not args.label:
        return fail("give --id and/or --label", EXIT_USAGE)
    with _open(args.gallery) as g:
        n = g.remove(ids=args.id, labels=args.label)
    print(json.dumps({"removed": n}) if args.json else f"removed {n} item{'s' if n != 1 else ''}")
    return EXIT_OK if n else EXIT_NOTHING


@_guard
def cmd_list(args: argparse.Namespace) -> int:
    with _open(args.gallery, readonly=True) as g:
        if args.labels:
            counts = g.label_counts()
            if args.json:
                print(json.dumps(counts, ensure_ascii=False))
            else:
                for label, n in counts.items():
                    print(f"{n:8d}  {label}")
            return EXIT_OK
        rows = g.list(label=args.label, limit=args.limit, offset=args.offset)
    if args.json:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
    else:
        for r in rows:
            print(f"{r['id']:8d}  {r['label']}  {r['source'] or ''}")
    return EXIT_OK if rows else EXIT_NOTHING


@_guard
def cmd_info(args: argparse.Namespace) -> int:
    with _open(args.gallery, readonly=True) as g:
        info = g.info()
    print_info(info, args.json)
    return EXIT_OK


@_guard
def cmd_search(args: argparse.Namespace) -> int:
    import numpy as np

    from shitu.params import Params
    from shitu.serving.gallery.local import GalleryError

    with _open(args.gallery, readonly=True) as g:
        extra = {"RecPostProcess.binarize": True} if g.metric == "hamming" else {}
        for name in args.images:  # before loading any model
            if not Path(name).is_file():
                raise GalleryError(f"{name}: not a readable image (no such file)")
        engine = _load_engine(args, extra)
        try:
            decode = _decode_fn(engine)
            images = []
            for name in args.images:
                try:
                    images.append(decode(Path(name).read_bytes()))
                except ValueError as exc:
                    raise GalleryError(f"{name}: not a readable image ({exc})") from None
            rules = getattr(engine, "rules", None)  # the query framed as the gallery frames its items (#28)
            embed = rules.embedder(g, engine.embed) if rules is not None else engine.embed
            hits = g.search(np.asarray(embed(images)), k=args.k, labels=args.label or None)
            params = getattr(engine, "params", None)
            if isinstance(params, Params):  # the same score_thres rule as Engine.search and recognition
                from shitu.serving.engine.pipeline import accepted_matches

                if rules is not None:  # score_thres: auto -> this gallery's
                    params = rules.apply(params, g)
                hits = accepted_matches(hits, params["IndexProcess.score_thres"], g.higher_is_better)
        finally:
            close = getattr(engine, "close", None)
            if close:
                close()
    found = False
    for name, row in zip(args.images, hits):
        found = found or bool(row)
        if args.json:
            print(json.dumps({"image": name, "matches": [m.to_dict() for m in row]}, ensure_ascii=False))
        else:
            print(name)
            if row:
                print(f"  {'SCORE':>10}  {'ID':>8}  LABEL  SOURCE")
            for m in row:
                print(f"  {m.score:10.4f}  {m.id:8d}  {m.label}  {m.source or ''}")
    return EXIT_OK if found else EXIT_NOTHING


@_guard
def cmd_compact(args: argparse.Namespace) -> int:
    from shitu.serving.gallery.local import Gallery

    with Gallery.open(args.gallery) as g:
        before = g.info()
        g.compact()
        after = g.info()
    msg = {
        "dropped": before["removed_pending"],
        "index": after["index"],
        "count": after["count"],
        "size_bytes": after["size_bytes"],
    }
    print(
        json.dumps(msg)
        if args.json
        else f"compacted: dropped {msg['dropped']} removed vectors; {msg['count']} items, index {msg['index']}, "
        f"{msg['size_bytes']} bytes on disk"
    )
    return EXIT_OK


@_guard
def cmd_repair(args: argparse.Namespace) -> int:
    from shitu.serving.gallery.local import Gallery

    with Gallery.repair(args.gallery) as g:
        info = g.info()
    print(f"rebuilt the index snapshot of {args.gallery} from gallery.db: {info['count']} items")
    return EXIT_OK


@_guard
def cmd_migrate(args: argparse.Namespace) -> int:
    """Copy a gallery between a folder and a Milvus collection, then verify counts and searches."""
    from shitu.serving.gallery.migrate import migrate

    report = migrate(args.gallery, args.destination, verify=args.verify)
    print(json.dumps(report.to_dict()) if args.json else f"{args.destination}: {report.summary()}")
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``gallery`` and its subcommands to the ``shitu`` parser."""
    p = subparsers.add_parser(
        "gallery",
        help="build, change, inspect and search galleries",
        description="Manage a gallery folder (the labelled index searched at recognition).",
    )
    sub = p.add_subparsers(dest="gallery_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), EXIT_USAGE)[1])

    def common(sp: argparse.ArgumentParser, scenario: bool = False) -> None:
        sp.add_argument(
            "gallery",
            nargs="?",
            help="gallery folder, or milvus://host:port/collection (with --server: a gallery name there); "
            "or --gallery NAME",
        )
        add_gallery_option(sp, scenario)
        sp.add_argument("--json", action="store_true", help="JSON output")

    def engine_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--scenario", help="scenario pack whose feature extractor is used (default pack)")
        add_param_option(sp, "Global.batch_size=16")

    def build_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--image-root", help="folder the list's image paths are relative to (default: its folder)")
        sp.add_argument(
            "--delimiter",
            default="\t",
            help="column separator of the list file (default: tab; whitespace is accepted as well)",
        )
        sp.add_argument("--batch-size", type=int, default=16, help="images per feature-extraction batch")
        sp.add_argument(
            "--skip-bad",
            action="store_true",
            help="skip bad lines (missing label, missing or unreadable image) and report them; "
            "without it a bad line stops the build before anything is added",
        )
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
        sp.add_argument("--max-label-length", type=int, default=128, help="longest label accepted")
        engine_opts(sp)

    def remote(
        sp: argparse.ArgumentParser, local: Any, remote_name: str, scenario: bool = True, local_only: tuple = ()
    ) -> None:
        """``--server URL``: the same subcommand, with the same options, on a served gallery (GALLERY and
        ``--gallery`` name a gallery there). ``local_only``: option dests that mean nothing to a server."""
        sp.add_argument(
            "--server",
            metavar="URL",
            help="change/inspect the gallery of a running server instead; GALLERY is then the gallery's name there",
        )
        add_token_option(sp)
        if scenario:
            sp.add_argument("--scenario", help="scenario pack (default: the default pack / the server's)")

        @guard
        def on_server(args: argparse.Namespace) -> int:
            take_gallery(args, REST_OF.get(args.gallery_command))
            given = [f"--{d.replace('_', '-')}" for d in local_only if getattr(args, d, None) is not None]
            if given:
                raise UsageError(f"{', '.join(given)}: not with --server (the server's gallery keeps its own)")
            args.gallery = args.gallery or args.gallery_name
            from shitu.serving.cli import recognize as client_cli

            return int(getattr(client_cli, remote_name)(args))

        def run(args: argparse.Namespace) -> int:
            return on_server(args) if args.server else local(args)

        sp.set_defaults(func=run)

    b = sub.add_parser(
        "build",
        help="create a gallery (or extend it) from a list file or a label/image folder tree",
        description="Images already in the gallery (same sha256) are skipped, so re-running is cheap.",
    )
    common(b)
    b.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="list file (path<TAB>label per line) or folder tree label/image.jpg; or images with --label; "
        "none with --gallery NAME: the list, folder or vectors the pack declares for it",
    )
    b.add_argument("--label", help="label for image files given as SOURCE")
    b.add_argument(
        "--index-method",
        help="Flat, IVF, HNSW32 or a faiss factory string (new galleries; default: IndexProcess.index_method)",
    )
    b.add_argument("--dist-type", choices=("IP", "L2", "hamming", "cosine"), help="metric (new galleries)")
    b.add_argument("--hamming-radius", type=int, help="hamming search radius (new binary galleries)")
    build_opts(b)
    remote(
        b, cmd_build, "remote_gallery_add", scenario=False, local_only=("index_method", "dist_type", "hamming_radius")
    )

    a = sub.add_parser(
        "add", help="add images to an existing gallery (a list file, a folder tree, or images with --label)"
    )
    common(a)
    a.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="list file (path<TAB>label per line), folder tree label/image.jpg, or images with --label",
    )
    a.add_argument("--label", help="label for image files given as SOURCE")
    build_opts(a)
    remote(a, cmd_add, "remote_gallery_add", scenario=False)

    r = sub.add_parser("remove", help="remove items by id and/or label")
    common(r)
    r.add_argument("--id", type=int, action="append", help="item id (repeatable)")
    r.add_argument("--label", action="append", help="remove every item of this label (repeatable)")
    remote(r, cmd_remove, "remote_gallery_remove")

    ls = sub.add_parser("list", help="list items (or labels with --labels)")
    common(ls)
    ls.add_argument("--label", help="only items of this label")
    ls.add_argument("--labels", action="store_true", help="list labels with their item counts")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--offset", type=int, default=0)
    remote(ls, cmd_list, "remote_gallery_list")

    i = sub.add_parser("info", help="counts, configuration and sizes")
    common(i)
    remote(i, cmd_info, "remote_gallery_info")

    s = sub.add_parser(
        "search",
        help="search whole images against the gallery (matches passing the pack's "
        "IndexProcess.score_thres; --param score_thres=0 lists all)",
    )
    common(s)
    s.add_argument("images", nargs="+", metavar="IMAGE", help="image files; each is searched as a whole")
    s.add_argument("-k", type=int, default=5, help="matches per image")
    s.add_argument("--label", action="append", help="only search these labels (repeatable)")
    engine_opts(s)
    s.set_defaults(func=cmd_search)

    c = sub.add_parser(
        "compact",
        help="drop removed vectors, retrain IVF if needed, write a fresh snapshot",
        description="Drop the vectors of removed items from the index (done automatically once more "
        "than 20%% are removed), retrain an IVF index when needed, and write a fresh "
        "snapshot.",
    )
    common(c, scenario=True)
    c.set_defaults(func=cmd_compact)

    mg = sub.add_parser(
        "migrate",
        help="copy a gallery between a folder and a Milvus collection (milvus://host:port/collection), then verify it",
        description="DST must not exist yet. Counts and a search of the first --verify items are "
        "compared; Milvus destinations keep the ids. Credentials: $SHITU_MILVUS_TOKEN.",
    )
    common(mg)
    mg.add_argument("destination", metavar="DST", help="new gallery: a folder or milvus://host:port/collection")
    mg.add_argument("--verify", type=int, default=50, help="items searched in both galleries after the copy")
    mg.set_defaults(func=cmd_migrate)

    rp = sub.add_parser(
        "repair",
        help="rebuild a lost or damaged index snapshot from gallery.db",
        description="Rebuild the faiss snapshot from gallery.db (the source of truth) when the "
        "snapshot is missing, truncated or corrupt; the items are kept.",
    )
    common(rp, scenario=True)
    rp.set_defaults(func=cmd_repair)

    from shitu.serving.cli.gallery_ops import register_ops

    register_ops(sub)  # backup, restore, export, import, import-paddleclas
