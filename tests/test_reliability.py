"""Hostile input, faults and load against the served modules: nothing lost, no one let in."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import ADMIN_TOKEN, b64, start_served, warm_every_worker


def body(resp) -> dict:
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.text[:200]
    return resp.json()


def ok(resp):
    b = body(resp)
    assert b["status"] == "000", b
    return b["results"]


def gallery_dir(name: str) -> Path:
    return Path(os.environ["SHITU_HOME"]) / "galleries" / "general-lite" / name


# -- access ----------------------------------------------------------------------------------------------------
def test_token_protects_gallery_changes_not_recognition(served_multi, photos):
    s = served_multi
    add = {"operation": "add", "images": [b64(photos["cat"])], "labels": ["cat"], "gallery": "rel-token"}
    for token in (None, "wrong", ADMIN_TOKEN[:-1]):
        payload = dict(add, **({"token": token} if token else {}))
        b = body(s.post("image_recognition", payload))
        assert b["status"] == "101" and "admin token" in b["msg"] and ADMIN_TOKEN not in b["msg"]
    for op in (
        {"operation": "remove", "labels": ["cat"]},
        {"operation": "add", "embeddings": [[0.0] * 512], "labels": ["x"]},
    ):
        assert body(s.post("index_search", {**op, "gallery": "rel-token"}))["status"] == "101"
    # Nothing was created: the gallery still does not exist.
    assert "no gallery named" in body(s.post("image_recognition", {"operation": "info", "gallery": "rel-token"}))["msg"]
    # The right token, as a bearer header, works; recognition needs none.
    r = requests.post(
        f"{s.url}/predict/image_recognition", json=add, timeout=120, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert ok(r)["added"] == 1
    assert ok(s.post("image_recognition", {"images": [b64(photos["cat"])], "gallery": "rel-token"}))[0]["results"]
    assert ADMIN_TOKEN not in s.log.read_text(errors="replace")


def test_request_paths_are_never_file_paths(served):
    for g in ("../x", "/etc", "a/b", "..", "x" * 65, ""):
        b = body(served.post("image_recognition", {"images": ["aGk="], "gallery": g}))
        assert b["status"] == "101" and ("gallery" in b["msg"] or "image" in b["msg"])
    b = body(served.post("image_recognition", {"images": ["aGk="], "Global": {"det_inference_model_dir": "/tmp"}}))
    assert "fixed when the service starts" in b["msg"]


def test_limits_images_per_request_and_body_size(served, photos):
    b = body(served.post("mainbody_detection", {"images": ["aGk="] * 33}))
    assert b["status"] == "101" and "limit is 32" in b["msg"]
    r = requests.post(
        f"{served.url}/predict/mainbody_detection",
        data=b"{" + b" " * (65 * 1024 * 1024) + b"}",
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    assert r.status_code == 413 and body(r)["status"] == "413"
    labels = {"operation": "add", "images": [b64(photos["cat"])], "gallery": "rel-limits"}
    for bad in (["x" * 129], ["a\x00b"], [""], [5]):
        b = body(served.post("image_recognition", {**labels, "labels": bad}))
        assert b["status"] == "101" and "labels[0]" in b["msg"]
    assert ok(served.post("mainbody_detection", {"images": [b64(photos["cat"])]}))


# -- fuzzing -----------------------------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(
    [
        "images",
        "operation",
        "gallery",
        "scenario",
        "params",
        "threshold",
        "labels",
        "ids",
        "embeddings",
        "boxes",
        "Global",
        "score_thres",
        "max_det_results",
        "token",
        "zzz",
    ]
)


@pytest.fixture(scope="module")
def services():
    from shitu.serving.hub.service import DetectionService, ExtractionService, RecognitionService, SearchService

    return [cls({}, gallery="fuzz") for cls in (RecognitionService, SearchService, DetectionService, ExtractionService)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, json_values, max_size=5), st.integers(0, 3))
def test_fuzz_requests_only_raise_client_errors(services, request_body, which):
    """Whatever a client sends, the service answers or raises a client fault (a ShituError under 500)."""
    from shitu.errors import ShituError

    if request_body.get("operation") in ("add", "remove"):
        request_body["gallery"] = "fuzz"
    try:
        result = services[which].handle(request_body)
    except ShituError as exc:
        assert exc.http_status < 500, exc
        return
    json.dumps(result)  # whatever succeeded is plain JSON


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200))
def test_fuzz_image_bytes(data):
    from shitu.serving.engine.images import ImageError, b64decode, decode

    try:
        decode(data if isinstance(data, bytes) else b64decode(data))
    except ImageError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=25) | keys, json_values, max_size=4))
def test_fuzz_parameter_parsing(layer):
    from shitu.params import ParamError, flatten

    try:
        flatten(layer)
    except ParamError:
        pass


# -- faults ------------------------------------------------------------------------------------------------------
def worker_pids(served) -> set[int]:
    return {c.pid for c in psutil.Process(served.proc.pid).children(recursive=True)}


@pytest.fixture
def served_multi_to_break(tmp_path):
    """Its own 2-worker server: this test kills a worker, and must not depend on what earlier tests did to the
    shared one (it failed in some random orders of the whole suite, never alone)."""
    from shitu.serving.hub import control as hub_serving

    s = start_served(tmp_path, workers=2, init_args={"token": ADMIN_TOKEN})
    yield s
    hub_serving.stop(s.proc)


def test_killed_worker_is_replaced_and_others_keep_answering(served_multi_to_break, photos, queries):
    s = served_multi_to_break
    g = {"gallery": "rel-kill"}
    ok(
        s.post(
            "image_recognition",
            {"operation": "add", "images": [b64(photos["rocket"])], "labels": ["rocket"], "token": ADMIN_TOKEN, **g},
        )
    )
    before = worker_pids(s)
    assert len(before) == 2
    query = {"images": [b64(queries["rocket_bright_blur"])] * 6, **g}
    failures = []

    def call(_):
        try:
            return ok(s.post("image_recognition", query))
        except Exception as exc:  # the request in flight on the killed worker may fail
            failures.append(exc)
            return None

    with cf.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(call, i) for i in range(2)]
        time.sleep(0.5)  # both workers busy with a 6-image request
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        results = [f.result() for f in futures]
    # gthread workers take several connections each, so both requests may have been on the killed worker: each
    # failure must be that worker's dropped connection, never an error answer
    assert all(isinstance(exc, requests.ConnectionError) for exc in failures), failures
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and (len(worker_pids(s)) < 2 or victim in worker_pids(s)):
        time.sleep(0.2)
    after = worker_pids(s)
    assert len(after) == 2 and victim not in after, "gunicorn should replace the killed worker"
    for _ in range(4):
        res = ok(s.post("image_recognition", query))
        assert res[0]["results"][0]["label"] == "rocket"
    info = ok(s.post("image_recognition", {"operation": "info", **g}))
    assert info["count"] == 1
    # the other worker kept running through its sibling's death (asserting that one of the two requests in flight
    # succeeded failed in CI when gunicorn had given both connections to the worker that was killed)
    assert sorted(before)[1] in after
    assert all(r is None or r[0]["results"][0]["label"] == "rocket" for r in results)


def test_server_killed_during_gallery_adds_reopens_consistent(tmp_path, photos):
    """SIGKILL the whole server while adds are in flight; a new server opens the gallery at a committed state."""
    from shitu.serving.hub import control as hub_serving

    s = start_served(tmp_path)
    g = {"gallery": "rel-crash"}
    acked = []
    stop = threading.Event()

    def adder():
        i = 0
        while not stop.is_set():
            try:
                r = s.post(
                    "image_recognition",
                    {"operation": "add", "images": [b64(photos["cat"])], "labels": [f"cat-{i}"], **g},
                    timeout=30,
                )
                if r.json()["status"] == "000":
                    acked.append(i)
            except Exception:
                return
            i += 1

    t = threading.Thread(target=adder)
    t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(s.proc.pid, signal.SIGKILL)
    s.proc.wait(30)
    stop.set()
    t.join(30)
    s2 = start_served(tmp_path)
    try:
        info = ok(s2.post("image_recognition", {"operation": "info", **g}))
        assert len(acked) <= info["count"] <= len(acked) + 1
        res = ok(s2.post("image_recognition", {"images": [b64(photos["cat"])], **g}))
        assert res[0]["results"][0]["label"].startswith("cat-")
    finally:
        hub_serving.stop(s2.proc)


DISK_FULL_CHILD = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    from shitu.serving.gallery.local import Gallery
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    g = Gallery.open(sys.argv[1])
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    rng = np.random.default_rng(1)
    try:
        for i in range(200):
            v = rng.normal(size=(200, 512)).astype("float32")
            g.add(v / np.linalg.norm(v, axis=1, keepdims=True), [f"bulk-{i}"] * 200)
            g.compact()
    except Exception as exc:
        print("ERROR", type(exc).__name__, exc)
        sys.exit(0)
    print("NO ERROR")
""")


