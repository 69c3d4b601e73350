"""Named index types of a local gallery: which faiss index a name builds for ``n`` vectors of dimension ``d``.

``IndexProcess.index_method`` takes PP-ShiTu's names (``Flat``, ``IVF``, ``HNSW32``; PaddleClas's
``build_gallery.py`` uses these three), any faiss factory string, and the named types below. A named type is sized
from the gallery when its index is (re)built, by rule:

- ``nlist`` (inverted lists) = :func:`nlist_for`: about 4*sqrt(n), at least 39 training points per list;
- PQ ``m`` (bytes per vector) = :func:`pq_m`: the largest divisor of ``d`` not above ``d / 4`` (128 for 512-d: 16x
  smaller than float32), 8 bits per sub-quantizer (256 centroids each). ``d / 8`` (PQ8 on 64-d, 20k clustered
  vectors) reached recall@10 0.95 for IVF-PQ but 0.54 for HNSW-PQ with the re-rank; ``d / 4`` reaches 0.9995 and
  0.82 (tests/test_gallery_index_types.py);
- PQ without polysemous training (the factory's ``np``: that training took minutes for 128 sub-quantizers);
- HNSW graphs have 32 neighbours per node (``ef_construction`` and ``ef_search`` as for ``HNSW32``).

=============== ============================== =========== ==================================================
name            faiss index                    bytes/item  re-rank
=============== ============================== =========== ==================================================
``IVF-PQ``      ``IVF<nlist>,PQ<m>x8``         m + 8       yes
``OPQ-IVF-PQ``  ``OPQ<m>,IVF<nlist>,PQ<m>x8``  m + 8       yes (a learnt rotation before PQ: better codes)
``IVF-SQ8``     ``IVF<nlist>,SQ8``             d + 8       yes
``HNSW-SQ8``    ``HNSW32`` over SQ8 codes      d + ~300    yes
``HNSW-PQ``     ``HNSW32`` over PQ codes       m + ~300    yes (lowest recall: the graph is built on PQ distances)
``auto``        ``Flat`` below 50k items, ``IVF-SQ8`` below 1M, ``IVF-PQ`` from 1M (:data:`AUTO_TIERS`)
=============== ============================== =========== ==================================================

The compressed types hold codes only (the faiss snapshot has no float copy): a search fetches ``rerank_k``
candidates (default max(4*k, 50)) from the compressed index and re-ranks them exactly with the float vectors the
gallery's database holds (:func:`.reading.search_once`). Like ``IVF``, a trained type stays exact (a flat index)
below its :meth:`Recipe.min_train` vectors and is (re)built as the gallery grows (in the background above
``background_rebuild_min``); ``auto`` moves up a tier when the gallery crosses one, and ``gallery info``'s ``index``
names the index actually built (``describe``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import faiss

__all__ = ["ACCEPTED", "AUTO_TIERS", "NAMED", "Recipe", "canonical", "family_of", "make", "nlist_for", "pq_m", "recipe"]

#: The named types (canonical spelling; names are matched case-insensitively).
NAMED = ("IVF-PQ", "OPQ-IVF-PQ", "IVF-SQ8", "HNSW-SQ8", "HNSW-PQ", "auto")
#: What ``index_method`` accepts, for error messages.
ACCEPTED = ("Flat", "IVF", "HNSW32 (any HNSW<M>)", *NAMED, "or a faiss factory string")
#: ``auto``: (fewest items, type) from the biggest tier down.
AUTO_TIERS = ((1_000_000, "IVF-PQ"), (50_000, "IVF-SQ8"), (0, "Flat"))
#: Order of the families for ``auto``'s tiers (a rebuild moves up when the gallery grew past a tier).
TIER = {
    "other": 0,
    "Flat": 0,
    "HNSW": 1,
    "HNSW-SQ8": 1,
    "HNSW-PQ": 1,
    "IVF": 2,
    "IVF-SQ8": 2,
    "IVF-PQ": 3,
    "OPQ-IVF-PQ": 3,
}
_PQ_CENTROIDS = 256  # 8 bits per sub-quantizer
HNSW_M = 32
#: OPQ rotation training iterations (faiss's default 50 costs ~6x the time for little better codes).
OPQ_ITERATIONS = 10


def canonical(method: str) -> str | None:
    """The named type ``method`` spells (any case), or None for PP-ShiTu's names and factory strings."""
    key = method.strip().upper()
    return next((name for name in NAMED if name.upper() == key), None)


def nlist_for(n: int) -> int:
    """IVF lists for ``n`` vectors: about 4*sqrt(n), with at least 39 training points per list."""
    return max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))


