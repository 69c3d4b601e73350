"""Official-format PP-ShiTu models (../shared/official_format) with oneDNN off and with the verified pass list.

    python benchmarks/bench_official_onednn.py [--repeat 10] [--threads 2] [--json OUT]

For each export (legacy .pdmodel, PIR .json) and model (PicoDet mainbody detector, PP-LCNetV2 recogniser): runs
the oneDNN verification (``shitu.serving.engine.onednn.verify``: each candidate pass list in a subprocess; records
kept in a temporary SHITU_HOME), then times the engine's own stage (detector: pre-processing + forward + decoding
of one photo; recogniser: one photo's embedding) with oneDNN off and on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import describe, machine, table, write_json  # noqa: E402

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "official_format"
MODELS = (
    ("detector", "picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer"),
    ("extractor", "general_PPLCNetV2_base_pretrained_v1.0_infer"),
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    if not OFFICIAL.is_dir():
        print(f"skipped: {OFFICIAL} not found")
        write_json(
            "official_onednn",
            {"summary": [{"what": "official-format models", "figure": "skipped: ../shared/official_format not found"}]},
            args.json,
        )
        return 0
    os.environ["SHITU_HOME"] = tempfile.mkdtemp(prefix="bench-onednn-")

    from shitu.model_spec import ModelSpec
    from shitu.params import merge
    from shitu.serving.cli.demo import gallery_photos
    from shitu.serving.engine import onednn
    from shitu.serving.engine.detection import MainbodyDetector
    from shitu.serving.engine.extraction import FeatureExtractor
    from shitu.serving.engine.predictor import RuntimeOptions

    img = gallery_photos()["coffee"]
    info = machine()
    print(describe(info, f"{args.threads} threads"))
    rows, out = [], {"machine": info, "threads": args.threads, "repeat": args.repeat, "models": []}
    for fmt in ("legacy", "pir"):
        for kind, name in MODELS:
            spec = ModelSpec.from_dir(OFFICIAL / fmt / name, kind)
            record = onednn.verify(spec)
            times = {}
            for label, enable in (("off", False), ("on", True)):
                options = RuntimeOptions(args.threads, enable_mkldnn=enable)
                if kind == "detector":
                    model = MainbodyDetector(spec, options)
                    call = lambda: model.raw(img)  # noqa: E731
                else:
                    model = FeatureExtractor(spec, options)
                    call = lambda: model.embed([img], merge())  # noqa: E731
                call()
                samples = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    call()
                    samples.append(time.perf_counter() - t)
                times[label] = statistics.median(samples) * 1000
            on = "verified" if record["ok"] else "stays off"
            passes = "default" if record.get("passes") is None else f"{len(record['passes'])} passes"
            rows.append(
                [
                    fmt,
                    kind,
                    f"{on} ({passes})" if record["ok"] else on,
                    times["off"],
                    times["on"],
                    times["off"] / times["on"],
                ]
            )
            out["models"].append(
                {
                    "format": fmt,
                    "kind": kind,
                    "model": name,
                    "verified": record["ok"],
                    "passes": record.get("passes"),
                    "median_ms_off": times["off"],
                    "median_ms_on": times["on"],
                    "speedup": times["off"] / times["on"],
                    "tried": record["tried"],
                }
            )
    print(table(["export", "model", "oneDNN", "off ms", "on ms", "speed-up"], rows))
    out["summary"] = [
        {
            "what": f"official-format {m['format']} {m['kind']}, oneDNN off / on "
            f"({'verified list' if m['verified'] else 'stays off'}), {args.threads} threads",
            "figure": f"{m['median_ms_off']:.1f} / {m['median_ms_on']:.1f} ms ({m['speedup']:.2f}x)",
        }
        for m in out["models"]
    ] or [{"what": "official-format models", "figure": "none measured"}]
    write_json("official_onednn", out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