def test_disk_full_during_commit_keeps_previous_state(tmp_path):
    from shitu.serving.gallery.local import Gallery

    path = tmp_path / "g"
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 512)).astype("float32")
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    with Gallery.create(path, 512, index_method="Flat") as g:
        g.add(base, [f"item-{i}" for i in range(50)])
    size = sum(f.stat().st_size for f in path.iterdir())
    proc = subprocess.run(
        [sys.executable, "-c", DISK_FULL_CHILD, str(path), str(size + 600_000)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "ERROR" in proc.stdout and "NO ERROR" not in proc.stdout, proc.stdout + proc.stderr
    with Gallery.open(path) as g:
        assert {r["label"] for r in g.list(limit=10_000)} >= {f"item-{i}" for i in range(50)}
        hits = g.search(base[:5], 1)
        assert [h[0].label for h in hits] == [f"item-{i}" for i in range(5)]
        count = len(g)
    assert (count - 50) % 200 == 0  # whole batches only, never half of one


# -- load --------------------------------------------------------------------------------------------------------
def test_short_soak_mixed_load(served_multi, photos, queries):
    """4 clients, a fixed amount of work each (not a wall-clock duration, so a slow machine does the same work):
    recognitions mixed with adds and removes. Zero failures; adds found, removes gone; worker memory bounded."""
    s = served_multi
    g = {"gallery": "rel-soak"}
    tok = {"token": ADMIN_TOKEN}
    ok(
        s.post(
            "image_recognition",
            {"operation": "add", "images": [b64(photos["coffee"])], "labels": ["coffee"], **g, **tok},
        )
    )
    q = {"images": [b64(queries["coffee_rescaled_crop"])], **g}
    warm_every_worker(s, q, "rel-soak")  # a worker replaced by an earlier test loads its models now, not below
    rss0 = sum(psutil.Process(p).memory_info().rss for p in worker_pids(s))
    failures, added, removed = [], [], []
    lock = threading.Lock()
    rounds = 25  # per client

    def client(n):
        for i in range(rounds):
            try:
                if n == 0 and i % 4 != 3:  # 3 adds, then the latest removed: two adds of three stay
                    label = f"rocket-{i}"
                    ok(
                        s.post(
                            "image_recognition",
                            {"operation": "add", "images": [b64(photos["rocket"])], "labels": [label], **g, **tok},
                        )
                    )
                    with lock:
                        added.append(label)
                elif n == 0:
                    label = added[-1]
                    ok(s.post("image_recognition", {"operation": "remove", "labels": [label], **g, **tok}))
                    with lock:
                        removed.append(label)
                else:
                    res = ok(s.post("image_recognition", q))
                    assert res[0]["results"] and res[0]["results"][0]["label"] == "coffee"
            except Exception as exc:
                with lock:
                    failures.append(repr(exc))

    with cf.ThreadPoolExecutor(4) as pool:
        list(pool.map(client, range(4)))
    assert failures == []
    listed = ok(s.post("index_search", {"operation": "list", "limit": 10_000, **g}))
    labels = {r["label"] for r in listed}
    assert set(added) - set(removed) <= labels and not (set(removed) & labels)
    assert len(set(added) - set(removed)) >= 2  # losses among the kept adds would show
    rss1 = sum(psutil.Process(p).memory_info().rss for p in worker_pids(s))
    assert rss1 - rss0 < 150 * 2**20, f"worker memory grew by {(rss1 - rss0) / 2**20:.0f} MiB"
