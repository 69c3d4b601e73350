"""PaddleX's and Paddle Serving's recognition APIs on a real ``hub serving`` (real models, real faiss, HTTP).

- PaddleClas's own Paddle Serving client (``deploy/paddleserving/recognition/pipeline_http_client.py``) runs
  unchanged but for its host/port and image path, when its source is available (see ``_paddleclas_client``);
- the same wire format (a JSON body *without* Content-Type) is also sent by this suite, so the route is always
  tested;
- the PaddleX client flow build -> add -> infer -> remove, every exchange checked against the documented shapes
  and, when an interpreter with ``paddlex[serving]`` is given in ``SHITU_PADDLEX_PYTHON``, against PaddleX's own
  pydantic schema (``tests/peer_clients/validate_paddlex.py``).
"""

from __future__ import annotations

import ast
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from shitu.serving.hub.service import RequestError
from tests.conftest import b64, start_served

TOKEN = "peer-admin-token-7c1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIENT_PATH = Path("deploy/paddleserving/recognition/pipeline_http_client.py")


@pytest.fixture(scope="module")
def peer_served(tmp_path_factory, photos):
    """hub serving with an admin token and default gallery ``peers`` holding cat / coffee / rocket."""
    from shitu.serving.hub import control as hub_serving

    s = start_served(tmp_path_factory.mktemp("peer-served"), init_args={"token": TOKEN, "gallery": "peers"})
    labels = ["cat", "coffee", "rocket"]
    r = s.post(
        "image_recognition",
        {"operation": "add", "labels": labels, "token": TOKEN, "images": [b64(photos[k]) for k in labels]},
    )
    assert r.json()["status"] == "000", r.text
    yield s
    hub_serving.stop(s.proc)


def _recognized(served, image) -> list[dict]:
    r = served.post("image_recognition", {"images": [b64(image)]})
    assert r.json()["status"] == "000", r.text
    return r.json()["results"][0]["results"]


# -- Paddle Serving (PaddleClas deploy/paddleserving/recognition) ---------------------------------------------------
def _paddleclas_client() -> Path | None:
    """PaddleClas's pipeline_http_client.py: in the installed ``paddleclas`` package, else in the PaddleClas source
    tree named by ``SHITU_PADDLECLAS_SRC``. (The ``paddleclas`` wheels on PyPI, 2.4.3 to 2.6.0, do not ship
    ``deploy/paddleserving``.)"""
    roots = []
    try:
        import paddleclas

        roots.append(Path(paddleclas.__file__).parent)
    except ImportError:
        pass
    if os.environ.get("SHITU_PADDLECLAS_SRC"):
        roots.append(Path(os.environ["SHITU_PADDLECLAS_SRC"]))
    return next((r / CLIENT_PATH for r in roots if (r / CLIENT_PATH).is_file()), None)


def test_real_paddleclas_pipeline_http_client_runs_unchanged(peer_served, queries, tmp_path):
    client = _paddleclas_client()
    if client is None:
        pytest.skip(
            f"PaddleClas's {CLIENT_PATH} not found: the paddleclas wheels do not ship it; set "
            "SHITU_PADDLECLAS_SRC to a PaddleClas source tree to run it"
        )
    source = client.read_text()
    assert source.count("127.0.0.1:18081") == 1 and source.count("../../drink_dataset_v2.0/test_images/001.jpeg") == 1
    image = tmp_path / "query.jpg"
    image.write_bytes(base64.b64decode(b64(queries["coffee_rescaled_crop"])))
    host_port = peer_served.url.removeprefix("http://")
    script = tmp_path / "pipeline_http_client.py"  # only the host/port and the image path are changed
    script.write_text(
        source.replace("127.0.0.1:18081", host_port).replace(
            "../../drink_dataset_v2.0/test_images/001.jpeg", str(image)
        )
    )
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    answer = ast.literal_eval(out.stdout.strip().splitlines()[-1])  # the client prints r.json()
    assert answer["err_no"] == 0 and answer["err_msg"] == "" and answer["key"] == ["result"], answer
    objects = ast.literal_eval(answer["value"][0])
    assert objects and objects[0]["rec_docs"] == "coffee", objects


