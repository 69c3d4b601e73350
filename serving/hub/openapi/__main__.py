"""``python -m shitu.serving.hub.openapi [FILE]``: write the OpenAPI description of a server serving all four modules
(what ``GET /openapi.json`` answers) to FILE or stdout, e.g. for the docs site."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from shitu.serving.hub.openapi import build


def main(argv: list[str]) -> int:
    text = json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
    if argv:
        Path(argv[0]).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
