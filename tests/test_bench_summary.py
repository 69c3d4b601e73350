"""`make bench`'s one table: each benchmark's `summary`, collected by run_all.py, and the docs' Benchmarks table
(docs/benchmarks.md) regenerated from run_all.json (on fixture JSON: no benchmark runs here)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import readme_table  # noqa: E402
import run_all  # noqa: E402


def _fixture_run(tmp_path: Path) -> tuple[list[dict], Path]:
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "a.json").write_text(
        json.dumps(
            {
                "summary": [
                    {"what": "index layer / raw faiss | 10k", "figure": "1.03x (0.412 vs 0.400 ms)"},
                    {"what": "second", "figure": "2 / 3"},
                ]
            }
        )
    )
    (results / "b.json").write_text(json.dumps({"rows": []}))  # no summary
    (results / "c.json").write_text(json.dumps({"summary": [{"what": "crashed half-way", "figure": "7 ms"}]}))
    steps = [
        {"step": "a.py", "exit_status": 0, "results": "benchmarks/results/a.json"},
        {"step": "b.py", "exit_status": 0, "results": "benchmarks/results/b.json"},
        {"step": "c.py", "exit_status": 1, "results": "benchmarks/results/c.json"},
        {"step": "d.py", "exit_status": 2, "results": None},
        {"step": "pytest -m timing", "exit_status": 0, "results": None, "expects_results": False},
    ]
    return steps, tmp_path


def test_collect_keeps_every_step_and_says_what_is_missing(tmp_path):
    steps, root = _fixture_run(tmp_path)
    rows = readme_table.collect(steps, root)
    assert [r["step"] for r in rows] == ["a.py", "a.py", "b.py", "c.py", "c.py", "d.py", "pytest -m timing"]
    assert rows[0] == {"step": "a.py", "what": "index layer / raw faiss | 10k", "figure": "1.03x (0.412 vs 0.400 ms)"}
    assert rows[2]["what"] == "(no summary)" and 'no "summary" list' in rows[2]["figure"]
    assert rows[4] == {"step": "c.py", "what": "(step failed)", "figure": "exit status 1"}
    assert rows[5] == {"step": "d.py", "what": "(no results file)", "figure": "FAILED (exit status 2)"}
    assert rows[6] == {"step": "pytest -m timing", "what": "pytest -m timing", "figure": "passed"}
    printed = readme_table.text_table(rows)
    assert printed.splitlines()[0].split() == ["benchmark", "what", "figure"] and "1.03x (0.412" in printed


def test_summary_rows_are_checked():
    with pytest.raises(readme_table.SummaryError, match="row 1"):
        readme_table.summary_of({"summary": [{"what": "a", "figure": "b"}, {"what": "a", "figure": 3}]}, "x.json")
    with pytest.raises(readme_table.SummaryError, match='no "summary"'):
        readme_table.summary_of({"summary": []}, "x.json")


def test_page_regenerated_between_the_markers_from_run_all_json(tmp_path):
    steps, root = _fixture_run(tmp_path)
    run = {
        "machine": {"cpu": "AMD EPYC", "cores": 2, "python": "3.11.7", "paddle": "3.3.1"},
        "started": "2026-12-01 14:00 UTC",
        "quick": True,
        "load_average": [3.2, 5.1],
        "steps": steps,
        "summary": readme_table.collect(steps, root),
    }
    results = tmp_path / "run_all.json"
    results.write_text(json.dumps(run))
    page = tmp_path / "benchmarks.md"
    page.write_text(
        f"# x\n\n## Benchmarks\n\nprose kept\n\n{readme_table.BEGIN}\n| old | table |\n"
        f"{readme_table.END}\n\n## Next\nkept too\n"
    )
    assert readme_table.main(["--results", str(results), "--page", str(page), "--check"]) == 1
    assert readme_table.main(["--results", str(results), "--page", str(page)]) == 0
    text = page.read_text()
    assert "| old | table |" not in text and text.startswith("# x\n\n## Benchmarks\n\nprose kept\n\n")
    assert text.endswith(f"{readme_table.END}\n\n## Next\nkept too\n")
    block = text.split(readme_table.BEGIN)[1].split(readme_table.END)[0]
    assert (
        "Figures from one `make bench` (`--quick`) run on 2026-12-01 14:00 UTC: AMD EPYC, 2 cores, Python "
        "3.11.7, paddle 3.3.1, load average 3.2 at the start, 5.1 at the end." in block
    )
    assert "| `a.py` | index layer / raw faiss \\| 10k | 1.03x (0.412 vs 0.400 ms) |" in block  # pipe escaped
    assert block.count("\n| `") == 7
    assert readme_table.main(["--results", str(results), "--page", str(page), "--check"]) == 0
    assert readme_table.write_page(run, page) is False  # same run: nothing changes


def test_page_without_one_marker_pair_is_an_error(tmp_path, capsys):
    results = tmp_path / "run_all.json"
    results.write_text(json.dumps({"summary": []}))
    page = tmp_path / "benchmarks.md"
    for text in (
        "no markers\n",
        f"{readme_table.END}\n{readme_table.BEGIN}\n",
        f"{readme_table.BEGIN}{readme_table.END}{readme_table.BEGIN}{readme_table.END}",
    ):
        page.write_text(text)
        assert readme_table.main(["--results", str(results), "--page", str(page)]) == 2
        assert "exactly one <!-- bench:begin -->" in capsys.readouterr().err
        assert page.read_text() == text


def test_the_docs_page_has_the_markers_around_its_figures_table():
    text = (BENCH.parent / "docs" / "benchmarks.md").read_text()
    assert text.count(readme_table.BEGIN) == 1 and text.count(readme_table.END) == 1
    block = text.split(readme_table.BEGIN)[1].split(readme_table.END)[0]
    assert "| what | figure |" in block or "| benchmark | what | figure |" in block


@pytest.mark.parametrize("script", run_all.SUITE)
def test_every_suite_script_writes_a_summary_and_takes_json(script):
    """Static: run_all passes --json to each step and reads its summary (no benchmark runs in the test suite)."""
    path = BENCH / script
    assert path.is_file(), f"{script} is in run_all.SUITE but does not exist"
    source = path.read_text()
    assert '"--json"' in source, f"{script} has no --json option (run_all passes one)"
    assert '"summary"' in source, f'{script} writes no "summary" rows into its results JSON'


def test_quick_args_are_options_the_scripts_define():
    assert set(run_all.QUICK_ARGS) <= set(run_all.SUITE)
    for script, argv in run_all.QUICK_ARGS.items():
        source = (BENCH / script).read_text()
        for flag in (a for a in argv if a.startswith("--")):
            assert re.search(rf'add_argument\(\s*"{flag}"', source), f"{script} has no option {flag}"
    assert run_all.results_path("quality/run.py").name == "quality_run.json"


def test_serving_summary_names_each_combination_and_the_default():
    import bench_serving

    grid = [
        {"workers": 1, "threads": 1, "rps_c4": 9.0, "p50_c1_ms": 120.0},
        {"workers": 1, "threads": 2, "rps_c4": 10.0, "p50_c1_ms": 80.0},
        {"workers": 2, "threads": 1, "rps_c4": 11.0, "p50_c1_ms": 118.0},
    ]
    rows = bench_serving.summary_rows(grid, {"ratio": 1.05, "http_p50_ms": 84.0, "in_process_p50_ms": 80.0}, (1, 2), 2)
    readme_table.summary_of({"summary": rows}, "serving")  # well-formed
    figures = {r["what"]: r["figure"] for r in rows}
    assert (
        figures["hub serving, 1 worker x 2 threads: req/s at concurrency 4, p50 at concurrency 1"]
        == "10.0 req/s, 80.0 ms"
    )
    assert figures["2 workers x 1 thread vs 1 worker x 2 threads, throughput at concurrency 4"].startswith("1.10x")
    assert any(r["figure"].startswith("1.050x (84.0 vs 80.0 ms)") for r in rows)
    assert (
        "1 worker x 2 threads; most req/s at c=4: 2 workers x 1 thread, lowest p50 at c=1: 1 worker x 2 threads"
        in figures["`shitu serve` default for 2 cores (serve_defaults) vs the measured best"]
    )


def test_run_all_prints_one_table_and_writes_it_on_a_tiny_fake_suite(tmp_path, monkeypatch, capsys):
    """run_all.main end to end on two stand-in scripts (fakes of benchmarks: one writes a summary, one fails before
    writing anything), with --quick args passed and a stale results file removed first."""
    import common

    fake = tmp_path / "benchmarks"
    (fake / "results").mkdir(parents=True)
    (fake / "ok.py").write_text(
        "import argparse, json\nap = argparse.ArgumentParser()\nap.add_argument('--json')\nap.add_argument('--n')\n"
        "a = ap.parse_args()\njson.dump({'summary': [{'what': 'n was', 'figure': a.n}]}, open(a.json, 'w'))\n"
    )
    (fake / "broken.py").write_text("raise SystemExit(3)\n")
    (fake / "results" / "broken.json").write_text(json.dumps({"summary": [{"what": "stale", "figure": "old"}]}))
    monkeypatch.setattr(run_all, "HERE", fake)
    monkeypatch.setattr(run_all, "RESULTS", fake / "results")
    monkeypatch.setattr(common, "RESULTS", fake / "results")
    monkeypatch.setattr(run_all, "SUITE", ["ok.py", "broken.py"])
    monkeypatch.setattr(run_all, "QUICK_ARGS", {"ok.py": ["--n", "7"]})
    assert run_all.main(["--quick", "--only", "ok.py", "broken.py"]) == 1
    out = capsys.readouterr().out
    table = out.split("===== every figure of this run =====")[1]
    assert "ok.py" in table and "n was" in table and "7" in table and "FAILED (exit status 3)" in table
    assert "stale" not in table and "failed: broken.py" in out
    run = json.loads((fake / "results" / "run_all.json").read_text())
    assert run["quick"] is True and run["failed"] == ["broken.py"] and len(run["load_average"]) == 2
    assert run["summary"][0] == {"step": "ok.py", "what": "n was", "figure": "7"}
    with pytest.raises(readme_table.SummaryError, match="some steps only"):
        readme_table.write_page(run, tmp_path / "benchmarks.md")
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nosuch.py"])
    assert "not in the suite: nosuch.py" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_all.main(["--only", "ok.py", "--write-docs"])
    assert "--write-docs needs the whole suite" in capsys.readouterr().err
