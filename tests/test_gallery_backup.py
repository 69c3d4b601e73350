"""Gallery backups while another process writes, restores, and portable export/import archives (real SQLite,
real faiss, real processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from shitu.serving.gallery.backup import (
    BackupError,
    backup,
    export_archive,
    gallery_model_identity,
    import_archive,
    model_identity,
    restore,
)
from shitu.serving.gallery.local import Gallery

DIM = 32

WRITER = (
    r"""
import sys
import numpy as np
from shitu.serving.gallery.local import Gallery
g = Gallery.open(sys.argv[1])
rng = np.random.default_rng(1)
for i in range(int(sys.argv[2])):
    ids = g.add(rng.standard_normal((1, %d)).astype(np.float32), [f"label-{i}"])
    print(ids[0], flush=True)  # acknowledged: committed when add returned
g.close()
"""
    % DIM
)


def _vector(i: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((i + 1, DIM)).astype(np.float32)[i]


def test_backup_during_stream_of_adds_restores_an_acknowledged_prefix(tmp_path):
    src = tmp_path / "live"
    # Snapshots every 20 changes: the faiss snapshot is replaced again and again while the backup runs.
    Gallery.create(src, DIM, index_method="HNSW32", dist_type="L2", snapshot_every=20).close()
    total = 1500
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(src), str(total)], stdout=subprocess.PIPE, text=True)
    acked: list[int] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            acked.append(int(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while len(acked) < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    backups = []
    for n in range(3):
        before = len(acked)
        manifest = backup(src, tmp_path / f"bk{n}")
        after = len(acked)
        backups.append((before, after, manifest))
        time.sleep(0.05)
    assert proc.wait(timeout=600) == 0
    reader.join(timeout=30)
    assert acked == list(range(1, total + 1))
    for n, (before, after, manifest) in enumerate(backups):
        assert (tmp_path / f"bk{n}" / "backup.json").is_file()
        info = restore(tmp_path / f"bk{n}", tmp_path / f"restored{n}")
        with Gallery.open(tmp_path / f"restored{n}") as g:
            ids = [r["id"] for r in g.list(limit=total + 10)]
            k = len(ids)
            # Exactly a prefix of what was acknowledged: everything acknowledged before the backup started,
            # nothing that was not acknowledged when it ended.
            assert ids == acked[:k] and before <= k <= after + 1, (before, k, after)
            assert info["count"] == k == manifest["count"]
            for i in (0, k // 2, k - 1):
                rec = g.get(ids[i], with_vector=True)
                assert rec["label"] == f"label-{i}"
                np.testing.assert_array_equal(rec["vector"], _vector(i))
            hit = g.search(_vector(k - 1)[None], k=1)[0][0]
            assert hit.id == ids[k - 1]
    assert any(m["snapshot"] for _b, _a, m in backups), "no backup carried a faiss snapshot"
    assert backups[0][1] < total, "the writer had finished before the first backup"


def test_restore_refuses_damaged_backup_and_existing_target(tmp_path):
    g = Gallery.create(tmp_path / "g", DIM, index_method="Flat", snapshot_every=1)
    g.add(np.eye(3, DIM, dtype=np.float32), ["a", "b", "c"])
    g.close()
    manifest = backup(tmp_path / "g", tmp_path / "bk")
    assert manifest["snapshot"] and manifest["count"] == 3
    with pytest.raises(BackupError, match="not empty"):
        backup(tmp_path / "g", tmp_path / "bk")
    with pytest.raises(BackupError, match="not empty"):
        restore(tmp_path / "bk", tmp_path / "g")
    snap = tmp_path / "bk" / manifest["snapshot"]["file"]
    data = bytearray(snap.read_bytes())
    data[-1] ^= 0xFF
    snap.write_bytes(bytes(data))
    with pytest.raises(BackupError, match="damaged"):
        restore(tmp_path / "bk", tmp_path / "new")
    assert not (tmp_path / "new").exists()
    with pytest.raises(BackupError, match="not a gallery backup"):
        restore(tmp_path / "g", tmp_path / "new")


def test_cli_backup_restore_export_import(tmp_path, models_dir):
    from shitu.model_spec import ModelSpec

    g = Gallery.create(tmp_path / "g", DIM, index_method="Flat", dist_type="IP")
    g.add(
        np.eye(4, DIM, dtype=np.float32),
        ["a", "b", "c", "d"],
        sources=["1.jpg", None, None, None],
        metadata=[{"sku": 7}, None, None, None],
    )
    g.remove(ids=[2])
    g.close()

    def shitu(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "shitu", "gallery", *args], capture_output=True, text=True, timeout=300
        )

    out = shitu("backup", str(tmp_path / "g"), str(tmp_path / "bk"))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["count"] == 3
    out = shitu("restore", str(tmp_path / "bk"), str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    rec_dir = str(models_dir / "rec")
    out = shitu("export", str(tmp_path / "g"), str(tmp_path / "g.tar.gz"), "--model-dir", rec_dir)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model"]["name"] == "rec"
    out = shitu("import", str(tmp_path / "g.tar.gz"), str(tmp_path / "copy"))
    assert out.returncode == 0, out.stderr
    with Gallery.open(tmp_path / "copy") as c:
        assert [(r["id"], r["label"], r["source"], r["metadata"]) for r in c.list()] == [
            (1, "a", "1.jpg", {"sku": 7}),
            (3, "c", None, None),
            (4, "d", None, None),
        ]
    assert gallery_model_identity(tmp_path / "copy") == model_identity(ModelSpec.from_dir(rec_dir, "extractor"))
    # Another model: refused, nothing added.
    other = (
        Path(__file__).resolve().parents[1]
        / ".."
        / "shared"
        / "official_format"
        / "legacy"
        / "general_PPLCNetV2_base_pretrained_v1.0_infer"
    )
    if other.is_dir():
        out = shitu("import", str(tmp_path / "g.tar.gz"), str(tmp_path / "copy"), "--model-dir", str(other))
        assert out.returncode == 3 and "different models" in out.stderr
    out = shitu("export", str(tmp_path / "copy"), str(tmp_path / "x.tar.gz"))
    assert out.returncode == 0, out.stderr
    fake = {"name": "other", "sha256": "0" * 64}
    with pytest.raises(BackupError, match="different models"):
        import_archive(tmp_path / "x.tar.gz", tmp_path / "copy", model=fake)
    with Gallery.open(tmp_path / "copy") as c:
        assert len(c) == 3


def test_import_refuses_hostile_or_mismatched_archives(tmp_path):
    g = Gallery.create(tmp_path / "g", DIM, index_method="Flat")
    g.add(np.eye(2, DIM, dtype=np.float32), ["a", "b"])
    g.close()
    export_archive(tmp_path / "g", tmp_path / "a.tar.gz")
    h = Gallery.create(tmp_path / "h", 16, index_method="Flat")
    h.close()
    with pytest.raises(BackupError, match="cannot go into"):
        import_archive(tmp_path / "a.tar.gz", tmp_path / "h")
    # A pickled object array in vectors.npy is refused from its header (never unpickled), nothing executed.
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(tmp_path / "a.tar.gz") as src, tarfile.open(bad, "w:gz") as dst:
        for m in src.getmembers():
            if m.name == "vectors.npy":
                import io

                buf = io.BytesIO()
                np.save(buf, np.array([object()], dtype=object), allow_pickle=True)
                m.size = len(buf.getvalue())
                dst.addfile(m, io.BytesIO(buf.getvalue()))
            else:
                dst.addfile(m, src.extractfile(m))
    with pytest.raises(BackupError, match="vectors.npy is object"):
        import_archive(bad, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_engine_galleries_record_their_model_and_export_carries_it(engine, photos, tmp_path):
    from shitu.serving.gallery.backup import read_archive, set_gallery_model_identity

    engine.gallery_add([photos["cat"]], ["cat"], gallery=tmp_path / "served#1?")  # odd characters in the path
    ident = gallery_model_identity(tmp_path / "served#1?")
    assert ident == model_identity(engine.extractor.spec)
    export_archive(tmp_path / "served#1?", tmp_path / "e.tar.gz")
    manifest, records, vectors = read_archive(tmp_path / "e.tar.gz")
    assert manifest["model"] == ident and [r["label"] for r in records] == ["cat"]
    assert vectors.shape == (1, engine.embedding_size)
    other = Gallery.create(tmp_path / "other", engine.embedding_size, index_method="Flat")
    other.close()
    set_gallery_model_identity(tmp_path / "other", {"name": "another-model", "sha256": "1" * 64})
    with pytest.raises(BackupError, match="different models"):
        import_archive(tmp_path / "e.tar.gz", tmp_path / "other")
    with Gallery.open(tmp_path / "other") as g:
        assert len(g) == 0
