"""Issue 27 (1): a full galleries disk, made real with a small **tmpfs mount** (``mount -t tmpfs``, as root; the test
skips and says so where mounting is not allowed) holding ``SHITU_HOME`` and the log folder of a real ``hub serving``.

Before the fix the Prometheus multi-process files lived there too (``$SHITU_HOME/run/metrics-<pid>``, mmapped): on a
full disk the next request that touched a new page of them died of SIGBUS, and every read went unanswered while
``/health`` said 200. Now: writes are refused with an envelope, every read keeps answering, ``/health`` lists the
full disks under ``degraded`` (HTTP 200, so a load balancer keeps sending reads), the server's stderr gets no
traceback per request, and once space is freed writes work again.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest
import requests

from tests.conftest import b64, install_modules_once

#: Size of the mount: the gallery, the onednn cache and the logs fit with room to spare.
DISK = "48m"


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode(errors='replace').strip()[:200]})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder) -> None:
    """Write zeros into ``folder/fill`` until the disk refuses (ENOSPC)."""
    chunk = b"\0" * (1 << 20)
    with open(folder / "fill", "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    small = b"\0" * 4096
    with open(folder / "fill-small", "wb", buffering=0) as f:
        try:
            while True:
                f.write(small)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc


def _reads(url: str, photo: str, gallery: str) -> list[tuple[str, dict]]:
    """One request of each read kind (distinct module/operation pairs: each has its own metric series)."""
    return [
        ("image_recognition", {"images": [photo], "gallery": gallery}),
        ("image_recognition", {"operation": "info", "gallery": gallery}),
        ("image_recognition", {"operation": "galleries"}),
        ("image_recognition", {"operation": "labels", "gallery": gallery}),
        ("image_recognition", {"operation": "scenarios"}),
        ("image_recognition", {"images": [photo], "gallery": gallery, "explain": True}),
        ("mainbody_detection", {"images": [photo]}),
        ("feature_extraction", {"images": [photo]}),
        ("index_search", {"operation": "info", "gallery": gallery}),
        ("index_search", {"operation": "list", "gallery": gallery}),
        ("image_recognition", {"operation": "nope"}),  # an error is a read too: its own error series
        ("mainbody_detection", {"images": ["bm90IGFuIGltYWdl"]}),
        ("index_search", {"operation": "info", "gallery": "no-such-gallery"}),
    ]


def test_real_full_galleries_disk_tmpfs_refuses_writes_keeps_reads_and_health_says_degraded(
    small_disk, tmp_path, photos
):
    from shitu.serving.hub import control as hub_serving

    install_modules_once()
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["SHITU_HOME"] = str(small_disk / "shitu")
    env["SHITU_LOG_DIR"] = str(small_disk / "log")
    port = hub_serving.free_port()
    cfg = tmp_path / "config.json"
    init_args = {"params": {"Limits": {"min_free_disk_bytes": 1 << 20}}}
    cfg.write_text(json.dumps(hub_serving.serving_config(port=port, workers=1, init_args=init_args)))
    log = tmp_path / "serving.log"  # stdout/stderr: not on the small disk
    proc = hub_serving.start(cfg, env=env, log_path=log)
    url = f"http://127.0.0.1:{port}"

    def post(module: str, payload: dict) -> dict:
        r = requests.post(f"{url}/predict/{module}", json=payload, timeout=120)
        assert r.headers["Content-Type"].startswith("application/json"), r.text[:300]
        return r.json()

    try:
        hub_serving.wait_ready(url, proc)
        labels = list(photos)[:2]
        added = post(
            "image_recognition",
            {"operation": "add", "gallery": "full", "labels": labels, "images": [b64(photos[k]) for k in labels]},
        )
        assert added["status"] == "000", added
        photo = b64(photos[labels[0]])
        health = requests.get(f"{url}/health", timeout=10).json()
        assert health["results"]["degraded"] == []

        _fill(small_disk)
        answers = [(m, p, post(m, p)) for m, p in _reads(url, photo, "full")]
        for module, payload, answer in answers:  # answered (an error envelope where the request is wrong)
            assert "status" in answer and "Traceback" not in json.dumps(answer), (module, payload, answer)
        assert [a["status"] for _, _, a in answers[:8]] == ["000"] * 8, [a for _, _, a in answers[:8]]
        assert proc.poll() is None, "the server died"
        r = requests.get(f"{url}/health", timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "000"
        degraded = " ".join(r.json()["results"]["degraded"])
        assert "galleries disk is full" in degraded and "logs disk is full" in degraded, degraded
        assert str(small_disk) not in degraded  # no server paths in answers

        refused = post(
            "image_recognition",
            {"operation": "add", "gallery": "full", "labels": ["third"], "images": [b64(photos[list(photos)[2]])]},
        )
        assert refused["status"] != "000" and refused.get("request_id"), refused
        assert post("image_recognition", {"operation": "info", "gallery": "full"})["results"]["count"] == 2
        full_phase = log.read_text(errors="replace")
        assert full_phase.count("Traceback") <= 1, full_phase[-3000:]  # not one per request
        assert full_phase.count("cannot write") <= 3, full_phase[-3000:]

        (small_disk / "fill").unlink()
        (small_disk / "fill-small").unlink()
        assert requests.get(f"{url}/health", timeout=10).json()["results"]["degraded"] == []
        again = post(
            "image_recognition",
            {"operation": "add", "gallery": "full", "labels": ["third"], "images": [b64(photos[list(photos)[2]])]},
        )
        assert again["status"] == "000", again
        assert post("image_recognition", {"operation": "info", "gallery": "full"})["results"]["count"] == 3
        assert proc.poll() is None
    finally:
        hub_serving.stop(proc)
