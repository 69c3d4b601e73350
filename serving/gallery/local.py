"""The local gallery backend: a labelled embedding index in a folder (SQLite + faiss), shared by processes.

:class:`Gallery` is the public class (``from shitu.serving.gallery import Gallery``); it implements
:class:`~shitu.serving.gallery.backend.GalleryBackend` and more (``compact``, ``checkpoint``, ``repair``,
``refresh``, ``tuning``). It is composed of parts, one concern each, each an attribute:

- ``store`` (:class:`.GalleryStore`) -- ``gallery.db``, the source of truth, and every SQL statement on it;
- ``snapshots`` (:class:`.Snapshots`) -- the faiss snapshot files: crash-safe writes, verified reads;
- ``replica`` (:class:`.Replica`) -- this process's index state and record cache, following the change log
  that other processes write too;
- ``maintenance`` (:class:`.Maintenance`) -- IVF (re)training, compaction, background rebuilds;
- this module -- creation, opening, repair, the writes, the reads, lifetime and fork handling.

Locks (:class:`.Locks`): ``write`` (writes) is always taken before ``read`` (index state, read connection).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shitu.serving.gallery import replication
from shitu.serving.gallery.backend import Match
from shitu.serving.gallery.errors import (
    GalleryCorrupt,
    GalleryError,
    GalleryExists,
    GalleryNotFound,
    GalleryReadOnly,
    LabelError,
)
from shitu.serving.gallery.index import DEFAULT_TUNING, SMALL_BATCH, IndexConfig, describe
from shitu.serving.gallery.maintenance import Maintenance
from shitu.serving.gallery.reading import record_dict, search_once
from shitu.serving.gallery.replication import Locks, Replica
from shitu.serving.gallery.snapshot import Snapshots
from shitu.serving.gallery.store import DB_NAME, FORMAT_VERSION, GalleryStore
from shitu.serving.gallery.validation import (
    DEFAULT_MAX_LABEL_LENGTH,
    check_fields,
    check_label,
    check_radius,
    check_settings,
    iso_time,
    metadata_json,
    normal_labels,
)

__all__ = ["DEFAULT_TUNING", "FORMAT_VERSION", "Gallery", "GalleryError", "LabelError", "DB_NAME", "SMALL_BATCH"]


class Gallery:
    """A labelled embedding index in a folder (see the module doc).

    Use :meth:`create`, :meth:`open` or :meth:`open_or_create`; close with :meth:`close` or a ``with`` block.
    One object may be used from several threads; several processes may open the same folder.
    """

    def __init__(self, path: Path, store: GalleryStore, spec: IndexConfig, max_label_length: int):
        # Private: use create / open.
        self.path = path
        self.readonly = store.readonly
        self.max_label_length = int(max_label_length)
        self._spec = spec
        self._closed = False
        self._pid = os.getpid()
        self.store = store
        self.locks = Locks()
        self.snapshots = Snapshots(path, spec)
        self.replica = Replica(spec, store, self.snapshots, self.locks)
        self.maintenance = Maintenance(path, self.replica, lambda: self._closed)

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

    @property
    def refresh_interval(self) -> float:
        """Seconds between two checks of the change log by searches (changes elsewhere show within ~this)."""
        return self.replica.refresh_interval

    @refresh_interval.setter
    def refresh_interval(self, seconds: float) -> None:
        self.replica.refresh_interval = float(seconds)

    @property
    def record_cache_capacity(self) -> int:
        """Item records this object keeps in memory for searches (``Limits.gallery_record_cache``; ~200 bytes
        each): a gallery of at most this many items is held whole, a bigger one keeps its recent hits' only."""
        return self.replica.capacity

    @record_cache_capacity.setter
    def record_cache_capacity(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise GalleryError(f"record_cache_capacity must be a non-negative integer, not {n!r}")
        with self.locks.read:
            self.replica.capacity = int(n)
            self.replica.records = None  # the next search starts a cache of the new size

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
    ) -> Gallery:
        """Create an empty gallery in folder ``path``.

        ``index_method``: ``Flat``, ``IVF`` (nlist chosen from the size, exact until ``ivf_min_train`` vectors),
        ``HNSW32`` (any ``HNSW<M>``) or another faiss factory string. ``dist_type``: ``IP``, ``L2``, ``hamming``
        (packed-bit uint8 vectors, ``dim`` in bits) or ``cosine`` (IP on vectors the gallery L2-normalises).
        ``tuning`` overrides :data:`DEFAULT_TUNING`. With ``exist_ok`` an existing gallery of the same dimension
        and metric is opened instead.
        """
        path = Path(path)
        dim, metric, normalize, index_method, hamming_radius = check_settings(
            dim, dist_type, index_method, hamming_radius
        )
        unknown = set(tuning) - set(DEFAULT_TUNING)
        if unknown:
            raise GalleryError(f"unknown gallery option(s) {sorted(unknown)}; known: {sorted(DEFAULT_TUNING)}")
        spec = IndexConfig(dim, metric, index_method, hamming_radius, normalize, {**DEFAULT_TUNING, **tuning})
        try:
            spec.empty_index(0 if not spec.auto_ivf else 1)
        except (RuntimeError, TypeError, ValueError) as e:
            raise GalleryError(f"faiss cannot build index_method {index_method!r} for {metric}: {e}") from None
        if (path / DB_NAME).exists():
            if not exist_ok:
                raise GalleryExists(f"{path}: a gallery exists already")
            return cls._open_existing(path, dim, metric, max_label_length)
        meta = {
            "format_version": FORMAT_VERSION,
            "dim": dim,
            "metric": metric,
            "normalize": int(normalize),
            "index_method": spec.index_method,
            "hamming_radius": spec.hamming_radius,
            "tuning": json.dumps(spec.tuning, sort_keys=True),
            "created_at": time.time(),
            "seq": 0,
            "next_id": 1,
            "index_gen": 0,
            "log_floor": 0,
            "snapshot_file": "",
            "snapshot_seq": 0,
            "snapshot_sha256": "",
            "snapshot_size": 0,
        }
        if not GalleryStore.create(path, meta):
            if not exist_ok:
                raise GalleryExists(f"{path}: a gallery exists already")
            return cls._open_existing(path, dim, metric, max_label_length)
        return cls.open(path, max_label_length=max_label_length)

    @classmethod
    def _open_existing(cls, path: Path, dim: int, metric: str, max_label_length: int) -> Gallery:
        """Open an existing gallery for create(exist_ok) / open_or_create.

        Its own index method and metric win (those parameters are for new galleries), but the dimension and the
        kind of vectors (float or binary) must match what the caller will put in.
        """
        g = cls.open(path, max_label_length=max_label_length)
        if g.dim != dim or (g.metric == "hamming") != (metric == "hamming"):
            g.close()
            raise GalleryExists(f"{path}: holds a {g.metric} gallery of dim {g.dim}, not {metric} of dim {dim}")
        return g

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, dim: int, **kw: Any) -> Gallery:
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
    ) -> Gallery:
        """Open the gallery in folder ``path``.

        Corruption is reported as :class:`GalleryError` naming the file: a damaged ``gallery.db`` (checked with
        ``PRAGMA quick_check`` when ``verify``), a snapshot whose size or sha256 differs from the one recorded, a
        snapshot faiss cannot read. :meth:`repair` rebuilds a bad snapshot from the database.
        """
        g = cls._connect(Path(path), readonly, verify, max_label_length)
        try:
            with g.locks.write, g.locks.read:
                g.replica.state = g.replica.load()
            if not readonly:
                g._cleanup_files()
                g.maintenance.after_write()
        except BaseException:
            g.close()
            raise
        return g

    @classmethod
    def _connect(cls, path: Path, readonly: bool, verify: bool, max_label_length: int) -> Gallery:
        db = path / DB_NAME
        if not path.is_dir():
            raise GalleryNotFound(f"{path}: no such gallery folder")
        if not db.is_file():
            if (path / "id_map.pkl").exists() or (path / "vector.index").exists():
                raise GalleryError(
                    f"{path}: a PaddleClas index folder (vector.index + id_map.pkl), not a gallery; import it with "
                    f"`shitu gallery import-paddleclas {path} NEW_GALLERY` (nothing in it is executed)"
                )
            raise GalleryNotFound(f"{path}: not a gallery (no {DB_NAME})")
        store, meta = GalleryStore.open(db, readonly, verify)
        try:
            return cls(path, store, cls._spec_from_meta(db, meta), max_label_length)
        except BaseException:
            store.close()
            raise

    @staticmethod
    def _spec_from_meta(db: Path, meta: dict[str, str]) -> IndexConfig:
        try:
            version = int(meta["format_version"])
        except (KeyError, ValueError):
            raise GalleryCorrupt(f"{db}: not a gallery database (no format_version)") from None
        if version > FORMAT_VERSION:
            raise GalleryError(
                f"{db}: gallery format {version} is newer than this release supports ({FORMAT_VERSION}); "
                f"upgrade shitu-hub to open it"
            )
        # Format 1 is the first one: older formats would be migrated here.
        try:
            tuning = {**DEFAULT_TUNING, **json.loads(meta.get("tuning") or "{}")}
            return IndexConfig(
                int(meta["dim"]),
                meta["metric"],
                meta["index_method"],
                int(meta["hamming_radius"]),
                bool(int(meta.get("normalize", "0"))),
                tuning,
            )
        except (KeyError, ValueError) as e:
            raise GalleryCorrupt(f"{db}: damaged gallery metadata ({e})") from None

    @classmethod
    def repair(cls, path: str | os.PathLike) -> Gallery:
        """Rebuild the faiss snapshot from the vectors in ``gallery.db`` (after a lost or damaged snapshot)."""
        g = cls._connect(Path(path), False, True, DEFAULT_MAX_LABEL_LENGTH)
        try:
            with g.locks.write:
                with g.locks.read:
                    g.replica.state = g.replica.rebuild()
                g.replica.save(bump=True, force=True)
                g._cleanup_files()
        except BaseException:
            g.close()
            raise
        return g

    def _cleanup_files(self) -> None:
        with self.locks.read:
            current = self.store.meta().get("snapshot_file", "")
        self.snapshots.cleanup(current)

    # -- lifetime and processes ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise GalleryError(f"{self.path}: gallery is closed")
        if self._pid != os.getpid():
            self._after_fork()

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise GalleryReadOnly(f"{self.path}: gallery is opened read-only")

    def _after_fork(self) -> None:
        """First use in a forked child (e.g. gunicorn ``--preload``): SQLite connections must not cross a fork,
        so the store opens new ones. The index in memory is the parent's copy and catches up from the log at the
        next search."""
        with replication.FORK_LOCK:
            if self._pid == os.getpid():
                return
            self.locks.reset()
            self.maintenance.reset()
            self.store.after_fork()
            self.replica.last_check = 0.0
            self._pid = os.getpid()

    def close(self) -> None:
        """Close the gallery (idempotent). Nothing is lost: every change was committed when its call returned."""
        if self._closed:
            return
        # A background rebuild is not waited for: it notices the gallery is closed and drops its result.
        self.maintenance.cancel.set()
        if self._pid != os.getpid():
            self._closed = True  # inherited across fork: the parent owns these connections
            return
        with self.locks.write, self.locks.read:
            self._closed = True
            self.store.close()
            self.replica.state = None

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Gallery({str(self.path)!r}, dim={self.dim}, metric={self.metric!r}, index_method={self.index_method!r})"
        )

    # -- writing -------------------------------------------------------------------------------------------------

    def check_label(self, label: Any) -> str:
        """``label`` as stored (NFC), or :class:`LabelError` naming the problem (the rule: :mod:`.validation`)."""
        return check_label(label, self.max_label_length)

    def _vectors(self, vectors: Any, what: str = "vectors") -> np.ndarray:
        return self._spec.vectors(vectors, what)

    def add(
        self,
        vectors: np.ndarray,
        labels: Sequence[str],
        sources: Sequence[str | None] | None = None,
        metadata: Sequence[dict | None] | None = None,
        content_hashes: Sequence[str | None] | None = None,
        *,
        ids: Sequence[int] | None = None,
    ) -> list[int]:
        """Add items in one transaction; returns their new ids (in order). Labels are stored NFC. ``ids`` keeps
        given ids (an import): strictly increasing, from the gallery's next id on (from 0 into an empty one)."""
        self._check_writable()
        vecs = self._vectors(vectors)
        fields = check_fields(len(vecs), labels, sources, metadata, content_hashes, self.max_label_length)
        if not len(vecs):
            return []
        with self.locks.write:
            base_seq, new_ids, slots = self.store.insert(*fields, vecs, ids)
            self.replica.apply(base_seq, base_seq + len(new_ids), added=slots, vectors=vecs)
            self.maintenance.after_write()
        return new_ids

    def remove(self, ids: Sequence[int] | None = None, labels: Sequence[str] | None = None) -> int:
        """Remove items by id and/or by label (one transaction); returns how many were removed. A label matches
        the items of its stored (NFC) form.

        From the moment this returns, no search of this object returns them (other processes: within a second,
        and never once they have re-read the log).
        """
        self._check_writable()
        id_list = [int(i) for i in (ids or [])]
        label_list = normal_labels([labels] if isinstance(labels, str) else list(labels or []))
        if not id_list and not label_list:
            return 0
        with self.locks.write:
            base_seq, freed = self.store.delete(id_list, label_list)
            if not freed:
                return 0
            self.replica.apply(base_seq, base_seq + len(freed), freed=freed)
            self.maintenance.after_write()
        return len(freed)

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
        vec = self._vectors(vector, "vector") if vector is not None else None
        if vec is not None and len(vec) != 1:
            raise GalleryError("update takes one vector")
        if source is not None and not isinstance(source, str):
            raise GalleryError("source must be a string")
        values = {
            "label": None if label is None else self.check_label(label),
            "source": source,
            "metadata": metadata_json(metadata),
            "content_hash": content_hash,
        }
        fields = {k: v for k, v in values.items() if v is not None}
        with self.locks.write:
            base_seq, old_slot, seq = self.store.update(int(id), fields, vec)
            if vec is None:
                self.replica.apply(base_seq, seq)
            else:
                self.replica.apply(base_seq, seq, added=[seq], vectors=vec, freed=[old_slot])
            self.maintenance.after_write()

    # -- maintenance -------------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Apply changes committed by other processes now (searches do it on their own, throttled)."""
        self._check_open()
        with self.locks.read:
            self.replica.refresh()

    def compact(self) -> None:
        """Drop removed vectors now (``remove_ids``, or a rebuild for HNSW), retrain IVF if its size changed a lot,
        and write a snapshot. Searches keep running on the current index while a rebuild is built."""
        self._check_writable()
        self.maintenance.compact()
        self._cleanup_files()

    def checkpoint(self) -> None:
        """Write a snapshot now if the log has entries it does not hold (makes the next open fast).

        Waits for a background rebuild first, so the snapshot holds its result."""
        self._check_writable()
        self.maintenance.checkpoint()

    def wait_background(self) -> None:
        """Wait for a background rebuild (big IVF retraining or HNSW compaction) to finish; raise its error."""
        self.maintenance.wait()

    # -- reading -------------------------------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int = 5, labels: Sequence[str] | None = None, *, hamming_radius: Any = None
    ) -> list[list[Match]]:
        """The ``k`` best matches of each query (one list per query, best first).

        ``score`` is the raw metric: IP similarity (higher is better), squared L2 distance or hamming distance
        (smaller is better; hamming hits farther than ``hamming_radius`` -- this call's, else the gallery's -- are
        dropped). ``labels`` restricts the search to items with those labels.
        """
        self._check_open()
        q = self._vectors(queries, "queries")
        k = int(k)
        if k <= 0:
            raise GalleryError(f"k must be positive, not {k}")
        radius = check_radius(hamming_radius)
        label_set = None if labels is None else set(normal_labels([labels] if isinstance(labels, str) else labels))
        with self.locks.read:
            self.replica.maybe_refresh()
            for attempt in range(2):
                result, stale = search_once(self.replica, q, k, label_set, radius)
                if not stale or attempt:
                    break
                self.replica.refresh()  # a hit was removed elsewhere: catch up and search again
        return result

    def get(self, id: int, with_vector: bool = False) -> dict[str, Any] | None:
        """The record of item ``id`` (``None`` when there is none); ``with_vector`` adds its ``vector``."""
        self._check_open()
        with self.locks.read:
            row = self.store.record(int(id))
        if row is None:
            return None
        rec = record_dict(row)
        if with_vector:
            rec["vector"] = self.replica.to_array([row[7]])[0].copy()
        return rec

    def list(self, label: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Records by id (optionally of one label), ``limit`` from ``offset``."""
        self._check_open()
        with self.locks.read:
            rows = self.store.records(None if label is None else normal_labels([label]), limit, offset)
        return [record_dict(r) for r in rows]

    def label_counts(self) -> dict[str, int]:
        """Items per label."""
        self._check_open()
        with self.locks.read:
            return self.store.label_counts()

    def has_hash(self, content_hash: str) -> bool:
        return bool(self.hashes_present([content_hash]))

    def hashes_present(self, hashes: Iterable[str]) -> set[str]:
        """Which of ``hashes`` some item has as its content hash."""
        self._check_open()
        with self.locks.read:
            return self.store.hashes_present(sorted({h for h in hashes if h}))

    def __len__(self) -> int:
        self._check_open()
        with self.locks.read:
            self.replica.maybe_refresh()
            return self.replica.current.live

    def info(self) -> dict[str, Any]:
        """Counts, configuration, version and sizes of the gallery."""
        self._check_open()
        with self.locks.read:
            self.replica.refresh()
            state = self.replica.current
            meta = self.store.meta()
            info = {
                "path": str(self.path),
                "count": self.store.count(),
                "labels": self.store.count("DISTINCT label"),
                "dim": self.dim,
                "metric": self.metric,
                "normalize": self.normalize,
                "index_method": self.index_method,
                "index": describe(state.index),
                "hamming_radius": self.hamming_radius if self._spec.binary else None,
                "format_version": int(meta["format_version"]),
                "seq": int(meta["seq"]),
                "loaded_seq": state.seq,
                "snapshot_seq": int(meta["snapshot_seq"]),
                "snapshot_file": meta["snapshot_file"] or None,
                "index_gen": int(meta["index_gen"]),
                "index_vectors": int(state.index.ntotal),
                "removed_pending": len(state.dead),
                # whether this user can change it (not how this handle opened it: `gallery info` reads read-only)
                "writable": os.access(self.path, os.W_OK) and os.access(self.path / DB_NAME, os.W_OK),
                "created_at": iso_time(meta["created_at"]),
                "tuning": dict(self.tuning),
                # framing rule and score_thres: auto of this gallery (shitu.serving.gallery.settings, issue #28)
                "recognition": json.loads(meta.get("recognition") or "{}"),
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
