"""The galleries an engine keeps open: at most ``Limits.max_open_galleries``, least recently used closed first.

Each open gallery holds file descriptors (SQLite connections, WAL, index files). Without a bound, reads of many
distinct galleries exhaust the process's descriptors, after which healthy galleries fail to open. A gallery pushed
out of the cache may still be in use by a request running on another thread, so it is *retired* and closed once
nothing but the cache refers to it any more (checked on each later lookup, and at :meth:`OpenGalleries.close`).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class OpenGalleries:
    """A bounded LRU of open galleries by key (not thread-safe: the engine calls it under its lock)."""

    def __init__(self, max_open: int):
        self.max_open = max(1, int(max_open))
        self._open: OrderedDict[str, Any] = OrderedDict()
        self._retired: list[tuple[Any, int]] = []  # (gallery, reference count when only the cache held it)
        self._baseline: dict[str, int] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._open

    def __len__(self) -> int:
        return len(self._open)

    def values(self) -> list[Any]:
        return list(self._open.values())

    def get(self, key: str, opener: Callable[[], Any]) -> Any:
        """The open gallery ``key`` (opened with ``opener`` when not open), now the most recently used."""
        self._close_unused()
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        gallery = opener()
        self._open[key] = gallery
        self._baseline[key] = sys.getrefcount(gallery) - 2  # the cache (and the gallery's own cycles) only
        while len(self._open) > self.max_open:
            old_key, old = self._open.popitem(last=False)
            self._retired.append((old, self._baseline.pop(old_key)))
            del old
        self._close_unused()
        return gallery

    def _close_unused(self) -> None:
        keep = []
        for gallery, baseline in self._retired:
            # without the loop name and getrefcount's argument: the tuple in place of the cache, plus any user
            if sys.getrefcount(gallery) - 2 <= baseline:
                gallery.close()
            else:
                keep.append((gallery, baseline))
        self._retired = keep

    def close(self) -> None:
        """Close every gallery, retired ones included."""
        for gallery in self._open.values():
            gallery.close()
        for gallery, _ in self._retired:
            gallery.close()
        self._open.clear()
        self._retired.clear()
        self._baseline.clear()
