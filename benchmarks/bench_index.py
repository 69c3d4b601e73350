"""Benchmark of the gallery layer (``shitu.serving.gallery.local``) on clustered synthetic embeddings.

For each size and index type (IP metric): build time through the layer (SQLite records + faiss index + snapshot),
search latency (median per query, batch 1) and throughput (batched), recall@1 / recall@10 against exact search,
the time to add 1% more items to the gallery versus building the same final gallery (n + 1% items) from scratch,
the time to remove 1%, and the layer's search time versus raw faiss on the very same index (overhead ratio).
Batch-1 latencies of the layer and of raw faiss are measured interleaved (query by query, alternating which side
goes first), so neither side gets a warmer cache or a quieter moment of the machine; batched throughput likewise
(after one warm-up batch each, ``--batch-rounds`` rounds alternating which side goes first, median per side).

Data: ``--clusters`` gaussian clusters in ``--dim`` dimensions, L2-normalised (like real embeddings); queries are
fresh points from the same clusters (not gallery members).

    python benchmarks/bench_index.py                       # 10k and 100k (a few minutes on 2 cores)
    python benchmarks/bench_index.py --full                # adds 1M (needs ~8 GB RAM and a while)
    python benchmarks/bench_index.py --sizes 20000 --methods HNSW32 --json out.json
    python benchmarks/bench_index.py --quick                # while developing: 10k, fewer queries, no rebuild

"Rebuild" is the same work as "add 1%" ends with: a gallery holding all n + 1% items, built from nothing through
the layer (SQLite records + index + snapshot). It is measured for sizes up to ``--measure-rebuild-max`` (default
100000) and with ``--measure-rebuild``; otherwise the build time of n items scaled by 1.01 stands in (marked ``~``).

Results: a table on stdout and ``benchmarks/results/bench_index.json`` (or ``--json OUT``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402


def machine_info() -> dict:
    import faiss

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        usable = os.cpu_count()
    return {
        "cpu": cpu,
        "cores_usable": usable,
        "cores_total": os.cpu_count(),
        "faiss": faiss.__version__,
        "faiss_omp_threads": faiss.omp_get_max_threads(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def make_data(n: int, extra: int, nq: int, dim: int, clusters: int, seed: int):
    """Gallery vectors, 1% more, queries: normalised points of ``clusters`` gaussian clusters."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)

    def sample(m: int) -> tuple[np.ndarray, np.ndarray]:
        c = rng.integers(0, clusters, m)
        # noise of norm ~0.5: cosine ~0.9 to the centre, ~0.8 between members (like embeddings of one object)
        x = centers[c] + rng.standard_normal((m, dim)).astype(np.float32) * (0.5 / np.sqrt(dim))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32), c

    base, base_c = sample(n)
    more, more_c = sample(extra)
    queries, _ = sample(nq)
    return base, base_c, more, more_c, queries


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return index.search(queries, k)[1]


def raw_search_fn(g, k: int):
    """Raw faiss search on the gallery's own in-memory index, with the same search parameters."""
    import faiss

    from shitu.serving.gallery.local import SMALL_BATCH

    state = g.replica.current
    index = state.index
    params = state.search_parameters(k)  # the very parameters the layer uses

    def search(q: np.ndarray):
        return index.search(q, k) if params is None else index.search(q, k, params=params)

    def search_same_threads(q: np.ndarray):
        # the layer runs small batches on one OpenMP thread; compare like with like
        if len(q) >= SMALL_BATCH:
            return search(q)
        prev = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return search(q)
        finally:
            faiss.omp_set_num_threads(prev)

    return search_same_threads


