"""One process's copy of a gallery's index, kept in step with the database that other processes also write.

Each process (gunicorn worker, CLI) holds its own :class:`Replica`: the faiss index state (:class:`.IndexState`)
and the record cache (:class:`.RecordCache`). Opening loads the snapshot (verified) and reconciles it with
``items`` (adding vectors written after it, tombstoning removed ones), so a process killed at any point leaves a
gallery that opens at its last committed state. Searches check the change log's seq at most every
``refresh_interval`` seconds (0.2 by default, one indexed SQLite read) and apply only the new log entries, so
changes committed elsewhere are visible within a second without re-reading the index. A process that rebuilds the
index structurally (IVF (re)training, HNSW compaction) bumps the index generation and writes a snapshot; the others
load that snapshot instead of rebuilding themselves.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np

from shitu.serving.gallery.errors import GalleryCorrupt, GalleryError
from shitu.serving.gallery.index import IndexConfig, IndexState
from shitu.serving.gallery.record_cache import DEFAULT_CAPACITY, RecordCache
from shitu.serving.gallery.snapshot import Snapshots, Vanished
from shitu.serving.gallery.store import GalleryStore

__all__ = ["FORK_LOCK", "Locks", "Replica"]

#: Taken by the first use of a gallery object in a forked child (it opens new connections); new in every child.
FORK_LOCK = threading.Lock()


def _new_fork_lock() -> None:
    global FORK_LOCK
    FORK_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_fork_lock)


class Locks:
    """The locks of one gallery object: ``write`` (writes, the write connection) is always taken before ``read``
    (the index state, the read connection); ``snap`` serialises snapshot writers. New ones after a fork."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.write = threading.RLock()
        self.read = threading.RLock()
        self.snap = threading.Lock()


