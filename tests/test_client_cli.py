"""``shitu recognize`` / ``shitu detect`` in-process and against the real `hub serving`; the remote gallery
commands against a server that has an admin token."""

from __future__ import annotations

import argparse
import json

import cv2
import pytest

from shitu.serving import cli
from shitu.serving.cli import recognize as client_cli
from shitu.serving.cli.toolkit import EXIT_ERROR, EXIT_NOTHING, EXIT_OK, EXIT_USAGE
from shitu.serving.client.sdk import ShituClient

from .conftest import start_served

REMOTE_GALLERY = "client-cli"
TOKEN = "cli-admin-token"


@pytest.fixture
def shitu(monkeypatch):
    """``shitu ...`` in this process (with the client commands registered, as the lead wires them)."""
    if "shitu.serving.cli.recognize" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "shitu.serving.cli.recognize"))
    monkeypatch.delenv(client_cli.TOKEN_ENV, raising=False)
    return lambda *argv: cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def files(tmp_path_factory, photos, queries):
    """name -> image file (photos, queries, and ``broken.jpg`` which is not an image)."""
    folder = tmp_path_factory.mktemp("cli-images")
    out = {}
    for name, img in {**photos, **queries}.items():
        out[name] = folder / f"{name}.jpg"
        cv2.imwrite(str(out[name]), img)
    out["broken"] = folder / "broken.jpg"
    out["broken"].write_bytes(b"this is not an image")
    return out


@pytest.fixture(scope="module")
def local_gallery(tmp_path_factory, photos):
    from shitu.serving.engine.engine import load_engine

    path = tmp_path_factory.mktemp("cli-gallery") / "g"
    engine = load_engine(gallery=path)
    engine.gallery_add(list(photos.values()), list(photos))
    engine.close()
    return path


@pytest.fixture(scope="module")
def remote_gallery(served, photos):
    with ShituClient(served.url) as c:
        c.gallery_add(list(photos.values()), list(photos), gallery=REMOTE_GALLERY)
    return REMOTE_GALLERY


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------------------
# in-process
# --------------------------------------------------------------------------------------------------------------
def test_local_recognize_prints_a_table_and_draws(shitu, files, local_gallery, tmp_path, capsys):
    drawn = tmp_path / "drawn"
    rc = shitu(
        "recognize",
        files["cat_mirrored_crop"],
        files["collage_cat_and_coffee"],
        "--gallery",
        local_gallery,
        "--draw",
        drawn,
    )
    out = capsys.readouterr().out
    assert rc == EXIT_OK, out
    blocks = out.split("collage_cat_and_coffee.jpg (760x420):")
    assert "cat_mirrored_crop.jpg (400x280):" in blocks[0] and "cat " in blocks[0]
    assert "cat " in blocks[1] and "coffee " in blocks[1]
    assert sorted(p.name for p in drawn.iterdir()) == ["cat_mirrored_crop.jpg", "collage_cat_and_coffee.jpg"]


def test_local_exit_status_nothing_and_error(shitu, files, local_gallery, capsys):
    assert shitu("recognize", files["not_in_gallery_ihc"], "--gallery", local_gallery, "--json") == EXIT_NOTHING
    (line,) = json_lines(capsys.readouterr().out)
    assert line["image"].endswith("not_in_gallery_ihc.jpg") and line["results"] == [] and line["width"] == 512
    assert (
        shitu("recognize", files["cat_mirrored_crop"], files["broken"], "--gallery", local_gallery, "--json")
        == EXIT_ERROR
    )
    lines = json_lines(capsys.readouterr().out)
    assert lines[0]["results"][0]["label"] == "cat" and "not an image" in lines[1]["error"]
    assert shitu("detect", files["collage_cat_and_coffee"], "--param", "threshold=0.3") == EXIT_OK
    assert capsys.readouterr().out.count("score") == 3  # two objects and the whole image


