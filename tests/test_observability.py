"""Metrics, request ids and bounded logs, against a real ``hub serving`` (gunicorn, 2 workers) over HTTP."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from .conftest import b64, start_served

TOKEN = "tok-SECRET-obs-9f3e"
LOG_BYTES = 20000
LOG_BACKUPS = 2


@pytest.fixture(scope="module")
def obs_server(tmp_path_factory):
    from shitu.serving.hub import control as hub_serving

    tmp = tmp_path_factory.mktemp("observability")
    env = {"SHITU_LOG_DIR": str(tmp / "logs"), "SHITU_LOG_FORMAT": "json"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        s = start_served(
            tmp,
            workers=2,
            init_args={"token": TOKEN, "params": {"Limits": {"max_log_bytes": LOG_BYTES, "log_backups": LOG_BACKUPS}}},
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    s.log_dir = tmp / "logs"
    yield s
    hub_serving.stop(s.proc)


def scrape(served) -> dict[tuple[str, tuple], float]:
    """``GET /metrics`` parsed: (sample name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    r = requests.get(f"{served.url}/metrics", timeout=60)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_by_the_right_amounts_during_traffic(obs_server, photos):
    cat = b64(photos["cat"])
    ok_req = {"images": [cat, cat], "gallery": "obs"}
    added = obs_server.post(
        "image_recognition",
        {"operation": "add", "gallery": "obs", "token": TOKEN, "labels": ["cat", "cat2"], "images": [cat, cat]},
    ).json()
    assert added["status"] == "000", added
    # Warm both workers (each loads its models on its first request) before counting.
    with cf.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: obs_server.post("image_recognition", ok_req), range(4)))
    before = scrape(obs_server)
    n_ok, n_bad = 6, 3
    boxes = []
    scrapes_during: list[dict] = []
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            scrapes_during.append(scrape(obs_server))
            time.sleep(0.2)

    t = threading.Thread(target=scraper)
    t.start()
    try:
        with cf.ThreadPoolExecutor(3) as pool:
            oks = list(pool.map(lambda _: obs_server.post("image_recognition", ok_req).json(), range(n_ok)))
            bads = list(
                pool.map(
                    lambda _: obs_server.post("image_recognition", {"images": [cat], "thresold": 1}).json(),
                    range(n_bad),
                )
            )
        not_json = requests.post(f"{obs_server.url}/predict/image_recognition", data="not json", timeout=30)
    finally:
        stop.set()
        t.join()
    assert all(o["status"] == "000" for o in oks) and all(b["status"] == "101" for b in bads)
    assert not_json.json()["status"] == "415"
    boxes = sum(len(img["results"]) for o in oks for img in o["results"])
    after = scrape(obs_server)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    rec = {"module": "image_recognition", "operation": "recognize"}
    assert delta("shitu_requests_total", status="000", **rec) == n_ok
    assert delta("shitu_requests_total", status="101", **rec) == n_bad
    assert delta("shitu_requests_total", module="image_recognition", operation="-", status="415") == 1
    # the client fault keeps its class (ParamError; it was always RequestError)
    assert delta("shitu_errors_total", module="image_recognition", kind="ParamError") == n_bad
    assert delta("shitu_errors_total", module="image_recognition", kind="http_415") == 1
    assert delta("shitu_request_seconds_count", **rec) == n_ok + n_bad
    assert delta("shitu_images_per_request_sum", module="image_recognition") == 2 * n_ok + n_bad
    assert delta("shitu_boxes_per_request_sum", module="image_recognition") == boxes
    assert delta("shitu_boxes_per_request_count", module="image_recognition") == n_ok
    for stage in ("decode", "detect", "extract", "search"):
        assert delta("shitu_stage_seconds_count", stage=stage) == n_ok, stage
        assert delta("shitu_stage_seconds_sum", stage=stage) > 0
    assert value(after, "shitu_gallery_items", scenario="general-lite", gallery="obs") == 2
    # Scrapes during the traffic saw counters only ever grow (summed over both workers every time).
    key = ("shitu_requests_total", tuple(sorted({"status": "000", **rec}.items())))
    seen = [s.get(key, 0.0) for s in scrapes_during]
    assert seen == sorted(seen) and len(seen) >= 1


