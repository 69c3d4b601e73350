"""Gallery maintenance after writes: IVF (re)training, compaction of removed vectors, background rebuilds.

The commit of a write is durable before any of this runs: a failure here is logged, never reported as a failed
write (the next write or open tries again). Rebuilds of big indexes (``background_rebuild_min`` vectors) run in a
thread while searches go on with the current index; changes committed meanwhile are replayed onto the new index
before it replaces the current one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from shitu.serving.gallery.errors import Cancelled, GalleryError
from shitu.serving.gallery.index import IndexState
from shitu.serving.gallery.replication import Replica

__all__ = ["Maintenance"]

log = logging.getLogger("shitu.serving.gallery.local")


class Maintenance:
    """Keeping one writer's index in shape: training, compaction, snapshots when due, WAL truncation."""

    def __init__(self, folder: Path, replica: Replica, closed: Callable[[], bool]) -> None:
        self.folder = folder
        self.replica = replica
        self.closed = closed
        self.no_train_below = 0  # training failed at half this size: not tried again below it
        self.reset()

    def reset(self) -> None:
        """A fresh background slot (at creation, and in a forked child)."""
        self.bg: threading.Thread | None = None
        self.cancel = threading.Event()
        self.error: BaseException | None = None

    @property
    def tuning(self) -> dict:
        return self.replica.spec.tuning

    def after_write(self) -> None:
        """After a commit (writer): (re)train IVF, compact dead vectors, write a snapshot when due. A failure is
        logged (the commit is durable already; the next write or open tries again)."""
        if self.closed():
            return
        try:
            self._maintain()
        except Exception as e:  # noqa: BLE001
            log.warning("%s: gallery maintenance failed (the change itself is committed): %s", self.folder, e)

    def _maintain(self) -> None:
        replica, locks = self.replica, self.replica.locks
        with locks.write:
            replica.store.shrink_wal()
            with locks.read:
                state = replica.current
                live = state.live
                rebuild = live >= self.no_train_below and replica.spec.wants_rebuild(state.index, live)
                compact = (
                    not rebuild
                    and state.dead_ratio > float(self.tuning["compact_ratio"])
                    and len(state.dead) >= int(self.tuning["compact_min"])
                )
                if compact and state.removable:
                    state.compact_inplace()
                    compact = False
                if (rebuild or compact) and live >= int(self.tuning["background_rebuild_min"]):
                    self._start_background()  # big: searches go on with the current index meanwhile
                    rebuild = compact = False
                if rebuild or compact:
                    new = replica.rebuild()
                    replica.apply_log(new)
                    self._install(new)
            if rebuild or compact:
                replica.save(bump=True)
                return
            every = self.tuning.get("snapshot_every")
            every = int(every) if every else max(1000, live // 10)
            if state.seq - replica.snapshot_seq >= every:
                replica.save(bump=False)

    def _install(self, new: IndexState) -> None:
        """Make a rebuilt state current (caller holds the read lock)."""
        self.replica.state = new
        if self.replica.spec.wants_rebuild(new.index, new.live):
            self.no_train_below = 2 * new.live  # training failed at this size: try again at twice the size

    def rebuild_detached(self, cancel: threading.Event | None = None) -> bool:
        """Rebuild the index from the database without blocking searches, then install it and write a snapshot.

        The build reads through its own connection; changes committed meanwhile (here or elsewhere) are replayed
        onto the new index before it replaces the current one. False when it was cancelled or superseded.
        """
        replica, locks = self.replica, self.replica.locks
        reader = replica.store.detached_reader()
        try:
            new = replica.rebuild(reader, cancel)
        finally:
            reader.close()
        if cancel is not None and cancel.is_set():
            return False
        with locks.write:
            if self.closed():
                return False
            with locks.read:
                if replica.state is None or replica.state.gen != new.gen:
                    return False  # another process rebuilt meanwhile; its snapshot is loaded instead
                replica.apply_log(new)
                self._install(new)
            replica.save(bump=True)
        return True

    def compact(self) -> None:
        """Drop removed vectors now (``remove_ids``, or a rebuild for HNSW), retrain IVF if its size changed a lot,
        and write a snapshot."""
        self.wait()
        replica, locks = self.replica, self.replica.locks
        for _attempt in range(3):
            with locks.write:
                with locks.read:
                    replica.refresh()
                    state = replica.current
                    rebuild = replica.spec.wants_retrain_on_compact(state.index, state.live)
                    if not rebuild and not state.compact_inplace():
                        rebuild = True
                if not rebuild:
                    replica.save(bump=False, force=True)
                    break
            if self.rebuild_detached():
                break

    def checkpoint(self) -> None:
        """Write a snapshot now if the log has entries it does not hold (after a background rebuild)."""
        self.wait()
        with self.replica.locks.write:
            with self.replica.locks.read:
                self.replica.refresh()
            self.replica.save(bump=False)

    def _start_background(self) -> None:
        if self.bg is not None and self.bg.is_alive():
            return
        self.cancel.clear()
        self.bg = threading.Thread(target=self._background, name="gallery-rebuild", daemon=True)
        self.bg.start()

    def _background(self) -> None:
        try:
            self.rebuild_detached(self.cancel)
        except Cancelled:
            return
        except BaseException as e:  # noqa: BLE001 - reported by wait()
            self.error = e
            log.warning("%s: background index rebuild failed: %s", self.folder, e)

    def wait(self) -> None:
        """Wait for a background rebuild (big IVF retraining or HNSW compaction) to finish; raise its error."""
        bg = self.bg
        if bg is not None and bg is not threading.current_thread():
            bg.join()
            self.bg = None
        if self.error is not None:
            err, self.error = self.error, None
            raise GalleryError(f"{self.folder}: background index rebuild failed: {err}") from err
