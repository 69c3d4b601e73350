"""File helpers shared by every package (a leaf: imports nothing of shitu): sha256 of a file, fsync of a folder,
a folder built whole beside its destination, then renamed into place, and whether the process that left a temp file
or folder is still alive.

Both ``shitu.plugins`` (pack store, downloads) and ``shitu.serving`` (galleries, builds) import these, so there
is one copy of each.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import BinaryIO

__all__ = ["fsync_dir", "move_into_place", "pid_alive", "sha256_file", "sha256_stream", "staging_dir"]

_BLOCK = 1 << 22


def sha256_stream(f: BinaryIO) -> str:
    """Hex sha256 of what is left to read in the binary file object ``f`` (read in 4 MiB blocks)."""
    h = hashlib.sha256()
    for block in iter(lambda: f.read(_BLOCK), b""):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of the file at ``path``."""
    with open(path, "rb") as f:
        return sha256_stream(f)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or link inside folder ``path`` durable (best effort where folders cannot be fsynced)."""
    try:
        fd = os.open(Path(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def staging_dir(dest: Path, tag: str) -> Path:
    """A hidden sibling of folder ``dest`` to build it in (``.<name>.<tag>.<pid>.tmp``), not created; one a crashed
    run of this process id left behind is removed first. ``dest``'s parent is created."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{tag}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def move_into_place(tmp: Path, dest: Path) -> None:
    """Rename the finished folder ``tmp`` to ``dest`` (which may exist only as an empty folder)."""
    if dest.exists():
        dest.rmdir()
    os.rename(tmp, dest)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (temp files and staging folders of dead writers are removed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True
