"""Gallery index: the faiss side of a gallery -- which index to build, and one process's copy of it.

- :class:`IndexConfig` -- what a gallery is (dimension, metric, index method, tunables): fixed at creation, read
  from ``meta`` at open; it builds empty and filled faiss indexes and says when to (re)train.
- :class:`IndexState` -- one process's index in memory: the faiss index, the slots it holds, which are dead.
- :func:`exact_search` -- exact k-NN in numpy (label-filtered searches over few items).

**Slots.** A vector is stored in faiss under a *slot* id, the log seq that wrote it, not under the item id: an
update of a vector writes a new slot and leaves the old one behind as a tombstone, so item ids stay stable for
every index type, HNSW included (which cannot delete). Tombstoned slots are excluded at search time with a faiss
``IDSelector`` in ``SearchParameters``; every hit is then resolved against SQLite by slot, which drops anything
removed in the meantime. Removed vectors are physically dropped by compaction (``remove_ids`` for flat and IVF
indexes, a rebuild for HNSW; :mod:`.maintenance`), automatically once more than ``compact_ratio`` of the index
is dead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from shitu.serving.gallery import index_types
from shitu.serving.gallery.errors import GalleryError
from shitu.serving.gallery.index_types import ACCEPTED, TIER, Recipe, canonical, family_of, nlist_for
from shitu.serving.gallery.validation import METRICS, check_vectors

__all__ = [
    "DEFAULT_TUNING",
    "METRICS",
    "SMALL_BATCH",
    "IndexConfig",
    "IndexState",
    "describe",
    "exact_search",
    "nlist_for",
]

#: Searches of fewer queries than this run on a single OpenMP thread (see ``IndexState.search``).
SMALL_BATCH = 8

#: Tunables stored in ``meta`` at creation (``Gallery.create(..., **tuning)``); each may be changed on the object.
DEFAULT_TUNING: dict[str, Any] = {
    "ef_search": 128,  # HNSW efSearch (raised to k when smaller)
    "ef_construction": 40,  # HNSW efConstruction
    "nprobe": None,  # IVF lists probed; None: max(8, nlist // 8)
    "rerank_k": None,  # compressed types: candidates re-ranked exactly per query; None: max(4 * k, 50)
    "ivf_min_train": 4096,  # IVF galleries stay exact (flat) below this many vectors
    "compact_ratio": 0.2,  # compact once more than this fraction of the index is dead
    "compact_min": 64,  # ... and at least this many vectors are dead
    "snapshot_every": None,  # write a snapshot after this many log entries; None: max(1000, live // 10)
    "exact_filter_limit": 4096,  # label-filtered searches over at most this many items are exact
    "background_rebuild_min": 50000,  # rebuilds (IVF training, HNSW compaction) of bigger indexes run in a thread
}


@dataclass
class IndexConfig:
    """What a gallery is: fixed at creation, read from ``meta`` at open."""

    dim: int
    metric: str  # IP | L2 | hamming
    index_method: str
    hamming_radius: int
    normalize: bool
    tuning: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_TUNING))

    def __post_init__(self) -> None:
        named = canonical(self.index_method)
        if named is not None:
            if self.binary:
                raise GalleryError(
                    f"index_method {self.index_method!r} is for float galleries (IP, L2); hamming galleries take "
                    "Flat, IVF, HNSW<M> or a faiss binary factory string"
                )
            self.index_method = named

    @property
    def named(self) -> str | None:
        """The named type (:mod:`.index_types`) of this gallery, None for PP-ShiTu's names and factory strings."""
        return canonical(self.index_method)

    def recipe(self, n: int) -> Recipe:
        """What the named type builds for ``n`` vectors (``Flat`` below what it needs to train)."""
        assert self.named is not None
        return index_types.recipe(self.named, self.dim, n, int(self.tuning["ivf_min_train"]))

    def rerank_k(self, k: int) -> int:
        """Candidates a compressed index returns for an exact re-rank of the best ``k``."""
        n = self.tuning.get("rerank_k")
        return max(k, int(n) if n else max(4 * k, 50))

    @property
    def binary(self) -> bool:
        return self.metric == "hamming"

    @property
    def faiss_metric(self) -> int:
        return faiss.METRIC_INNER_PRODUCT if self.metric == "IP" else faiss.METRIC_L2

    @property
    def code_size(self) -> int:
        return self.dim // 8 if self.binary else self.dim * 4

    @property
    def auto_ivf(self) -> bool:
        return self.index_method.upper() == "IVF"

    def vectors(self, vectors: Any, what: str = "vectors") -> np.ndarray:
        """``vectors`` checked for this gallery (:func:`.validation.check_vectors`), the extractor's usual output
        (float32 ``[n, dim]``, C-contiguous) without a copy."""
        if (
            type(vectors) is np.ndarray
            and vectors.dtype == np.float32
            and vectors.ndim == 2
            and not self.binary
            and not self.normalize
            and vectors.shape[1] == self.dim
            and vectors.flags.c_contiguous
        ):
            # One vector: its squared norm (one small C call; numpy's reductions cost several times more right
            # after a search has filled the CPU caches) is finite only when every element is, and when it overflows
            # the element-wise check decides. Several: a float64 sum of float32 values cannot overflow, so it is
            # finite exactly when all are.
            if len(vectors) == 1:
                finite = math.isfinite(faiss.fvec_norm_L2sqr(faiss.swig_ptr(vectors), self.dim))
                if not finite and not np.isfinite(vectors).all():
                    raise GalleryError(f"{what} contain NaN or infinite values")
            elif not math.isfinite(vectors.sum(dtype=np.float64)):
                raise GalleryError(f"{what} contain NaN or infinite values")
            return vectors
        return check_vectors(vectors, self.dim, self.binary, self.normalize, what)

    # -- index construction --------------------------------------------------------------------------------------

    def _hnsw_m(self) -> int | None:
        m = re.fullmatch(r"HNSW(\d+)(?:,Flat)?", self.index_method, re.IGNORECASE)
        return int(m.group(1)) if m else None

    def empty_index(self, n: int) -> tuple[Any, bool]:
        """A fresh (untrained when it must be) index for ``n`` vectors; ``(index, needs_training)``.

        IVF-type indexes keep faiss ids natively; the others are wrapped in ``IDMap2``.
        """
        method = self.index_method
        index: Any  # faiss SWIG classes, downcast at run time (the stubs know the base classes only)
        if self.named:
            r = self.recipe(n)
            return index_types.make(r, self.faiss_metric, int(self.tuning["ef_construction"])), r.trains
        if self.binary:
            if method.upper() == "FLAT":
                return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(self.dim)), False
            m = self._hnsw_m()
            if m:
                h = faiss.IndexBinaryHNSW(self.dim, m)
                h.hnsw.efConstruction = int(self.tuning["ef_construction"])
                return faiss.IndexBinaryIDMap2(h), False
            if self.auto_ivf:
                return faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(self.dim), self.dim, nlist_for(n)), True
            index = faiss.index_binary_factory(self.dim, method)
            if isinstance(index, faiss.IndexBinaryIVF):
                return index, not index.is_trained
            return faiss.IndexBinaryIDMap2(index), not index.is_trained
        if method.upper() == "FLAT":
            return faiss.index_factory(self.dim, "IDMap2,Flat", self.faiss_metric), False
        m = self._hnsw_m()
        if m:
            index = faiss.index_factory(self.dim, f"IDMap2,HNSW{m}", self.faiss_metric)
            hnsw: Any = faiss.downcast_index(index.index)  # an IndexHNSW (the stubs type it as Index)
            hnsw.hnsw.efConstruction = int(self.tuning["ef_construction"])
            return index, False
        if self.auto_ivf:
            return faiss.index_factory(self.dim, f"IVF{nlist_for(n)},Flat", self.faiss_metric), True
        try:
            index = faiss.index_factory(self.dim, method, self.faiss_metric)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else ""
            raise GalleryError(f"unknown index_method {method!r}: use {', '.join(ACCEPTED)} (faiss: {first})") from None
        if is_ivf(index):
            return index, not index.is_trained
        return faiss.index_factory(self.dim, "IDMap2," + method, self.faiss_metric), not index.is_trained

    def flat_index(self) -> Any:
        if self.binary:
            return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(self.dim))
        return faiss.index_factory(self.dim, "IDMap2,Flat", self.faiss_metric)

    def min_train(self, index: Any) -> int:
        nlist = ivf_nlist(index)
        base = int(self.tuning["ivf_min_train"])
        return max(base, 39 * nlist) if nlist and not self.auto_ivf else base

    def build(self, slots: np.ndarray, vectors: np.ndarray) -> Any:
        """An index holding ``vectors`` under ``slots`` (trained on them when needed and possible)."""
        n = len(slots)
        index, needs_training = self.empty_index(n)
        if needs_training:
            trained = False
            if self.named or (n >= self.min_train(index) and n >= max(1, ivf_nlist(index))):
                try:
                    index.train(vectors)
                    trained = True
                except RuntimeError:  # e.g. a factory string needing more training points
                    trained = False
            if not trained:
                index = self.flat_index()
        if n:
            for i in range(0, n, 65536):
                index.add_with_ids(vectors[i : i + 65536], slots[i : i + 65536])
        return index

    def wants_rebuild(self, index: Any, live: int) -> bool:
        """Whether an index should be (re)trained now that it holds ``live`` vectors."""
        if self.named:
            want, have = self.recipe(live), family_of(inner_index(index))
            if want.family != have:
                return TIER[want.family] > TIER[have]  # grew past a tier (or enough to train)
            return bool(want.nlist) and want.nlist >= 2 * ivf_nlist(index)
        if is_flat_fallback(self, index):
            probe, needs = self.empty_index(live)
            return needs and live >= self.min_train(probe) and live >= max(1, ivf_nlist(probe))
        if self.auto_ivf:
            nlist = ivf_nlist(index)
            return bool(nlist) and nlist_for(live) >= 2 * nlist and live >= self.min_train(index)
        return False

    def wants_retrain_on_compact(self, index: Any, live: int) -> bool:
        if self.named:
            want, have = self.recipe(live), family_of(inner_index(index))
            nlist = ivf_nlist(index)
            return want.family != have or (bool(nlist) and not nlist // 2 < want.nlist < 2 * nlist)
        if self.wants_rebuild(index, live):
            return True
        if self.auto_ivf and not is_flat_fallback(self, index):
            nlist = ivf_nlist(index)
            return live < self.min_train(index) or nlist_for(live) * 2 <= nlist
        return False


def is_ivf(index: Any) -> bool:
    try:
        faiss.extract_index_ivf(index)
        return True
    except (RuntimeError, TypeError, AttributeError):
        return False


def ivf_nlist(index: Any) -> int:
    if isinstance(index, faiss.IndexBinaryIVF):
        return int(index.nlist)
    if isinstance(index, faiss.IndexBinary):
        return 0
    try:
        return int(faiss.extract_index_ivf(index).nlist)
    except (RuntimeError, TypeError, AttributeError):
        return 0


def inner_index(index: Any) -> Any:
    if isinstance(index, (faiss.IndexIDMap2, faiss.IndexIDMap)):
        return faiss.downcast_index(index.index)
    if isinstance(index, (faiss.IndexBinaryIDMap2, faiss.IndexBinaryIDMap)):
        return faiss.downcast_IndexBinary(index.index)
    return index


def is_flat_fallback(spec: IndexConfig, index: Any) -> bool:
    """An IVF-type gallery still held in an exact flat index (too few vectors to train)."""
    inner = inner_index(index)
    flat = isinstance(inner, (faiss.IndexFlat, faiss.IndexBinaryFlat))
    return flat and spec.index_method.upper() != "FLAT"


def describe(index: Any) -> str:
    inner = inner_index(index)
    named = index_types.describe_named(inner)
    if named:
        return named
    if isinstance(inner, faiss.IndexBinaryFlat):
        return "BFlat"
    if isinstance(inner, faiss.IndexFlat):
        return "Flat"
    if isinstance(inner, faiss.IndexHNSW):
        return f"HNSW{inner.hnsw.nb_neighbors(1)}"  # type: ignore[attr-defined]  # not in faiss's stubs
    if isinstance(inner, faiss.IndexBinaryHNSW):
        return f"BHNSW{inner.hnsw.nb_neighbors(1)}"
    if isinstance(inner, faiss.IndexBinaryIVF):
        return f"BIVF{inner.nlist}"
    nlist = ivf_nlist(inner)
    if nlist:
        return f"IVF{nlist}"
    return type(inner).__name__


def index_ids(index: Any) -> np.ndarray:
    """The faiss ids (slots) an index holds."""
    if isinstance(index, (faiss.IndexIDMap2, faiss.IndexIDMap, faiss.IndexBinaryIDMap2, faiss.IndexBinaryIDMap)):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf: faiss.IndexIVF | faiss.IndexBinaryIVF
    ivf = index if isinstance(index, faiss.IndexBinaryIVF) else faiss.extract_index_ivf(index)
    invlists: Any = ivf.invlists  # an ArrayInvertedLists (the stubs lack release_ids)
    parts = []
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if size:
            ids = invlists.get_ids(lst)
            parts.append(faiss.rev_swig_ptr(ids, size).copy())
            invlists.release_ids(lst, ids)
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------------------------------------------
# in-memory index state
# ----------------------------------------------------------------------------------------------------------------


class IndexState:
    """One process's copy of the index: faiss index + which slots it holds + which of those are dead."""

    def __init__(self, spec: IndexConfig, index: Any, seq: int, gen: int):
        self.spec = spec
        self.index = index
        self.seq = seq
        self.gen = gen
        self.slots: set[int] = set(index_ids(index).tolist()) if index.ntotal else set()
        self.dead: set[int] = set()
        self._dead_sel: Any = None
        self._params: dict[tuple, Any] = {}  # search parameters without selector, by setting
        inner = inner_index(index)
        if spec.binary:
            self.mode = "plain" if isinstance(inner, faiss.IndexBinaryFlat) else "nosel"
            if isinstance(inner, faiss.IndexBinaryIVF):
                inner.nprobe = self.nprobe
            elif isinstance(inner, faiss.IndexBinaryHNSW):
                inner.hnsw.efSearch = int(spec.tuning["ef_search"])
        elif isinstance(inner, faiss.IndexHNSW):
            self.mode = "hnsw"
        elif isinstance(inner, faiss.IndexFlat):
            self.mode = "plain"
        elif ivf_nlist(index):
            self.mode = "ivf"
        else:
            self.mode = "plain"
        self.removable = not isinstance(inner, (faiss.IndexHNSW, faiss.IndexBinaryHNSW))
        #: A compressed index (codes only): searches re-rank its candidates with the stored floats.
        self.rerank = spec.named is not None and family_of(inner) not in ("Flat", "HNSW")

    @property
    def nprobe(self) -> int:
        nlist = ivf_nlist(self.index)
        n = self.spec.tuning.get("nprobe")
        return max(1, min(nlist, int(n) if n else max(8, nlist // 8))) if nlist else 1

    @property
    def live(self) -> int:
        return len(self.slots) - len(self.dead)

    @property
    def dead_ratio(self) -> float:
        return len(self.dead) / len(self.slots) if self.slots else 0.0

    def add(self, slots: np.ndarray, vectors: np.ndarray) -> None:
        if not len(slots):
            return
        keep = np.fromiter((int(s) not in self.slots for s in slots), bool, len(slots))
        if not keep.all():
            slots, vectors = slots[keep], vectors[keep]
        for i in range(0, len(slots), 65536):
            self.index.add_with_ids(
                np.ascontiguousarray(vectors[i : i + 65536]), np.ascontiguousarray(slots[i : i + 65536])
            )
        self.slots.update(int(s) for s in slots)

    def mark_dead(self, slots: Iterable[int]) -> None:
        changed = False
        for s in slots:
            if s is not None and s in self.slots and s not in self.dead:
                self.dead.add(int(s))
                changed = True
        if changed:
            self._dead_sel = None

    def compact_inplace(self) -> bool:
        """Drop dead vectors with ``remove_ids``; False when the index cannot remove (HNSW)."""
        if not self.dead:
            return True
        if not self.removable:
            return False
        ids = np.fromiter(self.dead, np.int64, len(self.dead))
        try:
            self.index.remove_ids(faiss.IDSelectorBatch(ids))
        except RuntimeError:
            self.removable = False
            return False
        self.slots.difference_update(self.dead)
        self.dead.clear()
        self._dead_sel = None
        return True

    def serialize(self) -> np.ndarray:
        if self.spec.binary:
            return faiss.serialize_index_binary(self.index)
        return faiss.serialize_index(self.index)

    def _selector(self, allowed: np.ndarray | None) -> tuple[Any, list[Any]]:
        """A selector (and the objects it references, kept alive by the caller) or ``None``."""
        if allowed is not None:
            batch = faiss.IDSelectorBatch(allowed)
            return batch, [batch, allowed]
        if not self.dead:
            return None, []
        if self._dead_sel is None:
            arr = np.fromiter(self.dead, np.int64, len(self.dead))
            batch = faiss.IDSelectorBatch(arr)
            self._dead_sel = (faiss.IDSelectorNot(batch), [batch, arr])
        sel, keep = self._dead_sel
        return sel, [sel, *keep]

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """faiss search returning ``(distances, slots)``; dead slots (and slots outside ``allowed``) excluded.

        Small batches run on one OpenMP thread: faiss parallelises over queries, so a team of threads only adds
        wake-up and barrier costs there (and stalls badly when the cores are busy with other work). The setting
        is per calling thread in OpenMP, so other threads are not affected.
        """
        if len(queries) >= SMALL_BATCH:
            return self._search(queries, k, allowed)
        prev = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return self._search(queries, k, allowed)
        finally:
            faiss.omp_set_num_threads(prev)

    def search_parameters(self, k: int, sel: Any = None) -> Any:
        """faiss ``SearchParameters`` for this index (HNSW ``efSearch``, IVF ``nprobe``) with selector ``sel``;
        ``None`` when a plain search will do. Without a selector the object is made once per setting and reused
        (making one costs as much as a small search's bookkeeping)."""
        if sel is None and self.mode in ("hnsw", "ivf"):
            tuning = self.spec.tuning
            key = (self.mode, k, tuning.get("ef_search"), tuning.get("nprobe"))
            cached = self._params.get(key)
            if cached is None:
                if len(self._params) >= 64:
                    self._params.clear()
                cached = self._params[key] = self._make_parameters(k, None)
            return cached
        return self._make_parameters(k, sel)

    def _make_parameters(self, k: int, sel: Any) -> Any:
        if self.mode == "hnsw":
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # not in faiss's stubs
            params.efSearch = max(int(self.spec.tuning["ef_search"]), k)
        elif self.mode == "ivf":
            params = faiss.SearchParametersIVF()
            params.nprobe = self.nprobe
        elif sel is None:
            return None
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
        return params

    def _faiss_search(self, queries: np.ndarray, k: int, params: Any) -> tuple[np.ndarray, np.ndarray]:
        """``index.search(queries, k, params=params)`` without the Python wrapper's checks and copies: the gallery
        hands over C-contiguous queries of the index's dtype and width (``Gallery._vectors``), so the outputs are
        allocated and the C++ search called directly (a few microseconds per call, a tenth of a small search)."""
        spec = self.spec
        binary = spec.binary
        if (
            queries.dtype != (np.uint8 if binary else np.float32)
            or queries.ndim != 2
            or not queries.flags.c_contiguous
            or queries.shape[1] != (spec.dim // 8 if binary else spec.dim)
        ):
            return self.index.search(queries, k) if params is None else self.index.search(queries, k, params=params)
        n = len(queries)
        dist = np.empty((n, k), np.int32 if binary else np.float32)
        ids = np.empty((n, k), np.int64)
        self.index.search_c(n, faiss.swig_ptr(queries), k, faiss.swig_ptr(dist), faiss.swig_ptr(ids), params)
        return dist, ids

    def _search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        ntotal = self.index.ntotal
        nq = len(queries)
        if ntotal == 0 or k <= 0:
            return np.zeros((nq, 0), np.float32), np.full((nq, 0), -1, np.int64)
        if self.mode != "nosel":
            sel, keep = self._selector(allowed)
            params = self.search_parameters(k, sel)
            try:
                dist, ids = self._faiss_search(queries, min(k, ntotal), params)
                del keep
                return dist, ids
            except RuntimeError:
                self.mode = "nosel"  # this index type takes no search parameters: over-fetch and filter
        # Over-fetch and filter in Python.
        excluded = len(self.dead)
        kk = min(ntotal, k + excluded if allowed is None else max(k * 20, k + excluded, 100))
        dist, ids = self.index.search(queries, kk)
        allow = set(allowed.tolist()) if allowed is not None else None
        out_d = np.zeros((nq, k), dist.dtype)
        out_i = np.full((nq, k), -1, np.int64)
        for q in range(nq):
            j = 0
            for d, s in zip(dist[q], ids[q]):
                s = int(s)
                if s < 0 or s in self.dead or (allow is not None and s not in allow):
                    continue
                out_d[q, j], out_i[q, j] = d, s
                j += 1
                if j == k:
                    break
        return out_d, out_i


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def exact_search(spec: IndexConfig, queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN of ``queries`` among ``vectors`` (row indices), best first, with the gallery's metric."""
    if len(queries) > 64:
        parts = [exact_search(spec, queries[i : i + 64], vectors, k) for i in range(0, len(queries), 64)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if spec.binary:
        x = np.bitwise_xor(queries[:, None, :], vectors[None, :, :])
        dist = _POPCOUNT[x].sum(axis=2, dtype=np.int32)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    elif spec.metric == "IP":
        dist = queries @ vectors.T
        order = np.argsort(-dist, axis=1, kind="stable")[:, :k]
    else:
        dist = (queries**2).sum(1)[:, None] + (vectors**2).sum(1)[None, :] - 2 * queries @ vectors.T
        dist = np.maximum(dist, 0)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, axis=1), order
