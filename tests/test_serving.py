"""End to end: the four modules under the real `hub serving`, over HTTP, on the default models."""

from __future__ import annotations

import concurrent.futures as cf
import time

import numpy as np
import pytest
import requests

from .conftest import ADMIN_TOKEN, b64, warm_every_worker, workers_with_gallery_open


def ok(resp) -> object:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "000", body
    return body["results"]


def error(resp, *words: str) -> str:
    body = resp.json()
    assert body["status"] != "000", body
    for w in words:
        assert w in body["msg"], body
    return body["msg"]


def test_mainbody_detection(served, photos):
    res = ok(served.post("mainbody_detection", {"images": [b64(photos["cat"]), b64(photos["astronaut"])]}))
    assert [r["index"] for r in res] == [0, 1]
    cat = res[0]
    assert (cat["width"], cat["height"]) == (451, 300)
    boxes = [b for b in cat["boxes"] if not b["is_whole_image"]]
    assert boxes and boxes[0]["bbox"][2] - boxes[0]["bbox"][0] > 200
    assert cat["boxes"][-1] == {"bbox": [0, 0, 451, 300], "score": 1.0, "is_whole_image": True}


def test_per_request_threshold_returns_fewer_boxes(served, photos):
    img = [b64(photos["astronaut"])]
    low = ok(served.post("mainbody_detection", {"images": img, "threshold": 0.1, "max_det_results": 20}))
    high = ok(served.post("mainbody_detection", {"images": img, "threshold": 0.6, "max_det_results": 20}))
    assert len(high[0]["boxes"]) < len(low[0]["boxes"])
    nested = ok(
        served.post(
            "mainbody_detection", {"images": img, "params": {"Global": {"threshold": 0.6, "max_det_results": 20}}}
        )
    )
    assert nested == high


def test_feature_extraction(served, photos):
    img = photos["coffee"]
    res = ok(
        served.post("feature_extraction", {"images": [b64(img)], "boxes": [[[100, 10, 450, 390], [0, 0, 200, 200]]]})
    )
    e = np.array(res[0]["embeddings"])
    assert e.shape == (2, 512) and res[0]["dim"] == 512 and res[0]["normalized"] is True
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    whole = ok(served.post("feature_extraction", {"images": [b64(img)]}))
    assert whole[0]["boxes"] == [[0, 0, 600, 400]] and len(whole[0]["embeddings"]) == 1


def test_index_search_add_search_remove(served, photos, queries):
    g = {"gallery": "srv-search"}
    emb = ok(served.post("feature_extraction", {"images": [b64(v) for v in photos.values()]}))
    vectors = [r["embeddings"][0] for r in emb]
    added = ok(served.post("index_search", {"operation": "add", "embeddings": vectors, "labels": list(photos), **g}))
    assert added["added"] == len(photos)
    q = ok(served.post("feature_extraction", {"images": [b64(queries["cat_mirrored_crop"])]}))[0]["embeddings"]
    hits = ok(served.post("index_search", {"embeddings": q, "return_k": 3, "score_thres": 0.0, **g}))
    assert hits[0]["matches"][0]["label"] == "cat" and len(hits[0]["matches"]) == 3
    info = ok(served.post("index_search", {"operation": "info", **g}))
    assert info["count"] == len(photos) and "path" not in info
    listed = ok(served.post("index_search", {"operation": "list", "label": "cat", **g}))
    assert [r["label"] for r in listed] == ["cat"]
    ok(served.post("index_search", {"operation": "remove", "labels": ["cat"], **g}))
    hits = ok(served.post("index_search", {"embeddings": q, "return_k": 3, "score_thres": 0.0, **g}))
    assert "cat" not in [m["label"] for m in hits[0]["matches"]]
    error(served.post("index_search", {"embeddings": [[0.1, 0.2]], **g}), "512")


def test_detection_and_extraction_modules_have_no_gallery_operations(served, photos):
    """Only index_search and image_recognition keep galleries (and protect their writes): a ``remove`` sent to the
    detection or extraction module is an unknown operation and removes nothing (found by Schemathesis: the typed
    request path had put ``remove`` / ``info`` on every module, where nothing asks for the token)."""
    g = {"gallery": "srv-no-remove"}
    vectors = [r["embeddings"][0] for r in ok(served.post("feature_extraction", {"images": [b64(photos["cat"])]}))]
    ok(served.post("index_search", {"operation": "add", "embeddings": vectors, "labels": ["cat"], **g}))
    for module in ("mainbody_detection", "feature_extraction"):
        for operation in ("remove", "info"):
            error(served.post(module, {"operation": operation, "labels": ["cat"], **g}), "unknown operation")
    assert ok(served.post("index_search", {"operation": "info", **g}))["count"] == 1


