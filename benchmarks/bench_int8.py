"""int8 against fp32 for general-lite (``shitu plugins quantize``), on every quality set framing, in one run.

    python benchmarks/bench_int8.py [--rounds 20] [--classes 60] [--json OUT]

1. Quantizes general-lite in a temporary SHITU_HOME, calibrated on random crops of the scikit photographs (generic
   photos: none of the evaluation images), and installs the int8 version with the command's own bounds off, so
   that its figures can be reported whatever they are.
2. Speed: end to end (detection + embedding of the kept boxes) on a 640x480 and a 1024x1024 photo, fp32 and int8
   interleaved, 2 threads, median ms; the detector's and the recogniser's forwards alone.
3. Agreement and accuracy on the quality set in both framings (``margin``: icons on a white canvas; ``tight``: the
   icon's own bounding box) and the demo photos: :func:`shitu.serving.quantize.compare.compare`'s figures, and R@1
   of ``alone`` and ``scene`` queries for fp32 and int8 queries against the same fp32-built gallery (what a user
   who switches versions keeps).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "quality"))
from common import describe, machine, table, write_json  # noqa: E402

os.environ.setdefault("KMP_BLOCKTIME", "0")


def calibration_folder(folder: Path, per_photo: int = 4, seed: int = 0) -> Path:
    """Random crops (30-100 % of each side) of the scikit photographs, as JPEG files."""
    import dataset

    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, photo in enumerate(dataset.load_photos()):
        h, w = photo.shape[:2]
        for j in range(per_photo):
            ch, cw = int(h * rng.uniform(0.3, 1.0)), int(w * rng.uniform(0.3, 1.0))
            y, x = rng.randint(0, h - ch + 1), rng.randint(0, w - cw + 1)
            cv2.imwrite(str(folder / f"{i:02d}_{j}.jpg"), photo[y : y + ch, x : x + cw])
    return folder


def quantize_general_lite(home: Path, workdir: Path) -> Any:
    """general-lite's int8 version, made by ``shitu plugins quantize``'s own function in the SHITU_HOME ``home`` (it is
    current there; ``SHITU_HOME`` is set to ``home`` only while it runs), calibrated on :func:`calibration_folder`
    crops in ``workdir`` with the bounds off, so that its figures can be reported whatever they are. Its
    :class:`~shitu.serving.quantize.pack.QuantizeReport`; ``bench_serving`` and ``bench_gallery_build`` use it too."""
    from shitu.serving.quantize.pack import quantize_pack

    with shitu_home(home):
        return quantize_pack("general-lite", calibration_folder(Path(workdir) / "calibration"), bounds={})


@contextlib.contextmanager
def shitu_home(home: Path) -> Iterator[None]:
    """``SHITU_HOME`` set to ``home`` inside the block (the pack store is read at call time), as it was after."""
    before = os.environ.get("SHITU_HOME")
    os.environ["SHITU_HOME"] = str(home)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SHITU_HOME", None)
        else:
            os.environ["SHITU_HOME"] = before


def tight(image: np.ndarray) -> np.ndarray:
    """The non-white part of an icon on its white canvas (the tight framing)."""
    ys, xs = np.nonzero((image < 250).any(axis=2))
    return image if not len(ys) else image[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def e2e_ms(engine: Any, image: np.ndarray) -> float:
    start = time.perf_counter()
    engine.extract([image], [engine.detect([image])[0].xyxy.tolist()])
    return (time.perf_counter() - start) * 1e3


def forward_ms(predictor: Any, x: np.ndarray) -> float:
    name = predictor.input_names[0]
    start = time.perf_counter()
    predictor.run({name: x})
    return (time.perf_counter() - start) * 1e3


def scene_r1(engine: Any, gallery: np.ndarray, labels: list[str], scenes: list[Any]) -> float:
    """Share of scenes whose boxes' closest gallery item (any box) has the scene's label."""
    hits = 0
    for s in scenes:
        boxes = engine.detect([s.image])[0].xyxy.tolist()
        emb = engine.extract([s.image], [boxes] if boxes else None)[0]
        hits += labels[int(np.unravel_index((emb @ gallery.T).argmax(), (len(emb), len(gallery)))[1])] == s.label
    return hits / len(scenes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds per image size (interleaved)")
    ap.add_argument("--classes", type=int, default=60, help="quality set classes")
    ap.add_argument("--json", help="results file")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_int8_"))
    os.environ["SHITU_HOME"] = str(tmp / "home")

    import dataset
    from skimage import data as skdata

    from shitu.plugins import registry
    from shitu.serving.engine import load_engine
    from shitu.serving.quantize.compare import BOUNDS, compare, shortfalls

    started = time.perf_counter()
    report = quantize_general_lite(tmp / "home", tmp)
    quantize_s = time.perf_counter() - started
    int8 = load_engine("general-lite")  # the int8 version is current now
    registry.use("general-lite", report.base_version)
    fp32 = load_engine("general-lite")
    print(describe(machine(), f"int8 {report.version}, calibrated on {report.calibration_images} photo crops"))

    speed: dict[str, Any] = {}
    photo = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    for name, size in (("640x480", (640, 480)), ("1024x1024", (1024, 1024))):
        image = cv2.resize(photo, size)
        e2e_ms(fp32, image), e2e_ms(int8, image)  # warm-up
        t32, t8 = [], []
        for _ in range(args.rounds):
            t32.append(e2e_ms(fp32, image))
            t8.append(e2e_ms(int8, image))
        speed[name] = {"fp32_ms": statistics.median(t32), "int8_ms": statistics.median(t8)}
    det_x = np.zeros((1, 3, 416, 416), np.float32) + np.random.RandomState(0).rand(1, 3, 416, 416).astype(np.float32)
    rec_x = np.random.RandomState(1).rand(1, 3, 224, 224).astype(np.float32)
    for name, parts, x in (("detector", "detector", det_x), ("recogniser", "extractor", rec_x)):
        p32, p8 = getattr(fp32, parts).predictor, getattr(int8, parts).predictor
        forward_ms(p32, x), forward_ms(p8, x)
        t32, t8 = zip(*[(forward_ms(p32, x), forward_ms(p8, x)) for _ in range(args.rounds)])
        speed[name] = {"fp32_ms": statistics.median(t32), "int8_ms": statistics.median(t8)}
    for v in speed.values():
        v["speedup"] = v["fp32_ms"] / v["int8_ms"]
    print("\nspeed, 2 threads, median ms (interleaved):")
    print(
        table(
            ["", "fp32", "int8", "speedup"],
            [[k, f"{v['fp32_ms']:.2f}", f"{v['int8_ms']:.2f}", f"{v['speedup']:.2f}x"] for k, v in speed.items()],
        )
    )

    qs = dataset.build(n_classes=args.classes, scenes_per_class=1, seed=0)
    sets: dict[str, Any] = {}
    for framing in ("margin", "tight"):
        gallery_images = qs.gallery if framing == "margin" else [tight(g) for g in qs.gallery]
        alone = qs.alone if framing == "margin" else [tight(a) for a in qs.alone]
        gallery = fp32.embed(gallery_images)
        agreement = compare(fp32, int8, [s.image for s in qs.scenes] + alone, gallery_images)
        row: dict[str, Any] = {"agreement": agreement.to_dict(), "refused_by_bounds": shortfalls(agreement)}
        for which, eng in (("fp32", fp32), ("int8", int8)):
            row[f"{which}_alone_r1"] = sum(
                qs.labels[int((eng.embed([a]) @ gallery.T).argmax())] == lab for a, lab in zip(alone, qs.labels)
            ) / len(alone)
            row[f"{which}_scene_r1"] = scene_r1(eng, gallery, qs.labels, qs.scenes)
        sets[framing] = row
    from shitu.serving.cli.demo import gallery_photos, query_photos

    demo = gallery_photos()
    agreement = compare(fp32, int8, list(query_photos(demo).values()), list(demo.values()))
    sets["demo photos"] = {"agreement": agreement.to_dict(), "refused_by_bounds": shortfalls(agreement)}
    print(f"\nagreement int8 vs fp32 (bounds {BOUNDS}) and R@1 with an fp32-built gallery:")
    rows = []
    for name, row in sets.items():
        a = row["agreement"]
        rows.append(
            [
                name,
                a["images"],
                f"{a['feature_cos_median']:.4f} / {a['feature_cos_min']:.4f}",
                f"{a['label_agreement']:.3f}",
                f"{a['boxes_matched']:.3f}",
                f"{a['box_iou_median']:.3f}",
                *(
                    f"{row[k]:.3f}" if k in row else ""
                    for k in ("fp32_alone_r1", "int8_alone_r1", "fp32_scene_r1", "int8_scene_r1")
                ),
            ]
        )
    print(
        table(
            [
                "set",
                "images",
                "cos median / min",
                "labels",
                "boxes@0.9",
                "IoU median",
                "alone R@1 fp32",
                "int8",
                "scene R@1 fp32",
                "int8",
            ],
            rows,
        )
    )
    fp32.close()
    int8.close()
    meets = {
        "e2e >= 1.7x at 640x480 and 1024x1024": all(speed[k]["speedup"] >= 1.7 for k in ("640x480", "1024x1024")),
        "agreement bounds on every set": all(not r["refused_by_bounds"] for r in sets.values()),
        "R@1 within 0.01 of fp32": all(
            abs(r[f"int8_{q}_r1"] - r[f"fp32_{q}_r1"]) <= 0.01
            for r in sets.values()
            if "fp32_alone_r1" in r
            for q in ("alone", "scene")
        ),
    }
    print("\nships as general-lite's default only if all hold:", meets)
    write_json(
        "bench_int8",
        {
            "machine": machine(),
            "quantize_seconds": quantize_s,
            "version": report.version,
            "speed": speed,
            "sets": sets,
            "meets": meets,
            "summary": [  # readme_table's rows: {"what", "figure"}
                {
                    "what": "int8 speedup over fp32 end to end (fp32 ms / int8 ms), 2 threads, 640x480 and 1024x1024",
                    "figure": f"{speed['640x480']['speedup']:.2f}x, {speed['1024x1024']['speedup']:.2f}x",
                },
                {
                    "what": "int8 feature cosine vs fp32, median (quality set, margin framing)",
                    "figure": f"{sets['margin']['agreement']['feature_cos_median']:.4f}",
                },
                {
                    "what": "int8 ships as general-lite's default (every bound of issue 30 met)",
                    "figure": "yes"
                    if all(meets.values())
                    else f"no: {', '.join(k for k, v in meets.items() if not v)}",
                },
            ],
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
