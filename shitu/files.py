"""File helpers shared by every package (a leaf: imports nothing of shitu): sha256 of a file, fsync of a folder.

Both ``shitu.plugins`` (pack store, downloads) and ``shitu.serving`` (galleries, builds) import these, so there
is one copy of each.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

__all__ = ["fsync_dir", "sha256_file", "sha256_stream"]

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
