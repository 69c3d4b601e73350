"""Discovery (built-in, entry points, store), selection, defaults, versions side by side, use and rollback."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "plugins"))
import packkit  # noqa: E402
from packkit import home  # noqa: E402,F401  (autouse: a fresh SHITU_HOME per test)

from shitu.plugins import registry, store  # noqa: E402
from shitu.plugins.errors import PackError  # noqa: E402


def _install(tmp_path, version, **kw):
    return registry.install(str(packkit.make_pack(tmp_path / f"src-{version}", version=version, **kw)), progress=False)


# -- defaults and built-ins ----------------------------------------------------------------------------------------
def test_default_pack_is_general_lite_and_works_offline(home):
    assert registry.default_pack_name() == "general-lite"
    pack = registry.get_pack()
    assert (pack.name, pack.source) == ("general-lite", "builtin")
    assert pack.is_available()
    det, rec = pack.detector_spec(), pack.extractor_spec()
    assert det.kind == "detector" and det.decoder == "gfl" and det.model_dir == pack.root / "models" / "det"
    assert rec.kind == "extractor" and rec.pooling == "gap" and rec.files()[0].name == "model.json"
    assert pack.params["Global"] == {
        "threshold": 0.2,
        "max_det_results": 5,
        "min_box_ratio": 0.1,
        "framing": "main_box",
        "crop_padding": 0.0,
    }
    assert pack.params["IndexProcess"]["score_thres"] == "auto" and pack.params["RecPostProcess"]["pooling"] == "gem"
    gallery = pack.gallery()
    assert gallery.name == pack.default_gallery == "demo"
    assert pack.gallery_dir() == home / "galleries" / "general-lite" / "demo"
    assert gallery.open_args() == {
        "path": home / "galleries" / "general-lite" / "demo",
        "dim": 512,
        "index_method": "Flat",
        "dist_type": "IP",
    }
    # The specs are copies: callers cannot change the pack.
    det.transform_ops.clear()
    assert pack.detector_spec().transform_ops


def test_select_scenario_and_gallery(tmp_path):
    pack, gallery = registry.select()
    assert (pack.name, gallery.name) == ("general-lite", "demo")
    _install(tmp_path, "1.0.0")
    pack, gallery = registry.select("testpack", "other")
    assert (pack.name, gallery.name, gallery.dist_type, gallery.embedding_size) == ("testpack", "other", "L2", 8)
    assert registry.select("testpack")[1].name == "main"
    with pytest.raises(PackError, match="pack 'testpack' has no gallery 'nope' \\(galleries: main, other\\)"):
        registry.select("testpack", "nope")


def test_shitu_home_is_read_at_call_time(tmp_path, monkeypatch):
    pack = registry.get_pack()
    monkeypatch.setenv("SHITU_HOME", str(tmp_path / "elsewhere"))
    assert pack.gallery_dir("demo") == tmp_path / "elsewhere" / "galleries" / "general-lite" / "demo"
    with pytest.raises(PackError, match="has no gallery 'nope'"):
        pack.gallery_dir("nope")


def test_default_pack_from_env_and_store(tmp_path, monkeypatch):
    _install(tmp_path, "1.0.0")
    assert registry.default_pack_name() == "general-lite"
    registry.use("testpack")
    assert registry.default_pack_name() == "testpack" and registry.get_pack().name == "testpack"
    monkeypatch.setenv("SHITU_DEFAULT_PACK", "general-lite")
    assert registry.get_pack().name == "general-lite"
    monkeypatch.delenv("SHITU_DEFAULT_PACK")
    registry.uninstall("testpack")  # the default named a pack that is gone: back to general-lite
    assert registry.default_pack_name() == "general-lite"


def test_official_packs_listed_but_not_available():
    infos = {p.name: p for p in registry.list_packs()}
    for name in ("general", "product", "vehicle", "logo", "anime"):
        assert infos[name].source == "builtin" and not infos[name].available and infos[name].current
        pack = registry.get_pack(name)
        with pytest.raises(PackError) as err:
            pack.extractor_spec()
        text = str(err.value)
        assert "model files are not installed" in text and f"shitu plugins install {name} --from" in text
        assert "https://paddle-imagenet-models-name.bj.bcebos.com/" in text
    assert infos["general-lite"].available and infos["general-lite"].default


def test_unknown_pack_and_version():
    with pytest.raises(PackError, match="no pack named 'nope'.*general-lite"):
        registry.get_pack("nope")
    with pytest.raises(PackError, match=r"has no version '9.9' \(available: 1.3.0\)"):
        registry.get_pack("general-lite", "9.9")


# -- store: versions side by side ----------------------------------------------------------------------------------
def test_versions_side_by_side_use_and_rollback(tmp_path, home):
    _install(tmp_path, "1.0.0")
    _install(tmp_path, "2.0.0", dim=16)
    assert store.installed_versions("testpack") == ["1.0.0", "2.0.0"]
    assert registry.get_pack("testpack").version == "2.0.0"  # a new install becomes current
    assert registry.get_pack("testpack").gallery().embedding_size == 16
    assert registry.get_pack("testpack", "1.0.0").version == "1.0.0"  # both stay usable
    infos = [(p.version, p.current) for p in registry.list_packs() if p.name == "testpack"]
    assert infos == [("1.0.0", False), ("2.0.0", True)]

    registry.use("testpack", "1.0.0")
    pack = registry.get_pack("testpack")
    assert pack.version == "1.0.0" and pack.detector_spec().model_dir == home / "packs/testpack/1.0.0/models/det"
    assert registry.rollback("testpack") == "2.0.0"
    assert registry.get_pack("testpack").version == "2.0.0"
    with pytest.raises(PackError, match="no earlier version"):
        registry.rollback("testpack")
    with pytest.raises(PackError, match="3.0.0 is not installed"):
        registry.use("testpack", "3.0.0")

    # Rollback undoes switches newest first: install 3.0.0, use 1.0.0 -> back to 3.0.0, then 2.0.0.
    _install(tmp_path, "3.0.0")
    registry.use("testpack", "1.0.0")
    assert store.read_pointer("testpack") == ("1.0.0", ["3.0.0", "2.0.0"])
    assert registry.rollback("testpack") == "3.0.0"
    assert registry.rollback("testpack") == "2.0.0"


def test_uninstall_one_version_then_all(tmp_path, home):
    _install(tmp_path, "1.0.0")
    _install(tmp_path, "2.0.0")
    assert registry.uninstall("testpack", "2.0.0") == ["2.0.0"]
    assert registry.get_pack("testpack").version == "1.0.0"  # the previous current takes over
    assert not (home / "packs" / "testpack" / "2.0.0").exists()
    with pytest.raises(PackError, match="2.0.0 is not installed"):
        registry.uninstall("testpack", "2.0.0")
    _install(tmp_path, "2.0.0")
    assert registry.uninstall("testpack") == ["1.0.0", "2.0.0"]
    assert not (home / "packs" / "testpack").exists()
    with pytest.raises(PackError, match="no pack named 'testpack'"):
        registry.get_pack("testpack")
    with pytest.raises(PackError, match="builtin packs cannot be removed"):
        registry.uninstall("general-lite")


def test_store_copy_of_a_builtin_wins(tmp_path):
    registry.install("general-lite", progress=False)
    rows = [(p.source, p.current) for p in registry.list_packs() if p.name == "general-lite"]
    assert rows == [("store", True), ("builtin", False)]
    assert registry.get_pack().source == "store"
    assert registry.get_pack("general-lite", "1.3.0").source == "store"


def test_broken_store_manifest_is_listed_not_fatal(tmp_path, home):
    info = _install(tmp_path, "1.0.0")
    (info.root / "pack.yaml").write_text("schema_version: 1\nname: testpack\n")
    rows = [p for p in registry.list_packs() if p.name == "testpack"]
    assert len(rows) == 1 and rows[0].error and "version: required key is missing" in rows[0].error
    assert registry.get_pack().name == "general-lite"
    with pytest.raises(PackError, match="cannot be used: .*version: required key is missing"):
        registry.get_pack("testpack")


def test_incompatible_pack_is_listed_and_refused(tmp_path, home):
    src = packkit.make_pack(tmp_path / "src", mutate=lambda d: d.update(shitu_hub=">=9"))
    dest = home / "packs" / "testpack" / "1.0.0"
    dest.parent.mkdir(parents=True)
    src.rename(dest)  # as if installed by a newer shitu-hub
    (info,) = [p for p in registry.list_packs() if p.name == "testpack"]
    assert not info.compatible
    with pytest.raises(PackError, match="needs shitu-hub >=9"):
        registry.get_pack("testpack")
    assert registry.find_pack("testpack").version == "1.0.0"


def test_verify_reports_missing_and_mismatched(tmp_path):
    info = _install(tmp_path, "1.0.0")
    assert registry.verify("testpack") == []
    (info.root / "models" / "det" / "model.json").unlink()
    (info.root / "pack.yaml").write_text((info.root / "pack.yaml").read_text() + "\n# edited\n")
    problems = registry.verify("testpack")
    assert any("models/det/model.json: missing" in p for p in problems)
    assert any("pack.yaml: size" in p for p in problems)
    assert not registry.get_pack("testpack").is_available()
    with pytest.raises(PackError, match="installed copy is damaged: run `shitu plugins remove testpack 1.0.0`"):
        registry.get_pack("testpack").detector_spec()
    assert registry.verify("nope") and "no pack named" in registry.verify("nope")[0]


# -- entry points --------------------------------------------------------------------------------------------------
def pip_install_beside(wheel: Path, site: Path, monkeypatch) -> None:
    """``pip install --target site wheel`` and put ``site`` on ``sys.path`` for this test only: a real pip install
    that cannot leave the running virtualenv changed, even if the test is killed half-way."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()


