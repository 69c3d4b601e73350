"""Gallery reads: search (faiss, or exact over few candidates when labels filter) and record rows as answered.

Every hit is resolved by slot against SQLite (through a cache valid for one value of the change counter, see
:mod:`.record_cache`), so nothing removed (here or in another process) is returned; a hit found stale makes the
search catch up with the change log and run again.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from shitu.serving.gallery.backend import Match
from shitu.serving.gallery.index import exact_search
from shitu.serving.gallery.replication import Replica

__all__ = ["record_dict", "search_once"]


def record_dict(row: tuple) -> dict[str, Any]:
    """A record row (:data:`.store.RECORD_COLUMNS`) as ``get`` / ``list`` answer it."""
    return {
        "id": row[0],
        "label": row[1],
        "source": row[2],
        "metadata": json.loads(row[3]) if row[3] else None,
        "content_hash": row[4],
        "added_at": row[5],
        "updated_at": row[6],
    }


def search_once(
    replica: Replica, q: np.ndarray, k: int, labels: set[str] | None, hamming_radius: int | None = None
) -> tuple[list[list[Match]], bool]:
    """One search under the read lock: ``(matches per query, whether a hit was stale)``."""
    state = replica.current
    spec = replica.spec
    store = replica.store
    if labels is not None:
        if not labels:
            return [[] for _ in range(len(q))], False
        lab = sorted(labels)
        if store.count_with_labels(lab) <= int(spec.tuning["exact_filter_limit"]):
            # Few candidates: exact search over their stored vectors.
            rows = store.vectors_with_labels(lab)
            if not rows:
                return [[] for _ in range(len(q))], False
            dist, order = exact_search(spec, q, replica.to_array([b for _, b in rows]), k)
            found = np.array([s for s, _ in rows], np.int64)[order]
        else:
            dist, found = state.search(q, k, np.array(sorted(store.slots_with_labels(lab)), np.int64))
    else:
        dist, found = state.search(q, k)
    # Resolve slots against the database: drops anything removed since (also in other processes).
    # Records come from a cache that is valid for one change counter of the database (see .record_cache); the
    # shared change marker, read before the cache checks the counter, spares that check while nobody wrote.
    records = replica.records.lookup(store, found, store.changes.read() if store.changes is not None else None)
    get = records.get
    loads = json.loads
    stale = False
    out: list[list[Match]] = []
    radius = (spec.hamming_radius if hamming_radius is None else int(hamming_radius)) if spec.binary else None
    scores = dist.tolist() if dist.dtype == np.float32 else dist.astype(np.float64).tolist()
    if labels is None and radius is None:  # the usual case, with as little work per hit as possible
        for d_row, s_row in zip(scores, found.tolist()):  # at most k per row
            row: list[Match] = []
            for d, s in zip(d_row, s_row):
                rec = get(s)  # slots are positive: faiss's -1 (no hit) is never found
                if rec is None:
                    stale = stale or s >= 0
                    continue
                row.append(Match(rec[1], rec[2], d, rec[3], loads(rec[4]) if rec[4] else None))
            out.append(row)
        return out, stale
    for d_row, s_row in zip(scores, found.tolist()):  # at most k per row
        matches: list[Match] = []
        for d, s in zip(d_row, s_row):
            if s < 0:
                continue
            if radius is not None and d > radius:
                continue
            rec = get(s)
            if rec is None:
                stale = True
                continue
            if labels is not None and rec[2] not in labels:
                continue
            matches.append(Match(rec[1], rec[2], d, rec[3], loads(rec[4]) if rec[4] else None))
        out.append(matches)
    return out, stale
