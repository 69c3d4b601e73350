"""``shitu adapt``: train a projection head for a gallery's own images; install it as a pack version, or write it.

    shitu adapt gallery.txt --pack NAME [--no-use] [--image-root DIR] [--views 12] [--steps 300]
    shitu adapt gallery.txt --out adapted-rec [--scenario NAME] ...

Reads a PaddleClas list file (or a ``label/image`` folder tree), trains as :mod:`shitu.serving.adapt.head`
describes and prints held-out R@1 before and after. ``--pack`` installs a new version of that pack
(``1.1.0+adapt.1``) with the pack's galleries carried into the new recogniser's space, current unless
``--no-use`` (:mod:`shitu.serving.adapt.pack`); ``shitu plugins rollback NAME`` returns to the previous
one. ``--out`` writes only the recogniser folder: use it with ``--param rec_inference_model_dir=adapted-rec``
(``Global.rec_inference_model_dir``) and re-embed the gallery (``shitu gallery build`` into a new folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shitu.serving.cli.toolkit import EXIT_ERROR, EXIT_OK, EXIT_USAGE, positive_int


def run(args: argparse.Namespace) -> int:
    from shitu.serving.adapt.head import default_backgrounds
    from shitu.serving.adapt.pack import train_recognizer
    from shitu.serving.engine import load_engine
    from shitu.serving.engine.images import load
    from shitu.serving.gallery.list_file import GalleryFileError, read_entries

    if (args.out is None) == (args.pack is None):
        print(
            "shitu adapt: give --pack NAME (install a new version of the pack) or --out DIR (write the "
            "recogniser only)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.pack is not None and args.scenario not in (None, args.pack):
        print("shitu adapt: --pack names the pack adapted; leave out --scenario", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and any(out.iterdir()):
        print(f"shitu adapt: {out} exists and is not empty; choose a new folder", file=sys.stderr)
        return EXIT_USAGE
    errors: list[GalleryFileError] = []
    entries = read_entries(args.source, args.image_root, "\t", errors)
    if errors:
        print("shitu adapt: bad entries:\n" + "\n".join(str(e) for e in errors[:20]), file=sys.stderr)
        return EXIT_USAGE
    if len({e.label for e in entries}) < 2:
        print("shitu adapt: need images of at least 2 labels", file=sys.stderr)
        return EXIT_USAGE
    try:
        images = [load(str(e.path)) for e in entries]
        backgrounds = (
            [load(str(p)) for p in sorted(Path(args.backgrounds).iterdir()) if p.is_file()]
            if args.backgrounds
            else default_backgrounds()
        )
        if not backgrounds:
            raise RuntimeError(f"{args.backgrounds}: no background images")
        if args.pack is not None:
            extra = [f for d in args.gallery_images or [] for f in sorted(Path(d).rglob("*")) if f.is_file()]
            return _adapt_pack(
                args, images, [e.label for e in entries], backgrounds, [Path(e.path) for e in entries] + extra
            )
        engine = load_engine(args.scenario)
        try:
            done = train_recognizer(
                engine,
                images,
                [e.label for e in entries],
                backgrounds,
                out,
                method=args.method,
                views=args.views,
                steps=args.steps,
                finetune_steps=args.finetune_steps,
                seed=args.seed,
                log=print,
            )
        finally:
            engine.close()
        report = done["report"]
    except Exception as exc:  # noqa: BLE001 - the command reports any failure in one line
        print(f"shitu adapt: {exc}", file=sys.stderr)
        return EXIT_ERROR
    where = getattr(report, "heldout_backgrounds", "") or "backgrounds not trained on"
    print(
        f"held-out R@1 {report.heldout_r1_before:.3f} -> {report.heldout_r1_after:.3f} ({args.method}; views on "
        f"{where}, never trained on)"
    )
    print(f"recogniser written to {out}; use it with --param rec_inference_model_dir={out} and re-embed the gallery")
    return EXIT_OK


def _adapt_pack(
    args: argparse.Namespace, images: list, labels: list[str], backgrounds: list, image_files: list[Path]
) -> int:
    from shitu.serving.adapt.pack import adapt_pack

    done = adapt_pack(
        args.pack,
        images,
        labels,
        backgrounds,
        method=args.method,
        views=args.views,
        steps=args.steps,
        finetune_steps=args.finetune_steps,
        seed=args.seed,
        make_current=not args.no_use,
        log=print,
        image_files=image_files,
    )
    state = (
        "current" if done["current"] else f"installed, not current (shitu plugins use {done['name']} {done['version']})"
    )
    print(
        f"pack {done['name']} {done['version']} {state}; `shitu plugins rollback {done['name']}` returns to "
        f"{done['base_version']}"
    )
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "adapt",
        help="train a projection head on a gallery list; install it as a new pack "
        "version (--pack) or write the recogniser (--out)",
    )
    p.add_argument("source", help="gallery list file (path<TAB>label) or label/image folder tree")
    p.add_argument("--pack", help="install the result as a new version of this pack (galleries carried over)")
    p.add_argument("--no-use", action="store_true", help="with --pack: keep the current version current")
    p.add_argument("--out", help="new folder for the adapted recogniser (instead of --pack)")
    p.add_argument(
        "--gallery-images",
        action="append",
        metavar="DIR",
        help="with --pack: a folder of the galleries' images, found by content, for items that must be "
        "embedded again (repeatable; the list's own images are always looked in)",
    )
    p.add_argument("--scenario", help="scenario pack whose recogniser is adapted (default: the default pack)")
    p.add_argument("--image-root", help="folder the list file's paths are relative to (default: the list's)")
    p.add_argument("--backgrounds", help="folder of background photos (default: the scikit sample photos)")
    p.add_argument("--views", type=positive_int, default=12, help="training views per gallery image (default 12)")
    p.add_argument("--steps", type=positive_int, default=300, help="optimisation steps (default 300)")
    p.add_argument(
        "--method",
        choices=("head", "finetune"),
        default="head",
        help="head: a projection head on frozen features (default); finetune: the head, then the "
        "network's last layers too (through paddle.jit.load; galleries re-embedded from images)",
    )
    p.add_argument(
        "--finetune-steps", type=positive_int, default=40, help="with --method finetune: steps of 8 views (default 40)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
