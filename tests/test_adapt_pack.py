"""``shitu adapt LIST --pack NAME``: a new pack version with the adapted recogniser, galleries carried into its
embedding space, ``plugins rollback`` / ``use`` switching recogniser and galleries together.

Real path throughout: the embedded models through paddle.inference, real paddle training (a few steps), the real
installer (hashes, a child-process test run of each model), real faiss galleries, the ``shitu`` CLI entry point.
"""

from __future__ import annotations

import shutil
import sqlite3

import cv2
import numpy as np
import pytest

from .lite_packs import lite_pack

PACK = "adapt-lite"
ONE_THREAD = {"Global.cpu_num_threads": 1}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A SHITU_HOME of this module's own, with the lite pack 1.0.0 installed and a user gallery 'shop'."""
    import os

    from shitu.plugins import registry

    tmp = tmp_path_factory.mktemp("adapt-pack")
    old = os.environ.get("SHITU_HOME")
    os.environ["SHITU_HOME"] = str(tmp / "home")
    try:
        registry.install(str(lite_pack(tmp / "src", PACK)), progress=False)
        yield tmp
    finally:
        if old is None:
            os.environ.pop("SHITU_HOME", None)
        else:
            os.environ["SHITU_HOME"] = old


def head_delta(pack):
    """The head the version added (the base has none, so it is the whole projection)."""
    return np.load(pack.model_dir("recognizer") / "projection.npy", allow_pickle=False)


def _vectors(gallery_dir):
    conn = sqlite3.connect(str(gallery_dir / "gallery.db"))
    try:
        rows = conn.execute(
            "SELECT i.id, i.label, v.vector FROM items i JOIN vectors v ON v.slot = i.slot ORDER BY i.id"
        ).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows], [r[1] for r in rows], np.stack([np.frombuffer(r[2], "<f4") for r in rows])


@pytest.fixture(scope="module")
def adapted(home, photos, queries):
    """The base version's galleries in use (demo + a user gallery with thumbnails), then `shitu adapt --pack`."""
    from shitu.serving import cli
    from shitu.serving.engine import load_engine

    base = load_engine(PACK, params=ONE_THREAD)
    try:
        base.gallery()  # the pack's demo gallery, built from its vectors file in the base space
        ids = base.gallery_add(
            [photos[k] for k in ("cat", "coffee", "rocket")], ["cat", "coffee", "rocket"], gallery="shop"
        )
        before = base.recognize([queries["cat_mirrored_crop"]], gallery="shop")[0]
        shop_dir = base.gallery_path("shop")
    finally:
        base.close()
    lines = []
    for label in ("cat", "coffee", "rocket"):
        cv2.imwrite(str(home / f"{label}.png"), photos[label])
        lines.append(f"{label}.png\t{label}")
    (home / "list.txt").write_text("\n".join(lines) + "\n")
    rc = cli.main(["adapt", str(home / "list.txt"), "--pack", PACK, "--views", "2", "--steps", "15"])
    assert rc == 0
    return {"ids": ids, "before": before, "shop_dir": shop_dir}


def test_adapt_pack_installs_a_current_version_whose_galleries_are_in_its_space(adapted, photos):
    from shitu.plugins import registry, store
    from shitu.serving.engine import load_engine
    from shitu.serving.gallery import thumbnails

    pack = registry.get_pack(PACK)
    assert pack.version == "1.0.0+adapt.1" and pack.source == "store"
    assert store.installed_versions(PACK) == ["1.0.0", "1.0.0+adapt.1"]
    assert pack.embedding_space and registry.get_pack(PACK, "1.0.0").embedding_space is None
    assert not registry.verify(PACK)  # every file of the new version matches the sha256 its manifest gives
    rec = pack.models["recognizer"]
    assert rec.description["projection"] == "projection.npy" and pack.params["RecPostProcess"]["pooling"] == "gem"
    eng = load_engine(PACK, params=ONE_THREAD)
    try:
        assert eng.extractor.projection is not None
        shop = eng.gallery_path("shop")
        assert shop.parent.name == f"{PACK}+{pack.embedding_space}" and shop != adapted["shop_dir"]
        ids, labels, vecs = _vectors(shop)
        assert ids == adapted["ids"] and labels == ["cat", "coffee", "rocket"]
        # carried over through the head == what embedding the images again with the new recogniser gives
        fresh = eng.embed([photos[k] for k in labels])
        assert np.allclose(np.sum(vecs * fresh, axis=1), 1.0, atol=1e-4)
        assert len(thumbnails.fetch(eng.gallery("shop"), ids)) == 3
        got = eng.recognize([photos["cat"]], gallery="shop")[0]
        assert got and got[0].label == "cat"
        _, _, demo = _vectors(eng.gallery_path())  # the demo gallery: its shipped vectors mapped through the head
        _, _, old_demo = _vectors(adapted["shop_dir"].parent / "demo")
        mapped = old_demo @ head_delta(pack)
        assert np.allclose(demo, mapped / np.linalg.norm(mapped, axis=1, keepdims=True), atol=1e-5)
    finally:
        eng.close()


