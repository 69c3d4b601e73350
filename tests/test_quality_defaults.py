"""Issue #18: GeM pooling, the relative box-size floor and the measured general-lite defaults.

The pooling and pack tests run the real embedded models through paddle.inference; the ``select_boxes`` tests feed
synthetic detector boxes (named so) to the filter, beside the real-model ones.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from shitu.params import merge
from shitu.serving.engine.detection import select_boxes
from shitu.serving.engine.extraction import l2_normalize, pool
from shitu.serving.results import Detections
from shitu.serving.results.explanation import Explanation

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "quality"


def test_pool_gem_is_the_generalised_mean():
    fmap = np.random.RandomState(0).rand(2, 3, 4, 5).astype(np.float32)
    assert np.allclose(pool(fmap, "gap"), fmap.mean(axis=(2, 3)), atol=1e-6)
    assert np.allclose(pool(fmap, "gem", 1.0), fmap.mean(axis=(2, 3)), atol=1e-5)  # p = 1 is the average
    want = (fmap.astype(np.float64) ** 3).mean(axis=(2, 3)) ** (1 / 3)
    assert np.allclose(pool(fmap, "gem", 3.0), want, atol=1e-5)
    assert (pool(fmap, "gem", 3.0) >= pool(fmap, "gap") - 1e-6).all()  # power mean >= mean
    assert np.isfinite(pool(-fmap, "gem", 3.0)).all()  # negative activations are clamped, not NaN


def test_gem_pooling_real_model_is_used_and_differs_from_gap(engine, photos):
    """Real paddle.inference: RecPostProcess.pooling=gem gives GeM of the backbone's own feature map."""
    img = photos["cat"]
    gap = engine.extractor.embed([img], merge(None, {"RecPostProcess": {"pooling": "gap"}}))
    gem_params = merge(None, {"RecPostProcess": {"pooling": "gem", "gem_power": 3.0}})
    gem = engine.extractor.embed([img], gem_params)
    x = np.stack([engine.extractor.transforms(img).image])
    fmap = engine.extractor.predictor.run({engine.extractor.predictor.input_names[0]: x})
    fmap = fmap[engine.extractor.predictor.output_names[0]]
    assert fmap.ndim == 4
    assert np.allclose(gem, l2_normalize(pool(fmap, "gem", 3.0)), atol=1e-5)
    assert np.allclose(gap, l2_normalize(fmap.mean(axis=(2, 3))), atol=1e-5)
    assert float((gem * gap).sum()) < 0.999  # a different embedding, not the same one renamed
    p4 = engine.extractor.embed([img], merge(None, {"RecPostProcess": {"pooling": "gem", "gem_power": 4.0}}))
    assert not np.allclose(p4, gem, atol=1e-4)  # gem_power is used


def test_pooling_is_load_time_only(engine):
    with pytest.raises(Exception, match="pooling"):
        engine.request_params({"RecPostProcess.pooling": "gem"})


def _synthetic_boxes() -> Detections:
    # a 640x480 image: one object box and two specks with higher scores
    return Detections.from_arrays([[100, 100, 300, 300], [10, 10, 30, 30], [400, 50, 440, 80]], [0.4, 0.9, 0.8])


def test_min_box_ratio_drops_specks_synthetic_boxes():
    p = merge(
        None,
        {
            "Global": {
                "threshold": 0.2,
                "max_det_results": 1,
                "append_whole_image": False,
                "min_box_size": 4,
                "min_box_ratio": 0.1,
            }
        },
    )
    ex = Explanation.start(p)
    kept = select_boxes(_synthetic_boxes(), 480, 640, p, ex)
    assert kept.xyxy.tolist() == [[100, 100, 300, 300]]  # the specks no longer crowd the object out of top-1
    assert [b.dropped_by for b in ex.detector] == [None, "Global.min_box_ratio", "Global.min_box_ratio"]
    assert "0.1 of the image" in ex.detector[1].reason
    # ratio 0 (the schema default, PP-ShiTu's behaviour): the best-scoring speck wins the only slot
    p0 = p.override({"Global.min_box_ratio": 0.0})
    assert select_boxes(_synthetic_boxes(), 480, 640, p0).xyxy.tolist() == [[10, 10, 30, 30]]


