"""The gallery: a labelled embedding index searched at recognition time.

A gallery is a folder::

    gallery.db                 SQLite (WAL): the source of truth
    index-<gen>-<seq>-<tok>.faiss  the faiss snapshot: index generation, change-log seq it holds, unique token

``gallery.db`` holds

- ``items``: one record per gallery image -- ``id`` (stable integer), ``label``, ``source`` (path or key),
  ``metadata`` (JSON), ``content_hash`` (sha256 of the image file), ``added_at``/``updated_at``, the ``vector``
  (raw float32 or packed-bit bytes) and its ``slot``;
- ``log``: an append-only change log, ``seq`` increasing by one per item change (``add``, ``remove``,
  ``relabel``, ``revector``);
- ``meta``: format version, dimension, metric, index method, counters, and the snapshot's file name, seq,
  size and sha256.

**Slots.** A vector is stored in faiss under a *slot* id, the log seq that wrote it, not under the item id: an
update of a vector writes a new slot and leaves the old one behind as a tombstone, so item ids stay stable for
every index type, HNSW included (which cannot delete). Tombstoned slots are excluded at search time with a faiss
``IDSelector`` in ``SearchParameters``; every hit is then resolved against SQLite by slot, which drops anything
removed in the meantime. Removed vectors are physically dropped by :meth:`Gallery.compact` (``remove_ids`` for
flat and IVF indexes, a rebuild for HNSW), automatically once more than ``compact_ratio`` of the index is dead.

**Crash safety.** Each write is one SQLite transaction (``BEGIN IMMEDIATE`` serialises writers across
processes). The snapshot is written to a temporary file, fsynced, renamed to a new unique name and the folder
fsynced; only then does a transaction point ``meta`` at it (with its size and sha256). Opening loads the snapshot
(verifying the checksum) and reconciles it with ``items`` (adding vectors written after it, tombstoning removed
ones), so a process killed at any point leaves a gallery that opens at its last committed state.

**Several processes.** Each process holds its own copy of the index. Searches check the log's seq at most every
``refresh_interval`` seconds (0.2 by default, one indexed SQLite read) and apply only the new log entries, so
changes committed elsewhere are visible within a second without re-reading the index. A process that rebuilds
the index structurally (IVF (re)training, HNSW compaction) bumps the index generation and writes a snapshot;
the others load that snapshot instead of rebuilding themselves.

No pickle anywhere: records and metadata live in SQLite/JSON, vectors as raw bytes, the index in faiss's format.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import sqlite3
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import faiss
import numpy as np

from shitu.serving.gallery.list_file import DEFAULT_MAX_LABEL_LENGTH, label_problem
from shitu.serving.engine.results import Match

__all__ = ["FORMAT_VERSION", "Gallery", "GalleryError", "LabelError", "DB_NAME"]

log = logging.getLogger(__name__)

#: Version of the on-disk format written by this release; opening a newer one is an error.
FORMAT_VERSION = 1
DB_NAME = "gallery.db"
#: Snapshot files: ``index-<gen>-<seq>-<token>.faiss`` (index generation, log seq it holds, unique token).
_SNAP_RE = re.compile(r"^index-(\d+)-(\d+)-([0-9a-f]+)\.faiss$")
_TMP_RE = re.compile(r"^\.(?:index-.+|gallery\.db\.[0-9a-f]+)\.(\d+)\.tmp(?:-wal|-shm|-journal)?$")
_CHUNK = 900  # bound parameters per SQLite statement
#: Searches of fewer queries than this run on a single OpenMP thread (see ``_State.search``).
SMALL_BATCH = 8

#: Tunables stored in ``meta`` at creation (``Gallery.create(..., **tuning)``); each may be changed on the object.
DEFAULT_TUNING: dict[str, Any] = {
    "ef_search": 128,  # HNSW efSearch (raised to k when smaller)
    "ef_construction": 40,  # HNSW efConstruction
    "nprobe": None,  # IVF lists probed; None: max(8, nlist // 8)
    "ivf_min_train": 4096,  # IVF galleries stay exact (flat) below this many vectors
    "compact_ratio": 0.2,  # compact once more than this fraction of the index is dead
    "compact_min": 64,  # ... and at least this many vectors are dead
    "snapshot_every": None,  # write a snapshot after this many log entries; None: max(1000, live // 10)
    "exact_filter_limit": 4096,  # label-filtered searches over at most this many items are exact
    "background_rebuild_min": 50000,  # rebuilds (IVF training, HNSW compaction) of bigger indexes run in a thread
}

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    label TEXT NOT NULL,
    source TEXT,
    metadata TEXT,
    content_hash TEXT,
    added_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    slot INTEGER NOT NULL UNIQUE
);
CREATE TABLE vectors (slot INTEGER PRIMARY KEY, vector BLOB NOT NULL);
CREATE INDEX items_label ON items(label);
CREATE INDEX items_hash ON items(content_hash);
CREATE TABLE log (
    seq INTEGER PRIMARY KEY,
    op TEXT NOT NULL,
    item_id INTEGER NOT NULL,
    slot INTEGER,
    old_slot INTEGER,
    ts REAL NOT NULL
);
"""

#: A WAL file bigger than this is checkpointed and truncated after a write.
WAL_SHRINK_BYTES = 64 << 20
#: Log entries older than this (and already in a snapshot) are deleted at snapshot time.
LOG_KEEP_SECONDS = 3600.0


class GalleryError(Exception):
    """A gallery cannot be created, opened, read or changed; the message names the path or the problem."""


class LabelError(GalleryError, ValueError):
    """An invalid label (empty, too long, control characters); the message names the label."""


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True


