"""Gallery building speed: images per second with batched feature extraction vs one image at a time.

    python benchmarks/bench_gallery_build.py [--images 96] [--batch 16] [--repeat 3] [--json OUT]

A folder tree ``label/image.jpg`` of real photographs (the demo photos in several crops and scales) is built into a
fresh gallery twice with the default models: once with ``batch_size=1`` (one forward pass per image) and once
batched. Reading, decoding, hashing and the gallery commit are included in both.
"""
from __future__ import annotations

import argparse
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
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="builds per mode (median reported)")
    ap.add_argument("--json")
    args = ap.parse_args()

    from shitu.serving.engine.engine import load_engine
    from shitu.serving.gallery.local import Gallery
    from shitu.serving.gallery.build import build_from_entries
    from shitu.serving.gallery.list_file import scan_folder

    tmp = Path(tempfile.mkdtemp(prefix="bench-build-"))
    make_tree(tmp / "images", args.images)
    entries = scan_folder(tmp / "images")
    engine = load_engine()
    # Load the model and warm it up at both batch shapes (oneDNN prepares its kernels per input shape on first use).
    blank = __import__("numpy").zeros((64, 64, 3), "uint8")
    for n in (1, args.batch):
        for _ in range(2):
            engine.embed([blank] * n, batch_size=n)
    info = machine()
    print(describe(info, f"rec: {engine.extractor.predictor.description}; {len(entries)} images"))
    rows, out = [], {}
    base = None
    for batch in (1, args.batch):
        runs = []
        for r in range(args.repeat):  # a fresh gallery each time; the median run is reported
            g = Gallery.create(tmp / f"g{batch}-{r}", engine.embedding_size, index_method="Flat")
            t = time.perf_counter()
            report = build_from_entries(g, entries, lambda imgs: engine.embed(imgs, batch_size=len(imgs)),
                                        batch_size=batch, progress=False)
            runs.append(time.perf_counter() - t)
            assert report.added == len(entries), report
            g.close()
        dt = sorted(runs)[len(runs) // 2]
        ips = len(entries) / dt
        base = base or ips
        rows.append([batch, len(entries), dt, ips, ips / base])
        out[f"batch={batch}"] = {"seconds": dt, "images_per_s": ips, "speedup": ips / base, "runs": runs}
    print(table(["batch size", "images", "seconds", "images/s", "x one-at-a-time"], rows))
    print(f"batching: {rows[-1][4]:.2f} x the images per second of one-at-a-time (target >= 1.5)")
    write_json("gallery_build", {"machine": info, "results": out}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
