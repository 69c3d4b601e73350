"""``shitu recognize`` and ``shitu detect``: in-process with the engine, or against a server with ``--server``.

::

    shitu recognize query.jpg --gallery ./my_gallery                 # in-process, a gallery folder
    shitu recognize a.jpg b.jpg --server http://host:8866 --gallery shop --param threshold=0.5 --json
    shitu detect photo.jpg --server http://host:8866 --draw annotated/
    shitu recognize shelf.jpg --gallery ./my_gallery --explain --draw why/   # why each box was kept or dropped

Without ``--server`` the engine runs here (``load_engine(scenario, gallery)``; ``--gallery`` is resolved by the
one rule of :func:`shitu.serving.cli.toolkit.resolve_gallery`: a folder when it contains a path separator, names an
existing folder or is not a valid gallery name, else a gallery name of the scenario pack); with it,
the client SDK (:mod:`shitu.serving.client.sdk`) calls the server and ``--gallery`` is a gallery name there.

Output: a table per image, or one JSON object per line with ``--json``. Exit status (``shitu.serving.cli.toolkit``): 0 something
was recognised (detected), 1 nothing was, 2 usage error (bad option, missing file, unknown parameter; in-process
also an unknown scenario or a missing gallery), 3 server, connection or engine error, or an image that could not
be decoded.

:func:`remote_gallery_add`, :func:`remote_gallery_remove`, :func:`remote_gallery_info` and
:func:`remote_gallery_list` are ``shitu gallery add|remove|info|list --server URL``: they take the namespace the
``gallery`` subcommands parse (see their docstrings) and return the exit status.

Heavy modules (the engine, OpenCV, the client) are imported inside the commands, so ``shitu --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shitu.serving.cli.toolkit import (
    EXIT_ERROR,
    EXIT_NOTHING,
    EXIT_OK,
    EXIT_USAGE,
    TOKEN_ENV,
    UsageError,
    add_param_option,
    add_token_option,
    fail,
    guard,
    param_overrides,
    positive_float,
    positive_int,
    print_info,
    resolve_gallery,
    token_from,
)

__all__ = [
    "register",
    "main",
    "cmd_recognize",
    "cmd_detect",
    "remote_gallery_add",
    "remote_gallery_remove",
    "remote_gallery_info",
    "remote_gallery_list",
    "TOKEN_ENV",
    "UsageError",
    "param_overrides",
]


def make_client(args: argparse.Namespace) -> Any:
    """A :class:`~shitu.serving.client.sdk.ShituClient` from ``--server``, ``--token``, ``--timeout``, ``--retries``
    and ``--batch-size`` (those missing from ``args`` take the client's defaults)."""
    from shitu.serving.client.sdk import ShituClient

    kwargs: dict[str, Any] = {}
    for name in ("timeout", "retries", "batch_size"):
        if getattr(args, name, None) is not None:
            kwargs[name] = getattr(args, name)
    token = token_from(args)
    try:
        return ShituClient(args.server, token=token, **kwargs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _check_files(paths: Sequence[str]) -> None:
    for p in paths:
        if not Path(p).is_file():
            raise UsageError(f"{p}: no such file" if not Path(p).exists() else f"{p}: not a file")


def _client_options(p: argparse.ArgumentParser, token: bool) -> None:
    p.add_argument("--server", metavar="URL", help="shitu-hub server (http://host:8866); default: run in-process")
    p.add_argument("--scenario", metavar="NAME", help="scenario pack (default: the server's / the default pack)")
    if token:
        add_token_option(p)
    p.add_argument("--timeout", type=positive_float, default=60.0, help="seconds per request (default 60)")
    p.add_argument("--retries", type=int, default=2, help="retries of failed connections (default 2)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per request (default 8)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``recognize`` and ``detect`` to the ``shitu`` parser."""
    r = subparsers.add_parser(
        "recognize",
        help="recognise images in-process or on a server (--server URL)",
        description="Recognise what the images show and where: in-process by default, on a shitu-hub server with "
        "--server. Exit status: 0 something recognised, 1 nothing, 2 usage error, 3 server/engine "
        "error or an undecodable image.",
    )
    r.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    r.add_argument(
        "--gallery",
        metavar="NAME|DIR",
        help="gallery: a name (server / scenario pack) or, in-process, "
        "a gallery folder or milvus://host:port/collection",
    )
    r.add_argument("--json", action="store_true", help="one JSON object per image and line")
    r.add_argument("--draw", metavar="DIR", help="write annotated copies of the images into DIR")
    r.add_argument(
        "--explain",
        action="store_true",
        help="also show why: every detector box (kept or dropped, by which filter), each searched box's "
        "top matches and whether score_thres or rec-NMS dropped it; --draw draws dropped boxes dashed",
    )
    add_param_option(r)
    _client_options(r, token=True)
    r.set_defaults(func=cmd_recognize)

    d = subparsers.add_parser(
        "detect",
        help="main-object boxes of images, in-process or on a server (--server URL)",
        description="Detect main objects. Exit status: 0 some box besides the whole image, "
        "1 none, 2 usage error, 3 server/engine error or an undecodable image.",
    )
    d.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    d.add_argument("--json", action="store_true", help="one JSON object per image and line")
    d.add_argument("--draw", metavar="DIR", help="write annotated copies of the images into DIR")
    add_param_option(d)
    _client_options(d, token=False)
    d.set_defaults(func=cmd_detect)


# ---------------------------------------------------------------------------------------------------------------
# in-process engine
# ---------------------------------------------------------------------------------------------------------------
def _local_engine(args: argparse.Namespace, overrides: dict[str, Any], need_gallery: bool) -> Any:
    from shitu.plugins import registry
    from shitu.plugins.errors import PackError

    try:
        registry.get_pack(args.scenario)
    except PackError as exc:
        raise UsageError(f"--scenario: {exc}") from None
    gallery = resolve_gallery(getattr(args, "gallery", None)) if need_gallery else None
    params = dict(overrides)
    if isinstance(gallery, Path):
        from shitu.serving.gallery.local import DB_NAME, Gallery

        if not (gallery / DB_NAME).is_file():
            raise UsageError(  # as typed: Path() drops a leading ./
                f"--gallery {args.gallery}: not a gallery folder (build one with `shitu gallery build`)"
            )
        with Gallery.open(gallery, readonly=True) as g:
            if g.metric == "hamming":
                params.setdefault("RecPostProcess.binarize", True)
    elif isinstance(gallery, str) and gallery.lower().startswith("milvus://"):
        from shitu.serving.gallery.backend import open_gallery
        from shitu.serving.gallery.local import GalleryError

        try:
            with open_gallery(gallery, readonly=True) as g:
                if g.metric == "hamming":
                    params.setdefault("RecPostProcess.binarize", True)
        except GalleryError as exc:
            raise UsageError(f"--gallery: {exc}") from None
    from shitu.serving.engine.engine import load_engine

    engine = load_engine(args.scenario, gallery, params or None)
    if need_gallery and not isinstance(gallery, Path) and not (gallery or "").lower().startswith("milvus://"):
        from shitu.serving.gallery.local import DB_NAME

        path = engine.gallery_path(gallery)
        spec = engine.gallery_specs.get(gallery or engine.default_gallery)
        if spec is not None and spec.source() is not None:
            engine.gallery(gallery)  # a gallery the pack brings: built on first use
        if not (path / DB_NAME).is_file():
            engine.close()
            what = f"gallery {gallery!r}" if gallery else "the default gallery"
            raise UsageError(
                f"{what} of scenario {engine.scenario!r} does not exist ({path}); build it with "
                "`shitu gallery build` or pass --gallery DIR"
            )
    return engine


def _run_local(args: argparse.Namespace, overrides: dict[str, Any], op: str) -> list[Any]:
    """Per-image results in the client's types, computed by the engine in this process."""
    from shitu.serving.client.sdk import Box, ImageDetections, ImageRecognitions
    from shitu.serving.engine.images import ImageError, load

    engine = _local_engine(args, overrides, need_gallery=(op == "recognize"))
    out: list[Any] = []
    try:
        for i, path in enumerate(args.images):
            try:
                img = load(path)
            except ImageError as exc:
                out.append((ImageRecognitions if op == "recognize" else ImageDetections)((), i, error=exc.reason))
                continue
            h, w = img.shape[:2]
            if op == "recognize" and getattr(args, "explain", False):
                recognitions, explanation = engine.recognize_explained([img])[0]
                out.append(ImageRecognitions(recognitions, i, w, h))
                out[-1].explanation = explanation
            elif op == "recognize":
                out.append(ImageRecognitions(engine.recognize([img])[0], i, w, h))
            else:
                boxes = [
                    Box.from_dict({k: v for k, v in b.items() if k != "class_id"})
                    for b in engine.detect([img])[0].to_list()
                ]
                out.append(ImageDetections(boxes, i, w, h))
    finally:
        engine.close()
    return out


def _run(args: argparse.Namespace, op: str) -> int:
    overrides = param_overrides(getattr(args, "param", None))
    _check_files(args.images)
    if args.draw:
        try:
            Path(args.draw).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--draw {args.draw}: {exc.strerror or exc}") from None
    if args.server:
        client = make_client(args)
        with client:
            call = client.recognize if op == "recognize" else client.detect
            extra = {"gallery": args.gallery, "explain": args.explain} if op == "recognize" else {}
            results = call(list(args.images), scenario=args.scenario, params=overrides, raise_on_error=False, **extra)
    else:
        try:
            results = _run_local(args, overrides, op)
        except (UsageError, ModuleNotFoundError):  # missing serving stack: explained by the shitu command
            raise
        except Exception as exc:  # noqa: BLE001 -- an engine that cannot load or run: exit status 3
            return fail(f"engine: {type(exc).__name__}: {exc}", EXIT_ERROR)
    found = failed = False
    for path, res in zip(args.images, results):
        failed = failed or res.error is not None
        found = found or any(not getattr(x, "is_whole_image", False) or op == "recognize" for x in res)
        print(
            json.dumps({"image": path, **res.to_dict()}, ensure_ascii=False) if args.json else format_result(path, res)
        )
        if getattr(res, "explanation", None) is not None and not args.json:
            print(f"  why:\n{res.explanation.format()}")
        if args.draw and res.error is None:
            _write_drawing(Path(args.draw), path, res, args.images)
    sys.stdout.flush()
    if failed:
        print("error: some images could not be processed (see above)", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK if found else EXIT_NOTHING


def format_result(name: str, res: Any) -> str:
    """A readable table of one image's recognitions (or boxes)."""
    size = f" ({res.width}x{res.height})" if res.width is not None else ""
    lines = [f"{name}{size}:"]
    if res.error is not None:
        lines.append(f"    error: {res.error}")
    elif not len(res):
        lines.append("    (nothing recognised)" if res.key == "results" else "    (no box)")
    for x in res:
        where = "whole image" if x.is_whole_image else str(list(x.bbox))
        if res.key == "results":
            lines.append(f"    {x.label:<16} score {x.score:.3f}   det {x.det_score:.2f}   {where}")
        else:
            lines.append(f"    score {x.score:.3f}   {where}")
    return "\n".join(lines)


def _write_drawing(folder: Path, path: str, res: Any, all_paths: Sequence[str]) -> None:
    stem = Path(path).stem
    if sum(Path(p).stem == stem for p in all_paths) > 1:
        stem = f"{res.index}_{stem}"
    out = folder / f"{stem}.jpg"
    from shitu.serving.results.draw import draw_file  # PIL: the client install draws too

    try:
        draw_file(path, res, out)  # with res.explanation: the left-out boxes too
    except OSError as exc:
        print(f"warning: could not write {out}: {exc}", file=sys.stderr)


@guard
def cmd_recognize(args: argparse.Namespace) -> int:
    """``shitu recognize IMAGE...``"""
    return _run(args, "recognize")


@guard
def cmd_detect(args: argparse.Namespace) -> int:
    """``shitu detect IMAGE...``"""
    return _run(args, "detect")


# ---------------------------------------------------------------------------------------------------------------
# remote gallery commands (``shitu gallery ... --server URL``)
# ---------------------------------------------------------------------------------------------------------------
def _gallery_name(args: argparse.Namespace) -> str | None:
    return getattr(args, "gallery", None) or None


def _where(args: argparse.Namespace) -> str:
    name = _gallery_name(args)
    return f"gallery {name!r} on {args.server}" if name else f"the default gallery on {args.server}"


@guard
def remote_gallery_add(args: argparse.Namespace) -> int:
    """Add images to a gallery on a server.

    ``args``: ``server``; ``gallery`` (name on the server, ``None``: its default); ``scenario``; ``token``;
    ``sources`` (image files with ``label``, or one list file / ``label/image`` folder tree); ``label``;
    ``image_root``, ``delimiter``, ``max_label_length``, ``skip_bad`` (list files, as ``shitu gallery add``);
    ``batch_size``, ``timeout``, ``retries``, ``param``, ``json`` (all optional). Exit 0 added, 1 nothing to add.
    """
    from shitu.serving.gallery.list_file import GalleryFileError, read_entries

    sources = list(getattr(args, "sources", None) or [])
    if not sources:
        raise UsageError("give image files with --label, or one list file or folder")
    if getattr(args, "label", None) is not None:
        _check_files(sources)
        paths, labels = sources, [args.label] * len(sources)
    else:
        if len(sources) != 1:
            raise UsageError("give one list file or folder, or images with --label")
        if not Path(sources[0]).exists():
            raise UsageError(f"{sources[0]}: no such file or folder")
        errors: list[GalleryFileError] = []
        kwargs = {"max_label_length": args.max_label_length} if getattr(args, "max_label_length", None) else {}
        entries = read_entries(
            sources[0], getattr(args, "image_root", None), getattr(args, "delimiter", "\t"), errors, **kwargs
        )
        for e in errors:
            print(f"{'skipped' if getattr(args, 'skip_bad', False) else 'error'}: {e}", file=sys.stderr)
        if errors and not getattr(args, "skip_bad", False):
            return fail(
                f"{len(errors)} bad entr{'y' if len(errors) == 1 else 'ies'} in {sources[0]}; nothing "
                "added (--skip-bad adds the good ones)",
                EXIT_ERROR,
            )
        paths, labels = [str(e.path) for e in entries], [e.label for e in entries]
    if not paths:
        print("nothing to add", file=sys.stderr)
        return EXIT_NOTHING
    overrides = param_overrides(getattr(args, "param", None))
    with make_client(args) as client:
        try:
            ids = client.gallery_add(
                paths, labels, gallery=_gallery_name(args), scenario=getattr(args, "scenario", None), params=overrides
            )
        except Exception as exc:
            if getattr(exc, "partial", None):
                print(f"note: ids {exc.partial} were added by earlier requests before the error", file=sys.stderr)
            raise
        info = client.gallery_info(gallery=_gallery_name(args), scenario=getattr(args, "scenario", None))
    if getattr(args, "json", False):
        print(json.dumps({"added": len(ids), "ids": ids, "count": info.count}))
    else:
        print(f"{_where(args)}: added {len(ids)} item{'s' if len(ids) != 1 else ''}; {info.count} items")
    return EXIT_OK


@guard
def remote_gallery_remove(args: argparse.Namespace) -> int:
    """Remove items from a gallery on a server.

    ``args``: ``server``, ``gallery``, ``scenario``, ``token``; ``id`` (list of ints) and/or ``label`` (list of
    labels); ``json``, ``timeout``, ``retries`` (optional). Exit 0 something removed, 1 nothing matched.
    """
    ids, labels = getattr(args, "id", None), getattr(args, "label", None)
    if isinstance(labels, str):
        labels = [labels]
    if not ids and not labels:
        raise UsageError("give --id and/or --label")
    with make_client(args) as client:
        n = client.gallery_remove(
            ids=ids, labels=labels, gallery=_gallery_name(args), scenario=getattr(args, "scenario", None)
        )
    print(
        json.dumps({"removed": n})
        if getattr(args, "json", False)
        else f"{_where(args)}: removed {n} item{'s' if n != 1 else ''}"
    )
    return EXIT_OK if n else EXIT_NOTHING


@guard
def remote_gallery_info(args: argparse.Namespace) -> int:
    """Counts and configuration of a gallery on a server. ``args``: ``server``, ``gallery``, ``scenario``,
    ``token``, ``json``, ``timeout``, ``retries`` (all but ``server`` optional)."""
    with make_client(args) as client:
        info = client.gallery_info(gallery=_gallery_name(args), scenario=getattr(args, "scenario", None))
    d = info.to_dict()
    extra = d.pop("extra", None) or {}
    d.update(extra)
    print_info(d, getattr(args, "json", False))
    return EXIT_OK


@guard
def remote_gallery_list(args: argparse.Namespace) -> int:
    """Items of a gallery on a server. ``args``: ``server``, ``gallery``, ``scenario``, ``token``, ``label``,
    ``limit``, ``offset``, ``json``; ``labels=True``: the labels with their item counts instead (the server's
    ``labels`` operation, the web page's). Exit 1 when empty."""
    if getattr(args, "labels", False):
        return _remote_label_counts(args)
    with make_client(args) as client:
        rows = client.gallery_list(
            getattr(args, "label", None),
            getattr(args, "limit", 100) or 100,
            getattr(args, "offset", 0) or 0,
            gallery=_gallery_name(args),
            scenario=getattr(args, "scenario", None),
        )
    for r in rows:
        print(json.dumps(r.to_dict(), ensure_ascii=False) if getattr(args, "json", False) else str(r))
    return EXIT_OK if rows else EXIT_NOTHING


#: Labels asked for per ``labels`` request (the server's MAX_LABELS_PER_PAGE).
_LABELS_PAGE = 200


def _remote_label_counts(args: argparse.Namespace) -> int:
    """``shitu gallery list --labels --server URL``: ``count  label`` lines (or one JSON object), as in-process."""
    counts: dict[str, int] = {}
    where = {"gallery": _gallery_name(args) or None, "scenario": getattr(args, "scenario", None)}
    with make_client(args) as client:
        while True:
            page = client.gallery_labels(limit=_LABELS_PAGE, offset=len(counts), per_label=0, **where)
            counts.update((row["label"], int(row["count"])) for row in page["labels"])
            if not page["labels"] or len(counts) >= int(page["total"]):
                break
    if getattr(args, "json", False):
        print(json.dumps(counts, ensure_ascii=False))
    else:
        for label, n in counts.items():
            print(f"{n:8d}  {label}")
    return EXIT_OK  # as in-process: an empty gallery has no labels, which is an answer


def main(argv: list[str] | None = None) -> int:
    """``python -m shitu.serving.cli.recognize recognize|detect ...`` (the same commands as ``shitu``)."""
    parser = argparse.ArgumentParser(prog="shitu-client")
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