def test_min_box_ratio_real_detector(engine, queries):
    """Real NanoDet: with a ratio of 0.9 no detected box of the collage survives, the whole image is searched."""
    img = queries["collage_cat_and_coffee"]
    assert len(engine.detect([img], threshold=0.3, append_whole_image=False)[0]) >= 2
    det = engine.detect([img], threshold=0.3, min_box_ratio=0.9, append_whole_image="fallback")[0]
    assert det.is_whole_image.tolist() == [True]


def test_general_lite_ships_the_measured_defaults(photos, tmp_path):
    from shitu.serving.engine import load_engine
    from shitu.serving.gallery import Gallery

    eng = load_engine(params={"Global.cpu_num_threads": 1})
    try:
        p = eng.params
        assert (
            p["RecPostProcess.pooling"] == "gem"
            and p["Global.min_box_ratio"] == 0.1
            and p["Global.crop_padding"] == 0.0
            and p["Global.framing"] == "main_box"
        )
        assert p["Global.threshold"] == 0.2 and p["IndexProcess.score_thres"] == "auto"
        assert p["RecPostProcess.centering"] == "centering.npy"
        assert list(eng.extractor.spec.transform_ops[0]) == ["PadToSquare"]
        Gallery.create(tmp_path / "g", eng.embedding_size, index_method="Flat").close()
        eng.gallery_add(list(photos.values()), list(photos), gallery=tmp_path / "g")  # main_box, auto recorded
        index = eng.gallery(tmp_path / "g")
        from shitu.serving.cli.demo import query_photos

        q = query_photos(photos)
        got = {name: {r.label for r in eng.recognize([img], index)[0]} for name, img in q.items()}
        assert got["cat_mirrored_crop"] == {"cat"} and got["rocket_bright_blur"] == {"rocket"}
        assert got["coffee_rescaled_crop"] == {"coffee"}
        assert got["collage_cat_and_coffee"] == {"cat", "coffee"}
        assert got["not_in_gallery_ihc"] == set()  # the gallery's auto threshold rejects what is not in it
    finally:
        eng.close()


@pytest.mark.skipif(
    not Path("/usr/share/icons/oxygen").is_dir() or not Path("/usr/share/icons/elementary-xfce").is_dir(),
    reason="benchmark icon themes not installed (apt-get install oxygen-icon-theme elementary-xfce-icon-theme)",
)
def test_quality_set_is_deterministic_with_true_boxes():
    sys.path.insert(0, str(BENCH))
    try:
        import dataset
    finally:
        sys.path.remove(str(BENCH))
    a, b = dataset.build(6, 1, seed=3), dataset.build(6, 1, seed=3)
    assert a.labels == b.labels and len(a.labels) == 6 and len(a.scenes) == 6
    for s, t in zip(a.scenes, b.scenes):
        assert np.array_equal(s.image, t.image) and s.box == t.box
        h, w = s.image.shape[:2]
        x1, y1, x2, y2 = s.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert 0.15 * min(h, w) <= max(x2 - x1, y2 - y1)  # pasted at 25-60 % of the short side, then trimmed
    assert all(g.shape == (256, 256, 3) for g in a.gallery)


