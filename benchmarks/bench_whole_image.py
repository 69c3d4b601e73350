"""``Global.append_whole_image``: ``true`` (PP-ShiTu) against ``fallback``, with and without
``Global.rec_nms_per_label``, on the demo photographs.

    python benchmarks/bench_whole_image.py [--repeat 5] [--json OUT]

Per query image and setting: the labels answered, whether they are right (the query's name says what it shows),
where the answer came from (detected box or whole image), how many crops went through the feature extractor, and
the median end-to-end time. The project has no labelled quality benchmark yet, so this runs on the demo queries
(``shitu.serving.cli.demo``) plus the overlapping collage; the default pack (general-lite) and a Flat gallery of
the demo photos.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import describe, machine, percentile, table, write_json  # noqa: E402

#: What each query shows (the right answer).
EXPECTED = {
    "cat_mirrored_crop": {"cat"},
    "coffee_rescaled_crop": {"coffee"},
    "rocket_bright_blur": {"rocket"},
    "collage_cat_and_coffee": {"cat", "coffee"},
    "not_in_gallery_ihc": set(),
    "overlapping_cat_and_coffee": {"cat", "coffee"},
}
#: Settings compared: PP-ShiTu's, the fallback, and each with label-aware rec-NMS.
SETTINGS: dict[str, dict[str, Any]] = {
    "true": {"append_whole_image": True},
    "fallback": {"append_whole_image": "fallback"},
    "true + per-label NMS": {"append_whole_image": True, "rec_nms_per_label": True},
    "fallback + per-label NMS": {"append_whole_image": "fallback", "rec_nms_per_label": True},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="write results here (default benchmarks/results/whole_image.json)")
    args = ap.parse_args()
    os.environ.setdefault("SHITU_HOME", tempfile.mkdtemp(prefix="bench-whole-image-"))

    from shitu.serving.cli.demo import gallery_photos, overlapping_collage, query_photos
    from shitu.serving.engine.engine import load_engine

    engine = load_engine(
        gallery=Path(os.environ["SHITU_HOME"]) / "bench-gallery", params={"IndexProcess": {"index_method": "Flat"}}
    )
    g = gallery_photos()
    if len(engine.gallery()) == 0:
        engine.gallery_add(list(g.values()), list(g))
    queries = {**query_photos(g), "overlapping_cat_and_coffee": overlapping_collage(g)}
    crops: list[int] = []
    embed = engine.extractor.embed

    def counting(images: Any, *a: Any, **k: Any) -> Any:
        crops.append(len(images))
        return embed(images, *a, **k)

    engine.extractor.embed = counting  # type: ignore[method-assign]
    info = machine()
    print(
        describe(info, f"det: {engine.detector.predictor.description}; rec: {engine.extractor.predictor.description}")
    )
    rows, results = [], {}
    totals = {s: {"right": 0, "crops": 0, "ms": 0.0} for s in SETTINGS}
    for name, img in queries.items():
        for setting, overrides in SETTINGS.items():
            times = []
            for i in range(args.repeat + 1):
                crops.clear()
                t0 = time.perf_counter()
                found = engine.recognize([img], **overrides)[0]
                if i:
                    times.append(time.perf_counter() - t0)
            labels = {r.label for r in found}
            right = labels == EXPECTED[name]
            where = ", ".join(f"{r.label}@{'whole' if r.is_whole_image else 'box'}" for r in found) or "-"
            ms = percentile(times, 50) * 1000
            rows.append([name, setting, where, "yes" if right else "NO", sum(crops), len(crops), ms])
            results.setdefault(name, {})[setting] = {
                "answer": [r.to_dict() for r in found],
                "right": right,
                "crops": sum(crops),
                "extractor_calls": len(crops),
                "median_ms": ms,
            }
            t = totals[setting]
            t["right"] += right
            t["crops"] += sum(crops)
            t["ms"] += ms
    print(table(["query", "setting", "answer", "right", "crops", "calls", "median ms"], rows))
    print()
    print(
        table(
            ["setting", "right answers", "crops embedded", "sum of medians ms"],
            [[s, f"{t['right']}/{len(queries)}", t["crops"], t["ms"]] for s, t in totals.items()],
        )
    )
    summary = [
        {
            "what": f"`Global.append_whole_image` {' / '.join(totals)}: right answers of {len(queries)} demo queries",
            "figure": " / ".join(str(t["right"]) for t in totals.values()),
        },
        {
            "what": f"same settings: crops embedded, sum of median ms over the {len(queries)} queries",
            "figure": " / ".join(f"{t['crops']} ({t['ms']:.0f} ms)" for t in totals.values()),
        },
    ]
    write_json(
        "whole_image",
        {"machine": info, "repeat": args.repeat, "images": results, "totals": totals, "summary": summary},
        args.json,
    )
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
