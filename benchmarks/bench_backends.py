"""The default models under each runtime, side by side: paddle.inference (oneDNN on / off) and onnxruntime.

    python benchmarks/bench_backends.py [--repeat 20] [--json OUT]

Same input, same thread count (Global.cpu_num_threads), batch 1 (detector, 416x416) and batch 1 / 6 (extractor,
224x224: one image's crops). Also prints the largest output difference against paddle with oneDNN off.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import describe, machine, percentile, table, write_json  # noqa: E402


def summary_rows(out: dict, threads: int) -> list[dict]:
    """Headline figures: each model's forward under the three runtimes (``make bench`` collects them)."""
    rows = []
    for key, what in (
        ("det/b1", "detector forward"),
        ("rec/b1", "recogniser forward, batch 1"),
        ("rec/b6", "recogniser forward, batch 6"),
    ):
        ms = [v["median_ms"] for k, v in out.items() if k.startswith(key + "/")]
        rows.append(
            {
                "what": f"{what}, paddle oneDNN off / on / onnxruntime, {threads} threads",
                "figure": " / ".join(f"{m:.1f}" for m in ms) + " ms",
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()

    from shitu.model_spec import ModelSpec
    from shitu.serving.cli.demo import gallery_photos
    from shitu.serving.engine.engine import builtin_models_dir
    from shitu.serving.engine.predictor import Predictor, RuntimeOptions
    from shitu.serving.engine.transforms import Transforms

    img = gallery_photos()["coffee"]
    info = machine()
    print(describe(info, f"{args.threads} threads"))
    rows, out = [], {}
    for sub, batches in (("det", [1]), ("rec", [1, 6])):
        spec = ModelSpec.from_dir(builtin_models_dir() / sub)
        x1 = Transforms(spec.transform_ops, spec.input_color)(img).image[None]
        variants = {
            "paddle, oneDNN off": RuntimeOptions(args.threads, enable_mkldnn=False),
            "paddle, oneDNN on (verified passes)": RuntimeOptions(args.threads, enable_mkldnn=True),
            "onnxruntime": RuntimeOptions(args.threads, backend="onnxruntime"),
        }
        preds = {k: Predictor(spec, o) for k, o in variants.items()}
        for batch in batches:
            x = np.repeat(x1, batch, axis=0)
            ref = None
            base_ms = None
            for name, p in preds.items():
                feed = {p.input_names[0]: x}
                for _ in range(3):
                    outs = p.run(feed)
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    outs = p.run(feed)
                    times.append(time.perf_counter() - t)
                arrs = [outs[n] for n in p.output_names]
                if ref is None:
                    ref = arrs
                diff = (
                    max(float(np.abs(np.sort(a.ravel()) - np.sort(r.ravel())).max()) for a, r in zip(arrs, ref))
                    if sub == "det"
                    else float(np.abs(arrs[0] - ref[0]).max())
                )
                med = percentile(times, 50) * 1000
                base_ms = base_ms or med
                rows.append([sub, batch, name, med, percentile(times, 95) * 1000, base_ms / med, f"{diff:.1e}"])
                out[f"{sub}/b{batch}/{name}"] = {
                    "median_ms": med,
                    "p95_ms": percentile(times, 95) * 1000,
                    "speedup_vs_paddle_off": base_ms / med,
                    "max_abs_diff": diff,
                }
    print(table(["model", "batch", "runtime", "median ms", "p95 ms", "speed-up vs oneDNN off", "max |diff|"], rows))
    write_json(
        "backends",
        {"machine": info, "threads": args.threads, "results": out, "summary": summary_rows(out, args.threads)},
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
