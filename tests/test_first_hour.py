"""A new user's first hour, continued: a server follows `shitu plugins use`, bad serve arguments fail at start,
`recognize-video --server` honours --gallery. Real `hub serving`, real models, real video files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shitu.plugins import registry

from .conftest import b64
from .lite_packs import lite_pack
from .test_video import write_video


def ok(resp):
    body = resp.json()
    assert body["status"] == "000", body
    return body["results"]


def test_served_pack_follows_plugins_use_real(served, tmp_path, queries):
    def strict(threshold):
        return lambda data: data["params"]["Global"].update(threshold=threshold)

    try:
        registry.install(str(lite_pack(tmp_path / "v1", "reload-me", mutate=strict(0.3))), progress=False)
        det = {"scenario": "reload-me", "images": [b64(queries["collage_cat_and_coffee"])]}
        assert len(ok(served.post("mainbody_detection", det))[0]["boxes"]) > 1  # 1.0.0: threshold 0.3
        registry.install(
            str(lite_pack(tmp_path / "v2", "reload-me", version="1.1.0", mutate=strict(0.99))), progress=False
        )
        boxes = ok(served.post("mainbody_detection", det))[0]["boxes"]
        assert [b["is_whole_image"] for b in boxes] == [True]  # 1.1.0 is current now: was still 1.0.0's answer
        registry.use("reload-me", "1.0.0", default=False)  # the session's default pack stays
        assert len(ok(served.post("mainbody_detection", det))[0]["boxes"]) > 1
    finally:  # other tests of the session share this SHITU_HOME
        registry.uninstall("reload-me")


def test_serve_refuses_unknown_modules_and_scenarios_before_starting(capsys):
    from shitu.serving.cli import main

    assert main(["serve", "--modules", "foo"]) == 2  # was: a traceback
    assert "unknown module(s) foo" in capsys.readouterr().err
    assert main(["serve", "--scenario", "nosuch"]) == 2  # was: started, then failed every request
    assert "no pack named 'nosuch'" in capsys.readouterr().err
    assert main(["serve", "--scenario", "general"]) == 2  # known, but its models are not installed
    assert "model files are not installed" in capsys.readouterr().err


def test_module_with_an_unknown_default_scenario_fails_when_created():
    from shitu.serving.hub.service import RecognitionService

    with pytest.raises(ValueError, match="no pack named 'nosuch'"):
        RecognitionService(scenario="nosuch")
    with pytest.raises(ValueError, match="model files are not installed"):
        RecognitionService(scenario="general")


def test_serve_help_shows_defaults(capsys):
    from shitu.serving.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 8866)" in out and "(default: from this machine's cores" in out  # --workers, --threads


def test_recognize_video_server_honours_gallery_real(served, photos, tmp_path, capsys):
    from shitu.serving.cli import main

    ok(
        served.post(
            "image_recognition",
            {"operation": "add", "gallery": "video-gallery", "images": [b64(photos["cat"])], "labels": ["video-cat"]},
        )
    )
    clip = write_video(tmp_path / "clip.avi", n=6)
    rc = main(
        [
            "recognize-video",
            str(clip),
            "--server",
            served.url,
            "--gallery",
            "video-gallery",
            "--json",
            "--no-progress",
            "--every",
            "3",
        ]
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0
    labels = {t["label"] for t in lines if t["type"] == "track"}
    assert "video-cat" in labels  # was: --gallery ignored, the server's default gallery searched


def test_non_object_json_body_gets_status_400_real(served):
    import requests

    resp = requests.post(f"{served.url}/predict/image_recognition", json=[1, 2], timeout=60)
    body = resp.json()
    assert resp.status_code == 400 and body["status"] == "400", body  # was: HTTP 400 with status "500"
    assert "JSON object" in body["msg"]


def test_in_process_commands_are_quiet_by_default_real(tmp_path, photos):
    import subprocess
    import sys

    import cv2

    cv2.imwrite(str(tmp_path / "cat.jpg"), photos["cat"])
    cmd = [sys.executable, "-m", "shitu", "recognize", str(tmp_path / "cat.jpg")]
    quiet = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0 and "cat" in quiet.stdout, quiet.stderr
    assert "ccache" not in quiet.stderr and "Loading faiss" not in quiet.stderr, quiet.stderr
    # paddle is what speaks (general-lite runs on onnxruntime by default, which says nothing)
    paddle = ["--param", "det_backend=paddle", "--param", "rec_backend=paddle"]
    quiet = subprocess.run(cmd + paddle, capture_output=True, text=True, timeout=600)
    assert quiet.returncode == 0 and "cat" in quiet.stdout and "ccache" not in quiet.stderr, quiet.stderr
    loud = subprocess.run(cmd[:3] + ["-v"] + cmd[3:] + paddle, capture_output=True, text=True, timeout=600)
    assert loud.returncode == 0 and "ccache" in loud.stderr, loud.stderr


def test_second_rollback_says_what_is_current_and_how_to_switch(tmp_path):
    import sys

    from shitu.plugins.errors import PackError

    sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "plugins"))
    import packkit

    registry.install(str(packkit.make_pack(tmp_path / "a", "twice", "1.0.0")), progress=False)
    registry.install(str(packkit.make_pack(tmp_path / "b", "twice", "1.1.0")), progress=False)
    assert registry.rollback("twice") == "1.0.0"
    with pytest.raises(PackError) as err:
        registry.rollback("twice")
    # was: "no earlier version to roll back to (installed: 1.0.0, 1.1.0)", which reads as a contradiction
    assert "1.0.0 is current" in str(err.value) and "shitu plugins use twice VERSION" in str(err.value)


def test_manifest_errors_name_the_users_file_not_the_staging_folder(tmp_path):
    import yaml

    from shitu.plugins.errors import ManifestError

    folder = lite_pack(tmp_path / "mine", "namedfile")
    data = yaml.safe_load((folder / "pack.yaml").read_text())
    data["bogus"] = 1  # an unknown key
    (folder / "pack.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ManifestError) as err:
        registry.install(str(folder), progress=False)
    assert str(err.value).startswith(f"{folder / 'pack.yaml'}: ")  # was: .../packs/.tmp/stage-.../pack.yaml
    assert ".tmp" not in str(err.value)


def test_feature_extraction_answers_the_box_it_used_real(served, photos):
    res = ok(served.post("feature_extraction", {"images": [b64(photos["cat"])], "boxes": [[[100, 50, 10000, 10000]]]}))
    assert res[0]["boxes"] == [[100, 50, 451, 300]]  # was: [[100, 50, 10000, 10000]] on a 451x300 image


def test_server_side_adds_keep_the_file_names_real(served, photos, tmp_path):
    from shitu.serving.client import ShituClient

    path = tmp_path / "tabby.jpg"
    cv2_write(path, photos["cat"])
    with ShituClient(served.url) as client:
        client.gallery_add([path, photos["coffee"]], ["cat", "coffee"], gallery="named-sources")
        items = {item.label: item.source for item in client.gallery_list(gallery="named-sources")}
    assert items == {"cat": "tabby.jpg", "coffee": "request:1"}  # was: "request:0" for the file too


def test_in_process_hub_module_takes_arrays_and_paths_real(served, photos, tmp_path):
    import paddlehub as hub

    path = tmp_path / "cat.png"
    cv2_write(path, photos["cat"])
    module = hub.Module(name="mainbody_detection")
    by_array = module.predict(images=[photos["cat"]], threshold=0.3)  # PaddleHub's CV convention
    by_path = module.predict(paths=[str(path)], threshold=0.3)
    assert by_array[0]["width"] == by_path[0]["width"] == photos["cat"].shape[1]
    assert [b["bbox"] for b in by_array[0]["boxes"]] == [b["bbox"] for b in by_path[0]["boxes"]]


def cv2_write(path, image) -> None:
    import cv2

    assert cv2.imwrite(str(path), image)


def test_bad_list_lines_and_undecodable_images_are_reported_in_one_round(tmp_path, photos, capsys):
    from shitu.serving.cli import main

    cv2_write(tmp_path / "cat.jpg", photos["cat"])
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "list.txt").write_text("cat.jpg\tcat\nbroken.jpg\tbroken\ncat.jpg\n")
    assert main(["gallery", "build", str(tmp_path / "g"), str(tmp_path / "list.txt"), "--no-progress"]) == 3
    err = capsys.readouterr().err
    # was: only line 3 (missing label); the undecodable image came up after fixing it
    assert "2 bad gallery entries" in err and "list.txt:2: not a readable image" in err and "list.txt:3" in err


def test_every_command_and_positional_is_described():
    import argparse

    from shitu.serving.cli import build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {c.dest: c.help for c in action._choices_actions}
                for name, sub in action.choices.items():
                    if not (sub.description or helps.get(name)):
                        missing.append(" ".join(path + [name]))
                    walk(sub, path + [name])
            elif not action.option_strings and not action.help:
                missing.append(" ".join(path + [action.dest]))

    walk(build_parser(), [])
    assert not missing  # was: plugins install/remove/use/rollback positionals without help
    sub = {a.dest: a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)}
    gallery = next(iter(sub.values())).choices["gallery"]
    commands = {a.dest: a for a in gallery._actions if isinstance(a, argparse._SubParsersAction)}
    for name in ("compact", "repair"):
        assert next(iter(commands.values())).choices[name].description
    assert next(iter(sub.values())).choices["demo"].description


def test_hub_install_writes_nothing_outside_a_hub_home_named_with_dashes_real():
    """A clone in a folder named `shitu-hub`: PaddleHub 2.4.0 replaced '-' with '_' in the whole temporary path of
    `hub install DIR`, writing `../shitu_hub/.../hub_home/tmp/` outside the clone (real `hub install`). The base
    folder has no '-' above it (pytest's tmp_path has: its stray would land in /tmp/pytest_of_...)."""
    import shutil
    import tempfile

    from shitu.serving.hub import control

    base = Path(tempfile.mkdtemp(prefix="first_hour_", dir="/tmp"))
    try:
        home = base / "shitu-hub" / "demo_output" / "hub_home"
        env = {**os.environ, "HUB_HOME": str(home)}
        control.install_modules(("index_search",), env=env)
        assert (home / "modules" / "index_search" / "module.py").is_file()
        assert sorted(p.name for p in base.iterdir()) == ["shitu-hub"]  # was: also shitu_hub
    finally:
        shutil.rmtree(base)


def test_demo_serves_with_photos_and_thumbnails_and_sigterm_stops_everything_real():
    """`make demo` in a clone folder named `shitu-hub` (HUB_HOME / SHITU_HOME left to the demo: inside
    demo_output): while it serves, OUT/photos exists (was: written after the server stopped) and every item of the
    demo gallery has a thumbnail on the page (was: six "no picture" cards); SIGTERM (what `timeout` sends) stops
    the demo and every process it started (was: the hub server left running, orphaned, on its port); nothing is
    written outside the clone (was: ../shitu_hub/demo_output/hub_home/tmp/). Real hub install and hub serving."""
    import re
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import threading
    import time

    import psutil
    import requests

    base = Path(tempfile.mkdtemp(prefix="first_hour_demo_", dir="/tmp"))  # no '-' above the clone
    clone = base / "shitu-hub"
    clone.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HUB_HOME", "SHITU_HOME")}
    shitu = Path(sys.executable).with_name("shitu")
    proc = subprocess.Popen(
        [str(shitu), "demo", "--out", "demo_output", "--serve"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    children: list[psutil.Process] = []
    try:
        lines: list[str] = []  # read by a thread: the demo's output stops at its "web page" line while it serves

        def read() -> None:
            for line in proc.stdout:
                lines.append(line)

        threading.Thread(target=read, daemon=True).start()
        url, deadline = None, time.monotonic() + 900
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"web page: (http://127\.0\.0\.1:(\d+))/web/", "".join(lines))
            url = found and found.group(1)
            time.sleep(0.5)
        assert url, "".join(lines)[-3000:]
        port = int(url.rpartition(":")[2])
        photos = clone / "demo_output" / "photos"
        assert (photos / "collage_cat_and_coffee.jpg").is_file() and (photos / "cat.jpg").is_file()
        body = requests.post(
            f"{url}/predict/image_recognition", json={"operation": "labels", "gallery": "demo"}, timeout=60
        ).json()
        items = [it for lab in body["results"]["labels"] for it in lab["items"]]
        assert len(items) == 6 and all(it["thumbnail"] for it in items), body
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children  # the hub server (and what it started)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # nobody answers on the demo's port
        assert sorted(p.name for p in base.iterdir()) == ["shitu-hub"]  # was: also shitu_hub
        assert sorted(p.name for p in clone.iterdir()) == ["demo_output"]
    finally:
        if proc.poll() is None:
            children = children or psutil.Process(proc.pid).children(recursive=True)
            proc.kill()
        for p in children:  # only what the demo started: the session's own servers are children of pytest too
            if p.is_running():
                p.kill()
        shutil.rmtree(base, ignore_errors=True)
