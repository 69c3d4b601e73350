"""Gallery reads: search (faiss, or exact over few candidates when labels filter) and record rows as answered.

Every hit is resolved by slot against SQLite (through a cache valid for one value of the change counter, see
:mod:`.record_cache`), so nothing removed (here or in another process) is returned; a hit found stale makes the
search catch up with the change log and run again. A compressed index (``IndexState.rerank``: codes only) returns
``rerank_k`` candidates, re-ranked exactly with the float vectors read from SQLite in one query (:func:`rerank`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from shitu.serving.gallery.backend import Match
from shitu.serving.gallery.index import exact_search
from shitu.serving.gallery.replication import Replica

__all__ = ["record_dict", "rerank", "search_once"]


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


def rerank(replica: Replica, q: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each query's ``candidates`` (slots, -1 padded) by exact distance to the float vectors
    stored for them (one SQLite query for the batch); ``(distances, slots)``, -1 padded. A candidate whose vector
    is gone (removed meanwhile) is dropped."""
    nq = len(q)
    wanted = np.unique(candidates[candidates >= 0])
    rows = replica.store.vectors_of(wanted.tolist()) if len(wanted) else []
    out_d = np.zeros((nq, k), np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    if not rows:
        return out_d[:, :0], out_i[:, :0]
    slots = np.array([s for s, _ in rows], np.int64)
    order = np.argsort(slots)
    slots = slots[order]
    vectors = replica.to_array([rows[i][1] for i in order])
    spec = replica.spec
    width = 0
    for i in range(nq):
        cand = candidates[i][candidates[i] >= 0]
        pos = np.searchsorted(slots, cand)
        pos = pos[(pos < len(slots)) & (slots[np.minimum(pos, len(slots) - 1)] == cand)]
        if not len(pos):
            continue
        dist, best = exact_search(spec, q[i : i + 1], vectors[pos], k)
        n = best.shape[1]
        out_d[i, :n], out_i[i, :n] = dist[0], slots[pos[best[0]]]
        width = max(width, n)
    return out_d[:, :width], out_i[:, :width]


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
        elif state.rerank:
            allowed = np.array(sorted(store.slots_with_labels(lab)), np.int64)
            dist, found = rerank(replica, q, state.search(q, spec.rerank_k(k), allowed)[1], k)
        else:
            dist, found = state.search(q, k, np.array(sorted(store.slots_with_labels(lab)), np.int64))
    elif state.rerank:
        dist, found = rerank(replica, q, state.search(q, spec.rerank_k(k))[1], k)
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
