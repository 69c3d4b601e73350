"""Gallery building speed: images per second one image at a time vs batched, per runtime, in one run, interleaved.

    python benchmarks/bench_gallery_build.py [--images 96] [--batch 16] [--repeat 3] [--backends onnxruntime paddle]
                                             [--param KEY=VALUE] [--no-int8] [--json OUT]

A folder tree ``label/image.jpg`` of real photographs (the demo photos in several crops and scales) is built into a
fresh gallery by ``build_from_entries``, for each recogniser runtime (``--backends``: onnxruntime and
paddle.inference with oneDNN, the two an engine can run the embedded recogniser on), in three modes, each
``--repeat`` times, all modes of all runtimes interleaved (order alternating per round): one image per chunk through
``Engine.embed`` (one forward per image); ``--batch`` images per chunk through ``Engine.embed`` (one predictor,
``Global.batch_size`` per forward); and ``--batch`` per chunk through the bulk embedder that ``shitu gallery build``
and ``Engine.gallery_build`` use (``shitu.serving.engine.bulk``: on onnxruntime each chunk split over single-thread
copies of the recogniser running at once; on paddle, whose forward holds the GIL, the engine's own predictor).
Reading, hashing, decoding (overlapped with the forwards) and the one gallery commit are included in every mode.
fp32 vs int8 (issue 30): general-lite's int8 version, made by ``shitu plugins quantize``'s function
(``bench_int8.quantize_general_lite``) in a SHITU_HOME of its own, runs the same three modes as one more runtime,
``int8`` (its int8 recogniser graph on onnxruntime), interleaved with the others; ``--no-int8`` skips it.
The JSON's ``summary`` holds the headline ratios, int8 / fp32 (onnxruntime) among them.

Paddle's OpenMP runtime (``libiomp5``) keeps its threads spinning for ``KMP_BLOCKTIME`` (200 ms by default) after
each forward, which took the cores from the onnxruntime builds timed after a paddle one (and from paddle's own
decode thread); the script sets ``KMP_BLOCKTIME=0`` unless the environment sets it (the JSON records the value).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
#: read by paddle's OpenMP runtime when it loads: set before anything imports paddle
os.environ.setdefault("KMP_BLOCKTIME", "0")

from common import describe, machine, table, write_json  # noqa: E402

#: The runtime label of general-lite's int8 version (its recogniser's int8 graph, on onnxruntime).
INT8 = "int8"


def make_tree(root: Path, n: int) -> None:
    import cv2

    from shitu.serving.cli.demo import gallery_photos

    photos = list(gallery_photos().items())
    for i in range(n):
        label, img = photos[i % len(photos)]
        h, w = img.shape[:2]
        k = i // len(photos)
        view = img[(k * 7) % (h // 5) : h - (k * 5) % (h // 5), (k * 11) % (w // 5) : w - (k * 3) % (w // 5)]
        view = cv2.resize(view, None, fx=0.6 + 0.1 * (k % 5), fy=0.6 + 0.1 * (k % 5))
        (root / label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / label / f"{i:04d}.jpg"), view)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16, help="images per chunk of a batched build")
    ap.add_argument("--repeat", type=int, default=3, help="builds per mode, interleaved (median reported)")
    ap.add_argument(
        "--backends",
        nargs="+",
        default=["onnxruntime", "paddle"],
        choices=["onnxruntime", "paddle"],
        help="recogniser runtimes to compare (Global.rec_backend)",
    )
    ap.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Global parameter of the engines, e.g. cpu_num_threads=2 (repeatable)",
    )
    ap.add_argument("--no-int8", action="store_true", help="skip general-lite's int8 recogniser")
    ap.add_argument("--json")
    args = ap.parse_args()

    import numpy as np

    from shitu.serving.engine.engine import load_engine
    from shitu.serving.gallery.build import build_from_entries
    from shitu.serving.gallery.list_file import scan_folder
    from shitu.serving.gallery.local import Gallery

    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    make_tree(tmp / "images", args.images)
    entries = scan_folder(tmp / "images")
    if any("=" not in kv for kv in args.param):
        ap.error("--param takes KEY=VALUE (a Global parameter), e.g. cpu_num_threads=2")
    overrides = {k: yaml_value(v) for k, v in (kv.split("=", 1) for kv in args.param)}
    modes: dict[tuple[str, str], tuple[int, object]] = {}  # (backend, mode) -> (chunk size, embed_fn)
    engines = []
    build_mode: dict[str, tuple[str, str]] = {}  # backend -> its "as builds run" mode
    how_of: dict[str, str] = {}
    runtimes = list(args.backends)
    int8_version = None
    if not args.no_int8:
        from bench_int8 import quantize_general_lite, shitu_home

        report = quantize_general_lite(tmp / "shitu-int8", tmp / "int8")
        int8_version = report.version
        runtimes.append(INT8)
    for backend in runtimes:
        if backend == INT8:  # the int8 version is current in its home; its pack params pick onnxruntime
            with shitu_home(tmp / "shitu-int8"):
                engine = load_engine("general-lite", params={"Global": overrides})
        else:
            engine = load_engine(params={"Global": {**overrides, "rec_backend": backend}})
        engines.append(engine)
        bulk = engine.embed_bulk  # what `shitu gallery build` and Engine.gallery_build embed with
        how = f"{engine._bulk.copies} single-thread copies" if engine._bulk.copies > 1 else "one predictor"
        modes[(backend, "one at a time")] = (1, engine.embed)
        modes[(backend, "batched, one predictor")] = (args.batch, engine.embed)
        build_mode[backend], how_of[backend] = (backend, f"batched, as builds run ({how})"), how
        modes[build_mode[backend]] = (args.batch, bulk)
        # Load the models and warm them up at every batch shape used (oneDNN prepares its kernels per input shape).
        blank = np.zeros((64, 64, 3), "uint8")
        for n in sorted({1, args.batch, engine.params["Global.batch_size"]}):
            for _ in range(2):
                engine.embed([blank] * n)
                bulk([blank] * n)
    info = machine()
    print(
        describe(
            info,
            "; ".join(f"rec: {e.extractor.predictor.description}" for e in engines)
            + f"; {len(entries)} images; {engines[0].params['Global.batch_size']} per forward (Global.batch_size)",
        )
    )
    runs: dict[tuple[str, str], list[float]] = {key: [] for key in modes}
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in modes}  # CPU seconds of this process (all threads)
    dim = engines[0].embedding_size
    for r in range(args.repeat):  # a fresh gallery each time; modes interleaved, order alternating
        order = list(modes) if r % 2 == 0 else list(modes)[::-1]
        for key in order:
            chunk, embed_fn = modes[key]
            g = Gallery.create(tmp / f"g{r}-{list(modes).index(key)}", dim, index_method="Flat")
            t, c = time.perf_counter(), time.process_time()
            report = build_from_entries(g, entries, embed_fn, batch_size=chunk, progress=False)
            runs[key].append(time.perf_counter() - t)
            cpu[key].append(time.process_time() - c)
            assert report.added == len(entries), report
            g.close()
    rows, out, summary = [], {}, []
    ips: dict[tuple[str, str], float] = {}
    for key, (chunk, _fn) in modes.items():
        dt = sorted(runs[key])[len(runs[key]) // 2]
        ips[key] = len(entries) / dt
        base = ips[(key[0], "one at a time")]
        cpu_ms = sorted(cpu[key])[len(cpu[key]) // 2] / len(entries) * 1000
        rows.append([key[0], key[1], chunk, len(entries), dt, ips[key], ips[key] / base, cpu_ms])
        out.setdefault(key[0], {})[key[1]] = {
            "chunk": chunk,
            "seconds": dt,
            "images_per_s": ips[key],
            "speedup": ips[key] / base,
            "runs": runs[key],
            "cpu_ms_per_image": cpu_ms,
            "cpu_runs": cpu[key],
        }
    print(table(["runtime", "mode", "chunk", "images", "seconds", "images/s", "x one-at-a-time", "CPU ms/image"], rows))
    print(
        "CPU ms/image: CPU time of this process (all threads) per image; on a shared machine it says what a build "
        "costs when wall-clock time depends on the neighbours"
    )
    for backend in runtimes:
        one, builds = (backend, "one at a time"), build_mode[backend]
        ratio = ips[builds] / ips[one]
        print(
            f"{backend}: batching as builds run it: {ratio:.2f} x the images per second of one at a time "
            "(target >= 1.5)"
        )
        summary.append(
            {
                "what": f"gallery build, {backend}: batched as builds run it ({how_of[backend]}) / one at a "
                f"time, {len(entries)} images",
                "figure": f"{ratio:.2f}x ({ips[builds]:.1f} vs {ips[one]:.1f} images/s)",
            }
        )
    if {"onnxruntime", "paddle"} <= set(args.backends):
        a, b = ips[build_mode["onnxruntime"]], ips[build_mode["paddle"]]
        summary.append(
            {
                "what": "gallery build as builds run it, onnxruntime / paddle",
                "figure": f"{a / b:.2f}x ({a:.1f} vs {b:.1f} images/s)",
            }
        )
    if INT8 in runtimes and "onnxruntime" in runtimes:
        a, b = ips[build_mode[INT8]], ips[build_mode["onnxruntime"]]
        print(f"int8 / fp32 recogniser (onnxruntime), as builds run it: {a / b:.2f}x ({a:.1f} vs {b:.1f} images/s)")
        summary.append(
            {
                "what": f"gallery build as builds run it, int8 recogniser ({int8_version}) / fp32 "
                f"(onnxruntime both), {len(entries)} images",
                "figure": f"{a / b:.2f}x ({a:.1f} vs {b:.1f} images/s)",
            }
        )
    write_json(
        "gallery_build",
        {
            "machine": info,
            "backends": args.backends,
            "int8_version": int8_version,
            "batch": args.batch,
            "results": out,
            "summary": summary,
            "KMP_BLOCKTIME": os.environ.get("KMP_BLOCKTIME"),
        },
        args.json,
    )
    for e in engines:
        e.close()
    return 0


def yaml_value(text: str) -> object:
    """``--param`` values as YAML scalars (numbers, booleans, strings)."""
    import yaml

    return yaml.safe_load(text)


if __name__ == "__main__":
    sys.exit(main())