def test_rollback_returns_to_the_old_recogniser_and_its_untouched_galleries(adapted, queries):
    from shitu.plugins import registry
    from shitu.serving.engine import load_engine

    old_ids, _, old_vecs = _vectors(adapted["shop_dir"])
    assert registry.rollback(PACK) == "1.0.0"
    try:
        eng = load_engine(PACK, params=ONE_THREAD)
        try:
            assert eng.extractor.projection is None and eng.gallery_path("shop") == adapted["shop_dir"]
            ids, _, vecs = _vectors(eng.gallery_path("shop"))
            assert ids == old_ids and np.array_equal(vecs, old_vecs)
            got = eng.recognize([queries["cat_mirrored_crop"]], gallery="shop")[0]
            assert [(r.label, round(r.score, 4)) for r in got] == [
                (r.label, round(r.score, 4)) for r in adapted["before"]
            ]
        finally:
            eng.close()
    finally:
        registry.use(PACK, "1.0.0+adapt.1", default=False)
    assert registry.get_pack(PACK).version == "1.0.0+adapt.1"


def test_a_server_follows_use_and_rollback_with_the_matching_galleries(adapted, home, queries):
    """Real ``hub serving``: the recognition of the same photo in gallery 'shop' answers from the adapted space,
    then (after ``rollback``) exactly as before adapting, then (after ``use``) from the adapted space again."""
    from shitu.plugins import registry
    from shitu.serving.hub import control as hub_serving

    from .conftest import b64, start_served

    served = start_served(home, init_args={"scenario": PACK, "cpu_num_threads": 1})
    request = {"gallery": "shop", "images": [b64(queries["cat_mirrored_crop"])]}

    def answer():
        body = served.post("image_recognition", request).json()
        assert body["status"] == "000", body
        return [(r["label"], round(r["score"], 4)) for r in body["results"][0]["results"]]

    try:
        adapted_answer = answer()
        assert adapted_answer and adapted_answer[0][0] == "cat"
        registry.rollback(PACK)
        before = answer()
        assert before[0][0] == "cat" and before != adapted_answer  # (the request's JPEG differs from the array)
        # a JPEG round trip; centred scores (general-lite 1.2.0) move ~3x more than raw cosines
        assert abs(before[0][1] - adapted["before"][0].score) < 0.02
        registry.use(PACK, "1.0.0+adapt.1", default=False)
        assert answer() == adapted_answer
    finally:
        hub_serving.stop(served.proc)
        if registry.get_pack(PACK).version != "1.0.0+adapt.1":
            registry.use(PACK, "1.0.0+adapt.1", default=False)


def test_adapt_pack_refuses_a_gallery_it_cannot_carry_over_and_changes_nothing(adapted, home, capsys):
    from shitu.plugins import registry, store
    from shitu.serving import cli
    from shitu.serving.cli.toolkit import EXIT_ERROR
    from shitu.serving.gallery import Gallery
    from shitu.serving.gallery.backup import set_gallery_model_identity

    current = registry.get_pack(PACK)
    folder = current.gallery_dir().parent / "foreign"
    with Gallery.create(folder, 512, index_method="Flat") as g:  # vectors of another model, no images kept
        g.add(np.eye(2, 512, dtype=np.float32), ["a", "b"])
    set_gallery_model_identity(folder, {"name": "other", "sha256": "0" * 64})
    roots = sorted(p.name for p in store.galleries_dir().iterdir())
    rc = cli.main(["adapt", str(home / "list.txt"), "--pack", PACK, "--views", "1", "--steps", "2"])
    err = capsys.readouterr().err
    assert rc == EXIT_ERROR and "'foreign': 2 of 2 items have no stored image" in err and "nothing was changed" in err
    assert store.installed_versions(PACK) == ["1.0.0", "1.0.0+adapt.1"]
    assert registry.get_pack(PACK).version == "1.0.0+adapt.1"
    assert sorted(p.name for p in store.galleries_dir().iterdir()) == roots  # no gallery written anywhere
    shutil.rmtree(folder)