def test_image_recognition_with_gallery_maintenance(served, photos, queries):
    g = {"gallery": "srv-rec"}
    added = ok(
        served.post(
            "image_recognition",
            {"operation": "add", "images": [b64(v) for v in photos.values()], "labels": list(photos), **g},
        )
    )
    assert len(added["ids"]) == len(photos)
    names = ["cat_mirrored_crop", "coffee_rescaled_crop", "rocket_bright_blur", "not_in_gallery_ihc"]
    res = ok(served.post("image_recognition", {"images": [b64(queries[n]) for n in names], **g}))
    labels = [[r["label"] for r in item["results"]] for item in res]
    assert labels[0][0] == "cat" and labels[1][0] == "coffee" and labels[2][0] == "rocket"
    assert labels[3] == []
    top = res[0]["results"][0]
    assert set(top) >= {"bbox", "label", "score", "det_score", "is_whole_image"}
    # Remove the cat: the next request no longer finds it.
    ok(served.post("image_recognition", {"operation": "remove", "labels": ["cat"], **g}))
    again = ok(served.post("image_recognition", {"images": [b64(queries["cat_mirrored_crop"])], **g}))
    assert "cat" not in [r["label"] for r in again[0]["results"]]


def test_partial_batch_failure_keeps_other_results(served, photos):
    res = ok(served.post("mainbody_detection", {"images": [b64(photos["cat"]), "%%%", b64(photos["coffee"])]}))
    assert "error" in res[1] and "base64" in res[1]["error"]
    assert res[0]["boxes"] and res[2]["boxes"]


@pytest.mark.parametrize(
    "payload,words",
    [
        ({}, ["missing field 'images'"]),
        ({"images": []}, ["empty list"]),
        ({"images": "abc"}, ["must be a list"]),
        ({"images": ["@@not base64@@"]}, ["image 0", "base64"]),
        ({"images": ["aGVsbG8gd29ybGQ="]}, ["image 0", "not an image"]),
        ({"images": [123]}, ["image 0", "base64 string"]),
        ({"images": ["aGVsbG8="], "thresold": 0.3}, ["thresold", "unknown parameter"]),
        ({"images": ["aGVsbG8="], "threshold": "high"}, ["Global.threshold", "expected float"]),
        ({"images": ["aGVsbG8="], "cpu_num_threads": 8}, ["cpu_num_threads", "fixed when the service starts"]),
        ({"operation": "explode"}, ["unknown operation"]),
        ({"images": ["aGVsbG8="], "gallery": "../../etc"}, ["invalid gallery name"]),
        ({"operation": "add", "images": ["aGVsbG8="]}, ["image 0"]),
        ({"operation": "remove"}, ["needs 'ids'"]),
    ],
)
def test_bad_requests_get_an_error_envelope(served, payload, words):
    error(served.post("image_recognition", payload), *words)


