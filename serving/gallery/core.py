"""What every part of a local gallery shares: its fields and the few helpers all parts call.

:class:`shitu.serving.gallery.local.Gallery` is assembled from parts, one concern each, all on these fields:

- :mod:`.snapshot` -- loading the faiss snapshot (verified) and writing new ones atomically;
- :mod:`.replication` -- following changes other processes commit (the change log), and fork handling;
- :mod:`.maintenance` -- (re)training, compaction, background rebuilds;
- :mod:`.reading` -- search and record queries;
- :mod:`.local` -- creation, opening, writes, lifetime: the public class.

The parts call each other's methods through ``self`` (one object); locks: ``_wlock`` (writes, ``_wconn``) is
always taken before ``_lock`` (``_state``, ``_conn``).
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from shitu.serving.gallery.change_marker import ChangeMarker
from shitu.serving.gallery.index import IndexConfig, IndexState
from shitu.serving.gallery.storage import DB_NAME, GalleryError

__all__ = ["GalleryCore"]


class GalleryCore:
    """The fields of a local gallery (set by ``Gallery.__init__``) and helpers every part uses."""

    path: Path
    readonly: bool
    max_label_length: int
    _spec: IndexConfig
    _conn: sqlite3.Connection  # read connection (guarded by _lock)
    _wconn: sqlite3.Connection | None  # write connection (guarded by _wlock)
    _lock: threading.RLock
    _wlock: threading.RLock
    _snap_lock: threading.Lock
    _state: IndexState | None
    _snapshot_seq: int
    _last_check: float
    _closed: bool
    _bg: threading.Thread | None
    _bg_cancel: threading.Event
    _bg_error: BaseException | None
    _no_train_below: int
    _pid: int
    _inherited: list[sqlite3.Connection]
    _changes: ChangeMarker  # the folder's shared change marker (.change_marker)

    #: Seconds between two checks of the change log by searches (changes elsewhere show within ~this).
    refresh_interval = 0.2

    @property
    def tuning(self) -> dict[str, Any]:
        """Live tunables (``ef_search``, ``nprobe``, ``compact_ratio``, ...); changes apply to this object."""
        return self._spec.tuning

    @property
    def db_path(self) -> Path:
        return self.path / DB_NAME

    def _after_fork(self) -> None:  # pragma: no cover - replaced by ReplicationMixin
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._closed:
            raise GalleryError(f"{self.path}: gallery is closed")
        if self._pid != os.getpid():
            self._after_fork()

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise GalleryError(f"{self.path}: gallery is opened read-only")

    @staticmethod
    def _set_counters(conn: sqlite3.Connection, **values: int) -> None:
        conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(str(v), k) for k, v in values.items()])

    def _blobs_to_array(self, blobs: list[bytes]) -> np.ndarray:
        spec = self._spec
        if not blobs:
            return np.zeros((0, spec.dim // 8 if spec.binary else spec.dim), np.uint8 if spec.binary else np.float32)
        raw = b"".join(blobs)
        if len(raw) != len(blobs) * spec.code_size:
            raise GalleryError(f"{self.db_path}: a stored vector has the wrong size")
        if spec.binary:
            return np.frombuffer(raw, np.uint8).reshape(len(blobs), spec.dim // 8)
        return np.frombuffer(raw, "<f4").astype(np.float32, copy=False).reshape(len(blobs), spec.dim)

    def _vectors(self, vectors: Any, what: str = "vectors") -> np.ndarray:
        spec = self._spec
        if (
            type(vectors) is np.ndarray
            and vectors.dtype == np.float32
            and vectors.ndim == 2
            and not spec.binary
            and not spec.normalize
            and vectors.shape[1] == spec.dim
            and vectors.flags.c_contiguous
        ):
            # The usual case (the extractor's output), checked without copies. One vector: its squared norm (one
            # small C call; numpy's reductions cost several times more right after a search has filled the CPU
            # caches) is finite only when every element is, and when it overflows the element-wise check decides.
            # Several: a float64 sum of float32 values cannot overflow, so it is finite exactly when all are.
            if len(vectors) == 1:
                if (
                    not math.isfinite(faiss.fvec_norm_L2sqr(faiss.swig_ptr(vectors), spec.dim))
                    and not np.isfinite(vectors).all()
                ):
                    raise GalleryError(f"{what} contain NaN or infinite values")
            elif not math.isfinite(vectors.sum(dtype=np.float64)):
                raise GalleryError(f"{what} contain NaN or infinite values")
            return vectors
        arr = np.asarray(vectors)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if spec.binary:
            width = spec.dim // 8
            if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != width:
                raise GalleryError(
                    f"{what} must be packed bits, uint8 [n, {width}] for this {spec.dim}-bit hamming gallery; got "
                    f"{arr.dtype} {list(arr.shape)}"
                )
            return np.ascontiguousarray(arr)
        if arr.ndim != 2 or arr.shape[1] != spec.dim or not np.issubdtype(arr.dtype, np.number):
            raise GalleryError(f"{what} must be float [n, {spec.dim}]; got {arr.dtype} {list(arr.shape)}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise GalleryError(f"{what} contain NaN or infinite values")
        if spec.normalize:
            norms = np.linalg.norm(arr, axis=1, keepdims=True)
            arr = arr / np.maximum(norms, 1e-12)
        return arr