def test_request_ids_in_answers_envelopes_and_logs(obs_server, photos):
    cat = b64(photos["cat"])
    r = obs_server.post("image_recognition", {"images": [cat]}, headers={"X-Request-ID": "client-id-42"})
    assert r.headers["X-Request-ID"] == "client-id-42" and r.json()["status"] == "000"
    bad = obs_server.post(
        "image_recognition", {"images": [cat], "thresold": 1}, headers={"X-Request-ID": "client-id-43"}
    )
    assert bad.json()["request_id"] == "client-id-43" == bad.headers["X-Request-ID"]
    # A header that is no acceptable id is replaced (no log injection), an absent one generated.
    weird = obs_server.post(
        "image_recognition", {"images": ["bm90"], "x": 1}, headers={"X-Request-ID": "a b\tc" + "x" * 200}
    )
    rid = weird.json()["request_id"]
    assert rid == weird.headers["X-Request-ID"] and len(rid) == 32 and " " not in rid
    from shitu.serving.client import ServerError, ShituClient

    with pytest.raises(ServerError) as info:
        ShituClient(obs_server.url).recognize(photos["cat"], threshold=2.0)
    assert info.value.request_id and len(info.value.request_id) == 32
    too_big = requests.post(
        f"{obs_server.url}/predict/image_recognition",
        data=b"{" + b" " * 100,
        timeout=30,
        headers={"Content-Type": "application/json"},
    )
    assert too_big.json()["request_id"] == too_big.headers["X-Request-ID"]
    # Every log line of those requests carries its id: the request line, and the traceback PaddleHub logs.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = [
            json.loads(x)
            for f in sorted(obs_server.log_dir.glob("shitu-requests.log*"))
            if not f.name.endswith(".lock")
            for x in f.read_text().splitlines()
        ]
        mine = {x["request_id"]: x for x in lines if x["request_id"] in ("client-id-42", "client-id-43", rid)}
        if len(mine) == 3:
            break
        time.sleep(0.5)
    assert mine["client-id-42"]["status"] == "000" and mine["client-id-42"]["images"] == 1
    assert mine["client-id-43"]["status"] == "101" and "thresold" in mine["client-id-43"]["error"]
    server_lines = [
        json.loads(x)
        for f in obs_server.log_dir.glob("shitu-server.log*")
        if not f.name.endswith(".lock")
        for x in f.read_text().splitlines()
    ]
    assert any(x["request_id"] == "client-id-43" and "ParamError" in x["message"] for x in server_lines)


def test_tokens_bodies_and_images_are_never_logged(obs_server, photos):
    cat = b64(photos["coffee"])
    for token in (TOKEN, TOKEN + "-wrong"):
        obs_server.post(
            "image_recognition",
            {"operation": "add", "gallery": "obs2", "token": token, "labels": ["coffee"], "images": [cat]},
            headers={"Authorization": f"Bearer {token}"},
        )
    obs_server.post("image_recognition", {"images": [cat], "gallery": "obs2", "thresold": 1})
    time.sleep(1)
    texts = [f.read_text(errors="replace") for f in obs_server.log_dir.iterdir() if f.is_file()]
    texts.append(obs_server.log.read_text(errors="replace"))
    for text in texts:
        assert TOKEN not in text
        assert cat[:64] not in text and cat[-64:] not in text


def _paddlehub_logs() -> list[Path]:
    """PaddleHub's own ``HubServing-<date>.log`` (and its rotated copies) under the session's ``$HUB_HOME/log``."""
    return [f for f in (Path(os.environ["HUB_HOME"]) / "log").glob("HubServing-*.log*") if not f.name.endswith(".lock")]


def test_logs_rotate_at_the_cap_and_echoed_input_is_cut(obs_server):
    console_before = obs_server.log.stat().st_size
    hub_before = sum(f.stat().st_size for f in _paddlehub_logs())
    huge = "g" * 8_000_000  # an 8 MB gallery name: the error message echoes it
    for _ in range(3):
        r = obs_server.post("index_search", {"gallery": huge, "embeddings": [[0.0]]})
        assert r.json()["status"] == "101"
    for _ in range(150):  # enough lines to rotate every log several times
        assert obs_server.post("index_search", {"embeddings": [[0.0]], "bad_param": 1}).json()["status"] == "101"
    time.sleep(1)
    grown = obs_server.log.stat().st_size - console_before
    assert grown < 153 * 4000, grown
    # PaddleHub logs each failed request's traceback (message included) in HubServing-<date>.log: an 8 MB gallery
    # name went there whole before; now each message is cut and the file rotates at the cap.
    hub_logs = _paddlehub_logs()
    hub_grown = sum(f.stat().st_size for f in hub_logs) - hub_before
    assert hub_grown < 153 * 6000, hub_grown
    assert any(f.name.endswith(".log.1") for f in hub_logs), [f.name for f in hub_logs]
    files = [f for f in obs_server.log_dir.iterdir() if not f.name.endswith(".lock")]
    for f in files:
        assert f.stat().st_size <= LOG_BYTES + 4000, (f.name, f.stat().st_size)
    for base in ("shitu-requests.log", "shitu-server.log"):
        names = {f.name for f in files if f.name.startswith(base)}
        assert names == {base, *(f"{base}.{i}" for i in range(1, LOG_BACKUPS + 1))}, names
    assert sum(f.stat().st_size for f in files) <= len(files) * (LOG_BYTES + 4000)


def test_worker_restart_is_counted(obs_server):
    import psutil

    before = value(scrape(obs_server), "shitu_worker_restarts_total")
    workers = psutil.Process(obs_server.proc.pid).children(recursive=True)
    victim = next(w for w in workers if "gunicorn" in " ".join(w.cmdline()) or w.ppid() == obs_server.proc.pid)
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if value(scrape(obs_server), "shitu_worker_restarts_total") >= before + 1:
                break
        except requests.RequestException:
            pass
        time.sleep(0.5)
    else:
        raise AssertionError("the worker restart was not counted")
    assert requests.get(f"{obs_server.url}/health", timeout=60).json()["status"] == "000"
