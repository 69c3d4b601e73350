"""Per-stage times of one recognition, in-process, on the default models and real photographs.

    python benchmarks/bench_pipeline.py [--repeat 20] [--json OUT]

Stages: decode (JPEG bytes -> BGR), det_preprocess, det_forward, det_postprocess (GFL decode, NMS, top-k), crop,
rec_preprocess, rec_forward, search, rec_nms, serialize (results -> JSON). Prints median and p95 per stage and
image, and the share of end-to-end time spent outside the two model forwards (per run: end-to-end minus that run's
two forwards, median over the runs; a difference of medians would mix runs and carry the forwards' spread into
it). Then multi-image requests: images/s
of ``Engine.recognize`` one image per call versus ``--batch`` images per call (crops of all images through the
recogniser together), timed interleaved. Then the runtimes: every model forward isolated under each runtime x
threads combination (paddle.inference with the verified oneDNN passes, onnxruntime; 1 and 2 threads) on the
pipeline's own input shapes, end-to-end / the sum of the fastest isolated forwards per photo (target <= 1.2x), and
the candidate defaults (detector / recogniser runtime) end to end, interleaved. The JSON's ``summary`` lists the
headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

#: paddle's OpenMP threads spin for 200 ms after each forward (KMP_BLOCKTIME) and took the cores from the
#: onnxruntime forwards timed right after them in the same rounds: onnxruntime's detector measured 40.6 ms
#: isolated here vs 21.4 ms in bench_backends.py in one `make bench` run. Set before paddle is imported.
os.environ.setdefault("KMP_BLOCKTIME", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import describe, machine, percentile, table, write_json  # noqa: E402

STAGES = [
    "decode",
    "det_preprocess",
    "det_forward",
    "det_postprocess",
    "crop",
    "rec_preprocess",
    "rec_forward",
    "search",
    "rec_nms",
    "serialize",
]
FORWARDS = {"det_forward", "rec_forward"}


def photos() -> dict[str, object]:
    import cv2

    from shitu.serving.cli.demo import gallery_photos

    g = gallery_photos()
    return {
        "cat 451x300": g["cat"],
        "rocket 640x427": g["rocket"],
        "coffee 640x480": cv2.resize(g["coffee"], (640, 480)),
        "astronaut 1024x1024": cv2.resize(g["astronaut"], (1024, 1024)),
    }


def multi_image(engine, images: list, rounds: int) -> dict[str, float]:
    """images/s of ``engine.recognize`` one image per call vs all ``images`` in one call, timed in alternating
    order (after one warm-up each), median of ``rounds`` rounds per side."""
    import statistics

    def one_by_one() -> None:
        for img in images:
            engine.recognize([img])

    def together() -> None:
        engine.recognize(images)

    one_by_one()
    together()
    times: dict[str, list[float]] = {"1": [], "N": []}
    for r in range(max(1, rounds)):
        order = (("1", one_by_one), ("N", together)) if r % 2 == 0 else (("N", together), ("1", one_by_one))
        for side, fn in order:
            t0 = time.perf_counter()
            fn()
            times[side].append(time.perf_counter() - t0)
    one, many = statistics.median(times["1"]), statistics.median(times["N"])
    return {
        "images": len(images),
        "rounds": max(1, rounds),
        "images_per_s_batch1": len(images) / one,
        "images_per_s_batchN": len(images) / many,
        "speedup": one / many,
    }


def compare_runtimes(engine, args, results: dict) -> dict:
    """Isolated forwards per runtime x threads, end-to-end / sum of the fastest ones per photo, and the candidate
    defaults end to end (interleaved, on the 640x480 photo)."""
    from forwards import CANDIDATES, fastest, isolated_and_ratios, time_candidates

    from shitu.serving.engine.engine import load_engine
    from shitu.serving.engine.images import decode, encode

    imgs = photos()

    def request(data: bytes) -> None:  # what the per-stage runs time: decode, recognize, serialise
        json.dumps([r.to_dict() for r in engine.recognize([decode(data)])[0]])

    requests = {name: (partial(request, encode(img)), results[name]["boxes"]) for name, img in imgs.items()}
    threads = [int(t) for t in args.threads.split(",")]
    iso, ratios = isolated_and_ratios(engine, requests, imgs["coffee 640x480"], threads, args.repeat)
    for model, shapes in iso.items():
        for shape, medians in shapes.items():
            best, _ = fastest(medians)
            print(f"\n{model} forward, batch {shape[1:]}, isolated ({args.repeat} interleaved rounds):")
            print(
                table(
                    ["runtime, threads", "median ms", "fastest"],
                    [[k, v, "*" if k == best else ""] for k, v in medians.items()],
                )
            )
    print("\nend-to-end / sum of the fastest isolated forwards, timed interleaved (target <= 1.2x):")
    print(
        table(
            ["photo", "e2e ms", "fastest det", "fastest rec", "ratio"],
            [
                [
                    n,
                    r["e2e_ms"],
                    f"{r['fastest_det']}: {r['fastest_det_ms']:.1f}",
                    f"{r['fastest_rec']}: {r['fastest_rec_ms']:.1f}",
                    f"{r['ratio']:.2f}x",
                ]
                for n, r in ratios.items()
            ],
        )
    )
    home = Path(os.environ["SHITU_HOME"])
    engines = {"auto (default)" if args.backend == "auto" else f"{args.backend} / {args.backend}": engine}
    for label, (det, rec) in CANDIDATES.items():
        if label not in engines and (det, rec) != (args.backend, args.backend):
            engines[label] = load_engine(
                gallery=home / "bench-gallery", params={"Global": {"det_backend": det, "rec_backend": rec}}
            )
    candidates = time_candidates(engines, imgs["coffee 640x480"], engine.gallery(), args.repeat)
    described = {
        k: f"{e.detector.predictor.description} / {e.extractor.predictor.description}" for k, e in engines.items()
    }
    print("\ncandidate defaults, recognize() on the 640x480 photo, interleaved:")
    print(table(["det / rec runtime", "median ms", "runs as"], [[k, v, described[k]] for k, v in candidates.items()]))
    for e in engines.values():
        if e is not engine:
            e.close()
    return {
        "threads": threads,
        "isolated_ms": iso,
        "e2e_vs_fastest": ratios,
        "candidates_ms": candidates,
        "candidates_run_as": described,
    }


def summary_rows(engine, results: dict, multi: dict, runtimes: dict) -> list[dict[str, str]]:
    """The headline figures (``summary`` in the JSON; ``make bench`` collects them)."""
    runs_as = f"det {engine.detector.predictor.description}, rec {engine.extractor.predictor.description}"
    rows = []
    for name in ("coffee 640x480", "astronaut 1024x1024"):
        r = runtimes["e2e_vs_fastest"].get(name)
        if r:
            rows.append(
                {
                    "what": f"end-to-end / sum of the fastest isolated forwards, {name} (target <= 1.2x)",
                    "figure": f"{r['ratio']:.2f}x ({r['e2e_ms']:.1f} vs {r['fastest_det_ms']:.1f} + "
                    f"{r['fastest_rec_ms']:.1f} ms: {r['fastest_det']}; {r['fastest_rec']})",
                }
            )
    iso = runtimes["isolated_ms"]
    for model, shape in (("det", "b1"), ("rec", max(iso["rec"], key=lambda s: int(s[1:])))):
        rows.append(
            {
                "what": f"{model} forward isolated, batch {shape[1:]} (runtime, threads: median ms)",
                "figure": "; ".join(f"{k}: {v:.1f}" for k, v in iso[model][shape].items()),
            }
        )
    c = runtimes["candidates_ms"]
    base = next(iter(c.values()))
    for k, v in c.items():
        rows.append(
            {
                "what": f"recognize() 640x480 end to end, det / rec runtime {k}",
                "figure": f"{v:.1f} ms ({v / base:.2f}x the first)",
            }
        )
    rows.append(
        {
            "what": f"images/s, 1 vs {multi['images']} images per call ({runs_as})",
            "figure": f"{multi['images_per_s_batch1']:.1f} vs {multi['images_per_s_batchN']:.1f} "
            f"({multi['speedup']:.2f}x)",
        }
    )
    coffee = results.get("coffee 640x480")
    if coffee:
        rows.append(
            {
                "what": "time outside the model forwards, 640x480 (target <= 15%)",
                "figure": f"{100 * coffee['outside_share']:.1f}% (median per run: "
                f"{coffee['outside_forward_ms']:.1f} ms; end to end {coffee['e2e_median_ms']:.1f} ms)",
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument(
        "--backend",
        choices=("auto", "paddle", "onnxruntime"),
        default="auto",
        help="runtime of both models (Global.det_backend / rec_backend; default: the pack's default)",
    )
    ap.add_argument("--threads", default="1,2", help="thread counts of the isolated-forward combinations")
    ap.add_argument(
        "--json",
        help="write results here (default benchmarks/results/pipeline.json; pipeline-<backend>.json with --backend)",
    )
    ap.add_argument("--batch", type=int, default=8, help="images per call in the multi-image comparison")
    ap.add_argument("--batch-rounds", type=int, default=5, help="rounds of the multi-image comparison")
    args = ap.parse_args()
    os.environ.setdefault("SHITU_HOME", tempfile.mkdtemp(prefix="bench-pipeline-"))

    from shitu.serving.cli.demo import gallery_photos
    from shitu.serving.engine.engine import load_engine
    from shitu.serving.engine.images import decode, encode
    from shitu.serving.engine.timing import StageTimer

    engine = load_engine(
        gallery=Path(os.environ["SHITU_HOME"]) / "bench-gallery",
        params={"Global": {"det_backend": args.backend, "rec_backend": args.backend}},
    )
    g = gallery_photos()
    if len(engine.gallery()) == 0:
        engine.gallery_add(list(g.values()), list(g))
    info = machine()
    print(
        describe(info, f"det: {engine.detector.predictor.description}; rec: {engine.extractor.predictor.description}")
    )
    results = {}
    for name, img in photos().items():
        data = encode(img)
        per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
        totals: list[float] = []
        boxes = 0
        for i in range(args.repeat + 2):
            timer = StageTimer()
            t0 = time.perf_counter()
            with timer.stage("decode"):
                bgr = decode(data)
            found = engine.recognize([bgr], timer=timer)[0]
            with timer.stage("serialize"):
                json.dumps([r.to_dict() for r in found])
            total = time.perf_counter() - t0
            if i < 2:
                continue  # warm-up
            totals.append(total)
            for s in STAGES:
                per_stage[s].append(timer.values.get(s, 0.0))
            boxes = len(engine.detect([bgr])[0]) if i == 2 else boxes
        med = {s: percentile(v, 50) * 1000 for s, v in per_stage.items()}
        p95 = {s: percentile(v, 95) * 1000 for s, v in per_stage.items()}
        e2e = percentile(totals, 50) * 1000
        # per run: what that run spent outside its own two forwards
        outside_runs = [t - d - r for t, d, r in zip(totals, per_stage["det_forward"], per_stage["rec_forward"])]
        outside = percentile(outside_runs, 50) * 1000
        share = percentile([o / t for o, t in zip(outside_runs, totals)], 50)
        results[name] = {
            "median_ms": med,
            "p95_ms": p95,
            "e2e_median_ms": e2e,
            "e2e_p95_ms": percentile(totals, 95) * 1000,
            "outside_forward_ms": outside,
            "outside_share": share,
            "boxes": boxes,
        }
        print(f"\n{name}: {boxes} boxes searched (incl. whole image), {args.repeat} runs")
        rows = [[s, med[s], p95[s], 100 * med[s] / e2e] for s in STAGES]
        rows.append(["end-to-end", e2e, percentile(totals, 95) * 1000, 100.0])
        print(table(["stage", "median ms", "p95 ms", "% of e2e"], rows))
        print(f"outside the model forwards (median per run): {outside:.1f} ms = {100 * share:.1f}% of end-to-end")
    from shitu.serving.cli.demo import query_photos

    multi = multi_image(engine, (list(g.values()) + list(query_photos(g).values()))[: args.batch], args.batch_rounds)
    print(f"\nmulti-image requests: {multi['images']} photos, {multi['rounds']} rounds each way, interleaved")
    print(
        table(
            ["recognize", "images/s", "ms per image"],
            [
                ["1 image per call", multi["images_per_s_batch1"], 1000 / multi["images_per_s_batch1"]],
                [
                    f"{multi['images']} images per call",
                    multi["images_per_s_batchN"],
                    1000 / multi["images_per_s_batchN"],
                ],
            ],
        )
    )
    print(
        f"batched / one at a time: {multi['speedup']:.2f}x images/s (crops of all images through the recogniser "
        "together, Global.batch_size per forward)"
    )
    runtimes = compare_runtimes(engine, args, results)
    summary = summary_rows(engine, results, multi, runtimes)
    print("\n" + table(["what", "figure"], [[r["what"], r["figure"]] for r in summary]))
    name = "pipeline" if args.backend == "auto" else f"pipeline-{args.backend}"
    write_json(
        name,
        {
            "machine": info,
            "repeat": args.repeat,
            "backend": args.backend,
            "images": results,
            "multi_image": multi,
            "runtimes": runtimes,
            "summary": summary,
        },
        args.json,
    )
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