def test_reembed_from_stored_images_when_no_head_maps_the_vectors(tmp_path, engine, photos, monkeypatch):
    """The other way of carrying a gallery over (a gallery of another model whose items' images are still there):
    each image is embedded again; content hashes are checked."""
    import hashlib

    from shitu.serving.engine.extraction import binarize
    from shitu.serving.engine.images import load
    from shitu.serving.gallery import Gallery
    from shitu.serving.gallery.reembed import ReembedError, plan, reembed_all

    old, new = tmp_path / "old", tmp_path / "new"
    paths = []
    for k in ("cat", "coffee"):
        cv2.imwrite(str(tmp_path / f"{k}.png"), photos[k])
        paths.append(tmp_path / f"{k}.png")
    with Gallery.create(old / "g", 512, index_method="Flat") as g:
        g.add(
            np.eye(2, 512, dtype=np.float32),
            ["cat", "coffee"],
            sources=[str(p) for p in paths],
            content_hashes=[hashlib.sha256(p.read_bytes()).hexdigest() for p in paths],
        )
    with Gallery.create(old / ".g.building-1", 512, index_method="Flat") as g:  # a build in progress: not a gallery
        g.add(np.eye(1, 512, dtype=np.float32), ["x"])
    copies = plan(old, new, mappable=False, old_identity=None)
    assert [(c.name, c.how) for c in copies] == [("g", "images")]
    from shitu.serving.gallery import reembed

    monkeypatch.setattr(reembed, "IMAGE_CHUNK", 1)  # one image in memory at a time
    calls = []
    done = reembed_all(
        copies,
        projection=None,
        embed=lambda imgs: calls.append(len(imgs)) or engine.embed(imgs),
        read_image=load,
        identity=None,
        binarize=binarize,
    )
    assert done == {"g": {"items": 2, "how": "images"}} and calls == [1, 1]
    _, _, vecs = _vectors(new / "g")
    assert np.allclose(vecs, engine.embed([photos["cat"], photos["coffee"]]), atol=1e-5)
    paths[1].write_bytes(paths[0].read_bytes())  # an image changed since it was added: not the item's image
    with pytest.raises(ReembedError, match=r"'g': 1 of 2 items have no stored image to embed again \(ids 2 "):
        plan(old, tmp_path / "new2", mappable=False, old_identity=None)


def test_no_use_installs_a_version_without_switching_to_it(adapted, home):
    from shitu.plugins import registry, store
    from shitu.serving import cli

    before = store.read_pointer(PACK)
    rc = cli.main(["adapt", str(home / "list.txt"), "--pack", PACK, "--no-use", "--views", "1", "--steps", "2"])
    assert rc == 0
    assert store.installed_versions(PACK) == ["1.0.0", "1.0.0+adapt.1", "1.0.0+adapt.2"]
    assert store.read_pointer(PACK) == before and registry.get_pack(PACK).version == "1.0.0+adapt.1"
    assert registry.get_pack(PACK, "1.0.0+adapt.2").embedding_space != registry.get_pack(PACK).embedding_space
    registry.uninstall(PACK, "1.0.0+adapt.2")


def test_finetune_is_refused_up_front_for_a_pack_shipping_gallery_vectors(adapted, home, capsys):
    from shitu.plugins import store
    from shitu.serving import cli
    from shitu.serving.cli.toolkit import EXIT_ERROR

    rc = cli.main(["adapt", str(home / "list.txt"), "--pack", PACK, "--method", "finetune"])
    assert rc == EXIT_ERROR and "ships gallery vectors (demo) that only a projection head" in capsys.readouterr().err
    assert store.installed_versions(PACK) == ["1.0.0", "1.0.0+adapt.1"]


