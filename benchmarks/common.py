"""Helpers shared by the benchmarks: machine description, statistics, tables, JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """Cores, CPU, Python, paddle version and build flags."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        info["cpu"] = platform.processor()
    try:
        import paddle

        info["paddle"] = paddle.__version__
        info["paddle_cuda"] = paddle.is_compiled_with_cuda()
    except ImportError:
        pass
    return info


def describe(info: dict[str, Any], extra: str = "") -> str:
    keys = ("cpu", "cores", "python", "paddle")
    return "machine: " + ", ".join(f"{k}={info[k]}" for k in keys if k in info) + (f"; {extra}" if extra else "")


def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(values) * 1000,
        "p95_ms": percentile(values, 95) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "n": len(values),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with right-aligned numbers."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    from shitu.serving.cli.toolkit import table as text_table  # the one table printer

    return text_table([[fmt(v) for v in row] for row in rows], [str(h) for h in headers], right=True)


def write_json(name: str, data: dict[str, Any], path: str | None = None) -> Path:
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, default=float))
    print(f"\nresults written to {out}", file=sys.stderr)
    return out
