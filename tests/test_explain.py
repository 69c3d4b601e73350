"""``explain``, ``Global.append_whole_image: fallback`` and ``Global.rec_nms_per_label`` on the real default models,
real photographs and a real faiss gallery; then over real ``hub serving`` and through the ``shitu`` CLI.

Tests named ``..._unit`` run on hand-made boxes beside the real-path tests, never instead of them.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from shitu.params import ParamError, merge
from shitu.serving.cli.demo import overlapping_collage
from shitu.serving.cli.toolkit import EXIT_OK
from shitu.serving.client.sdk import ShituClient
from shitu.serving.engine.pipeline import rec_nms
from shitu.serving.results import Recognition
from shitu.serving.results import explanation as explain_module
from shitu.serving.results.explanation import Explanation, pairwise_iou

from .conftest import b64


@pytest.fixture(scope="module")
def gallery(engine, photos, tmp_path_factory):
    """A real faiss (Flat, IP) gallery of the demo photos, by folder path."""
    path = tmp_path_factory.mktemp("explain") / "gallery"
    engine.gallery_add(list(photos.values()), list(photos), gallery=path)
    return path


@pytest.fixture
def embed_calls(engine, monkeypatch):
    """Number of crops per call of the feature extractor, recorded while the test runs."""
    calls: list[int] = []
    real = engine.extractor.embed

    def counting(images, *args, **kwargs):
        calls.append(len(images))
        return real(images, *args, **kwargs)

    monkeypatch.setattr(engine.extractor, "embed", counting)
    return calls


def explained(engine, image, gallery, **overrides):
    ((recognitions, explanation),) = engine.recognize_explained([image], gallery=gallery, **overrides)
    assert recognitions == engine.recognize([image], gallery=gallery, **overrides)[0]  # explaining changes nothing
    return recognitions, explanation


# -- explain --------------------------------------------------------------------------------------------------------
def test_explanation_names_the_detector_filter_that_dropped_each_box(engine, gallery, queries):
    img = queries["collage_cat_and_coffee"]
    _, ex = explained(engine, img, gallery, threshold=0.3)
    kept = [b for b in ex.detector if b.kept]
    low = [b for b in ex.detector if b.dropped_by == "Global.threshold"]
    assert len(kept) == 2 and low, ex.format()
    assert all(b.score < 0.3 for b in low) and all(b.score >= 0.3 for b in kept)
    assert "< 0.3" in low[0].reason
    # The same image with a top-1 cap and a size floor: the other filters are named.
    _, ex = explained(engine, img, gallery, threshold=0.3, max_det_results=1)
    assert [b.dropped_by for b in ex.detector if b.score >= 0.3] == [None, "Global.max_det_results"]
    _, ex = explained(engine, img, gallery, threshold=0.3, min_box_size=300)
    assert {b.dropped_by for b in ex.detector if b.score >= 0.3} == {"Global.min_box_size"}
    assert [s.is_whole_image for s in ex.searched] == [True]  # only the whole image was left to search


def test_explanation_names_score_thres_and_the_rec_nms_winner(engine, gallery, queries):
    # collage: both detected boxes kept; the whole image's best match (coffee 0.79) is under score_thres 0.8.
    found, ex = explained(engine, queries["collage_cat_and_coffee"], gallery)
    assert {r.label for r in found} == {"cat", "coffee"}
    whole = ex.searched[-1]
    assert whole.is_whole_image and whole.verdict == "rejected" and whole.dropped_by == "IndexProcess.score_thres"
    assert len(whole.matches) == 5 and whole.matches[0].score < 0.8  # top return_k matches, best first
    # cat crop: the detected cat box is accepted but the whole image, scoring higher, suppresses it (issue 2239).
    found, ex = explained(engine, queries["cat_mirrored_crop"], gallery)
    assert [r.is_whole_image for r in found] == [True]
    box = next(s for s in ex.searched if not s.is_whole_image)
    assert box.verdict == "suppressed" and box.dropped_by == "Global.rec_nms_thresold"
    assert ex.searched[box.suppressed_by].is_whole_image and box.iou > 0.05
    assert "IoU" in box.reason
    text = ex.format()
    assert "suppressed by Global.rec_nms_thresold" in text and "top matches: cat" in text
    # IndexProcess.labels that no gallery item has: nothing to match, and the explanation says which filter.
    found, ex = explained(engine, queries["cat_mirrored_crop"], gallery, labels=["no-such-label"])
    assert found == [] and {(s.dropped_by, len(s.matches)) for s in ex.searched} == {("IndexProcess.labels", 0)}


def test_explained_matches_are_capped_by_the_limit(engine, gallery, queries):
    from shitu.serving.engine.pipeline import recognize

    p = engine.params.override({"Limits.max_explain_matches": 2, "IndexProcess.return_k": 1000})
    ex = Explanation.start(p)
    recognize(
        [queries["collage_cat_and_coffee"]],
        engine.detector,
        engine.extractor,
        engine.gallery(gallery),
        p,
        explanations=[ex],
    )
    assert ex.searched and all(len(s.matches) == 2 for s in ex.searched)


def test_explanation_round_trips_as_json(engine, gallery, queries):
    import json

    _, ex = explained(engine, queries["collage_cat_and_coffee"], gallery)
    d = json.loads(json.dumps(ex.to_dict()))
    assert Explanation.from_dict(d).to_dict() == d
    assert "source" not in json.dumps(d)  # gallery item sources (file paths) stay on the server


def test_explain_off_builds_nothing(engine, gallery, queries, monkeypatch):
    """The default path never builds an explanation and searches top-1 only."""

    def refuse(*args, **kwargs):
        raise AssertionError("an explanation was built")

    monkeypatch.setattr(explain_module.Explanation, "__init__", refuse)
    monkeypatch.setattr(explain_module, "pairwise_iou", refuse)
    g = engine.gallery(gallery)
    ks: list[int] = []
    real = g.search
    monkeypatch.setattr(g, "search", lambda q, k=5, labels=None: ks.append(k) or real(q, k, labels=labels))
    assert engine.recognize([queries["collage_cat_and_coffee"]], gallery=gallery)[0]
    assert ks == [1]


# -- append_whole_image: fallback ------------------------------------------------------------------------------------
def test_fallback_searches_whole_image_only_when_no_box_is_accepted(engine, gallery, queries, embed_calls):
    # Both detected boxes are accepted: one extractor call (the two crops), no whole image.
    found, ex = explained(engine, queries["collage_cat_and_coffee"], gallery, append_whole_image="fallback")
    assert {r.label for r in found} == {"cat", "coffee"} and not any(r.is_whole_image for r in found)
    assert ex.whole_image == "fallback: not needed"
    embed_calls.clear()
    engine.recognize([queries["collage_cat_and_coffee"]], gallery=gallery, append_whole_image="fallback")
    assert embed_calls == [2]
    # The coffee crop's detected box is rejected by score_thres: then, and only then, the whole image is searched.
    embed_calls.clear()
    found = engine.recognize([queries["coffee_rescaled_crop"]], gallery=gallery, append_whole_image="fallback")[0]
    assert [(r.label, r.is_whole_image) for r in found] == [("coffee", True)]
    assert len(embed_calls) == 2 and embed_calls[1] == 1
    # Issue 2239: PP-ShiTu's whole image suppresses the cat's detected box; the fallback answers with the box.
    found = engine.recognize([queries["cat_mirrored_crop"]], gallery=gallery, append_whole_image="fallback")[0]
    assert [(r.label, r.is_whole_image) for r in found] == [("cat", False)]
    # No detector box at all: the whole image is searched at once (one call).
    embed_calls.clear()
    found = engine.recognize(
        [queries["coffee_rescaled_crop"]], gallery=gallery, append_whole_image="fallback", threshold=1.0
    )[0]
    assert embed_calls == [1] and found[0].is_whole_image


def test_fallback_in_detection_appends_whole_image_only_without_boxes(engine, photos):
    img = photos["coffee"]
    boxes = engine.detect([img], append_whole_image="fallback")[0]
    assert len(boxes) and not boxes.is_whole_image.any()
    only = engine.detect([img], append_whole_image="fallback", threshold=1.0)[0]
    assert len(only) == 1 and only.is_whole_image[0]


def test_append_whole_image_values_unit():
    assert merge({"append_whole_image": "fallback"})["Global.append_whole_image"] == "fallback"
    assert merge({"whole_image_box": False})["Global.append_whole_image"] is False
    for bad in (1, "always", 0.0):
        with pytest.raises(ParamError, match='true or false or "fallback"'):
            merge({"append_whole_image": bad})


# -- per-label rec-NMS -----------------------------------------------------------------------------------------------
def test_per_label_rec_nms_keeps_overlapping_different_objects(engine, gallery, photos):
    img = overlapping_collage(photos)
    kw = dict(gallery=gallery, append_whole_image=False)
    found, ex = explained(engine, img, **kw)
    assert [r.label for r in found] == ["cat"]  # PP-ShiTu: the cup, overlapping the better cat, is dropped
    cup = next(s for s in ex.searched if s.matches[0].label == "coffee")
    assert cup.verdict == "suppressed" and cup.iou > 0.05 and ex.searched[cup.suppressed_by].matches[0].label == "cat"
    both, ex = explained(engine, img, rec_nms_per_label=True, **kw)
    assert sorted(r.label for r in both) == ["cat", "coffee"]
    assert all(s.verdict == "kept" for s in ex.searched)
    a, b = (r.bbox for r in both)
    assert pairwise_iou(np.array([a]), np.array([b]))[0, 0] > 0.05  # they do overlap


def test_per_label_rec_nms_unit():
    recs = [
        Recognition([0, 0, 10, 10], "a", 0.9, 1.0),
        Recognition([1, 1, 10, 10], "b", 0.95, 1.0),
        Recognition([0, 0, 9, 9], "a", 0.8, 1.0),
        Recognition([50, 50, 60, 60], "c", 0.7, 1.0),
    ]
    assert [r.label for r in rec_nms(recs, 0.5, True)] == ["b", "c"]
    assert [(r.label, r.score) for r in rec_nms(recs, 0.5, True, per_label=True)] == [
        ("b", 0.95),
        ("a", 0.9),
        ("c", 0.7),
    ]
    assert [r.score for r in rec_nms(recs, 0.5, False, per_label=True)] == [0.7, 0.8, 0.95]  # distances


# -- over hub serving, and the CLI ----------------------------------------------------------------------------------
def test_served_explain_field(served, photos, queries):
    g = {"gallery": "explain"}
    r = served.post(
        "image_recognition",
        {"operation": "add", "images": [b64(v) for v in photos.values()], "labels": list(photos), **g},
    ).json()
    assert r["status"] == "000", r
    body = served.post(
        "image_recognition", {"images": [b64(queries["cat_mirrored_crop"])], "explain": True, **g}
    ).json()
    assert body["status"] == "000", body
    item = body["results"][0]
    ex = item["explanation"]
    assert item["results"][0]["label"] == "cat"
    # general-lite 1.1.0 (threshold 0.2) searches more boxes: some are rejected by score_thres 0.9
    assert "kept" in {s["verdict"] for s in ex["searched"]} <= {"kept", "suppressed", "rejected"}
    assert any(b["dropped_by"] == "Global.threshold" for b in ex["detector"])
    plain = served.post("image_recognition", {"images": [b64(queries["cat_mirrored_crop"])], **g}).json()
    assert "explanation" not in plain["results"][0] and plain["results"][0]["results"] == item["results"]
    bad = served.post(
        "image_recognition", {"images": [b64(queries["cat_mirrored_crop"])], "explain": "yes", **g}
    ).json()
    assert bad["status"] == "101" and "'explain' must be true or false" in bad["msg"]
    with ShituClient(served.url) as client:  # the SDK, unchanged user code
        res = client.recognize(
            queries["coffee_rescaled_crop"],
            gallery="explain",
            explain=True,
            append_whole_image="fallback",
            crop_padding=0.0,
            score_thres=0.9,  # over the tight cup box's score (the gallery's auto threshold would accept it)
        )
    assert res.explanation.whole_image == "fallback: searched (no detected box was accepted)"
    assert res.to_dict()["explanation"]["searched"][0]["dropped_by"] == "IndexProcess.score_thres"


def test_cli_explain_against_the_server(served, queries, tmp_path, capsys, monkeypatch):
    from shitu.serving import cli

    if "shitu.serving.cli.recognize" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "shitu.serving.cli.recognize"))
    with ShituClient(served.url) as client:
        client.gallery_add([queries["collage_cat_and_coffee"]], ["collage"], gallery="explain-cli")
    query = tmp_path / "coffee.png"
    cv2.imwrite(str(query), queries["coffee_rescaled_crop"])
    rc = cli.main(
        [
            "recognize",
            str(query),
            "--server",
            served.url,
            "--gallery",
            "explain-cli",
            "--explain",
            "--param",
            "score_thres=0.4",
            "--draw",
            str(tmp_path / "why"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == EXIT_OK, out
    # The cup's detected boxes match the collage too weakly (general-lite 1.2.0: <= 0.33); the whole image (the cup
    # and its table, 0.45) is accepted.
    assert "rejected by IndexProcess.score_thres: best match collage" in out
    assert "dropped by Global.threshold" in out
    assert (tmp_path / "why" / "coffee.jpg").is_file()


def test_cli_explain_prints_why_and_draws_dropped_boxes(tmp_path, engine, photos, queries, capsys, monkeypatch):
    from shitu.serving import cli
    from shitu.serving.engine.engine import load_engine

    if "shitu.serving.cli.recognize" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "shitu.serving.cli.recognize"))
    gallery = tmp_path / "g"
    e = load_engine(gallery=gallery)
    e.gallery_add(list(photos.values()), list(photos))
    e.close()
    query = tmp_path / "cat.png"
    cv2.imwrite(str(query), queries["cat_mirrored_crop"])
    rc = cli.main(["recognize", str(query), "--gallery", str(gallery), "--explain", "--draw", str(tmp_path / "why")])
    out = capsys.readouterr().out
    assert rc == EXIT_OK, out
    assert "dropped by Global.threshold" in out and "suppressed by Global.rec_nms_thresold" in out
    why = cv2.imread(str(tmp_path / "why" / "cat.jpg"))
    plain_rc = cli.main(["recognize", str(query), "--gallery", str(gallery), "--draw", str(tmp_path / "plain")])
    assert plain_rc == EXIT_OK
    plain = cv2.imread(str(tmp_path / "plain" / "cat.jpg"))
    assert why.shape == plain.shape and np.abs(why.astype(int) - plain.astype(int)).sum() > 0  # dashed extras
    assert cli.main(["recognize", str(query), "--explain", "--json", "--gallery", str(gallery)]) == EXIT_OK
    assert '"explanation"' in capsys.readouterr().out


def test_served_explain_does_not_echo_a_large_labels_filter(served, photos, queries):
    """Issue 27.4: the ``IndexProcess.labels`` filter used to be copied into every image's explanation (a 5.6 MB
    request answered 157 MB). Its count is now bounded (``Limits.max_filter_labels``) and the explanation reports
    only how many labels were filtered on."""
    g = {"gallery": "explain-labels"}
    added = served.post(
        "image_recognition", {"operation": "add", "images": [b64(photos["cat"])], "labels": ["cat"], **g}
    )
    assert added.json()["status"] == "000", added.text
    labels = ["cat"] + [f"label-{i:04d}-" + "x" * 90 for i in range(999)]  # 1000 labels, ~100 kB
    images = [b64(queries["cat_mirrored_crop"])] * 4
    r = served.post("image_recognition", {"images": images, "explain": True, "labels": labels, **g})
    body = r.json()
    assert body["status"] == "000", body
    assert len(r.content) < 64_000, len(r.content)  # four explanations, none of them carrying the 100 kB filter
    for item in body["results"]:
        assert item["explanation"]["params"]["IndexProcess.labels"] == 1000
        assert item["results"][0]["label"] == "cat"
    too_many = served.post("image_recognition", {"images": images, "explain": True, "labels": labels + ["y"], **g})
    assert too_many.json()["status"] == "101", too_many.text
    assert "1001 labels" in too_many.json()["msg"] and "Limits.max_filter_labels" in too_many.json()["msg"]
    assert len(too_many.content) < 2_000
