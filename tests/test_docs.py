"""The README is a map and the documentation site is built and checked: `mkdocs build --strict` (what `make docs`
runs) passes and fails on a broken anchor, the README stays under 12 KB with `make demo` / `make test` on its first
screen and every docs page it links to exists, no code fence swallows the text after it, and the parameters table
is the schema's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shitu.params.__main__ import with_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_BYTES = 12 * 1024
#: Lines of the README a reader sees before scrolling.
FIRST_SCREEN = 40


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (the dev extra has it: pip install -e '.[dev]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (the dev extra has it)")
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_the_site_builds_strictly(tmp_path):
    done = _mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "writing-packs.html").is_file()


@pytest.mark.parametrize(
    "link, complaint",
    [
        ("[x](serving.md#no-such-anchor)", "does not contain an anchor '#no-such-anchor'"),
        ("[x](#no-such-anchor-here)", "there is no such anchor on this page"),
        ("[x](no-such-page.md)", "not found among documentation files"),
        ("[x](/galleries.md)", "absolute link"),
    ],
)
def test_the_strict_build_fails_on_a_broken_link(tmp_path, link, complaint):
    """The validation settings of mkdocs.yml turn each of these into a warning, which --strict makes fatal."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    page = tmp_path / "docs" / "galleries.md"
    page.write_text(page.read_text(encoding="utf-8") + f"\n{link}\n", encoding="utf-8")
    done = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert complaint in done.stdout + done.stderr


def test_readme_is_a_map_under_12_kb():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; the rest belongs in docs/ (limit {README_MAX_BYTES})"
    first = "\n".join(README.read_text(encoding="utf-8").splitlines()[:FIRST_SCREEN])
    assert "make demo" in first and "make test" in first


def _links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", text)


def test_every_page_the_readme_links_to_exists():
    links = [link for link in _links(README.read_text(encoding="utf-8")) if "://" not in link]
    docs_links = [link for link in links if link.startswith("docs/")]
    assert len(docs_links) >= 15, docs_links  # one per topic page, at least
    for link in links:
        path = link.split("#")[0]
        assert (ROOT / path).is_file(), f"README.md links to {link}, which does not exist"
    pages = {p.name for p in DOCS.glob("*.md")}
    linked = {Path(link.split("#")[0]).name for link in docs_links}
    assert pages - linked == set(), f"docs pages the README does not link to: {sorted(pages - linked)}"


def fence_errors(text: str) -> list[str]:
    """Lines where a fence opens with more than a language name, or a closing fence has text after it (which
    does not close the block: what follows, headings included, renders as code)."""
    errors, inside = [], False
    for number, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^ {0,3}```(.*)$", line)
        if not m:
            continue
        rest = m.group(1).strip()
        if inside and rest:
            errors.append(f"line {number}: a closing fence with text after it: {line[:60]!r}")
        elif not inside and not re.fullmatch(r"[A-Za-z0-9_+-]*", rest):
            errors.append(f"line {number}: a fence whose info string is not a language: {line[:60]!r}")
        else:
            inside = not inside
    if inside:
        errors.append("a code fence is never closed")
    return errors


@pytest.mark.parametrize("path", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_no_code_fence_swallows_what_follows(path):
    assert fence_errors(path.read_text(encoding="utf-8")) == []


def test_fence_check_catches_the_old_readme_bug():
    """The README had ```` ``` The index benchmark ```` closing a block: the "Scaling out" heading rendered as code."""
    text = "```console\n$ shitu recognize x.jpg\n``` The index benchmark\n\n## Scaling out\n"
    assert fence_errors(text) == [
        "line 3: a closing fence with text after it: '``` The index benchmark'",
        "a code fence is never closed",
    ]


def test_the_parameters_table_is_the_schemas():
    page = (DOCS / "parameters.md").read_text(encoding="utf-8")
    assert with_table(page) == page, "docs/parameters.md is stale: python -m shitu.params --write docs/parameters.md"
