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
