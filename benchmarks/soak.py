"""A bounded soak on loopback: 4 clients mixing recognitions with gallery adds and removes for 2 minutes.

    python benchmarks/soak.py [--seconds 120] [--clients 4] [--workers 2] [--idle 20 --slow 20] [--json OUT]

Starts `hub serving` (gunicorn, 2 workers, an admin token), then: client 0 adds a new labelled image three steps of
four and removes its latest add on the fourth, so two adds of three stay; the others recognise a query that must always
find "coffee". With ``--idle``/``--slow``, that many idle and slow-body connections (benchmarks/slow_clients.py)
stay open against the server the whole time, reopened as soon as the server drops them. Reports failed requests,
adds not found afterwards, removed labels still listed, the answers the slow connections got, and the workers'
memory (RSS) every 15 s after warm-up.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import describe, machine, table, write_json  # noqa: E402
from slow_clients import SlowClients  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--idle", type=int, default=0, help="idle connections kept open during the soak")
    ap.add_argument("--slow", type=int, default=0, help="slow-body connections kept open during the soak")
    ap.add_argument("--json")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    os.environ.setdefault("HUB_HOME", str(tmp / "hub"))
    os.environ.setdefault("SHITU_HOME", str(tmp / "shitu"))

    import psutil
    import requests

    from shitu.serving.cli.demo import gallery_photos, query_photos
    from shitu.serving.engine.images import encode
    from shitu.serving.hub import control as hub_serving

    token = "soak-token"
    photos = gallery_photos()
    b64 = {k: base64.b64encode(encode(v)).decode() for k, v in photos.items()}
    query = base64.b64encode(encode(query_photos(photos)["coffee_rescaled_crop"])).decode()
    hub_serving.install_modules(("image_recognition", "index_search"))
    port = hub_serving.free_port()
    cfg = tmp / "config.json"
    cfg.write_text(
        json.dumps(
            hub_serving.serving_config(("image_recognition", "index_search"), port, args.workers, {"token": token})
        )
    )
    proc = hub_serving.start(cfg, log_path=tmp / "serving.log")
    url = f"http://127.0.0.1:{port}"
    session = requests.Session()

    def post(module: str, payload: dict) -> dict:
        r = session.post(f"{url}/predict/{module}", json=payload, timeout=120)
        body = r.json()
        if body["status"] != "000":
            raise RuntimeError(f"{body['status']}: {body['msg']}")
        return body["results"]

    def rss() -> int:
        return sum(c.memory_info().rss for c in psutil.Process(proc.pid).children(recursive=True))

    info = machine()
    try:
        hub_serving.wait_ready(url, proc)
        g = {"gallery": "soak"}
        post(
            "image_recognition",
            {"operation": "add", "images": [b64["coffee"]], "labels": ["coffee"], "token": token, **g},
        )
        with cf.ThreadPoolExecutor(4 * args.workers) as pool:  # warm every worker up
            list(pool.map(lambda _: post("image_recognition", {"images": [query], **g}), range(8 * args.workers)))
        failures: list[str] = []
        added: list[str] = []
        removed: list[str] = []
        counts = {"recognize": 0, "add": 0, "remove": 0}
        lock = threading.Lock()
        samples = [(0.0, rss())]
        start = time.monotonic()
        end = start + args.seconds

        def client(n: int) -> None:
            s = requests.Session()
            i = 0
            while time.monotonic() < end:
                try:
                    if n == 0 and (i % 4 != 3 or len(added) - len(removed) < 2):
                        label = f"rocket-{i}"
                        r = s.post(
                            f"{url}/predict/image_recognition",
                            timeout=120,
                            json={
                                "operation": "add",
                                "images": [b64["rocket"]],
                                "labels": [label],
                                "token": token,
                                **g,
                            },
                        )
                        assert r.json()["status"] == "000", r.text
                        with lock:
                            added.append(label)
                            counts["add"] += 1
                    elif n == 0:  # one add of three is removed again (the latest); the others stay
                        r = s.post(
                            f"{url}/predict/image_recognition",
                            timeout=120,
                            json={"operation": "remove", "labels": [added[-1]], "token": token, **g},
                        )
                        assert r.json()["status"] == "000", r.text
                        with lock:
                            removed.append(added[-1])
                            counts["remove"] += 1
                    else:
                        r = s.post(f"{url}/predict/image_recognition", json={"images": [query], **g}, timeout=120)
                        body = r.json()
                        assert body["status"] == "000", r.text
                        assert body["results"][0]["results"][0]["label"] == "coffee", body
                        with lock:
                            counts["recognize"] += 1
                except Exception as exc:
                    with lock:
                        failures.append(repr(exc)[:200])
                i += 1

        def sampler() -> None:
            while time.monotonic() < end:
                time.sleep(min(15, max(0.1, end - time.monotonic())))
                samples.append((time.monotonic() - start, rss()))

        attack = (
            SlowClients("127.0.0.1", port, args.idle, args.slow, reconnect=True) if args.idle or args.slow else None
        )
        try:
            with cf.ThreadPoolExecutor(args.clients + 1) as pool:
                futures = [pool.submit(client, n) for n in range(args.clients)] + [pool.submit(sampler)]
                for f in futures:
                    f.result()
        finally:
            if attack is not None:
                attack.close()
        listed = {r["label"] for r in post("index_search", {"operation": "list", "limit": 10000, **g})}
        lost = sorted(set(added) - set(removed) - listed)
        resurrected = sorted(set(removed) & listed)
    finally:
        hub_serving.stop(proc)
    total = sum(counts.values())
    print(
        describe(
            info,
            f"{args.workers} workers, {args.clients} clients, {args.seconds:.0f} s, "
            f"{args.idle} idle + {args.slow} slow-body connections",
        )
    )
    print(
        table(
            ["requests", "recognize", "add", "remove", "adds kept", "failed", "adds lost", "removes resurrected"],
            [
                [
                    total,
                    counts["recognize"],
                    counts["add"],
                    counts["remove"],
                    len(set(added) - set(removed)),
                    len(failures),
                    len(lost),
                    len(resurrected),
                ]
            ],
        )
    )
    slow_answers = dict(attack.answers) if attack is not None else {}
    if slow_answers:
        print("\nanswers to the slow-body connections:")
        print(table(["status line", "count"], [[k, v] for k, v in sorted(slow_answers.items())]))
    print("\nworker memory (RSS, all workers):")
    print(table(["t (s)", "RSS MiB", "vs first"], [[round(t), r / 2**20, r / samples[0][1]] for t, r in samples]))
    for f in failures[:5]:
        print("failure:", f)
    summary = [
        {
            "what": f"soak, {args.seconds:.0f} s, {args.clients} clients, {args.workers} workers: requests "
            "(recognitions, adds, removes), failed, adds lost, removes resurrected",
            "figure": f"{total} ({counts['recognize']}, {counts['add']}, {counts['remove']}), {len(failures)} "
            f"failed, {len(lost)} lost, {len(resurrected)} resurrected",
        },
        {
            "what": "soak: worker RSS, first -> last sample (all workers)",
            "figure": f"{samples[0][1] / 2**20:.0f} -> {samples[-1][1] / 2**20:.0f} MiB "
            f"({samples[-1][1] / samples[0][1] - 1:+.0%})"
            if samples
            else "no sample",
        },
    ]
    write_json(
        "soak",
        {
            "machine": info,
            "counts": counts,
            "failures": failures,
            "lost": lost,
            "resurrected": resurrected,
            "kept": len(set(added) - set(removed)),
            "rss": samples,
            "idle": args.idle,
            "slow": args.slow,
            "slow_answers": slow_answers,
            "summary": summary,
        },
        args.json,
    )
    return 0 if not failures and not lost and not resurrected else 1


if __name__ == "__main__":
    sys.exit(main())
