"""Run every benchmark in turn (``make bench``), then the tests that assert wall-clock bounds (``pytest -m timing``).

    python benchmarks/run_all.py [--quick] [--write-docs] [--only NAME ...]

Each benchmark prints its tables and writes ``benchmarks/results/<script>.json`` (passed as ``--json``), whose
``summary`` holds its headline figures. At the end this prints every step's figures as one table and writes
``benchmarks/results/run_all.json``: the machine, the load average, per step its exit status, duration and results
file, and that ``summary`` (``benchmarks/readme_table.py``). ``--write-docs`` then regenerates the figures table
of the docs' Benchmarks page (``docs/benchmarks.md``) from it, and its plots (``benchmarks/plots.py``). ``--quick`` gives each step the smaller sizes of :data:`QUICK_ARGS` (the whole
run in about 15 minutes on 2 cores; every figure is still printed, from fewer samples).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, machine, write_json  # noqa: E402
from plots import write_plots  # noqa: E402
from readme_table import collect, text_table, write_page  # noqa: E402

SUITE = [
    "bench_pipeline.py",
    "bench_backends.py",
    "bench_gallery_build.py",
    "bench_serving.py",
    "bench_index.py",
    "bench_whole_image.py",
    "bench_operating.py",
    "soak.py",
    "bench_official_onednn.py",
    "bench_scaleout.py",
    "bench_vs_paddleclas.py",
    "bench_int8.py",
    "bench_scale.py",  # issue 29: cost curves per index type and size (10k, 100k; --10m not in the suite)
]
SUITE.append("quality/run.py")  # recognition quality (#18): its figures join the table too
#: ``--quick``: smaller sizes and fewer repeats per step (the same figures, from fewer samples).
QUICK_ARGS = {
    "bench_pipeline.py": ["--repeat", "8", "--batch-rounds", "2"],
    "bench_backends.py": ["--repeat", "8"],
    "bench_gallery_build.py": ["--images", "48", "--repeat", "1"],
    "bench_serving.py": ["--requests", "12", "--rounds", "2", "--concurrency", "1", "4"],
    "bench_index.py": [
        "--queries",
        "200",
        "--latency-queries",
        "100",
        "--batch-rounds",
        "2",
        "--measure-rebuild-max",
        "10000",
    ],
    "bench_whole_image.py": ["--repeat", "2"],
    "bench_operating.py": ["--vectors", "5000"],
    "bench_scale.py": ["--sizes", "10000", "--queries", "100"],
    "soak.py": ["--seconds", "30"],
    "bench_official_onednn.py": ["--repeat", "3"],
    "bench_scaleout.py": ["--sizes", "10000", "--queries", "40", "--requests", "16"],
    "quality/run.py": ["--latency-rounds", "1"],
    "bench_vs_paddleclas.py": ["--repeat", "1"],
    "bench_int8.py": ["--rounds", "6", "--classes", "30"],
}
#: The test suite's timing checks (skipped by a plain ``pytest``): visibility across processes, live-video lag.
TIMING_TESTS = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-m", "timing", str(HERE.parent / "tests")]


def results_path(script: str) -> Path:
    """Where ``run_all`` asks ``script`` to write its JSON: ``results/<script path, / as _, no .py>.json``."""
    return RESULTS / (script.removesuffix(".py").replace("/", "_") + ".json")


def _step(name: str, argv: list[str], results: Path | None) -> dict:
    print(f"\n===== {name} =====", flush=True)
    if results is not None:
        results.unlink(missing_ok=True)  # a failed step must not show an earlier run's figures
    started = time.perf_counter()
    code = subprocess.run(argv, cwd=HERE.parent).returncode
    return {
        "step": name,
        "exit_status": code,
        "seconds": round(time.perf_counter() - started, 1),
        "expects_results": results is not None,
        "results": str(results.relative_to(HERE.parent)) if results and results.is_file() else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes per step (QUICK_ARGS): ~15 min on 2 cores")
    ap.add_argument(
        "--write-docs",
        "--write-readme",
        dest="write_docs",
        action="store_true",
        help="regenerate docs/benchmarks.md's figures table (--write-readme: its old name)",
    )
    ap.add_argument("--only", nargs="+", metavar="SCRIPT", help="run these steps of the suite only")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.only or ()) - set(SUITE))
    if unknown:
        ap.error(f"--only: not in the suite: {', '.join(unknown)}")
    if args.only and args.write_docs:
        ap.error("--write-docs needs the whole suite (the docs show one complete run), not --only")
    load = [os.getloadavg()[0]]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    steps = [
        _step(
            script,
            [
                sys.executable,
                str(HERE / script),
                "--json",
                str(results_path(script)),
                *(QUICK_ARGS.get(script, []) if args.quick else []),
            ],
            results_path(script),
        )
        for script in SUITE
        if not args.only or script in args.only
    ]
    if not args.only:
        steps.append(_step("pytest -m timing", TIMING_TESTS, None))
    load.append(os.getloadavg()[0])
    failed = [s["step"] for s in steps if s["exit_status"] != 0]
    summary = collect(steps, HERE.parent)
    run = {
        "machine": machine(),
        "started": started,
        "quick": args.quick,
        "only": args.only,
        "load_average": load,
        "steps": steps,
        "failed": failed,
        "summary": summary,
    }
    print("\n===== every figure of this run =====")
    print(text_table(summary))
    write_json("run_all", run)
    if args.write_docs:
        print("docs/benchmarks.md regenerated" if write_page(run) else "docs/benchmarks.md already shows these figures")
        for note in write_plots():
            print(note)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
