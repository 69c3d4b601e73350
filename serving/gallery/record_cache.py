"""The records of recently found items, kept in memory so a search resolves its hits without a SQLite join.

A search resolves every hit (a slot of the faiss index) to its record ``(slot, id, label, source, metadata)``.
Doing that with one ``SELECT ... WHERE slot IN (...)`` per search cost as much as the faiss search itself on small
and approximate indexes. The cache holds the records it has read, valid for one value of the gallery's change
counter ``seq``: every write (add, remove, relabel, revector -- in this process or another) bumps ``seq``, and each
lookup reads it first (one primary-key read), dropping everything cached when it moved. So a search still never
returns an item removed or relabelled anywhere, exactly as when every hit was read from the database.

Records read while another process commits may already be newer than the ``seq`` read just before; they are
dropped at the next lookup (``seq`` moved), so nothing older than the database is ever served.
"""
from __future__ import annotations

import sqlite3
from typing import Sequence

from shitu.serving.gallery.storage import chunks

__all__ = ["RecordCache", "DEFAULT_CAPACITY"]

#: Records kept at most per gallery object (~200 bytes each); when a lookup would exceed it the cache restarts.
DEFAULT_CAPACITY = 65536


class RecordCache:
    """Slot -> item record, valid for one ``seq`` of the gallery database. Not thread-safe: callers hold the
    gallery's read lock."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = int(capacity)
        self.seq = -1
        self.rows: dict[int, tuple] = {}

    def lookup(self, conn: sqlite3.Connection, slots: Sequence[int]) -> dict[int, tuple]:
        """The records of ``slots`` that exist now (a mapping by slot; a slot with no item is absent)."""
        seq = int(conn.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])
        rows = self.rows
        if seq != self.seq:
            rows.clear()
            self.seq = seq
        missing = [s for s in slots if s not in rows]
        if not missing:
            return rows
        if len(rows) + len(missing) > self.capacity:
            rows.clear()
        for part in chunks(missing):
            sql = (
                "SELECT slot, id, label, source, metadata FROM items "
                f"WHERE slot IN ({','.join('?' * len(part))})"
            )
            for row in conn.execute(sql, part).fetchall():
                rows[row[0]] = row
        return rows

    def clear(self) -> None:
        self.rows.clear()
        self.seq = -1
