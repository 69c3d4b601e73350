"""Gallery storage: the folder, its SQLite database (the source of truth) and the small helpers around it.

A gallery is a folder::

    gallery.db                 SQLite (WAL): the source of truth
    index-<gen>-<seq>-<tok>.faiss  the faiss snapshot (:mod:`.snapshot`): index generation, change-log seq it
                               holds, unique token
    gallery.changes            8 bytes rewritten after every write (:mod:`.change_marker`): lets searches skip
                               re-reading ``seq`` while nobody wrote

``gallery.db`` holds

- ``items``: one record per gallery image -- ``id`` (stable integer), ``label``, ``source`` (path or key),
  ``metadata`` (JSON), ``content_hash`` (sha256 of the image file), ``added_at``/``updated_at`` and the ``slot``
  of its vector;
- ``vectors``: the vector of each slot (raw float32 little-endian or packed-bit bytes);
- ``log``: an append-only change log, ``seq`` increasing by one per item change (``add``, ``remove``,
  ``relabel``, ``revector``);
- ``meta``: format version, dimension, metric, index method, counters, and the snapshot's file name, seq,
  size and sha256.

Each write is one SQLite transaction (``BEGIN IMMEDIATE`` serialises writers across processes). No pickle
anywhere: records and metadata live in SQLite/JSON, vectors as raw bytes.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from shitu.files import fsync_dir, sha256_stream

__all__ = [
    "CHUNK",
    "DB_NAME",
    "FORMAT_VERSION",
    "GalleryError",
    "LabelError",
    "LOG_KEEP_SECONDS",
    "SCHEMA",
    "WAL_SHRINK_BYTES",
    "chunks",
    "connect",
    "fsync_dir",
    "on_disk",
    "pid_alive",
    "read_meta",
    "read_txn",
    "sha256_stream",
]

#: Version of the on-disk format written by this release; opening a newer one is an error.
FORMAT_VERSION = 1
DB_NAME = "gallery.db"
CHUNK = 900  # bound parameters per SQLite statement

SCHEMA = """
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


def chunks(seq: Sequence[Any], n: int = CHUNK) -> Iterator[Sequence[Any]]:
    """``seq`` in pieces of at most ``n`` (SQLite bounds the parameters of one statement)."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (temp files of dead writers are removed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True


def connect(db: Path, readonly: bool) -> sqlite3.Connection:
    """A connection to ``gallery.db`` in autocommit mode (transactions are explicit), usable from any thread."""
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
def read_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One consistent read snapshot (WAL) for several SELECTs."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def on_disk(vectors: np.ndarray) -> np.ndarray:
    """Vectors as stored in ``gallery.db``: float32 little-endian, or packed-bit bytes."""
    return vectors if vectors.dtype == np.uint8 else vectors.astype("<f4", copy=False)