def test_missing_gallery_folder_is_named_as_typed(shitu, files, tmp_path, capsys, monkeypatch):
    """Was: `--gallery ./nope` answered `--gallery nope: ...` (the path as Path() prints it)."""
    monkeypatch.chdir(tmp_path)
    assert shitu("recognize", files["cat_mirrored_crop"], "--gallery", "./nope") == EXIT_USAGE
    assert "--gallery ./nope: not a gallery folder" in capsys.readouterr().err


def test_usage_errors(shitu, files, local_gallery, tmp_path, capsys):
    cat = files["cat_mirrored_crop"]
    assert shitu("recognize", tmp_path / "missing.jpg", "--gallery", local_gallery) == EXIT_USAGE
    assert "no such file" in capsys.readouterr().err
    assert shitu("recognize", cat, "--gallery", tmp_path / "no-gallery") == EXIT_USAGE
    assert "not a gallery folder" in capsys.readouterr().err
    assert shitu("recognize", cat, "--gallery", local_gallery, "--param", "thresold=0.3") == EXIT_USAGE
    assert "did you mean threshold" in capsys.readouterr().err
    assert shitu("recognize", cat, "--param", "threshold") == EXIT_USAGE
    assert shitu("recognize", cat, "--scenario", "no-such-pack", "--gallery", local_gallery) == EXIT_USAGE
    assert "no pack named" in capsys.readouterr().err
    for argv in (["recognize"], ["recognize", cat, "--batch-size", "0"], ["detect", cat, "--bogus"]):
        with pytest.raises(SystemExit) as exc:
            shitu(*argv)
        assert exc.value.code == EXIT_USAGE


# --------------------------------------------------------------------------------------------------------------
# remote
# --------------------------------------------------------------------------------------------------------------
def test_remote_recognize_matches_in_process(shitu, served, files, local_gallery, remote_gallery, capsys):
    images = [files["cat_mirrored_crop"], files["coffee_rescaled_crop"]]
    assert (
        shitu(
            "recognize",
            *images,
            "--server",
            served.url,
            "--gallery",
            remote_gallery,
            "--json",
            "--param",
            "threshold=0.3",
            "--batch-size",
            "1",
        )
        == EXIT_OK
    )
    remote = json_lines(capsys.readouterr().out)
    assert shitu("recognize", *images, "--gallery", local_gallery, "--json", "--param", "threshold=0.3") == EXIT_OK
    local = json_lines(capsys.readouterr().out)
    assert [r["results"][0]["label"] for r in remote] == ["cat", "coffee"]
    for a, b in zip(remote, local):  # same file bytes, same models, same pack defaults: same answer
        assert a["results"][0]["bbox"] == b["results"][0]["bbox"]
        # centred embeddings (general-lite 1.2.0) magnify the two engines' float rounding about 3x: 5e-3, not 1e-3
        assert a["results"][0]["score"] == pytest.approx(b["results"][0]["score"], abs=5e-3)
    assert (
        shitu("recognize", files["cat_mirrored_crop"], "--server", served.url, "--gallery", remote_gallery) == EXIT_OK
    )
    assert "cat_mirrored_crop.jpg (400x280):\n    cat " in capsys.readouterr().out


def test_remote_exit_status(shitu, served, files, remote_gallery, tmp_path, capsys):
    from shitu.serving.hub.control import free_port

    server = ["--server", served.url, "--gallery", remote_gallery]
    assert shitu("recognize", files["not_in_gallery_ihc"], *server) == EXIT_NOTHING
    assert "(nothing recognised)" in capsys.readouterr().out
    assert shitu("recognize", files["broken"], *server) == EXIT_ERROR
    assert "error: not an image" in capsys.readouterr().out
    assert shitu("recognize", files["cat"], "--server", served.url, "--gallery", "../etc") == EXIT_ERROR
    assert "invalid gallery name" in capsys.readouterr().err
    assert shitu("recognize", files["cat"], "--server", f"127.0.0.1:{free_port()}", "--retries", "1") == EXIT_ERROR
    assert "cannot connect after 2 attempts" in capsys.readouterr().err
    drawn = tmp_path / "boxes"
    assert (
        shitu("detect", files["collage_cat_and_coffee"], "--server", served.url, "--draw", drawn, "--json") == EXIT_OK
    )
    (line,) = json_lines(capsys.readouterr().out)
    assert len(line["boxes"]) == 3 and (drawn / "collage_cat_and_coffee.jpg").is_file()


