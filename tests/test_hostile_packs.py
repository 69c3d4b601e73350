"""Hostile packs: names with a trailing newline, YAML bombs, archive bombs, downloads that never end."""

from __future__ import annotations

import gzip
import socket
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "plugins"))
import packkit  # noqa: E402
from packkit import home  # noqa: E402,F401  (autouse: a fresh SHITU_HOME per test)

from shitu.plugins import fetch, registry, store  # noqa: E402
from shitu.plugins import manifest as mf  # noqa: E402
from shitu.plugins.errors import ManifestError, PackError  # noqa: E402


def test_names_with_a_trailing_newline_are_refused(tmp_path):
    with pytest.raises(ManifestError, match="name"):
        mf.parse_manifest(packkit.manifest_dict(name="evilpack\n"))
    data = packkit.manifest_dict()
    data["galleries"] = {"tokg\n": dict(next(iter(data["galleries"].values())))}
    data["default_gallery"] = "tokg\n"
    with pytest.raises(ManifestError):
        mf.parse_manifest(data)
    from shitu.serving.engine.engine import GALLERY_NAME

    assert not GALLERY_NAME.match("tokg\n") and GALLERY_NAME.match("tokg")


def test_yaml_aliases_are_refused_before_they_expand():
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    assert len(laughs) < 2048
    with pytest.raises(ManifestError, match="aliases"):
        mf.load_yaml("name: testpack\n" + laughs)


def _tar_gz_declaring(path: Path, size: int) -> Path:
    """A .tar.gz whose only member header declares ``size`` bytes (its data is cut short: never reached)."""
    info = tarfile.TarInfo("pack/weights.bin")
    info.size = size
    path.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096))
    return path


def test_tar_bomb_is_refused_at_its_header(tmp_path):
    archive = _tar_gz_declaring(tmp_path / "bomb.tar.gz", 20 << 30)
    out = tmp_path / "out"
    with pytest.raises(PackError, match="refused before extracting"):
        fetch.extract_archive(archive, out)
    assert not any(out.rglob("*"))


