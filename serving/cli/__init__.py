"""The ``shitu`` command: every subcommand, one module each, sharing :mod:`.toolkit`.

- :mod:`.demo` -- ``shitu demo``; :mod:`.recognize` -- ``shitu recognize`` / ``detect``;
  :mod:`.gallery` -- ``shitu gallery ...``; :mod:`.plugins` -- ``shitu plugins ...``;
  :mod:`.video` -- ``shitu recognize-video``; :mod:`.adapt` -- ``shitu adapt``; :mod:`.serve` -- ``shitu serve``.

Each module adds its subcommands with ``register(subparsers)`` and imports its heavy dependencies only when run,
so ``shitu --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from shitu.serving.cli.toolkit import EXIT_ERROR, EXIT_USAGE

#: Modules that add subcommands, in help order. Each imports its heavy dependencies only when run.
COMMAND_MODULES = (
    "shitu.serving.cli.demo",
    "shitu.serving.cli.recognize",
    "shitu.serving.cli.serve",
    "shitu.serving.cli.gallery",
    "shitu.serving.cli.plugins",
    "shitu.serving.cli.video",
    "shitu.serving.cli.adapt",
)


def build_parser() -> argparse.ArgumentParser:
    from shitu import __version__

    parser = argparse.ArgumentParser(prog="shitu", description="shitu-hub: image recognition as a service")
    parser.add_argument("--version", action="version", version=f"shitu-hub {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show the libraries' notices (paddle's ccache warning, faiss's loader INFO lines)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def quiet_libraries() -> None:
    """Hide notices every in-process command would print: paddle's "No ccache found" warning (irrelevant: nothing
    is compiled) and faiss's loader INFO lines. Warnings and errors of shitu-hub itself stay."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r"No ccache found", category=UserWarning)
    logging.getLogger("faiss").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:  # a client-only install running an engine command
        from shitu.serving.cli.missing import explain

        message = explain(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_ERROR