class Replica:
    """The index state and record cache of one process, and how they follow the database."""

    #: Seconds between two checks of the change log by searches (changes elsewhere show within ~this).
    refresh_interval = 0.2

    def __init__(self, spec: IndexConfig, store: GalleryStore, snapshots: Snapshots, locks: Locks) -> None:
        self.spec = spec
        self.store = store
        self.snapshots = snapshots
        self.locks = locks
        self.state: IndexState | None = None
        self.snapshot_seq = 0  # the log seq the recorded snapshot holds (as last read)
        self.last_check = 0.0
        self.capacity = DEFAULT_CAPACITY
        self._records: RecordCache | None = None

    @property
    def current(self) -> IndexState:
        assert self.state is not None
        return self.state

    @property
    def records(self) -> RecordCache:
        """The record cache (created at first use, of ``capacity`` records)."""
        if self._records is None:
            self._records = RecordCache(self.capacity)
        return self._records

    @records.setter
    def records(self, cache: RecordCache | None) -> None:
        self._records = cache

    def to_array(self, blobs: list[bytes]) -> np.ndarray:
        """Stored vectors (bytes) as an array ``[n, dim]`` float32 (``[n, dim / 8]`` uint8 when binary)."""
        spec = self.spec
        width = spec.dim // 8 if spec.binary else spec.dim
        if not blobs:
            return np.zeros((0, width), np.uint8 if spec.binary else np.float32)
        raw = b"".join(blobs)
        if len(raw) != len(blobs) * spec.code_size:
            raise GalleryCorrupt(f"{self.store.db}: a stored vector has the wrong size")
        if spec.binary:
            return np.frombuffer(raw, np.uint8).reshape(len(blobs), width)
        return np.frombuffer(raw, "<f4").astype(np.float32, copy=False).reshape(len(blobs), width)

    # -- loading ---------------------------------------------------------------------------------------------------

    def load(self) -> IndexState:
        """Snapshot (verified) + reconciliation with ``items``, or a rebuild when there is no snapshot; called with
        the read lock held."""
        for _attempt in range(10):
            meta = self.store.meta()
            snap = meta.get("snapshot_file", "")
            if not snap:
                return self.rebuild()
            try:
                index = self.snapshots.read(snap, int(meta["snapshot_size"]), meta["snapshot_sha256"])
            except Vanished as e:
                if self.store.meta().get("snapshot_file") != snap:
                    continue  # a newer snapshot replaced it meanwhile
                raise GalleryCorrupt(str(e)) from None
            state = IndexState(self.spec, index, int(meta["snapshot_seq"]), int(meta["index_gen"]))
            self.snapshot_seq = state.seq
            self.reconcile(state)
            return state
        raise GalleryError(f"{self.store.db.parent}: the snapshot kept changing while opening; try again")

    def reconcile(self, state: IndexState) -> None:
        """Bring a freshly loaded ``state`` to the database's current state (full comparison of slots)."""
        with self.store.reading():
            seq, live = self.store.live_slots()
            state.mark_dead(state.slots - live)
            missing = sorted(live - state.slots)
            if missing:
                rows = self.store.vectors_of(missing)
                state.add(np.array([s for s, _ in rows], np.int64), self.to_array([b for _, b in rows]))
            state.seq = seq

    def rebuild(self, store: GalleryStore | None = None, cancel: threading.Event | None = None) -> IndexState:
        """A new state built from every vector in the database (IVF trained on them), read through ``store``."""
        spec = self.spec
        seq, gen, slots, flat = (store or self.store).all_vectors(spec.code_size, cancel)
        vecs = flat if spec.binary else flat.view("<f4").reshape(len(slots), spec.dim)
        if not spec.binary and sys.byteorder != "little":  # pragma: no cover - stored little-endian
            vecs = vecs.astype(np.float32)
        return IndexState(spec, spec.build(slots, vecs), seq, gen)

    # -- following other processes -------------------------------------------------------------------------------

    def maybe_refresh(self) -> None:
        if time.monotonic() - self.last_check >= self.refresh_interval:
            self.refresh()

    def refresh(self) -> None:
        """Apply the changes committed since (here or elsewhere); called with the read lock held."""
        self.last_check = time.monotonic()
        rows = self.store.meta_of("seq", "index_gen", "log_floor", "snapshot_seq")
        state = self.current
        seq, gen, floor = rows["seq"], rows["index_gen"], rows["log_floor"]
        self.snapshot_seq = rows["snapshot_seq"]
        self.records.check_seq(seq)  # a write the change marker missed is seen here at the latest
        changes = self.store.changes
        if changes is not None and not changes.attached:
            changes.attach()  # a writer may have created it since
        if seq == state.seq and gen == state.gen:
            return
        if gen != state.gen or state.seq < floor:
            self.state = self.load()
            return
        self.apply_log(state)
        if (
            self.store.readonly
            and state.dead
            and state.removable
            and state.dead_ratio > self.spec.tuning["compact_ratio"]
        ):
            state.compact_inplace()

    def apply_log(self, state: IndexState) -> None:
        """Apply the log entries after ``state.seq`` to ``state`` (incremental)."""
        seq, freed, rows = self.store.log_since(state.seq)
        if seq <= state.seq:
            return
        state.mark_dead(freed)
        rows = sorted((s, b) for s, b in rows if s not in state.slots)
        if rows:
            state.add(np.array([s for s, _ in rows], np.int64), self.to_array([b for _, b in rows]))
        state.seq = seq

    def apply(
        self,
        base_seq: int,
        new_seq: int,
        added: Sequence[int] = (),
        vectors: np.ndarray | None = None,
        freed: Sequence[int] = (),
    ) -> None:
        """After a commit of this process (``base_seq`` -> ``new_seq``): apply it directly when nothing happened
        in between, else catch up from the log. Caller holds the write lock."""
        with self.locks.read:
            state = self.current
            if state.seq == base_seq:
                state.mark_dead(freed)
                if len(added):
                    assert vectors is not None
                    state.add(np.array(added, np.int64), vectors)
                state.seq = new_seq
            else:
                self.refresh()

    # -- writing snapshots -----------------------------------------------------------------------------------------

    def save(self, bump: bool, force: bool = False) -> bool:
        """Write the current state as a new snapshot file and point ``meta`` at it (caller holds the write lock).

        ``bump``: the index structure changed; other processes reload the snapshot instead of rebuilding.
        """
        with self.locks.snap:
            with self.locks.read:
                state = self.current
                if not bump and not force and state.seq <= self.snapshot_seq:
                    return False
                data = state.serialize()
                seq, gen = state.seq, state.gen
            name, sha, size = self.snapshots.write(data, gen + 1 if bump else gen, seq)
            del data
            replaced: str | None = None
            with self.locks.read:
                try:
                    replaced = self.store.record_snapshot(name, seq, gen, sha, size, bump, force)
                finally:
                    if replaced is None:
                        self.snapshots.discard(name)
                if replaced is None:
                    return False
                self.snapshot_seq = seq
                if bump and self.state is state:
                    state.gen = gen + 1
            self.snapshots.remove_old(name, replaced)
            return True