def test_non_json_bodies_get_an_envelope_and_server_keeps_serving(served, photos):
    r = requests.post(f"{served.url}/predict/image_recognition", data=b"\x89PNG not json", timeout=30)
    assert r.status_code == 415 and r.json()["status"] == "415"
    r = requests.post(
        f"{served.url}/predict/image_recognition",
        data="{broken",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["msg"]
    r = requests.post(f"{served.url}/predict/image_recognition", json=[1, 2], timeout=30)
    assert r.json()["status"] != "000"
    ok(served.post("mainbody_detection", {"images": [b64(photos["cat"])]}))


def test_scenarios_are_listed(served):
    res = ok(served.post("image_recognition", {"operation": "scenarios"}))
    names = {s["name"] for s in res}
    assert "general-lite" in names and any(s["default"] for s in res)


def test_in_process_hub_module(photos, hub_modules_installed):
    """The same module works in-process through hub.Module(name=...) after a real `hub install` (its own fixture:
    alone, this test used to depend on another test's server having installed the modules)."""
    import paddlehub as hub

    m = hub.Module(name="mainbody_detection")
    res = m.predict(images=[b64(photos["cat"])], threshold=0.3)
    assert res[0]["boxes"][-1]["is_whole_image"]


def _hub_call(module, request: dict, request_id: str):
    """PaddleHub's own ``predict_v2`` (as ``hub serving`` runs it, with shitu's hooks) on one request, in a Flask
    request context carrying ``request_id``."""
    from flask import Flask
    from paddlehub.serving import app_compat

    from shitu.serving.hub import request_log

    info = {"method_name": "serving_method", "module": module, "predict_args": {}}
    with Flask("shitu-test").test_request_context("/predict/image_recognition", method="POST"):
        token = request_log.REQUEST_ID.set(request_id)
        try:
            out = app_compat.predict_v2(info, request)
        finally:
            request_log.REQUEST_ID.reset(token)
    return out if isinstance(out, tuple) else (out, 200)


def test_client_faults_keep_paddlehubs_101_envelope(photos, hub_modules_installed):
    """The real module and engine: a bad parameter is the client's fault, answered "101" with HTTP 200."""
    import paddlehub as hub

    m = hub.Module(name="image_recognition")
    body, code = _hub_call(m, {"images": [b64(photos["cat"])], "thresold": 1}, "rid-client-1")
    assert code == 200 and body["status"] == "101" and "thresold" in body["msg"]
    assert body["request_id"] == "rid-client-1"
    body, code = _hub_call(m, {"images": [b64(photos["cat"])]}, "rid-ok-1")
    assert code == 200 and body["status"] == "000"


def test_fake_engine_value_error_answers_a_server_error_with_its_request_id(
    photos, hub_modules_installed, monkeypatch, caplog
):
    """A fake engine step (named so) raises a plain ``ValueError``, as numpy does inside the pipeline: that is the
    server's fault. It used to answer "101" with the internal message as if the client had sent a bad request; now
    a server-error envelope ("500", HTTP 500) names only the request id, and the log has the traceback."""
    import logging

    import paddlehub as hub

    m = hub.Module(name="image_recognition")
    engine = m.service.engine()

    def fake_recognize_raising_a_numpy_value_error(*args, **kwargs):
        raise ValueError("setting an array element with a sequence.")

    monkeypatch.setattr(engine, "recognize", fake_recognize_raising_a_numpy_value_error)
    with caplog.at_level(logging.ERROR, logger="shitu.serving"):
        body, code = _hub_call(m, {"images": [b64(photos["cat"])]}, "rid-internal-1")
    assert code == 500 and body["status"] == "500", body
    assert "rid-internal-1" in body["msg"] and body["request_id"] == "rid-internal-1"
    assert "array element" not in body["msg"] and "ValueError" not in body["msg"]
    logged = [r for r in caplog.records if "rid-internal-1" in r.getMessage()]
    assert logged and logged[0].exc_info and "array element" in logged[0].getMessage()


def test_envelope_table():
    from shitu.errors import Conflict, InternalError, NotFound, TooLarge, Unauthorized, Unavailable
    from shitu.params import ParamError
    from shitu.serving.engine.images import ImageError
    from shitu.serving.hub.service import RequestError, envelope_of

    for client in (RequestError("x"), ParamError("a", "b"), ImageError("x"), NotFound(), Conflict(), TooLarge()):
        assert envelope_of(client) == ("101", 200)
    assert envelope_of(Unauthorized()) == ("101", 200)
    assert envelope_of(Unavailable()) == ("503", 503)
    assert envelope_of(InternalError()) == ("500", 500)
    assert envelope_of(ValueError("numpy")) == ("500", 500)  # not a ShituError: never a client error


def test_multiprocess_gallery_change_seen_by_every_worker(served_multi, photos, queries):
    s = served_multi
    g = {"gallery": "srv-multi", "token": ADMIN_TOKEN}
    query = {"images": [b64(queries["rocket_bright_blur"])], "gallery": "srv-multi"}
    ok(s.post("image_recognition", {"operation": "add", "images": [b64(photos["flower"])], "labels": ["flower"], **g}))
    # Warm both workers up: each loads its models and opens the gallery (no rocket yet) in its own memory.
    warm_every_worker(s, query, "srv-multi")
    assert ok(s.post("image_recognition", query))[0]["results"] == []
    ok(s.post("image_recognition", {"operation": "add", "images": [b64(photos["rocket"])], "labels": ["rocket"], **g}))
    # Each worker follows the change log on its own (throttled) schedule: poll with a generous deadline until
    # every concurrent answer, from both workers, knows the rocket (no assumption on how long a request takes).
    deadline = time.monotonic() + 60
    while True:
        with cf.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: ok(s.post("image_recognition", query)), range(10)))
        if all(a[0]["results"] and a[0]["results"][0]["label"] == "rocket" for a in answers):
            break
        assert time.monotonic() < deadline, f"a worker never saw the added item: {answers}"
        time.sleep(0.2)
    assert len(workers_with_gallery_open(s, "srv-multi")) == 2  # both workers answered from their own copy


def test_shipped_config_files_are_the_documented_ones():
    """hub_modules/<name>/config.json (one module) and hub_modules/config.json (all four, 2 workers)."""
    import json
    from pathlib import Path

    from shitu.hub_modules import MODULES, module_dir
    from shitu.serving.hub.control import serving_config

    for m in MODULES:
        assert json.loads((module_dir(m) / "config.json").read_text()) == serving_config((m,), 8866, 1)
    both = json.loads((Path(module_dir(MODULES[0])).parent / "config.json").read_text())
    assert both == serving_config(MODULES, 8866, 2)
    assert both["use_multiprocess"] and both["workers"] == 2
    init = {"params": {"Global": {"threshold": 0.3}}}
    cfg = serving_config(MODULES, 8866, 2, init)
    assert init == {"params": {"Global": {"threshold": 0.3}}}  # the caller's mapping is not changed
    assert cfg["modules_info"]["image_recognition"]["init_args"]["params"]["Global"] == {
        "threshold": 0.3,
        "cpu_num_threads": 1,
    }
    mine = serving_config(MODULES, 8866, 2, {"params": {"Global.cpu_num_threads": 2}})
    assert mine["modules_info"]["index_search"]["init_args"]["params"] == {"Global.cpu_num_threads": 2}
