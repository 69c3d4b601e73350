"""Stateless replicas: Debian's nginx (the shipped deploy/nginx/shitu-hub.conf) in front of 2 real ``hub serving``
instances whose gallery is one collection on a real Milvus API (milvus-lite server mode, or SHITU_TEST_MILVUS_URI).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import requests

from .conftest import b64, start_served
from .milvus_server import milvus_server
from .nginx_proxy import Nginx, nginx_binary

pytest.importorskip("pymilvus")


@pytest.fixture(scope="module")
def milvus(tmp_path_factory):
    yield from milvus_server(tmp_path_factory.mktemp("milvus-replicas"))


@contextlib.contextmanager
def _replicas(milvus, tmp: Path):
    """nginx on a free loopback port -> 2 instances sharing one Milvus gallery."""
    if nginx_binary() is None:
        pytest.skip(
            "nginx is not installed (Debian package `nginx`, listed in tests/system-packages.txt; "
            "`make test` installs it where apt-get is available)"
        )
    from shitu.serving.hub import control as hub_serving

    uri = milvus.uri("replicas")
    instances = []
    try:
        for _ in range(2):
            instances.append(start_served(tmp, init_args={"gallery": uri}))
        proxy = Nginx(tmp / "nginx", [s.url.removeprefix("http://") for s in instances], hub_serving.free_port())
        proxy.start()
        yield proxy, instances
        proxy.stop()
    finally:
        for s in instances:
            hub_serving.stop(s.proc)


@pytest.fixture(scope="module")
def replicas(milvus, tmp_path_factory):
    """Shared by the tests that leave both instances running."""
    with _replicas(milvus, tmp_path_factory.mktemp("replicas")) as pair:
        yield pair


@pytest.fixture
def replicas_to_break(milvus, tmp_path_factory):
    """Its own pair, for a test that stops an instance (the shared pair must keep both, whatever the test order)."""
    with _replicas(milvus, tmp_path_factory.mktemp("replicas-break")) as pair:
        yield pair


def _post(url: str, payload: dict) -> tuple[dict, str]:
    r = requests.post(f"{url}/predict/image_recognition", json=payload, timeout=300)
    assert r.status_code == 200, r.text
    return r.json(), r.headers.get("X-Shitu-Upstream", "")


def test_add_through_one_instance_is_found_by_the_next_20_requests_whichever_answers_real(replicas, photos):
    proxy, instances = replicas
    body, _ = _post(
        proxy.url,
        {"operation": "add", "labels": ["cat", "coffee"], "images": [b64(photos["cat"]), b64(photos["coffee"])]},
    )
    assert body["status"] == "000" and body["results"]["added"] == 2, body
    answered = set()
    query = {"images": [b64(photos["cat"])]}
    for _ in range(20):
        body, upstream = _post(proxy.url, query)
        assert body["status"] == "000", body
        assert body["results"][0]["results"][0]["label"] == "cat", body
        answered.add(upstream)
    assert answered == {s.url.removeprefix("http://") for s in instances}, answered
    # a remove through the proxy is gone for both instances
    body, _ = _post(proxy.url, {"operation": "remove", "labels": ["coffee"]})
    assert body["results"]["removed"] == 1
    for s in instances:
        body, _ = _post(s.url, {"images": [b64(photos["coffee"])]})
        assert all(r["label"] != "coffee" for r in body["results"][0]["results"]), body


def test_concurrent_adds_and_removes_through_two_instances_real(replicas):
    """Two clients writing at once, each through another instance: every acknowledged add is found and every
    remove is gone, as seen from either instance."""
    import secrets
    import threading

    import numpy as np

    _, instances = replicas
    gallery = f"conc-{secrets.token_hex(3)}"
    acked: dict[int, np.ndarray] = {}
    removed: set[int] = set()
    failures: list[str] = []

    def writer(url: str, seed: int) -> None:
        try:
            write(url, seed)
        except Exception as exc:  # noqa: BLE001 - a thread's exception would vanish otherwise
            failures.append(f"writer {seed}: {exc!r}")

    def write(url: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        for r in range(6):
            vecs = rng.standard_normal((5, 512)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            res = requests.post(
                f"{url}/predict/index_search",
                timeout=300,
                json={
                    "operation": "add",
                    "gallery": gallery,
                    "labels": [f"w{seed}-{r}"] * 5,
                    "embeddings": vecs.tolist(),
                },
            ).json()
            if res["status"] != "000":
                failures.append(res["msg"])
                return
            ids = res["results"]["ids"]
            acked.update(zip(ids, vecs))
            if r % 2:
                res = requests.post(
                    f"{url}/predict/index_search",
                    timeout=300,
                    json={"operation": "remove", "gallery": gallery, "ids": ids[:2]},
                ).json()
                if res["status"] != "000" or res["results"]["removed"] != 2:
                    failures.append(str(res))
                    return
                removed.update(ids[:2])

    threads = [threading.Thread(target=writer, args=(s.url, i)) for i, s in enumerate(instances)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not failures, failures
    assert len(acked) == 60
    for s in instances:
        rows = requests.post(
            f"{s.url}/predict/index_search", timeout=300, json={"operation": "list", "gallery": gallery, "limit": 1000}
        ).json()["results"]
        listed = {r["id"] for r in rows}
        assert len(removed) == 12 and listed == set(acked) - removed
        keep = sorted(listed)
        res = requests.post(
            f"{s.url}/predict/index_search",
            timeout=300,
            json={
                "gallery": gallery,
                "return_k": 1,
                "score_thres": 0.0,
                "embeddings": [acked[i].tolist() for i in keep],
            },
        ).json()["results"]
        assert [r["matches"][0]["id"] for r in res] == keep


def test_killing_one_instance_keeps_the_service_answering_real(replicas_to_break, photos):
    from shitu.serving.hub import control as hub_serving

    proxy, instances = replicas_to_break
    hub_serving.stop(instances[0].proc)
    body, _ = _post(proxy.url, {"operation": "add", "labels": ["rocket"], "images": [b64(photos["rocket"])]})
    assert body["status"] == "000", body
    for _ in range(6):
        body, upstream = _post(proxy.url, {"images": [b64(photos["rocket"])]})
        assert body["status"] == "000" and body["results"][0]["results"][0]["label"] == "rocket", body
        assert upstream.split(", ")[-1] == instances[1].url.removeprefix("http://")
    assert requests.get(f"{proxy.url}/health", timeout=30).json()["status"] == "000"


def test_request_size_limit_is_enforced_by_nginx_real(replicas):
    proxy, _ = replicas
    r = requests.post(
        f"{proxy.url}/predict/image_recognition",
        data=b"x" * (65 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    assert r.status_code == 413
