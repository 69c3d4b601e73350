"""One table of every benchmark's headline figures, and the docs' Benchmarks table regenerated from it.

    python benchmarks/readme_table.py [--results benchmarks/results/run_all.json] [--page docs/benchmarks.md] [--check]

Each benchmark's results JSON carries ``"summary": [{"what": ..., "figure": ...}, ...]`` (its headline figures);
``benchmarks/run_all.py`` (``make bench``) gathers them with :func:`collect` into ``run_all.json``'s ``summary``
and prints them with :func:`text_table`. This script (or ``run_all.py --write-docs``) replaces what lies between
:data:`BEGIN` and :data:`END` in the docs' Benchmarks page (:data:`PAGE`) with :func:`markdown` of that run: the
machine line, then one row per figure. ``--check`` only says whether the page already shows that run (exit 1 if
not).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
RUN_ALL = HERE / "results" / "run_all.json"
#: The docs page whose figures table this regenerates (the README only links to it).
PAGE = HERE.parent / "docs" / "benchmarks.md"


class SummaryError(ValueError):
    """A results file's ``summary`` is not a list of ``{"what": str, "figure": str}``, or the page lacks markers."""


def summary_of(data: dict[str, Any], source: str) -> list[dict[str, str]]:
    """The ``summary`` rows of one results JSON, checked."""
    rows = data.get("summary")
    if not isinstance(rows, list) or not rows:
        raise SummaryError(f'{source}: no "summary" list of {{"what", "figure"}} rows')
    for i, row in enumerate(rows):
        if not (isinstance(row, dict) and isinstance(row.get("what"), str) and isinstance(row.get("figure"), str)):
            raise SummaryError(f'{source}: summary row {i} is not {{"what": str, "figure": str}}: {row!r}')
    return [{"what": r["what"], "figure": r["figure"]} for r in rows]


def collect(steps: list[dict[str, Any]], root: Path) -> list[dict[str, str]]:
    """One row per figure of every step (``step``, ``what``, ``figure``), in suite order. A step that failed, wrote
    no results or no valid summary gets one row saying so, so the table never silently drops a benchmark."""
    out: list[dict[str, str]] = []
    for step in steps:
        name, results = step["step"], step.get("results")
        if results is None:
            status = "passed" if step["exit_status"] == 0 else f"FAILED (exit status {step['exit_status']})"
            out.append(
                {
                    "step": name,
                    "what": "(no results file)" if step.get("expects_results", True) else name,
                    "figure": status,
                }
            )
            continue
        try:
            rows = summary_of(json.loads((root / results).read_text()), results)
        except (OSError, ValueError) as exc:
            rows = [{"what": "(no summary)", "figure": str(exc)[:200]}]
        if step["exit_status"] != 0:
            rows = [*rows, {"what": "(step failed)", "figure": f"exit status {step['exit_status']}"}]
        out.extend({"step": name, **r} for r in rows)
    return out


def machine_line(run: dict[str, Any]) -> str:
    """``make bench`` run on <date>, <mode>: CPU, cores, Python, paddle, load average."""
    m = run.get("machine", {})
    parts = [
        f"{m['cpu']}" if "cpu" in m else None,
        f"{m['cores']} cores" if "cores" in m else None,
        f"Python {m['python']}" if "python" in m else None,
        f"paddle {m['paddle']}" if "paddle" in m else None,
    ]
    load = run.get("load_average")
    if load:
        parts.append(f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end")
    mode = "`make bench` (`--quick`)" if run.get("quick") else "`make bench`"
    when = f" on {run['started']}" if run.get("started") else ""
    return f"Figures from one {mode} run{when}: " + ", ".join(p for p in parts if p) + "."


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(run: dict[str, Any]) -> str:
    """The block between the markers: the machine line and a ``| benchmark | what | figure |`` table."""
    lines = [machine_line(run), "", "| benchmark | what | figure |", "|---|---|---|"]
    lines += [f"| `{_cell(r['step'])}` | {_cell(r['what'])} | {_cell(r['figure'])} |" for r in run.get("summary", [])]
    return "\n".join(lines)


def replace_block(page: str, block: str) -> str:
    """``page`` with the text between :data:`BEGIN` and :data:`END` (exactly one pair, in order) set to ``block``."""
    if page.count(BEGIN) != 1 or page.count(END) != 1 or page.index(BEGIN) > page.index(END):
        raise SummaryError(f"the page needs exactly one {BEGIN} ... {END} pair")
    head, rest = page.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def text_table(rows: list[dict[str, str]]) -> str:
    """The collected figures as one plain-text table (what ``make bench`` prints last)."""
    from shitu.serving.cli.toolkit import table

    return table([[r["step"], r["what"], r["figure"]] for r in rows], ["benchmark", "what", "figure"])


def write_page(run: dict[str, Any], page: Path = PAGE) -> bool:
    """Regenerate the page's block from ``run`` (a whole suite's run); True if the file changed."""
    if run.get("only"):
        raise SummaryError(f"a run of some steps only ({', '.join(run['only'])}) does not replace the page's table")
    old = page.read_text()
    new = replace_block(old, markdown(run))
    if new != old:
        page.write_text(new)
    return new != old


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=RUN_ALL, help="run_all.json of a `make bench` run")
    ap.add_argument("--page", type=Path, default=PAGE, help="the docs page holding the markers")
    ap.add_argument("--check", action="store_true", help="exit 1 if the page does not show this run")
    args = ap.parse_args(argv)
    try:
        run = json.loads(args.results.read_text())
        if args.check:
            current = args.page.read_text()
            same = replace_block(current, markdown(run)) == current
            print(f"{args.page} shows this run" if same else f"{args.page} does not show {args.results}")
            return 0 if same else 1
        changed = write_page(run, args.page)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.page}: {'regenerated' if changed else 'already up to date'} from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
