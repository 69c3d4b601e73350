"""Gallery snapshots: the faiss index on disk, loaded verified and written atomically.

``index-<gen>-<seq>-<token>.faiss`` holds the index of generation ``gen`` with the change log applied up to
``seq``. It is written to a temporary file, fsynced, renamed to its unique name and the folder fsynced; only then
does a transaction point ``meta`` at it (with its size and sha256). Opening loads the snapshot (verifying the
checksum) and reconciles it with ``items`` (adding vectors written after it, tombstoning removed ones), so a
process killed at any point leaves a gallery that opens at its last committed state. Snapshot files are never
changed once named, only deleted once a newer one is recorded.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence

import faiss
import numpy as np

from shitu.serving.gallery.core import GalleryCore
from shitu.serving.gallery.index import IndexState
from shitu.serving.gallery.storage import (
    LOG_KEEP_SECONDS,
    GalleryError,
    chunks,
    fsync_dir,
    pid_alive,
    read_meta,
    read_txn,
    sha256_stream,
)

__all__ = ["Cancelled", "SNAP_RE", "SnapshotMixin", "TMP_RE"]

#: Snapshot files: ``index-<gen>-<seq>-<token>.faiss`` (index generation, log seq it holds, unique token).
SNAP_RE = re.compile(r"^index-(\d+)-(\d+)-([0-9a-f]+)\.faiss$")
#: Temporary files of a writer (snapshot or new database), with the writer's pid.
TMP_RE = re.compile(r"^\.(?:index-.+|gallery\.db\.[0-9a-f]+)\.(\d+)\.tmp(?:-wal|-shm|-journal)?$")


class Cancelled(Exception):
    """A background rebuild was cancelled (the gallery is closing)."""


class SnapshotMixin(GalleryCore):
    """Loading the index (snapshot + reconciliation, or a rebuild from the database) and writing snapshots."""

    def _load_state(self) -> IndexState:
        """Snapshot (verified) + reconciliation with ``items``; called with ``_lock`` held."""
        conn = self._conn
        for _attempt in range(10):
            meta = read_meta(conn)
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
                    digest = sha256_stream(f) if actual_size == size else ""
            except FileNotFoundError:
                if read_meta(conn).get("snapshot_file") != snap:
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
                if not p.exists() and read_meta(conn).get("snapshot_file") != snap:
                    continue
                raise GalleryError(f"{p}: faiss cannot read the snapshot: {str(e).splitlines()[0]}") from None
            if index.d != self._spec.dim or (not self._spec.binary and index.metric_type != self._spec.faiss_metric):
                raise GalleryError(f"{p}: snapshot does not match the gallery's dimension/metric")
            state = IndexState(self._spec, index, int(meta["snapshot_seq"]), gen)
            self._snapshot_seq = state.seq
            self._reconcile(state, conn)
            return state
        raise GalleryError(f"{self.path}: the snapshot kept changing while opening; try again")

    def _reconcile(self, state: IndexState, conn: sqlite3.Connection) -> None:
        """Bring a freshly loaded ``state`` to the database's current state (full comparison of slots)."""
        with read_txn(conn):
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
        for part in chunks(list(slots)):
            q = f"SELECT slot, vector FROM vectors WHERE slot IN ({','.join('?' * len(part))})"
            for s, b in conn.execute(q, list(part)):
                out_s.append(s)
                blobs.append(b)
        return np.array(out_s, np.int64), self._blobs_to_array(blobs)

    def _rebuild_state(self, conn: sqlite3.Connection, cancel: threading.Event | None = None) -> IndexState:
        """A new state built from every vector in the database (IVF trained on them)."""
        spec = self._spec
        with read_txn(conn):
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
                    raise Cancelled()
            if i + 1 != n:  # pragma: no cover - one read transaction: cannot happen
                raise GalleryError(f"{self.db_path}: vector count changed while reading")
        if not spec.binary and sys.byteorder != "little":  # pragma: no cover - stored little-endian
            vecs = vecs.view("<f4").astype(np.float32)
        index = spec.build(slots, vecs)
        return IndexState(self._spec, index, int(meta["seq"]), int(meta["index_gen"]))

    # -- writing snapshots ----------------------------------------------------------------------------------------

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
                fsync_dir(self.path)
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
                        meta = read_meta(conn)
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
        cur = SNAP_RE.match(current)
        if not cur:
            return
        key = (int(cur.group(1)), int(cur.group(2)))
        for p in self.path.glob("index-*.faiss"):
            m = SNAP_RE.match(p.name)
            if m and p.name != current and ((int(m.group(1)), int(m.group(2))) < key or p.name == replaced):
                try:
                    p.unlink()
                except OSError:
                    pass

    def _cleanup_files(self) -> None:
        """Remove temp files of dead writers and snapshots older than the current one."""
        now = time.time()
        for p in self.path.iterdir():
            m = TMP_RE.match(p.name)
            if m:
                try:
                    if not pid_alive(int(m.group(1))) or now - p.stat().st_mtime > 3600:
                        p.unlink()
                except OSError:
                    pass
        with self._lock:
            meta = read_meta(self._conn)
        if meta.get("snapshot_file"):
            self._remove_old_snapshots(meta["snapshot_file"])
