"""``shitu adapt``: a projection head against fine-tuning the recogniser's last layers, on the quality set.

    python benchmarks/bench_adapt.py [--quick] [--classes 80] [--methods head,finetune] [--json OUT]

Builds the cross-style set of ``benchmarks/quality`` (gallery: one icon theme on white; queries: another theme,
alone and pasted on photographs), trains each method on the gallery images with *other* background photographs
(scikit-image pictures the scenes never show), and measures the default pack as shipped and with each adapted
recogniser: R@1 on held-out training-style views (adapt's own report), on the other theme's drawings alone, on the
true box of each scene (oracle) and through ``Engine.recognize`` on the scenes, in a real Flat gallery, plus the
training time and the median milliseconds per scene (1 thread per model; the settings timed in turn, scene by scene).
Needs the Debian icon themes the quality set needs (``oxygen-icon-theme``, ``elementary-xfce-icon-theme``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "quality"))

import dataset  # noqa: E402
from common import describe, machine, table, write_json  # noqa: E402

#: scikit-image pictures that no scene of the quality set uses (dataset.PHOTOS), as training backgrounds.
BACKGROUNDS = ("camera", "coins", "moon", "page", "text", "clock", "colorwheel", "horse", "logo")


def backgrounds() -> list[np.ndarray]:
    import cv2
    import skimage.data

    out = []
    for name in BACKGROUNDS:
        img = getattr(skimage.data, name)()
        img = img.astype(np.uint8) * 255 if img.dtype == bool else img
        img = np.stack([img] * 3, axis=2) if img.ndim == 2 else img[:, :, :3]
        out.append(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
    return out


def measure(engine: Any, qs: dataset.QualitySet, gallery: Any) -> dict[str, float]:
    """R@1 alone / oracle / scene in ``gallery``, a real Flat gallery of the set's gallery images."""
    from shitu.serving.engine.extraction import crop

    gallery.add(engine.embed(qs.gallery), qs.labels)

    def r1(feats: np.ndarray, truth: list[str]) -> float:
        return float(np.mean([bool(m) and m[0].label == t for m, t in zip(gallery.search(feats, 1), truth)]))

    pad = engine.params["Global.crop_padding"]
    scenes = [engine.recognize([s.image], gallery, score_thres=0.0)[0] for s in qs.scenes]
    return {
        "alone_r1": r1(engine.embed(qs.alone), qs.labels),
        "oracle_r1": r1(engine.embed([crop(s.image, s.box, pad) for s in qs.scenes]), [s.label for s in qs.scenes]),
        "scene_r1": float(np.mean([bool(r) and r[0].label == s.label for r, s in zip(scenes, qs.scenes)])),
    }


def latency(runs: dict[str, tuple[Any, Any]], qs: dataset.QualitySet) -> dict[str, float]:
    """Median ms per scene of each (engine, gallery), the settings timed in turn scene by scene (load evens out)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for s in qs.scenes:
        for name, (engine, gallery) in runs.items():
            t0 = time.perf_counter()
            engine.recognize([s.image], gallery, score_thres=0.0)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenario", default=None)
    ap.add_argument("--methods", default="head,finetune")
    ap.add_argument("--views", type=int, default=12)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--finetune-steps", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="20 classes, 3 views, 60 + 8 steps (a smoke run)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.classes, args.views, args.steps, args.finetune_steps = 20, 3, 60, 8
    try:
        qs = dataset.build(args.classes, 1, args.seed)
    except dataset.MissingData as exc:
        print(f"cannot build the set: {exc}", file=sys.stderr)
        return 2
    from shitu.serving.adapt.pack import train_recognizer
    from shitu.serving.engine import load_engine

    info = machine()
    print(describe(info, qs.describe()))
    one = {"Global.cpu_num_threads": 1}
    out: dict[str, Any] = {"machine": info, "set": qs.describe(), "args": vars(args)}
    rows, summary = [], []
    from shitu.serving.gallery import Gallery

    runs: dict[str, tuple[Any, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:

        def gallery(name: str, engine: Any) -> Any:
            return Gallery.create(Path(tmp) / f"g-{name}", engine.embedding_size, index_method="Flat")

        base = load_engine(args.scenario, params=one)
        runs["shipped"] = (base, gallery("shipped", base))
        out["shipped"] = measure(base, qs, runs["shipped"][1])
        bgs = backgrounds()
        for method in [m for m in args.methods.split(",") if m]:
            t0 = time.perf_counter()
            done = train_recognizer(
                base,
                qs.gallery,
                qs.labels,
                bgs,
                Path(tmp) / method,
                method=method,
                views=args.views,
                steps=args.steps,
                finetune_steps=args.finetune_steps,
                seed=args.seed,
                log=lambda m: print(m, file=sys.stderr),
            )
            seconds = time.perf_counter() - t0
            eng = load_engine(args.scenario, params={**one, "Global.rec_inference_model_dir": str(Path(tmp) / method)})
            runs[method] = (eng, gallery(method, eng))
            out[method] = {
                **measure(eng, qs, runs[method][1]),
                "train_s": seconds,
                "heldout_r1_before": done["report"].heldout_r1_before,
                "heldout_r1": done["report"].heldout_r1_after,
            }
        for name, ms in latency(runs, qs).items():
            out[name]["ms_per_scene"] = ms
        for engine, g in runs.values():
            g.close()
            engine.close()
    for name in ["shipped", *[m for m in args.methods.split(",") if m in out]]:
        r = out[name]
        rows.append(
            [
                name,
                r.get("heldout_r1", r.get("heldout_r1_before", float("nan"))),
                r["alone_r1"],
                r["oracle_r1"],
                r["scene_r1"],
                r["ms_per_scene"],
                r.get("train_s", 0.0),
            ]
        )
        if name != "shipped":
            summary += [
                {
                    "what": f"adapt {name}: held-out views R@1 ({len(qs.labels)} labels)",
                    "figure": f"{r['heldout_r1_before']:.3f} -> {r['heldout_r1']:.3f} ({r['train_s']:.0f} s CPU)",
                },
                {
                    "what": f"adapt {name}: quality set R@1 alone / oracle / scene (shipped -> adapted)",
                    "figure": " / ".join(
                        f"{out['shipped'][k]:.3f} -> {r[k]:.3f}" for k in ("alone_r1", "oracle_r1", "scene_r1")
                    ),
                },
                {
                    "what": f"adapt {name}: ms per scene, shipped vs adapted (interleaved, 1 thread)",
                    "figure": f"{r['ms_per_scene'] / out['shipped']['ms_per_scene']:.2f}x "
                    f"({r['ms_per_scene']:.1f} vs {out['shipped']['ms_per_scene']:.1f} ms)",
                },
            ]
    print(table(["recogniser", "held-out R@1", "alone R@1", "oracle R@1", "scene R@1", "ms/scene", "train s"], rows))
    out["summary"] = summary
    write_json("adapt", out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
