"""Gallery maintenance after writes: IVF (re)training, compaction of removed vectors, background rebuilds.

The commit of a write is durable before any of this runs: a failure here is logged, never reported as a failed
write (the next write or open tries again). Rebuilds of big indexes (``background_rebuild_min`` vectors) run in a
thread while searches go on with the current index; changes committed meanwhile are replayed onto the new index
before it replaces the current one.
"""

from __future__ import annotations

import logging
import threading

from shitu.serving.gallery.index import IndexState
from shitu.serving.gallery.replication import ReplicationMixin
from shitu.serving.gallery.snapshot import Cancelled
from shitu.serving.gallery.storage import DB_NAME, WAL_SHRINK_BYTES, GalleryError, connect

__all__ = ["MaintenanceMixin"]

log = logging.getLogger("shitu.serving.gallery.local")


class MaintenanceMixin(ReplicationMixin):
    """Keeping the index in shape: training, compaction, snapshots when due, WAL truncation."""

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

    def _install(self, new: IndexState) -> None:
        """Make a rebuilt state current (caller holds ``_lock``)."""
        self._state = new
        if self._spec.wants_rebuild(new.index, new.live):
            self._no_train_below = 2 * new.live  # training failed at this size: try again at twice the size

    def _rebuild_detached(self, cancel: threading.Event | None = None) -> bool:
        """Rebuild the index from the database without blocking searches, then install it and write a snapshot.

        The build reads through its own connection; changes committed meanwhile (here or elsewhere) are replayed
        onto the new index before it replaces the current one. False when it was cancelled or superseded.
        """
        conn = connect(self.db_path, True)
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
        except Cancelled:
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
