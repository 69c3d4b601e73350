"""The OpenAPI 3.1 description (``GET /openapi.json``) and Schemathesis against a real ``shitu serve``.

The spec is checked with ``openapi-spec-validator``; then Schemathesis generates requests from the spec that the
server itself serves (valid and invalid ones, a bounded number per operation), each sent once without and once with
the admin token, and checks that no answer is a server error (5xx), every answer conforms to the spec (status code,
content type, body schema) and none takes longer than the request timeout.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

ADMIN_TOKEN = "schemathesis-admin-token-0c9e"
#: The PaddleX routes take JSON only (a text/plain body is what a foreign web page can send: 415).
JSON_TYPE = {"Content-Type": "application/json"}
#: Seconds one request may take before it counts as a hang.
REQUEST_TIMEOUT = 60
#: Generated requests per operation and phase (each sent twice: without and with the token).
MAX_EXAMPLES = 12


# -- the spec itself ------------------------------------------------------------------------------------------------
def test_the_spec_is_valid_openapi_3_1():
    from openapi_spec_validator import validate

    from shitu.serving.hub import openapi

    spec = openapi.build()
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    for route in (
        "/predict/mainbody_detection",
        "/predict/feature_extraction",
        "/predict/index_search",
        "/predict/image_recognition",
        "/shitu-index-build",
        "/shitu-index-add",
        "/shitu-index-remove",
        "/shitu-infer",
        "/recognition/prediction",
        "/health",
        "/metrics",
        "/openapi.json",
        "/",
        "/web/",
        "/web/{name}",
        "/favicon.ico",
    ):
        assert route in spec["paths"], route


def test_every_request_field_and_operation_of_every_service_is_described():
    from shitu.serving.hub import openapi
    from shitu.serving.hub.request_models import Request

    spec = openapi.build()
    for module, cls in openapi.service_classes().items():
        body = spec["paths"][f"/predict/{module}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        variants = body.get("oneOf", [body])
        described = {v["properties"]["operation"]["const"]: v for v in variants}
        assert set(described) == set(openapi.operations(cls)), module
        for op, variant in described.items():
            for name in cls.requests.get(op, Request).model_fields:  # the fields the service parses
                assert name in variant["properties"], (module, op, name)
            assert ("operation" in variant["required"]) == (op != cls.default_operation)


def test_the_params_schema_is_generated_from_the_parameter_table():
    from shitu.params import FIELDS
    from shitu.serving.hub import openapi

    schemas = openapi.build()["components"]["schemas"]
    for f in FIELDS:
        name = f"param.{f.name}"
        if not f.per_request:  # fixed at start-up: a request that sets it is refused, so it is not described
            assert name not in schemas
            continue
        assert schemas[name]["description"] == f.doc
        if f.minimum is not None:
            assert schemas[name]["minimum"] == f.minimum
    props = schemas["ParamOverrides"]["properties"]
    assert {"Global", "Global.threshold", "threshold", "whole_image_box", "IndexProcess.score_threshold"} <= set(props)
    assert "cpu_num_threads" not in props and "Global.cpu_num_threads" not in props
    assert props["Global"]["properties"]["threshold"] == {"$ref": "#/components/schemas/param.Global.threshold"}


def test_every_example_of_the_spec_is_a_valid_request():
    from jsonschema import Draft202012Validator

    from shitu.serving.hub import openapi

    spec = openapi.build()
    seen = 0
    for path, methods in spec["paths"].items():
        for media in methods.get("post", {}).get("requestBody", {}).get("content", {}).values():
            validator = Draft202012Validator({**media["schema"], "components": spec["components"]})
            for name, example in media.get("examples", {}).items():
                errors = [e.message for e in validator.iter_errors(example["value"])]
                assert not errors, (path, name, errors[:3])
                seen += 1
    assert seen >= 15


def test_the_spec_is_written_by_the_command_line_for_the_docs(tmp_path):
    import json

    from shitu.serving.hub import openapi

    subprocess.run([sys.executable, "-m", "shitu.serving.hub.openapi", str(tmp_path / "openapi.json")], check=True)
    assert json.loads((tmp_path / "openapi.json").read_text()) == openapi.build()


# -- a real `shitu serve` -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shitu_serve(tmp_path_factory):
    """``shitu serve`` (all four modules, one process) with an admin token; its base URL."""
    from shitu.serving.hub import control

    tmp = tmp_path_factory.mktemp("shitu-serve-openapi")
    port = control.free_port()
    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("shitu")),
            "serve",
            "--port",
            str(port),
            "--workers",
            "1",
            "--threads",
            "1",
            "--token",
            ADMIN_TOKEN,
            "--config-out",
            str(tmp / "serve.json"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        control.wait_ready(url, proc)
        yield url
    finally:
        control.stop(proc)
        log.close()


def test_the_served_spec_is_the_built_one_and_valid(shitu_serve):
    from openapi_spec_validator import validate

    from shitu.serving.hub import openapi

    r = requests.get(f"{shitu_serve}/openapi.json", timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    validate(r.json())
    assert r.json() == openapi.build()  # all four modules served


def test_the_favicon_is_served_at_the_root_and_named_by_the_page(shitu_serve):
    r = requests.get(f"{shitu_serve}/favicon.ico", timeout=30)  # was: a 404 envelope
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/x-icon"
    assert r.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
    page = requests.get(f"{shitu_serve}/web/", timeout=30).text
    assert '<link rel="icon" href="favicon.ico">' in page
    assert requests.get(f"{shitu_serve}/web/favicon.ico", timeout=30).content == r.content


def test_paddlehub_gradio_routes_answer_404_not_500(shitu_serve):
    """PaddleHub's ``/gradio/<module>`` routes: the modules have no gradio app, and PaddleHub answered a 500
    (``RuntimeError``, then ``KeyError`` for ``/gradio/<module>/<path>``)."""
    for method, path in (
        ("GET", "/gradio/image_recognition"),
        ("POST", "/gradio/index_search"),
        ("GET", "/gradio/image_recognition/app"),
        ("POST", "/gradio/nosuch/x/y"),
    ):
        r = requests.request(method, f"{shitu_serve}{path}", timeout=30)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert r.json()["status"] == "404" and "gradio" in r.json()["msg"]


@pytest.mark.parametrize("field", ["topk", "hammingRadius", "detThreshold", "recThreshold"])
@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1" + "0" * 400])
def test_paddlex_infer_refuses_non_finite_numbers_with_422_not_500(shitu_serve, field, value):
    """Python's json reads JSON's ``NaN`` / ``Infinity`` literals (Schemathesis never sends them: they are not JSON);
    ``int()`` of them raised, and ``topk: Infinity`` was a 500 ``internal error (OverflowError)``."""
    body = '{"image": "aGVsbG8=", "%s": %s}' % (field, value)
    r = requests.post(
        f"{shitu_serve}/shitu-infer",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=60,
    )
    assert r.status_code == 422, r.text
    assert r.json()["errorCode"] == 422 and "internal error" not in r.json()["errorMsg"]
    if not value.isdigit():  # NaN / Infinity: refused by the body's strict JSON reader, naming the literal
        assert f"{value.lstrip('-')} is not a JSON number" in r.json()["errorMsg"], r.text


def test_an_integer_beyond_any_float_is_a_parameter_error_not_an_internal_error(shitu_serve):
    """``score_thres`` (a float parameter) given a 400-digit JSON integer: ``float()`` of it raised OverflowError,
    answered as ``internal error (OverflowError)`` with a traceback in the log."""
    from shitu.params import ParamError, merge

    with pytest.raises(ParamError, match="IndexProcess.score_thres"):
        merge({"score_thres": 10**400})
    body = '{"embeddings": [[0.5]], "score_thres": 1%s}' % ("0" * 400)
    r = requests.post(
        f"{shitu_serve}/predict/index_search", data=body, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert r.status_code == 200 and r.json()["status"] == "101", r.text
    assert "IndexProcess.score_thres" in r.json()["msg"] and "internal error" not in r.json()["msg"]


_HUGE = "1" + "0" * 400  # a JSON integer that no float holds


@pytest.mark.parametrize(
    "module, body, named",
    [
        ("index_search", '{"embeddings": [[%s]]}' % _HUGE, "embeddings"),
        ("index_search", '{"operation": "add", "embeddings": [[%s]], "labels": ["a"]}' % _HUGE, "embeddings"),
        ("index_search", '{"embeddings": [[300]], "binarize": true}', "embeddings"),  # beyond uint8
        ("feature_extraction", '{"images": ["<image>"], "boxes": [[[0, 0, %s, 10]]]}' % _HUGE, "boxes"),
    ],
    ids=["search-huge", "add-huge", "search-binary-300", "boxes-huge"],
)
def test_numbers_beyond_the_arrays_type_are_refused_not_internal_errors(shitu_serve, module, body, named):
    """numpy raised OverflowError on them (``internal error (OverflowError)`` and a traceback in the log)."""
    from shitu.serving.hub.openapi import example_image

    r = requests.post(
        f"{shitu_serve}/predict/{module}",
        data=body.replace("<image>", example_image()),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["status"] == "101", r.text
    assert named in r.json()["msg"] and "internal error" not in r.json()["msg"], r.text


@pytest.mark.parametrize("route", ["/shitu-infer", "/shitu-index-build", "/recognition/prediction"])
def test_peer_routes_refuse_json_nested_too_deeply_as_bad_input(shitu_serve, route):
    """Python's json raises RecursionError past its nesting limit: PaddleX's routes answered a 500 and Paddle
    Serving's ``err_no`` 10000 (internal error) instead of a bad-input answer."""
    r = requests.post(f"{shitu_serve}{route}", data="[" * 100_000, headers=JSON_TYPE, timeout=60)
    assert r.status_code in (200, 422), r.text
    body = r.json()
    assert (body.get("errorCode") == 422 or body.get("err_no") == 5000) and "nested too deeply" in r.text, r.text