def timed(fn, *args, **kw) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def interleaved_median_latency(a, b, queries: np.ndarray) -> tuple[float, float]:
    """Median batch-1 latency of ``a`` and of ``b``, timed query by query in turn (alternating who goes first)."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(len(queries)):
        q = queries[i : i + 1]
        order = ((0, a), (1, b)) if i % 2 == 0 else ((1, b), (0, a))
        for side, fn in order:
            t = time.perf_counter()
            fn(q)
            times[side].append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def interleaved_batch_times(a, b, queries: np.ndarray, rounds: int) -> tuple[float, float]:
    """Median time of ``a(queries)`` and of ``b(queries)`` over ``rounds`` rounds, alternating who goes first."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(max(1, rounds)):
        order = ((0, a), (1, b)) if i % 2 == 0 else ((1, b), (0, a))
        for side, fn in order:
            t = time.perf_counter()
            fn(queries)
            times[side].append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def bench_one(method: str, n: int, data, gt: np.ndarray, args, workdir: Path) -> dict:
    from shitu.serving.gallery.local import Gallery

    base, base_c, more, more_c, queries = data
    k = args.k
    nq_lat = min(args.latency_queries, len(queries))
    path = workdir / f"{method}-{n}"
    labels = [f"c{c}" for c in base_c]
    row: dict = {"size": n, "method": method}

    def build():
        g = Gallery.create(path, base.shape[1], method, "IP")
        ids = g.add(base, labels)
        g.wait_background()  # IVF training of big galleries runs in a background thread
        return g, ids

    t_build, (g, ids) = timed(build)
    try:
        info = g.info()
        row["index"] = info["index"]
        row["build_s"] = t_build
        row["disk_mb"] = info["size_bytes"] / 1e6
        if g.replica.current.mode == "hnsw":
            row["search_param"] = f"efSearch={max(int(g.tuning['ef_search']), k)}"
        elif g.replica.current.mode == "ivf":
            row["search_param"] = f"nprobe={g.replica.current.nprobe}"
        else:
            row["search_param"] = "exact"

        raw = raw_search_fn(g, k)
        layer = lambda q: g.search(q, k)  # noqa: E731
        layer(queries[:5])
        raw(queries[:5])
        # batch 1 latency, interleaved query by query so neither side gets a warmer cache
        lat_layer, lat_raw = interleaved_median_latency(layer, raw, queries[:nq_lat])
        row["lat_layer_ms"], row["lat_raw_ms"] = lat_layer * 1e3, lat_raw * 1e3
        row["overhead_lat"] = row["lat_layer_ms"] / row["lat_raw_ms"]
        # batched: warmed up (record cache, OpenMP team) and timed in alternating order, median of the rounds
        hits = layer(queries)
        raw(queries)
        t_layer, t_raw = interleaved_batch_times(layer, raw, queries, args.batch_rounds)
        row["qps_layer"] = len(queries) / t_layer
        row["qps_raw"] = len(queries) / t_raw
        row["overhead_qps"] = row["qps_raw"] / row["qps_layer"]
        found = np.full((len(queries), k), -1, np.int64)
        for qi, matches in enumerate(hits):
            for j, m in enumerate(matches):
                found[qi, j] = m.id - 1  # ids are 1..n in insertion order
        row["recall1"] = float(np.mean(found[:, 0] == gt[:, 0]))
        row["recall10"] = float(np.mean([len(set(found[i]) & set(gt[i])) / k for i in range(len(queries))]))

        # add 1% more
        more_labels = [f"c{c}" for c in more_c]
        row["add1pct_s"], _ = timed(g.add, more, more_labels)
        # the same end state built from nothing: a gallery of all n + 1% items (records, index, snapshot)
        if args.measure_rebuild or n <= args.measure_rebuild_max:
            rebuilt = workdir / f"{method}-{n}-rebuilt"

            def rebuild():
                with Gallery.create(rebuilt, base.shape[1], method, "IP") as r:
                    r.add(np.concatenate([base, more]), labels + more_labels)
                    r.wait_background()

            try:
                row["rebuild_s"], _ = timed(rebuild)
            finally:
                shutil.rmtree(rebuilt, ignore_errors=True)
            row["rebuild_measured"] = True
        else:
            row["rebuild_s"] = t_build * (n + len(more)) / n
            row["rebuild_measured"] = False
        row["add_vs_rebuild"] = row["add1pct_s"] / row["rebuild_s"]
        # remove 1%
        rng = np.random.default_rng(1)
        victims = rng.choice(np.array(ids), size=max(1, n // 100), replace=False).tolist()
        row["remove1pct_s"], removed = timed(g.remove, ids=victims)
        assert removed == len(victims)
        gone = set(victims)
        assert not any(m.id in gone for r in g.search(base[np.array(victims[:50]) - 1], k) for m in r)
    finally:
        g.close()
        shutil.rmtree(path, ignore_errors=True)
    return row


COLUMNS = [
    ("size", "size", "{:>8d}"),
    ("method", "method", "{:<7s}"),
    ("index", "index", "{:<8s}"),
    ("search_param", "search", "{:<12s}"),
    ("build_s", "build s", "{:>8.2f}"),
    ("lat_layer_ms", "lat ms", "{:>7.3f}"),
    ("lat_raw_ms", "raw ms", "{:>7.3f}"),
    ("overhead_lat", "x lat", "{:>6.2f}"),
    ("qps_layer", "QPS", "{:>8.0f}"),
    ("qps_raw", "raw QPS", "{:>8.0f}"),
    ("overhead_qps", "x QPS", "{:>6.2f}"),
    ("recall1", "R@1", "{:>6.3f}"),
    ("recall10", "R@10", "{:>6.3f}"),
    ("add1pct_s", "add1% s", "{:>8.3f}"),
    ("rebuild_s", "rebuild s", "{:>9s}"),
    ("add_vs_rebuild", "add/rebld", "{:>9.4f}"),
    ("remove1pct_s", "rm1% s", "{:>7.3f}"),
    ("disk_mb", "disk MB", "{:>8.1f}"),
]


def format_table(rows: list[dict]) -> str:
    header = []
    lines = []
    for _key, title, fmt in COLUMNS:
        width = len(fmt.format(0 if "d}" in fmt else (0.0 if "f}" in fmt else "")))
        header.append(title.rjust(max(width, len(title))) if ">" in fmt else title.ljust(max(width, len(title))))
    lines.append("  ".join(header))
    for r in rows:
        cells = []
        for (key, _title, fmt), h in zip(COLUMNS, header):
            v = r.get(key)
            if key == "rebuild_s":
                v = f"{'' if r['rebuild_measured'] else '~'}{v:.2f}"
            s = fmt.format(v)
            cells.append(s.rjust(len(h)) if ">" in fmt else s.ljust(len(h)))
        lines.append("  ".join(cells))
    return "\n".join(lines)


def summarize(rows: list[dict]) -> list[dict]:
    """The headline figures (``summary`` of the JSON, see ``benchmarks/common.py``): per size, the layer's batch-1
    latency over raw faiss's on the same index, timed interleaved, for each method."""
    out = []
    for n in dict.fromkeys(r["size"] for r in rows):
        mine = [r for r in rows if r["size"] == n]
        size = f"{n // 1000}k" if n % 1000 == 0 else str(n)
        ratios = " / ".join(f"{r['overhead_lat']:.2f}x" for r in mine)
        times = ", ".join(f"{r['method']} {r['lat_layer_ms']:.3f} vs {r['lat_raw_ms']:.3f} ms" for r in mine)
        out.append(
            {
                "what": f"index layer / raw faiss per query (batch 1, interleaved), {size} "
                + " / ".join(r["method"] for r in mine),
                "figure": f"{ratios} ({times})",
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--full", action="store_true", help="also 1,000,000 items")
    ap.add_argument("--methods", nargs="+", default=["Flat", "IVF", "HNSW32"])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument(
        "--queries", type=int, default=None, help="queries for recall / QPS (default 1000, 500 from 100k on, 200 at 1M)"
    )
    ap.add_argument("--latency-queries", type=int, default=200, help="batch-1 queries timed per side")
    ap.add_argument("--batch-rounds", type=int, default=5, help="rounds of the batched (QPS) comparison")
    ap.add_argument("--measure-rebuild", action="store_true", help="measure the rebuild at every size")
    ap.add_argument("--measure-rebuild-max", type=int, default=100000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="folder for the galleries (default: a temp folder)")
    ap.add_argument("--threads", type=int, help="faiss OpenMP threads (default: faiss's, all cores)")
    ap.add_argument("--json", metavar="OUT", help="write machine info and rows as JSON")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a quick look while developing: 10k only (unless --sizes), 200 queries, 100 timed per side, "
        "3 batch rounds, the rebuild estimated",
    )
    args = ap.parse_args(argv)
    if args.quick:
        if args.sizes == ap.get_default("sizes"):
            args.sizes = [10000]
        args.queries = args.queries or 200
        args.latency_queries = min(args.latency_queries, 100)
        args.batch_rounds = min(args.batch_rounds, 3)
        args.measure_rebuild_max = 0
    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)

    sizes = list(args.sizes) + ([1_000_000] if args.full and 1_000_000 not in args.sizes else [])
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-gallery-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    started = time.perf_counter()
    try:
        for n in sizes:
            nq = args.queries or (1000 if n < 100_000 else 500 if n < 1_000_000 else 200)
            data = make_data(n, max(1, n // 100), nq, args.dim, args.clusters, args.seed)
            gt = exact_topk(data[0], data[4], args.k)
            for method in args.methods:
                t = time.perf_counter()
                row = bench_one(method, n, data, gt, args, workdir)
                rows.append(row)
                print(f"  {method:<7s} n={n:<8d} done in {time.perf_counter() - t:6.1f} s", file=sys.stderr, flush=True)
            del data, gt
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(format_table(rows))
    print()
    print(
        "lat ms: median batch-1 search through the gallery (incl. resolving hits to their records: in memory, "
        "from SQLite after a change); raw ms: faiss alone "
        "on the same index, parameters and threading (batch 1: one OpenMP thread, as the layer does); "
        "x lat / x QPS: layer cost over raw."
    )
    print(
        "add1% s: adding 1% more items (one call); rebuild s: building the same n + 1% gallery from nothing "
        "('~': the n-item build time x 1.01 stands in); rm1% s: removing 1% of the items (one call)."
    )
    print(f"total {time.perf_counter() - started:.0f} s")
    summary = summarize(rows)
    for line in summary:
        print(f"{line['what']}: {line['figure']}")
    write_json("bench_index", {"machine": info, "rows": rows, "summary": summary}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
