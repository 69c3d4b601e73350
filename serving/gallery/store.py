"""The gallery database: ``gallery.db`` (SQLite, the source of truth) and every SQL statement run against it.

A gallery folder holds ``gallery.db``, the faiss snapshot ``index-<gen>-<seq>-<token>.faiss`` (:mod:`.snapshot`)
and ``gallery.changes`` (:mod:`.change_marker`). ``gallery.db`` has the tables ``items`` (one record per image:
stable ``id``, ``label`` in NFC, ``source``, ``metadata`` JSON, ``content_hash``, times, the ``slot`` of its vector),
``vectors`` (raw float32 little-endian or packed-bit bytes per slot), ``log`` (append-only: ``seq`` grows by one per
item change: ``add``, ``remove``, ``relabel``, ``revector``), ``meta`` (format, dimension, metric, index method,
counters, the snapshot's name, seq, size and sha256, the model identity) and ``thumbnails`` (created on first use,
deleted with their item by a trigger).

:class:`GalleryStore` is one process's connections and change marker; the module functions open a connection for
one job (backups, exports, metrics, thumbnails). No other module imports ``sqlite3``. Each write is one transaction
(``BEGIN IMMEDIATE`` serialises writers of all processes). No pickle: records are SQLite/JSON, vectors raw bytes.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from shitu.files import fsync_dir
from shitu.serving.gallery.change_marker import ChangeMarker
from shitu.serving.gallery.errors import Cancelled, GalleryCorrupt, GalleryError, GalleryUnavailable, ItemNotFound

__all__ = ["DB_NAME", "FORMAT_VERSION", "GalleryStore", "item_count", "meta_json"]

FORMAT_VERSION = 1  # of the on-disk format this release writes; opening a newer one is an error
DB_NAME = "gallery.db"
CHUNK = 900  # bound parameters per SQLite statement
WAL_SHRINK_BYTES = 64 << 20  # a WAL file bigger than this is checkpointed and truncated after a write
LOG_KEEP_SECONDS = 3600.0  # log entries older than this (and in a snapshot) are deleted at snapshot time

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE items (id INTEGER PRIMARY KEY, label TEXT NOT NULL, source TEXT, metadata TEXT, content_hash TEXT,
    added_at REAL NOT NULL, updated_at REAL NOT NULL, slot INTEGER NOT NULL UNIQUE);
CREATE TABLE vectors (slot INTEGER PRIMARY KEY, vector BLOB NOT NULL);
CREATE INDEX items_label ON items(label);
CREATE INDEX items_hash ON items(content_hash);
CREATE TABLE log (seq INTEGER PRIMARY KEY, op TEXT NOT NULL, item_id INTEGER NOT NULL, slot INTEGER,
    old_slot INTEGER, ts REAL NOT NULL);
"""
#: The thumbnails of items added with their image, deleted with their item (created at the first thumbnail).
_THUMBNAILS = (
    "CREATE TABLE IF NOT EXISTS thumbnails (id INTEGER PRIMARY KEY, jpeg BLOB NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS thumbnails_follow_items AFTER DELETE ON items "
    "BEGIN DELETE FROM thumbnails WHERE id = OLD.id; END",
)
#: Columns of a record as the record cache holds it.
CACHE_COLUMNS = "slot, id, label, source, metadata"
#: Columns of a record as ``get`` / ``list`` answer it.
RECORD_COLUMNS = "id, label, source, metadata, content_hash, added_at, updated_at"
_SNAPSHOT_KEYS = ("snapshot_file", "snapshot_seq", "snapshot_sha256", "snapshot_size")


