"""Gallery replication: several processes (gunicorn workers, CLIs) sharing one gallery folder.

Each process holds its own copy of the index. Searches check the change log's seq at most every
``refresh_interval`` seconds (0.2 by default, one indexed SQLite read) and apply only the new log entries, so
changes committed elsewhere are visible within a second without re-reading the index. A process that rebuilds the
index structurally (IVF (re)training, HNSW compaction) bumps the index generation and writes a snapshot; the others
load that snapshot instead of rebuilding themselves. A gallery object used first in a forked child (gunicorn
``--preload``) opens new SQLite connections there.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import numpy as np

from shitu.serving.gallery.index import IndexState
from shitu.serving.gallery.snapshot import SnapshotMixin
from shitu.serving.gallery.storage import GalleryError, chunks, connect, read_txn

__all__ = ["ReplicationMixin"]


class ReplicationMixin(SnapshotMixin):
    """Catching up with the change log committed by other processes, and reopening connections after a fork."""

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
            self._record_cache().check_seq(seq)  # a write the change marker missed is seen here at the latest
            if not self._changes.attached:
                self._changes.attach()  # a writer may have created it since
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

    def _apply_log(self, state: IndexState, conn: sqlite3.Connection) -> None:
        """Apply the log entries after ``state.seq`` to ``state`` (incremental)."""
        with read_txn(conn):
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
            for part in chunks(touched):
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

    # -- fork ------------------------------------------------------------------------------------------------------

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
            self._conn = connect(self.db_path, self.readonly)
            self._wconn = None if self.readonly else connect(self.db_path, False)
            self._last_check = 0.0
            self._pid = os.getpid()


_FORK_LOCK = threading.Lock()


def _reset_fork_lock() -> None:
    global _FORK_LOCK
    _FORK_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_fork_lock)
