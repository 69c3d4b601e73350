"""Gallery reads: search (faiss, or exact over few candidates when labels filter) and record queries.

Every hit is resolved by slot against SQLite (through a cache valid for one value of the change counter, see
:mod:`.record_cache`), so nothing removed (here or in another process) is returned; a hit found stale makes the
search catch up with the change log and run again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from shitu.serving.gallery.backend import Match
from shitu.serving.gallery.index import describe, exact_search
from shitu.serving.gallery.record_cache import DEFAULT_CAPACITY, RecordCache
from shitu.serving.gallery.replication import ReplicationMixin
from shitu.serving.gallery.storage import GalleryError, chunks, read_meta, read_txn

__all__ = ["ReadingMixin"]


class ReadingMixin(ReplicationMixin):
    """``search``, ``get``, ``list``, ``label_counts``, ``hashes_present``, ``len()`` and ``info``."""

    def search(
        self, queries: np.ndarray, k: int = 5, labels: Sequence[str] | None = None, *, hamming_radius: int | None = None
    ) -> list[list[Match]]:
        """The ``k`` best matches of each query (one list per query, best first).

        ``score`` is the raw metric: IP similarity (higher is better), squared L2 distance or hamming distance
        (smaller is better; hamming hits farther than ``hamming_radius`` -- this call's, else the gallery's -- are
        dropped). ``labels`` restricts the search to items with those labels.
        """
        self._check_open()
        q = self._vectors(queries, "queries")
        k = int(k)
        if k <= 0:
            raise GalleryError(f"k must be positive, not {k}")
        if hamming_radius is not None and (not isinstance(hamming_radius, (int, np.integer)) or hamming_radius < 0):
            raise GalleryError(f"hamming_radius must be a non-negative integer, not {hamming_radius!r}")
        if isinstance(labels, str):
            labels = [labels]
        label_set = None if labels is None else set(labels)
        with self._lock:
            self._maybe_refresh()
            for attempt in range(2):
                result, stale = self._search_locked(q, k, label_set, hamming_radius)
                if not stale or attempt:
                    return result
                self._refresh_locked()  # a hit was removed elsewhere: catch up and search again
        return result  # pragma: no cover

    def _search_locked(
        self, q: np.ndarray, k: int, labels: set[str] | None, hamming_radius: int | None = None
    ) -> tuple[list[list[Match]], bool]:
        state = self._state
        assert state is not None
        spec = self._spec
        conn = self._conn
        if labels is not None:
            if not labels:
                return [[] for _ in range(len(q))], False
            lab = sorted(labels)
            limit = int(self.tuning["exact_filter_limit"])
            count = 0
            for part in chunks(lab):
                count += conn.execute(
                    f"SELECT COUNT(*) FROM items WHERE label IN ({','.join('?' * len(part))})", list(part)
                ).fetchone()[0]
            if count <= limit:
                # Few candidates: exact search over their stored vectors.
                blobs: list[bytes] = []
                slots: list[int] = []
                with read_txn(conn):
                    for part in chunks(lab):
                        q_ = (
                            "SELECT i.slot, v.vector FROM items i JOIN vectors v ON v.slot = i.slot "
                            f"WHERE i.label IN ({','.join('?' * len(part))})"
                        )
                        for s, b in conn.execute(q_, list(part)):
                            slots.append(s)
                            blobs.append(b)
                if not slots:
                    return [[] for _ in range(len(q))], False
                dist, order = exact_search(spec, q, self._blobs_to_array(blobs), k)
                slot_arr = np.array(slots, np.int64)
                found = slot_arr[order]
            else:
                allowed: list[int] = []
                for part in chunks(lab):
                    allowed += [
                        r[0]
                        for r in conn.execute(
                            f"SELECT slot FROM items WHERE label IN ({','.join('?' * len(part))})", list(part)
                        )
                    ]
                dist, found = state.search(q, k, np.array(sorted(allowed), np.int64))
        else:
            dist, found = state.search(q, k)
        # Resolve slots against the database: drops anything removed since (also in other processes).
        # Records come from a cache that is valid for one change counter of the database (see .record_cache); the
        # shared change marker, read before the cache checks the counter, spares that check while nobody wrote.
        records = self._record_cache().lookup(conn, found, self._changes.read())
        get = records.get
        loads = json.loads
        stale = False
        out: list[list[Match]] = []
        radius = (spec.hamming_radius if hamming_radius is None else int(hamming_radius)) if spec.binary else None
        scores = dist.tolist() if dist.dtype == np.float32 else dist.astype(np.float64).tolist()
        if labels is None and radius is None:  # the usual case, with as little work per hit as possible
            for d_row, s_row in zip(scores, found.tolist()):  # at most k per row
                matches = []
                for d, s in zip(d_row, s_row):
                    rec = get(s)  # slots are positive: faiss's -1 (no hit) is never found
                    if rec is None:
                        stale = stale or s >= 0
                        continue
                    matches.append(Match(rec[1], rec[2], d, rec[3], loads(rec[4]) if rec[4] else None))
                out.append(matches)
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

    def _record_cache(self) -> RecordCache:
        cache = self.__dict__.get("_records")
        if cache is None:
            cache = self.__dict__["_records"] = RecordCache(self.record_cache_capacity)
        return cache

    @property
    def record_cache_capacity(self) -> int:
        """Item records this object keeps in memory for searches (``Limits.gallery_record_cache``; ~200 bytes
        each): a gallery of at most this many items is held whole, a bigger one keeps its recent hits' only."""
        return int(self.__dict__.get("_record_capacity", DEFAULT_CAPACITY))

    @record_cache_capacity.setter
    def record_cache_capacity(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise GalleryError(f"record_cache_capacity must be a non-negative integer, not {n!r}")
        with self._lock:
            self.__dict__["_record_capacity"] = int(n)
            self.__dict__.pop("_records", None)  # the next search starts a cache of the new size

    # -- reading records --------------------------------------------------------------------------------------------

    _COLS = "id, label, source, metadata, content_hash, added_at, updated_at"

    @staticmethod
    def _record(row: tuple) -> dict[str, Any]:
        return {
            "id": row[0],
            "label": row[1],
            "source": row[2],
            "metadata": json.loads(row[3]) if row[3] else None,
            "content_hash": row[4],
            "added_at": row[5],
            "updated_at": row[6],
        }

    def get(self, id: int, with_vector: bool = False) -> dict[str, Any] | None:
        """The record of item ``id`` (``None`` when there is none); ``with_vector`` adds its ``vector``."""
        self._check_open()
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._COLS}, (SELECT vector FROM vectors v WHERE v.slot = items.slot) "
                "FROM items WHERE id = ?",
                (int(id),),
            ).fetchone()
        if row is None:
            return None
        rec = self._record(row)
        if with_vector:
            rec["vector"] = self._blobs_to_array([row[7]])[0].copy()
        return rec

    def list(self, label: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Records by id (optionally of one label), ``limit`` from ``offset``."""
        self._check_open()
        with self._lock:
            if label is None:
                rows = self._conn.execute(
                    f"SELECT {self._COLS} FROM items ORDER BY id LIMIT ? OFFSET ?", (int(limit), int(offset))
                ).fetchall()
            else:
                rows = self._conn.execute(
                    f"SELECT {self._COLS} FROM items WHERE label = ? ORDER BY id LIMIT ? OFFSET ?",
                    (label, int(limit), int(offset)),
                ).fetchall()
        return [self._record(r) for r in rows]

    def label_counts(self) -> dict[str, int]:
        """Items per label."""
        self._check_open()
        with self._lock:
            return dict(self._conn.execute("SELECT label, COUNT(*) FROM items GROUP BY label ORDER BY label"))

    def has_hash(self, content_hash: str) -> bool:
        return bool(self.hashes_present([content_hash]))

    def hashes_present(self, hashes: Iterable[str]) -> set[str]:
        """Which of ``hashes`` some item has as its content hash."""
        self._check_open()
        hashes = sorted({h for h in hashes if h})
        found: set[str] = set()
        with self._lock:
            for part in chunks(hashes):
                q = f"SELECT DISTINCT content_hash FROM items WHERE content_hash IN ({','.join('?' * len(part))})"
                found.update(r[0] for r in self._conn.execute(q, list(part)))
        return found

    def __len__(self) -> int:
        self._check_open()
        with self._lock:
            self._maybe_refresh()
            assert self._state is not None
            return self._state.live

    def info(self) -> dict[str, Any]:
        """Counts, configuration, version and sizes of the gallery."""
        self._check_open()
        with self._lock:
            self._refresh_locked()
            state = self._state
            assert state is not None
            meta = read_meta(self._conn)
            count = self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            n_labels = self._conn.execute("SELECT COUNT(DISTINCT label) FROM items").fetchone()[0]
            info = {
                "path": str(self.path),
                "count": count,
                "labels": n_labels,
                "dim": self.dim,
                "metric": self.metric,
                "normalize": self.normalize,
                "index_method": self.index_method,
                "index": describe(state.index),
                "hamming_radius": self.hamming_radius if self._spec.binary else None,
                "format_version": int(meta["format_version"]),
                "seq": int(meta["seq"]),
                "loaded_seq": state.seq,
                "snapshot_seq": int(meta["snapshot_seq"]),
                "snapshot_file": meta["snapshot_file"] or None,
                "index_gen": int(meta["index_gen"]),
                "index_vectors": int(state.index.ntotal),
                "removed_pending": len(state.dead),
                "readonly": self.readonly,
                "created_at": float(meta["created_at"]),
                "tuning": dict(self.tuning),
                # framing rule and score_thres: auto of this gallery (shitu.serving.gallery.settings, issue #28)
                "recognition": json.loads(meta.get("recognition") or "{}"),
            }
        size = 0
        for p in self.path.iterdir():
            try:
                if p.is_file():
                    size += p.stat().st_size
            except OSError:
                pass
        info["size_bytes"] = size
        return info
