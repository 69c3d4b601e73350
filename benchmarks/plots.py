"""The docs' Benchmarks page plots, drawn from a ``make bench`` run's results JSON (matplotlib, Agg).

    python benchmarks/plots.py [--results benchmarks/results] [--out docs]

Where a curve says more than the table: ``bench_serving.png`` (requests/s and p99 latency against concurrency, fp32
and int8 general-lite on ``shitu serve``'s default workers x threads, from ``bench_serving.json``) and
``bench_index.png`` (batch-1 latency and recall@10 against gallery size per index type, from ``bench_index.json``,
drawn when it holds two sizes or more). ``run_all.py --write-docs`` calls :func:`write_plots` after the table.
A results file that is missing or lacks the figures skips its plot (named in the returned notes), never fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_serving import combo_name  # noqa: E402  (the benchmark's own "1 worker x 2 threads")

RESULTS = HERE / "results"
DOCS = HERE.parent / "docs"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _figure(ncols: int):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.6), dpi=110)
    return plt, fig, axes


def plot_serving(results: Path, out: Path) -> str:
    """``bench_serving.png``: req/s and p99 against concurrency per variant; what was drawn or why not."""
    data = _load(results / "bench_serving.json")
    variants = ((data or {}).get("results") or {}).get("int8")
    if not isinstance(variants, dict):
        return "bench_serving.png: skipped (no fp32 / int8 figures in bench_serving.json)"
    curves: dict[str, list[tuple[int, float, float]]] = {}
    for key, s in variants.items():
        name, _, level = key.partition("/c=")
        if level.isdigit() and isinstance(s, dict) and "rps" in s:
            curves.setdefault(name, []).append((int(level), float(s["rps"]), float(s["p99_ms"])))
    if not curves:
        return "bench_serving.png: skipped (no per-concurrency figures)"
    plt, fig, (left, right) = _figure(2)
    for name, points in sorted(curves.items()):
        points.sort()
        version = variants.get("version" if name == "int8" else "fp32_version", "")
        label = f"{name} ({version})" if version else name
        left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        right.plot([p[0] for p in points], [p[2] for p in points], marker="o", label=label)
    workers, threads = variants.get("workers"), variants.get("threads")
    where = f" ({combo_name(int(workers), int(threads))})" if workers and threads else ""
    left.set(xlabel="concurrent clients", ylabel="requests / s", title="hub serving throughput" + where)
    right.set(xlabel="concurrent clients", ylabel="p99 latency, ms", title="hub serving p99 latency")
    for ax in (left, right):
        ax.set_xticks(sorted({p[0] for ps in curves.values() for p in ps}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bench_serving.png")
    plt.close(fig)
    return f"bench_serving.png: {', '.join(sorted(curves))} at concurrency {sorted({p[0] for p in points})}"


def plot_index(results: Path, out: Path) -> str:
    """``bench_index.png``: batch-1 latency and recall@10 against size per index type; what was drawn or why not."""
    data = _load(results / "bench_index.json")
    rows = [r for r in (data or {}).get("rows", []) if isinstance(r, dict) and "lat_layer_ms" in r]
    sizes = sorted({int(r["size"]) for r in rows})
    if len(sizes) < 2:
        return "bench_index.png: skipped (bench_index.json holds fewer than two gallery sizes)"
    plt, fig, (left, right) = _figure(2)
    for method in sorted({r["method"] for r in rows}):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["size"])
        xs = [r["size"] for r in mine]
        left.plot(xs, [r["lat_layer_ms"] for r in mine], marker="o", label=method)
        right.plot(xs, [r["recall10"] for r in mine], marker="o", label=method)
    left.set(xscale="log", yscale="log", xlabel="gallery items", ylabel="ms per query (batch 1)", title="search")
    lowest = min(float(r["recall10"]) for r in rows)
    right.set(xscale="log", xlabel="gallery items", ylabel="recall@10 vs exact", title="recall")
    right.set_ylim(min(0.9, lowest - 0.02), 1.005)
    from matplotlib.ticker import ScalarFormatter

    left.yaxis.set_major_formatter(ScalarFormatter())
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bench_index.png")
    plt.close(fig)
    return f"bench_index.png: sizes {sizes}"


def write_plots(results: Path = RESULTS, out: Path = DOCS) -> list[str]:
    """Draw every plot the results allow into ``out``; one note per plot (drawn, or skipped and why)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ["plots skipped: matplotlib is not installed (pip install matplotlib)"]
    return [plot_serving(results, out), plot_index(results, out)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=RESULTS, help="the folder of a run's results JSON")
    ap.add_argument("--out", type=Path, default=DOCS, help="where the PNG files go")
    args = ap.parse_args(argv)
    for note in write_plots(args.results, args.out):
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
