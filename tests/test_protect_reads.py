"""``protect_reads``: a real ``hub serving`` whose recognitions and gallery reads need the admin token.

Reads (recognition, search, gallery info) and ``GET /metrics`` (whose samples name the galleries and count their
items) need the token; ``/health`` stays open for load balancers and liveness probes. Before ``/metrics`` checked
it, anyone could list the galleries of a server that protects reads.
"""

from __future__ import annotations

import pytest
import requests

from .conftest import b64, start_served

TOKEN = "protect-reads-token-8c2e"


@pytest.fixture(scope="module")
def reads_served(tmp_path_factory):
    from shitu.serving.hub import control as hub_serving

    s = start_served(tmp_path_factory.mktemp("protect-reads"), init_args={"token": TOKEN, "protect_reads": True})
    yield s
    hub_serving.stop(s.proc)


def test_real_reads_need_the_token(reads_served, photos):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    image = b64(next(iter(photos.values())))
    for module, payload in (("index_search", {"operation": "info"}), ("image_recognition", {"images": [image]})):
        refused = reads_served.post(module, payload).json()
        assert refused["status"] != "000" and "admin token" in refused["msg"], refused
        assert reads_served.post(module, payload, headers=bearer).json()["status"] == "000"
        assert reads_served.post(module, {**payload, "token": TOKEN}).json()["status"] == "000"


def test_real_metrics_need_the_token_health_does_not(reads_served):
    url = reads_served.url
    # A request of this test's own, so the request counters exist whichever test of the module ran first.
    assert reads_served.post("index_search", {"operation": "info", "token": TOKEN}).json()["status"] == "000"
    assert requests.get(f"{url}/health", timeout=10).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = requests.get(f"{url}/metrics", headers=headers, timeout=10)
        assert r.status_code == 401 and "admin token" in r.text and "shitu_gallery_items" not in r.text
    r = requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200 and "shitu_requests_total" in r.text
