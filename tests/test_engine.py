"""The recognition engine on the real default models and real photographs."""

from __future__ import annotations

import numpy as np
import pytest

from shitu.params import merge
from shitu.serving.engine.detection import nms
from shitu.serving.engine.pipeline import accepts, rec_nms
from shitu.serving.gallery import Gallery
from shitu.serving.results import Recognition


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_detector_finds_the_cat_in_chelsea(engine, photos):
    det = engine.detect([photos["cat"]], append_whole_image=False)[0]
    assert len(det) >= 1
    # Chelsea's head and body fill the middle of the 451x300 photo.
    cat_region = [60, 0, 420, 300]
    assert iou(det.xyxy[0].tolist(), cat_region) > 0.5
    assert det.scores[0] >= 0.3


def test_detector_box_in_a_collage(engine, queries):
    det = engine.detect([queries["collage_cat_and_coffee"]], append_whole_image=False, threshold=0.25)[0]
    cat_box, cup_box = [20, 40, 380, 310], [400, 60, 740, 360]
    assert max(iou(b, cat_box) for b in det.xyxy.tolist()) > 0.5
    assert max(iou(b, cup_box) for b in det.xyxy.tolist()) > 0.3


@pytest.mark.parametrize(
    "name,label", [("cat_mirrored_crop", "cat"), ("coffee_rescaled_crop", "coffee"), ("rocket_bright_blur", "rocket")]
)
def test_other_view_gets_the_right_label(engine, photo_gallery, queries, name, label):
    found = engine.recognize([queries[name]], gallery=photo_gallery)[0]
    assert found, f"{name}: nothing recognised"
    assert found[0].label == label
    assert found[0].score >= 0.8


def test_collage_recognises_both_objects(engine, photo_gallery, queries):
    found = engine.recognize(
        [queries["collage_cat_and_coffee"]],
        gallery=photo_gallery,
        threshold=0.25,
        append_whole_image=False,
        rec_nms_thresold=0.3,
    )[0]
    assert {"cat", "coffee"} <= {r.label for r in found}


def test_object_absent_from_gallery_is_rejected(engine, photo_gallery, queries):
    assert engine.recognize([queries["not_in_gallery_ihc"]], gallery=photo_gallery)[0] == []
    # ...and it is score_thres that rejects it: with a permissive threshold something comes back.
    assert engine.recognize([queries["not_in_gallery_ihc"]], gallery=photo_gallery, score_thres=0.0)[0]


def test_threshold_controls_box_count(engine, photos):
    img = photos["astronaut"]
    low = engine.detect([img], threshold=0.1, max_det_results=50, append_whole_image=False)[0]
    high = engine.detect([img], threshold=0.5, max_det_results=50, append_whole_image=False)[0]
    assert len(high) < len(low)
    assert (high.scores >= 0.5).all() and (low.scores >= 0.1).all()


def test_max_det_results_caps_boxes(engine, photos):
    img = photos["astronaut"]
    many = engine.detect([img], threshold=0.05, max_det_results=50, append_whole_image=False)[0]
    assert len(many) > 2
    two = engine.detect([img], threshold=0.05, max_det_results=2, append_whole_image=False)[0]
    assert len(two) == 2
    np.testing.assert_allclose(two.scores, many.scores[:2])  # the best ones are kept


def test_whole_image_box_on_off(engine, photos):
    img = photos["coffee"]
    on = engine.detect([img], append_whole_image=True)[0]
    off = engine.detect([img], append_whole_image=False)[0]
    assert len(on) == len(off) + 1
    assert on.is_whole_image[-1] and not off.is_whole_image.any()
    assert on.xyxy[-1].tolist() == [0, 0, img.shape[1], img.shape[0]]
    only_whole = engine.detect([img], threshold=1.0)[0]
    assert len(only_whole) == 1 and only_whole.is_whole_image[0]


def test_whole_image_result_is_marked(engine, photo_gallery, queries):
    found = engine.recognize([queries["coffee_rescaled_crop"]], gallery=photo_gallery, threshold=1.0)[0]
    assert len(found) == 1 and found[0].is_whole_image and found[0].label == "coffee"
    assert (
        engine.recognize(
            [queries["coffee_rescaled_crop"]], gallery=photo_gallery, threshold=1.0, append_whole_image=False
        )[0]
        == []
    )


