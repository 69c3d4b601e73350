"""``python -m shitu.params``: print the parameter table (Markdown) that ``docs/parameters.md`` embeds.

``--write PAGE`` replaces the table between :data:`BEGIN` and :data:`END` in PAGE; ``--check PAGE`` exits 1 when
PAGE's table differs from the schema's."""

import argparse
import sys
from pathlib import Path

from shitu.params.schema import FIELDS

BEGIN, END = "<!-- params:begin -->", "<!-- params:end -->"


def table() -> str:
    rows = ["| parameter | type | default | per request | meaning |", "|---|---|---|---|---|"]
    for f in FIELDS:
        t = f.type.__name__ if isinstance(f.type, type) else "/".join(x.__name__ for x in f.type)
        default = repr(f.default).replace("|", "\\|")
        aliases = f" (also `{'`, `'.join(f.aliases)}`)" if f.aliases else ""
        rows.append(f"| `{f.name}`{aliases} | {t} | `{default}` | {'yes' if f.per_request else 'no'} | {f.doc} |")
    return "\n".join(rows)


def with_table(page: str) -> str:
    """``page`` with the text between one :data:`BEGIN` ... :data:`END` pair set to :func:`table`."""
    if page.count(BEGIN) != 1 or page.count(END) != 1 or page.index(BEGIN) > page.index(END):
        raise ValueError(f"the page needs exactly one {BEGIN} ... {END} pair")
    head, rest = page.split(BEGIN)
    return f"{head}{BEGIN}\n{table()}\n{END}{rest.split(END)[1]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shitu.params", description=__doc__)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="PAGE", help="regenerate PAGE's table (docs/parameters.md)")
    group.add_argument("--check", type=Path, metavar="PAGE", help="exit 1 if PAGE's table differs from the schema")
    args = ap.parse_args(argv)
    if not (args.write or args.check):
        print(table())
        return 0
    path = args.write or args.check
    try:
        old = path.read_text(encoding="utf-8")
        new = with_table(old)
    except (OSError, ValueError) as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{path}: {'up to date' if new == old else 'differs from the schema (run --write)'}")
        return 0 if new == old else 1
    if new != old:
        path.write_text(new, encoding="utf-8")
    print(f"{path}: {'regenerated' if new != old else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
