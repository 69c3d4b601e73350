"""Gallery snapshots: the faiss index files of a gallery folder, read verified and written atomically.

``index-<gen>-<seq>-<token>.faiss`` holds the index of generation ``gen`` with the change log applied up to
``seq``. It is written to a temporary file, fsynced, renamed to its unique name and the folder fsynced; only then
does the database point ``meta`` at it (with its size and sha256, :meth:`.GalleryStore.record_snapshot`). Snapshot
files are never changed once named, only deleted once a newer one is recorded, so checking a file's checksum and
then letting faiss read it is safe.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from shitu.files import fsync_dir, pid_alive, sha256_stream
from shitu.serving.gallery.errors import GalleryCorrupt, GalleryError
from shitu.serving.gallery.index import IndexConfig

__all__ = ["SNAP_RE", "Snapshots", "TMP_RE"]

#: Snapshot files: ``index-<gen>-<seq>-<token>.faiss`` (index generation, log seq it holds, unique token).
SNAP_RE = re.compile(r"^index-(\d+)-(\d+)-([0-9a-f]+)\.faiss$")
#: Temporary files of a writer (snapshot or new database), with the writer's pid.
TMP_RE = re.compile(r"^\.(?:index-.+|gallery\.db\.[0-9a-f]+)\.(\d+)\.tmp(?:-wal|-shm|-journal)?$")


class Vanished(Exception):
    """The snapshot file named is gone (a newer one may have replaced it meanwhile)."""


class Snapshots:
    """The snapshot files of one gallery folder."""

    def __init__(self, folder: Path, spec: IndexConfig) -> None:
        self.folder = folder
        self.spec = spec

    def read(self, name: str, size: int, sha: str) -> Any:
        """The index in snapshot ``name``, checked against the ``size`` and ``sha256`` recorded for it;
        :class:`Vanished` when the file is gone, :class:`GalleryCorrupt` when it differs."""
        p = self.folder / name
        repair = f"run `shitu gallery repair {self.folder}`"
        try:
            with open(p, "rb") as f:
                actual_size = os.fstat(f.fileno()).st_size
                digest = sha256_stream(f) if actual_size == size else ""
        except FileNotFoundError:
            raise Vanished(f"{p}: snapshot file missing (gallery.db records it); {repair}") from None
        except OSError as e:
            raise GalleryError(f"{p}: cannot read the snapshot: {e}") from None
        if actual_size != size or digest != sha:
            what = f"{actual_size} bytes instead of {size}" if actual_size != size else "sha256 mismatch"
            raise GalleryCorrupt(f"{p}: snapshot truncated or corrupt ({what}); {repair} to rebuild it from gallery.db")
        index: Any  # faiss.Index or faiss.IndexBinary
        try:
            index = faiss.read_index_binary(str(p)) if self.spec.binary else faiss.read_index(str(p))
        except RuntimeError as e:
            if not p.exists():
                raise Vanished(str(p)) from None
            raise GalleryCorrupt(f"{p}: faiss cannot read the snapshot: {str(e).splitlines()[0]}") from None
        if index.d != self.spec.dim or (not self.spec.binary and index.metric_type != self.spec.faiss_metric):
            raise GalleryCorrupt(f"{p}: snapshot does not match the gallery's dimension/metric")
        return index

    def write(self, data: np.ndarray, gen: int, seq: int) -> tuple[str, str, int]:
        """Write ``data`` (a serialised index) as a new snapshot file of generation ``gen`` holding ``seq``:
        ``(name, sha256, size)``."""
        buf = memoryview(np.ascontiguousarray(data, np.uint8).data)
        name = f"index-{gen:06d}-{seq:012d}-{secrets.token_hex(4)}.faiss"
        final = self.folder / name
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = buf
                while view:
                    written = os.write(fd, view[: 1 << 26])
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            fsync_dir(self.folder)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise GalleryError(f"{final}: cannot write the snapshot: {e}") from None
        return name, hashlib.sha256(buf).hexdigest(), final.stat().st_size

    def discard(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def remove_old(self, current: str, replaced: str | None = None) -> None:
        """Delete ``replaced`` (the snapshot ``current`` took over from) and snapshots older than ``current`` by
        (generation, seq). Newer or equal ones may belong to a writer about to record them; if its record fails
        it deletes its own file."""
        cur = SNAP_RE.match(current)
        if not cur:
            return
        key = (int(cur.group(1)), int(cur.group(2)))
        for p in self.folder.glob("index-*.faiss"):
            m = SNAP_RE.match(p.name)
            if m and p.name != current and ((int(m.group(1)), int(m.group(2))) < key or p.name == replaced):
                try:
                    p.unlink()
                except OSError:
                    pass

    def cleanup(self, current: str) -> None:
        """Remove temp files of dead writers, and snapshots older than ``current`` (the one recorded)."""
        now = time.time()
        for p in self.folder.iterdir():
            m = TMP_RE.match(p.name)
            if m:
                try:
                    if not pid_alive(int(m.group(1))) or now - p.stat().st_mtime > 3600:
                        p.unlink()
                except OSError:
                    pass
        if current:
            self.remove_old(current)
