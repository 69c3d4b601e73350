"""``python -m shitu.params``: print the parameter table (Markdown) that the README embeds."""

from shitu.params.schema import FIELDS


def table() -> str:
    rows = ["| parameter | type | default | per request | meaning |", "|---|---|---|---|---|"]
    for f in FIELDS:
        t = f.type.__name__ if isinstance(f.type, type) else "/".join(x.__name__ for x in f.type)
        default = repr(f.default).replace("|", "\\|")
        aliases = f" (also `{'`, `'.join(f.aliases)}`)" if f.aliases else ""
        rows.append(f"| `{f.name}`{aliases} | {t} | `{default}` | {'yes' if f.per_request else 'no'} | {f.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
