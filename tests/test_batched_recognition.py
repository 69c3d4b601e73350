"""Several images in one call: detection per image, the crops of all images through the recogniser together
(``serving/engine/pipeline.py``). Real default models, real photographs, a real faiss gallery; the answers are
compared with the same pipeline run one image at a time, on the same engine."""

from __future__ import annotations

import pytest

from shitu.serving.engine.pipeline import recognize

from .conftest import b64


def _same(batched, alone) -> None:
    assert len(batched) == len(alone)
    for got, want in zip(batched, alone):
        assert [(r.bbox, r.label, r.id, r.is_whole_image) for r in got] == [
            (r.bbox, r.label, r.id, r.is_whole_image) for r in want
        ]
        for a, b in zip(got, want):
            assert a.score == pytest.approx(b.score, abs=1e-4)
            assert a.det_score == pytest.approx(b.det_score, abs=1e-6)


def _images(photos, queries, n: int = 8):
    pool = list(queries.values()) + list(photos.values())
    return pool[:n]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"append_whole_image": False},
        {"append_whole_image": "fallback"},
        {"append_whole_image": "fallback", "score_thres": 0.99},
    ],
)
def test_recognizing_together_answers_equal_one_image_at_a_time_real_models(
    engine, photos, queries, photo_gallery, overrides
):
    params = engine.request_params(overrides)
    images = _images(photos, queries)
    alone = [recognize([img], engine.detector, engine.extractor, photo_gallery, params)[0] for img in images]
    batched = recognize(images, engine.detector, engine.extractor, photo_gallery, params)
    _same(batched, alone)
    assert any(alone) or overrides.get("score_thres") == 0.99


def test_engine_recognize_embeds_the_crops_of_all_images_in_one_call_real_models(
    engine, photos, queries, photo_gallery, monkeypatch
):
    """A spy around the real extractor counts its calls (every call still runs the real model)."""
    calls: list[int] = []
    real = engine.extractor.embed

    def spy(images, params=None, timer=None, **kw):
        calls.append(len(images))
        return real(images, params, timer, **kw) if timer is not None else real(images, params, **kw)

    monkeypatch.setattr(engine.extractor, "embed", spy)
    images = _images(photos, queries)
    found = engine.recognize(images, gallery=photo_gallery, append_whole_image=True)
    assert len(found) == len(images)
    assert len(calls) == 1 and calls[0] >= len(images)  # at least the whole image of each, all together


def test_image_recognition_request_with_several_images_equals_single_requests_real_service(photos, queries):
    """The in-process service (real default pack and its gallery): one request of several images, one of them
    undecodable, answers as one request per image would (the bad image keeps its own error)."""
    from shitu.serving.hub.service import RecognitionService

    svc = RecognitionService({})
    images = _images(photos, queries, 4)
    encoded = [b64(img) for img in images]
    together = svc.handle({"images": encoded[:2] + ["bm90IGFuIGltYWdl"] + encoded[2:], "score_thres": 0.0})
    assert "error" in together[2] and together[2]["index"] == 2
    rows = together[:2] + together[3:]
    for row, item in zip(rows, encoded):
        alone = svc.handle({"images": [item], "score_thres": 0.0})[0]
        assert [(r["bbox"], r["label"], r.get("id")) for r in row["results"]] == [
            (r["bbox"], r["label"], r.get("id")) for r in alone["results"]
        ]
        for a, b in zip(row["results"], alone["results"]):
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_explained_batch_equals_explained_single_images_real_models(engine, photos, queries, photo_gallery):
    """The explanation sink rides the batched pipeline: each image's explanation is the one it gets alone."""
    images = _images(photos, queries, 4)
    together = engine.recognize_explained(images, gallery=photo_gallery, append_whole_image="fallback")
    for img, (found, ex) in zip(images, together):
        ((alone, ex_alone),) = engine.recognize_explained([img], gallery=photo_gallery, append_whole_image="fallback")
        _same([found], [alone])
        assert [(s.bbox, s.verdict, [m.id for m in s.matches]) for s in ex.searched] == [
            (s.bbox, s.verdict, [m.id for m in s.matches]) for s in ex_alone.searched
        ]
        assert ex.whole_image == ex_alone.whole_image


def test_a_request_is_parsed_once_and_its_gallery_resolved_once_real_service(photos, queries, monkeypatch):
    """The real service and engine, with spies around the real functions: a recognition request used to be
    validated three times (``Service._overrides``, ``op_recognize``, ``Engine.recognize``) and its gallery looked up
    by name twice; now the edge parses it once and passes typed values (``params=``, the opened gallery) inward."""
    import sys

    from shitu.serving.engine.engine import Engine
    from shitu.serving.hub import request_models
    from shitu.serving.hub.service import RecognitionService

    merge_module = sys.modules["shitu.params.merge"]
    svc = RecognitionService({})
    request = {"images": [b64(img) for img in _images(photos, queries, 3)], "threshold": 0.3, "labels": ["cat"]}
    svc.handle(request)  # warm: the engine and its gallery are loaded
    flattened: list[object] = []
    by_name: list[object] = []
    real_flatten, real_gallery = merge_module.flatten, Engine.gallery

    def flatten_spy(layer, *args, **kwargs):
        flattened.append(layer)
        return real_flatten(layer, *args, **kwargs)

    def gallery_spy(self, name=None, *args, **kwargs):
        if name is None or isinstance(name, str):
            by_name.append(name)
        return real_gallery(self, name, *args, **kwargs)

    monkeypatch.setattr(merge_module, "flatten", flatten_spy)
    monkeypatch.setattr(request_models, "flatten", flatten_spy)
    monkeypatch.setattr(Engine, "gallery", gallery_spy)
    answer = svc.handle({**request, "explain": True})
    assert len(answer) == 3 and all("explanation" in a for a in answer)
    assert len(flattened) == 1 and len(by_name) == 1
