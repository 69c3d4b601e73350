"""Issue #28: a gallery records how its items were framed and queries follow it; ``score_thres: auto``.

Real paddle.inference on the embedded models and real faiss galleries; the ``main_box`` / ``threshold_from`` unit
tests feed synthetic arrays (named so) to the pure functions, beside the real-model ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from shitu.params import ParamError, merge
from shitu.serving.engine import calibration
from shitu.serving.engine.extraction import crop
from shitu.serving.engine.framing import Framing, framed_crop, main_box


def _on_margin(img: np.ndarray, margin: float = 0.4) -> np.ndarray:
    """``img`` centred on a white canvas ``1 + 2 * margin`` times its size (a catalogue picture)."""
    h, w = img.shape[:2]
    dy, dx = int(h * margin), int(w * margin)
    canvas = np.full((h + 2 * dy, w + 2 * dx, 3), 255, np.uint8)
    canvas[dy : dy + h, dx : dx + w] = img
    return canvas


def test_main_box_of_a_margin_and_of_a_photo_synthetic_images():
    obj = np.random.RandomState(0).randint(0, 200, (50, 80, 3)).astype(np.uint8)
    assert main_box(_on_margin(obj, 0.5)) == [40.0, 25.0, 120.0, 75.0]  # what differs from the white border
    assert main_box(obj) == [0.0, 0.0, 80.0, 50.0]  # no plain border: the whole image
    assert main_box(np.full((30, 30, 3), 255, np.uint8)) == [0.0, 0.0, 30.0, 30.0]  # nothing on it


def test_framed_crop_fills_outside_the_image_synthetic_image():
    img = np.full((10, 10, 3), 7, np.uint8)
    out = framed_crop(img, [0, 0, 10, 10], 0.2, [1, 2, 3])
    assert out.shape == (14, 14, 3)
    assert out[0, 0].tolist() == [1, 2, 3] and out[7, 7].tolist() == [7, 7, 7]
    assert framed_crop(img, [2, 2, 6, 6], 0.25, [0, 0, 0]).shape == (6, 6, 3)  # inside: a plain crop


def test_new_gallery_records_main_box_and_a_margin_equals_a_tight_picture(engine, photos, tmp_path):
    """The same object on a white margin and cut tight gives the same gallery item (framing cannot mismatch)."""
    cat = photos["cat"]
    engine.gallery_add([cat, _on_margin(cat)], ["tight", "margin"], gallery=tmp_path / "g")
    info = engine.gallery_info(tmp_path / "g")
    want = {"rule": engine.params["Global.framing"], "crop_padding": engine.params["Global.crop_padding"]}
    assert info["recognition"]["framing"] == want and want["rule"] == "main_box"
    g = engine.gallery(tmp_path / "g")
    a, b = (g.get(i, with_vector=True)["vector"] for i in (1, 2))
    assert float(a @ b) > 0.97
    # the gallery's own info (what `shitu gallery info` prints) shows the record too
    assert g.info()["recognition"]["framing"] == want


def test_a_query_gets_the_rule_of_the_gallery_it_searches(engine, photos, queries, tmp_path):
    """A gallery built with the pre-#28 rule (whole images, boxes widened by 0.1 and clipped) keeps it against an
    engine whose defaults are now main_box: its scores are those of that rule."""
    from shitu.serving.engine import load_engine

    old = load_engine(params={"Global.framing": "whole_image", "Global.crop_padding": 0.1, "Global.cpu_num_threads": 1})
    try:
        old.gallery_add(list(photos.values()), list(photos), gallery=tmp_path / "old")
    finally:
        old.close()
    g = engine.gallery(tmp_path / "old")
    assert engine.gallery_info(tmp_path / "old")["recognition"]["framing"] == {
        "rule": "whole_image",
        "crop_padding": 0.1,
    }
    img = queries["collage_cat_and_coffee"]
    recs = engine.recognize([img], g, append_whole_image=False, **{"IndexProcess": {"score_thres": -1.0}})[
        0
    ]  # nested, as served
    assert {r.label for r in recs} >= {"cat", "coffee"}
    p = merge(None, {"Global": {"crop_padding": 0.1}})
    for r in recs[:2]:  # the score of the box cropped by the gallery's rule, not by the engine's defaults
        box = np.array([r.bbox], np.float64)
        want = engine.extractor.embed([crop(img, box[0], 0.1)], p) @ g.get(r.id, with_vector=True)["vector"]
        assert abs(float(want[0]) - r.score) < 0.02


def test_a_gallery_without_a_record_keeps_the_rule_before_28(engine, photo_gallery):
    """A gallery filled with raw whole-image vectors (no record) is searched with the pre-#28 rule."""
    assert engine.rules.framing(photo_gallery) == Framing("whole_image", engine.params["Global.crop_padding"])


