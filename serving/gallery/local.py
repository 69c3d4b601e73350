"""The local gallery backend: a labelled embedding index in a folder (SQLite + faiss), shared by processes.

:class:`Gallery` is the public class (``from shitu.serving.gallery import Gallery``); it implements
:class:`~shitu.serving.gallery.backend.GalleryBackend` and more (``compact``, ``checkpoint``, ``repair``,
``refresh``, ``tuning``). It is assembled from parts, one concern each (see :mod:`.core`):

- :mod:`.storage` -- the folder, ``gallery.db`` (the source of truth: items, vectors, change log, meta);
- :mod:`.index` -- which faiss index to build, one process's copy of it, slots and tombstones;
- :mod:`.snapshot` -- the faiss snapshot on disk: crash-safe writes, verified loads;
- :mod:`.replication` -- several processes on one folder (the change log), fork handling;
- :mod:`.maintenance` -- IVF (re)training, compaction, background rebuilds;
- :mod:`.reading` -- search and record queries;
- this module -- creation, opening, repair, the writes (``add``, ``remove``, ``update``) and lifetime.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from shitu.serving.gallery.change_marker import ChangeMarker
from shitu.serving.gallery.index import DEFAULT_TUNING, METRICS, SMALL_BATCH, IndexConfig, IndexState
from shitu.serving.gallery.list_file import DEFAULT_MAX_LABEL_LENGTH, label_problem
from shitu.serving.gallery.maintenance import MaintenanceMixin
from shitu.serving.gallery.reading import ReadingMixin
from shitu.serving.gallery.storage import (
    DB_NAME,
    FORMAT_VERSION,
    SCHEMA,
    GalleryError,
    LabelError,
    chunks,
    connect,
    fsync_dir,
    on_disk,
    read_meta,
)

__all__ = ["DEFAULT_TUNING", "FORMAT_VERSION", "Gallery", "GalleryError", "LabelError", "DB_NAME", "SMALL_BATCH"]


class Gallery(MaintenanceMixin, ReadingMixin):
    """A labelled embedding index in a folder (see the module doc).

    Use :meth:`create`, :meth:`open` or :meth:`open_or_create`; close with :meth:`close` or a ``with`` block.
    One object may be used from several threads; several processes may open the same folder.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, readonly: bool, spec: IndexConfig, max_label_length: int):
        # Private: use create / open.
        self.path = path
        self.readonly = readonly
        self.max_label_length = int(max_label_length)
        self._spec = spec
        self._conn = conn  # read connection (guarded by _lock)
        self._wconn: sqlite3.Connection | None = None if readonly else connect(path / DB_NAME, False)
        self._lock = threading.RLock()  # _state, _conn
        self._wlock = threading.RLock()  # _wconn, writes; always taken before _lock
        self._snap_lock = threading.Lock()
        self._state: IndexState | None = None
        self._snapshot_seq = 0
        self._last_check = 0.0
        self._closed = False
        self._bg: threading.Thread | None = None
        self._bg_cancel = threading.Event()
        self._bg_error: BaseException | None = None
        self._no_train_below = 0
        self._pid = os.getpid()
        self._inherited: list[sqlite3.Connection] = []
        self._changes = ChangeMarker(path, not readonly)  # rewritten after each commit; spares searches a read

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
        metric = METRICS.get(str(dist_type).lower())
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
        spec = IndexConfig(
            dim, metric, index_method.strip(), int(hamming_radius), normalize, {**DEFAULT_TUNING, **tuning}
        )
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
                for stmt in SCHEMA.strip().split(";"):
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
            fsync_dir(path)
        finally:
            for p in (tmp, Path(str(tmp) + "-wal"), Path(str(tmp) + "-shm")):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
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
            raise GalleryError(f"{path}: holds a {g.metric} gallery of dim {g.dim}, not {metric} of dim {dim}")
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
    def _connect_gallery(cls, path: Path, readonly: bool, verify: bool, max_label_length: int) -> Gallery:
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
            conn = connect(db, readonly)
            if verify:
                rows = conn.execute("PRAGMA quick_check(5)").fetchall()
                if [r[0] for r in rows] != ["ok"]:
                    raise GalleryError(f"{db}: corrupt gallery database: " + "; ".join(str(r[0]) for r in rows))
            meta = read_meta(conn)
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
    def _spec_from_meta(db: Path, meta: dict[str, str]) -> IndexConfig:
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
            return IndexConfig(
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
    def repair(cls, path: str | os.PathLike) -> Gallery:
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

    # -- validation ----------------------------------------------------------------------------------------------

    def check_label(self, label: Any) -> str:
        problem = label_problem(label, self.max_label_length)
        if problem:
            raise LabelError(f"invalid label {label!r}: {problem}")
        return label

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
            self._changes.bump()
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.DatabaseError):
                raise GalleryError(f"{self.db_path}: write failed: {exc}") from None
            raise

    def _after_write(self, base_seq: int, apply: Callable[[IndexState], None] | None, new_seq: int) -> None:
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
        stored = on_disk(vecs)
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
                for part in chunks(ids):
                    q = f"SELECT id, slot FROM items WHERE id IN ({','.join('?' * len(part))})"
                    found.update(conn.execute(q, list(part)).fetchall())
                for part in chunks(labels):
                    q = f"SELECT id, slot FROM items WHERE label IN ({','.join('?' * len(part))})"
                    found.update(conn.execute(q, list(part)).fetchall())
                base_seq = c["seq"]
                if not found:
                    return 0
                victims = sorted(found.items())
                for part in chunks(victims):
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
                for col, value in (
                    ("label", label),
                    ("source", source),
                    ("metadata", meta_json),
                    ("content_hash", content_hash),
                ):
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
                    conn.execute("INSERT INTO vectors (slot, vector) VALUES (?, ?)", (seq, on_disk(vec)[0].tobytes()))
                    conn.execute(
                        "INSERT INTO log (seq, op, item_id, slot, old_slot, ts) VALUES (?, 'revector', ?, ?, ?, ?)",
                        (seq, id, seq, old_slot, now),
                    )
                conn.execute(f"UPDATE items SET {', '.join(sets)} WHERE id = ?", (*args, id))
                self._set_counters(conn, seq=seq)
            new_slot = seq

            def apply(st: IndexState) -> None:
                if vec is not None:
                    st.mark_dead([old_slot])
                    st.add(np.array([new_slot], np.int64), vec)

            self._after_write(base_seq, apply, seq)

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
            self._changes.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Gallery({str(self.path)!r}, dim={self.dim}, metric={self.metric!r}, index_method={self.index_method!r})"
        )
