"""``Limits.max_galleries``: one client cannot create galleries without end (issue #27: 3000 galleries in 74 s,
493 MiB, on a server without a token). Real engine on the embedded models; a real server refuses the same way."""

from __future__ import annotations

import pytest

from shitu.errors import InvalidArgument

from .conftest import GENERAL_LITE, b64


def test_real_engine_refuses_a_gallery_beyond_the_limit_and_keeps_adding_to_existing_ones(models_dir, photos, tmp_path):
    from shitu.model_spec import ModelSpec
    from shitu.params import merge
    from shitu.serving.engine.engine import Engine

    params = merge(GENERAL_LITE, {"Limits": {"max_galleries": 2}})
    eng = Engine(
        ModelSpec.from_dir(models_dir / "det"), ModelSpec.from_dir(models_dir / "rec"), params, gallery_root=tmp_path
    )
    try:
        cat = [photos["cat"]]
        eng.gallery_add(cat, ["cat"], gallery="one")
        eng.gallery_add(cat, ["cat"], gallery="two")
        with pytest.raises(InvalidArgument, match=r"holds 2 galleries, the limit \(Limits.max_galleries\)"):
            eng.gallery_add(cat, ["cat"], gallery="three")
        assert not (tmp_path / "three").exists()
        eng.gallery_add([photos["coffee"]], ["coffee"], gallery="one")  # existing galleries keep growing
        assert len(eng.gallery("one")) == 2
    finally:
        eng.close()


def test_real_server_answers_the_limit_as_a_client_error(tmp_path_factory, photos):
    from shitu.plugins import registry
    from shitu.serving.gallery.local import DB_NAME
    from shitu.serving.hub import control as hub_serving

    from .conftest import start_served

    # the session's SHITU_HOME may already hold galleries of this scenario (other tests): room for exactly one more
    root = registry.get_pack().gallery_dir().parent
    held = sum(1 for d in root.iterdir() if (d / DB_NAME).is_file()) if root.is_dir() else 0
    limits = {"Limits": {"max_galleries": held + 1}}
    s = start_served(tmp_path_factory.mktemp("max-galleries"), init_args={"params": limits})
    try:
        add = {"operation": "add", "images": [b64(photos["cat"])], "labels": ["cat"]}
        assert s.post("image_recognition", {**add, "gallery": "first"}).json()["status"] == "000"
        body = s.post("image_recognition", {**add, "gallery": "second"}).json()
        assert body["status"] == "101" and "Limits.max_galleries" in body["msg"], body
        galleries = s.post("image_recognition", {"operation": "galleries"}).json()["results"]
        assert "second" not in str(galleries)
    finally:
        hub_serving.stop(s.proc)