def test_zip_bomb_is_refused_before_writing(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("pack/weights.bin", "w") as fh:
            block = b"\0" * (1 << 20)
            for _ in range(300):  # 300 MB of zeros in a 300 KB archive
                fh.write(block)
    assert archive.stat().st_size < 2 << 20
    out = tmp_path / "out"
    with pytest.raises(PackError, match="refused before extracting"):
        fetch.extract_archive(archive, out)
    assert not any(out.rglob("*"))


def test_installed_pack_archive_is_refused_before_extracting(tmp_path):
    registry.install(str(packkit.make_pack(tmp_path / "v1")), progress=False)
    archive = packkit.tar_folder(tmp_path / "again.tar.gz", packkit.make_pack(tmp_path / "v1b"))
    calls = []
    original = fetch.extract_archive

    def spy(arc, dest, select=None):
        calls.append(select is None)
        return original(arc, dest, select)

    import shitu.plugins.installer as installer

    installer.extract_archive = spy
    try:
        with pytest.raises(PackError, match="already installed"):
            registry.install(str(archive), progress=False)
    finally:
        installer.extract_archive = original
    assert calls == [False]  # only the manifest was extracted


def test_download_that_drips_ends_at_its_deadline(tmp_path, monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    stop = threading.Event()

    def drip() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        while not stop.wait(0.5):
            try:
                conn.sendall(b"x")
            except OSError:
                break
        conn.close()

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    monkeypatch.setenv("SHITU_DOWNLOAD_DEADLINE", "2")
    try:
        with pytest.raises(PackError, match="not finished within 2 s"):
            fetch.download(
                f"http://127.0.0.1:{server.getsockname()[1]}/pack.tar.gz", tmp_path / "pack.tar.gz", progress=False
            )
    finally:
        stop.set()
        server.close()
    assert not (tmp_path / "pack.tar.gz").exists()
    assert not store.installed_versions("testpack")


# -- bounds before work (issue 27): manifest bytes, depth and numbers; archive members ------------------------------
def _pack_with_yaml_tail(folder: Path, tail: str) -> Path:
    """A valid pack whose ``pack.yaml`` ends with ``tail`` (an ``x-`` extension key: ignored by the schema)."""
    packkit.make_pack(folder)
    with open(folder / "pack.yaml", "a", encoding="utf-8") as fh:
        fh.write(tail)
    return folder


def test_a_manifest_over_the_byte_cap_is_refused_before_parsing(tmp_path):
    # was: a 6.8 KB archive holding a 3 MB manifest took 190 s and 2.15 GB to install, and installed
    pad = "x-pad: [" + ",".join(["0"] * (mf.MAX_MANIFEST_BYTES // 2)) + "]\n"
    folder = _pack_with_yaml_tail(tmp_path / "big", pad)
    archive = packkit.tar_folder(tmp_path / "big.tar.gz", folder)
    assert archive.stat().st_size < 64 << 10
    with pytest.raises(ManifestError, match="larger than 262144 bytes"):
        registry.install(str(archive), progress=False)
    assert not store.installed_versions("testpack")


def test_an_oversized_manifest_already_in_the_store_is_listed_broken(tmp_path):
    # was: a 1M-integer manifest installed earlier cost each worker 24.5 s on its first `scenarios` call
    folder = store.version_dir("testpack", "1.0.0")
    _pack_with_yaml_tail(folder, "x-n: " + "9" * (1 << 20) + "\n")
    (info,) = [p for p in registry.list_packs() if p.name == "testpack"]
    assert "larger than" in (info.error or "")
    with pytest.raises(PackError, match="cannot be used"):
        registry.get_pack("testpack")


def test_long_numbers_in_a_manifest_are_refused(tmp_path):
    # was: ValueError (Python's 4300-digit cap) escaping as a traceback; a 3M-digit key took minutes
    folder = _pack_with_yaml_tail(tmp_path / "num", "x-n:\n  ? " + "1" * 5000 + "\n  : 1\n")
    with pytest.raises(ManifestError, match="a number longer than 64 characters"):
        registry.install(str(folder), progress=False)


def test_deeply_nested_manifest_is_refused_not_a_recursion_error(tmp_path):
    # was: the old `yaml_deep` pack crashed `plugins install` with RecursionError
    folder = _pack_with_yaml_tail(tmp_path / "deep", "x-deep: " + "[" * 600 + "]" * 600 + "\n")
    with pytest.raises(ManifestError, match=f"nested deeper than {mf.MAX_MANIFEST_DEPTH} levels"):
        registry.install(str(folder), progress=False)
    assert not store.installed_versions("testpack")


def test_the_manifest_bounds_leave_the_built_in_packs_well_inside():
    for path in (Path(mf.__file__).parent / "packs").glob("*/pack.yaml"):
        assert path.stat().st_size < mf.MAX_MANIFEST_BYTES // 8, path
        mf.read_manifest(path)


def _empty_members(count: int) -> list[tuple[str, bytes]]:
    return [(f"pack/empty/{i}", b"") for i in range(count)]


def test_an_archive_of_too_many_empty_members_is_refused_before_extracting(tmp_path):
    # was: a 12 MB tar.gz of 2M empty files was still unpacking after 280 s (the budget counted bytes only)
    archive = packkit.write_tar(tmp_path / "many.tar.gz", _empty_members(fetch.MAX_PACK_MEMBERS + 1))
    out = tmp_path / "out"
    with pytest.raises(PackError, match="holds more than 20000 members") as err:
        fetch.extract_archive(archive, out)
    assert err.value.http_status == 413
    assert not any(out.rglob("*"))


def test_member_cap_applies_to_installs_from_archives_zips_and_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("SHITU_MAX_PACK_MEMBERS", "40")
    src = packkit.make_pack(tmp_path / "src")
    for i in range(40):
        (src / "extra" / f"{i}").parent.mkdir(exist_ok=True)
        (src / "extra" / f"{i}").write_bytes(b"")
    for source in (packkit.tar_folder(tmp_path / "p.tar.gz", src), packkit.zip_folder(tmp_path / "p.zip", src), src):
        with pytest.raises(PackError, match="more than 40"):
            registry.install(str(source), progress=False)
    assert not store.installed_versions("testpack")


def test_pack_errors_are_rooted_on_the_one_error_root(tmp_path):
    from shitu.errors import Conflict, InvalidArgument, NotFound

    with pytest.raises(NotFound) as err:
        registry.get_pack("no-such-pack")
    assert err.value.http_status == 404 and isinstance(err.value, PackError)
    with pytest.raises(InvalidArgument) as bad:
        mf.parse_manifest(packkit.manifest_dict(name="Bad Name"))
    assert bad.value.http_status == 400 and isinstance(bad.value, ManifestError)
    registry.install(str(packkit.make_pack(tmp_path / "v1")), progress=False)
    with pytest.raises(Conflict, match="already installed"):
        registry.install(str(packkit.make_pack(tmp_path / "v1b")), progress=False)


def test_zip_member_count_comes_from_its_end_record_before_zipfile_parses_it_fake_zipfile(tmp_path, monkeypatch):
    # A fake beside the real tests above: ZipFile is replaced to prove the refusal comes before it parses the
    # central directory (2M entries would be 2M ZipInfo objects first).
    archive = packkit.zip_with(tmp_path / "many.zip", _empty_members(41))
    monkeypatch.setenv("SHITU_MAX_PACK_MEMBERS", "40")

    def no_parse(*args, **kwargs):
        raise AssertionError("ZipFile was opened before the member count was checked")

    monkeypatch.setattr(fetch.zipfile, "ZipFile", no_parse)
    with pytest.raises(PackError, match="holds more than 40 members"):
        fetch.extract_archive(archive, tmp_path / "out")
