"""Operating costs: gallery backup / restore / export / import, and importing a PaddleClas index folder.

    python benchmarks/bench_operating.py [--vectors 20000] [--dim 512] [--json OUT]

A gallery of ``--vectors`` random 512-d vectors (HNSW32, IP) is backed up (SQLite online backup + faiss snapshot,
checksums), restored (checksums, open, move), exported to a portable archive and imported into a new gallery. A
PaddleClas-layout folder of the same vectors (``IDMap2,HNSW32`` faiss file + pickled id map, as PaddleClas's
``build_gallery.py`` writes them) is imported with the restricted reader. Each step once; seconds and sizes.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import describe, machine, table, write_json  # noqa: E402


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--json")
    args = ap.parse_args()

    import faiss
    import numpy as np

    from shitu.serving.gallery.backup import backup, export_archive, import_archive, restore
    from shitu.serving.gallery.local import Gallery
    from shitu.serving.gallery.paddleclas_index import import_paddleclas_index

    tmp = Path(tempfile.mkdtemp(prefix="bench-operating-"))
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((args.vectors, args.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    labels = [f"label-{i % 1000}" for i in range(args.vectors)]
    info = machine()
    print(describe(info, f"{args.vectors} x {args.dim}-d vectors"))

    t = time.perf_counter()
    g = Gallery.create(tmp / "g", args.dim, index_method="HNSW32", dist_type="IP")
    g.add(vecs, labels)
    g.checkpoint()
    g.close()
    steps = [("create + add + snapshot", time.perf_counter() - t, _size(tmp / "g"))]

    def timed(name: str, fn, out: Path) -> None:
        t0 = time.perf_counter()
        fn()
        steps.append((name, time.perf_counter() - t0, _size(out)))

    timed("backup (online API + snapshot copy + sha256)", lambda: backup(tmp / "g", tmp / "bk"), tmp / "bk")
    timed("restore (verify + open + move)", lambda: restore(tmp / "bk", tmp / "r"), tmp / "r")
    timed("export archive (.tar.gz)", lambda: export_archive(tmp / "g", tmp / "g.tar.gz"), tmp / "g.tar.gz")
    timed("import archive into a new gallery", lambda: import_archive(tmp / "g.tar.gz", tmp / "i"), tmp / "i")

    pc = tmp / "paddleclas"
    pc.mkdir()
    index = faiss.IndexIDMap2(faiss.index_factory(args.dim, "HNSW32", faiss.METRIC_INNER_PRODUCT))
    index.add_with_ids(vecs, np.arange(args.vectors, dtype=np.int64))
    faiss.write_index(index, str(pc / "vector.index"))
    with open(pc / "id_map.pkl", "wb") as f:
        pickle.dump({np.int64(i): f"img/{i}.jpg\t{labels[i]}" for i in range(args.vectors)}, f)
    timed(
        "import PaddleClas folder (restricted unpickler + faiss)",
        lambda: import_paddleclas_index(pc, tmp / "pc"),
        tmp / "pc",
    )

    rows = [[name, round(sec, 3), round(size / 1e6, 1)] for name, sec, size in steps]
    print(table(["step", "seconds", "MB"], rows))
    summary = [
        {
            "what": f"{args.vectors} x {args.dim}-d HNSW32 gallery ({steps[0][2] / 1e6:.0f} MB): "
            "create, backup, restore, export, import archive, import PaddleClas folder (s)",
            "figure": " / ".join(f"{sec:.2f}" for _, sec, _ in steps),
        }
    ]
    write_json(
        "operating",
        {
            "machine": info,
            "vectors": args.vectors,
            "dim": args.dim,
            "results": {name: {"seconds": sec, "bytes": size} for name, sec, size in steps},
            "summary": summary,
        },
        args.json,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
