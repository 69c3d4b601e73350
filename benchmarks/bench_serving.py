"""Load on a real `hub serving` over loopback, per workers x paddle threads: latency and throughput per concurrency.

    python benchmarks/bench_serving.py [--requests 24] [--rounds 3] [--concurrency 1 2 4 8] [--workers 1 2]
                                       [--threads 1 2] [--seconds 60] [--no-int8] [--json OUT]

Starts one `hub serving` per combination of workers (1: one process; >1: gunicorn) and paddle threads per worker
(``Global.cpu_num_threads``; 4 as well where the machine has 4 cores), all at once, each with its own gallery of
the demo photos, and sends the same image_recognition request (a 640x480 photo, base64 JPEG) from N client
threads. The combinations are timed interleaved: ``--rounds`` passes, each giving every combination and
concurrency level its share of ``--requests`` in turn (rotating who goes first), so all see the same machine.
Reported per combination: req/s at concurrency 4 and p50 at concurrency 1, next to what ``shitu serve`` picks
for this machine's cores (``shitu.serving.hub.serve_defaults``). Baseline in the same run: the same request
handled in-process (RecognitionService.handle: base64 decode, pipeline, JSON-ready results), paired request by
request with HTTP on the 1-worker, 2-thread server.

fp32 vs int8 (issue 30): general-lite's int8 version is made by ``shitu plugins quantize``'s function
(``bench_int8.quantize_general_lite``, bounds off) in a SHITU_HOME of its own, where it is current, and served by
one more ``hub serving`` on ``shitu serve``'s default workers x threads for this machine, beside the grid's fp32
server of the same combination (started if the grid lacks it). In every round both get the same requests at
concurrency 1, 4 and 8 (and any other ``--concurrency``), fp32 first in even rounds, int8 first in odd ones; req/s,
p50 and p99 per variant and the int8 / fp32 ratios go into the table and the JSON ``summary``. ``--no-int8`` skips it.
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
    post(
        {
            "operation": "add",
            "gallery": "bench",
            "labels": list(g),
            "images": [base64.b64encode(encode(v)).decode() for v in g.values()],
        }
    )


def load(url: str, body: dict, concurrency: int, requests_n: int, seconds: float) -> dict:
    """``requests_n`` requests from ``concurrency`` client threads (at most ``seconds``): latencies, wall, errors."""
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
    return {"latencies": lat, "wall": time.perf_counter() - t0, "errors": errors}


def stats(parts: list[dict]) -> dict:
    """Latency percentiles and throughput over the rounds of one combination and level."""
    lat = [x for p in parts for x in p["latencies"]]
    wall = sum(p["wall"] for p in parts)
    return {
        "requests": len(lat),
        "errors": sum(p["errors"] for p in parts),
        "p50_ms": percentile(lat, 50) * 1000,
        "p95_ms": percentile(lat, 95) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "rps": len(lat) / wall if wall else 0.0,
    }


def combo_name(workers: int, threads: int) -> str:
    return f"{workers} worker{'s' if workers > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"


def paired_c1(url: str, body: dict, svc, n: int) -> dict:
    """Concurrency 1, paired: each HTTP request is followed by the same request in-process, so both see the same
    machine conditions (this VM's speed drifts by tens of percent over minutes)."""
    import requests

    session = requests.Session()
    http_t, local_t = [], []
    for _ in range(n):
        t = time.perf_counter()
        r = session.post(f"{url}/predict/image_recognition", json=body, timeout=300)
        http_t.append(time.perf_counter() - t)
        assert r.json()["status"] == "000", r.text
        t = time.perf_counter()
        svc.handle(dict(body))
        local_t.append(time.perf_counter() - t)
    paired = {"http_p50_ms": percentile(http_t, 50) * 1000, "in_process_p50_ms": percentile(local_t, 50) * 1000}
    paired["ratio"] = paired["http_p50_ms"] / paired["in_process_p50_ms"]
    return paired


def start_servers(specs: dict, tmp: Path) -> dict:
    """One ``hub serving`` per entry ``key: (workers, threads, SHITU_HOME)``; started together, then filled."""
    import requests

    from shitu.serving.hub import control as hub_serving

    servers = {}
    try:
        for key, (w, t, home) in specs.items():
            port = hub_serving.free_port()
            tag = "-".join(map(str, key)) if isinstance(key, tuple) else str(key)
            cfg = tmp / f"config-{tag}.json"
            init = {"params": {"Global": {"cpu_num_threads": t}}}
            cfg.write_text(json.dumps(hub_serving.serving_config(("image_recognition",), port, w, init)))
            env = {**os.environ, "SHITU_HOME": str(home)}
            servers[key] = (
                f"http://127.0.0.1:{port}",
                hub_serving.start(cfg, env=env, log_path=tmp / f"serving-{tag}.log"),
            )
        for url, proc in servers.values():
            hub_serving.wait_ready(url, proc)
            fill_gallery(
                lambda p: requests.post(f"{url}/predict/image_recognition", json=p, timeout=300).json()["results"]
            )
    except BaseException:
        stop_servers(servers)
        raise
    return servers


def top_score(url: str, body: dict) -> float:
    """The best match's score for ``body``: differs between fp32 and int8 servers (they run different graphs)."""
    import requests

    item = requests.post(f"{url}/predict/image_recognition", json=body, timeout=300).json()["results"][0]
    return max((float(r["score"]) for r in item["results"]), default=float("nan"))


def stop_servers(servers: dict) -> None:
    from shitu.serving.hub import control as hub_serving

    for _, proc in servers.values():
        hub_serving.stop(proc)


def summary_rows(grid: list[dict], paired: dict | None, pick: tuple[int, int], cores: int) -> list[dict]:
    """The headline figures (``make bench`` collects them into one table)."""
    rows = []
    if paired:
        rows.append(
            {
                "what": "HTTP vs in-process at concurrency 1 (`bench_serving.py`, requests alternating)",
                "figure": f"{paired['ratio']:.3f}x ({paired['http_p50_ms']:.1f} vs "
                f"{paired['in_process_p50_ms']:.1f} ms)",
            }
        )
    for g in grid:
        rows.append(
            {
                "what": f"hub serving, {combo_name(g['workers'], g['threads'])}: req/s at concurrency 4, "
                f"p50 at concurrency 1",
                "figure": f"{g['rps_c4']:.1f} req/s, {g['p50_c1_ms']:.1f} ms",
            }
        )
    by = {(g["workers"], g["threads"]): g for g in grid}
    one, two = by.get((1, 2)), by.get((2, 1))
    if one and two and one["rps_c4"]:
        rows.append(
            {
                "what": "2 workers x 1 thread vs 1 worker x 2 threads, throughput at concurrency 4",
                "figure": f"{two['rps_c4'] / one['rps_c4']:.2f}x ({two['rps_c4']:.1f} vs {one['rps_c4']:.1f} req/s)",
            }
        )
    if grid:
        fastest = max(grid, key=lambda g: g["rps_c4"])
        quickest = min(grid, key=lambda g: g["p50_c1_ms"])
        rows.append(
            {
                "what": f"`shitu serve` default for {cores} cores (serve_defaults) vs the measured best",
                "figure": f"{combo_name(*pick)}; most req/s at c=4: "
                f"{combo_name(fastest['workers'], fastest['threads'])}, lowest p50 at c=1: "
                f"{combo_name(quickest['workers'], quickest['threads'])}",
            }
        )
    return rows


#: fp32 (the pack's published version) and int8 (its ``+int8.N`` version), served alike.
VARIANTS = ("fp32", "int8")
#: Concurrency levels the fp32 vs int8 comparison always reports.
VARIANT_LEVELS = (1, 4, 8)


def print_variants(variants: dict, levels: list[int]) -> None:
    """The fp32 vs int8 table: per variant and level, latency and throughput, and int8 / fp32."""
    rows = []
    for c in levels:
        f = variants[f"fp32/c={c}"]
        for v in VARIANTS:
            s = variants[f"{v}/c={c}"]
            rows.append(
                [
                    v,
                    c,
                    s["requests"],
                    s["errors"],
                    s["p50_ms"],
                    s["p99_ms"],
                    s["rps"],
                    s["rps"] / f["rps"] if f["rps"] else 0.0,
                ]
            )
    top = variants.get("top_score", {})
    print(
        f"\nfp32 ({variants['fp32_version']}) vs int8 ({variants['version']}), both on "
        f"{combo_name(variants['workers'], variants['threads'])} (`shitu serve`'s default), interleaved; top score "
        + ", ".join(f"{v} {x:.4f}" for v, x in top.items())
        + ":"
    )
    print(table(["variant", "concurrency", "requests", "errors", "p50 ms", "p99 ms", "req/s", "req/s / fp32"], rows))


def variant_rows(variants: dict, levels: list[int]) -> list[dict]:
    """Summary rows: each variant's req/s per level and p50/p99 at the lowest and highest, then int8 / fp32."""
    lo, hi = levels[0], levels[-1]
    where = f"{combo_name(variants['workers'], variants['threads'])} (`shitu serve` default)"
    rows = []
    for v in VARIANTS:
        at = {c: variants[f"{v}/c={c}"] for c in levels}
        rows.append(
            {
                "what": f"hub serving {v} (general-lite {variants['version' if v == 'int8' else 'fp32_version']}), "
                f"{where}: req/s at concurrency {'/'.join(map(str, levels))}; p50/p99 at {lo} and {hi}",
                "figure": " / ".join(f"{at[c]['rps']:.1f}" for c in levels)
                + f" req/s; {at[lo]['p50_ms']:.0f}/{at[lo]['p99_ms']:.0f} ms, {at[hi]['p50_ms']:.0f}/"
                f"{at[hi]['p99_ms']:.0f} ms",
            }
        )
    f = {c: variants[f"fp32/c={c}"] for c in levels}
    i = {c: variants[f"int8/c={c}"] for c in levels}
    ratio = " / ".join(f"{i[c]['rps'] / f[c]['rps']:.2f}x" if f[c]["rps"] else "-" for c in levels)
    rows.append(
        {
            "what": f"hub serving int8 / fp32, same server settings, interleaved: req/s at concurrency "
            f"{'/'.join(map(str, levels))}; p50 and p99 at {lo}",
            "figure": f"{ratio}; p50 {i[lo]['p50_ms'] / f[lo]['p50_ms']:.2f}x, p99 {i[lo]['p99_ms'] / f[lo]['p99_ms']:.2f}x",
        }
    )
    return rows


def main() -> int:
    from shitu.serving.hub.serve_defaults import serve_defaults, usable_cores

    cores = usable_cores()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=24, help="requests per combination and concurrency level")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved passes the requests are spread over")
    ap.add_argument("--seconds", type=float, default=60, help="time limit per combination, level and round")
    ap.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 2, 4, 8],
        help="client threads per level (the grid adds 1 and 4, fp32 vs int8 adds 1, 4 and 8)",
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4] if cores >= 4 else [1, 2])
    ap.add_argument("--no-int8", action="store_true", help="skip the fp32 vs int8 comparison")
    ap.add_argument("--json")
    args = ap.parse_args()
    levels = sorted(set(args.concurrency) | {1, 4})  # the two the grid reports
    variant_levels = sorted(set(args.concurrency) | set(VARIANT_LEVELS))
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    os.environ.setdefault("HUB_HOME", str(tmp / "hub"))
    os.environ.setdefault("SHITU_HOME", str(tmp / "shitu"))

    from shitu.serving.hub import control as hub_serving
    from shitu.serving.hub.service import RecognitionService

    info = machine()
    load_average = [os.getloadavg()[0]]  # other jobs on the machine: said with the figures
    body = payload()
    hub_serving.install_modules(("image_recognition",))

    # Baseline: the same request in-process (default parameters: 2 paddle threads).
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
    pick = serve_defaults(cores)
    print(describe(info, f"usable cores {cores}; in-process baseline: median {base_ms:.1f} ms ({len(base)} requests)"))
    results: dict = {
        "in_process": {"p50_ms": base_ms, "p95_ms": percentile(base, 95) * 1000, "rps": 1000 / base_ms},
        "cores": cores,
        "serve_default": {"workers": pick.workers, "threads": pick.threads},
    }
    combos = [(w, t) for w in args.workers for t in args.threads]
    parts: dict = {(combo, c): [] for combo in combos for c in levels}
    per_round = max(1, args.requests // max(1, args.rounds))
    specs: dict = {(w, t): (w, t, tmp / f"shitu-{w}x{t}") for w, t in combos}
    default = (pick.workers, pick.threads)
    vparts: dict = {}
    if not args.no_int8:
        from bench_int8 import quantize_general_lite

        started = time.perf_counter()
        report = quantize_general_lite(tmp / "shitu-int8", tmp / "int8")
        results["int8"] = {
            "version": report.version,
            "fp32_version": report.base_version,
            "quantize_seconds": time.perf_counter() - started,
            "workers": pick.workers,
            "threads": pick.threads,
        }
        print(
            f"int8: general-lite {report.version} made from {report.base_version} in {results['int8']['quantize_seconds']:.0f} s"
        )
        specs.setdefault(default, (*default, tmp / f"shitu-{pick.workers}x{pick.threads}"))
        specs["int8"] = (*default, tmp / "shitu-int8")
        vparts = {(v, c): [] for v in VARIANTS for c in variant_levels}
    servers = start_servers(specs, tmp)
    try:
        for key, (url, _) in servers.items():  # warm every worker up
            w = specs[key][0]
            load(url, body, max(2, w * 2), w * 4, args.seconds)
        if (1, 2) in servers:
            results["paired_c1"] = paired_c1(servers[(1, 2)][0], body, svc, args.requests)
        variant_url = {"fp32": servers[default][0], "int8": servers["int8"][0]} if vparts else {}
        if vparts:
            results["int8"]["top_score"] = {v: top_score(u, body) for v, u in variant_url.items()}
        for r in range(args.rounds):
            order = combos[r % len(combos) :] + combos[: r % len(combos)]
            for combo in order:
                for c in levels:
                    parts[(combo, c)].append(load(servers[combo][0], body, c, per_round, args.seconds))
            for c in variant_levels if vparts else ():  # same requests, same settings; who goes first alternates
                for v in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                    vparts[(v, c)].append(load(variant_url[v], body, c, per_round, args.seconds))
    finally:
        stop_servers(servers)
    load_average.append(os.getloadavg()[0])
    results["load_average"] = load_average
    rows = [
        [
            "in-process",
            "-",
            2,
            1,
            len(base),
            0,
            base_ms,
            percentile(base, 95) * 1000,
            percentile(base, 99) * 1000,
            1000 / base_ms,
            1.0,
        ]
    ]
    grid = []
    for w, t in combos:
        for c in levels:
            s = stats(parts[((w, t), c)])
            results[f"workers={w}/threads={t}/c={c}"] = s
            rows.append(
                [
                    "hub serving",
                    w,
                    t,
                    c,
                    s["requests"],
                    s["errors"],
                    s["p50_ms"],
                    s["p95_ms"],
                    s["p99_ms"],
                    s["rps"],
                    s["p50_ms"] / base_ms,
                ]
            )
        grid.append(
            {
                "workers": w,
                "threads": t,
                "rps_c4": results[f"workers={w}/threads={t}/c=4"]["rps"],
                "p50_c1_ms": results[f"workers={w}/threads={t}/c=1"]["p50_ms"],
            }
        )
    results["grid"] = grid
    print(
        table(
            [
                "mode",
                "workers",
                "threads",
                "concurrency",
                "requests",
                "errors",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "req/s",
                "p50 / in-process",
            ],
            rows,
        )
    )
    print(
        f"\nworkers x paddle threads ({args.rounds} interleaved rounds, load average {load_average[0]:.1f} -> "
        f"{load_average[1]:.1f}; `shitu serve` on {cores} cores picks {combo_name(pick.workers, pick.threads)}):"
    )
    print(
        table(
            ["workers", "threads", "req/s at c=4", "p50 ms at c=1", "shitu serve default"],
            [
                [
                    g["workers"],
                    g["threads"],
                    g["rps_c4"],
                    g["p50_c1_ms"],
                    "<-" if (g["workers"], g["threads"]) == (pick.workers, pick.threads) else "",
                ]
                for g in grid
            ],
        )
    )
    paired = results.get("paired_c1")
    if paired:
        print(
            f"HTTP at concurrency 1, paired with in-process: p50 {paired['http_p50_ms']:.1f} ms vs "
            f"{paired['in_process_p50_ms']:.1f} ms = {paired['ratio']:.3f} x in-process (target <= 1.10)"
        )
    summary = summary_rows(grid, paired, (pick.workers, pick.threads), cores)
    if vparts:
        variants = results["int8"]
        for (v, c), p in vparts.items():
            variants[f"{v}/c={c}"] = stats(p)
        print_variants(variants, variant_levels)
        summary += variant_rows(variants, variant_levels)
    failed = sum(s["errors"] for k, s in results.items() if k.startswith("workers="))
    failed += sum(s["errors"] for (v, c) in vparts for s in [results["int8"][f"{v}/c={c}"]])
    write_json("serving", {"machine": info, "results": results, "summary": summary}, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
