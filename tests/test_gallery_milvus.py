"""Galleries on Milvus: the same bar as the local gallery, against a real Milvus API on loopback.

milvus-lite in server mode by default; a full Milvus server with ``SHITU_TEST_MILVUS_URI=milvus://host:port``
(see tests/milvus_server.py). Every test here talks gRPC to that server: nothing is faked.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from functools import partial

import numpy as np
import pytest

from .conftest import unit_vectors
from .milvus_server import milvus_server

pytest.importorskip("pymilvus")


@pytest.fixture(scope="module")
def milvus(tmp_path_factory):
    yield from milvus_server(tmp_path_factory.mktemp("milvus"))


_unit = partial(unit_vectors, d=32)


def test_parse_uri_names_the_problem():
    from shitu.serving.gallery.local import GalleryError
    from shitu.serving.gallery.milvus import parse_uri

    t = parse_uri("milvus://db.example:19531/shop-eu.v2?timeout=4")
    assert (t.host, t.port, t.collection, t.call_timeout) == ("db.example", 19531, "shop_eu_v2", 4)
    assert parse_uri("milvus://localhost/shop").port == 19530
    for bad in ("milvus://user:pw@host:1/c", "milvus://host:1", "http://host/c", "milvus://host:99999/c"):
        with pytest.raises(GalleryError, match="milvus|port"):
            parse_uri(bad)


def test_milvus_gallery_matches_local_gallery_real(milvus, tmp_path):
    """Add / search / update / remove / list / info on Milvus give what the local (faiss) gallery gives."""
    from shitu.serving.gallery.local import Gallery
    from shitu.serving.gallery.milvus import MilvusGallery

    vecs = _unit(300)
    labels = [f"l{i % 7}" for i in range(300)]
    meta = [{"sku": i} if i % 3 == 0 else None for i in range(300)]
    with (
        Gallery.create(tmp_path / "local", 32, "Flat", "IP") as loc,
        MilvusGallery.create(milvus.uri("crud"), 32, "Flat", "IP") as mil,
    ):
        from shitu.serving.gallery.backend import GalleryBackend

        assert isinstance(loc, GalleryBackend) and isinstance(mil, GalleryBackend)
        ids_l = loc.add(vecs, labels, sources=[f"s{i}" for i in range(300)], metadata=meta)
        ids_m = mil.add(vecs, labels, sources=[f"s{i}" for i in range(300)], metadata=meta)
        assert len(set(ids_m)) == 300 and all(0 < i < 2**53 for i in ids_m)
        to_m = dict(zip(ids_l, ids_m))
        q = _unit(20, seed=1)
        for rl, rm in zip(loc.search(q, 5), mil.search(q, 5)):
            assert [to_m[m.id] for m in rl] == [m.id for m in rm]
            np.testing.assert_allclose([m.score for m in rl], [m.score for m in rm], atol=1e-4)
            assert [(m.label, m.source, m.metadata) for m in rl] == [(m.label, m.source, m.metadata) for m in rm]
        # label filter
        for row in mil.search(q, 5, labels=["l3", "l5"]):
            assert row and {m.label for m in row} <= {"l3", "l5"}
        assert mil.search(q[:2], 3, labels=[]) == [[], []]
        # update keeps the id; a replaced vector is searched at once
        mil.update(ids_m[0], label="renamed", vector=vecs[1], metadata={"new": True})
        rec = mil.get(ids_m[0], with_vector=True)
        assert rec["label"] == "renamed" and rec["metadata"] == {"new": True}
        np.testing.assert_allclose(rec["vector"], vecs[1], atol=1e-6)
        assert {m.id for m in mil.search(vecs[1:2], 2)[0]} == {ids_m[0], ids_m[1]}
        # remove by id and by label: gone from the next search
        assert mil.remove(ids=[ids_m[2], 12345]) == 1
        assert mil.remove(labels=["l4"]) == loc.remove(labels=["l4"])
        hits = mil.search(vecs[:50], 50)
        assert all(m.id != ids_m[2] and m.label != "l4" for row in hits for m in row)
        assert len(mil) == 300 - 1 - labels.count("l4") + (1 if labels[2] == "l4" else 0)
        assert mil.label_counts()["renamed"] == 1
        assert [r["id"] for r in mil.list(label="l1", limit=5)] == sorted(
            r["id"] for r in mil.list(label="l1", limit=5)
        )
        info = mil.info()
        assert info["backend"] == "milvus" and info["count"] == len(mil) and info["metric"] == "IP"
        # a second client (another replica) sees the same gallery and ids
        with MilvusGallery.open(mil.path) as other:
            assert other.get(ids_m[0])["label"] == "renamed" and len(other) == len(mil)


@pytest.mark.parametrize("method,dist", [("HNSW32", "IP"), ("IVF64", "L2"), ("Flat", "cosine")])
def test_milvus_index_types_and_metrics_real(milvus, method, dist):
    from shitu.serving.gallery.milvus import MilvusGallery

    vecs = _unit(200, seed=2) * (3.0 if dist == "cosine" else 1.0)
    with MilvusGallery.create(milvus.uri("idx"), 32, method, dist) as g:
        ids = g.add(vecs, [f"x{i}" for i in range(200)])
        top = [row[0] for row in g.search(vecs[:20], 3)]
        assert [m.id for m in top] == ids[:20]
        if dist == "L2":
            assert not g.higher_is_better and all(m.score < 1e-4 for m in top)
        else:
            assert g.higher_is_better and all(m.score > 0.999 for m in top)
        assert g.info()["index"] in {"HNSW32": ("HNSW",), "IVF64": ("IVF_FLAT",), "Flat": ("FLAT",)}[method]


def test_milvus_hamming_gallery_real(milvus):
    from shitu.serving.gallery.local import GalleryError
    from shitu.serving.gallery.milvus import MilvusGallery

    try:
        g = MilvusGallery.create(milvus.uri("bin"), 64, "Flat", "hamming", hamming_radius=10)
    except GalleryError as e:
        if not milvus.external:
            pytest.skip(f"milvus-lite 3.2.2 has no BINARY_VECTOR field (full Milvus has): {e}")
        raise
    with g:
        codes = np.random.default_rng(3).integers(0, 256, (50, 8), dtype=np.uint8)
        ids = g.add(codes, [f"b{i}" for i in range(50)])
        assert [r[0].id for r in g.search(codes[:5], 2)] == ids[:5]


def test_milvus_bad_input_is_refused_with_a_reason_real(milvus):
    from shitu.serving.gallery.local import GalleryError
    from shitu.serving.gallery.milvus import MilvusGallery

    with MilvusGallery.create(milvus.uri("bad"), 32, "Flat", "IP") as g:
        with pytest.raises(GalleryError, match="float \\[n, 32\\]"):
            g.add(np.ones((1, 16), np.float32), ["x"])
        with pytest.raises(GalleryError, match="NaN"):
            g.add(np.full((1, 32), np.nan, np.float32), ["x"])
        with pytest.raises(GalleryError, match="label"):
            g.add(_unit(1), ["bad\tlabel"])
        with pytest.raises(GalleryError, match="no item"):
            g.update(424242, label="x")
        assert len(g) == 0
    with pytest.raises(GalleryError, match="no such gallery"):
        MilvusGallery.open(milvus.uri("missing"))
    with pytest.raises(GalleryError, match="dim 32"):
        MilvusGallery.create(g.path, 64, exist_ok=True)


def _writer(uri: str, seed: int, rounds: int, out) -> None:
    """One process (as one serving replica): adds batches, removes some of its own items, reports what was
    acknowledged."""
    from shitu.serving.gallery.milvus import MilvusGallery

    acked, removed = [], []
    with MilvusGallery.open(uri) as g:
        for r in range(rounds):
            ids = g.add(_unit(10, seed=seed * 1000 + r), [f"w{seed}-{r}"] * 10)
            acked += ids
            if r % 3 == 2:
                victims = ids[:4]
                assert g.remove(ids=victims) == 4
                removed += victims
                assert g.remove(labels=[f"w{seed}-{r - 1}"]) == 10
                removed += acked[-20:-10]
    out.put((acked, removed))


def test_milvus_concurrent_writers_from_two_processes_real(milvus):
    """Every acknowledged add is found and every remove is gone, with 2 processes writing at once."""
    from shitu.serving.gallery.milvus import MilvusGallery

    uri = milvus.uri("conc")
    MilvusGallery.create(uri, 32, "HNSW32", "IP").close()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(uri, s, 9, out)) for s in (1, 2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    acked = [i for a, _ in results for i in a]
    removed = {i for _, r in results for i in r}
    assert len(set(acked)) == len(acked) == 180
    with MilvusGallery.open(uri) as g:
        assert len(g) == len(acked) - len(removed)
        present = {r["id"] for page in g.iter_records(50) for r in page}
        assert present == set(acked) - removed


def test_milvus_restart_mid_traffic_real(milvus, tmp_path):
    """Killing the Milvus process during writes: clear errors while it is down, then recovery with every
    acknowledged write kept."""
    if milvus.external:
        pytest.skip("restarting the server needs the test's own milvus-lite (SHITU_TEST_MILVUS_URI is set)")
    from shitu.serving.gallery.milvus import MilvusGallery, MilvusUnavailable

    uri = milvus.uri("restart") + "?timeout=3"
    g = MilvusGallery.create(uri, 32, "Flat", "IP")
    acked: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            try:
                acked.extend(g.add(_unit(5, seed=100 + i), [f"r{i}"] * 5))
            except MilvusUnavailable as e:
                errors.append(str(e))
                time.sleep(0.2)
            i += 1

    t = threading.Thread(target=traffic)
    t.start()
    deadline = time.monotonic() + 120
    while len(acked) < 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    milvus.kill()
    time.sleep(3)
    milvus.start()
    n_at_restart = len(acked)
    while len(acked) < n_at_restart + 20 and time.monotonic() < deadline + 120:
        time.sleep(0.2)
    stop.set()
    t.join(60)
    assert errors, "no write failed while the server was down"
    assert all("unavailable" in e and "restart" in e for e in errors), errors[:3]
    assert len(acked) >= n_at_restart + 20, "writes did not resume after the restart"
    present = {r["id"] for page in g.iter_records(100) for r in page}
    assert set(acked) <= present
    g.close()


def test_migrate_local_to_milvus_and_back_real(milvus, tmp_path, capsys):
    """``shitu gallery migrate``: folder -> Milvus (ids kept) -> folder, verified by counts and searches; the
    CLI works on the Milvus gallery as on a folder."""
    import json

    from shitu.serving.cli import main
    from shitu.serving.gallery.local import Gallery
    from shitu.serving.gallery.milvus import MilvusGallery

    vecs = _unit(1300, seed=7)
    with Gallery.create(tmp_path / "src", 32, "Flat", "IP") as g:
        ids = g.add(
            vecs,
            [f"p{i % 50}" for i in range(1300)],
            metadata=[{"i": i} for i in range(1300)],
            content_hashes=[f"h{i}" for i in range(1300)],
        )
        g.remove(ids=ids[:10])
    uri = milvus.uri("mig")
    assert main(["gallery", "migrate", str(tmp_path / "src"), uri, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["copied"] == report["destination_count"] == 1290 and report["ids_kept"]
    assert report["agreeing"] == report["checked"] == 50
    with MilvusGallery.open(uri) as m:
        assert m.get(ids[500])["metadata"] == {"i": 500} and m.get(ids[5]) is None
        assert m.hashes_present(["h500", "h5"]) == {"h500"}
    assert main(["gallery", "migrate", uri, str(tmp_path / "back"), "--json"]) == 0
    back = json.loads(capsys.readouterr().out)
    assert back["destination_count"] == 1290 and not back["ids_kept"] and back["agreeing"] == 50
    with Gallery.open(tmp_path / "back") as b, Gallery.open(tmp_path / "src") as s:
        assert b.label_counts() == s.label_counts()
    # the gallery commands take the URI
    assert main(["gallery", "info", uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 1290
    assert main(["gallery", "remove", uri, "--label", "p1"]) == 0
    assert capsys.readouterr().out.strip() == "removed 25 items"
    assert main(["gallery", "list", uri, "--labels", "--json"]) == 0
    assert "p1" not in json.loads(capsys.readouterr().out)
    # an existing destination is refused, nothing changed
    assert main(["gallery", "migrate", str(tmp_path / "src"), uri]) == 3
    assert "exists already" in capsys.readouterr().err


def test_engine_recognizes_with_a_milvus_gallery_real(milvus, engine, photos, models_dir):
    """The engine (real models) adds to and recognises from a gallery named by a milvus:// URI; with
    ``IndexProcess.index_dir`` set to a URI, other gallery names are collections on the same server."""
    from shitu.model_spec import ModelSpec
    from shitu.params import merge
    from shitu.serving.engine.engine import Engine
    from shitu.serving.galleries.manager import GalleryRequestError

    from .conftest import GENERAL_LITE

    uri = milvus.uri("engine")
    labels = list(photos)
    ids = engine.gallery_add(list(photos.values()), labels, gallery=uri)
    assert len(ids) == len(labels)
    results = engine.recognize(list(photos.values()), gallery=uri)
    assert [r[0].label if r else None for r in results] == labels
    assert engine.gallery_info(uri)["backend"] == "milvus"
    from shitu.serving.engine.engine import load_engine

    loaded = load_engine(gallery=uri, params=GENERAL_LITE)  # as init_args "gallery" does
    try:
        assert loaded.gallery().path == uri and len(loaded.gallery()) == len(labels)
    finally:
        loaded.close()

    eng = Engine(
        ModelSpec.from_dir(models_dir / "det"),
        ModelSpec.from_dir(models_dir / "rec"),
        merge(GENERAL_LITE, {"IndexProcess": {"index_dir": uri}}),
    )
    assert eng.gallery().path == uri.split("?")[0]
    other = "shelf-" + uri.rsplit("_", 1)[-1]
    with pytest.raises(GalleryRequestError, match="no gallery named"):
        eng.gallery(other)
    eng.gallery_add([photos["cat"]], ["cat"], gallery=other)
    assert eng.gallery(other).path.endswith("/shelf_" + uri.rsplit("_", 1)[-1])
    assert eng.recognize([photos["cat"]], gallery=other)[0][0].label == "cat"
    eng.close()


def test_milvus_gallery_records_its_framing_and_auto_threshold_real(milvus, engine, photos):
    """Issue #28's per-gallery record on Milvus (was: none, so a Milvus gallery built with the main-box rule was
    searched with the whole-image one): the first add records the engine's framing, ``auto`` is computed and kept
    in the collection, and a new handle (another worker) reads both."""
    from shitu.serving.gallery.milvus import MilvusGallery

    uri = milvus.uri("rules")
    engine.gallery_add(list(photos.values()), list(photos), gallery=uri)
    info = engine.gallery_info(uri)  # what requests get
    assert info["recognition"]["framing"] == {"rule": "main_box", "crop_padding": 0.0}, info  # was: whole_image
    with MilvusGallery.open(uri) as g:  # what the collection records
        record = g.recognition()
        assert record["framing"] == info["recognition"]["framing"]
        assert record["score_thres"]["auto"] == info["recognition"]["score_thres"]
        assert g.info()["recognition"] == record


def test_shitu_recognize_in_process_on_a_milvus_gallery_real(milvus, engine, photos, tmp_path, capsys):
    import json

    import cv2

    from shitu.serving.cli import main
    from shitu.serving.engine import load_engine

    uri = milvus.uri("cli")
    pack_engine = load_engine()  # the pack's settings, as `shitu recognize` embeds with them (GeM pooling)
    try:
        pack_engine.gallery_add([photos["rocket"], photos["coffee"]], ["rocket", "coffee"], gallery=uri)
    finally:
        pack_engine.close()
    img = tmp_path / "rocket.jpg"
    cv2.imwrite(str(img), photos["rocket"])
    assert main(["recognize", str(img), "--gallery", uri, "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[0])
    assert out["results"][0]["label"] == "rocket"
    assert main(["recognize", str(img), "--gallery", milvus.uri("nothing-here")]) == 2
    assert "no such gallery" in capsys.readouterr().err


def test_milvus_backend_loads_no_faiss_and_follows_the_shared_rules_real(milvus):
    """One validation and one error module for both backends: the Milvus one imports neither faiss nor the local
    backend, and refuses the same labels (NFC, no invisible-only or bidi-control labels) with the same errors."""
    import subprocess
    import sys

    probe = (
        "import sys, shitu.serving.gallery.milvus as m\n"
        "assert 'faiss' not in sys.modules and 'shitu.serving.gallery.local' not in sys.modules, sorted(sys.modules)\n"
        "from shitu.errors import Unavailable\nassert issubclass(m.MilvusUnavailable, Unavailable)\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=120)

    from shitu.errors import Conflict, InvalidArgument, NotFound
    from shitu.serving.gallery.errors import GalleryError, LabelError
    from shitu.serving.gallery.milvus import MilvusGallery

    uri = milvus.uri("rules")
    with pytest.raises(GalleryError, match="hamming_radius must be a non-negative integer"):
        MilvusGallery.create(uri, 32, "Flat", "hamming", hamming_radius="x")  # the local gallery's own checks
    with MilvusGallery.create(uri, 32, "Flat", "IP") as g:
        for bad in ("\u200b", "cola\u202e"):
            with pytest.raises(LabelError) as info:
                g.add(_unit(1), [bad])
            assert isinstance(info.value, InvalidArgument)
        ids = g.add(_unit(2), ["caf\u00e9", "cafe\u0301"])
        assert g.label_counts() == {"caf\u00e9": 2}
        with pytest.raises(NotFound):
            g.update(max(ids) + 1, label="x")
        assert g.remove(labels=["cafe\u0301"]) == 2
    with MilvusGallery.open(uri, readonly=True) as ro, pytest.raises(Conflict):
        ro.add(_unit(1), ["x"])
