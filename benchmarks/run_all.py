"""Run every benchmark in turn (``make bench``), then the tests that assert wall-clock bounds (``pytest -m timing``).

Each benchmark prints its tables and writes ``benchmarks/results/<name>.json``; this script writes
``benchmarks/results/run_all.json``: the machine, and per step its exit status, duration and results file.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, machine, write_json  # noqa: E402

SUITE = ["bench_pipeline.py", "bench_backends.py", "bench_gallery_build.py", "bench_serving.py", "bench_index.py",
         "bench_whole_image.py", "bench_operating.py", "soak.py", "bench_official_onednn.py", "bench_scaleout.py",
         "bench_vs_paddleclas.py"]
#: The test suite's timing checks (skipped by a plain ``pytest``): visibility across processes, live-video lag.
TIMING_TESTS = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-m", "timing", str(HERE.parent / "tests")]


def _step(name: str, argv: list[str], results: Path | None) -> dict:
    print(f"\n===== {name} =====", flush=True)
    started = time.perf_counter()
    code = subprocess.run(argv, cwd=HERE.parent).returncode
    return {"step": name, "exit_status": code, "seconds": round(time.perf_counter() - started, 1),
            "results": str(results.relative_to(HERE.parent)) if results and results.is_file() else None}


def main() -> int:
    steps = [_step(script, [sys.executable, str(HERE / script)], RESULTS / f"{Path(script).stem}.json")
             for script in SUITE]
    steps.append(_step("pytest -m timing", TIMING_TESTS, None))
    failed = [s["step"] for s in steps if s["exit_status"] != 0]
    write_json("run_all", {"machine": machine(), "steps": steps, "failed": failed})
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
