"""The ``shitu`` command: every subcommand, one module each, sharing :mod:`.toolkit`.

- :mod:`.demo` -- ``shitu demo``; :mod:`.recognize` -- ``shitu recognize`` / ``detect``;
  :mod:`.gallery` -- ``shitu gallery ...``; :mod:`.plugins` -- ``shitu plugins ...``;
  :mod:`.video` -- ``shitu recognize-video``; :mod:`.adapt` -- ``shitu adapt``; ``shitu serve`` is registered by :mod:`shitu.serving.hub.control`.

Each module adds its subcommands with ``register(subparsers)`` and imports its heavy dependencies only when run,
so ``shitu --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib

from shitu.serving.cli.toolkit import EXIT_USAGE

#: Modules that add subcommands, in help order. Each imports its heavy dependencies only when run.
COMMAND_MODULES = (
    "shitu.serving.cli.demo",
    "shitu.serving.cli.recognize",
    "shitu.serving.hub.control",
    "shitu.serving.cli.gallery",
    "shitu.serving.cli.plugins",
    "shitu.serving.cli.video",
    "shitu.serving.cli.adapt",
)


def build_parser() -> argparse.ArgumentParser:
    from shitu import __version__

    parser = argparse.ArgumentParser(prog="shitu", description="shitu-hub: image recognition as a service")
    parser.add_argument("--version", action="version", version=f"shitu-hub {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return int(args.func(args) or 0)
