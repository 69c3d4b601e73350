"""The ``shitu`` command. Each feature registers its own subcommands (``register(subparsers)``)."""
from __future__ import annotations

import argparse
import importlib
import sys

#: Modules that add subcommands, in help order. Each imports its heavy dependencies only when run.
COMMAND_MODULES = (
    "shitu.serving.demo",
    "shitu.serving.client_cli",
    "shitu.serving.hub_serving",
    "shitu.serving.gallery_cli",
    "shitu.plugins.cli",
    "shitu.serving.video_cli",
)

#: Exit codes: 0 ok, 1 nothing recognised, 2 usage error, 3 server or engine error.
EXIT_OK, EXIT_NOTHING, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3


def _number(convert: type, minimum: float, strict: bool) -> "object":
    """An argparse ``type=`` that parses with ``convert`` and refuses values below (or at, ``strict``) ``minimum``."""
    import argparse

    word = "an integer" if convert is int else "a number"

    def parse(text: str) -> int | float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {word}: {text!r}") from None
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum}, got {value}")
        return value

    return parse


#: argparse types shared by the subcommands.
positive_int = _number(int, 1, strict=False)
non_negative_int = _number(int, 0, strict=False)
positive_float = _number(float, 0.0, strict=True)


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


if __name__ == "__main__":
    sys.exit(main())
