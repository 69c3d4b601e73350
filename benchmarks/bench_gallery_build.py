"""Gallery building speed: images per second one image at a time vs batched, in one run, interleaved.

    python benchmarks/bench_gallery_build.py [--images 96] [--batch 16] [--repeat 3] [--param rec_backend=onnxruntime]
                                             [--json OUT]

A folder tree ``label/image.jpg`` of real photographs (the demo photos in several crops and scales) is built into a
fresh gallery by ``build_from_entries`` in three modes, each ``--repeat`` times, the modes interleaved (order
alternating per round): one image per chunk through ``Engine.embed`` (one forward per image); ``--batch`` images
per chunk through ``Engine.embed`` (one predictor, ``Global.batch_size`` per forward); and ``--batch`` per chunk
through the bulk embedder that ``shitu gallery build`` and ``Engine.gallery_build`` use (each chunk split over
single-thread copies of the recogniser running at once: ``shitu.serving.engine.bulk``). Reading, hashing, decoding
(overlapped with the forwards) and the one gallery commit are included in every mode. The JSON's ``summary`` holds
the headline ratios.

Paddle's OpenMP runtime (``libiomp5``) keeps its threads spinning for ``KMP_BLOCKTIME`` (200 ms by default) after
each forward; one image at a time through a 2-thread predictor therefore burns CPU between images (measured on the
shared VM: 38 CPU ms per image vs 14 with ``KMP_BLOCKTIME=0``), and the single-thread copies avoid most of it. Run
with ``KMP_BLOCKTIME=0`` to compare the modes without that spin (the JSON records the setting).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import describe, machine, table, write_json  # noqa: E402


def make_tree(root: Path, n: int) -> None:
    import cv2
    from shitu.serving.cli.demo import gallery_photos

    photos = list(gallery_photos().items())
    for i in range(n):
        label, img = photos[i % len(photos)]
        h, w = img.shape[:2]
        k = i // len(photos)
        view = img[(k * 7) % (h // 5): h - (k * 5) % (h // 5), (k * 11) % (w // 5): w - (k * 3) % (w // 5)]
        view = cv2.resize(view, None, fx=0.6 + 0.1 * (k % 5), fy=0.6 + 0.1 * (k % 5))
        (root / label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / label / f"{i:04d}.jpg"), view)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16, help="images per chunk of a batched build")
    ap.add_argument("--repeat", type=int, default=3, help="builds per mode, interleaved (median reported)")
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a Global parameter of the engine, e.g. rec_backend=onnxruntime (repeatable)")
    ap.add_argument("--json")
    args = ap.parse_args()

    import numpy as np
    from shitu.serving.engine.bulk import BulkEmbedder
    from shitu.serving.engine.engine import load_engine
    from shitu.serving.gallery.local import Gallery
    from shitu.serving.gallery.build import build_from_entries
    from shitu.serving.gallery.list_file import scan_folder

    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    make_tree(tmp / "images", args.images)
    entries = scan_folder(tmp / "images")
    if any("=" not in kv for kv in args.param):
        ap.error("--param takes KEY=VALUE (a Global parameter), e.g. rec_backend=onnxruntime")
    overrides = dict(kv.split("=", 1) for kv in args.param)
    engine = load_engine(params={"Global": {k: yaml_value(v) for k, v in overrides.items()}})
    bulk = BulkEmbedder(engine.extractor, engine.params)
    modes = {  # name -> (chunk size, embed_fn)
        "one at a time": (1, lambda imgs: engine.embed(imgs)),
        "batched, one predictor": (args.batch, lambda imgs: engine.embed(imgs)),
        f"batched, {bulk.copies} single-thread copies": (args.batch, bulk),
    }
    # Load the models and warm them up at every batch shape used (oneDNN prepares its kernels per input shape).
    blank = np.zeros((64, 64, 3), "uint8")
    for n in sorted({1, args.batch, engine.params["Global.batch_size"]}):
        for _ in range(2):
            engine.embed([blank] * n)
            bulk([blank] * n)
    info = machine()
    print(describe(info, f"rec: {engine.extractor.predictor.description}; {len(entries)} images; "
                         f"{engine.params['Global.batch_size']} per forward (Global.batch_size)"))
    runs: dict[str, list[float]] = {name: [] for name in modes}
    cpu: dict[str, list[float]] = {name: [] for name in modes}  # CPU seconds of this process (all its threads)
    for r in range(args.repeat):  # a fresh gallery each time; modes interleaved, order alternating
        order = list(modes) if r % 2 == 0 else list(modes)[::-1]
        for name in order:
            chunk, embed_fn = modes[name]
            g = Gallery.create(tmp / f"g{len(runs[name])}-{list(modes).index(name)}", engine.embedding_size,
                               index_method="Flat")
            t, c = time.perf_counter(), time.process_time()
            report = build_from_entries(g, entries, embed_fn, batch_size=chunk, progress=False)
            runs[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            assert report.added == len(entries), report
            g.close()
    rows, out = [], {}
    base = len(entries) / sorted(runs["one at a time"])[len(runs["one at a time"]) // 2]
    for name, (chunk, _fn) in modes.items():
        dt = sorted(runs[name])[len(runs[name]) // 2]
        ips = len(entries) / dt
        cpu_ms = sorted(cpu[name])[len(cpu[name]) // 2] / len(entries) * 1000
        rows.append([name, chunk, len(entries), dt, ips, ips / base, cpu_ms])
        out[name] = {"chunk": chunk, "seconds": dt, "images_per_s": ips, "speedup": ips / base, "runs": runs[name],
                     "cpu_ms_per_image": cpu_ms, "cpu_runs": cpu[name]}
    print(table(["mode", "chunk", "images", "seconds", "images/s", "x one-at-a-time", "CPU ms/image"], rows))
    print("CPU ms/image: CPU time of this process (all threads) per image; on a shared machine it says what a build "
          "costs when wall-clock time depends on the neighbours")
    backend = engine.extractor.predictor.options.backend
    print(f"batching: {rows[-1][5]:.2f} x the images per second of one-at-a-time (target >= 1.5)")
    summary = [{"what": f"gallery build, {rows[-1][0]} / one at a time, {backend}, {len(entries)} images",
                "figure": f"{rows[-1][5]:.2f}x ({rows[-1][4]:.1f} vs {base:.1f} images/s)"},
               {"what": f"gallery build, batched one predictor / one at a time, {backend}",
                "figure": f"{rows[1][5]:.2f}x ({rows[1][4]:.1f} vs {base:.1f} images/s)"},
               {"what": f"gallery build CPU ms per image, one at a time / {rows[-1][0]}, {backend}",
                "figure": f"{rows[0][6] / rows[-1][6]:.2f}x ({rows[0][6]:.1f} vs {rows[-1][6]:.1f} ms)"}]
    write_json(f"gallery_build-{backend}" if backend != "paddle" else "gallery_build",
               {"machine": info, "backend": backend, "batch": args.batch, "results": out, "summary": summary,
                "KMP_BLOCKTIME": os.environ.get("KMP_BLOCKTIME")},
               args.json)
    return 0


def yaml_value(text: str) -> object:
    """``--param`` values as YAML scalars (numbers, booleans, strings)."""
    import yaml

    return yaml.safe_load(text)


if __name__ == "__main__":
    sys.exit(main())
