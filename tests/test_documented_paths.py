"""Documented paths that had no test: `shitu demo` (what `make demo` runs), `shitu serve`, `shitu gallery repair`,
`ShituClient.health`, and `shitu recognize-video --server` against a real server (real models, real hub serving)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import requests

from shitu.serving.cli import main

from .conftest import b64


def test_client_health_against_a_real_server(served):
    from shitu.serving.client import ShituClient

    with ShituClient(served.url) as client:
        health = client.health()
    assert set(health["modules"]) == {"mainbody_detection", "feature_extraction", "index_search", "image_recognition"}
    assert isinstance(health["pid"], int) and health["pid"] > 0


def test_recognize_video_on_a_real_server_uses_its_gallery(served, photos, tmp_path, capsys):
    """Used to be tested with a fake client only; --gallery used to be ignored with --server."""
    from shitu.serving.cli import video as video_cli
    from shitu.serving.client import ShituClient

    with ShituClient(served.url) as client:
        client.gallery_add([photos["cat"]], ["cat"], gallery="video-srv")
    path = tmp_path / "cat.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (400, 300))
    frame = cv2.resize(photos["cat"], (400, 300))
    for _ in range(6):
        writer.write(frame)
    writer.release()
    rc = video_cli.main(
        [
            "recognize-video",
            str(path),
            "--server",
            served.url,
            "--gallery",
            "video-srv",
            "--json",
            "--no-progress",
            "--max-frames",
            "3",
        ]
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0
    frames = [x for x in lines if x["type"] == "frame"]
    assert len(frames) == 3

    def labels(f: dict) -> set[str]:
        return {t["label"] for t in f["tracks"]} | ({f["frame_label"]["label"]} if f["frame_label"] else set())

    # the cat is a detected box (a track, reported once confirmed: min_hits frames) or the whole image (frame label)
    assert all("cat" in labels(f) for f in frames[1:]), frames
    assert (
        video_cli.main(
            [
                "recognize-video",
                str(path),
                "--server",
                served.url,
                "--gallery",
                "no-such-gallery",
                "--no-progress",
                "--max-frames",
                "1",
            ]
        )
        == 3
    )
    assert "no gallery named 'no-such-gallery'" in capsys.readouterr().err


def test_gallery_repair_rebuilds_a_lost_snapshot(tmp_path, capsys):
    from shitu.serving.gallery import Gallery

    path = tmp_path / "g"
    rng = np.random.default_rng(0)
    with Gallery.create(path, 16, index_method="Flat") as g:
        g.add(rng.standard_normal((20, 16)).astype(np.float32), [f"l{i % 4}" for i in range(20)])
        g.checkpoint()
    (snapshot,) = path.glob("index-*.faiss")
    snapshot.unlink()
    assert main(["gallery", "info", str(path)]) == 3
    assert "shitu gallery repair" in capsys.readouterr().err
    assert main(["gallery", "repair", str(path)]) == 0
    assert "20 items" in capsys.readouterr().out
    assert main(["gallery", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 20 and info["snapshot_file"]


def _run_shitu(args: list[str], home: Path, **kw) -> subprocess.Popen:
    """``python -m shitu ARGS`` with its own HUB_HOME and SHITU_HOME under ``home``: its `hub install` never
    rewrites the modules the session's servers run from, nor its galleries."""
    env = {**os.environ, "HUB_HOME": str(home / "hub"), "SHITU_HOME": str(home / "shitu")}
    return subprocess.Popen(
        [sys.executable, "-m", "shitu", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kw,
    )


def test_shitu_demo_recognises_the_demo_photos_over_hub_serving(tmp_path):
    """What `make demo` runs: hub install, hub serving, the demo queries over HTTP, answers and pictures."""
    out = tmp_path / "demo"
    proc = _run_shitu(["demo", "--out", str(out), "--json"], tmp_path)
    stdout, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout[-3000:]
    answers = {
        a["image"]: [r["label"] for r in a["results"]]
        for a in (json.loads(line) for line in stdout.splitlines() if line.startswith("{"))
    }
    assert answers["cat_mirrored_crop"][:1] == ["cat"]
    assert answers["coffee_rescaled_crop"][:1] == ["coffee"]
    assert answers["rocket_bright_blur"][:1] == ["rocket"]
    assert set(answers["collage_cat_and_coffee"]) == {"cat", "coffee"}
    assert answers["not_in_gallery_ihc"] == []
    assert sorted(p.stem for p in (out / "annotated").glob("*.jpg")) == sorted(answers)


def test_shitu_serve_installs_and_serves_the_modules(tmp_path):
    from shitu.serving.hub.control import free_port

    port = free_port()
    config = tmp_path / "serving.json"
    proc = _run_shitu(
        ["serve", "--port", str(port), "--modules", "mainbody_detection", "--config-out", str(config)],
        tmp_path,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
                break
            except requests.RequestException:
                time.sleep(0.5)
        assert health is not None, proc.stdout.read() if proc.poll() is not None else "no answer"
        assert health["results"]["modules"] == ["mainbody_detection"]
        assert json.loads(config.read_text())["port"] == port
        r = requests.post(
            f"http://127.0.0.1:{port}/predict/mainbody_detection",
            timeout=120,
            json={"images": [b64(np.full((64, 64, 3), 200, np.uint8))]},
        )
        assert r.json()["status"] == "000"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        proc.stdout.close()