def test_finetuned_version_reembeds_galleries_from_their_images_and_rolls_back(adapted, home, photos):
    """--method finetune: the network's last layers change (saved through paddle.jit.save, served by
    paddle.inference); a gallery built from a list file is embedded again from its images."""
    from shitu.plugins import registry
    from shitu.serving import cli
    from shitu.serving.engine import load_engine

    def no_vectors(data):
        data["galleries"]["demo"].pop("vectors_file")
        data["galleries"]["demo"].pop("files")

    name = "adapt-ft"
    registry.install(str(lite_pack(home / "ft-src", name, mutate=no_vectors)), progress=False)
    base = load_engine(name, params=ONE_THREAD)
    try:
        built = base.gallery_build(str(home / "list.txt"), gallery="shop")
        old_dir = base.gallery_path("shop")
        old_ids, _, old_vecs = _vectors(old_dir)
    finally:
        base.close()
    assert built.added == 3
    rc = cli.main(
        [
            "adapt",
            str(home / "list.txt"),
            "--pack",
            name,
            "--method",
            "finetune",
            "--views",
            "1",
            "--steps",
            "5",
            "--finetune-steps",
            "2",
        ]
    )
    assert rc == 0
    pack = registry.get_pack(name)
    assert pack.version == "1.0.0+adapt.1" and "onnx_file" not in pack.models["recognizer"].description
    base_weights = (registry.get_pack(name, "1.0.0").model_dir("recognizer") / "model.pdiparams").read_bytes()
    assert (pack.model_dir("recognizer") / "model.pdiparams").read_bytes() != base_weights
    eng = load_engine(name, params=ONE_THREAD)
    try:
        ids, labels, vecs = _vectors(eng.gallery_path("shop"))
        assert ids == old_ids and eng.gallery_path("shop") != old_dir
        fresh = eng.embed([photos[k] for k in labels])
        assert np.allclose(np.sum(vecs * fresh, axis=1), 1.0, atol=1e-4)  # embedded again by the new network
        assert not np.allclose(vecs, old_vecs, atol=1e-3)
    finally:
        eng.close()
    assert registry.rollback(name) == "1.0.0"
    eng = load_engine(name, params=ONE_THREAD)
    try:
        assert eng.gallery_path("shop") == old_dir and np.array_equal(_vectors(old_dir)[2], old_vecs)
    finally:
        eng.close()


def test_adapted_versions_sort_after_their_release_by_number():
    from shitu.plugins.versions import VERSION_RE, version_key, version_matches

    versions = ["1.1.0+adapt.10", "1.1.0.post1", "1.1.0", "1.1.0+adapt.2", "1.0.9", "1.1.0+adapt.1"]
    assert sorted(versions, key=version_key) == [
        "1.0.9",
        "1.1.0",
        "1.1.0+adapt.1",
        "1.1.0+adapt.2",
        "1.1.0+adapt.10",
        "1.1.0.post1",
    ]
    assert version_matches("1.1.0+adapt.3", ">=1.1.0,<1.2")
    assert not any(VERSION_RE.match(v) for v in ("1.1.0+", "1.1.0+../x", "1.1.0+Adapt", "1.1.0+a/b"))


def test_adapted_galleries_keep_their_framing_and_recompute_score_thres(adapted):
    """Issue #28: the new version's copy of a gallery records the old one's framing rule and its own threshold."""
    from shitu.serving.engine import load_engine
    from shitu.serving.gallery.settings import read_settings

    old = read_settings(adapted["shop_dir"])
    eng = load_engine(PACK, params=ONE_THREAD)
    try:
        new = read_settings(eng.gallery_path("shop"))
        assert eng.gallery_info("shop")["recognition"]["score_thres"] == new["score_thres"]["auto"]
    finally:
        eng.close()
    assert new["framing"] == old["framing"] and new["framing"]["rule"] == "main_box"
    assert new["score_thres"]["computed_at"] > old["score_thres"]["computed_at"]
    assert new["score_thres"]["auto"] != old["score_thres"]["auto"]  # the head changed the score scale