def test_real_paddle_serving_wire_format_without_content_type(peer_served, queries):
    image = queries["cat_mirrored_crop"]
    body = json.dumps({"key": ["image"], "value": [b64(image)]})
    r = requests.post(f"{peer_served.url}/recognition/prediction", data=body, timeout=120)  # no Content-Type
    assert "Content-Type" not in r.request.headers
    answer = r.json()
    assert r.status_code == 200 and answer == {
        **answer,
        "err_no": 0,
        "err_msg": "",
        "key": ["result"],
        "tensors": [],
    }, answer
    assert set(answer) == {"err_no", "err_msg", "key", "value", "tensors"}
    objects = ast.literal_eval(answer["value"][0])
    expected = _recognized(peer_served, image)
    assert [list(o) for o in objects] == [["bbox", "rec_docs", "rec_scores"]] * len(objects)
    assert [(o["bbox"], o["rec_docs"], o["rec_scores"]) for o in objects] == [
        (e["bbox"], e["label"], e["score"]) for e in expected
    ]
    assert objects[0]["rec_docs"] == "cat"


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"key": ["img"], "value": ["aGVsbG8="]}, "no 'image' among the keys"),
        ({"key": ["image"], "value": []}, "two lists of the same length"),
        ({"key": ["image"], "value": ["http://example.com/a.jpg"]}, "does not fetch images from URLs"),
        ({"key": ["image"], "value": ["bm90IGFuIGltYWdl"]}, "not an image"),
        ({"key": ["image"], "value": ["aGVsbG8="], "fetch": ["x"]}, "unknown field(s) ['fetch']"),
        ("not json", "not valid JSON"),
    ],
)
def test_real_paddle_serving_bad_request_names_the_problem(peer_served, body, needle):
    data = body if isinstance(body, str) else json.dumps(body)
    answer = requests.post(f"{peer_served.url}/recognition/prediction", data=data, timeout=60).json()
    assert answer["err_no"] == 5000 and needle in answer["err_msg"], answer
    assert "/" not in answer["err_msg"].replace("http://example.com/a.jpg", "")  # no server paths


# -- PaddleX PP-ShiTuV2 ------------------------------------------------------------------------------------------
class PaddleXClient:
    """The documented PaddleX client flow: POST JSON to ``<url>/<endpoint>``, read ``result``; records exchanges."""

    OPERATIONS = {
        "/shitu-index-build": "buildIndex",
        "/shitu-index-add": "addImagesToIndex",
        "/shitu-index-remove": "removeImagesFromIndex",
        "/shitu-infer": "infer",
    }

    def __init__(self, url: str, headers: dict | None = None):
        self.url, self.headers, self.exchanges = url, headers or {}, []

    def call(self, endpoint: str, payload: dict, expect: int = 200) -> dict:
        r = requests.post(self.url + endpoint, json=payload, headers=self.headers, timeout=300)
        self.exchanges.append(
            {"operation": self.OPERATIONS[endpoint], "request": payload, "response": r.json(), "status": r.status_code}
        )
        assert r.status_code == expect, r.text
        check_envelope(r.json(), r.status_code)
        return r.json()


def check_envelope(answer: dict, status: int) -> None:
    """PaddleX's documented envelope: logId (str), errorCode (int), errorMsg (str), result on success."""
    assert isinstance(answer["logId"], str) and answer["logId"]
    if status == 200:
        assert answer["errorCode"] == 0 and answer["errorMsg"] == "Success" and isinstance(answer["result"], dict)
    else:
        assert answer["errorCode"] == status and isinstance(answer["errorMsg"], str) and "result" not in answer