# --------------------------------------------------------------------------------------------------------------
# remote gallery commands (wired by the lead into `shitu gallery ... --server URL`)
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def token_served(tmp_path_factory, served):
    from shitu.serving.hub import control as hub_serving

    s = start_served(tmp_path_factory.mktemp("served-token"), init_args={"token": TOKEN})
    yield s
    hub_serving.stop(s.proc)


def gallery_args(server: str, **kw) -> argparse.Namespace:
    """The namespace `shitu gallery add|remove|info|list` parses, plus --server and --token."""
    base = dict(
        server=server,
        gallery="client-remote",
        scenario=None,
        token=TOKEN,
        json=True,
        param=None,
        sources=[],
        label=None,
        image_root=None,
        delimiter="\t",
        batch_size=16,
        skip_bad=False,
        max_label_length=128,
        id=None,
        labels=False,
        limit=100,
        offset=0,
        timeout=120.0,
        retries=0,
    )
    base.update(kw)
    return argparse.Namespace(**base)


def test_remote_gallery_commands(token_served, files, tmp_path, capsys, monkeypatch):
    url = token_served.url
    monkeypatch.delenv(client_cli.TOKEN_ENV, raising=False)
    # no token: refused by the server
    args = gallery_args(url, token=None, sources=[str(files["cat"])], label="cat")
    assert client_cli.remote_gallery_add(args) == EXIT_ERROR
    assert "admin token" in capsys.readouterr().err
    # the token from the environment, images with --label
    monkeypatch.setenv(client_cli.TOKEN_ENV, TOKEN)
    assert client_cli.remote_gallery_add(args) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"added": 1, "ids": [1], "count": 1}
    monkeypatch.delenv(client_cli.TOKEN_ENV)
    # a PaddleClas list file (relative paths), one bad line: refused, then added with --skip-bad
    listing = tmp_path / "list.txt"
    listing.write_text("coffee.jpg\tcoffee\nrocket.jpg\trocket\nmissing.jpg\tghost\n")
    image_root = str(files["coffee"].parent)
    args = gallery_args(url, sources=[str(listing)], image_root=image_root)
    assert client_cli.remote_gallery_add(args) == EXIT_ERROR
    assert "missing.jpg" in capsys.readouterr().err
    args.skip_bad = True
    assert client_cli.remote_gallery_add(args) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["count"] == 3
    # info and list
    assert client_cli.remote_gallery_info(gallery_args(url, json=False)) == EXIT_OK
    assert "count" in capsys.readouterr().out
    assert client_cli.remote_gallery_list(gallery_args(url)) == EXIT_OK
    assert [r["label"] for r in json_lines(capsys.readouterr().out)] == ["cat", "coffee", "rocket"]
    # recognition needs no token; the new gallery answers
    shitu_main = cli.main if "shitu.serving.cli.recognize" in cli.COMMAND_MODULES else client_cli.main
    assert (
        shitu_main(
            ["recognize", str(files["rocket_bright_blur"]), "--server", url, "--gallery", "client-remote", "--json"]
        )
        == EXIT_OK
    )
    assert json_lines(capsys.readouterr().out)[0]["results"][0]["label"] == "rocket"
    # remove: something, then nothing, then a usage error
    assert client_cli.remote_gallery_remove(gallery_args(url, label=["cat"])) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"removed": 1}
    assert client_cli.remote_gallery_remove(gallery_args(url, label=["cat"], json=False)) == EXIT_NOTHING
    assert "removed 0 items" in capsys.readouterr().out
    assert client_cli.remote_gallery_remove(gallery_args(url)) == EXIT_USAGE
    assert client_cli.remote_gallery_remove(gallery_args(url, id=[2], token="wrong")) == EXIT_ERROR
    assert client_cli.remote_gallery_info(gallery_args(url)) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["count"] == 2
