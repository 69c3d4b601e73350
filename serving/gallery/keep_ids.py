"""Adding items to a *new* gallery under ids chosen elsewhere (a PaddleClas index, an export archive).

:meth:`Gallery.add` hands out ids from the gallery's ``next_id`` counter, consecutively. To keep foreign ids,
:func:`add_keeping_ids` adds each run of consecutive ids in one call after moving that counter to the run's first
id. Only for galleries nobody else writes to yet (an import builds its gallery in a private folder): the counter
only moves forward once anything was written, so ids are never reused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["id_runs", "add_keeping_ids"]


def id_runs(ids: np.ndarray) -> list[tuple[int, int]]:
    """Index ranges of consecutive ids (``[0, 1, 2, 5, 6]`` -> ``[(0, 3), (3, 5)]``)."""
    if not len(ids):
        return []
    breaks = np.nonzero(np.diff(ids) != 1)[0] + 1
    edges = [0, *breaks.tolist(), len(ids)]
    return list(zip(edges[:-1], edges[1:]))


def _set_next_id(gallery: Any, next_id: int) -> None:
    conn = sqlite3.connect(str(gallery.db_path), isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('next_id', 'seq')").fetchall())
        current, seq = int(meta["next_id"]), int(meta["seq"])
        if next_id < current and seq:  # a gallery that never held anything may start below 1 (PaddleClas: 0)
            conn.execute("ROLLBACK")
            raise ValueError(f"id {next_id} is below the gallery's next id {current}")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", (str(next_id),))
        conn.execute("COMMIT")
    finally:
        conn.close()


def add_keeping_ids(
    gallery: Any,
    ids: Sequence[int] | np.ndarray,
    vectors: np.ndarray,
    labels: Sequence[str],
    **fields: Sequence[Any] | None,
) -> int:
    """Add items under ``ids`` (strictly increasing, >= the gallery's next id); returns how many were added."""
    ids = np.asarray(ids, np.int64)
    if len(ids) and (np.any(np.diff(ids) <= 0) or ids[0] < 0):
        raise ValueError("ids to keep must be non-negative and strictly increasing")
    added = 0
    for start, stop in id_runs(ids):
        _set_next_id(gallery, int(ids[start]))
        got = gallery.add(
            vectors[start:stop],
            list(labels[start:stop]),
            **{k: (list(v[start:stop]) if v is not None else None) for k, v in fields.items()},
        )
        if got != ids[start:stop].tolist():  # pragma: no cover - the gallery assigns next_id onwards
            raise ValueError("the gallery did not keep the given ids")
        added += len(got)
    return added