# -- Schemathesis ---------------------------------------------------------------------------------------------------
#: What every answer is checked for (``schemathesis run --checks``).
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


@pytest.mark.parametrize("with_token", [False, True], ids=["no-token", "admin-token"])
def test_schemathesis_finds_no_server_error_no_spec_violation_and_no_hang(shitu_serve, with_token, tmp_path):
    """``schemathesis run`` on the served spec: the examples (real images: the whole pipeline runs) and
    ``MAX_EXAMPLES`` generated requests per operation, valid and invalid ones, deterministic.

    The command line rather than ``schemathesis.pytest.from_fixture``: that one reads ``request.node._nodeid``,
    which pytest 9 no longer has."""
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{shitu_serve}/openapi.json",
        "--phases",
        "examples,fuzzing",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--mode",
        "all",
        "--generation-deterministic",
        "--request-timeout",
        str(REQUEST_TIMEOUT),
        "--workers",
        "1",
        "--continue-on-failure",
        "--output-truncate",
        "false",
        "--no-color",
        *(["--header", f"Authorization: Bearer {ADMIN_TOKEN}"] if with_token else []),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-20000:]
    cases = out.split("Test cases:")[-1].strip().splitlines()[0]  # "343 generated, 343 passed"
    print(f"schemathesis ({'with' if with_token else 'without'} the admin token): {cases}")
    selected, total = map(int, re.search(r"Selected: (\d+)/(\d+)", out).groups())
    tested = int(re.search(r"Tested: (\d+)", out).group(1))
    assert selected == total == tested >= 16 and "failed" not in cases, out[-5000:]
