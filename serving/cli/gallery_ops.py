"""``shitu gallery backup|restore|export|import|import-paddleclas``: keeping galleries safe and bringing them in.

Registered by :func:`shitu.serving.cli.gallery.register`. Exit codes as the other gallery commands: 0 done,
2 usage error, 3 the operation was refused or failed (the message says why).

Examples::

    shitu gallery backup ~/.shitu/galleries/general-lite/shop /backups/shop-2026-12-01   # while it is served
    shitu gallery restore /backups/shop-2026-12-01 ./shop
    shitu gallery export ./shop shop.tar.gz --scenario general-lite     # records + vectors + model identity
    shitu gallery import shop.tar.gz ./shop-copy --scenario general-lite
    shitu gallery import-paddleclas ./drink_dataset_v2.0/index ./drinks    # vector.index + id_map.pkl
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shitu.serving.cli.toolkit import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_gallery_option,
    gallery_target,
    param_overrides,
)

#: Subcommands whose gallery is written to: ``--gallery NAME`` may name one that does not exist yet.
CREATING = ("restore", "import", "import-paddleclas")


def _run(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:  # GALLERY or --gallery NAME, as every gallery subcommand reads them
            args.gallery, _ = gallery_target(args, create=args.gallery_command in CREATING)
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        from shitu.model_spec import ModelSpecError
        from shitu.params import ParamError
        from shitu.plugins.errors import PackError
        from shitu.serving.gallery.backup import BackupError
        from shitu.serving.gallery.local import GalleryError
        from shitu.serving.gallery.paddleclas_index import IndexImportError

        try:
            result = fn(args)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except (BackupError, GalleryError, IndexImportError, ModelSpecError, PackError, ParamError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_ERROR
        print(json.dumps(result, ensure_ascii=False, sort_keys=True))
        return EXIT_OK

    return run


def _model(args: argparse.Namespace) -> dict[str, str] | None:
    """The identity of the feature extractor named by --model-dir or --scenario (None when neither is given)."""
    from shitu.model_spec import ModelSpec
    from shitu.serving.gallery.backup import model_identity

    if getattr(args, "model_dir", None):
        return model_identity(ModelSpec.from_dir(args.model_dir, "extractor"))
    if getattr(args, "scenario", None):
        from shitu.plugins import registry

        return model_identity(registry.get_pack(args.scenario).extractor_spec())
    return None


def cmd_backup(args: argparse.Namespace) -> dict[str, Any]:
    from shitu.serving.gallery.backup import backup

    return backup(args.gallery, args.out)


def cmd_restore(args: argparse.Namespace) -> dict[str, Any]:
    from shitu.serving.gallery.backup import restore

    return restore(args.backup, args.gallery)


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from shitu.serving.gallery.backup import export_archive

    return export_archive(args.gallery, args.out, model=_model(args))


def cmd_import(args: argparse.Namespace) -> dict[str, Any]:
    from shitu.serving.gallery.backup import import_archive

    return import_archive(args.archive, args.gallery, model=_model(args))


def cmd_import_paddleclas(args: argparse.Namespace) -> dict[str, Any]:
    from shitu.params import merge
    from shitu.serving.gallery.backup import set_gallery_model_identity
    from shitu.serving.gallery.paddleclas_index import import_paddleclas_index

    limits = merge(param_overrides(getattr(args, "param", None)))
    summary = import_paddleclas_index(
        args.folder,
        args.gallery,
        delimiter=args.delimiter,
        index_method=args.index_method,
        max_bytes=int(limits["Limits.max_index_import_bytes"]),
        max_items=int(limits["Limits.max_index_import_items"]),
        max_label_length=int(limits["Limits.max_label_length"]),
    )
    identity = _model(args)
    if identity:
        set_gallery_model_identity(args.gallery, identity)
        summary["model"] = identity
    return summary


def register_ops(sub: argparse._SubParsersAction) -> None:
    """Add the subcommands to ``shitu gallery``'s subparsers."""

    def model_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--scenario",
            help="the scenario pack whose feature extractor produced / will search the "
            "vectors (its identity is recorded and checked)",
        )
        sp.add_argument("--model-dir", help="the feature extractor folder, instead of --scenario")

    b = sub.add_parser(
        "backup",
        help="consistent copy of a gallery, also while it is served and written to",
        description="SQLite's online backup of gallery.db plus the faiss snapshot it records, with "
        "checksums in backup.json; OUT must be a new (or empty) folder.",
    )
    b.add_argument("gallery", nargs="?", help="gallery folder (or --gallery NAME)")
    add_gallery_option(b, scenario=True)
    b.add_argument("out", help="new folder for the backup")
    b.set_defaults(func=_run(cmd_backup))

    r = sub.add_parser("restore", help="restore a backup into a new gallery folder (checksums verified)")
    r.add_argument("backup", help="backup folder (written by `shitu gallery backup`)")
    r.add_argument("gallery", nargs="?", help="new (or empty) gallery folder (or --gallery NAME)")
    add_gallery_option(r, scenario=True)
    r.set_defaults(func=_run(cmd_restore))

    e = sub.add_parser("export", help="portable archive: records, vectors, metadata and the model identity")
    e.add_argument("gallery", nargs="?", help="gallery folder (or --gallery NAME)")
    add_gallery_option(e)
    e.add_argument("out", help="archive to write (.tar.gz)")
    model_opts(e)
    e.set_defaults(func=_run(cmd_export))

    i = sub.add_parser(
        "import", help="add an export archive to a gallery (a new one keeps the ids); refused when the models differ"
    )
    i.add_argument("archive", help="archive written by `shitu gallery export`")
    i.add_argument("gallery", nargs="?", help="gallery folder, created when missing (or --gallery NAME)")
    add_gallery_option(i)
    model_opts(i)
    i.set_defaults(func=_run(cmd_import))

    p = sub.add_parser(
        "import-paddleclas",
        help="a PaddleClas index folder (vector.index + id_map.pkl) as a new "
        "gallery, same ids, labels and vectors; nothing in it is executed",
    )
    p.add_argument("folder", help="PaddleClas index folder (IndexProcess.index_dir of build_gallery.py)")
    p.add_argument("gallery", nargs="?", help="new gallery folder (or --gallery NAME)")
    add_gallery_option(p)
    p.add_argument("--delimiter", default="\t", help="column separator of the list-file lines (default: tab)")
    p.add_argument("--index-method", help="index method of the new gallery (default: the one read from the index)")
    p.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="limits: Limits.max_index_import_bytes, Limits.max_index_import_items, Limits.max_label_length",
    )
    model_opts(p)
    p.set_defaults(func=_run(cmd_import_paddleclas))
