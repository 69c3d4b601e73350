"""Hostile and big export archives (`shitu gallery import`), and staging folders of killed backups (issue 27).

Real galleries, real tar.gz archives, the real CLI. Sizes are read from headers (tar member, ``.npy``) before
anything is allocated, members are read as streams, manifest fields are checked; each refusal is a BackupError
naming the member, never a traceback.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from shitu.serving.gallery.backup import BackupError, backup, export_archive, import_archive, read_archive
from shitu.serving.gallery.local import Gallery

DIM = 32


def _gallery(path: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    with Gallery.create(path, DIM, index_method="Flat") as g:
        g.add(rng.standard_normal((n, DIM)).astype(np.float32), [f"item {i}" for i in range(n)])
    return path


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


class _Repeat(io.RawIOBase):
    """``size`` bytes of ``line`` repeated, produced as read (a big member without holding it in memory)."""

    def __init__(self, line: bytes, size: int) -> None:
        self.line, self.left = line, size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        n = min(len(b), self.left)
        chunk = (self.line * (n // len(self.line) + 1))[:n]
        b[:n] = chunk
        self.left -= n
        return n


def _write(archive: Path, members: list[tuple[str, int, io.RawIOBase | bytes]]) -> Path:
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for name, size, data in members:
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(data) if isinstance(data, bytes) else io.BufferedReader(data))
    return archive


def test_a_npy_header_declaring_4_tib_is_refused_from_its_header(tmp_path):
    export_archive(_gallery(tmp_path / "g"), tmp_path / "e.tar.gz")
    parts = _members(tmp_path / "e.tar.gz")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 35, 32)})
    bomb = header.getvalue() + b"\0" * 64
    bad = _write(
        tmp_path / "bomb.tar.gz",
        [(n, len(parts[n]), parts[n]) for n in ("manifest.json", "records.jsonl")] + [("vectors.npy", len(bomb), bomb)],
    )
    with pytest.raises(BackupError, match=r"vectors.npy is float32 \[34359738368, 32\], expected float32 \[3, 32\]"):
        import_archive(bad, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_a_small_archive_of_a_huge_records_file_is_refused_from_the_tar_header(tmp_path):
    export_archive(_gallery(tmp_path / "g"), tmp_path / "e.tar.gz")
    parts = _members(tmp_path / "e.tar.gz")
    size = 256 << 20  # 256 MiB of valid-looking lines, a few hundred KiB compressed, for a manifest of 3 items
    line = json.dumps({"id": 1, "label": "x", "metadata": {"pad": "y" * 200}}).encode() + b"\n"
    bad = _write(
        tmp_path / "big.tar.gz",
        [
            ("manifest.json", len(parts["manifest.json"]), parts["manifest.json"]),
            ("records.jsonl", size, _Repeat(line, size)),
            ("vectors.npy", len(parts["vectors.npy"]), parts["vectors.npy"]),
        ],
    )
    assert bad.stat().st_size < 8 << 20
    with pytest.raises(BackupError, match=rf"records.jsonl is {size} bytes; 3 records take at most"):
        read_archive(bad)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("hamming_radius", "x", "hamming_radius must be a non-negative integer, not 'x'"),
        ("dim", 0, "dim must be a positive integer"),
        ("count", -1, "count must be a non-negative integer"),
        ("metric", "cosine?", "metric must be IP, L2 or hamming"),
    ],
)
def test_bad_manifest_fields_are_named_not_a_traceback(tmp_path, field, value, words):
    export_archive(_gallery(tmp_path / "g"), tmp_path / "e.tar.gz")
    parts = _members(tmp_path / "e.tar.gz")
    manifest = json.loads(parts["manifest.json"])
    manifest[field] = value
    parts["manifest.json"] = json.dumps(manifest).encode()
    bad = _write(tmp_path / "bad.tar.gz", [(n, len(d), d) for n, d in parts.items()])
    with pytest.raises(BackupError, match=words):
        import_archive(bad, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_cli_import_of_a_bad_archive_answers_an_error_line(tmp_path):
    export_archive(_gallery(tmp_path / "g"), tmp_path / "e.tar.gz")
    parts = _members(tmp_path / "e.tar.gz")
    manifest = json.loads(parts["manifest.json"]) | {"hamming_radius": "x"}
    parts["manifest.json"] = json.dumps(manifest).encode()
    bad = _write(tmp_path / "bad.tar.gz", [(n, len(d), d) for n, d in parts.items()])
    shitu = Path(sys.executable).with_name("shitu")
    out = subprocess.run(
        [str(shitu), "gallery", "import", str(bad), str(tmp_path / "new")], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 3, out.stderr
    assert "error:" in out.stderr and "hamming_radius" in out.stderr and "Traceback" not in out.stderr


_UNDER_LIMIT = """
import resource, sys
from shitu.serving.gallery.backup import read_archive
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), vm + (1 << 30)))  # 1 GiB more address space at most
manifest, records, vectors = read_archive(sys.argv[1])
print(len(records), vectors.shape)
"""


def test_a_legitimate_export_imports_within_1_gib_more_address_space(tmp_path):
    # Reading a member used to allocate the member limit (8 GiB) in one read, whatever the member's size.
    export_archive(_gallery(tmp_path / "g", n=2000), tmp_path / "e.tar.gz")
    out = subprocess.run(
        [sys.executable, "-c", _UNDER_LIMIT, str(tmp_path / "e.tar.gz")], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2000", "(2000,", "32)"]
    manifest, records, vectors = read_archive(tmp_path / "e.tar.gz")
    with Gallery.open(tmp_path / "g") as g:
        assert [r["id"] for r in records] == [r["id"] for r in g.list(limit=5000)]
        assert np.array_equal(vectors[5], g.get(records[5]["id"], with_vector=True)["vector"])


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_the_next_backup_removes_staging_folders_of_killed_backups(tmp_path):
    g = _gallery(tmp_path / "g")
    root = tmp_path / "backups"
    backup(g, root / "b1")
    # What a backup killed mid-copy leaves (its staging folder, named by staging_dir with the dead pid).
    dead = root / f".b2.backup.{_dead_pid()}.tmp"
    dead.mkdir()
    for name in ("gallery.db", "gallery.db-wal"):
        (dead / name).write_bytes(b"partial")
    alive_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = root / f".b3.backup.{alive_proc.pid}.tmp"  # a backup still running: left alone
        alive.mkdir()
        (alive / "gallery.db").write_bytes(b"in progress")
        foreign = root / f".notes.backup.{_dead_pid()}.tmp"  # not what a backup writes: left alone
        foreign.mkdir()
        (foreign / "notes.txt").write_text("mine")
        backup(g, root / "b4")
        assert not dead.exists()
        assert alive.exists() and foreign.exists()
        assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["b1", "b4"]
    finally:
        alive_proc.kill()
        alive_proc.wait()
    assert os.path.isdir(root / "b4")