def pq_m(dim: int) -> int:
    """PQ sub-quantizers (bytes per vector) for ``dim``: the largest divisor of ``dim`` not above ``dim / 4``."""
    return next(m for m in range(max(1, dim // 4), 0, -1) if dim % m == 0)


@dataclass(frozen=True)
class Recipe:
    """The index a named type builds for a given size."""

    family: str  # a named type, or "Flat" (auto's small tier, and the exact index below min_train)
    dim: int
    nlist: int = 0
    m: int = 0

    @property
    def trains(self) -> bool:
        return self.family != "Flat"

    @property
    def rerank(self) -> bool:
        return self.family != "Flat"

    def min_train(self, base: int) -> int:
        """Vectors needed to train: ``ivf_min_train`` (``base``), 39 per IVF list, 39 per PQ centroid."""
        need = base
        if self.nlist:
            need = max(need, 39 * self.nlist)
        if self.m:
            need = max(need, 39 * _PQ_CENTROIDS)
        return need if self.trains else 0


def recipe(family: str, dim: int, n: int, base: int) -> Recipe:
    """What named type ``family`` builds for ``n`` vectors (``base``: ``ivf_min_train``); a ``Flat`` recipe when
    ``n`` is below what the type needs to train."""
    if family == "auto":
        family = next(name for least, name in AUTO_TIERS if n >= least)
        if family == "Flat":
            return Recipe("Flat", dim)
    ivf = family in ("IVF-PQ", "OPQ-IVF-PQ", "IVF-SQ8")
    pq = family in ("IVF-PQ", "OPQ-IVF-PQ", "HNSW-PQ")
    r = Recipe(family, dim, nlist_for(n) if ivf else 0, pq_m(dim) if pq else 0)
    return r if n >= r.min_train(base) else Recipe("Flat", dim)


def make(r: Recipe, metric: int, ef_construction: int) -> Any:
    """An empty (untrained) faiss index for recipe ``r``; types without ids of their own wrapped in ``IDMap2``."""
    d = r.dim
    if r.family == "Flat":
        return faiss.index_factory(d, "IDMap2,Flat", metric)
    if r.family == "IVF-PQ":
        return faiss.index_factory(d, f"IVF{r.nlist},PQ{r.m}x8np", metric)
    if r.family == "OPQ-IVF-PQ":
        index: Any = faiss.index_factory(d, f"OPQ{r.m},IVF{r.nlist},PQ{r.m}x8np", metric)
        opq: Any = faiss.downcast_VectorTransform(index.chain.at(0))
        opq.niter = OPQ_ITERATIONS
        return index
    if r.family == "IVF-SQ8":
        return faiss.index_factory(d, f"IVF{r.nlist},SQ8", metric)
    graph: Any
    cls: Any  # faiss's stubs lack these constructors' (d, sizes, M, metric) overloads
    if r.family == "HNSW-SQ8":
        cls = faiss.IndexHNSWSQ
        graph = cls(d, faiss.ScalarQuantizer.QT_8bit, HNSW_M, metric)
    else:  # HNSW-PQ (built directly: the factory's HNSW<M>_PQ<m> is L2 only)
        cls = faiss.IndexHNSWPQ
        graph = cls(d, r.m, HNSW_M, 8, metric)
    graph.hnsw.efConstruction = ef_construction
    return faiss.IndexIDMap2(graph)  # faiss's Python wrapper keeps ``graph`` alive with it


def family_of(inner: Any) -> str:
    """The family of a built (unwrapped) faiss index, as :class:`Recipe` names them."""
    if isinstance(inner, faiss.IndexPreTransform):
        chain: Any = inner.chain  # a std::vector proxy (the stubs say list)
        first = faiss.downcast_VectorTransform(chain.at(0)) if chain.size() else None
        sub = faiss.downcast_index(inner.index)
        opq = isinstance(first, faiss.OPQMatrix) and isinstance(sub, faiss.IndexIVFPQ)
        return "OPQ-IVF-PQ" if opq else "other"
    if isinstance(inner, faiss.IndexIVFPQ):
        return "IVF-PQ"
    if isinstance(inner, faiss.IndexIVFScalarQuantizer):
        return "IVF-SQ8"
    if isinstance(inner, faiss.IndexHNSWSQ):
        return "HNSW-SQ8"
    if isinstance(inner, faiss.IndexHNSWPQ):
        return "HNSW-PQ"
    if isinstance(inner, faiss.IndexHNSW):
        return "HNSW"
    if isinstance(inner, faiss.IndexIVF):
        return "IVF"
    return "Flat"


def describe_named(inner: Any) -> str | None:
    """``describe`` for the compressed families (None for the others)."""
    fam = family_of(inner)
    if fam == "OPQ-IVF-PQ":
        ivf: Any = faiss.downcast_index(inner.index)  # an IndexIVFPQ
        return f"OPQ{ivf.pq.M},IVF{ivf.nlist},PQ{ivf.pq.M}x8"
    if fam == "IVF-PQ":
        return f"IVF{inner.nlist},PQ{inner.pq.M}x8"
    if fam == "IVF-SQ8":
        return f"IVF{inner.nlist},SQ8"
    if fam == "HNSW-SQ8":
        return f"HNSW{inner.hnsw.nb_neighbors(1)},SQ8"
    if fam == "HNSW-PQ":
        storage: Any = faiss.downcast_index(inner.storage)  # an IndexPQ
        return f"HNSW{inner.hnsw.nb_neighbors(1)},PQ{storage.pq.M}x8"
    return None
