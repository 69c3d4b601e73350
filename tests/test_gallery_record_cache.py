"""The search path's record cache (``serving/gallery/record_cache.py``) and reused faiss search parameters.

Real galleries (SQLite + faiss) throughout. A second ``Gallery`` object on the same folder has its own SQLite
connections and its own index copy, like another process; its log refresh is switched off (``refresh_interval``
of an hour) so that only the record cache's own check of the change counter can make it see a change.
"""

from __future__ import annotations

from functools import partial

import pytest

from shitu.serving.gallery.local import Gallery
from shitu.serving.gallery.record_cache import RecordCache

from .conftest import unit_vectors

DIM = 16


_vectors = partial(unit_vectors, d=DIM)


@pytest.fixture
def pair(tmp_path):
    writer = Gallery.create(tmp_path / "g", DIM, "Flat", "IP")
    vecs = _vectors(50)
    ids = writer.add(vecs, [f"l{i % 5}" for i in range(50)], metadata=[{"n": i} for i in range(50)])
    reader = Gallery.open(tmp_path / "g", readonly=True)
    reader.refresh_interval = 3600.0
    yield writer, reader, vecs, ids
    reader.close()
    writer.close()


def test_relabel_elsewhere_is_seen_by_the_next_search(pair):
    writer, reader, vecs, ids = pair
    assert reader.search(vecs[:1], k=1)[0][0].label == "l0"  # now cached
    writer.update(ids[0], label="renamed", metadata={"n": -1})
    hit = reader.search(vecs[:1], k=1)[0][0]
    assert (hit.id, hit.label, hit.metadata) == (ids[0], "renamed", {"n": -1})


def test_removal_elsewhere_is_never_returned_from_the_cache(pair):
    writer, reader, vecs, ids = pair
    assert reader.search(vecs[:3], k=1)[0][0].id == ids[0]
    writer.remove(ids=[ids[0]])
    hits = reader.search(vecs[:3], k=5)
    assert ids[0] not in {m.id for row in hits for m in row}
    assert [row[0].id for row in hits[1:]] == ids[1:3]


def test_cached_results_equal_uncached_and_metadata_is_not_shared(pair):
    writer, reader, vecs, _ids = pair
    queries = _vectors(20, seed=1)
    first = reader.search(queries, k=7)
    again = reader.search(queries, k=7)  # served from the cache
    reader.replica.records = RecordCache()  # an empty cache: every record read from SQLite
    fresh = reader.search(queries, k=7)
    assert first == again == fresh
    again[0][0].metadata["n"] = "mutated by a caller"
    assert reader.search(queries[:1], k=1)[0][0].metadata == fresh[0][0].metadata


def test_record_cache_over_capacity_still_returns_every_record(pair):
    writer, _reader, _vecs, _ids = pair
    cache = RecordCache(capacity=3)
    slots = sorted(writer.replica.state.slots)[:10]
    rows = cache.lookup(writer.store, slots)
    assert all(s in rows for s in slots) and len(cache.rows) <= 10
    assert all(s in cache.lookup(writer.store, slots[:2]) for s in slots[:2])


@pytest.mark.parametrize("method", ["IVF", "HNSW32"])
def test_reused_search_parameters_follow_tuning_changes(tmp_path, method):
    with Gallery.create(tmp_path / "g", DIM, method, "IP") as g:
        g.add(_vectors(12000), ["x"] * 12000)
        g.wait_background()
        state = g.replica.state
        if state.mode not in ("ivf", "hnsw"):
            pytest.skip(f"{method} gallery held as {state.mode}")
        before = state.search_parameters(5)
        assert state.search_parameters(5) is before
        if state.mode == "ivf":
            g.tuning["nprobe"] = 3
            assert state.search_parameters(5).nprobe == 3
        else:
            g.tuning["ef_search"] = 300
            assert state.search_parameters(5).efSearch == 300
        assert len(g.search(_vectors(2, seed=3), k=5)[0]) == 5


def test_whole_cache_follows_adds_revectors_and_removals_elsewhere(pair):
    writer, reader, vecs, ids = pair
    reader.search(vecs[:1], k=1)
    cache = reader.replica.records
    assert cache.whole and len(cache.rows) == 50
    new = _vectors(3, seed=7)
    added = writer.add(new, ["fresh"] * 3, sources=["a.jpg", "b.jpg", "c.jpg"])
    writer.update(ids[1], vector=new[0] * -1.0)
    writer.remove(ids=[ids[2], added[2]])
    reader.refresh()  # the index catches up; the records follow the log on the next search
    hits = reader.search(new[:2], k=1)
    assert [(h[0].id, h[0].label, h[0].source) for h in hits] == [
        (added[0], "fresh", "a.jpg"),
        (added[1], "fresh", "b.jpg"),
    ]
    assert reader.search(-new[:1], k=1)[0][0].id == ids[1]  # re-vectored: found by its new vector
    assert cache.whole and len(cache.rows) == len(writer) == 50 + 3 - 2
    reader.replica.records = RecordCache()
    queries = _vectors(10, seed=9)
    fresh = reader.search(queries, k=5)
    reader.replica.records = cache
    assert reader.search(queries, k=5) == fresh


def test_gallery_bigger_than_the_capacity_caches_hits_only(pair):
    writer, reader, vecs, ids = pair
    reader.replica.records = small = RecordCache(capacity=10)
    first = reader.search(vecs[:5], k=3)
    assert small.too_big and not small.whole and len(small.rows) <= 15
    writer.update(ids[0], label="again")
    assert reader.search(vecs[:1], k=1)[0][0].label == "again"
    assert [r[0].id for r in reader.search(vecs[:5], k=3)] == [r[0].id for r in first]