def test_quality_set_names_the_missing_package(monkeypatch, tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import dataset
    finally:
        sys.path.remove(str(BENCH))
    monkeypatch.setattr(dataset, "ICONS", tmp_path)
    with pytest.raises(dataset.MissingData, match="apt-get install oxygen-icon-theme"):
        dataset.pick_labels(5, 0)


def test_engine_gallery_build_from_a_list_file(tmp_path, photos, queries):
    """Real models and faiss: an in-process build from a PaddleClas list file, idempotent, bad lines named."""
    import cv2

    from shitu.serving.engine import load_engine

    (tmp_path / "img").mkdir()
    lines = []
    for label, img in photos.items():
        cv2.imwrite(str(tmp_path / "img" / f"{label}.jpg"), img)
        lines.append(f"img/{label}.jpg\t{label}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    eng = load_engine(gallery=tmp_path / "g", params={"Global.cpu_num_threads": 1})
    try:
        report = eng.gallery_build(tmp_path / "list.txt")
        assert report.added == len(photos) and eng.gallery_info()["count"] == len(photos)
        assert eng.gallery_build(tmp_path / "list.txt").added == 0  # same content is not added twice
        found = eng.recognize([queries["cat_mirrored_crop"]])[0]
        assert found and found[0].label == "cat"
        (tmp_path / "bad.txt").write_text("img/missing.jpg\tghost\n")
        with pytest.raises(Exception, match="missing.jpg"):
            eng.gallery_build(tmp_path / "bad.txt")
        assert eng.gallery_info()["count"] == len(photos)  # nothing stored is lost
    finally:
        eng.close()


def test_crop_padding_widens_boxes_and_clips():
    from shitu.serving.engine.extraction import crop

    img = np.arange(100 * 200 * 3, dtype=np.uint8).reshape(100, 200, 3)
    assert crop(img, [50, 20, 150, 70]).shape[:2] == (50, 100)
    assert crop(img, [50, 20, 150, 70], 0.2).shape[:2] == (70, 140)  # 20 % of w / h on each side
    assert np.array_equal(crop(img, [50, 20, 150, 70], 0.2), img[10:80, 30:170])
    assert crop(img, [0, 0, 200, 100], 0.5).shape[:2] == (100, 200)  # the whole image stays the whole image


def test_crop_padding_is_used_by_the_real_pipeline_and_extract(engine, photos, queries, memory_gallery):
    """Real models: recognise and extract embed the widened crop (same embedding as cropping it by hand)."""
    from shitu.serving.engine.extraction import crop

    img = queries["collage_cat_and_coffee"]
    box = [24.0, 42.0, 359.0, 313.0]
    padded = engine.extract([img], [[box]], crop_padding=0.2)[0]
    by_hand = engine.embed([crop(img, box, 0.2)])
    plain = engine.extract([img], [[box]])[0]
    assert np.allclose(padded, by_hand, atol=1e-5) and not np.allclose(padded, plain, atol=1e-3)
    found = engine.recognize([img], memory_gallery, crop_padding=0.2)[0]
    assert {r.label for r in found} >= {"cat", "coffee"}
    assert all(r.bbox[2] <= img.shape[1] and r.bbox[3] <= img.shape[0] for r in found)  # answers keep the box


def test_candidates_show_the_margin_real_pipeline(engine, memory_gallery, queries):
    img = queries["collage_cat_and_coffee"]
    plain = engine.recognize([img], memory_gallery)[0]
    assert plain and all("candidates" not in r.to_dict() for r in plain)  # 0 (the default): answers unchanged
    found = engine.recognize([img], memory_gallery, candidates=3)[0]
    assert [(r.label, r.score) for r in found] == [(r.label, r.score) for r in plain]
    for r in found:
        cands = r.to_dict()["candidates"]
        assert len(cands) == 3 and len({c["label"] for c in cands}) == 3
        assert cands[0] == {"label": r.label, "score": round(r.score, 6)}  # the answer comes first
        assert cands[0]["score"] >= cands[1]["score"] >= cands[2]["score"]


def test_candidates_over_http_and_the_sdk(served, photos, queries):
    from shitu.serving.client.sdk import ShituClient

    from .conftest import b64

    r = served.post(
        "image_recognition",
        {
            "operation": "add",
            "images": [b64(v) for v in photos.values()],
            "labels": list(photos),
            "gallery": "candidates",
        },
    ).json()
    assert r["status"] == "000", r
    body = served.post(
        "image_recognition", {"images": [b64(queries["cat_mirrored_crop"])], "candidates": 2, "gallery": "candidates"}
    ).json()
    first = body["results"][0]["results"][0]
    assert first["label"] == "cat" and [c["label"] for c in first["candidates"]][0] == "cat"
    assert len(first["candidates"]) == 2
    with ShituClient(served.url) as client:  # unchanged user code sees them too
        res = client.recognize(queries["cat_mirrored_crop"], gallery="candidates", candidates=2)
    assert res[0].to_dict()["candidates"] == first["candidates"]
    bad = served.post(
        "image_recognition", {"images": [b64(queries["cat_mirrored_crop"])], "candidates": 99, "gallery": "candidates"}
    ).json()
    assert bad["status"] == "101" and "candidates" in bad["msg"]


def test_gallery_search_cli_applies_score_thres_like_engine_search(tmp_path, photos, queries, capsys):
    """Real models: `shitu gallery search` and Engine.search accept the same matches (IndexProcess.score_thres)."""
    import json

    import cv2

    from shitu.serving import cli
    from shitu.serving.engine import load_engine

    for label, img in photos.items():
        cv2.imwrite(str(tmp_path / f"{label}.png"), img)
    (tmp_path / "list.txt").write_text("".join(f"{label}.png\t{label}\n" for label in photos))
    g = tmp_path / "g"
    assert cli.main(["gallery", "build", str(g), str(tmp_path / "list.txt"), "--no-progress"]) == 0
    cv2.imwrite(str(tmp_path / "ihc.png"), queries["not_in_gallery_ihc"])
    cv2.imwrite(str(tmp_path / "cat_q.png"), queries["cat_mirrored_crop"])
    capsys.readouterr()
    assert cli.main(["gallery", "search", str(g), str(tmp_path / "ihc.png"), "--json"]) == 1  # nothing passes 0.5
    assert json.loads(capsys.readouterr().out)["matches"] == []
    # centred embeddings (general-lite 1.2.0) score below 0 against unrelated images: -1 accepts every match
    assert (
        cli.main(["gallery", "search", str(g), str(tmp_path / "ihc.png"), "--json", "--param", "score_thres=-1"]) == 0
    )
    assert len(json.loads(capsys.readouterr().out)["matches"]) == 5
    assert cli.main(["gallery", "search", str(g), str(tmp_path / "cat_q.png"), "--json"]) == 0
    cli_ids = [m["id"] for m in json.loads(capsys.readouterr().out)["matches"]]
    eng = load_engine(gallery=g, params={"Global.cpu_num_threads": 1})
    try:
        img = cv2.imread(str(tmp_path / "cat_q.png"))
        assert [m.id for m in eng.search(eng.embed([img]))[0]] == cli_ids
        assert eng.search(eng.embed([cv2.imread(str(tmp_path / "ihc.png"))]))[0] == []
    finally:
        eng.close()


def test_load_engine_gallery_name_or_folder_explicit(tmp_path, monkeypatch):
    from shitu.serving.engine import load_engine
    from shitu.serving.engine.engine import EngineError

    monkeypatch.chdir(tmp_path)
    eng = load_engine(gallery_dir="shop")  # a bare word, but explicitly a folder: ./shop
    try:
        assert eng.gallery_path() == tmp_path / "shop"
    finally:
        eng.close()
    eng = load_engine(gallery="shop")  # a name: the pack's gallery folder, not ./shop
    try:
        assert eng.gallery_path() != tmp_path / "shop" and eng.gallery_path().name == "shop"
    finally:
        eng.close()
    with pytest.raises(EngineError, match="not both"):
        load_engine(gallery="shop", gallery_dir="shop")