def chunks(seq: Sequence[Any], n: int = CHUNK) -> Iterator[Sequence[Any]]:
    """``seq`` in pieces of at most ``n`` (SQLite bounds the parameters of one statement)."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _marks(part: Sequence[Any]) -> str:
    return ",".join("?" * len(part))


def _each(conn: sqlite3.Connection, sql: str, keys: Sequence[Any]) -> Iterator[Any]:
    """The rows of ``sql`` (with ``IN ({})``) for all ``keys``, in statements of at most :data:`CHUNK` keys."""
    for part in chunks(list(keys)):
        yield from conn.execute(sql.format(_marks(part)), part)


def connect(db: Path, readonly: bool, timeout: float = 30) -> sqlite3.Connection:
    """A connection to ``gallery.db`` in autocommit mode (transactions are explicit), usable from any thread."""
    target = db.resolve().as_uri() + "?mode=ro" if readonly else str(db)
    conn = sqlite3.connect(target, uri=readonly, isolation_level=None, check_same_thread=False, timeout=timeout)
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
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


@contextmanager
def _one_shot(db: Path, readonly: bool, timeout: float = 30) -> Iterator[sqlite3.Connection]:
    """A connection for one job, closed after it; SQLite errors become :class:`GalleryError` naming ``db``."""
    try:
        conn = connect(db, readonly, timeout)
    except sqlite3.Error as e:
        raise GalleryError(f"{db}: cannot open the gallery database: {e}") from None
    try:
        yield conn
    except sqlite3.Error as e:
        raise _db_error(db, "cannot read or write the gallery database", e) from None
    finally:
        conn.close()


def _db_error(db: Path, what: str, e: sqlite3.Error) -> GalleryError:
    """The gallery error for a SQLite one: a full or read-only disk is :class:`GalleryUnavailable`."""
    text = str(e)
    if isinstance(e, sqlite3.OperationalError) and ("full" in text or "readonly" in text or "locked" in text):
        return GalleryUnavailable(f"{db}: {what}: {text}")
    return GalleryError(f"{db}: {what}: {text}")


def _meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def _set(conn: sqlite3.Connection, values: dict[str, Any]) -> None:
    conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(str(v), k) for k, v in values.items()])


def on_disk(vectors: np.ndarray) -> np.ndarray:
    """Vectors as stored in ``gallery.db``: float32 little-endian, or packed-bit bytes."""
    return vectors if vectors.dtype == np.uint8 else vectors.astype("<f4", copy=False)


class GalleryStore:
    """One process's connections to a ``gallery.db``: ``reader`` (guarded by the gallery's read lock) and the
    write connection (guarded by its write lock), and the folder's change marker (bumped after every commit)."""

    def __init__(self, db: Path, readonly: bool, reader: sqlite3.Connection, marker: bool = True) -> None:
        self.db = db
        self.readonly = readonly
        self.reader = reader
        try:
            self._writer = None if readonly else connect(db, False)
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"{db}: cannot open the gallery database for writing: {e}") from None
        self.changes = ChangeMarker(db.parent, not readonly) if marker else None
        self._inherited: list[sqlite3.Connection] = []

    # -- creating and opening ----------------------------------------------------------------------------------------

    @staticmethod
    def create(folder: Path, meta: dict[str, Any]) -> bool:
        """Write a new ``gallery.db`` with ``meta`` into ``folder`` atomically; False when one exists already."""
        db = folder / DB_NAME
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{DB_NAME}.{secrets.token_hex(4)}.{os.getpid()}.tmp"
        try:
            conn = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                # 16 KiB pages hold 7 512-d float vectors (4 KiB pages: one 2 KiB vector each, half empty).
                conn.execute("PRAGMA page_size=16384")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(f"BEGIN; {SCHEMA}")  # a private file: linked into place only once complete
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
                conn.execute("COMMIT")
            finally:
                conn.close()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            try:
                os.link(tmp, db)  # never replaces a gallery created meanwhile
            except FileExistsError:
                return False
            fsync_dir(folder)
        except sqlite3.Error as e:
            raise _db_error(db, "cannot create the gallery database", e) from None
        finally:
            for p in (tmp, Path(str(tmp) + "-wal"), Path(str(tmp) + "-shm")):
                p.unlink(missing_ok=True)
        return True

    @classmethod
    def open(cls, db: Path, readonly: bool, verify: bool = True) -> tuple[GalleryStore, dict[str, str]]:
        """Connect to ``db`` (checked with ``PRAGMA quick_check`` when ``verify``); the store and its meta."""
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(db, readonly)
            rows = conn.execute("PRAGMA quick_check(5)").fetchall() if verify else [("ok",)]
            if [r[0] for r in rows] != ["ok"]:
                raise GalleryCorrupt(f"{db}: corrupt gallery database: " + "; ".join(str(r[0]) for r in rows))
            meta = _meta(conn)
            return cls(db, readonly, conn), meta
        except BaseException as e:
            if conn is not None:
                conn.close()
            if isinstance(e, sqlite3.DatabaseError):
                raise GalleryCorrupt(f"{db}: corrupt or unreadable gallery database: {e}") from None
            raise

    def detached_reader(self) -> GalleryStore:
        """A read-only store of its own (for a background rebuild that must not hold the read lock)."""
        return GalleryStore(self.db, True, connect(self.db, True), marker=False)

    def after_fork(self) -> None:
        """New connections in a forked child (the inherited ones are kept, never used nor closed, as SQLite
        requires)."""
        self._inherited.extend(c for c in (self.reader, self._writer) if c is not None)
        self.reader = connect(self.db, self.readonly)
        self._writer = None if self.readonly else connect(self.db, False)

    def close(self) -> None:
        for conn in (self._writer, self.reader):
            with suppress(sqlite3.Error, AttributeError):
                conn.close()  # type: ignore[union-attr]
        self._writer = None
        if self.changes is not None:
            self.changes.close()

    # -- reading -------------------------------------------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[None]:
        """One consistent read snapshot for several calls below; SQLite errors become :class:`GalleryError`."""
        try:
            with _read_txn(self.reader):
                yield
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"{self.db}: cannot read the gallery database: {e}") from None

    def meta(self) -> dict[str, str]:
        return _meta(self.reader)

    def meta_of(self, *keys: str) -> dict[str, int]:
        """Integer ``meta`` values (counters) by key."""
        q = f"SELECT key, value FROM meta WHERE key IN ({_marks(keys)})"
        try:
            return {k: int(v) for k, v in self.reader.execute(q, keys).fetchall()}
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"{self.db}: cannot read the gallery database: {e}") from None

    def seq(self) -> int:
        return int(self.reader.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])

    def live_slots(self) -> tuple[int, set[int]]:
        """``(seq, slots of every item)`` (inside :meth:`reading`: of one state)."""
        return self.seq(), {r[0] for r in self.reader.execute("SELECT slot FROM items")}

    def vectors_of(self, slots: Sequence[int]) -> list[tuple[int, bytes]]:
        return list(_each(self.reader, "SELECT slot, vector FROM vectors WHERE slot IN ({})", slots))

    def all_vectors(self, code_size: int, cancel: threading.Event | None = None) -> tuple[int, int, Any, Any]:
        """``(seq, index_gen, slots, rows)`` of every stored vector in slot order (rows: uint8 ``[n, code_size]``)."""
        conn = self.reader
        with self.reading():
            meta = self.meta_of("seq", "index_gen")
            n = conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
            slots = np.empty(n, np.int64)
            flat = np.empty((n, code_size), np.uint8)
            i = -1
            for i, (s, b) in enumerate(conn.execute("SELECT slot, vector FROM vectors ORDER BY slot")):
                if len(b) != code_size:
                    raise GalleryCorrupt(f"{self.db}: the stored vector of slot {s} has the wrong size")
                slots[i] = s
                flat[i] = np.frombuffer(b, np.uint8)
                if cancel is not None and i % 65536 == 65535 and cancel.is_set():
                    raise Cancelled()
            if i + 1 != n:  # pragma: no cover - one read transaction: cannot happen
                raise GalleryError(f"{self.db}: vector count changed while reading")
        return meta["seq"], meta["index_gen"], slots, flat

    def log_since(self, seq: int) -> tuple[int, list[int], list[tuple[int, bytes]]]:
        """Changes after ``seq``: ``(current seq, slots they freed, (slot, vector) of the items they touched
        whose slot is newer than ``seq``)``, in one read snapshot."""
        conn = self.reader
        with self.reading():
            now = self.seq()
            if now <= seq:
                return now, [], []
            entries = conn.execute(
                "SELECT item_id, slot, old_slot FROM log WHERE seq > ? AND seq <= ? ORDER BY seq", (seq, now)
            ).fetchall()
            freed = [old for _item, _slot, old in entries if old is not None]
            touched = sorted({item for item, slot, _old in entries if slot is not None})
            q = "SELECT i.slot, v.vector FROM items i JOIN vectors v ON v.slot = i.slot WHERE i.id IN ({})"
            rows = [(s, b) for s, b in _each(conn, q, touched) if s > seq]
        return now, freed, rows

    def count_with_labels(self, labels: Sequence[str]) -> int:
        return sum(r[0] for r in _each(self.reader, "SELECT COUNT(*) FROM items WHERE label IN ({})", labels))

    def vectors_with_labels(self, labels: Sequence[str]) -> list[tuple[int, bytes]]:
        q = "SELECT i.slot, v.vector FROM items i JOIN vectors v ON v.slot = i.slot WHERE i.label IN ({})"
        with self.reading():
            return list(_each(self.reader, q, labels))

    def slots_with_labels(self, labels: Sequence[str]) -> list[int]:
        return [r[0] for r in _each(self.reader, "SELECT slot FROM items WHERE label IN ({})", labels)]

    def cache_rows(self, column: str, keys: Sequence[int]) -> list[tuple]:
        """Records (:data:`CACHE_COLUMNS`) of the items whose ``column`` (``slot`` or ``id``) is in ``keys``."""
        assert column in ("slot", "id")
        return list(_each(self.reader, f"SELECT {CACHE_COLUMNS} FROM items WHERE {column} IN ({{}})", keys))

    def all_cache_rows(self) -> Iterator[tuple]:
        return self.reader.execute(f"SELECT {CACHE_COLUMNS} FROM items")

    def log_changes(self, after: int, upto: int) -> list[tuple[int, int | None]]:
        """``(item id, freed slot)`` of each log entry in ``(after, upto]``."""
        return self.reader.execute(
            "SELECT item_id, old_slot FROM log WHERE seq > ? AND seq <= ? ORDER BY seq", (after, upto)
        ).fetchall()

    def count(self, what: str = "*") -> int:
        """Items (``what="DISTINCT label"``: labels)."""
        return int(self.reader.execute(f"SELECT COUNT({what}) FROM items").fetchone()[0])

    def record(self, id: int) -> tuple | None:
        """The record (:data:`RECORD_COLUMNS`) of item ``id`` and its vector, or ``None``."""
        return self.reader.execute(
            f"SELECT {RECORD_COLUMNS}, (SELECT vector FROM vectors v WHERE v.slot = items.slot) FROM items WHERE id = ?",
            (int(id),),
        ).fetchone()

    def records(self, labels: Sequence[str] | None, limit: int, offset: int) -> list[tuple]:
        if labels is None:
            q, args = f"SELECT {RECORD_COLUMNS} FROM items ORDER BY id LIMIT ? OFFSET ?", tuple[str, ...]()
        else:
            q = f"SELECT {RECORD_COLUMNS} FROM items WHERE label IN ({_marks(labels)}) ORDER BY id LIMIT ? OFFSET ?"
            args = tuple(labels)
        return self.reader.execute(q, (*args, int(limit), int(offset))).fetchall()

    def label_counts(self) -> dict[str, int]:
        return dict(self.reader.execute("SELECT label, COUNT(*) FROM items GROUP BY label ORDER BY label"))

    def hashes_present(self, hashes: Sequence[str]) -> set[str]:
        return {r[0] for r in _each(self.reader, "SELECT content_hash FROM items WHERE content_hash IN ({})", hashes)}

    # -- writing -------------------------------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[tuple[sqlite3.Connection, dict[str, int]]]:
        """``BEGIN IMMEDIATE`` on the write connection; yields it and the counters; bumps the change marker after
        the commit. Callers hold the gallery's write lock."""
        conn = self._writer
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as e:
            raise _db_error(self.db, "cannot start a write", e) from None
        try:
            counters = {
                k: int(v)
                for k, v in conn.execute("SELECT key, value FROM meta WHERE key IN ('seq', 'next_id')").fetchall()
            }
            yield conn, counters
            conn.execute("COMMIT")
            if self.changes is not None:
                self.changes.bump()
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.DatabaseError):
                raise _db_error(self.db, "write failed", exc) from None
            raise

    def insert(
        self,
        labels: Sequence[str],
        sources: Sequence[str | None],
        metadata: Sequence[str | None],
        hashes: Sequence[str | None],
        vectors: np.ndarray,
        ids: Sequence[int] | None = None,
    ) -> tuple[int, list[int], list[int]]:
        """Add items in one transaction: ``(seq before, their ids, their slots)``. ``ids``: keep these (strictly
        increasing, from the id counter on; a gallery that never held anything may start below it)."""
        n = len(labels)
        now = time.time()
        stored = on_disk(vectors)
        with self._write() as (conn, c):
            base_seq, first_id = c["seq"], c["next_id"]
            if ids is None:
                ids = list(range(first_id, first_id + n))
            else:
                ids = [int(i) for i in ids]
                low = first_id if base_seq else 0
                if len(ids) != n or any(b <= a for a, b in zip(ids, ids[1:])) or (n and ids[0] < low):
                    raise GalleryError(f"ids to keep must increase strictly from the gallery's next id {low}")
            next_id = ids[-1] + 1 if n else first_id
            slots = list(range(base_seq + 1, base_seq + n + 1))
            conn.executemany(
                "INSERT INTO items (id, label, source, metadata, content_hash, added_at, updated_at, slot)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ((ids[i], labels[i], sources[i], metadata[i], hashes[i], now, now, slots[i]) for i in range(n)),
            )
            conn.executemany(
                "INSERT INTO vectors (slot, vector) VALUES (?, ?)", ((slots[i], stored[i].tobytes()) for i in range(n))
            )
            conn.executemany(
                "INSERT INTO log (seq, op, item_id, slot, old_slot, ts) VALUES (?, 'add', ?, ?, NULL, ?)",
                ((slots[i], ids[i], slots[i], now) for i in range(n)),
            )
            _set(conn, {"seq": base_seq + n, "next_id": next_id})
        return base_seq, ids, slots

    def delete(self, ids: Sequence[int], labels: Sequence[str]) -> tuple[int, list[int]]:
        """Remove items by id and/or label in one transaction: ``(seq before, their freed slots)``."""
        now = time.time()
        with self._write() as (conn, c):
            found = dict(_each(conn, "SELECT id, slot FROM items WHERE id IN ({})", ids))
            found.update(_each(conn, "SELECT id, slot FROM items WHERE label IN ({})", labels))
            base_seq = c["seq"]
            if not found:
                return base_seq, []
            victims = sorted(found.items())
            for part in chunks(victims):
                conn.execute(f"DELETE FROM items WHERE id IN ({_marks(part)})", [i for i, _ in part])
                conn.execute(f"DELETE FROM vectors WHERE slot IN ({_marks(part)})", [s for _, s in part])
            conn.executemany(
                "INSERT INTO log (seq, op, item_id, slot, old_slot, ts) VALUES (?, 'remove', ?, NULL, ?, ?)",
                ((base_seq + 1 + j, item, slot, now) for j, (item, slot) in enumerate(victims)),
            )
            _set(conn, {"seq": base_seq + len(victims)})
        return base_seq, [slot for _item, slot in victims]

    def update(self, id: int, fields: dict[str, Any], vector: np.ndarray | None) -> tuple[int, int, int]:
        """Change an item's ``fields`` (label, source, metadata, content_hash) and/or vector in one transaction:
        ``(seq before, its old slot, seq after)``; its slot after is the seq after when the vector changed."""
        now = time.time()
        with self._write() as (conn, c):
            row = conn.execute("SELECT slot FROM items WHERE id = ?", (id,)).fetchone()
            if row is None:
                raise ItemNotFound(f"{self.db.parent}: no item with id {id}")
            old_slot = row[0]
            base_seq = seq = c["seq"]
            sets = ["updated_at = ?", *(f"{col} = ?" for col in fields)]
            args: list[Any] = [now, *fields.values()]
            if fields:
                seq += 1
                conn.execute(
                    "INSERT INTO log (seq, op, item_id, slot, old_slot, ts) VALUES (?, 'relabel', ?, NULL, NULL, ?)",
                    (seq, id, now),
                )
            if vector is not None:
                seq += 1
                sets.append("slot = ?")
                args.append(seq)
                conn.execute("DELETE FROM vectors WHERE slot = ?", (old_slot,))
                conn.execute("INSERT INTO vectors (slot, vector) VALUES (?, ?)", (seq, on_disk(vector)[0].tobytes()))
                conn.execute(
                    "INSERT INTO log (seq, op, item_id, slot, old_slot, ts) VALUES (?, 'revector', ?, ?, ?, ?)",
                    (seq, id, seq, old_slot, now),
                )
            conn.execute(f"UPDATE items SET {', '.join(sets)} WHERE id = ?", (*args, id))
            _set(conn, {"seq": seq})
        return base_seq, old_slot, seq

    def record_snapshot(
        self, name: str, seq: int, gen: int, sha: str, size: int, bump: bool, force: bool
    ) -> str | None:
        """Point ``meta`` at the snapshot file ``name`` (holding log ``seq`` of index generation ``gen``) unless a
        newer one is recorded; trims the log it holds (older than :data:`LOG_KEEP_SECONDS`). Returns the file it
        replaced (``""`` for none), ``None`` when it was not recorded."""
        with self._write() as (conn, _counters):
            meta = _meta(conn)
            cur_gen, cur_seq, replaced = int(meta["index_gen"]), int(meta["snapshot_seq"]), meta["snapshot_file"]
            ok = cur_gen == gen and (bump or not replaced or cur_seq < seq or (force and cur_seq <= seq))
            if ok:
                values: dict[str, Any] = dict(zip(_SNAPSHOT_KEYS, (name, seq, sha, size)))
                values["index_gen"] = gen + 1 if bump else gen
                # Old log entries already in the snapshot go (kept an hour for lagging readers).
                cut = conn.execute(
                    "SELECT MAX(seq) FROM log WHERE seq <= ? AND ts < ?", (seq, time.time() - LOG_KEEP_SECONDS)
                ).fetchone()[0]
                if cut is not None:
                    conn.execute("DELETE FROM log WHERE seq <= ?", (cut,))
                    values["log_floor"] = max(int(meta["log_floor"]), int(cut))
                _set(conn, values)
        return replaced if ok else None

    def shrink_wal(self) -> None:
        """A big write leaves a WAL file as big as itself: checkpoint and truncate it (best effort, never waits
        long for readers of other processes)."""
        try:
            if self.db.with_name(DB_NAME + "-wal").stat().st_size <= WAL_SHRINK_BYTES:
                return
        except OSError:
            return
        conn = self._writer
        assert conn is not None
        conn.execute("PRAGMA busy_timeout=200")
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.execute("PRAGMA busy_timeout=30000")


