"""Load on a real `hub serving` over loopback: latency p50/p95/p99 and throughput per concurrency.

    python benchmarks/bench_serving.py [--requests 24] [--seconds 60] [--concurrency 1 2 4 8] [--json OUT]

Starts `hub serving` twice (one process; gunicorn with 2 workers, paddle threads per worker = 1), sends the same
image_recognition request (a 640x480 photo, base64 JPEG) from N client threads, a bounded number of requests and
seconds per level. Baseline in the same run: the same request handled in-process (RecognitionService.handle:
base64 decode, pipeline, JSON-ready results), sequentially.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import describe, machine, percentile, table, write_json  # noqa: E402


def payload() -> dict:
    import base64

    import cv2
    from shitu.serving.cli.demo import gallery_photos
    from shitu.serving.engine.images import encode

    img = cv2.resize(gallery_photos()["coffee"], (640, 480))
    return {"images": [base64.b64encode(encode(img)).decode()], "gallery": "bench"}


def fill_gallery(post) -> None:
    """Add the demo photographs to the gallery ``bench`` (the in-process baseline and each server's)."""
    import base64

    from shitu.serving.cli.demo import gallery_photos
    from shitu.serving.engine.images import encode

    g = gallery_photos()
    post({"operation": "add", "gallery": "bench", "labels": list(g),
          "images": [base64.b64encode(encode(v)).decode() for v in g.values()]})


def load(url: str, body: dict, concurrency: int, requests_n: int, seconds: float) -> dict:
    import requests

    lat: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    counter = iter(range(requests_n))

    def worker() -> None:
        nonlocal errors
        s = requests.Session()
        while time.monotonic() < deadline:
            with lock:
                if next(counter, None) is None:
                    return
            t = time.perf_counter()
            r = s.post(f"{url}/predict/image_recognition", json=body, timeout=300)
            dt = time.perf_counter() - t
            with lock:
                if r.status_code != 200 or r.json()["status"] != "000":
                    errors += 1
                lat.append(dt)

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    return {"requests": len(lat), "errors": errors, "p50_ms": percentile(lat, 50) * 1000,
            "p95_ms": percentile(lat, 95) * 1000, "p99_ms": percentile(lat, 99) * 1000, "rps": len(lat) / wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=24, help="requests per concurrency level")
    ap.add_argument("--seconds", type=float, default=60, help="time limit per concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    os.environ.setdefault("HUB_HOME", str(tmp / "hub"))
    os.environ.setdefault("SHITU_HOME", str(tmp / "shitu"))

    import requests

    from shitu.serving.hub import control as hub_serving
    from shitu.serving.hub.service import RecognitionService

    info = machine()
    body = payload()
    hub_serving.install_modules(("image_recognition",))

    # Baseline: the same request in-process.
    svc = RecognitionService({})
    fill_gallery(lambda p: svc.handle(dict(p)))
    for _ in range(3):
        svc.handle(dict(body))
    base = []
    for _ in range(args.requests):
        t = time.perf_counter()
        svc.handle(dict(body))
        base.append(time.perf_counter() - t)
    base_ms = percentile(base, 50) * 1000
    print(describe(info, f"in-process baseline: median {base_ms:.1f} ms ({len(base)} requests)"))
    results: dict = {"in_process": {"p50_ms": base_ms, "p95_ms": percentile(base, 95) * 1000,
                                    "rps": 1000 / base_ms}}
    rows = [["in-process", "-", 1, len(base), 0, base_ms, percentile(base, 95) * 1000,
             percentile(base, 99) * 1000, 1000 / base_ms, 1.0]]
    for workers in (1, 2):
        port = hub_serving.free_port()
        cfg = tmp / f"config-{workers}.json"
        cfg.write_text(json.dumps(hub_serving.serving_config(("image_recognition",), port, workers)))
        proc = hub_serving.start(cfg, log_path=tmp / f"serving-{workers}.log")
        url = f"http://127.0.0.1:{port}"
        try:
            hub_serving.wait_ready(url, proc)
            fill_gallery(lambda p: requests.post(f"{url}/predict/image_recognition", json=p,
                                                 timeout=300).json()["results"])
            load(url, body, max(2, workers * 2), workers * 4, args.seconds)  # warm every worker up
            if workers == 1:
                # Concurrency 1, paired: each HTTP request is followed by the same request in-process, so both
                # see the same machine conditions (this VM's speed drifts by tens of percent over minutes).
                session = requests.Session()
                http_t, local_t = [], []
                for _ in range(args.requests):
                    t = time.perf_counter()
                    r = session.post(f"{url}/predict/image_recognition", json=body, timeout=300)
                    http_t.append(time.perf_counter() - t)
                    assert r.json()["status"] == "000", r.text
                    t = time.perf_counter()
                    svc.handle(dict(body))
                    local_t.append(time.perf_counter() - t)
                paired = {"http_p50_ms": percentile(http_t, 50) * 1000,
                          "in_process_p50_ms": percentile(local_t, 50) * 1000}
                paired["ratio"] = paired["http_p50_ms"] / paired["in_process_p50_ms"]
                results["paired_c1"] = paired
            for c in args.concurrency:
                r = load(url, body, c, args.requests, args.seconds)
                results[f"workers={workers}/c={c}"] = r
                rows.append([f"hub serving", workers, c, r["requests"], r["errors"], r["p50_ms"], r["p95_ms"],
                             r["p99_ms"], r["rps"], r["p50_ms"] / base_ms])
        finally:
            hub_serving.stop(proc)
    print(table(["mode", "workers", "concurrency", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "req/s",
                 "p50 / in-process"], rows))
    one = results.get("workers=1/c=4", {}).get("rps")
    two = results.get("workers=2/c=4", {}).get("rps")
    paired = results.get("paired_c1")
    if paired:
        print(f"HTTP at concurrency 1, paired with in-process: p50 {paired['http_p50_ms']:.1f} ms vs "
              f"{paired['in_process_p50_ms']:.1f} ms = {paired['ratio']:.3f} x in-process (target <= 1.10)")
    if one and two:
        print(f"2 workers vs 1 at concurrency 4: {two / one:.2f} x throughput (target >= 1.6)")
    write_json("serving", {"machine": info, "results": results}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