@pytest.fixture
def entrypoint_dist(tmp_path, monkeypatch):
    """A distribution declaring ``[shitu.packs] mypack = mypack_pkg``, pip-installed beside the virtualenv."""
    pack_dir = packkit.make_pack(tmp_path / "mypack", name="mypack", version="0.3.0")
    wheel = packkit.build_wheel(tmp_path, pack_dir)
    pip_install_beside(wheel, tmp_path / "site", monkeypatch)
    return "mypack"


def test_discovery_from_all_three_sources(tmp_path, entrypoint_dist):
    _install(tmp_path, "1.0.0")
    sources = {(p.name, p.source) for p in registry.list_packs()}
    assert ("general-lite", "builtin") in sources
    assert ("testpack", "store") in sources
    assert ("mypack", "entrypoint") in sources
    (info,) = [p for p in registry.list_packs() if p.name == "mypack"]
    assert info.error is None and info.available and info.version == "0.3.0"
    assert "mypack = mypack_pkg" in info.detail
    pack = registry.get_pack("mypack")
    assert pack.source == "entrypoint" and (pack.root / "pack.yaml").is_file()
    assert pack.detector_spec().model_dir == pack.root / "models" / "det"
    # Found without importing the package (its __init__ raises).
    assert "mypack_pkg" not in sys.modules
    # An entry-point pack installs into the store by name, and the store copy then wins.
    registry.install("mypack", progress=False)
    assert registry.get_pack("mypack").source == "store"


def test_entrypoint_pack_disappears_after_uninstall(tmp_path, monkeypatch):
    pack_dir = packkit.make_pack(tmp_path / "mypack", name="mypack", version="0.3.0")
    wheel = packkit.build_wheel(tmp_path, pack_dir, dist="shitu_test_other", pkg="other_pkg", ep_name="wrongname")
    site = tmp_path / "site"
    pip_install_beside(wheel, site, monkeypatch)
    (info,) = [p for p in registry.list_packs() if p.source == "entrypoint" and p.name == "wrongname"]
    assert "the entry point name must be the pack name" in info.error
    shutil.rmtree(site)  # uninstalled
    importlib.invalidate_caches()
    assert not [p for p in registry.list_packs() if p.source == "entrypoint"]