# -- one-job functions (their own connection) ---------------------------------------------------------------------


def item_count(db: Path) -> int | None:
    """Items in the gallery database ``db`` (read-only, waits at most a second), ``None`` when unreadable
    (the metrics collector: a scrape never fails for one gallery)."""
    try:
        with _one_shot(db, True, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    except GalleryError:
        return None


def meta_json(folder: Path, key: str, update: Callable[[Any], Any] | None = None) -> Any:
    """The JSON value the gallery in ``folder`` records under ``key`` (None: none; the model identity, the
    recognition settings); with ``update``, first replaced by ``update(value)`` in one write transaction."""
    with _one_shot(folder / DB_NAME, update is None) as conn:
        conn.execute("BEGIN IMMEDIATE" if update is not None else "BEGIN")
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        value = json.loads(row[0]) if row and row[0] else None
        if update is not None:
            value = update(value)
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value, sort_keys=True))
            )
        conn.execute("COMMIT")
    return value


def copy_database(src: Path, dst: Path, keep_snapshot: bool = True) -> tuple[dict[str, str], int]:
    """A consistent copy of database ``src`` as the new file ``dst`` (SQLite's online backup, all pages in one
    step), its meta and item count; ``keep_snapshot=False`` clears the copy's snapshot pointer (it rebuilds)."""
    try:
        with _one_shot(src, False, timeout=60) as conn:
            out = sqlite3.connect(str(dst), isolation_level=None)
            try:
                conn.backup(out)
                if not keep_snapshot:
                    _set(out, {**dict.fromkeys(_SNAPSHOT_KEYS, ""), "snapshot_seq": 0, "snapshot_size": 0})
                meta = _meta(out)
                count = out.execute("SELECT COUNT(*) FROM items").fetchone()[0]
                out.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                out.close()
    except sqlite3.Error as e:
        raise _db_error(dst, "cannot copy the gallery database", e) from None
    return meta, int(count)