def test_score_thres_auto_is_computed_on_build_and_separates(engine, photos, queries, tmp_path):
    engine.gallery_add(list(photos.values()), list(photos), gallery=tmp_path / "g")
    g = engine.gallery(tmp_path / "g")
    record = g.info()["recognition"]["score_thres"]
    assert record["false_accept_rate"] == calibration.FALSE_ACCEPT_RATE and record["items"] == len(photos)
    # the value: the best other-label scores of the gallery's own items, as calibration.threshold_from says
    estimate = calibration.threshold_from(calibration.impostor_scores(g), True)
    assert record["auto"] == max(estimate, calibration.FALLBACK)  # 6 items: no looser than the fallback
    assert engine.gallery_info(tmp_path / "g")["recognition"]["score_thres"] == record["auto"]
    got = {name: {r.label for r in engine.recognize([img], g, score_thres="auto")[0]} for name, img in queries.items()}
    assert got["cat_mirrored_crop"] == {"cat"} and got["collage_cat_and_coffee"] == {"cat", "coffee"}
    assert got["not_in_gallery_ihc"] == set()
    # an explicit number still wins, per request
    assert engine.recognize([queries["cat_mirrored_crop"]], g, score_thres=0.999)[0] == []
    assert engine.search(engine.embed([photos["cat"]]), g, score_thres=-1.0)[0]


def test_score_thres_auto_follows_adds(engine, photos, tmp_path):
    engine.gallery_add([photos["cat"], photos["coffee"]], ["cat", "coffee"], gallery=tmp_path / "g")
    first = engine.gallery(tmp_path / "g").info()["recognition"]["score_thres"]
    engine.gallery_add([photos["rocket"], photos["astronaut"]], ["rocket", "astronaut"], gallery=tmp_path / "g")
    again = engine.gallery(tmp_path / "g").info()["recognition"]["score_thres"]
    assert first["items"] == 2 and again["items"] == 4 and again["computed_at"] >= first["computed_at"]


def test_score_thres_auto_of_one_label_falls_back(engine, photos, tmp_path):
    engine.gallery_add([photos["cat"]], ["cat"], gallery=tmp_path / "g")
    assert engine.rules.score_thres(engine.gallery(tmp_path / "g")) == calibration.FALLBACK
    # the same picture under other labels is a duplicate, not an impostor: still no estimate, still answered
    engine.gallery_add([photos["cat"], photos["cat"]], ["cat-1", "cat-2"], gallery=tmp_path / "g")
    assert engine.rules.score_thres(engine.gallery(tmp_path / "g")) == calibration.FALLBACK
    assert engine.recognize([photos["cat"]], tmp_path / "g", score_thres="auto")[0]


def test_threshold_from_impostor_scores_synthetic_scores():
    scores = np.random.RandomState(0).normal(0.3, 0.05, 2000)
    t = calibration.threshold_from(scores, True, 0.01)
    assert 0.41 < t < 0.43 and (scores > t).mean() <= 0.012  # ~ mean + 2.33 sigma
    few = np.array([0.1, 0.2, 0.3])
    assert calibration.threshold_from(few, True, 0.01) >= 0.3  # a handful: at least the best impostor
    duplicates = np.concatenate([scores, [0.99, 0.99]])  # two near-identical items under different labels
    assert abs(calibration.threshold_from(duplicates, True, 0.01) - t) < 0.01
    assert calibration.threshold_from(np.array([3.0, 4.0, 5.0]), False, 0.01) <= 3.0  # distances: the lower tail


def test_score_thres_schema_accepts_auto_and_numbers_only():
    assert merge()["IndexProcess.score_thres"] == "auto"
    assert merge(None, {"IndexProcess": {"score_thres": 0.7}})["IndexProcess.score_thres"] == 0.7
    for bad in ("high", -2.0):
        with pytest.raises(ParamError, match="score_thres"):
            merge(None, {"IndexProcess": {"score_thres": bad}})