def test_score_thres_ip_higher_is_better(engine, photo_gallery, queries):
    q = queries["cat_mirrored_crop"]
    best = engine.recognize([q], gallery=photo_gallery)[0][0].score
    assert engine.recognize([q], gallery=photo_gallery, score_thres=best - 0.01)[0]
    assert engine.recognize([q], gallery=photo_gallery, score_thres=min(best + 0.01, 1.0))[0] == []


def test_score_thres_l2_smaller_is_better(engine, photos, queries, tmp_path):
    l2 = Gallery.create(tmp_path / "l2", engine.embedding_size, index_method="Flat", dist_type="L2")
    l2.add(engine.embed(list(photos.values())), list(photos))
    q = queries["cat_mirrored_crop"]
    found = engine.recognize([q], gallery=l2, score_thres=2.0)[0]
    assert found and found[0].label == "cat"
    dist = found[0].score
    assert 0 <= dist < 0.4  # squared L2 of unit vectors = 2 - 2 cos
    assert engine.recognize([q], gallery=l2, score_thres=dist + 0.01)[0]
    assert engine.recognize([q], gallery=l2, score_thres=dist - 0.01)[0] == []
    # Order: smaller distance first.
    many = engine.recognize(
        [queries["collage_cat_and_coffee"]], gallery=l2, score_thres=2.0, threshold=0.25, rec_nms_thresold=1.0
    )[0]
    assert [r.score for r in many] == sorted(r.score for r in many)


def test_rec_nms_threshold_effect(engine, photo_gallery, queries):
    q = queries["collage_cat_and_coffee"]
    kw = dict(gallery=photo_gallery, threshold=0.2, max_det_results=10, score_thres=0.5)
    loose = engine.recognize([q], rec_nms_thresold=1.0, **kw)[0]
    strict = engine.recognize([q], rec_nms_thresold=0.05, **kw)[0]
    assert len(strict) < len(loose)
    # The correctly spelled alias means the same thing.
    assert [r.bbox for r in engine.recognize([q], rec_nms_threshold=0.05, **kw)[0]] == [r.bbox for r in strict]


def test_rec_nms_unit():
    recs = [
        Recognition([0, 0, 10, 10], "a", 0.9, 1.0),
        Recognition([1, 1, 10, 10], "b", 0.95, 1.0),
        Recognition([50, 50, 60, 60], "c", 0.7, 1.0),
    ]
    assert [r.label for r in rec_nms(recs, 0.5, True)] == ["b", "c"]
    assert [r.label for r in rec_nms(recs, 0.5, False)] == ["c", "a"]  # distances: smaller first
    assert accepts(0.9, 0.8, True) and not accepts(0.7, 0.8, True)
    assert accepts(0.7, 0.8, False) and not accepts(0.9, 0.8, False)


def test_nms_unit():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5).tolist() == [0, 2]
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.95).tolist() == [0, 1, 2]


def test_detect_decodes_only_boxes_over_the_threshold_with_the_same_result(engine, photos, queries):
    """``detect`` without an explanation skips decoding cells under ``Global.threshold``: the boxes it keeps are
    exactly those of the full decode (every raw box, NMS, then the threshold), at several thresholds."""
    from shitu.serving.engine.detection import select_boxes

    for threshold in (0.1, 0.2, 0.4):
        p = engine.params.override({"Global.threshold": threshold, "Global.max_det_results": 50})
        for img in [*photos.values(), *queries.values()]:
            fast = engine.detector.detect(img, p)
            full = select_boxes(engine.detector.raw(img, p["Global.det_nms_threshold"]), img.shape[0], img.shape[1], p)
            assert np.array_equal(fast.xyxy, full.xyxy) and np.array_equal(fast.scores, full.scores)
            assert len(engine.detector.raw(img, 0.5, min_score=threshold)) <= len(engine.detector.raw(img, 0.5))


def test_embeddings_are_normalised_and_sized_from_the_model(engine, photos):
    assert engine.embedding_size == 512
    e = engine.embed([photos["cat"], photos["coffee"]])
    assert e.shape == (2, 512) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    raw = engine.embed([photos["cat"]], normalize=False)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3
    bits = engine.embed([photos["cat"]], binarize=True)
    assert bits.dtype == np.uint8 and bits.shape == (1, 64)


