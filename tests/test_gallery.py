"""The gallery: every index type x metric, removal/update semantics, persistence, validation, corruption."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from shitu.serving.gallery.local import FORMAT_VERSION, Gallery, GalleryError, LabelError
from shitu.serving.gallery.replication import Replica
from shitu.serving.results import Match

DIM = 32
N = 300


def unit(rng: np.random.Generator, n: int, d: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bits(rng: np.random.Generator, n: int, d: int = 64) -> np.ndarray:
    return rng.integers(0, 256, (n, d // 8), dtype=np.uint8)


CASES = [
    ("Flat", "IP"),
    ("Flat", "L2"),
    ("IVF", "IP"),
    ("IVF", "L2"),
    ("HNSW32", "IP"),
    ("HNSW32", "L2"),
    ("Flat", "hamming"),
    ("HNSW32", "hamming"),
    ("IVF", "hamming"),
    ("IVF-SQ8", "IP"),  # compressed types, re-ranked with the stored floats (tests/test_gallery_index_types.py)
    ("HNSW-SQ8", "L2"),
]


def ids_of(rows: list[list[Match]]) -> list[list[int]]:
    return [[m.id for m in row] for row in rows]


def answers(rows: list[list[Match]], binary: bool) -> list[list]:
    """Ids, or for hamming (many equal distances, so ties order freely) the scores."""
    return [[m.score if binary else m.id for m in row] for row in rows]


@pytest.mark.parametrize("method,metric", CASES, ids=[f"{m}-{d}" for m, d in CASES])
def test_add_search_remove_update_reopen(tmp_path, method, metric):
    rng = np.random.default_rng(1)
    binary = metric == "hamming"
    dim = 64 if binary else DIM
    x = bits(rng, N) if binary else unit(rng, N)
    path = tmp_path / "g"
    # compact_ratio 0.9: removals stay tombstones here, so "no rebuild" can be checked; compact() runs at the end.
    g = Gallery.create(path, dim, method, metric, hamming_radius=64, ivf_min_train=100, compact_ratio=0.9)
    assert (g.dim, g.metric, g.index_method, g.higher_is_better) == (dim, metric, method, metric == "IP")
    labels = [f"c{i % 10}" for i in range(N)]
    ids = g.add(x, labels, sources=[f"img/{i}.jpg" for i in range(N)], metadata=[{"i": i} for i in range(N)])
    assert ids == list(range(1, N + 1)) and len(g) == N
    if method == "IVF":
        assert g.info()["index"].startswith(("IVF", "BIVF"))

    # Every item finds itself first.
    hits = g.search(x, k=3)
    assert [row[0].id for row in hits] == ids
    first = hits[0][0]
    assert (first.label, first.source, first.metadata) == ("c0", "img/0.jpg", {"i": 0})
    best = {"IP": 1.0, "L2": 0.0, "hamming": 0.0}[metric]
    assert first.score == pytest.approx(best, abs=1e-4)
    scores = [m.score for m in hits[5]]
    assert scores == sorted(scores, reverse=g.higher_is_better)

    # Remove by id and by label: never returned again, even when asking for everything.
    before = g.info()
    removed_ids = set(ids[:40])
    assert g.remove(ids=ids[:40]) == 40
    label_ids = {i for i, lab in zip(ids, labels) if lab == "c7"} - removed_ids
    assert g.remove(labels=["c7"]) == len(label_ids)
    removed_ids |= label_ids
    assert g.remove(ids=[ids[0], 999999]) == 0  # already gone / unknown
    live = [i for i in ids if i not in removed_ids]
    assert len(g) == len(live)
    everything = g.search(x, k=N)
    assert not {m.id for row in everything for m in row} & removed_ids
    assert all(len({m.id for m in row}) == len(row) for row in everything)  # no duplicates
    if not binary:  # hamming hits farther than the radius are dropped, so not every live item comes back
        assert {m.id for m in everything[0]} == set(live)
    after = g.info()
    # No rebuild on removal (HNSW included): same index, same vectors, removed ones pending as tombstones.
    assert after["index_gen"] == before["index_gen"]
    if method == "HNSW32":
        assert after["index_vectors"] == before["index_vectors"]
        assert after["removed_pending"] == len(removed_ids)

    # Update: relabel, and replace a vector (the old one never matches the item again).
    target = live[0]
    g.update(target, label="renamed")
    assert g.get(target)["label"] == "renamed"
    assert g.search(x[target - 1 : target], k=1)[0][0].label == "renamed"
    other = live[1]
    new_vec = bits(rng, 1) if binary else unit(rng, 1)
    old_vec = x[other - 1 : other]
    g.update(other, vector=new_vec)
    assert g.search(new_vec, k=1)[0][0].id == other
    old_hits = g.search(old_vec, k=N)[0]
    assert [m.id for m in old_hits].count(other) <= 1
    if old_hits and old_hits[0].id == other:
        pytest.fail("the replaced vector still matches its item")
    assert g.get(other)["label"] == labels[other - 1]

    expected = answers(g.search(x[:50], k=5), binary)
    g.close()

    # Reopen: same answers, removed items stay removed.
    with Gallery.open(path) as g2:
        assert len(g2) == len(live)
        assert answers(g2.search(x[:50], k=5), binary) == expected
        assert g2.get(ids[0]) is None and g2.get(target)["label"] == "renamed"
        # Compaction drops the tombstones and keeps the answers.
        g2.compact()
        info = g2.info()
        assert info["removed_pending"] == 0 and info["index_vectors"] == len(live) == info["count"]
        assert answers(g2.search(x[:50], k=5), binary) == expected
    with Gallery.open(path, readonly=True) as g3:
        assert answers(g3.search(x[:50], k=5), binary) == expected


def test_ivf_falls_back_to_flat_until_enough_vectors_then_trains(tmp_path):
    rng = np.random.default_rng(2)
    g = Gallery.create(tmp_path / "g", DIM, "IVF", "IP", ivf_min_train=200)
    x = unit(rng, 1000)
    g.add(x[:5], ["a"] * 5)  # a tiny gallery works
    assert g.info()["index"] == "Flat" and g.search(x[:1], 1)[0][0].id == 1
    g.add(x[5:150], ["a"] * 145)
    assert g.info()["index"] == "Flat"
    g.add(x[150:300], ["b"] * 150)
    info = g.info()
    assert info["index"].startswith("IVF") and info["index_gen"] == 1 and info["snapshot_seq"] == 300
    assert [r[0].id for r in g.search(x[:300], 1)] == list(range(1, 301))
    nlist = int(info["index"][3:])
    g.add(x[300:], ["c"] * 700)  # 4x the vectors: retrained with more lists
    info = g.info()
    assert int(info["index"][3:]) >= 2 * nlist
    assert [r[0].id for r in g.search(x, 1)] == list(range(1, 1001))
    # Another process (here: another object) picks the trained index up from the snapshot.
    with Gallery.open(tmp_path / "g", readonly=True) as other:
        assert other.info()["index"] == info["index"]
    g.close()


@pytest.mark.parametrize("method", ["IVF8,Flat", "HNSW16", "PCA16,IVF4,Flat"])
def test_other_factory_strings(tmp_path, method):
    rng = np.random.default_rng(3)
    x = unit(rng, 400)
    with Gallery.create(tmp_path / "g", DIM, method, "L2", ivf_min_train=100) as g:
        g.add(x, ["a"] * 400)
        g.remove(ids=[1, 2])
        assert not {1, 2} & {m.id for m in g.search(x[:3], k=10)[0]}
        if "PCA" not in method:
            assert [r[0].id for r in g.search(x[2:20], 1)] == list(range(3, 21))
        g.compact()
        assert len(g) == 398


def test_auto_compaction_when_many_removed(tmp_path):
    rng = np.random.default_rng(4)
    x = unit(rng, 500)
    for method in ("Flat", "HNSW32"):
        with Gallery.create(tmp_path / method, DIM, method, compact_min=10) as g:
            ids = g.add(x, ["a"] * 500)
            g.remove(ids=ids[:50])
            assert g.info()["removed_pending"] == 50  # 10%: kept as tombstones
            g.remove(ids=ids[50:120])
            info = g.info()  # 24% > 20%: compacted
            assert info["removed_pending"] == 0 and info["index_vectors"] == 380
            assert {m.id for m in g.search(x[:1], k=500)[0]} == set(ids[120:])


def test_hnsw_removal_does_not_rebuild(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    x = unit(rng, 200)
    with Gallery.create(tmp_path / "g", DIM, "HNSW32") as g:
        ids = g.add(x, ["a"] * 200)
        index_before = g.replica.state.index
        calls = []
        monkeypatch.setattr(Replica, "rebuild", lambda *a, **k: calls.append(1))
        for i in ids[:30]:
            g.remove(ids=[i])
            assert i not in {m.id for m in g.search(x[i - 1 : i], k=5)[0]}
        assert g.replica.state.index is index_before and not calls


def test_label_filter(tmp_path):
    rng = np.random.default_rng(6)
    x = unit(rng, 600)
    labels = [f"l{i % 6}" for i in range(600)]
    with Gallery.create(tmp_path / "g", DIM, "HNSW32", exact_filter_limit=50) as g:
        g.add(x, labels)
        for lab_set in (["l1"], ["l2", "l3"]):  # l1 has 100 items > 50: ANN + selector; two labels: same
            hits = g.search(x[:20], k=5, labels=lab_set)
            assert all(m.label in lab_set for row in hits for m in row)
            assert all(len(row) == 5 for row in hits)
        g.tuning["exact_filter_limit"] = 4096  # exact path
        hits = g.search(x[:20], k=5, labels=["l1"])
        exact = [[i + 1 for i in np.argsort(-(x[q] @ x.T)) if labels[i] == "l1"][:5] for q in range(20)]
        assert ids_of(hits) == exact
        assert g.search(x[:2], k=5, labels=[]) == [[], []]
        assert g.search(x[:2], k=5, labels=["nope"]) == [[], []]


def test_hamming_radius_and_distance(tmp_path):
    rng = np.random.default_rng(7)
    xb = bits(rng, 50)
    with Gallery.create(tmp_path / "g", 64, "Flat", "hamming", hamming_radius=3) as g:
        g.add(xb, ["a"] * 50)
        q = xb[:1].copy()
        q[0, 0] ^= 0b111  # 3 bits flipped: within the radius
        hit = g.search(q, k=5)[0]
        assert hit[0].id == 1 and hit[0].score == 3 and all(m.score <= 3 for m in hit)
        q[0, 1] ^= 0b1  # 4 bits: outside
        assert 1 not in {m.id for m in g.search(q, k=5)[0]}
        with pytest.raises(GalleryError, match="packed bits"):
            g.add(np.zeros((1, 8), np.float32), ["a"])


def test_cosine_normalises(tmp_path):
    rng = np.random.default_rng(8)
    x = unit(rng, 20) * 7.0
    with Gallery.create(tmp_path / "g", DIM, "Flat", "cosine") as g:
        assert g.metric == "IP" and g.normalize
        g.add(x, ["a"] * 20)
        assert g.search(x[:1] * 3, k=1)[0][0].score == pytest.approx(1.0, abs=1e-5)


def test_labels_are_validated(tmp_path):
    with Gallery.create(tmp_path / "g", 4, "Flat", max_label_length=10) as g:
        v = np.eye(4, dtype=np.float32)[:1]
        for bad in ["", "   ", "a\tb", "a\nb", "nul\x00", "x" * 11, None]:
            with pytest.raises(LabelError) as ei:
                g.add(v, [bad])
            assert repr(bad) in str(ei.value)
            assert isinstance(ei.value, ValueError)
        assert g.add(v, ["x" * 10]) == [1]
        with pytest.raises(LabelError, match="'a\\\\x01b'"):
            g.update(1, label="a\x01b")
        assert len(g) == 1


def test_input_validation(tmp_path):
    with Gallery.create(tmp_path / "g", 4, "Flat") as g:
        with pytest.raises(GalleryError, match=r"float \[n, 4\]"):
            g.add(np.zeros((2, 3), np.float32), ["a", "b"])
        with pytest.raises(GalleryError, match="NaN"):
            g.add(np.full((1, 4), np.nan, np.float32), ["a"])
        with pytest.raises(GalleryError, match="labels"):
            g.add(np.zeros((2, 4), np.float32), ["a"])
        with pytest.raises(GalleryError, match="JSON"):
            g.add(np.zeros((1, 4), np.float32), ["a"], metadata=[{"x": object()}])
        with pytest.raises(GalleryError, match="no item with id 5"):
            g.update(5, label="a")
        with pytest.raises(GalleryError, match="k must be positive"):
            g.search(np.zeros((1, 4), np.float32), k=0)
        assert g.add(np.zeros((0, 4), np.float32), []) == []
        assert g.search(np.ones(4, np.float32), k=3) == [[]]  # empty gallery, 1-D query
        assert len(g) == 0


def test_records_hashes_list_info(tmp_path):
    rng = np.random.default_rng(9)
    x = unit(rng, 10)
    with Gallery.create(tmp_path / "g", DIM, "Flat") as g:
        ids = g.add(
            x,
            ["a"] * 4 + ["b"] * 6,
            sources=[f"s{i}" for i in range(10)],
            metadata=[{"n": i} if i % 2 else None for i in range(10)],
            content_hashes=[f"h{i}" for i in range(10)],
        )
        rec = g.get(ids[1], with_vector=True)
        assert rec["label"] == "a" and rec["source"] == "s1" and rec["metadata"] == {"n": 1}
        assert rec["content_hash"] == "h1" and rec["added_at"] > 0 and np.allclose(rec["vector"], x[1])
        assert g.get(12345) is None
        assert g.has_hash("h3") and not g.has_hash("zz")
        assert g.hashes_present(["h1", "h9", "nope"]) == {"h1", "h9"}
        assert [r["id"] for r in g.list(label="b", limit=3, offset=1)] == ids[5:8]
        assert [r["id"] for r in g.list()] == ids
        assert g.label_counts() == {"a": 4, "b": 6}
        g.update(ids[0], metadata={"k": "v"}, source="new")
        assert g.get(ids[0])["metadata"] == {"k": "v"} and g.get(ids[0])["source"] == "new"
        info = g.info()
        for key in (
            "count",
            "labels",
            "dim",
            "metric",
            "index_method",
            "seq",
            "removed_pending",
            "path",
            "size_bytes",
            "format_version",
        ):
            assert key in info
        assert (info["count"], info["labels"], info["dim"], info["format_version"]) == (10, 2, DIM, FORMAT_VERSION)
        assert info["size_bytes"] > 0 and info["path"] == str(tmp_path / "g")


def test_info_says_writable_and_iso_created_at_not_how_the_handle_opened_it(tmp_path):
    """Was: ``readonly`` (how this handle opened it) and ``created_at`` as epoch seconds, which the server answered
    as is; every reader (CLI, server, SDK) now gets the truth from the gallery itself."""
    import os
    from datetime import datetime

    with Gallery.create(tmp_path / "g", DIM, "Flat") as g:
        g.add(unit(np.random.default_rng(1), 2), ["a", "b"])
    with Gallery.open(tmp_path / "g", readonly=True) as g:
        info = g.info()
    assert info["writable"] is True and "readonly" not in info
    assert datetime.fromisoformat(info["created_at"]).tzinfo is not None
    if os.geteuid() != 0:  # root can write anywhere
        os.chmod(tmp_path / "g", 0o555)
        try:
            with Gallery.open(tmp_path / "g", readonly=True) as g:
                assert g.info()["writable"] is False
        finally:
            os.chmod(tmp_path / "g", 0o755)


def test_create_open_errors(tmp_path):
    with pytest.raises(GalleryError, match="no such gallery folder"):
        Gallery.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GalleryError, match="not a gallery"):
        Gallery.open(tmp_path / "empty")
    (tmp_path / "pc").mkdir()
    (tmp_path / "pc" / "id_map.pkl").write_bytes(b"x")
    with pytest.raises(GalleryError, match="PaddleClas"):
        Gallery.open(tmp_path / "pc")
    with pytest.raises(GalleryError, match="dist_type"):
        Gallery.create(tmp_path / "x", 4, "Flat", "cos")
    with pytest.raises(GalleryError, match="multiple of 8"):
        Gallery.create(tmp_path / "x", 12, "Flat", "hamming")
    with pytest.raises(GalleryError, match="index_method"):
        Gallery.create(tmp_path / "x", 4, "NoSuchIndex")
    with pytest.raises(GalleryError, match="unknown gallery option"):
        Gallery.create(tmp_path / "x", 4, "Flat", efsearch=3)
    Gallery.create(tmp_path / "g", 4, "Flat").close()
    with pytest.raises(GalleryError, match="exists already"):
        Gallery.create(tmp_path / "g", 4, "Flat")
    with Gallery.open_or_create(tmp_path / "g", 4) as g:
        assert g.dim == 4
    with pytest.raises(GalleryError, match="dim 4"):
        Gallery.open_or_create(tmp_path / "g", 8)
    with Gallery.open_or_create(tmp_path / "new", 8, index_method="Flat", dist_type="L2") as g:
        assert (g.dim, g.metric) == (8, "L2")
    with Gallery.open(tmp_path / "g", readonly=True) as g:
        with pytest.raises(GalleryError, match="read-only"):
            g.add(np.zeros((1, 4), np.float32), ["a"])
    g = Gallery.open(tmp_path / "g")
    g.close()
    g.close()
    with pytest.raises(GalleryError, match="closed"):
        g.search(np.zeros((1, 4), np.float32))


def test_newer_format_is_a_clear_error(tmp_path):
    Gallery.create(tmp_path / "g", 4, "Flat").close()
    db = tmp_path / "g" / "gallery.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'format_version'", (str(FORMAT_VERSION + 1),))
    conn.close()
    with pytest.raises(GalleryError, match=r"format 2 is newer than this release supports \(1\)") as ei:
        Gallery.open(tmp_path / "g")
    assert str(db) in str(ei.value)


def _gallery_with_snapshot(path: Path) -> np.ndarray:
    x = unit(np.random.default_rng(10), 200)
    with Gallery.create(path, DIM, "HNSW32") as g:
        g.add(x, [f"l{i}" for i in range(200)])
        g.checkpoint()
        g.add(x[:5] * -1, ["late"] * 5)  # after the snapshot: replayed from the log on open
    return x


def _snapshot(path: Path) -> Path:
    (snap,) = path.glob("index-*.faiss")
    return snap


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "garbage"])
def test_damaged_snapshot_is_reported_with_its_path(tmp_path, damage):
    path = tmp_path / "g"
    x = _gallery_with_snapshot(path)
    snap = _snapshot(path)
    data = snap.read_bytes()
    if damage == "truncate":
        snap.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        snap.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    elif damage == "delete":
        snap.unlink()
    else:
        snap.write_bytes(b"\x00" * len(data))
    with pytest.raises(GalleryError) as ei:
        Gallery.open(path)
    assert str(snap) in str(ei.value)
    with pytest.raises(GalleryError):
        Gallery.open(path, readonly=True)
    # The explicit repair rebuilds the snapshot from the database.
    with Gallery.repair(path) as g:
        assert len(g) == 205
        assert [r[0].id for r in g.search(x[:10], 1)] == list(range(1, 11))
    with Gallery.open(path) as g:
        assert len(g) == 205


def test_snapshot_meant_for_a_wrong_checksum_is_not_half_loaded(tmp_path):
    """A faiss-readable file with different contents (e.g. an older snapshot copied over) is refused."""
    path = tmp_path / "g"
    _gallery_with_snapshot(path)
    snap = _snapshot(path)
    with Gallery.open(path) as g:
        import faiss

        faiss.write_index(g.replica.state.index, str(snap))  # valid faiss, different bytes (log applied)
    with pytest.raises(GalleryError, match="sha256 mismatch|instead of"):
        Gallery.open(path)


@pytest.mark.parametrize("damage", ["header", "truncate", "page"])
def test_damaged_database_is_reported_with_its_path(tmp_path, damage):
    path = tmp_path / "g"
    _gallery_with_snapshot(path)
    db = path / "gallery.db"
    assert not (path / "gallery.db-wal").exists() or (path / "gallery.db-wal").stat().st_size == 0
    data = bytearray(db.read_bytes())
    if damage == "header":
        data[:16] = b"definitely notDB"
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:  # garbage over a page in the middle of the file
        page = int.from_bytes(data[16:18], "big")
        page = 65536 if page == 1 else page
        mid = len(data) // page // 2
        data[mid * page : (mid + 1) * page] = np.random.default_rng(0).integers(0, 256, page, np.uint8).tobytes()
    db.write_bytes(bytes(data))
    with pytest.raises(GalleryError) as ei:
        Gallery.open(path)
    assert str(db) in str(ei.value)


def test_threads_share_one_gallery(tmp_path):
    rng = np.random.default_rng(11)
    x = unit(rng, 400)
    errors: list[BaseException] = []
    with Gallery.create(tmp_path / "g", DIM, "HNSW32") as g:
        g.add(x[:200], ["base"] * 200)
        removed: set[int] = set()
        stop = threading.Event()

        def searcher():
            try:
                while not stop.is_set():
                    snapshot = set(removed)  # removed before this search started
                    got = {m.id for row in g.search(x[:20], k=10) for m in row}
                    assert not got & snapshot, got & snapshot
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=searcher) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for i in range(20):
                new = g.add(x[200 + i * 10 : 210 + i * 10], [f"b{i}"] * 10)
                g.remove(ids=[i + 1])
                removed.add(i + 1)
                g.update(new[0], vector=x[i])
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors[0]
        assert len(g) == 380


def test_background_compaction_of_hnsw(tmp_path):
    """Big HNSW compactions (a rebuild) run in a background thread; searches stay correct meanwhile."""
    rng = np.random.default_rng(12)
    x = unit(rng, 600)
    with Gallery.create(tmp_path / "g", DIM, "HNSW32", background_rebuild_min=1, compact_min=10) as g:
        ids = g.add(x, ["a"] * 600)
        gen = g.info()["index_gen"]
        g.remove(ids=ids[:200])  # 33% dead: a background rebuild starts
        assert not {m.id for row in g.search(x[:50], k=20) for m in row} & set(ids[:200])
        g.add(x[:10] * -1, ["late"] * 10)  # written while the rebuild may still run: replayed onto it
        g.wait_background()
        info = g.info()
        assert info["index_gen"] == gen + 1 and info["removed_pending"] == 0
        assert info["index_vectors"] == info["count"] == 410
        assert [r[0].id for r in g.search(x[200:260], 1)] == ids[200:260]
        assert g.search(x[:1] * -1, 1)[0][0].label == "late"
    with Gallery.open(tmp_path / "g") as g:
        assert len(g) == 410


def test_open_or_create_keeps_the_existing_metric(tmp_path):
    with Gallery.create(tmp_path / "g", 4, "Flat", "L2") as g:
        g.add(np.eye(4, dtype=np.float32), list("abcd"))
    with Gallery.open_or_create(tmp_path / "g", 4, index_method="HNSW32", dist_type="IP") as g:
        assert (g.metric, g.index_method, len(g)) == ("L2", "Flat", 4)
    with pytest.raises(GalleryError, match="hamming"):
        Gallery.open_or_create(tmp_path / "g", 4 * 8, dist_type="hamming")


def test_background_ivf_training(tmp_path):
    """Training a big IVF runs in the background; searches are served (exactly) by the flat index meanwhile."""
    rng = np.random.default_rng(13)
    x = unit(rng, 800)
    with Gallery.create(tmp_path / "g", DIM, "IVF", ivf_min_train=200, background_rebuild_min=1) as g:
        ids = g.add(x, ["a"] * 800)
        assert [r[0].id for r in g.search(x[:50], 1)] == ids[:50]  # flat or IVF, whichever is current
        g.wait_background()
        info = g.info()
        assert info["index"].startswith("IVF") and info["index_gen"] == 1 and info["snapshot_seq"] == 800
        assert [r[0].id for r in g.search(x, 1)] == ids
    with Gallery.open(tmp_path / "g", readonly=True) as g:
        assert g.info()["index"].startswith("IVF")


def test_one_snapshot_file_remains(tmp_path):
    """Old snapshots go once a newer one is recorded, also when a rebuild snapshots the same seq."""
    rng = np.random.default_rng(14)
    path = tmp_path / "g"
    with Gallery.create(path, DIM, "IVF", ivf_min_train=100, snapshot_every=50) as g:
        g.add(unit(rng, 60), ["a"] * 60)  # flat fallback, snapshot at seq 60
        g.add(unit(rng, 60), ["a"] * 60)  # trained: a bumped snapshot at seq 120 ...
        g.checkpoint()  # ... and nothing newer to write
        g.compact()  # a forced snapshot at the same seq replaces it
        assert len(list(path.glob("index-*.faiss"))) == 1
        assert g.info()["snapshot_file"] == next(path.glob("index-*.faiss")).name
