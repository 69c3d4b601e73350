"""The house rules the README's Architecture section states, checked on the source: no import cycle between
rooms, the forbidden arrows absent, no module over 600 lines without a stated reason. (Static: reads the files.)"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Folder on disk -> import name (setup.py's ROOTS).
FOLDERS = {
    "serving": "shitu.serving",
    "plugins": "shitu.plugins",
    "params": "shitu.params",
    "hub_modules": "shitu.hub_modules",
    "shitu": "shitu",
}
MAX_LINES = 600
REASON = "Longer than 600 lines:"


def room(module: str) -> str | None:
    """The room of a module: a sub-package of serving, plugins, params, one hub module, or a leaf under shitu/."""
    parts = module.split(".")
    if parts[0] != "shitu" or len(parts) == 1:
        return None
    if parts[1] == "serving":
        return "serving." + parts[2] if len(parts) > 2 else "serving"
    if parts[1] == "hub_modules":  # the package holds only names; each module folder is its own room
        return "hub_modules." + parts[2] if len(parts) > 2 and parts[2] != "__init__" else "hub_modules"
    return parts[1]


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            out[".".join([package, *rel.parts]).removesuffix(".__init__")] = path
    return out


def imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in the file (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def room_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules().items():
        src = room(name)
        for imported in imports(path):
            dst = room(imported)
            if src and dst and dst != src:
                edges[src].add(dst)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of nodes that reach each other through ``edges``."""

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    return sorted({tuple(sorted((a, b))) for a in edges for b in reach(a) if b != a and a in reach(b)})


def test_no_import_cycle_between_rooms():
    assert cycles(room_graph()) == [], "rooms importing each other"


def test_no_import_cycle_between_the_modules_of_plugins():
    """Inside plugins/ too (the installer used to import the registry, which imports the installer)."""
    mods = {n: p for n, p in modules().items() if n.startswith("shitu.plugins.")}
    edges = {
        n: {m for m in mods if m != n and any(i == m or i.startswith(m + ".") for i in imports(p))}
        for n, p in mods.items()
    }
    assert cycles(edges) == [], "plugins modules importing each other"


def test_forbidden_arrows():
    edges = room_graph()
    assert not {r for r in edges["plugins"] if r.startswith("serving")}, "plugins must not import serving"
    for leaf in ("params", "model_spec", "names", "files"):
        assert not {r for r in edges.get(leaf, ()) if r.startswith("serving") or r == "plugins"}, leaf
    assert "serving.engine" not in edges["serving.client"], "the client imports the engine"
    assert edges.get("serving.results", set()) <= {"serving"}, "serving.results is a leaf"
    for name, path in modules().items():
        if room(name) in ("serving.engine", "serving.gallery", "serving.client", "serving.video"):
            assert not {i for i in imports(path) if i.split(".")[0] == "paddlehub"}, f"{name} imports paddlehub"
        if room(name) == "serving.client":
            heavy = {i.split(".")[0] for i in imports(path)} & {"paddle", "faiss", "paddlehub"}
            assert not heavy, f"{name} (client) imports {heavy}"


def test_no_module_over_600_lines_without_a_reason():
    long = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES and REASON not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{name} ({text.count(chr(10))} lines)")
    assert long == [], f"modules over {MAX_LINES} lines with no '{REASON} ...' at the top: {long}"
