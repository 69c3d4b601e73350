"""The house rules the docs' Architecture page states that import-linter cannot: no module over 600 lines.

Which room may import which (layers, the client apart from the engine, nothing importing the CLI, PaddleHub only in
the hub room, no cycles) are import-linter contracts in ``pyproject.toml``, checked by ``make lint`` (and so by
``make test``); this file only reads the files' sizes. There is no waiver: a module that grows past the limit is
split.
"""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("serving", "plugins", "params", "hub_modules", "shitu")
MAX_LINES = 600


def test_no_module_over_600_lines():
    long = [
        f"{path.relative_to(ROOT)} ({n} lines)"
        for folder in FOLDERS
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (n := path.read_text(encoding="utf-8").count("\n")) > MAX_LINES
    ]
    assert long == [], f"modules over {MAX_LINES} lines: {long}"


def test_the_house_rules_are_import_linter_contracts():
    """The contracts make lint checks exist (a deleted table would silently check nothing)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    kinds = {c["type"] for c in config["contracts"]}
    assert {"layers", "forbidden", "acyclic_siblings"} <= kinds
    forbidden = {m for c in config["contracts"] if c["type"] == "forbidden" for m in c["forbidden_modules"]}
    assert {"shitu.serving.cli", "shitu.serving.engine", "paddlehub", "faiss"} <= forbidden