def check_infer_result(result: dict) -> None:
    """``InferResult``: detectedObjects [{bbox: 4 numbers, recResults: [{label: str, score: number}], score}]."""
    assert set(result) == {"detectedObjects", "image"}
    for obj in result["detectedObjects"]:
        assert set(obj) == {"bbox", "recResults", "score"}
        assert len(obj["bbox"]) == 4 and all(isinstance(v, (int, float)) for v in obj["bbox"])
        assert isinstance(obj["score"], (int, float))
        for rec in obj["recResults"]:
            assert set(rec) == {"label", "score"} and isinstance(rec["label"], str)
            assert isinstance(rec["score"], (int, float))


def _validate_with_paddlex_schema(exchanges: list[dict], tmp_path: Path) -> None:
    python = os.environ.get("SHITU_PADDLEX_PYTHON")
    if not python:
        return
    path = tmp_path / "exchanges.json"
    path.write_text(json.dumps(exchanges))
    validator = Path(__file__).parent / "peer_clients" / "validate_paddlex.py"
    out = subprocess.run([python, str(validator), str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("valid ") == len(exchanges)


def test_real_paddlex_client_flow_build_add_infer_remove(peer_served, photos, queries, tmp_path):
    px = PaddleXClient(peer_served.url, AUTH)
    pair = lambda label: {"image": b64(photos[label]), "label": label}  # noqa: E731
    built = px.call("/shitu-index-build", {"imageLabelPairs": [pair("cat"), pair("rocket")]})["result"]
    key = built["indexKey"]
    assert built["imageCount"] == 2 and key.startswith("paddlex-")
    assert px.call("/shitu-index-add", {"imageLabelPairs": [pair("coffee")], "indexKey": key})["result"] == {
        "imageCount": 3
    }

    result = px.call(
        "/shitu-infer", {"image": b64(queries["coffee_rescaled_crop"]), "indexKey": key, "topk": 2, "recThreshold": 0.0}
    )["result"]
    check_infer_result(result)
    assert result["image"] is None
    best = max((r for o in result["detectedObjects"] for r in o["recResults"]), key=lambda r: r["score"])
    assert best["label"] == "coffee"
    assert all(len(o["recResults"]) <= 2 for o in result["detectedObjects"])

    # ids number the index's images from 0 in the order added (cat 0, rocket 1, coffee 2), as in PaddleX
    assert px.call("/shitu-index-remove", {"ids": [2], "indexKey": key})["result"] == {"imageCount": 2}
    result = px.call(
        "/shitu-infer",
        {"image": b64(queries["coffee_rescaled_crop"]), "indexKey": key, "recThreshold": 0.0, "visualize": True},
    )["result"]
    check_infer_result(result)
    assert "coffee" not in {r["label"] for o in result["detectedObjects"] for r in o["recResults"]}
    drawn = np.frombuffer(base64.b64decode(result["image"]), np.uint8)
    import cv2

    assert cv2.imdecode(drawn, cv2.IMREAD_COLOR).shape[:2] == queries["coffee_rescaled_crop"].shape[:2]

    # without indexKey: the served module's default gallery ("peers"); detThreshold 0.5 finds no box on this photo,
    # so the whole image is searched (as in PaddleX)
    result = px.call("/shitu-infer", {"image": b64(queries["rocket_bright_blur"]), "detThreshold": 0.5})["result"]
    assert result["detectedObjects"] and "rocket" in {
        r["label"] for o in result["detectedObjects"] for r in o["recResults"]
    }
    _validate_with_paddlex_schema(px.exchanges, tmp_path)


@pytest.mark.parametrize(
    "endpoint, payload, needle",
    [
        ("/shitu-infer", {"image": "https://example.com/cat.jpg"}, "does not fetch images from URLs"),
        ("/shitu-infer", {"image": "aGVsbG8=", "topK": 3}, "unknown field(s) ['topK']"),
        ("/shitu-infer", {"image": "aGVsbG8=", "topk": "3"}, "field 'topk' must be an integer"),
        ("/shitu-infer", {"image": "aGVsbG8=", "detThreshold": 7}, "Global.threshold"),
        ("/shitu-infer", {"image": "aGVsbG8=", "indexKey": "../etc"}, "invalid indexKey"),
        ("/shitu-infer", {"image": "aGVsbG8=", "indexKey": "no-such-index"}, "no gallery named 'no-such-index'"),
        ("/shitu-infer", {"image": "bm90IGFuIGltYWdl"}, "not an image"),
        ("/shitu-index-build", {"imageLabelPairs": []}, "non-empty list"),
        (
            "/shitu-index-add",
            {"imageLabelPairs": [{"image": "aGVsbG8=", "label": "x"}], "indexKey": "nope"},
            "no gallery named 'nope'",
        ),
        ("/shitu-index-remove", {"ids": [-1], "indexKey": "peers"}, "integers >= 0"),
    ],
)
def test_real_paddlex_bad_request_names_the_problem(peer_served, endpoint, payload, needle, tmp_path):
    px = PaddleXClient(peer_served.url, AUTH)
    answer = px.call(endpoint, payload, expect=422)
    assert needle in answer["errorMsg"], answer
    _validate_with_paddlex_schema(px.exchanges, tmp_path)


def test_real_paddlex_writes_need_the_admin_token(peer_served, photos):
    px = PaddleXClient(peer_served.url)  # no Authorization header
    pair = {"image": b64(photos["cat"]), "label": "cat"}
    for endpoint, payload in (
        ("/shitu-index-build", {"imageLabelPairs": [pair]}),
        ("/shitu-index-add", {"imageLabelPairs": [pair], "indexKey": "peers"}),
        ("/shitu-index-remove", {"ids": [0], "indexKey": "peers"}),
    ):
        assert "admin token" in px.call(endpoint, payload, expect=422)["errorMsg"]
    info = peer_served.post("image_recognition", {"operation": "info"}).json()["results"]
    assert info["count"] == 3  # nothing changed


def test_real_paddlex_image_urls_fetched_only_when_enabled(tmp_path, photos, queries):
    """In-process (the same service the routes call), against a real HTTP server on loopback."""
    sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "plugins"))
    from packkit import http_server

    from shitu.serving.hub.peers import paddlex
    from shitu.serving.hub.service import RecognitionService

    site = tmp_path / "site"
    (site / "folder").mkdir(parents=True)
    for name, img in (("cat", photos["cat"]), ("rocket", photos["rocket"]), ("query", queries["cat_mirrored_crop"])):
        (site / f"{name}.jpg").write_bytes(base64.b64decode(b64(img)))
    (site / "big.jpg").write_bytes(b"\xff\xd8" + b"0" * 400_000)
    limits = {"Limits": {"image_url_fetch": True, "image_url_timeout_s": 5.0, "max_image_bytes": 300_000}}
    fetching = RecognitionService(None, params=limits)
    refusing = RecognitionService(None)
    with http_server(site) as base:
        with pytest.raises(RequestError, match="does not fetch images from URLs"):
            paddlex.infer(refusing, {"image": f"{base}/query.jpg"})
        built = paddlex.build_index(
            fetching,
            {
                "imageLabelPairs": [
                    {"image": f"{base}/cat.jpg", "label": "cat"},
                    {"image": f"{base}/rocket.jpg", "label": "rocket"},
                ]
            },
        )
        assert built["imageCount"] == 2
        result = paddlex.infer(
            fetching, {"image": f"{base}/query.jpg", "indexKey": built["indexKey"], "recThreshold": 0.5}
        )
        assert "cat" in {r["label"] for o in result["detectedObjects"] for r in o["recResults"]}
        for url, needle in (
            (f"{base}/big.jpg", "larger than the limit of 300000 bytes"),
            (f"{base}/folder", "answered HTTP 301"),  # a redirect is not followed
            (f"{base}/missing.jpg", "answered HTTP 404"),
            ("file:///etc/passwd", "only http and https"),
        ):
            with pytest.raises(RequestError, match=needle):
                paddlex.infer(fetching, {"image": url})
