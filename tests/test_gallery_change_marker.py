"""The search fast path: the shared change marker (``serving/gallery/change_marker.py``) that spares a search the
SQLite read of the change counter, the record cache's size from ``Limits.gallery_record_cache``, and the query
check without copies.

Real galleries (SQLite + faiss) throughout; "another process" is a real child Python process writing the same
folder. Readers switch their periodic log check off (``refresh_interval`` of an hour) so that only the record
cache's own check can make them see a change; one test then calls that periodic check (``refresh``) explicitly.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from functools import partial

import numpy as np
import pytest

from shitu.serving.gallery.change_marker import CHANGES_NAME, ChangeMarker
from shitu.serving.gallery.local import Gallery, GalleryError

from .conftest import unit_vectors

DIM = 16


_vectors = partial(unit_vectors, d=DIM)


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "g"
    with Gallery.create(path, DIM, "Flat", "IP") as g:
        ids = g.add(_vectors(40), [f"l{i % 4}" for i in range(40)], metadata=[{"n": i} for i in range(40)])
    return path, ids


def _reader(path) -> Gallery:
    g = Gallery.open(path, readonly=True)
    g.refresh_interval = 3600.0
    return g


def _statements(g: Gallery) -> list[str]:
    seen: list[str] = []
    g.store.reader.set_trace_callback(seen.append)
    return seen


def _in_another_process(path, code: str) -> None:
    script = (
        "import sys\nfrom shitu.serving.gallery.local import Gallery\n"
        f"g = Gallery.open({str(path)!r})\n{code}\ng.close()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_searches_read_no_sqlite_while_nobody_writes_and_do_after_a_write(folder):
    path, ids = folder
    vecs = _vectors(40)
    with Gallery.open(path) as writer, _reader(path) as reader:
        assert reader.store.changes.attached
        reader.search(vecs[:2], k=3)  # loads the records
        seen = _statements(reader)
        for _ in range(5):
            assert reader.search(vecs[:2], k=3)[0][0].id == ids[0]
        assert seen == []  # the marker said nothing changed: not even the change counter was read
        writer.update(ids[0], label="renamed")
        assert reader.search(vecs[:1], k=1)[0][0].label == "renamed"
        assert any("'seq'" in s for s in seen)


def test_remove_and_relabel_in_another_process_are_seen_by_the_next_search(folder):
    path, ids = folder
    vecs = _vectors(40)
    with _reader(path) as reader:
        assert reader.search(vecs[:2], k=1)[0][0].id == ids[0]
        seen = _statements(reader)
        _in_another_process(path, f"g.remove(ids=[{ids[0]}]); g.update({ids[1]}, label='elsewhere')")
        hits = reader.search(vecs[:2], k=5)
        assert ids[0] not in {m.id for row in hits for m in row}
        assert hits[1][0].id == ids[1] and hits[1][0].label == "elsewhere"
        assert seen  # the marker moved, so the cache read SQLite


def test_commit_without_the_marker_like_a_crashed_writer_is_seen_at_the_next_log_check(folder):
    """A writer that dies between its commit and the marker (simulated with a plain SQLite transaction that
    relabels an item as Gallery.update does, without touching the marker): the periodic log check catches it."""
    path, ids = folder
    vecs = _vectors(40)
    with _reader(path) as reader:
        assert reader.search(vecs[:1], k=1)[0][0].label == "l0"
        conn = sqlite3.connect(str(path / "gallery.db"), isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            seq = int(conn.execute("SELECT value FROM meta WHERE key='seq'").fetchone()[0]) + 1
            conn.execute("UPDATE items SET label = 'sneaky' WHERE id = ?", (ids[0],))
            conn.execute(
                "INSERT INTO log (seq, op, item_id, slot, old_slot, ts) VALUES (?, 'relabel', ?, NULL, NULL, ?)",
                (seq, ids[0], time.time()),
            )
            conn.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (str(seq),))
            conn.execute("COMMIT")
        finally:
            conn.close()
        reader.refresh()  # what a search does on its own every refresh_interval (0.2 s by default)
        assert reader.search(vecs[:1], k=1)[0][0].label == "sneaky"


def test_without_a_marker_file_every_search_reads_the_change_counter(folder):
    path, ids = folder
    vecs = _vectors(40)
    (path / CHANGES_NAME).unlink()  # e.g. a gallery written by an older release, opened read-only
    with _reader(path) as reader:
        assert not reader.store.changes.attached
        reader.search(vecs[:1], k=1)
        seen = _statements(reader)
        reader.search(vecs[:1], k=1)
        assert any("'seq'" in s for s in seen)
        with Gallery.open(path) as writer:  # a writer creates the marker ...
            writer.update(ids[0], label="seen anyway")
            assert reader.search(vecs[:1], k=1)[0][0].label == "seen anyway"
            reader.refresh()  # ... and the reader maps it at its next log check
            assert reader.store.changes.attached


def test_marker_bytes_change_on_every_write_and_never_shrink_the_file(tmp_path):
    path = tmp_path / "g"
    with Gallery.create(path, DIM, "Flat", "IP") as g:
        marker = ChangeMarker(path, writable=False)
        try:
            before = marker.read()
            g.add(_vectors(1), ["a"])
            after_add = marker.read()
            g.remove(labels=["a"])
            assert len({before, after_add, marker.read()}) == 3
        finally:
            marker.close()
    assert (path / CHANGES_NAME).stat().st_size == 8


def test_record_cache_capacity_bounds_the_records_held_and_results_stay_right(folder):
    path, ids = folder
    vecs = _vectors(40)
    with Gallery.open(path) as g:
        whole = g.search(vecs, k=5)
        g.record_cache_capacity = 10
        assert g.search(vecs, k=5) == whole
        assert not g.replica.records.whole
        g.record_cache_capacity = 10  # a fresh cache: held records are at most the capacity + one search's hits
        cache = g.replica.records
        assert cache.capacity == 10
        for i in range(40):
            assert g.search(vecs[i : i + 1], k=5) == whole[i : i + 1]
            assert len(cache.rows) <= 10 + 5
        for bad in (-1, 1.5, "10", True):
            with pytest.raises(GalleryError, match="record_cache_capacity"):
                g.record_cache_capacity = bad


def test_engine_sets_the_record_cache_from_limits(models_dir, tmp_path):
    from shitu.model_spec import ModelSpec
    from shitu.params import merge
    from shitu.serving.engine.engine import Engine

    engine = Engine(
        ModelSpec.from_dir(models_dir / "det"),
        ModelSpec.from_dir(models_dir / "rec"),
        merge({"Limits": {"gallery_record_cache": 7}}),
        gallery_root=tmp_path / "galleries",
    )
    try:
        g = engine.gallery(tmp_path / "g")
        assert g.record_cache_capacity == 7
        assert g.replica.records.capacity == 7
    finally:
        engine.close()


def test_query_check_without_copies_refuses_nan_and_inf_and_accepts_huge_finite_values(tmp_path):
    with Gallery.create(tmp_path / "g", DIM, "Flat", "IP") as g:
        g.add(_vectors(3), ["a", "b", "c"])
        for bad in (np.nan, np.inf, -np.inf):
            q = _vectors(1, seed=5)
            q[0, 3] = bad
            with pytest.raises(GalleryError, match="NaN or infinite"):
                g.search(q, k=1)
        huge = np.full((1, DIM), 3e38, np.float32)  # finite, though its sum overflows
        assert len(g.search(huge, k=1)[0]) == 1
        q = _vectors(2, seed=6)
        assert g.search(q[:, :], k=2) == g.search(np.asfortranarray(q), k=2) == g.search(q.astype(np.float64), k=2)


@pytest.mark.parametrize("method", ["Flat", "HNSW32"])
def test_direct_faiss_call_falls_back_to_the_wrapper_for_other_layouts(tmp_path, method):
    """The index is searched without faiss's Python wrapper only for C-contiguous queries of its own dtype and
    width; anything else goes through the wrapper (which copies), with the same results."""
    with Gallery.create(tmp_path / "g", DIM, method, "IP") as g:
        g.add(_vectors(30), [f"l{i}" for i in range(30)])
        q = _vectors(3, seed=9)
        state = g.replica.state
        want = state.search(q, 4)
        for other in (np.asfortranarray(q), q.astype(np.float64), np.repeat(q, 2, axis=0)[::2]):
            got = state.search(other, 4)
            assert np.array_equal(got[1], want[1]) and np.allclose(got[0], want[0])
