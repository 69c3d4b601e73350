"""`shitu gallery add|remove|info|list --server URL`: the gallery commands against a running server."""

from __future__ import annotations

import json

import cv2

from shitu.serving.cli import main


def test_remote_gallery_commands(served, photos, tmp_path, capsys):
    img = tmp_path / "rocket.jpg"
    cv2.imwrite(str(img), photos["rocket"])
    assert main(["gallery", "add", "cli-remote", str(img), "--label", "rocket", "--server", served.url]) == 0
    capsys.readouterr()
    assert main(["gallery", "info", "cli-remote", "--server", served.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 1
    assert main(["gallery", "list", "cli-remote", "--server", served.url]) == 0
    assert "rocket" in capsys.readouterr().out
    assert main(["gallery", "remove", "cli-remote", "--label", "rocket", "--server", served.url]) == 0
    assert main(["gallery", "remove", "cli-remote", "--label", "rocket", "--server", served.url]) == 1
    assert main(["gallery", "info", "no-such-gallery", "--server", served.url]) == 3


def _tree(root, photos, labels=("cat", "coffee")):
    for label in labels:
        (root / label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / label / f"{label}.jpg"), photos[label])
    return root


def test_one_gallery_grammar_in_process_and_on_the_server_real(served, photos, tmp_path, capsys):
    """`--gallery NAME` names the same gallery in-process and with --server; `build --gallery NAME SOURCE`; the
    same options with and without --server (was: the source taken as the gallery, a gallery the server lists
    unknown in-process, --labels refused with --server)."""
    tree = _tree(tmp_path / "my_photos", photos)
    # was: "give a gallery folder (my_photos/) or --gallery cli-mine, not both"
    assert (
        main(["gallery", "build", "--scenario", "general-lite", "--gallery", "cli-mine", str(tree), "--no-progress"])
        == 0
    )
    capsys.readouterr()
    for where in ([], ["--server", served.url]):  # the server sees the gallery built here, by the same name
        assert main(["gallery", "list", "--gallery", "cli-mine", "--labels", "--json", *where]) == 0, where
        assert json.loads(capsys.readouterr().out) == {"cat": 1, "coffee": 1}, where
    # A gallery the server made by adding images: the pack does not declare it, the engine here sees it.
    img = tmp_path / "rocket.jpg"
    cv2.imwrite(str(img), photos["rocket"])
    assert main(["gallery", "add", "--gallery", "cli-shop", str(img), "--label", "rocket", "--server", served.url]) == 0
    capsys.readouterr()
    assert main(["gallery", "list", "--gallery", "cli-shop"]) == 0  # was: pack 'general-lite' has no gallery
    assert "rocket" in capsys.readouterr().out
    # --gallery with two images: both are images (argparse gave the first one to GALLERY).
    img2 = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(img2), photos["astronaut"])
    argv = ["gallery", "add", "--gallery", "cli-shop", str(img), str(img2), "--label", "space"]
    assert main([*argv, "--server", served.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 2
    assert main(["gallery", "list", "--gallery", "nosuch-cli"]) == 2
    assert "has no gallery 'nosuch-cli'" in capsys.readouterr().err


def test_gallery_info_says_writable_and_iso_times_real(served, photos, tmp_path, capsys):
    from datetime import datetime

    folder = tmp_path / "g"
    assert main(["gallery", "build", str(folder), str(_tree(tmp_path / "t", photos, ("cat",))), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["gallery", "info", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["writable"] is True and "readonly" not in info  # was: readonly True for a writable gallery
    assert datetime.fromisoformat(info["created_at"]).tzinfo is not None  # was: a raw epoch float
    assert main(["gallery", "info", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "writable         True" in text and f"created_at       {info['created_at']}" in text
    img = tmp_path / "cat.jpg"
    cv2.imwrite(str(img), photos["cat"])
    assert main(["gallery", "add", "--gallery", "cli-info", str(img), "--label", "cat", "--server", served.url]) == 0
    capsys.readouterr()
    assert main(["gallery", "info", "--gallery", "cli-info", "--server", served.url, "--json"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert remote["writable"] is True and datetime.fromisoformat(remote["created_at"])
    answer = served.post("index_search", {"operation": "info", "gallery": "cli-info"}).json()  # the server's own
    raw = answer["results"]
    assert raw["writable"] is True and "readonly" not in raw and datetime.fromisoformat(raw["created_at"])


def test_local_only_build_options_are_refused_with_server(served, tmp_path, capsys):
    assert (
        main(["gallery", "build", "--gallery", "x", str(tmp_path), "--index-method", "HNSW32", "--server", served.url])
        == 2
    )
    assert "--index-method: not with --server" in capsys.readouterr().err
