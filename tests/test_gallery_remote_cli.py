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
