"""One server, two scenario packs chosen per request (issue: plugin registry and scenario packs)."""

from __future__ import annotations

import shutil

import yaml

from .conftest import b64


def ok(resp):
    body = resp.json()
    assert body["status"] == "000", body
    return body["results"]


def test_image_recognition_answers_from_two_packs_in_one_server(served, photos, queries, tmp_path):
    from shitu.plugins import registry

    # A second pack: the embedded models under another name, with its own parameters and galleries.
    src = registry.get_pack("general-lite").root
    pack = tmp_path / "lite-strict"
    shutil.copytree(src, pack, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = yaml.safe_load((pack / "pack.yaml").read_text())
    manifest["name"] = "lite-strict"
    manifest["title"] = "General lite, strict detector"
    manifest["params"]["Global"]["threshold"] = 0.95
    (pack / "pack.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    registry.install(str(pack), progress=False)

    names = {s["name"] for s in ok(served.post("image_recognition", {"operation": "scenarios"}))}
    assert {"general-lite", "lite-strict"} <= names

    cat = b64(photos["cat"])
    for scenario, label in (("general-lite", "cat"), ("lite-strict", "kitty")):
        ok(
            served.post(
                "image_recognition",
                {"operation": "add", "scenario": scenario, "gallery": "two-packs", "images": [cat], "labels": [label]},
            )
        )
    query = {"gallery": "two-packs", "images": [b64(queries["cat_mirrored_crop"])]}
    lite = ok(served.post("image_recognition", {**query, "scenario": "general-lite"}))
    strict = ok(served.post("image_recognition", {**query, "scenario": "lite-strict"}))
    assert lite[0]["results"][0]["label"] == "cat"
    assert strict[0]["results"][0]["label"] == "kitty"  # each pack has its own galleries
    # ... and its own parameters: the strict pack's detector threshold leaves only the whole-image box.
    det = {"images": [b64(queries["collage_cat_and_coffee"])]}
    assert len(ok(served.post("mainbody_detection", {**det, "scenario": "general-lite"}))[0]["boxes"]) > 1
    boxes = ok(served.post("mainbody_detection", {**det, "scenario": "lite-strict"}))[0]["boxes"]
    assert [b["is_whole_image"] for b in boxes] == [True]
    bad = served.post("image_recognition", {**query, "scenario": "no-such-pack"}).json()
    assert bad["status"] == "101" and "no-such-pack" in bad["msg"]
