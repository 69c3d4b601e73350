"""What every ``shitu`` subcommand shares: exit codes, the error guard, ``--param``, ``--token``, ``--gallery``,
argparse number types and table printing.

- **Exit codes**: 0 ok, 1 nothing found (or problems found), 2 usage error, 3 server / engine / gallery / pack
  error, 130 interrupted.
- :func:`guard` turns the errors a command may meet into ``error: <message>`` on stderr and its exit code,
  never a traceback.
- :func:`param_overrides` reads ``--param KEY=VALUE`` (values as YAML scalars) and checks names and types against
  the parameter schema, as the server would: ``--param thresold=0.3`` is a usage error naming the parameter.
- :data:`TOKEN_ENV` is the one environment variable for the admin token (the server reads the same one).
- :func:`resolve_gallery` is the one rule for ``--gallery NAME|DIR`` in-process: a folder when the value has a path
  separator, names an existing folder or is not a valid gallery name; else a gallery name of the scenario.
- :func:`take_gallery` is the one rule for a command's GALLERY positional beside ``--gallery``: with ``--gallery``
  every positional is a SOURCE / IMAGE / ...; :func:`named_gallery` finds ``--gallery NAME`` in-process where the
  engine would (the pack's declared galleries and every gallery folder of the scenario, e.g. one a server made).

Imports here are light: error classes of other rooms are looked up only once their module is loaded (an error
of a module that was never imported cannot have been raised).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shitu.names import GALLERY_NAME

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOTHING",
    "EXIT_OK",
    "EXIT_USAGE",
    "GALLERY_NAME",
    "TOKEN_ENV",
    "UsageError",
    "add_gallery_option",
    "add_param_option",
    "add_token_option",
    "fail",
    "guard",
    "key_values",
    "non_negative_int",
    "param_overrides",
    "positive_float",
    "positive_int",
    "print_info",
    "named_gallery",
    "resolve_gallery",
    "scenario_gallery_names",
    "gallery_target",
    "table",
    "take_gallery",
    "token_from",
]

#: Exit codes: 0 ok, 1 nothing recognised / found (``plugins verify``: problems found), 2 usage error,
#: 3 server, engine, gallery or pack error; 130 interrupted (Ctrl-C).
EXIT_OK, EXIT_NOTHING, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
EXIT_INTERRUPTED = 130

#: Environment variable holding the admin token (``--token`` default; the server reads the same name).
TOKEN_ENV = "SHITU_ADMIN_TOKEN"


class UsageError(Exception):
    """A bad command line: reported with exit status 2."""


#: (module, class) of errors that mean "bad usage" (exit 2), then of errors that mean "it failed" (exit 3).
_USAGE_ERRORS = (
    ("shitu.serving.cli.toolkit", "UsageError"),
    ("shitu.serving.client.sdk", "InputError"),
    ("shitu.params.merge", "ParamError"),
)
_RUN_ERRORS = (
    ("shitu.serving.client.sdk", "ShituError"),
    ("shitu.serving.gallery.errors", "GalleryError"),
    ("shitu.serving.gallery.list_file", "GalleryFileError"),
    ("shitu.serving.engine.engine", "EngineError"),
    ("shitu.serving.galleries.manager", "GalleryRequestError"),
    ("shitu.plugins.errors", "PackError"),
)


def _loaded(names: Sequence[tuple[str, str]]) -> tuple[type, ...]:
    out = []
    for module, cls in names:
        mod = sys.modules.get(module)
        if mod is not None and isinstance(getattr(mod, cls, None), type):
            out.append(getattr(mod, cls))
    return tuple(out)


def fail(message: str, code: int = EXIT_ERROR) -> int:
    """Print ``error: message`` on stderr; returns ``code``."""
    print(f"error: {message}", file=sys.stderr)
    return code


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code for an error a command may meet, ``None`` for anything else (a bug: let it show)."""
    if isinstance(exc, _loaded(_USAGE_ERRORS)):
        return EXIT_USAGE
    if isinstance(exc, _loaded(_RUN_ERRORS) + (OSError,)):
        return EXIT_ERROR
    return None


