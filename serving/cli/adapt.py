"""``shitu adapt``: train a projection head for a gallery's own images and write a new recogniser folder.

    shitu adapt gallery.txt --out adapted-rec [--scenario NAME] [--image-root DIR] [--views 12] [--steps 300]

Reads a PaddleClas list file (or a ``label/image`` folder tree), trains as :mod:`shitu.serving.engine.adapt`
describes, prints held-out R@1 before and after, and writes ``--out``. Use it with
``--param rec_inference_model_dir=adapted-rec`` (``Global.rec_inference_model_dir``) and re-embed the gallery
(``shitu gallery build`` into a new folder) with the same parameter.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from shitu.serving.cli.toolkit import EXIT_ERROR, EXIT_OK, EXIT_USAGE, positive_int


def run(args: argparse.Namespace) -> int:
    from shitu.serving.engine import load_engine
    from shitu.serving.engine.adapt import adapt, default_backgrounds, write_recognizer
    from shitu.serving.engine.images import load
    from shitu.serving.gallery.list_file import GalleryFileError, read_entries

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
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
        backgrounds = [load(str(p)) for p in sorted(Path(args.backgrounds).iterdir()) if p.is_file()] \
            if args.backgrounds else default_backgrounds()
        if not backgrounds:
            raise RuntimeError(f"{args.backgrounds}: no background images")
        engine = load_engine(args.scenario)
        params = engine.params
        matrix, report = adapt(lambda imgs: engine.extractor.embed(imgs, params.override(
            {"RecPostProcess.normalize": False})), images, [e.label for e in entries], backgrounds,
            per_image=args.views, steps=args.steps, seed=args.seed)
        pooling = params["RecPostProcess.pooling"] or engine.extractor.spec.pooling
        if engine.extractor.projection is not None:  # adapting an adapted recogniser: compose the heads
            matrix = engine.extractor.projection @ matrix
        write_recognizer(engine.extractor.spec, pooling, matrix, out, report)
        centering = params["RecPostProcess.centering"]
        if centering and not Path(centering).is_absolute():  # the head was trained on centred features
            (Path(out) / centering).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(engine.extractor.spec.model_dir / centering, Path(out) / centering)
    except Exception as exc:  # noqa: BLE001 - the command reports any failure in one line
        print(f"shitu adapt: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"{report.classes} labels, {report.train_views} training views, {report.steps} steps "
          f"({report.seconds:.0f} s): held-out R@1 {report.heldout_r1_before:.3f} -> {report.heldout_r1_after:.3f}")
    print(f"recogniser written to {out}; use it with --param rec_inference_model_dir={out} and re-embed the gallery")
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("adapt", help="train a projection head on a gallery list; write a new recogniser")
    p.add_argument("source", help="gallery list file (path<TAB>label) or label/image folder tree")
    p.add_argument("--out", required=True, help="new folder for the adapted recogniser")
    p.add_argument("--scenario", help="scenario pack whose recogniser is adapted (default: the default pack)")
    p.add_argument("--image-root", help="folder the list file's paths are relative to (default: the list's)")
    p.add_argument("--backgrounds", help="folder of background photos (default: the scikit sample photos)")
    p.add_argument("--views", type=positive_int, default=12, help="training views per gallery image (default 12)")
    p.add_argument("--steps", type=positive_int, default=300, help="optimisation steps (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
