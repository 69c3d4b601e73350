"""A process killed (SIGKILL) at random points while writing leaves a gallery that opens at a committed state.

The child adds batches of BATCH items (one label per batch), removes whole batches, replaces vectors, and writes
a snapshot after every commit (so kills land inside snapshot writes and compactions too). After each kill the
gallery must open and be consistent: every batch is all there or all gone, every stored vector is the one its
metadata says, every item is found by its own vector, counts agree, and it keeps working.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from shitu.serving.gallery.local import Gallery

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

DIM = 16
BATCH = 8

CHILD = textwrap.dedent(
    """
    import sys, zlib
    import numpy as np
    from shitu.serving.gallery.local import Gallery

    DIM, BATCH = {dim}, {batch}

    def vecs(label, salt=""):
        rng = np.random.default_rng(zlib.crc32((label + salt).encode()))
        x = rng.standard_normal((BATCH, DIM)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    path, tag = sys.argv[1], sys.argv[2]
    g = Gallery.open(path)
    g.tuning.update(snapshot_every=1, compact_ratio=0.05, compact_min=1)
    rng = np.random.default_rng()
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        label = f"{{tag}}-{{i}}"
        g.add(vecs(label), [label] * BATCH, metadata=[{{"j": j, "v": 0}} for j in range(BATCH)])
        if i % 3 == 0:
            labels = sorted(g.label_counts())
            g.remove(labels=[labels[rng.integers(len(labels))]])
        if i % 2 == 0:
            rows = g.list(limit=1, offset=int(rng.integers(max(len(g), 1))))
            if rows:
                r = rows[0]
                v = r["metadata"]["v"] + 1
                j = r["metadata"]["j"]
                g.update(r["id"], vector=vecs(r["label"], f"v{{v}}")[j], metadata={{"j": j, "v": v}})
    """
)


def expected_vector(label: str, j: int, v: int) -> np.ndarray:
    import zlib

    salt = f"v{v}" if v else ""
    rng = np.random.default_rng(zlib.crc32((label + salt).encode()))
    x = rng.standard_normal((BATCH, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True))[j]


def check_consistent(path: Path) -> int:
    with Gallery.open(path) as g:
        counts = g.label_counts()
        assert all(n == BATCH for n in counts.values()), counts  # each add is all-or-nothing
        rows = g.list(limit=10**9)
        info = g.info()
        assert len(rows) == info["count"] == len(g) == sum(counts.values())
        assert info["index_vectors"] - info["removed_pending"] == len(rows)
        if not rows:
            return 0
        vectors = []
        for r in rows:
            rec = g.get(r["id"], with_vector=True)
            m = rec["metadata"]
            assert np.array_equal(rec["vector"], expected_vector(rec["label"], m["j"], m["v"])), rec
            vectors.append(rec["vector"])
        hits = g.search(np.stack(vectors), k=3)
        for r, row in zip(rows, hits):
            assert r["id"] in [m.id for m in row], (r, row)
        # Still writable after the crash.
        probe = np.ones((1, DIM), np.float32) / np.sqrt(DIM)
        (pid,) = g.add(probe, ["probe"])
        assert g.search(probe, k=1)[0][0].id == pid
        g.remove(ids=[pid])
        return len(rows)


@pytest.mark.parametrize("method,kills", [("Flat", 10), ("HNSW32", 10), ("IVF", 6), ("IVF-SQ8", 4), ("HNSW-SQ8", 4)])
def test_sigkill_at_random_points_leaves_a_consistent_gallery(tmp_path, method, kills):
    path = tmp_path / "g"
    Gallery.create(path, DIM, method, "IP", ivf_min_train=64).close()
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(dim=DIM, batch=BATCH))
    rnd = random.Random(1234)
    sizes = []
    for run in range(kills):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), f"r{run}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = proc.stdout.readline()
            if line.strip() != "ready":
                proc.kill()
                pytest.fail(f"child did not start: {line!r} {proc.stderr.read()}")
            time.sleep(rnd.uniform(0.02, 0.5))
            assert proc.poll() is None, proc.stderr.read()  # still writing when killed
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        sizes.append(check_consistent(path))
    assert max(sizes) > 0
    # Leftovers of killed snapshot writers are cleaned up; one snapshot remains referenced.
    with Gallery.open(path) as g:
        g.compact()
    assert not list(path.glob(".*.tmp"))
    assert len(list(path.glob("index-*.faiss"))) == 1
