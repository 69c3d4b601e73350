"""Scaling out: a Milvus gallery vs the local faiss gallery, and 2 instances behind nginx vs 1 instance direct.

    python benchmarks/bench_scaleout.py [--sizes 10000,100000] [--dim 512] [--queries 100] [--requests 40]
                                        [--skip-serving] [--json OUT]

1. Index: the same random unit vectors in a local gallery (SQLite + faiss) and a Milvus gallery (milvus-lite in
   server mode on loopback, or ``SHITU_TEST_MILVUS_URI``), Flat and HNSW32 (IP), built in batches of 5000,
   checkpointed (flushed) every 20k items and at the end as ``shitu gallery build`` does; one query per call, as a recognition does. Median / p95
   latency, QPS of one client, and the Milvus / local ratio.
2. Serving: ``image_recognition`` on a 4-image gallery stored on Milvus: 1 ``hub serving`` instance direct vs the
   shipped nginx config in front of 2 instances (4 concurrent clients), and the proxy hop's own cost
   (``GET /health`` direct vs through nginx).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import describe, machine, percentile, summary_ms, table, write_json  # noqa: E402


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _search_times(g, queries: np.ndarray) -> list[float]:
    g.search(queries[:5], 5)  # warm
    times = []
    for q in queries:
        t = time.perf_counter()
        g.search(q[None], 5)
        times.append(time.perf_counter() - t)
    return times


def bench_index(server, sizes: list[int], dim: int, n_queries: int, tmp: Path) -> list[dict]:
    from shitu.serving.gallery.local import Gallery
    from shitu.serving.gallery.milvus import MilvusGallery

    out = []
    queries = _unit(n_queries, dim, 99)
    for n in sizes:
        base = _unit(n, dim, n)
        labels = [f"l{i % 1000}" for i in range(n)]
        for method in ("Flat", "HNSW32"):
            row: dict = {"items": n, "index": method}
            for backend in ("local", "milvus"):
                t = time.perf_counter()
                if backend == "local":
                    g = Gallery.create(tmp / f"{backend}-{n}-{method}", dim, method, "IP")
                else:
                    # milvus-lite slows down as unflushed rows pile up: a long timeout, and a flush every 20k rows
                    g = MilvusGallery.create(server.uri(f"b{n}_{method}") + "?timeout=600", dim, method, "IP")
                for i in range(0, n, 5000):
                    g.add(base[i : i + 5000], labels[i : i + 5000])
                    if (i + 5000) % 20000 == 0:
                        g.checkpoint()
                g.checkpoint()  # as `shitu gallery build` ends: milvus-lite searches unflushed rows very slowly
                row[f"{backend}_add_s"] = time.perf_counter() - t
                times = _search_times(g, queries)
                s = summary_ms(times)
                row[f"{backend}_median_ms"], row[f"{backend}_p95_ms"] = s["median_ms"], s["p95_ms"]
                row[f"{backend}_qps"] = len(times) / sum(times)
                g.close()
            row["latency_ratio"] = row["milvus_median_ms"] / row["local_median_ms"]
            out.append(row)
            print(
                f"  {n} items, {method}: local {row['local_median_ms']:.2f} ms, milvus "
                f"{row['milvus_median_ms']:.2f} ms",
                file=sys.stderr,
                flush=True,
            )
    return out


def _load(url: str, payload: dict, requests_n: int, clients: int) -> dict:
    import requests

    def one(_):
        t = time.perf_counter()
        r = requests.post(f"{url}/predict/image_recognition", json=payload, timeout=300)
        assert r.status_code == 200 and r.json()["status"] == "000", r.text[:300]
        return time.perf_counter() - t

    with cf.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients)))  # warm every worker
        t = time.perf_counter()
        times = list(pool.map(one, range(requests_n)))
        wall = time.perf_counter() - t
    return {"requests": requests_n, "clients": clients, "qps": requests_n / wall, **summary_ms(times)}


def _health_ms(url: str, n: int = 200) -> float:
    import requests

    requests.get(f"{url}/health", timeout=10)
    times = []
    for _ in range(n):  # a new connection each time, as most clients of a recognition service
        t = time.perf_counter()
        requests.get(f"{url}/health", timeout=10)
        times.append(time.perf_counter() - t)
    return percentile(times, 50) * 1000


def bench_serving(server, n_requests: int, tmp: Path) -> dict:
    from shitu.serving.cli.demo import gallery_photos
    from shitu.serving.hub import control as hub_serving
    from tests.conftest import b64, start_served
    from tests.nginx_proxy import Nginx, nginx_binary

    if nginx_binary() is None:
        return {"skipped": "nginx is not installed"}
    photos = gallery_photos()
    uri = server.uri("serving")
    instances = [start_served(tmp, init_args={"gallery": uri}) for _ in range(2)]
    proxies = []
    try:
        import requests

        r = requests.post(
            f"{instances[0].url}/predict/image_recognition",
            timeout=300,
            json={"operation": "add", "labels": list(photos), "images": [b64(p) for p in photos.values()]},
        )
        assert r.json()["status"] == "000", r.text
        payload = {"images": [b64(photos["coffee"])]}
        addrs = [s.url.removeprefix("http://") for s in instances]
        two = Nginx(tmp / "nginx2", addrs, hub_serving.free_port())
        one = Nginx(tmp / "nginx1", addrs[:1], hub_serving.free_port())
        proxies = [two, one]
        for p in proxies:
            p.start()
        result = {
            "direct_1": _load(instances[0].url, payload, n_requests, 4),
            "nginx_2": _load(two.url, payload, n_requests, 4),
            "health_direct_ms": _health_ms(instances[0].url),
            "health_via_nginx_ms": _health_ms(one.url),
        }
        result["proxy_hop_ms"] = result["health_via_nginx_ms"] - result["health_direct_ms"]
        result["qps_gain"] = result["nginx_2"]["qps"] / result["direct_1"]["qps"]
        return result
    finally:
        for p in proxies:
            p.stop()
        for s in instances:
            hub_serving.stop(s.proc)


def summary_rows(idx: list[dict], serving: dict, dim: int) -> list[dict]:
    """Headline figures: Milvus vs local search per size and index, and nginx -> 2 instances vs 1 direct."""
    rows = [
        {
            "what": f"gallery search on Milvus vs local faiss, {r['items']} x {dim}-d {r['index']}, one query per call",
            "figure": f"{r['milvus_median_ms']:.2f} vs {r['local_median_ms']:.2f} ms ({r['latency_ratio']:.0f}x)",
        }
        for r in idx
    ]
    if serving and "skipped" not in serving:
        rows.append(
            {
                "what": "`image_recognition`, gallery on Milvus, 4 clients: nginx -> 2 instances vs 1 direct",
                "figure": f"{serving['nginx_2']['qps']:.1f} vs {serving['direct_1']['qps']:.1f} req/s "
                f"({serving['qps_gain']:.2f}x); proxy hop {serving['proxy_hop_ms']:+.2f} ms",
            }
        )
    elif serving:
        rows.append({"what": "nginx -> 2 instances vs 1 direct", "figure": f"skipped: {serving['skipped']}"})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--skip-serving", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()

    from tests.milvus_server import LITE_PATH, MilvusServer, free_port

    info = machine()
    print(
        describe(
            info,
            "milvus-lite server on loopback"
            if not os.environ.get("SHITU_TEST_MILVUS_URI")
            else "Milvus at $SHITU_TEST_MILVUS_URI",
        )
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    external = os.environ.get("SHITU_TEST_MILVUS_URI")
    if external:
        from shitu.serving.gallery.milvus import parse_uri

        t = parse_uri(external.rstrip("/") + "/x")
        server = MilvusServer(t.host, t.port)
    else:
        if not (LITE_PATH / "pymilvus").is_dir():
            print(f"the milvus-lite server environment {LITE_PATH} is missing: run `make milvus-lite`")
            return 1
        server = MilvusServer("127.0.0.1", free_port(), tmp / "milvus-data")
        server.start()
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
        idx = bench_index(server, sizes, args.dim, args.queries, tmp)
        print(f"\nIndex search, one {args.dim}-d query per call, k=5 (IP):")
        print(
            table(
                [
                    "items",
                    "index",
                    "local ms",
                    "milvus ms",
                    "ratio",
                    "local QPS",
                    "milvus QPS",
                    "local add s",
                    "milvus add s",
                ],
                [
                    [
                        r["items"],
                        r["index"],
                        r["local_median_ms"],
                        r["milvus_median_ms"],
                        r["latency_ratio"],
                        r["local_qps"],
                        r["milvus_qps"],
                        r["local_add_s"],
                        r["milvus_add_s"],
                    ]
                    for r in idx
                ],
            )
        )
        serving = {} if args.skip_serving else bench_serving(server, args.requests, tmp)
        if serving and "skipped" not in serving:
            print(f"\nServing image_recognition (1 image, gallery on Milvus), 4 clients, {args.requests} requests:")
            print(
                table(
                    ["setup", "QPS", "median ms", "p95 ms"],
                    [
                        [
                            "1 instance direct",
                            serving["direct_1"]["qps"],
                            serving["direct_1"]["median_ms"],
                            serving["direct_1"]["p95_ms"],
                        ],
                        [
                            "nginx -> 2 instances",
                            serving["nginx_2"]["qps"],
                            serving["nginx_2"]["median_ms"],
                            serving["nginx_2"]["p95_ms"],
                        ],
                    ],
                )
            )
            print(
                f"proxy hop (GET /health, median): direct {serving['health_direct_ms']:.2f} ms, via nginx "
                f"{serving['health_via_nginx_ms']:.2f} ms -> {serving['proxy_hop_ms']:.2f} ms per request"
            )
        write_json(
            "scaleout",
            {
                "machine": info,
                "dim": args.dim,
                "index": idx,
                "serving": serving,
                "summary": summary_rows(idx, serving, args.dim),
            },
            args.json,
        )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