def read_items(folder: Path, thumbnails: bool = False) -> tuple[dict[str, str], list[tuple], dict[int, bytes]]:
    """``(meta, rows, thumbnails)`` of the gallery in ``folder`` in one read snapshot; rows: id, label, source,
    metadata, content hash, added_at, vector, by id."""
    with _one_shot(folder / DB_NAME, True, timeout=60) as conn, _read_txn(conn):
        meta = _meta(conn)
        rows = conn.execute(
            "SELECT i.id, i.label, i.source, i.metadata, i.content_hash, i.added_at, v.vector "
            "FROM items i JOIN vectors v ON v.slot = i.slot ORDER BY i.id"
        ).fetchall()
        thumbs: dict[int, bytes] = {}
        if thumbnails and _has_thumbnails(conn):
            thumbs = {int(i): bytes(j) for i, j in conn.execute("SELECT id, jpeg FROM thumbnails")}
    return meta, rows, thumbs


def write_thumbnails(db: Path, rows: Sequence[tuple[int, bytes]]) -> None:
    """Store thumbnails ``(item id, jpeg)`` of items that exist, in one transaction."""
    with _one_shot(db, False) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _THUMBNAILS:
                conn.execute(statement)
            conn.executemany(
                "INSERT OR REPLACE INTO thumbnails (id, jpeg) SELECT ?, ? WHERE EXISTS (SELECT 1 FROM items "
                "WHERE items.id = ?)",
                [(i, j, i) for i, j in rows],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _has_thumbnails(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'thumbnails'").fetchone() is not None


def read_thumbnails(db: Path, ids: Sequence[int]) -> dict[int, bytes]:
    """Thumbnails (JPEG bytes) of those ``ids`` that have one."""
    with _one_shot(db, True) as conn:
        if not _has_thumbnails(conn):  # no item of this gallery was ever added with its image
            return {}
        return {int(i): bytes(j) for i, j in _each(conn, "SELECT id, jpeg FROM thumbnails WHERE id IN ({})", ids)}