def _connect(db: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            db.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None, check_same_thread=False, timeout=30
        )
    else:
        conn = sqlite3.connect(str(db), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    if not readonly:
        conn.execute("PRAGMA synchronous=FULL")
    return conn


@contextmanager
def _read_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One consistent read snapshot (WAL) for several SELECTs."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


def _read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def _nlist_for(n: int) -> int:
    """IVF lists for ``n`` vectors: about 4*sqrt(n), with at least 39 training points per list."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))


_METRICS = {"ip": "IP", "inner_product": "IP", "cosine": "IP", "l2": "L2", "hamming": "hamming"}


@dataclass
class _Spec:
    """What a gallery is: fixed at creation, read from ``meta`` at open."""

    dim: int
    metric: str  # IP | L2 | hamming
    index_method: str
    hamming_radius: int
    normalize: bool
    tuning: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_TUNING))

    @property
    def binary(self) -> bool:
        return self.metric == "hamming"

    @property
    def faiss_metric(self) -> int:
        return faiss.METRIC_INNER_PRODUCT if self.metric == "IP" else faiss.METRIC_L2

    @property
    def code_size(self) -> int:
        return self.dim // 8 if self.binary else self.dim * 4

    @property
    def auto_ivf(self) -> bool:
        return self.index_method.upper() == "IVF"

    # -- index construction --------------------------------------------------------------------------------------

    def _hnsw_m(self) -> int | None:
        m = re.fullmatch(r"HNSW(\d+)(?:,Flat)?", self.index_method, re.IGNORECASE)
        return int(m.group(1)) if m else None

    def empty_index(self, n: int) -> tuple[Any, bool]:
        """A fresh (untrained when it must be) index for ``n`` vectors; ``(index, needs_training)``.

        IVF-type indexes keep faiss ids natively; the others are wrapped in ``IDMap2``.
        """
        method = self.index_method
        if self.binary:
            if method.upper() == "FLAT":
                return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(self.dim)), False
            m = self._hnsw_m()
            if m:
                h = faiss.IndexBinaryHNSW(self.dim, m)
                h.hnsw.efConstruction = int(self.tuning["ef_construction"])
                return faiss.IndexBinaryIDMap2(h), False
            if self.auto_ivf:
                return faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(self.dim), self.dim, _nlist_for(n)), True
            index = faiss.index_binary_factory(self.dim, method)
            if isinstance(index, faiss.IndexBinaryIVF):
                return index, not index.is_trained
            return faiss.IndexBinaryIDMap2(index), not index.is_trained
        if method.upper() == "FLAT":
            return faiss.index_factory(self.dim, "IDMap2,Flat", self.faiss_metric), False
        m = self._hnsw_m()
        if m:
            index = faiss.index_factory(self.dim, f"IDMap2,HNSW{m}", self.faiss_metric)
            faiss.downcast_index(index.index).hnsw.efConstruction = int(self.tuning["ef_construction"])
            return index, False
        if self.auto_ivf:
            return faiss.index_factory(self.dim, f"IVF{_nlist_for(n)},Flat", self.faiss_metric), True
        index = faiss.index_factory(self.dim, method, self.faiss_metric)
        if _is_ivf(index):
            return index, not index.is_trained
        return faiss.index_factory(self.dim, "IDMap2," + method, self.faiss_metric), not index.is_trained

    def flat_index(self) -> Any:
        if self.binary:
            return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(self.dim))
        return faiss.index_factory(self.dim, "IDMap2,Flat", self.faiss_metric)

    def min_train(self, index: Any) -> int:
        nlist = _ivf_nlist(index)
        base = int(self.tuning["ivf_min_train"])
        return max(base, 39 * nlist) if nlist and not self.auto_ivf else base

    def build(self, slots: np.ndarray, vectors: np.ndarray) -> Any:
        """An index holding ``vectors`` under ``slots`` (trained on them when needed and possible)."""
        n = len(slots)
        index, needs_training = self.empty_index(n)
        if needs_training:
            trained = False
            if n >= self.min_train(index) and n >= max(1, _ivf_nlist(index)):
                try:
                    index.train(vectors)
                    trained = True
                except RuntimeError:  # e.g. a factory string needing more training points
                    trained = False
            if not trained:
                index = self.flat_index()
        if n:
            for i in range(0, n, 65536):
                index.add_with_ids(vectors[i : i + 65536], slots[i : i + 65536])
        return index

    def wants_rebuild(self, index: Any, live: int) -> bool:
        """Whether an index should be (re)trained now that it holds ``live`` vectors."""
        if _is_flat_fallback(self, index):
            probe, needs = self.empty_index(live)
            return needs and live >= self.min_train(probe) and live >= max(1, _ivf_nlist(probe))
        if self.auto_ivf:
            nlist = _ivf_nlist(index)
            return bool(nlist) and _nlist_for(live) >= 2 * nlist and live >= self.min_train(index)
        return False

    def wants_retrain_on_compact(self, index: Any, live: int) -> bool:
        if self.wants_rebuild(index, live):
            return True
        if self.auto_ivf and not _is_flat_fallback(self, index):
            nlist = _ivf_nlist(index)
            return live < self.min_train(index) or _nlist_for(live) * 2 <= nlist
        return False


def _is_ivf(index: Any) -> bool:
    try:
        faiss.extract_index_ivf(index)
        return True
    except (RuntimeError, TypeError, AttributeError):
        return False


def _ivf_nlist(index: Any) -> int:
    if isinstance(index, faiss.IndexBinaryIVF):
        return int(index.nlist)
    if isinstance(index, faiss.IndexBinary):
        return 0
    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except (RuntimeError, TypeError, AttributeError):
        return 0


def _inner(index: Any) -> Any:
    if isinstance(index, (faiss.IndexIDMap2, faiss.IndexIDMap)):
        return faiss.downcast_index(index.index)
    if isinstance(index, (faiss.IndexBinaryIDMap2, faiss.IndexBinaryIDMap)):
        return faiss.downcast_IndexBinary(index.index)
    return index


def _is_flat_fallback(spec: _Spec, index: Any) -> bool:
    """An IVF-type gallery still held in an exact flat index (too few vectors to train)."""
    inner = _inner(index)
    flat = isinstance(inner, (faiss.IndexFlat, faiss.IndexBinaryFlat))
    return flat and spec.index_method.upper() != "FLAT"


def _describe(index: Any) -> str:
    inner = _inner(index)
    if isinstance(inner, faiss.IndexBinaryFlat):
        return "BFlat"
    if isinstance(inner, faiss.IndexFlat):
        return "Flat"
    if isinstance(inner, faiss.IndexHNSW):
        return f"HNSW{inner.hnsw.nb_neighbors(1)}"
    if isinstance(inner, faiss.IndexBinaryHNSW):
        return f"BHNSW{inner.hnsw.nb_neighbors(1)}"
    if isinstance(inner, faiss.IndexBinaryIVF):
        return f"BIVF{inner.nlist}"
    nlist = _ivf_nlist(inner)
    if nlist:
        return f"IVF{nlist}"
    return type(inner).__name__


def _index_ids(index: Any) -> np.ndarray:
    """The faiss ids (slots) an index holds."""
    if isinstance(index, (faiss.IndexIDMap2, faiss.IndexIDMap, faiss.IndexBinaryIDMap2, faiss.IndexBinaryIDMap)):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    if isinstance(index, faiss.IndexBinaryIVF):
        ivf = index
    else:
        ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    parts = []
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if size:
            ids = invlists.get_ids(lst)
            parts.append(faiss.rev_swig_ptr(ids, size).copy())
            invlists.release_ids(lst, ids)
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------------------------------------------
# in-memory index state
# ----------------------------------------------------------------------------------------------------------------


class _State:
    """One process's copy of the index: faiss index + which slots it holds + which of those are dead."""

    def __init__(self, spec: _Spec, index: Any, seq: int, gen: int):
        self.spec = spec
        self.index = index
        self.seq = seq
        self.gen = gen
        self.slots: set[int] = set(_index_ids(index).tolist()) if index.ntotal else set()
        self.dead: set[int] = set()
        self._dead_sel: Any = None
        inner = _inner(index)
        if spec.binary:
            self.mode = "plain" if isinstance(inner, faiss.IndexBinaryFlat) else "nosel"
            if isinstance(inner, faiss.IndexBinaryIVF):
                inner.nprobe = self.nprobe
            elif isinstance(inner, faiss.IndexBinaryHNSW):
                inner.hnsw.efSearch = int(spec.tuning["ef_search"])
        elif isinstance(inner, faiss.IndexHNSW):
            self.mode = "hnsw"
        elif isinstance(inner, faiss.IndexFlat):
            self.mode = "plain"
        elif _ivf_nlist(index):
            self.mode = "ivf"
        else:
            self.mode = "plain"
        self.removable = not isinstance(inner, (faiss.IndexHNSW, faiss.IndexBinaryHNSW))

    @property
    def nprobe(self) -> int:
        nlist = _ivf_nlist(self.index)
        n = self.spec.tuning.get("nprobe")
        return max(1, min(nlist, int(n) if n else max(8, nlist // 8))) if nlist else 1

    @property
    def live(self) -> int:
        return len(self.slots) - len(self.dead)

    @property
    def dead_ratio(self) -> float:
        return len(self.dead) / len(self.slots) if self.slots else 0.0

    def add(self, slots: np.ndarray, vectors: np.ndarray) -> None:
        if not len(slots):
            return
        keep = np.fromiter((int(s) not in self.slots for s in slots), bool, len(slots))
        if not keep.all():
            slots, vectors = slots[keep], vectors[keep]
        for i in range(0, len(slots), 65536):
            self.index.add_with_ids(
                np.ascontiguousarray(vectors[i : i + 65536]), np.ascontiguousarray(slots[i : i + 65536])
            )
        self.slots.update(int(s) for s in slots)

    def mark_dead(self, slots: Iterable[int]) -> None:
        changed = False
        for s in slots:
            if s is not None and s in self.slots and s not in self.dead:
                self.dead.add(int(s))
                changed = True
        if changed:
            self._dead_sel = None

    def compact_inplace(self) -> bool:
        """Drop dead vectors with ``remove_ids``; False when the index cannot remove (HNSW)."""
        if not self.dead:
            return True
        if not self.removable:
            return False
        ids = np.fromiter(self.dead, np.int64, len(self.dead))
        try:
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
        except RuntimeError:
            self.removable = False
            return False
        self.slots.difference_update(self.dead)
        self.dead.clear()
        self._dead_sel = None
        return True

    def serialize(self) -> np.ndarray:
        if self.spec.binary:
            return faiss.serialize_index_binary(self.index)
        return faiss.serialize_index(self.index)

    def _selector(self, allowed: np.ndarray | None) -> tuple[Any, list[Any]]:
        """A selector (and the objects it references, kept alive by the caller) or ``None``."""
        if allowed is not None:
            batch = faiss.IDSelectorBatch(allowed)
            return batch, [batch, allowed]
        if not self.dead:
            return None, []
        if self._dead_sel is None:
            arr = np.fromiter(self.dead, np.int64, len(self.dead))
            batch = faiss.IDSelectorBatch(arr)
            self._dead_sel = (faiss.IDSelectorNot(batch), [batch, arr])
        sel, keep = self._dead_sel
        return sel, [sel, *keep]

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """faiss search returning ``(distances, slots)``; dead slots (and slots outside ``allowed``) excluded.

        Small batches run on one OpenMP thread: faiss parallelises over queries, so a team of threads only adds
        wake-up and barrier costs there (and stalls badly when the cores are busy with other work). The setting
        is per calling thread in OpenMP, so other threads are not affected.
        """
        if len(queries) >= SMALL_BATCH:
            return self._search(queries, k, allowed)
        prev = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self._search(queries, k, allowed)
        finally:
            faiss.omp_set_num_threads(prev)

    def _search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        ntotal = self.index.ntotal
        nq = len(queries)
        if ntotal == 0 or k <= 0:
            return np.zeros((nq, 0), np.float32), np.full((nq, 0), -1, np.int64)
        if self.mode != "nosel":
            sel, keep = self._selector(allowed)
            if sel is None:
                if self.mode == "hnsw":
                    params = faiss.SearchParametersHNSW()
                    params.efSearch = max(int(self.spec.tuning["ef_search"]), k)
                elif self.mode == "ivf":
                    params = faiss.SearchParametersIVF()
                    params.nprobe = self.nprobe
                else:
                    params = None
            else:
                if self.mode == "hnsw":
                    params = faiss.SearchParametersHNSW()
                    params.efSearch = max(int(self.spec.tuning["ef_search"]), k)
                elif self.mode == "ivf":
                    params = faiss.SearchParametersIVF()
                    params.nprobe = self.nprobe
                else:
                    params = faiss.SearchParameters()
                params.sel = sel
            try:
                kk = min(k, ntotal)
                if params is None:
                    dist, ids = self.index.search(queries, kk)
                else:
                    dist, ids = self.index.search(queries, kk, params=params)
                del keep
                return dist, ids
            except RuntimeError:
                self.mode = "nosel"  # this index type takes no search parameters: over-fetch and filter
        # Over-fetch and filter in Python.
        excluded = len(self.dead)
        kk = min(ntotal, k + excluded if allowed is None else max(k * 20, k + excluded, 100))
        dist, ids = self.index.search(queries, kk)
        allow = set(allowed.tolist()) if allowed is not None else None
        out_d = np.zeros((nq, k), dist.dtype)
        out_i = np.full((nq, k), -1, np.int64)
        for q in range(nq):
            j = 0
            for d, s in zip(dist[q], ids[q]):
                s = int(s)
                if s < 0 or s in self.dead or (allow is not None and s not in allow):
                    continue
                out_d[q, j], out_i[q, j] = d, s
                j += 1
                if j == k:
                    break
        return out_d, out_i


def _sha256_of(f: Any) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 22), b""):
        h.update(block)
    return h.hexdigest()


def _on_disk(vectors: np.ndarray) -> np.ndarray:
    """Vectors as stored in ``gallery.db``: float32 little-endian, or packed-bit bytes."""
    return vectors if vectors.dtype == np.uint8 else vectors.astype("<f4", copy=False)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _exact_search(spec: _Spec, queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN of ``queries`` among ``vectors`` (row indices), best first, with the gallery's metric."""
    if len(queries) > 64:
        parts = [_exact_search(spec, queries[i : i + 64], vectors, k) for i in range(0, len(queries), 64)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if spec.binary:
        x = np.bitwise_xor(queries[:, None, :], vectors[None, :, :])
        dist = _POPCOUNT[x].sum(axis=2, dtype=np.int32)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    elif spec.metric == "IP":
        dist = queries @ vectors.T
        order = np.argsort(-dist, axis=1, kind="stable")[:, :k]
    else:
        dist = (queries**2).sum(1)[:, None] + (vectors**2).sum(1)[None, :] - 2 * queries @ vectors.T
        dist = np.maximum(dist, 0)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, axis=1), order


# ----------------------------------------------------------------------------------------------------------------
# the gallery
# ----------------------------------------------------------------------------------------------------------------


class Gallery:
    """A labelled embedding index in a folder (see the module doc).

    Use :meth:`create`, :meth:`open` or :meth:`open_or_create`; close with :meth:`close` or a ``with`` block.
    One object may be used from several threads; several processes may open the same folder.
    """

    #: Seconds between two checks of the change log by searches (changes elsewhere show within ~this).
    refresh_interval = 0.2

    def __init__(self, path: Path, conn: sqlite3.Connection, readonly: bool, spec: _Spec, max_label_length: int):
        # Private: use create / open.
        self.path = path
        self.readonly = readonly
        self.max_label_length = int(max_label_length)
        self._spec = spec
        self._conn = conn  # read connection (guarded by _lock)
        self._wconn: sqlite3.Connection | None = None if readonly else _connect(path / DB_NAME, False)
        self._lock = threading.RLock()  # _state, _conn
        self._wlock = threading.RLock()  # _wconn, writes; always taken before _lock
        self._snap_lock = threading.Lock()
        self._state: _State | None = None
        self._snapshot_seq = 0
        self._last_check = 0.0
        self._closed = False
        self._bg: threading.Thread | None = None
        self._bg_cancel = threading.Event()
        self._bg_error: BaseException | None = None
        self._no_train_below = 0
        self._pid = os.getpid()
        self._inherited: list[sqlite3.Connection] = []

    # -- properties ----------------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._spec.dim

    @property
    def metric(self) -> str:
        return self._spec.metric

    @property
    def index_method(self) -> str:
        return self._spec.index_method

    @property
    def hamming_radius(self) -> int:
        return self._spec.hamming_radius

    @property
    def higher_is_better(self) -> bool:
        return self._spec.metric == "IP"

    @property
    def normalize(self) -> bool:
        return self._spec.normalize

    @property
    def tuning(self) -> dict[str, Any]:
        """Live tunables (``ef_search``, ``nprobe``, ``compact_ratio``, ...); changes apply to this object."""
        return self._spec.tuning

    @property
    def db_path(self) -> Path:
        return self.path / DB_NAME

    # -- creation and opening ------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        dim: int,
        index_method: str = "HNSW32",
        dist_type: str = "IP",
        hamming_radius: int = 100,
        exist_ok: bool = False,
        *,
        max_label_length: int = DEFAULT_MAX_LABEL_LENGTH,
        **tuning: Any,
    ) -> "Gallery":
        """Create an empty gallery in folder ``path``.

        ``index_method``: ``Flat``, ``IVF`` (nlist chosen from the size, exact until ``ivf_min_train`` vectors),
        ``HNSW32`` (any ``HNSW<M>``) or another faiss factory string. ``dist_type``: ``IP``, ``L2``, ``hamming``
        (packed-bit uint8 vectors, ``dim`` in bits) or ``cosine`` (IP on vectors the gallery L2-normalises).
        ``tuning`` overrides :data:`DEFAULT_TUNING`. With ``exist_ok`` an existing gallery of the same dimension
        and metric is opened instead.
        """
        path = Path(path)
        metric = _METRICS.get(str(dist_type).lower())
        if metric is None:
            raise GalleryError(f"unknown dist_type {dist_type!r}: use IP, L2, hamming or cosine")
        normalize = str(dist_type).lower() == "cosine"
        if not isinstance(dim, (int, np.integer)) or int(dim) <= 0:
            raise GalleryError(f"dim must be a positive integer, not {dim!r}")
        dim = int(dim)
        if metric == "hamming" and dim % 8:
            raise GalleryError(f"hamming galleries need dim (in bits) to be a multiple of 8, not {dim}")
        if not isinstance(index_method, str) or not index_method.strip():
            raise GalleryError(f"index_method must be a non-empty string, not {index_method!r}")
        unknown = set(tuning) - set(DEFAULT_TUNING)
        if unknown:
            raise GalleryError(f"unknown gallery option(s) {sorted(unknown)}; known: {sorted(DEFAULT_TUNING)}")
        spec = _Spec(dim, metric, index_method.strip(), int(hamming_radius), normalize, {**DEFAULT_TUNING, **tuning})
        try:
            spec.empty_index(0 if not spec.auto_ivf else 1)
        except (RuntimeError, TypeError, ValueError) as e:
            raise GalleryError(f"faiss cannot build index_method {index_method!r} for {metric}: {e}") from None

        db = path / DB_NAME
        if db.exists():
            if not exist_ok:
                raise GalleryError(f"{path}: a gallery exists already")
            return cls._open_existing(path, dim, metric, max_label_length)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".{DB_NAME}.{secrets.token_hex(4)}.{os.getpid()}.tmp"
        try:
            conn = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                # 16 KiB pages hold 7 512-d float vectors (4 KiB pages: one 2 KiB vector each, half empty).
                conn.execute("PRAGMA page_size=16384")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN")
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                now = time.time()
                meta = {
                    "format_version": FORMAT_VERSION,
                    "dim": dim,
                    "metric": metric,
                    "normalize": int(normalize),
                    "index_method": spec.index_method,
                    "hamming_radius": spec.hamming_radius,
                    "tuning": json.dumps(spec.tuning, sort_keys=True),
                    "created_at": now,
                    "seq": 0,
                    "next_id": 1,
                    "index_gen": 0,
                    "log_floor": 0,
                    "snapshot_file": "",
                    "snapshot_seq": 0,
                    "snapshot_sha256": "",
                    "snapshot_size": 0,
                }
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
                conn.execute("COMMIT")
            finally:
                conn.close()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            try:
                os.link(tmp, db)  # never replaces a gallery created meanwhile
            except FileExistsError:
                if not exist_ok:
                    raise GalleryError(f"{path}: a gallery exists already") from None
                return cls._open_existing(path, dim, metric, max_label_length)
            _fsync_dir(path)
        finally:
            for p in (tmp, Path(str(tmp) + "-wal"), Path(str(tmp) + "-shm")):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
        return cls.open(path, max_label_length=max_label_length)

    @classmethod
    def _open_existing(cls, path: Path, dim: int, metric: str, max_label_length: int) -> "Gallery":
        """Open an existing gallery for create(exist_ok) / open_or_create.

        Its own index method and metric win (those parameters are for new galleries), but the dimension and the
        kind of vectors (float or binary) must match what the caller will put in.
        """
        g = cls.open(path, max_label_length=max_label_length)
        if g.dim != dim or (g.metric == "hamming") != (metric == "hamming"):
            g.close()
            raise GalleryError(f"{path}: holds a {g.metric} gallery of dim {g.dim}, not {metric} of dim {dim}")
        return g

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, dim: int, **kw: Any) -> "Gallery":
        """Open the gallery in ``path`` (checking ``dim`` and metric) or create it with ``kw``."""
        return cls.create(path, dim, exist_ok=True, **kw)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        readonly: bool = False,
        *,
        verify: bool = True,
        max_label_length: int = DEFAULT_MAX_LABEL_LENGTH,
    ) -> "Gallery":
        """Open the gallery in folder ``path``.

        Corruption is reported as :class:`GalleryError` naming the file: a damaged ``gallery.db`` (checked with
        ``PRAGMA quick_check`` when ``verify``), a snapshot whose size or sha256 differs from the one recorded, a
        snapshot faiss cannot read. :meth:`repair` rebuilds a bad snapshot from the database.
        """
        g = cls._connect_gallery(Path(path), readonly, verify, max_label_length)
        try:
            with g._wlock, g._lock:
                g._state = g._load_state()
            if not readonly:
                g._cleanup_files()
                g._maintain()
        except BaseException:
            g.close()
            raise
        return g

    @classmethod
    def _connect_gallery(cls, path: Path, readonly: bool, verify: bool, max_label_length: int) -> "Gallery":
        db = path / DB_NAME
        if not path.is_dir():
            raise GalleryError(f"{path}: no such gallery folder")
        if not db.is_file():
            if (path / "id_map.pkl").exists() or (path / "vector.index").exists():
                raise GalleryError(
                    f"{path}: a PaddleClas index folder (vector.index + id_map.pkl), not a gallery; import it with "
                    f"`shitu gallery import-paddleclas {path} NEW_GALLERY` (nothing in it is executed)"
                )
            raise GalleryError(f"{path}: not a gallery (no {DB_NAME})")
        conn = None
        try:
            conn = _connect(db, readonly)
            if verify:
                rows = conn.execute("PRAGMA quick_check(5)").fetchall()
                if [r[0] for r in rows] != ["ok"]:
                    raise GalleryError(f"{db}: corrupt gallery database: " + "; ".join(str(r[0]) for r in rows))
            meta = _read_meta(conn)
            spec = cls._spec_from_meta(db, meta)
        except sqlite3.DatabaseError as e:
            if conn is not None:
                conn.close()
            raise GalleryError(f"{db}: corrupt or unreadable gallery database: {e}") from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        try:
            return cls(path, conn, readonly, spec, max_label_length)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise GalleryError(f"{db}: cannot open the gallery database for writing: {e}") from None

    @staticmethod
    def _spec_from_meta(db: Path, meta: dict[str, str]) -> _Spec:
        try:
            version = int(meta["format_version"])
        except (KeyError, ValueError):
            raise GalleryError(f"{db}: not a gallery database (no format_version)") from None
        if version > FORMAT_VERSION:
            raise GalleryError(
                f"{db}: gallery format {version} is newer than this release supports ({FORMAT_VERSION}); "
                f"upgrade shitu-hub to open it"
            )
        # Format 1 is the first one: older formats would be migrated here.
        try:
            tuning = {**DEFAULT_TUNING, **json.loads(meta.get("tuning") or "{}")}
            return _Spec(
                int(meta["dim"]),
                meta["metric"],
                meta["index_method"],
                int(meta["hamming_radius"]),
                bool(int(meta.get("normalize", "0"))),
                tuning,
            )
        except (KeyError, ValueError) as e:
            raise GalleryError(f"{db}: damaged gallery metadata ({e})") from None

    @classmethod
    def repair(cls, path: str | os.PathLike) -> "Gallery":
        """Rebuild the faiss snapshot from the vectors in ``gallery.db`` (after a lost or damaged snapshot)."""
        g = cls._connect_gallery(Path(path), False, True, DEFAULT_MAX_LABEL_LENGTH)
        try:
            with g._wlock:
                with g._lock:
                    g._state = g._rebuild_state(g._conn)
                g._write_snapshot(bump=True, force=True)
                g._cleanup_files()
        except BaseException:
            g.close()
            raise
        return g

    # -- loading ---------------------------------------------------------------------------------------------------

    def _load_state(self) -> _State:
        """Snapshot (verified) + reconciliation with ``items``; called with ``_lock`` held."""
        conn = self._conn
        for _attempt in range(10):
            meta = _read_meta(conn)
            snap = meta.get("snapshot_file", "")
            gen = int(meta["index_gen"])
            if not snap:
                return self._rebuild_state(conn)
            p = self.path / snap
            # Snapshot files are never changed once named (written under a unique temp name, renamed, only ever
            # deleted), so checking the checksum and then letting faiss read the file is safe.
            size, sha = int(meta["snapshot_size"]), meta["snapshot_sha256"]
            try:
                with open(p, "rb") as f:
                    actual_size = os.fstat(f.fileno()).st_size
                    digest = _sha256_of(f) if actual_size == size else ""
            except FileNotFoundError:
                if _read_meta(conn).get("snapshot_file") != snap:
                    continue  # a newer snapshot replaced it meanwhile
                raise GalleryError(
                    f"{p}: snapshot file missing (gallery.db records it); run `shitu gallery repair {self.path}`"
                ) from None
            except OSError as e:
                raise GalleryError(f"{p}: cannot read the snapshot: {e}") from None
            if actual_size != size or digest != sha:
                what = f"{actual_size} bytes instead of {size}" if actual_size != size else "sha256 mismatch"
                raise GalleryError(
                    f"{p}: snapshot truncated or corrupt ({what}); run `shitu gallery repair {self.path}` to "
                    f"rebuild it from gallery.db"
                )
            try:
                index = faiss.read_index_binary(str(p)) if self._spec.binary else faiss.read_index(str(p))
            except RuntimeError as e:
                if not p.exists() and _read_meta(conn).get("snapshot_file") != snap:
                    continue
                raise GalleryError(f"{p}: faiss cannot read the snapshot: {str(e).splitlines()[0]}") from None
            if index.d != self._spec.dim or (not self._spec.binary and index.metric_type != self._spec.faiss_metric):
                raise GalleryError(f"{p}: snapshot does not match the gallery's dimension/metric")
            state = _State(self._spec, index, int(meta["snapshot_seq"]), gen)
            self._snapshot_seq = state.seq
            self._reconcile(state, conn)
            return state
        raise GalleryError(f"{self.path}: the snapshot kept changing while opening; try again")

    def _reconcile(self, state: _State, conn: sqlite3.Connection) -> None:
        """Bring a freshly loaded ``state`` to the database's current state (full comparison of slots)."""
        with _read_txn(conn):
            seq = int(conn.execute("SELECT value FROM meta WHERE key='seq'").fetchone()[0])
            live = np.array([r[0] for r in conn.execute("SELECT slot FROM items")], np.int64)
            live_set = set(live.tolist())
            state.mark_dead(state.slots - live_set)
            missing = sorted(live_set - state.slots)
            if missing:
                slots, vecs = self._fetch_vectors(conn, missing)
                state.add(slots, vecs)
            state.seq = seq

    def _fetch_vectors(self, conn: sqlite3.Connection, slots: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        out_s: list[int] = []
        blobs: list[bytes] = []
        for part in _chunks(list(slots)):
            q = f"SELECT slot, vector FROM vectors WHERE slot IN ({','.join('?' * len(part))})"
            for s, b in conn.execute(q, list(part)):
                out_s.append(s)
                blobs.append(b)
        return np.array(out_s, np.int64), self._blobs_to_array(blobs)

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

    def _rebuild_state(self, conn: sqlite3.Connection, cancel: threading.Event | None = None) -> _State:
        """A new state built from every vector in the database (IVF trained on them)."""
        spec = self._spec
        with _read_txn(conn):
            meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('seq', 'index_gen')").fetchall())
            n = conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
            slots = np.empty(n, np.int64)
            vecs = np.empty((n, spec.dim // 8), np.uint8) if spec.binary else np.empty((n, spec.dim), np.float32)
            flat = vecs.view(np.uint8).reshape(n, spec.code_size)
            i = -1
            for i, (s, b) in enumerate(conn.execute("SELECT slot, vector FROM vectors ORDER BY slot")):
                if len(b) != spec.code_size:
                    raise GalleryError(f"{self.db_path}: the stored vector of slot {s} has the wrong size")
                slots[i] = s
                flat[i] = np.frombuffer(b, np.uint8)
                if cancel is not None and i % 65536 == 65535 and cancel.is_set():
                    raise _Cancelled()
            if i + 1 != n:  # pragma: no cover - one read transaction: cannot happen
                raise GalleryError(f"{self.db_path}: vector count changed while reading")
        if not spec.binary and sys.byteorder != "little":  # pragma: no cover - stored little-endian
            vecs = vecs.view("<f4").astype(np.float32)
        index = spec.build(slots, vecs)
        return _State(self._spec, index, int(meta["seq"]), int(meta["index_gen"]))

    # -- refreshing from the log -------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Apply changes committed by other processes now (searches do it on their own, throttled)."""
        self._check_open()
        with self._lock:
            self._refresh_locked()

    def _maybe_refresh(self) -> None:
        if time.monotonic() - self._last_check >= self.refresh_interval:
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        conn = self._conn
        self._last_check = time.monotonic()
        try:
            rows = dict(
                conn.execute(
                    "SELECT key, value FROM meta WHERE key IN ('seq', 'index_gen', 'log_floor', 'snapshot_seq')"
                ).fetchall()
            )
            state = self._state
            assert state is not None
            seq, gen, floor = int(rows["seq"]), int(rows["index_gen"]), int(rows["log_floor"])
            self._snapshot_seq = int(rows["snapshot_seq"])
            if seq == state.seq and gen == state.gen:
                return
            if gen != state.gen or state.seq < floor:
                self._state = self._load_state()
                return
            self._apply_log(state, conn)
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"{self.db_path}: cannot read the gallery database: {e}") from None
        if self.readonly and state.dead and state.removable and state.dead_ratio > self.tuning["compact_ratio"]:
            state.compact_inplace()

    def _apply_log(self, state: _State, conn: sqlite3.Connection) -> None:
        """Apply the log entries after ``state.seq`` to ``state`` (incremental)."""
        with _read_txn(conn):
            seq = int(conn.execute("SELECT value FROM meta WHERE key='seq'").fetchone()[0])
            if seq <= state.seq:
                return
            entries = conn.execute(
                "SELECT op, item_id, slot, old_slot FROM log WHERE seq > ? AND seq <= ? ORDER BY seq",
                (state.seq, seq),
            ).fetchall()
            state.mark_dead(old for _op, _item, _slot, old in entries if old is not None)
            touched = sorted({item for _op, item, slot, _old in entries if slot is not None})
            add_slots: list[int] = []
            blobs: list[bytes] = []
            for part in _chunks(touched):
                q = (
                    "SELECT i.slot, v.vector FROM items i JOIN vectors v ON v.slot = i.slot "
                    f"WHERE i.id IN ({','.join('?' * len(part))})"
                )
                for s, b in conn.execute(q, list(part)):
                    if s > state.seq and s not in state.slots:
                        add_slots.append(s)
                        blobs.append(b)
            if add_slots:
                order = np.argsort(add_slots)
                state.add(np.array(add_slots, np.int64)[order], self._blobs_to_array(blobs)[order])
            state.seq = seq

    # -- validation ----------------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise GalleryError(f"{self.path}: gallery is closed")
        if self._pid != os.getpid():
            self._after_fork()

    def _after_fork(self) -> None:
        """First use in a forked child (e.g. gunicorn ``--preload``): SQLite connections must not cross a fork,
        so open new ones (the inherited ones are kept, never used nor closed, as SQLite requires). The index in
        memory is the parent's copy and catches up from the log at the next search."""
        with _FORK_LOCK:
            if self._pid == os.getpid():
                return
            self._inherited.extend(c for c in (self._conn, self._wconn) if c is not None)
            self._lock = threading.RLock()
            self._wlock = threading.RLock()
            self._snap_lock = threading.Lock()
            self._bg = None
            self._bg_cancel = threading.Event()
            self._bg_error = None
            self._conn = _connect(self.db_path, self.readonly)
            self._wconn = None if self.readonly else _connect(self.db_path, False)
            self._last_check = 0.0
            self._pid = os.getpid()

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise GalleryError(f"{self.path}: gallery is opened read-only")

    def check_label(self, label: Any) -> str:
        problem = label_problem(label, self.max_label_length)
        if problem:
            raise LabelError(f"invalid label {label!r}: {problem}")
        return label

    def _vectors(self, vectors: Any, what: str = "vectors") -> np.ndarray:
        spec = self._spec
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

    # -- writing -----------------------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[tuple[sqlite3.Connection, dict[str, int]]]:
        """``BEGIN IMMEDIATE`` on the write connection; yields it and the counters. Caller holds ``_wlock``."""
        conn = self._wconn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"{self.db_path}: cannot start a write: {e}") from None
        try:
            counters = {
                k: int(v)
                for k, v in conn.execute("SELECT key, value FROM meta WHERE key IN ('seq', 'next_id')").fetchall()
            }
            yield conn, counters
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.DatabaseError):
                raise GalleryError(f"{self.db_path}: write failed: {exc}") from None
            raise

    def _after_write(self, base_seq: int, apply: Callable[[_State], None] | None, new_seq: int) -> None:
        """Bring the in-memory index up to date after a commit (caller holds ``_wlock``)."""
        with self._lock:
            state = self._state
            assert state is not None
            if apply is not None and state.seq == base_seq:
                apply(state)  # nothing else happened in between: apply our own change directly
                state.seq = new_seq
            else:
                self._refresh_locked()
        self._maintain()

    def add(
        self,
        vectors: np.ndarray,
        labels: Sequence[str],
        sources: Sequence[str | None] | None = None,
        metadata: Sequence[dict | None] | None = None,
        content_hashes: Sequence[str | None] | None = None,
    ) -> list[int]:
        """Add items in one transaction; returns their new ids (in order)."""
        self._check_writable()
        vecs = self._vectors(vectors)
        n = len(vecs)
        labels = list(labels)
        if len(labels) != n:
            raise GalleryError(f"{n} vectors but {len(labels)} labels")
        checked: set[str] = set()
        for label in labels:
            if isinstance(label, str) and label in checked:
                continue
            checked.add(self.check_label(label))
        sources = [None] * n if sources is None else list(sources)
        metadata = [None] * n if metadata is None else list(metadata)
        content_hashes = [None] * n if content_hashes is None else list(content_hashes)
        if len(sources) != n or len(metadata) != n or len(content_hashes) != n:
            raise GalleryError("sources, metadata and content_hashes must have one entry per vector")
        for s in sources:
            if s is not None and not isinstance(s, str):
                raise GalleryError(f"source must be a string or None, not {type(s).__name__}")
        for h in content_hashes:
            if h is not None and not (isinstance(h, str) and 0 < len(h) <= 128):
                raise GalleryError(f"content hash must be a non-empty string or None, not {h!r}")
        meta_json = [self._metadata_json(m) for m in metadata]
        if n == 0:
            return []
        now = time.time()
        stored = _on_disk(vecs)
        with self._wlock:
            with self._transaction() as (conn, c):
                base_seq, first_id = c["seq"], c["next_id"]
                ids = list(range(first_id, first_id + n))
                slots = list(range(base_seq + 1, base_seq + n + 1))
                conn.executemany(
                    "INSERT INTO items (id, label, source, metadata, content_hash, added_at, updated_at, slot)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        (ids[i], labels[i], sources[i], meta_json[i], content_hashes[i], now, now, slots[i])
                        for i in range(n)
                    ),
                )
                conn.executemany(
                    "INSERT INTO vectors (slot, vector) VALUES (?, ?)",
                    ((slots[i], stored[i].tobytes()) for i in range(n)),
                )
                conn.executemany(
                    "INSERT INTO log (seq, op, item_id, slot, old_slot, ts) VALUES (?, 'add', ?, ?, NULL, ?)",
                    ((slots[i], ids[i], slots[i], now) for i in range(n)),
                )
                self._set_counters(conn, seq=base_seq + n, next_id=first_id + n)
            slot_arr = np.array(slots, np.int64)
            self._after_write(base_seq, lambda st: st.add(slot_arr, vecs), base_seq + n)
        return ids

    @staticmethod
    def _set_counters(conn: sqlite3.Connection, **values: int) -> None:
        conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(str(v), k) for k, v in values.items()])

    @staticmethod
    def _metadata_json(m: Any) -> str | None:
        if m is None:
            return None
        if not isinstance(m, dict):
            raise GalleryError(f"metadata must be a dict or None, not {type(m).__name__}")
        try:
            return json.dumps(m, ensure_ascii=False, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise GalleryError(f"metadata is not JSON-serialisable: {e}") from None

    def remove(self, ids: Sequence[int] | None = None, labels: Sequence[str] | None = None) -> int:
        """Remove items by id and/or by label (one transaction); returns how many were removed.

        From the moment this returns, no search of this object returns them (other processes: within a second,
        and never once they have re-read the log).
        """
        self._check_writable()
        ids = [int(i) for i in (ids or [])]
        labels = list(labels or [])
        if not ids and not labels:
            return 0
        now = time.time()
        with self._wlock:
            with self._transaction() as (conn, c):
                found: dict[int, int] = {}
                for part in _chunks(ids):
                    q = f"SELECT id, slot FROM items WHERE id IN ({','.join('?' * len(part))})"
                    found.update(conn.execute(q, list(part)).fetchall())
                for part in _chunks(labels):
                    q = f"SELECT id, slot FROM items WHERE label IN ({','.join('?' * len(part))})"
                    found.update(conn.execute(q, list(part)).fetchall())
                base_seq = c["seq"]
                if not found:
                    return 0
                victims = sorted(found.items())
                for part in _chunks(victims):
                    marks = ",".join("?" * len(part))
                    conn.execute(f"DELETE FROM items WHERE id IN ({marks})", [i for i, _ in part])
                    conn.execute(f"DELETE FROM vectors WHERE slot IN ({marks})", [s for _, s in part])
                conn.executemany(
                    "INSERT INTO log (seq, op, item_id, slot, old_slot, ts) VALUES (?, 'remove', ?, NULL, ?, ?)",
                    ((base_seq + 1 + j, item, slot, now) for j, (item, slot) in enumerate(victims)),
                )
                new_seq = base_seq + len(victims)
                self._set_counters(conn, seq=new_seq)
            dead = [slot for _item, slot in victims]
            self._after_write(base_seq, lambda st: st.mark_dead(dead), new_seq)
        return len(victims)

    def update(
        self,
        id: int,
        label: str | None = None,
        vector: np.ndarray | None = None,
        *,
        source: str | None = None,
        metadata: dict | None = None,
        content_hash: str | None = None,
    ) -> None:
        """Relabel an item and/or replace its vector (and optionally its source, metadata, content hash).

        The id stays the same; a replaced vector is searchable at once and the old one never again.
        """
        self._check_writable()
        id = int(id)
        if label is not None:
            self.check_label(label)
        vec = self._vectors(vector, "vector") if vector is not None else None
        if vec is not None and len(vec) != 1:
            raise GalleryError("update takes one vector")
        meta_json = self._metadata_json(metadata) if metadata is not None else None
        if source is not None and not isinstance(source, str):
            raise GalleryError("source must be a string")
        now = time.time()
        with self._wlock:
            with self._transaction() as (conn, c):
                row = conn.execute("SELECT slot FROM items WHERE id = ?", (id,)).fetchone()
                if row is None:
                    raise GalleryError(f"{self.path}: no item with id {id}")
                old_slot = row[0]
                base_seq = seq = c["seq"]
                sets: list[str] = ["updated_at = ?"]
                args: list[Any] = [now]
                for col, value in (("label", label), ("source", source), ("metadata", meta_json),
                                   ("content_hash", content_hash)):
                    if value is not None:
                        sets.append(f"{col} = ?")
                        args.append(value)
                if label is not None or source is not None or metadata is not None or content_hash is not None:
                    seq += 1
                    conn.execute(
                        "INSERT INTO log (seq, op, item_id, slot, old_slot, ts) "
                        "VALUES (?, 'relabel', ?, NULL, NULL, ?)",
                        (seq, id, now),
                    )
                if vec is not None:
                    seq += 1
                    sets.append("slot = ?")
                    args.append(seq)
                    conn.execute("DELETE FROM vectors WHERE slot = ?", (old_slot,))
                    conn.execute("INSERT INTO vectors (slot, vector) VALUES (?, ?)", (seq, _on_disk(vec)[0].tobytes()))
                    conn.execute(
                        "INSERT INTO log (seq, op, item_id, slot, old_slot, ts) VALUES (?, 'revector', ?, ?, ?, ?)",
                        (seq, id, seq, old_slot, now),
                    )
                conn.execute(f"UPDATE items SET {', '.join(sets)} WHERE id = ?", (*args, id))
                self._set_counters(conn, seq=seq)
            new_slot = seq

            def apply(st: _State) -> None:
                if vec is not None:
                    st.mark_dead([old_slot])
                    st.add(np.array([new_slot], np.int64), vec)

            self._after_write(base_seq, apply, seq)

    # -- maintenance -------------------------------------------------------------------------------------------------

    def _maintain(self) -> None:
        """After a commit (writer): (re)train IVF, compact dead vectors, write a snapshot when due.

        The commit is already durable: a failure here is logged, never reported as a failed write (the next
        write or open tries again).
        """
        if self.readonly or self._closed:
            return
        try:
            self._maintain_unguarded()
        except Exception as e:  # noqa: BLE001
            log.warning("%s: gallery maintenance failed (the change itself is committed): %s", self.path, e)

    def _shrink_wal(self) -> None:
        """A big write leaves a WAL file as big as itself: checkpoint and truncate it (best effort, never waits
        long for readers of other processes)."""
        try:
            if (self.path / (DB_NAME + "-wal")).stat().st_size <= WAL_SHRINK_BYTES:
                return
        except OSError:
            return
        conn = self._wconn
        assert conn is not None
        conn.execute("PRAGMA busy_timeout=200")
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.execute("PRAGMA busy_timeout=30000")

    def _maintain_unguarded(self) -> None:
        with self._wlock:
            self._shrink_wal()
            with self._lock:
                state = self._state
                assert state is not None
                live = state.live
                rebuild = live >= self._no_train_below and self._spec.wants_rebuild(state.index, live)
                compact = (
                    not rebuild
                    and state.dead_ratio > float(self.tuning["compact_ratio"])
                    and len(state.dead) >= int(self.tuning["compact_min"])
                )
                if compact and state.removable:
                    state.compact_inplace()
                    compact = False
                if (rebuild or compact) and live >= int(self.tuning["background_rebuild_min"]):
                    self._start_background_rebuild()  # big: searches go on with the current index meanwhile
                    rebuild = compact = False
                if rebuild or compact:
                    new = self._rebuild_state(self._conn)
                    self._apply_log(new, self._conn)
                    self._install(new)
            if rebuild or compact:
                self._write_snapshot(bump=True)
                return
            every = self.tuning.get("snapshot_every")
            every = int(every) if every else max(1000, live // 10)
            if state.seq - self._snapshot_seq >= every:
                self._write_snapshot(bump=False)

    def _install(self, new: _State) -> None:
        """Make a rebuilt state current (caller holds ``_lock``)."""
        self._state = new
        if self._spec.wants_rebuild(new.index, new.live):
            self._no_train_below = 2 * new.live  # training failed at this size: try again at twice the size

    def _rebuild_detached(self, cancel: threading.Event | None = None) -> bool:
        """Rebuild the index from the database without blocking searches, then install it and write a snapshot.

        The build reads through its own connection; changes committed meanwhile (here or elsewhere) are replayed
        onto the new index before it replaces the current one. False when it was cancelled or superseded.
        """
        conn = _connect(self.db_path, True)
        try:
            new = self._rebuild_state(conn, cancel)
        finally:
            conn.close()
        if cancel is not None and cancel.is_set():
            return False
        with self._wlock:
            if self._closed:
                return False
            with self._lock:
                if self._state is None or self._state.gen != new.gen:
                    return False  # another process rebuilt meanwhile; its snapshot is loaded instead
                self._apply_log(new, self._conn)
                self._install(new)
            self._write_snapshot(bump=True)
        return True

    def compact(self) -> None:
        """Drop removed vectors now (``remove_ids``, or a rebuild for HNSW), retrain IVF if its size changed a lot,
        and write a snapshot. Searches keep running on the current index while a rebuild is built."""
        self._check_writable()
        self.wait_background()
        for _attempt in range(3):
            with self._wlock:
                with self._lock:
                    self._refresh_locked()
                    state = self._state
                    assert state is not None
                    rebuild = self._spec.wants_retrain_on_compact(state.index, state.live)
                    if not rebuild and not state.compact_inplace():
                        rebuild = True
                if not rebuild:
                    self._write_snapshot(bump=False, force=True)
                    break
            if self._rebuild_detached():
                break
        self._cleanup_files()

    def checkpoint(self) -> None:
        """Write a snapshot now if the log has entries it does not hold (makes the next open fast).

        Waits for a background rebuild first, so the snapshot holds its result."""
        self._check_writable()
        self.wait_background()
        with self._wlock:
            with self._lock:
                self._refresh_locked()
            self._write_snapshot(bump=False)

    def _start_background_rebuild(self) -> None:
        if self._bg is not None and self._bg.is_alive():
            return
        self._bg_cancel.clear()
        self._bg = threading.Thread(target=self._background_rebuild, name="gallery-rebuild", daemon=True)
        self._bg.start()

    def _background_rebuild(self) -> None:
        try:
            self._rebuild_detached(self._bg_cancel)
        except _Cancelled:
            return
        except BaseException as e:  # noqa: BLE001 - reported by wait_background()
            self._bg_error = e
            log.warning("%s: background index rebuild failed: %s", self.path, e)

    def wait_background(self) -> None:
        """Wait for a background rebuild (big IVF retraining or HNSW compaction) to finish; raise its error."""
        bg = self._bg
        if bg is not None and bg is not threading.current_thread():
            bg.join()
            self._bg = None
        if self._bg_error is not None:
            err, self._bg_error = self._bg_error, None
            raise GalleryError(f"{self.path}: background index rebuild failed: {err}") from err

    def _write_snapshot(self, bump: bool, force: bool = False) -> bool:
        """Write the current state as a new snapshot file and point ``meta`` at it (caller holds ``_wlock``).

        ``bump``: the index structure changed; other processes reload the snapshot instead of rebuilding.
        """
        with self._snap_lock:
            with self._lock:
                state = self._state
                assert state is not None
                if not bump and not force and state.seq <= self._snapshot_seq:
                    return False
                data = state.serialize()
                seq, gen = state.seq, state.gen
            sha = hashlib.sha256(data).hexdigest()
            new_gen = gen + 1 if bump else gen
            name = f"index-{new_gen:06d}-{seq:012d}-{secrets.token_hex(4)}.faiss"
            final = self.path / name
            tmp = self.path / f".{name}.{os.getpid()}.tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    view = memoryview(data)
                    while view:
                        written = os.write(fd, view[: 1 << 26])
                        view = view[written:]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, final)
                _fsync_dir(self.path)
            except OSError as e:
                try:
                    tmp.unlink()
                except FileNotFoundError:
                    pass
                raise GalleryError(f"{final}: cannot write the snapshot: {e}") from None
            del data
            conn = self._wconn
            assert conn is not None
            ok = False
            replaced: str | None = None
            with self._lock:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        meta = _read_meta(conn)
                        cur_gen, cur_seq = int(meta["index_gen"]), int(meta["snapshot_seq"])
                        replaced = meta["snapshot_file"]
                        ok = cur_gen == gen and (
                            bump or not meta["snapshot_file"] or cur_seq < seq or (force and cur_seq <= seq)
                        )
                        if ok:
                            now = time.time()
                            values = {
                                "snapshot_file": name,
                                "snapshot_seq": seq,
                                "snapshot_sha256": sha,
                                "snapshot_size": final.stat().st_size,
                                "index_gen": new_gen,
                            }
                            # Old log entries already in the snapshot go (kept an hour for lagging readers).
                            cut = conn.execute(
                                "SELECT MAX(seq) FROM log WHERE seq <= ? AND ts < ?", (seq, now - LOG_KEEP_SECONDS)
                            ).fetchone()[0]
                            if cut is not None:
                                conn.execute("DELETE FROM log WHERE seq <= ?", (cut,))
                                values["log_floor"] = max(int(meta["log_floor"]), int(cut))
                            self._set_counters(conn, **values)
                        conn.execute("COMMIT")
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                except sqlite3.DatabaseError as e:
                    ok = False
                    raise GalleryError(f"{self.db_path}: cannot record the snapshot: {e}") from None
                finally:
                    if not ok:
                        try:
                            final.unlink()
                        except FileNotFoundError:
                            pass
                if ok:
                    self._snapshot_seq = seq
                    if bump and self._state is state:
                        state.gen = gen + 1
            if ok:
                self._remove_old_snapshots(name, replaced)
            return ok

    def _remove_old_snapshots(self, current: str, replaced: str | None = None) -> None:
        """Delete ``replaced`` (the snapshot ``current`` took over from) and snapshots older than ``current`` by
        (generation, seq). Newer or equal ones may belong to a writer about to record them; if its record fails
        it deletes its own file."""
        cur = _SNAP_RE.match(current)
        if not cur:
            return
        key = (int(cur.group(1)), int(cur.group(2)))
        for p in self.path.glob("index-*.faiss"):
            m = _SNAP_RE.match(p.name)
            if m and p.name != current and ((int(m.group(1)), int(m.group(2))) < key or p.name == replaced):
                try:
                    p.unlink()
                except OSError:
                    pass

    def _cleanup_files(self) -> None:
        """Remove temp files of dead writers and snapshots older than the current one."""
        now = time.time()
        for p in self.path.iterdir():
            m = _TMP_RE.match(p.name)
            if m:
                try:
                    if not _pid_alive(int(m.group(1))) or now - p.stat().st_mtime > 3600:
                        p.unlink()
                except OSError:
                    pass
        with self._lock:
            meta = _read_meta(self._conn)
        if meta.get("snapshot_file"):
            self._remove_old_snapshots(meta["snapshot_file"])

    # -- searching ---------------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int = 5, labels: Sequence[str] | None = None) -> list[list[Match]]:
        """The ``k`` best matches of each query (one list per query, best first).

        ``score`` is the raw metric: IP similarity (higher is better), squared L2 distance or hamming distance
        (smaller is better; hamming hits farther than ``hamming_radius`` are dropped). ``labels`` restricts the
        search to items with those labels.
        """
        self._check_open()
        q = self._vectors(queries, "queries")
        k = int(k)
        if k <= 0:
            raise GalleryError(f"k must be positive, not {k}")
        if isinstance(labels, str):
            labels = [labels]
        label_set = None if labels is None else set(labels)
        with self._lock:
            self._maybe_refresh()
            for attempt in range(2):
                result, stale = self._search_locked(q, k, label_set)
                if not stale or attempt:
                    return result
                self._refresh_locked()  # a hit was removed elsewhere: catch up and search again
        return result  # pragma: no cover

    def _search_locked(
        self, q: np.ndarray, k: int, labels: set[str] | None
    ) -> tuple[list[list[Match]], bool]:
        state = self._state
        assert state is not None
        spec = self._spec
        conn = self._conn
        if labels is not None:
            if not labels:
                return [[] for _ in range(len(q))], False
            lab = sorted(labels)
            limit = int(self.tuning["exact_filter_limit"])
            count = 0
            for part in _chunks(lab):
                count += conn.execute(
                    f"SELECT COUNT(*) FROM items WHERE label IN ({','.join('?' * len(part))})", list(part)
                ).fetchone()[0]
            if count <= limit:
                # Few candidates: exact search over their stored vectors.
                blobs: list[bytes] = []
                slots: list[int] = []
                with _read_txn(conn):
                    for part in _chunks(lab):
                        q_ = (
                            "SELECT i.slot, v.vector FROM items i JOIN vectors v ON v.slot = i.slot "
                            f"WHERE i.label IN ({','.join('?' * len(part))})"
                        )
                        for s, b in conn.execute(q_, list(part)):
                            slots.append(s)
                            blobs.append(b)
                if not slots:
                    return [[] for _ in range(len(q))], False
                dist, order = _exact_search(spec, q, self._blobs_to_array(blobs), k)
                slot_arr = np.array(slots, np.int64)
                found = slot_arr[order]
            else:
                allowed: list[int] = []
                for part in _chunks(lab):
                    allowed += [
                        r[0]
                        for r in conn.execute(
                            f"SELECT slot FROM items WHERE label IN ({','.join('?' * len(part))})", list(part)
                        )
                    ]
                dist, found = state.search(q, k, np.array(sorted(allowed), np.int64))
        else:
            dist, found = state.search(q, k)
        # Resolve slots against the database: drops anything removed since (also in other processes).
        wanted = np.unique(found[found >= 0]).tolist()
        records: dict[int, tuple] = {}
        for part in _chunks(wanted):
            sql = (
                "SELECT slot, id, label, source, metadata FROM items "
                f"WHERE slot IN ({','.join('?' * len(part))})"
            )
            for row in conn.execute(sql, part).fetchall():
                records[row[0]] = row
        stale = False
        out: list[list[Match]] = []
        radius = spec.hamming_radius if spec.binary else None
        for d_row, s_row in zip(dist.tolist(), found.tolist()):
            matches: list[Match] = []
            for d, s in zip(d_row, s_row):
                if s < 0:
                    continue
                if radius is not None and d > radius:
                    continue
                rec = records.get(s)
                if rec is None:
                    stale = True
                    continue
                if labels is not None and rec[2] not in labels:
                    continue
                meta = json.loads(rec[4]) if rec[4] else None
                matches.append(Match(id=rec[1], label=rec[2], score=float(d), source=rec[3], metadata=meta))
                if len(matches) == k:
                    break
            out.append(matches)
        return out, stale

    # -- reading records --------------------------------------------------------------------------------------------

    _COLS = "id, label, source, metadata, content_hash, added_at, updated_at"

    @staticmethod
    def _record(row: tuple) -> dict[str, Any]:
        return {
            "id": row[0],
            "label": row[1],
            "source": row[2],
            "metadata": json.loads(row[3]) if row[3] else None,
            "content_hash": row[4],
            "added_at": row[5],
            "updated_at": row[6],
        }

    def get(self, id: int, with_vector: bool = False) -> dict[str, Any] | None:
        """The record of item ``id`` (``None`` when there is none); ``with_vector`` adds its ``vector``."""
        self._check_open()
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._COLS}, (SELECT vector FROM vectors v WHERE v.slot = items.slot) "
                "FROM items WHERE id = ?",
                (int(id),),
            ).fetchone()
        if row is None:
            return None
        rec = self._record(row)
        if with_vector:
            rec["vector"] = self._blobs_to_array([row[7]])[0].copy()
        return rec

    def list(self, label: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Records by id (optionally of one label), ``limit`` from ``offset``."""
        self._check_open()
        with self._lock:
            if label is None:
                rows = self._conn.execute(
                    f"SELECT {self._COLS} FROM items ORDER BY id LIMIT ? OFFSET ?", (int(limit), int(offset))
                ).fetchall()
            else:
                rows = self._conn.execute(
                    f"SELECT {self._COLS} FROM items WHERE label = ? ORDER BY id LIMIT ? OFFSET ?",
                    (label, int(limit), int(offset)),
                ).fetchall()
        return [self._record(r) for r in rows]

    def label_counts(self) -> dict[str, int]:
        """Items per label."""
        self._check_open()
        with self._lock:
            return dict(self._conn.execute("SELECT label, COUNT(*) FROM items GROUP BY label ORDER BY label"))

    def has_hash(self, content_hash: str) -> bool:
        return bool(self.hashes_present([content_hash]))

    def hashes_present(self, hashes: Iterable[str]) -> set[str]:
        """Which of ``hashes`` some item has as its content hash."""
        self._check_open()
        hashes = sorted({h for h in hashes if h})
        found: set[str] = set()
        with self._lock:
            for part in _chunks(hashes):
                q = f"SELECT DISTINCT content_hash FROM items WHERE content_hash IN ({','.join('?' * len(part))})"
                found.update(r[0] for r in self._conn.execute(q, list(part)))
        return found

    def __len__(self) -> int:
        self._check_open()
        with self._lock:
            self._maybe_refresh()
            assert self._state is not None
            return self._state.live

    def info(self) -> dict[str, Any]:
        """Counts, configuration, version and sizes of the gallery."""
        self._check_open()
        with self._lock:
            self._refresh_locked()
            state = self._state
            assert state is not None
            meta = _read_meta(self._conn)
            count = self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            n_labels = self._conn.execute("SELECT COUNT(DISTINCT label) FROM items").fetchone()[0]
            info = {
                "path": str(self.path),
                "count": count,
                "labels": n_labels,
                "dim": self.dim,
                "metric": self.metric,
                "normalize": self.normalize,
                "index_method": self.index_method,
                "index": _describe(state.index),
                "hamming_radius": self.hamming_radius if self._spec.binary else None,
                "format_version": int(meta["format_version"]),
                "seq": int(meta["seq"]),
                "loaded_seq": state.seq,
                "snapshot_seq": int(meta["snapshot_seq"]),
                "snapshot_file": meta["snapshot_file"] or None,
                "index_gen": int(meta["index_gen"]),
                "index_vectors": int(state.index.ntotal),
                "removed_pending": len(state.dead),
                "readonly": self.readonly,
                "created_at": float(meta["created_at"]),
                "tuning": dict(self.tuning),
            }
        size = 0
        for p in self.path.iterdir():
            try:
                if p.is_file():
                    size += p.stat().st_size
            except OSError:
                pass
        info["size_bytes"] = size
        return info

    # -- lifetime ------------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the gallery (idempotent). Nothing is lost: every change was committed when its call returned."""
        if self._closed:
            return
        # A background rebuild is not waited for: it notices the gallery is closed and drops its result.
        self._bg_cancel.set()
        if self._pid != os.getpid():
            self._closed = True  # inherited across fork: the parent owns these connections
            return
        with self._wlock, self._lock:
            self._closed = True
            for conn in (self._wconn, self._conn):
                if conn is not None:
                    try:
                        conn.close()
                    except sqlite3.Error:
                        pass
            self._wconn = None
            self._state = None

    def __enter__(self) -> "Gallery":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Gallery({str(self.path)!r}, dim={self.dim}, metric={self.metric!r}, "
            f"index_method={self.index_method!r})"
        )


class _Cancelled(Exception):
    pass


_FORK_LOCK = threading.Lock()


def _reset_fork_lock() -> None:
    global _FORK_LOCK
    _FORK_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_fork_lock)
