"""Per-stage times of one recognition, in-process, on the default models and real photographs.

    python benchmarks/bench_pipeline.py [--repeat 20] [--json OUT]

Stages: decode (JPEG bytes -> BGR), det_preprocess, det_forward, det_postprocess (GFL decode, NMS, top-k), crop,
rec_preprocess, rec_forward, search, rec_nms, serialize (results -> JSON). Prints median and p95 per stage and
image, and the share of end-to-end time spent outside the two model forwards. Then multi-image requests: images/s
of ``Engine.recognize`` one image per call versus ``--batch`` images per call (crops of all images through the
recogniser together), timed interleaved.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import describe, machine, percentile, table, write_json  # noqa: E402

STAGES = ["decode", "det_preprocess", "det_forward", "det_postprocess", "crop", "rec_preprocess", "rec_forward",
          "search", "rec_nms", "serialize"]
FORWARDS = {"det_forward", "rec_forward"}


def photos() -> dict[str, "object"]:
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
    return {"images": len(images), "rounds": max(1, rounds), "images_per_s_batch1": len(images) / one,
            "images_per_s_batchN": len(images) / many, "speedup": one / many}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--backend", choices=("paddle", "onnxruntime"), default="paddle",
                    help="runtime of both models (Global.det_backend / rec_backend)")
    ap.add_argument("--json", help="write results here (default benchmarks/results/pipeline.json)")
    ap.add_argument("--batch", type=int, default=8, help="images per call in the multi-image comparison")
    ap.add_argument("--batch-rounds", type=int, default=5, help="rounds of the multi-image comparison")
    args = ap.parse_args()
    os.environ.setdefault("SHITU_HOME", tempfile.mkdtemp(prefix="bench-pipeline-"))

    from shitu.serving.cli.demo import gallery_photos
    from shitu.serving.engine.engine import load_engine
    from shitu.serving.engine.images import decode, encode
    from shitu.serving.engine.timing import StageTimer

    engine = load_engine(gallery=Path(os.environ["SHITU_HOME"]) / "bench-gallery",
                         params={"Global": {"det_backend": args.backend, "rec_backend": args.backend}})
    g = gallery_photos()
    if len(engine.gallery()) == 0:
        engine.gallery_add(list(g.values()), list(g))
    info = machine()
    print(describe(info, f"det: {engine.detector.predictor.description}; rec: {engine.extractor.predictor.description}"))
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
        outside = e2e - med["det_forward"] - med["rec_forward"]
        results[name] = {"median_ms": med, "p95_ms": p95, "e2e_median_ms": e2e, "e2e_p95_ms": percentile(totals, 95)
                         * 1000, "outside_forward_ms": outside, "outside_share": outside / e2e, "boxes": boxes}
        print(f"\n{name}: {boxes} boxes searched (incl. whole image), {args.repeat} runs")
        rows = [[s, med[s], p95[s], 100 * med[s] / e2e] for s in STAGES]
        rows.append(["end-to-end", e2e, percentile(totals, 95) * 1000, 100.0])
        print(table(["stage", "median ms", "p95 ms", "% of e2e"], rows))
        print(f"outside the model forwards: {outside:.1f} ms = {100 * outside / e2e:.1f}% of end-to-end")
    from shitu.serving.cli.demo import query_photos

    multi = multi_image(engine, (list(g.values()) + list(query_photos(g).values()))[:args.batch], args.batch_rounds)
    print(f"\nmulti-image requests: {multi['images']} photos, {multi['rounds']} rounds each way, interleaved")
    print(table(["recognize", "images/s", "ms per image"],
                [["1 image per call", multi["images_per_s_batch1"], 1000 / multi["images_per_s_batch1"]],
                 [f"{multi['images']} images per call", multi["images_per_s_batchN"], 1000 / multi["images_per_s_batchN"]]]))
    print(f"batched / one at a time: {multi['speedup']:.2f}x images/s (crops of all images through the recogniser "
          "together, Global.batch_size per forward)")
    write_json(f"pipeline-{args.backend}", {"machine": info, "repeat": args.repeat, "backend": args.backend,
                                            "images": results, "multi_image": multi}, args.json)
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
