"""Cost curves of a local gallery per index type and size (issue 29): add rate, latency, recall, reopen, disk, RSS.

For each index type and size, on synthetic clustered unit vectors (512-d by default; "products" of many views):

- **build** (a child process): ``Gallery.create`` + ``add`` in batches of 10,000 with the vectors given (as
  ``shitu gallery add --vectors`` / the SDK would), training included (``background_rebuild_min`` set above the size
  so the add returns with the index built): items per second; the exact ground truth (faiss ``IndexFlatIP`` over the
  same vectors) for the queries (gallery items plus noise);
- **serve** (another child: only the gallery in memory): ``Gallery.open`` + the first search (seconds), batch-1
  searches at ``return_k`` 10 (p50 / p99 ms), recall@1 and @10 against the ground truth, its peak RSS
  (``getrusage``: the serving memory, without the benchmark's own copy of the vectors); the folder's size on disk.

Prints a table, writes JSON (``--json``; ``summary`` rows for the docs' table) and a PNG of latency and memory
against size (``--plot``, matplotlib Agg). Default sizes 10k and 100k; ``--sizes`` adds others (1000000), ``--10m``
the 10M point (hours and ~25 GB of disk; not run by ``make bench``).

    python benchmarks/bench_scale.py                            # 10k, 100k; every type
    python benchmarks/bench_scale.py --sizes 10000 --types Flat IVF-PQ HNSW-SQ8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, describe, machine, percentile, table, write_json  # noqa: E402

TYPES = ["Flat", "HNSW32", "IVF", "IVF-PQ", "OPQ-IVF-PQ", "IVF-SQ8", "HNSW-SQ8", "HNSW-PQ", "auto"]
BATCH = 10_000
K = 10


def clustered(seed: int, n: int, dim: int, start: int = 0) -> np.ndarray:
    """Rows ``start .. start + n`` of the benchmark's gallery: unit vectors around n/50 centres (50 views each)."""
    centres = max(1, (start + n) // 50)
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((max(centres, 1), dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, BATCH):
        r = np.random.default_rng([seed, start + i])
        m = min(BATCH, n - i)
        x = c[r.integers(len(c), size=m)] + 0.35 * r.standard_normal((m, dim)).astype(np.float32)
        out[i : i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` (reset at exec, unlike ``getrusage``'s ``ru_maxrss``, which a child
    inherits from the parent that forked it), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def child_build(method: str, n: int, dim: int, queries: int, work: Path) -> dict[str, Any]:
    import faiss

    from shitu.serving.gallery.local import Gallery

    x = clustered(1, n, dim)
    g = Gallery.create(work / "g", dim, method, "IP", background_rebuild_min=10**12)
    t0 = time.perf_counter()
    ids: list[int] = []
    for i in range(0, n, BATCH):
        ids += g.add(x[i : i + BATCH], [f"p{(i + j) // 50}" for j in range(min(BATCH, n - i))])
    g.checkpoint()
    add_s = time.perf_counter() - t0
    index = g.info()["index"]
    g.close()
    rng = np.random.default_rng(2)
    q = x[rng.choice(n, queries, replace=False)] + 0.1 * rng.standard_normal((queries, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(dim)
    exact.add(x)
    _, rows = exact.search(q, K)
    np.save(work / "queries.npy", q)
    np.save(work / "truth.npy", np.asarray(ids, np.int64)[rows])
    return {"add_per_s": n / add_s, "add_s": add_s, "index": index, "build_peak_rss_mb": peak_rss_mb()}


def child_serve(work: Path) -> dict[str, Any]:
    from shitu.serving.gallery.local import Gallery

    q = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npy")
    t0 = time.perf_counter()
    g = Gallery.open(work / "g", readonly=True)
    first = g.search(q[:1], K)
    reopen_s = time.perf_counter() - t0
    assert first
    lat = []
    got = []
    for i in range(len(q)):
        t = time.perf_counter()
        row = g.search(q[i : i + 1], K)[0]
        lat.append(time.perf_counter() - t)
        got.append([m.id for m in row])
    r1 = float(np.mean([bool(r) and r[0] == t[0] for r, t in zip(got, truth)]))
    r10 = float(np.mean([len(set(r) & set(t.tolist())) / K for r, t in zip(got, truth)]))
    g.close()
    return {
        "reopen_first_search_s": reopen_s,
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "recall_at_1": r1,
        "recall_at_10": r10,
        "serve_peak_rss_mb": peak_rss_mb(),
        "disk_bytes": folder_bytes(work / "g"),
    }


def run_child(argv: list[str]) -> dict[str, Any]:
    p = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in dict.fromkeys(p["type"] for p in points):
        ps = sorted((p for p in points if p["type"] == method), key=lambda p: p["items"])
        xs = [p["items"] for p in ps]
        a.plot(xs, [p["p50_ms"] for p in ps], marker="o", label=method)
        b.plot(xs, [p["serve_peak_rss_mb"] for p in ps], marker="o", label=method)
    for ax, what in ((a, "search p50 (ms, batch 1, k 10)"), (b, "serving peak RSS (MB)")):
        ax.set_xscale("log")
        ax.set_xlabel("items")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
    a.legend(fontsize=8)
    fig.suptitle("local gallery cost against size (synthetic 512-d clustered vectors)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--child-build", "--child-serve"):
        if sys.argv[1] == "--child-build":
            method, n, dim, queries, work = (
                sys.argv[2],
                int(sys.argv[3]),
                int(sys.argv[4]),
                int(sys.argv[5]),
                sys.argv[6],
            )
            out = child_build(method, n, dim, queries, Path(work))
        else:
            out = child_serve(Path(sys.argv[2]))
        print(json.dumps(out))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--10m", dest="ten_m", action="store_true", help="add the 10,000,000-item point (hours, ~25 GB)")
    ap.add_argument("--types", nargs="+", default=TYPES)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=300, help="batch-1 queries per point (latency and recall)")
    ap.add_argument("--tmp", default=None, help="folder for the galleries (default: the system's temp folder)")
    ap.add_argument("--json", default=str(RESULTS / "bench_scale.json"))
    ap.add_argument("--plot", default=None, help="PNG path (default: the JSON's path with .png)")
    args = ap.parse_args()
    sizes = sorted(set(args.sizes) | ({10_000_000} if args.ten_m else set()))
    info = machine()
    print(describe(info, f"{args.dim}-d synthetic clustered unit vectors; {args.queries} batch-1 queries per point"))
    points: list[dict[str, Any]] = []
    for n in sizes:
        for method in args.types:
            work = Path(tempfile.mkdtemp(prefix="bench_scale-", dir=args.tmp))
            try:
                t = time.perf_counter()
                point: dict[str, Any] = {"type": method, "items": n}
                point |= run_child(["--child-build", method, str(n), str(args.dim), str(args.queries), str(work)])
                point |= run_child(["--child-serve", str(work)])
                point["wall_s"] = time.perf_counter() - t
            except RuntimeError as e:
                print(f"{method} at {n}: failed: {e}", file=sys.stderr)
                continue
            finally:
                shutil.rmtree(work, ignore_errors=True)
            points.append(point)
            print(
                f"{method:>10} {n:>9}: {point['index']}, add {point['add_per_s']:.0f}/s, p50 {point['p50_ms']:.2f} ms,"
                f" recall@10 {point['recall_at_10']:.3f}, RSS {point['serve_peak_rss_mb']:.0f} MB",
                flush=True,
            )
    headers = ["type", "items", "index", "add/s", "p50 ms", "p99 ms", "R@1", "R@10", "reopen s", "disk MB", "RSS MB"]
    rows = [
        [
            p["type"],
            p["items"],
            p["index"],
            round(p["add_per_s"]),
            p["p50_ms"],
            p["p99_ms"],
            p["recall_at_1"],
            p["recall_at_10"],
            p["reopen_first_search_s"],
            round(p["disk_bytes"] / 1e6, 1),
            round(p["serve_peak_rss_mb"]),
        ]
        for p in points
    ]
    print(table(headers, rows))
    biggest = max((p["items"] for p in points), default=0)
    summary = [
        {
            "what": f"gallery {p['type']} ({p['index']}) at {p['items']:,} items, {args.dim}-d synthetic",
            "figure": f"p50 {p['p50_ms']:.2f} ms, recall@10 {p['recall_at_10']:.3f}, add {p['add_per_s']:,.0f}/s, "
            f"RSS {p['serve_peak_rss_mb']:.0f} MB, disk {p['disk_bytes'] / 1e6:.0f} MB",
        }
        for p in points
        if p["items"] == biggest
    ]
    out = write_json(
        "bench_scale",
        {"machine": info, "args": vars(args), "points": points, "summary": summary},
        args.json,
    )
    png = Path(args.plot) if args.plot else out.with_suffix(".png")
    if points:
        plot(points, png)
        print(f"plot written to {png}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    main()
