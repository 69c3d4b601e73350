"""Installing packs: every source, checksums, hostile archives, interrupted installs, downloads."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "plugins"))
import packkit  # noqa: E402
from packkit import home  # noqa: E402,F401  (autouse: a fresh SHITU_HOME per test)

from shitu.plugins import registry, store  # noqa: E402
from shitu.plugins.errors import PackError  # noqa: E402
from shitu.serving.cli import plugins as cli  # noqa: E402


@pytest.fixture
def base(tmp_path, home):
    """A store holding testpack 1.0.0, to show that failures leave it as it was."""
    registry.install(str(packkit.make_pack(tmp_path / "v1")), progress=False)
    return packkit.snapshot(home)


def assert_unchanged(home, before):
    assert packkit.snapshot(home) == before
    tmp = store.packs_dir() / ".tmp"
    assert not tmp.exists() or not any(tmp.iterdir())
    pack = registry.get_pack("testpack")
    assert pack.version == "1.0.0" and pack.source == "store" and registry.verify("testpack") == []


# -- sources -------------------------------------------------------------------------------------------------------
def test_install_from_folder(tmp_path, home):
    info = registry.install(str(packkit.make_pack(tmp_path / "src")), progress=False)
    assert (info.name, info.version, info.source, info.current) == ("testpack", "1.0.0", "store", True)
    root = home / "packs" / "testpack" / "1.0.0"
    assert info.root == root and (root / "install.json").is_file()
    pack = registry.get_pack("testpack")
    assert pack.is_available() and pack.root == root
    assert pack.detector_spec().model_dir == root / "models" / "det"
    assert pack.extractor_spec().model_file == "model.json"
    assert registry.verify("testpack") == []
    assert store.read_pointer("testpack") == ("1.0.0", [])


@pytest.mark.parametrize("kind", ["tar.gz", "zip", "tar.gz-topfolder", "zip-topfolder"])
def test_install_from_archive(tmp_path, kind):
    src = packkit.make_pack(tmp_path / "src")
    prefix = "testpack-1.0.0/" if kind.endswith("topfolder") else ""
    if kind.startswith("zip"):
        archive = packkit.zip_folder(tmp_path / "p.zip", src, prefix=prefix)
    else:
        archive = packkit.tar_folder(tmp_path / "p.tar.gz", src, prefix=prefix)
    registry.install(str(archive), progress=False)
    assert registry.get_pack("testpack").is_available()
    assert registry.verify("testpack") == []


def test_install_from_pack_yaml_path_and_expected_name(tmp_path):
    src = packkit.make_pack(tmp_path / "src")
    with pytest.raises(PackError, match="holds pack 'testpack', not 'other'"):
        registry.install(str(src / "pack.yaml"), name="other", progress=False)
    registry.install(str(src / "pack.yaml"), name="testpack", progress=False)


def test_install_from_local_http_url(tmp_path):
    serve = tmp_path / "www"
    serve.mkdir()
    packkit.tar_folder(serve / "testpack-1.0.0.tar.gz", packkit.make_pack(tmp_path / "src"))
    with packkit.http_server(serve) as url:
        info = registry.install(f"{url}/testpack-1.0.0.tar.gz", progress=False)
        with pytest.raises(PackError, match="HTTP 404"):
            registry.install(f"{url}/missing.tar.gz", progress=False)
    assert info.version == "1.0.0"
    assert store.read_record(info.root)["source"].endswith("/testpack-1.0.0.tar.gz")


def test_install_builtin_by_name_offline():
    info = registry.install("general-lite", progress=False)
    assert info.source == "store" and info.current
    pack = registry.get_pack()  # the default pack now resolves to the store copy
    assert pack.source == "store" and pack.name == "general-lite"
    assert registry.verify("general-lite") == []
    with pytest.raises(PackError, match="already installed"):
        registry.install("general-lite", progress=False)


def test_unknown_source():
    with pytest.raises(PackError, match="not a pack folder, an archive, an http"):
        registry.install("./no/such/thing.tar.gz", progress=False)
    with pytest.raises(PackError, match="not a folder, an archive, an http\\(s\\) URL or the name of a known pack"):
        registry.install("no-such-pack", progress=False)


# -- rejections leave the store untouched --------------------------------------------------------------------------
def test_checksum_mismatch_is_rejected(tmp_path, home, base):
    src = packkit.make_pack(tmp_path / "v2", version="2.0.0")
    (src / "models" / "rec" / "model.pdiparams").write_bytes(b"tampered")
    with pytest.raises(PackError, match=r"models/rec/model.pdiparams: 8 bytes, the manifest says"):
        registry.install(str(src), progress=False)

    def wrong_hash(d):
        d["models"]["recognizer"]["files"][1]["sha256"] = "0" * 64
        del d["models"]["recognizer"]["files"][1]["size"]

    src = packkit.make_pack(tmp_path / "v3", version="3.0.0", mutate=wrong_hash)
    with pytest.raises(PackError, match=r"checksum mismatch: pack 'testpack' 3.0.0: models/rec/model.pdiparams"):
        registry.install(str(src), progress=False)
    assert_unchanged(home, base)


def test_malformed_manifest_is_rejected(tmp_path, home, base):
    def bad(d):
        d["models"]["recognizer"]["files"][1]["sha256"] = "not-a-hash"

    src = packkit.make_pack(tmp_path / "bad", version="2.0.0", mutate=bad)
    with pytest.raises(PackError) as info:
        registry.install(str(src), progress=False)
    assert "models.recognizer.files[1].sha256: expected 64 hex characters" in str(info.value)
    (src / "pack.yaml").write_text("schema_version: 1\nname: testpack\n  bad indent: [\n")
    with pytest.raises(PackError, match="not valid YAML"):
        registry.install(str(src), progress=False)
    assert_unchanged(home, base)


def test_incompatible_pack_is_rejected(tmp_path, home, base):
    src = packkit.make_pack(tmp_path / "future", version="2.0.0", mutate=lambda d: d.update(shitu_hub=">=9.0"))
    with pytest.raises(PackError, match="needs shitu-hub >=9.0; this is 0.1.0"):
        registry.install(str(src), progress=False)
    assert_unchanged(home, base)


def test_missing_listed_file_is_rejected(tmp_path, home, base):
    src = packkit.make_pack(tmp_path / "v2", version="2.0.0")
    (src / "models" / "det" / "model.json").unlink()
    with pytest.raises(PackError, match="models/det/model.json is missing and models.detector gives no archive"):
        registry.install(str(src), progress=False)
    assert_unchanged(home, base)


#: tarfile's data filter makes an absolute member name relative: it is written inside the pack, whose manifest
#: (``schema_version: 1`` alone) is then refused.
STRIPPED = "name: required key is missing"


def _hostile_archives(tmp_path: Path, outside: Path):
    good = [("pack.yaml", b"schema_version: 1\n")]
    return {
        "dotdot-tar": (
            packkit.write_tar(tmp_path / "a.tar.gz", good + [("../x", b"evil")]),
            "would be written outside the pack",
        ),
        "deep-dotdot-tar": (
            packkit.write_tar(tmp_path / "b.tar.gz", good + [("models/../../x", b"evil")]),
            "would be written outside the pack",
        ),
        "absolute-tar": (
            packkit.write_tar(tmp_path / "c.tar.gz", good + [(str(outside / "abs.txt"), b"evil")]),
            STRIPPED,
        ),
        "symlink-out-tar": (
            packkit.write_tar(
                tmp_path / "d.tar.gz", good, extra=[packkit.link_info("models/link", str(outside / "target.txt"))]
            ),
            "points outside the pack",
        ),
        "symlink-dotdot-tar": (
            packkit.write_tar(
                tmp_path / "e.tar.gz", good, extra=[packkit.link_info("models/link", "../../../target.txt")]
            ),
            "points outside the pack",
        ),
        "hardlink-out-tar": (
            packkit.write_tar(
                tmp_path / "f.tar.gz", good, extra=[packkit.link_info("link", "../target.txt", hard=True)]
            ),
            "points outside the pack",
        ),
        "device-tar": (
            packkit.write_tar(tmp_path / "g.tar.gz", good, extra=[packkit.device_info("null")]),
            "is a device file or FIFO",
        ),
        "dotdot-zip": (
            packkit.zip_with(tmp_path / "h.zip", good + [("../x", b"evil")]),
            "would be written outside the pack",
        ),
        "absolute-zip": (
            packkit.zip_with(tmp_path / "i.zip", good + [(str(outside / "abs.txt"), b"evil")]),
            STRIPPED,
        ),
        "symlink-out-zip": (
            packkit.zip_with(tmp_path / "j.zip", good, symlinks={"link": str(outside / "t.txt")}),
            "points outside the pack",
        ),
    }


def test_path_escaping_archives_are_rejected(tmp_path, home, base):
    outside = tmp_path / "outside"
    outside.mkdir()
    for label, (archive, message) in _hostile_archives(tmp_path, outside).items():
        with pytest.raises(PackError) as info:
            registry.install(str(archive), progress=False)
        assert message in str(info.value), (label, str(info.value))
        assert str(archive) in str(info.value)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "x").exists() and not (home / "x").exists() and not (home / "packs" / "x").exists()
    assert_unchanged(home, base)


def test_absolute_tar_member_name_is_kept_by_the_writer(tmp_path):
    # Guard for the test above: the archive really carries an absolute name.
    archive = packkit.write_tar(tmp_path / "abs.tar.gz", [("/abs/name", b"x")])
    with tarfile.open(archive) as tf:
        assert tf.getnames() == ["/abs/name"]


def test_links_inside_an_archive_are_copied(tmp_path):
    src = packkit.make_pack(tmp_path / "src")
    rec_graph = (src / "models" / "rec" / "model.json").read_bytes()
    members = [(f.relative_to(src).as_posix(), f.read_bytes()) for f in sorted(src.rglob("*")) if f.is_file()]
    members = [m for m in members if m[0] != "models/rec/model.json"] + [("extra/graph.json", rec_graph)]
    extra = [
        packkit.link_info("models/rec/model.json", "../../extra/graph.json"),
        packkit.link_info("extra/hard.json", "extra/graph.json", hard=True),
    ]
    registry.install(str(packkit.write_tar(tmp_path / "links.tar.gz", members, extra=extra)), progress=False)
    pack = registry.get_pack("testpack")
    installed = pack.root / "models" / "rec" / "model.json"
    assert not installed.is_symlink() and installed.read_bytes() == rec_graph
    assert (pack.root / "extra" / "hard.json").read_bytes() == rec_graph
    assert registry.verify("testpack") == []


def test_link_to_a_folder_or_missing_member_is_rejected(tmp_path):
    good = [("pack.yaml", b"x"), ("models/a", b"a")]
    for extra, label in (([packkit.link_info("l", "models")], "folder"), ([packkit.link_info("l", "nope")], "gone")):
        with pytest.raises(PackError, match="does not point at a regular file"):
            registry.install(str(packkit.write_tar(tmp_path / f"{label}.tar.gz", good, extra=extra)), progress=False)


# -- interrupted install -------------------------------------------------------------------------------------------
def test_install_killed_halfway_leaves_previous_version_working(tmp_path, home):
    registry.install(str(packkit.make_pack(tmp_path / "v1")), progress=False)
    before = packkit.snapshot(home)
    src = packkit.make_pack(tmp_path / "v2", version="2.0.0", big=4 << 20)
    hook = tmp_path / "hook"
    hook.mkdir()
    env = {**os.environ, "SHITU_HOME": str(home)}
    # The test's own hook, injected into the installing process: after the first MiB of a big file it marks the
    # moment and waits to be killed (the product carries no test switch).
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from shitu.plugins import fetch, registry

        def pause(done):
            if done >= fetch.CHUNK:
                Path({str(hook)!r}, "copying").touch()
                time.sleep(60)

        fetch.on_copy_chunk = pause
        registry.install({str(src)!r}, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (hook / "copying").exists():
            if proc.poll() is not None:
                pytest.fail(f"install ended before the hook: {proc.communicate()}")
            if time.monotonic() > deadline:
                pytest.fail("the copy hook was never reached")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    leftovers = list((home / "packs" / ".tmp").iterdir())
    assert leftovers, "the kill should have left a staging folder behind"
    assert not (home / "packs" / "testpack" / "2.0.0").exists()
    # The previous version is untouched and still the one served.
    pack = registry.get_pack("testpack")
    assert pack.version == "1.0.0" and pack.is_available() and registry.verify("testpack") == []
    assert {k: v for k, v in packkit.snapshot(home).items() if "/.tmp/" not in k and not k.endswith(".tmp/")} == before
    # The next writer cleans up and the install works.
    registry.install(str(src), progress=False)
    assert registry.get_pack("testpack").version == "2.0.0"
    assert list((home / "packs" / ".tmp").iterdir()) == []


# -- packs whose models are downloaded (the official layout) --------------------------------------------------------
def test_remote_models_over_local_http(tmp_path):
    serve = tmp_path / "www"
    with packkit.http_server(serve) as url:
        src = packkit.remote_pack(tmp_path / "remote", url, serve, publish_sha=True)
        info = registry.install(str(src), progress=False)
    pack = registry.get_pack("remotepack")
    assert info.version == "1.0.0" and pack.is_available()
    assert (pack.root / "models" / "det" / "inference.pdmodel").read_bytes() == b"detector program 1.0.0"
    assert not (pack.root / "models" / "det" / "infer_cfg.yml").exists()  # optional, not in the archive
    assert pack.extractor_spec().model_dir == pack.root / "models" / "rec"
    record = store.read_record(pack.root)
    assert record["files"]["models/rec/inference.pdiparams"]["verified"] == "archive"
    assert registry.verify("remotepack") == []


def test_unpublished_hash_needs_sha256_or_trust(tmp_path):
    serve = tmp_path / "www"
    with packkit.http_server(serve) as url:
        src = packkit.remote_pack(tmp_path / "remote", url, serve, publish_sha=False)
        with pytest.raises(PackError) as info:
            registry.install(str(src), progress=False)
        det_sha = packkit.sha((serve / "tiny_det_v1.0_infer.tar").read_bytes())
        rec_sha = packkit.sha((serve / "tiny_rec_v1.0_infer.tar").read_bytes())
        assert f"Its sha256 is {det_sha}" in str(info.value) and "--trust" in str(info.value)
        assert not store.installed_versions("remotepack")
        with pytest.raises(PackError, match="matches no file"):
            registry.install(str(src), sha256=[det_sha, rec_sha, "f" * 64], progress=False)
        registry.install(str(src), sha256=[det_sha, rec_sha], progress=False)
        pack = registry.get_pack("remotepack")
        assert store.read_record(pack.root)["files"]["models/det/inference.pdmodel"]["verified"] == "archive"
        assert registry.verify("remotepack") == []
        # The hashes found at install time are pinned: a later change is noticed.
        (pack.root / "models" / "rec" / "inference.pdmodel").write_bytes(b"recognizer program 1.0.X")
        problems = registry.verify("remotepack")
        assert len(problems) == 1 and "models/rec/inference.pdmodel: mismatch" in problems[0]
        registry.uninstall("remotepack")
        registry.install(str(src), trust=True, progress=False)
    record = store.read_record(registry.get_pack("remotepack").root)
    assert record["trusted"] is True
    assert record["files"]["models/det/inference.pdmodel"]["verified"] == "trust"


def test_no_network_fails_fast_with_instructions_then_installs_from_files(tmp_path, monkeypatch):
    serve = tmp_path / "www"
    dead = f"http://127.0.0.1:{packkit.closed_port()}"
    src = packkit.remote_pack(tmp_path / "remote", dead, serve, publish_sha=False)
    with pytest.raises(PackError) as info:
        registry.install(str(src), progress=False)
    text = str(info.value)
    assert "cannot download" in text and "tiny_det_v1.0_infer.tar" in text
    assert f"{dead}/tiny_det_v1.0_infer.tar" in text and f"{dead}/tiny_rec_v1.0_infer.tar" in text
    command = next(
        line.strip()
        for line in text.splitlines()
        if line.strip().startswith("shitu plugins install") and "--from" in line
    )
    assert command == (
        f"shitu plugins install {src} --from tiny_det_v1.0_infer.tar --from tiny_rec_v1.0_infer.tar --trust"
    )
    assert not store.installed_versions("remotepack")
    # Run exactly that command in the folder holding the files ("fetched on a connected machine").
    monkeypatch.chdir(serve)
    argv = shlex.split(command)[2:]
    assert cli.main(argv + ["--no-progress"]) == 0
    pack = registry.get_pack("remotepack")
    assert pack.is_available() and registry.verify("remotepack") == []


def test_download_size_limits(tmp_path, monkeypatch):
    serve = tmp_path / "www"
    with packkit.http_server(serve) as url:
        src = packkit.remote_pack(tmp_path / "remote", url, serve)
        monkeypatch.setenv("SHITU_MAX_DOWNLOAD_BYTES", "100")
        with pytest.raises(PackError, match="more than the limit of 100"):
            registry.install(str(src), progress=False)
        monkeypatch.delenv("SHITU_MAX_DOWNLOAD_BYTES")
        import yaml

        data = yaml.safe_load((src / "pack.yaml").read_text())
        data["models"]["detector"]["archive"]["size"] = 10
        (src / "pack.yaml").write_text(yaml.safe_dump(data))
        with pytest.raises(PackError, match="more than the limit of 10"):
            registry.install(str(src), progress=False)
    assert not store.installed_versions("remotepack")


def test_official_pack_installs_from_downloaded_files(tmp_path):
    # Stand-ins for PaddleClas's tarballs, laid out as documented (<name>_infer/inference.*).
    files = []
    for stem in ("ppyolov2_r50vd_dcn_mainbody_v1.0", "product_ResNet50_vd_aliproduct_v1.0"):
        files.append(
            packkit.write_tar(
                tmp_path / f"{stem}_infer.tar",
                [
                    (f"{stem}_infer/inference.pdmodel", stem.encode()),
                    (f"{stem}_infer/inference.pdiparams", b"w" * 99),
                    (f"{stem}_infer/inference.pdiparams.info", b"i"),
                ],
                gz=False,
            )
        )
    with pytest.raises(PackError) as err:
        registry.get_pack("product").detector_spec()
    assert (
        "shitu plugins install product --from ppyolov2_r50vd_dcn_mainbody_v1.0_infer.tar --from "
        "product_ResNet50_vd_aliproduct_v1.0_infer.tar --trust" in str(err.value)
    )
    registry.install("product", from_files=files, trust=True, progress=False)
    pack = registry.get_pack("product")
    assert pack.source == "store" and pack.is_available()
    spec = pack.extractor_spec()
    assert spec.model_file == "inference.pdmodel" and spec.model_dir == pack.root / "models" / "rec"
    assert spec.files()[1].name == "inference.pdiparams"
    assert pack.detector_spec().decoder == "paddledet"
    assert pack.gallery().embedding_size == 512
    assert registry.verify("product") == []


def test_writers_wait_for_the_lock_and_give_up_clearly(tmp_path, monkeypatch):
    import threading

    registry.install(str(packkit.make_pack(tmp_path / "v1")), progress=False)
    monkeypatch.setenv("SHITU_LOCK_TIMEOUT", "0.3")
    held, release = threading.Event(), threading.Event()

    def holder():
        with store.lock():
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(30)
        with pytest.raises(PackError, match="another shitu command is changing the pack store"):
            registry.use("testpack", "1.0.0")
        with pytest.raises(PackError, match="another shitu command"):
            registry.install(str(packkit.make_pack(tmp_path / "v2", version="2.0.0")), progress=False)
    finally:
        release.set()
        thread.join(30)
    assert registry.get_pack("testpack").version == "1.0.0"
    # Readers never wait for the lock.
    assert registry.verify("testpack") == []