def guard(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a subcommand: known errors become ``error: <message>`` and their exit code; Ctrl-C exits 130."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as exc:
            code = exit_code_for(exc)
            if code is None:
                raise
            return fail(str(exc), code)

    run.__name__, run.__doc__ = fn.__name__, fn.__doc__
    return run


# -- options ---------------------------------------------------------------------------------------------------


def add_param_option(parser: argparse.ArgumentParser, example: str = "threshold=0.5") -> None:
    """``--param KEY=VALUE`` (repeatable), read by :func:`param_overrides`."""
    parser.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help=f"parameter override by PP-ShiTu name, e.g. {example} (repeatable)",
    )


def param_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``["threshold=0.5", "IndexProcess.return_k=3"]`` -> checked overrides (values read as YAML scalars).

    Raises :class:`UsageError` naming a malformed item, an unreadable value or an unknown / ill-typed parameter.
    """
    import yaml

    from shitu.params import ParamError, flatten

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise UsageError(f"--param {key.strip()}: cannot read the value {value!r}") from None
    try:
        flatten(out)  # names and types, as the server would check them
    except ParamError as exc:
        raise UsageError(f"--param: {exc}") from None
    return out


def add_token_option(parser: argparse.ArgumentParser) -> None:
    """``--token`` (default: ``$SHITU_ADMIN_TOKEN``, read by :func:`token_from`)."""
    parser.add_argument("--token", help=f"admin token sent as 'Authorization: Bearer' (default: ${TOKEN_ENV})")


def token_from(args: argparse.Namespace) -> str | None:
    """``--token``, else ``$SHITU_ADMIN_TOKEN``, else ``None``."""
    return getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None


def resolve_gallery(arg: str | None) -> str | Path | None:
    """``--gallery`` in-process: a folder (``Path``) when ``arg`` has a path separator, names an existing folder or
    is not a valid gallery name; else a gallery *name* of the scenario pack (``str``); ``None`` stays ``None``. A
    gallery URI (``milvus://host:port/collection``) is passed on as it is."""
    if arg is None or arg == "":
        return None
    if "://" in arg:
        return arg
    if (
        "/" in arg
        or os.sep in arg
        or (os.altsep and os.altsep in arg)
        or Path(arg).is_dir()
        or not GALLERY_NAME.match(arg)
    ):
        return Path(arg)
    return arg


def take_gallery(args: argparse.Namespace, rest: str | None = None) -> None:
    """Settle ``args.gallery`` (the GALLERY positional) and ``args.gallery_name`` (``--gallery``): at most one is set.

    argparse fills an optional GALLERY positional first, so ``build --gallery mine photos/`` gives it ``photos/``:
    with ``--gallery`` that value is the first of the positionals named ``rest`` (a list: SOURCE..., IMAGE...).
    Where there is no such list, both is a :class:`UsageError`."""
    name, positional = getattr(args, "gallery_name", None), getattr(args, "gallery", None)
    if name is None or positional is None:
        return
    if rest is not None and isinstance(getattr(args, rest, None), list):
        setattr(args, rest, [positional, *getattr(args, rest)])
        args.gallery = None
        return
    raise UsageError(f"give a gallery ({positional}) or --gallery {name}, not both")


def scenario_gallery_names(pack: Any) -> list[str]:
    """The galleries an engine of ``pack`` can open by name: the pack's declared ones, then every gallery folder of
    the scenario (made by ``shitu gallery build --gallery NAME`` or a server's ``add``), sorted; default first."""
    from shitu.serving.gallery.local import DB_NAME

    names = set(pack.galleries)
    root = pack.gallery_dir(pack.default_gallery).parent
    if root.is_dir():
        names.update(d.name for d in root.iterdir() if (d / DB_NAME).is_file())
    names.discard(pack.default_gallery)
    return [pack.default_gallery, *sorted(names)]


def named_gallery(name: str | None, scenario: str | None, create: bool = False) -> tuple[Path, Any]:
    """``--gallery NAME`` in-process: ``(folder, declaration)`` of gallery ``NAME`` of the scenario pack, where the
    engine (and a server of that scenario) finds it: the pack's declared gallery (``declaration`` its
    ``GallerySpec``), else the folder ``NAME`` beside the pack's galleries (``declaration`` None). ``None``: the
    pack's default gallery. A name that is neither is a :class:`UsageError` listing the names there are, unless
    ``create`` (``build`` makes it)."""
    from shitu.plugins import registry
    from shitu.plugins.errors import PackError
    from shitu.serving.gallery.local import DB_NAME

    try:
        pack = registry.get_pack(scenario)
    except PackError as exc:
        raise UsageError(f"--scenario: {exc}") from None
    name = name or pack.default_gallery
    spec = pack.galleries.get(name)
    if spec is not None:
        return Path(spec.dir()), spec
    path = pack.gallery_dir(pack.default_gallery).parent / name
    if not create and not (path / DB_NAME).is_file():
        raise UsageError(
            f"scenario {pack.name!r} has no gallery {name!r} (galleries: "
            f"{', '.join(scenario_gallery_names(pack))}; `shitu gallery build --gallery {name} SOURCE` makes it)"
        )
    return path, None


def gallery_target(args: argparse.Namespace, rest: str | None = None, create: bool = False) -> tuple[str, Any]:
    """A gallery command's gallery, in-process: ``(folder or URI, the pack's declaration or None)`` from GALLERY (a
    folder or URI, as given) or ``--gallery NAME|DIR`` (:func:`resolve_gallery`'s rule; a name through
    :func:`named_gallery` with ``--scenario``); neither: the scenario's default gallery. ``rest``, ``create``: as
    for :func:`take_gallery` and :func:`named_gallery`."""
    take_gallery(args, rest)
    if getattr(args, "gallery", None) is not None:
        return str(args.gallery), None
    target = resolve_gallery(getattr(args, "gallery_name", None))
    if isinstance(target, Path) or (isinstance(target, str) and "://" in target):
        return str(target), None
    path, spec = named_gallery(target, getattr(args, "scenario", None), create=create)
    return str(path), spec


def add_gallery_option(parser: argparse.ArgumentParser, scenario: bool = False) -> None:
    """``--gallery NAME`` (dest ``gallery_name``), read by :func:`gallery_target`; ``scenario``: also
    ``--scenario``, the pack whose gallery NAME is."""
    parser.add_argument(
        "--gallery",
        dest="gallery_name",
        metavar="NAME",
        help="a gallery by name, in place of GALLERY: of --scenario's pack (declared by it, or made by "
        "`build --gallery NAME` or a server's add), with --server the server's; a folder works too. "
        "Neither: the default gallery",
    )
    if scenario:
        parser.add_argument("--scenario", help="scenario pack of --gallery NAME (default: the default pack)")


# -- argparse number types -------------------------------------------------------------------------------------


def _number(convert: type, minimum: float, strict: bool) -> Callable[[str], int | float]:
    """An argparse ``type=`` that parses with ``convert`` and refuses values below (or at, ``strict``) ``minimum``."""
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


# -- printing --------------------------------------------------------------------------------------------------


def print_info(info: dict[str, Any], as_json: bool) -> None:
    """``key  value`` lines, or one JSON object."""
    print(json.dumps(info, ensure_ascii=False) if as_json else key_values(info))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str] | None = None, right: bool = False) -> str:
    """Rows as aligned text columns (``None`` prints empty); with ``headers`` a header and a rule line first.

    ``right`` aligns every column right (numbers); otherwise left with trailing spaces stripped."""
    cells = [["" if c is None else str(c) for c in r] for r in rows]
    if headers is not None:
        cells.insert(0, [str(h) for h in headers])
    if not cells:
        return ""
    ncol = max(len(r) for r in cells)
    widths = [max((len(r[i]) for r in cells if i < len(r)), default=0) for i in range(ncol)]
    lines = []
    for n, r in enumerate(cells):
        just = [c.rjust(w) if right else c.ljust(w) for c, w in zip(r, widths)]
        lines.append("  ".join(just).rstrip())
        if n == 0 and headers is not None:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def key_values(pairs: dict[str, Any]) -> str:
    """``key  value`` lines, keys padded to the longest (``shitu gallery info``, ``shitu recognize`` summaries)."""
    width = max((len(k) for k in pairs), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in pairs.items())
