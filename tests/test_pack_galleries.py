"""Packs bring their galleries: declared list files / folders / vectors are built on first use, with the gallery's
declared index_method and dist_type; ``shitu gallery --scenario NAME --gallery NAME``; general-lite answers out of
the box from its shipped demo gallery. Real models, real faiss, real ``hub serving``."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from shitu.plugins import registry

from .conftest import b64
from .lite_packs import lite_pack

LABELS = ("cat", "coffee", "rocket")


def shelf_pack(folder: Path, photos, name: str, list_lines: list[str] | None = None) -> Path:
    """A general-lite copy whose default gallery ``shelf`` is a list file of three photos, declared Flat while the
    pack's IndexProcess.index_method says HNSW32."""
    images = folder / "gallery" / "images"
    images.mkdir(parents=True)
    for label in LABELS:
        cv2.imwrite(str(images / f"{label}.jpg"), photos[label])
    lines = list_lines if list_lines is not None else [f"images/{label}.jpg\t{label}" for label in LABELS]
    (folder / "gallery" / "list.txt").write_text("\n".join(lines) + "\n")

    def mutate(data):
        data["params"]["IndexProcess"]["index_method"] = "HNSW32"
        data["galleries"]["shelf"] = {
            "title": "Shelf",
            "list_file": "gallery/list.txt",
            "index_method": "Flat",
            "dist_type": "IP",
        }
        data["default_gallery"] = "shelf"

    return lite_pack(folder, name, mutate=mutate)


def test_declared_list_gallery_is_built_on_first_use_with_its_index_real(tmp_path, photos, queries):
    from shitu.serving.engine.engine import load_engine

    registry.install(str(shelf_pack(tmp_path / "src", photos, "shelf-a")), progress=False)
    engine = load_engine("shelf-a")
    try:
        found = engine.recognize([queries["cat_mirrored_crop"]])[0]
        assert found and found[0].label == "cat"  # was: "gallery does not exist" / an empty gallery
        info = engine.gallery_info()
        assert info["count"] == 3 and info["index_method"] == "Flat"  # the gallery's declaration, not HNSW32
    finally:
        engine.close()


def test_gallery_cli_scenario_gallery_form_builds_and_inspects_real(tmp_path, photos, capsys):
    from shitu.serving.cli import main

    registry.install(str(shelf_pack(tmp_path / "src", photos, "shelf-b")), progress=False)
    assert main(["gallery", "build", "--scenario", "shelf-b", "--gallery", "shelf", "--no-progress"]) == 0
    assert "built shelf-b/shelf from list.txt: 3 items, index Flat" in capsys.readouterr().out
    assert main(["gallery", "info", "--scenario", "shelf-b", "--gallery", "shelf", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 3 and info["index_method"] == "Flat" and info["metric"] == "IP"
    assert main(["gallery", "info", "--scenario", "shelf-b", "--gallery", "nosuch"]) == 2
    assert "has no gallery 'nosuch'" in capsys.readouterr().err
    query = tmp_path / "query.jpg"
    cv2.imwrite(str(query), photos["rocket"])
    assert main(["gallery", "search", "--scenario", "shelf-b", "--gallery", "shelf", str(query), "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "SCORE" in out and "LABEL" in out and "rocket" in out  # column headers (were missing)


def test_bad_pack_list_lines_are_reported_with_the_pack_file(tmp_path, photos, capsys):
    from shitu.serving.cli import main

    lines = ["images/cat.jpg\tcat", "images/missing.jpg\tghost", "images/coffee.jpg", "images/rocket.jpg\trocket"]
    registry.install(str(shelf_pack(tmp_path / "src", photos, "shelf-bad", lines)), progress=False)
    assert main(["gallery", "build", "--scenario", "shelf-bad", "--gallery", "shelf", "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert "2 bad gallery entries" in err and "list.txt:2" in err and "list.txt:3" in err  # both at once
    # A request meets the same gallery: a clear error without this machine's paths.
    from shitu.serving.engine.engine import load_engine
    from shitu.serving.galleries.manager import GalleryRequestError

    engine = load_engine("shelf-bad")
    try:
        with pytest.raises(GalleryRequestError) as exc:
            engine.recognize([photos["cat"]])
    finally:
        engine.close()
    assert "cannot be built from the pack's list.txt (2 bad gallery entries" in str(exc.value)
    assert str(tmp_path) not in str(exc.value) and "/packs/" not in str(exc.value)


def test_served_pack_gallery_answers_instead_of_an_empty_list_real(served, tmp_path, photos, queries):
    registry.install(str(shelf_pack(tmp_path / "src", photos, "shelf-c")), progress=False)
    body = served.post(
        "image_recognition", {"scenario": "shelf-c", "images": [b64(queries["coffee_rescaled_crop"])]}
    ).json()
    assert body["status"] == "000", body
    assert [r["label"] for r in body["results"][0]["results"]][:1] == ["coffee"]  # was: [] from an empty gallery


def test_recognize_answers_right_after_install_from_the_shipped_demo_gallery_real(
    tmp_path, queries, monkeypatch, capsys
):
    from shitu.serving.cli import main

    monkeypatch.setenv("SHITU_HOME", str(tmp_path / "fresh-home"))
    photo = tmp_path / "collage.jpg"
    cv2.imwrite(str(photo), queries["collage_cat_and_coffee"])
    assert main(["recognize", str(photo)]) == 0  # was: "the default gallery ... does not exist"
    out = capsys.readouterr().out
    assert "cat" in out and "coffee" in out


def test_shipped_demo_gallery_has_thumbnails_on_a_fresh_server_real(served):
    """The page's gallery view of general-lite's demo gallery on a plain server (not `shitu demo`): every item it
    ships has its picture (was: six "no picture" cards; only `shitu demo` backfilled them)."""
    body = served.post("image_recognition", {"operation": "labels", "gallery": "demo", "per_label": 1}).json()
    assert body["status"] == "000", body
    labels = {lab["label"]: lab["items"] for lab in body["results"]["labels"]}
    shipped = [it for name in ("cat", "coffee", "astronaut", "rocket", "temple", "flower") for it in labels[name]]
    assert len(shipped) >= 6 and all(it["thumbnail"] for it in shipped), body


def test_demo_photos_are_written_for_the_readme_examples(tmp_path, capsys):
    from shitu.serving.cli import main

    assert main(["demo", "--photos", str(tmp_path / "photos")]) == 0
    names = {p.name for p in (tmp_path / "photos").iterdir()}
    assert {"cat.jpg", "coffee.jpg", "collage_cat_and_coffee.jpg", "not_in_gallery_ihc.jpg"} <= names


def test_manifest_allows_one_gallery_source(tmp_path):
    import yaml

    from shitu.plugins.manifest import ManifestError, read_manifest

    folder = lite_pack(tmp_path / "p", "two-sources")
    data = yaml.safe_load((folder / "pack.yaml").read_text())
    data["galleries"]["demo"]["list_file"] = "gallery/list.txt"  # besides its vectors_file
    (folder / "pack.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ManifestError, match="give one of list_file, folder or vectors_file"):
        read_manifest(folder / "pack.yaml")


def test_plugins_install_builds_the_galleries_the_pack_brings_real(tmp_path, photos, capsys):
    from shitu.plugins import store
    from shitu.serving.cli import main

    assert main(["plugins", "install", str(shelf_pack(tmp_path / "src", photos, "shelf-d")), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "gallery shelf-d/shelf built from list.txt" in out and "gallery shelf-d/demo built" in out
    assert (store.galleries_dir() / "shelf-d" / "shelf" / "gallery.db").is_file()  # before any use
