"""Run every benchmark in turn (``make bench``); each prints its tables and writes benchmarks/results/*.json."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITE = ["bench_pipeline.py", "bench_backends.py", "bench_gallery_build.py", "bench_serving.py", "bench_index.py",
         "bench_scaleout.py", "soak.py"]


def main() -> int:
    failed = []
    for script in SUITE:
        print(f"\n===== {script} =====", flush=True)
        if subprocess.run([sys.executable, str(HERE / script)]).returncode != 0:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