def test_batching_gives_the_same_embeddings(engine, photos):
    imgs = list(photos.values())
    one = engine.embed(imgs, batch_size=1)
    many = engine.embed(imgs, batch_size=4)
    np.testing.assert_allclose(one, many, atol=1e-4)


def test_extract_with_boxes(engine, photos):
    img = photos["coffee"]
    (feats,) = engine.extract([img], [[[100, 10, 450, 390], [0, 0, 300, 200]]])
    assert feats.shape == (2, 512)
    from shitu.serving.engine.engine import EngineError

    with pytest.raises(EngineError, match="image 0"):
        engine.extract([img], [[[10, 10, 5, 5]]])


def test_unknown_request_parameter_is_named(engine, photos):
    from shitu.params import ParamError

    with pytest.raises(ParamError, match="thresold"):
        engine.detect([photos["cat"]], thresold=0.3)
    with pytest.raises(ParamError, match="cpu_num_threads"):
        engine.detect([photos["cat"]], cpu_num_threads=4)


def test_onednn_matches_plain_cpu(models_dir, photos):
    """The oneDNN pass lists in shitu_model.yml are numerically verified against oneDNN off."""
    from shitu.model_spec import ModelSpec
    from shitu.serving.engine.predictor import Predictor, RuntimeOptions
    from shitu.serving.engine.transforms import Transforms

    for sub in ("det", "rec"):
        spec = ModelSpec.from_dir(models_dir / sub)
        x = Transforms(spec.transform_ops, spec.input_color)(photos["cat"]).image[None]
        on = Predictor(spec, RuntimeOptions(enable_mkldnn=True))
        off = Predictor(spec, RuntimeOptions(enable_mkldnn=False))
        a, b = on.run({on.input_names[0]: x}), off.run({off.input_names[0]: x})
        for name in on.output_names:
            np.testing.assert_allclose(a[name], b[name], atol=1e-3, err_msg=f"{sub}/{name}")


def test_onnxruntime_backend_matches_paddle(models_dir, photos):
    pytest.importorskip("onnxruntime")
    from shitu.model_spec import ModelSpec
    from shitu.serving.engine.predictor import Predictor, RuntimeOptions
    from shitu.serving.engine.transforms import Transforms

    spec = ModelSpec.from_dir(models_dir / "rec")
    x = Transforms(spec.transform_ops, spec.input_color)(photos["cat"]).image[None]
    pd = Predictor(spec, RuntimeOptions())
    ort = Predictor(spec, RuntimeOptions(backend="onnxruntime"))
    np.testing.assert_allclose(
        pd.run({pd.input_names[0]: x})[pd.output_names[0]],
        ort.run({ort.input_names[0]: x})[ort.output_names[0]],
        atol=1e-3,
    )


def test_params_merge_precedence():
    p = merge({"Global": {"threshold": 0.3}}, {"Global.threshold": 0.4}, {"threshold": 0.5})
    assert p["Global.threshold"] == 0.5
    assert merge({"IndexProcess": {"score_thres": 0.8}})["score_thres"] == 0.8


def test_onnxruntime_backend_end_to_end(models_dir, photos, photo_gallery, queries):
    """Global.det_backend / rec_backend = onnxruntime: same boxes and labels as paddle.inference."""
    pytest.importorskip("onnxruntime")
    from shitu.model_spec import ModelSpec
    from shitu.serving.engine.engine import Engine

    from .conftest import GENERAL_LITE

    ort = Engine(
        ModelSpec.from_dir(models_dir / "det"),
        ModelSpec.from_dir(models_dir / "rec"),
        merge(GENERAL_LITE, {"Global": {"det_backend": "onnxruntime", "rec_backend": "onnxruntime"}}),
    )
    paddle_engine = Engine(
        ModelSpec.from_dir(models_dir / "det"),
        ModelSpec.from_dir(models_dir / "rec"),
        merge(GENERAL_LITE, {"Global": {"det_backend": "paddle", "rec_backend": "paddle"}}),
    )
    a = ort.detect([photos["astronaut"]])[0]
    b = paddle_engine.detect([photos["astronaut"]])[0]
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=0.5)
    found = ort.recognize([queries["collage_cat_and_coffee"]], gallery=photo_gallery, threshold=0.25)[0]
    assert {"cat", "coffee"} <= {r.label for r in found}
