"""What every ``shitu`` subcommand shares: exit codes and argparse number types."""
from __future__ import annotations

import argparse

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
