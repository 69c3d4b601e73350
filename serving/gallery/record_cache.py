"""The records of a gallery's items, kept in memory so a search resolves its hits without a SQLite lookup.

A search resolves every hit (a slot of the faiss index) to its record ``(slot, id, label, source, metadata)``.
Doing that with one ``SELECT ... WHERE slot IN (...)`` per search cost as much as the faiss search itself on small
and approximate indexes (two B-tree descents per hit, and cold pages on big galleries).

The cache is valid for one value of the gallery's change counter ``seq``: every write (add, remove, relabel,
revector -- in this process or another) bumps ``seq`` and logs what it did, and each lookup makes sure ``seq`` has not
moved: it reads ``seq`` (one primary-key read) unless the gallery's shared change marker (:mod:`.change_marker`,
rewritten after every commit) still holds the bytes it held at the last read. So a search never returns an item
removed or relabelled anywhere, exactly as when every hit was read from the database.

- A gallery of at most ``capacity`` items is loaded whole at the first search (one scan, in one read snapshot with
  ``seq``); when ``seq`` moves the cache applies the change-log entries since (removed slots go, added, relabelled
  and re-vectored items are read by id), or reloads when the log no longer reaches back that far. A slot not in a
  whole cache does not exist.
- A bigger gallery (once seen bigger, for the life of the cache) keeps the records of the hits it has read, dropped
  entirely whenever ``seq`` moves. Records read
  while another process commits may be newer than the ``seq`` read just before; they are dropped at the next lookup
  (``seq`` moved), so nothing older than the database is ever served.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from shitu.serving.gallery.store import GalleryStore

__all__ = ["RecordCache", "DEFAULT_CAPACITY"]

#: Records kept at most per gallery object (~200 bytes each, so ~40 MB at most); a gallery with more items caches
#: the records of its hits only. The engine sets it from ``Limits.gallery_record_cache`` (same default).
DEFAULT_CAPACITY = 200_000


class RecordCache:
    """Slot -> item record ``(slot, id, label, source, metadata)``, valid for one ``seq`` of the gallery database.
    Not thread-safe: callers hold the gallery's read lock."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = int(capacity)
        self.seq = -1
        self.marker: bytes | None = None  # the change marker's bytes when ``seq`` was last read (None: unknown)
        self.rows: dict[int, tuple] = {}
        self.whole = False  # every item of the gallery at ``seq`` is in ``rows``
        self.too_big = False  # the gallery had more than ``capacity`` items: hits only from then on (no recount)

    def lookup(self, store: GalleryStore, slots: Any, marker: bytes | None = None) -> dict[int, tuple]:
        """The records of ``slots`` (an array of faiss ids, -1 for none) that exist now: a mapping by slot, where a
        slot with no item is absent. ``marker``: the gallery's change marker read just before this call (``None``
        when it has none): while it is unchanged, ``seq`` is not read again."""
        if marker is None or marker != self.marker:
            if store.seq() != self.seq:
                self._catch_up(store)
            self.marker = marker
        if self.whole:
            return self.rows
        rows = self.rows
        wanted = sorted({s for s in np.asarray(slots).ravel().tolist() if s >= 0})
        missing = [s for s in wanted if s not in rows]
        if not missing:
            return rows
        if len(rows) + len(missing) > self.capacity:
            rows.clear()
            missing = wanted
        rows.update((row[0], row) for row in store.cache_rows("slot", missing))
        return rows

    def _catch_up(self, store: GalleryStore) -> None:
        """Bring the cache to the database's current ``seq`` (one read snapshot)."""
        with store.reading():
            meta = store.meta_of("seq", "log_floor")
            seq, floor = meta["seq"], meta["log_floor"]
            if self.whole and self.seq >= floor:
                self._apply_log(store, seq)
            else:
                self.rows.clear()
                self.whole = False
                if not self.too_big:
                    self.too_big = store.count() > self.capacity
                    if not self.too_big:
                        self.rows.update((r[0], r) for r in store.all_cache_rows())
                        self.whole = True
            self.seq = seq

    def _apply_log(self, store: GalleryStore, seq: int) -> None:
        rows = self.rows
        touched: set[int] = set()
        for item, old_slot in store.log_changes(self.seq, seq):
            if old_slot is not None:
                rows.pop(old_slot, None)  # removed or re-vectored: that slot is gone for good
            touched.add(item)
        for row in store.cache_rows("id", sorted(touched)):
            rows[row[0]] = row  # added, relabelled or re-vectored: its current record
        if len(rows) > self.capacity:
            rows.clear()
            self.whole = False
            self.too_big = True

    def check_seq(self, seq: int) -> None:
        """``seq`` as just read from SQLite by someone else: a cache behind it reads SQLite at the next lookup
        (catches writes the change marker missed: a writer that died between commit and marker)."""
        if seq != self.seq:
            self.marker = None

    def clear(self) -> None:
        self.rows.clear()
        self.seq = -1
        self.marker = None
        self.whole = False
        self.too_big = False
