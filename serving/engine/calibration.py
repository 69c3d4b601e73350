"""``IndexProcess.score_thres: auto``: a threshold derived from the gallery itself (issue #28).

A fixed threshold means different things on different galleries and recognisers (general-lite 1.2.0's 0.5 accepted
the demo photos at precision 1.0 but cross-style drawings at 0.28, and after ``shitu adapt`` the scores rarely
reached it). What a gallery does know is how well an object that is *not* one of its labels can score: each
item's best match among the items of *other* labels is such a score (an impostor). ``auto`` is the score that
impostors exceed for :data:`FALSE_ACCEPT_RATE` of the items under a robust normal fit of those best impostor scores
(median and median absolute deviation: near-duplicate items under two labels do not set it), so about 1 % of
objects alike to the gallery's items but not among them get an answer.

Computed from up to :data:`SAMPLE` items (a deterministic spread over the ids) through the gallery's own ``get``
and ``search``, so it works for any metric (for ``L2`` / ``hamming`` distances the lower tail is used); recorded in
the gallery (:mod:`shitu.serving.gallery.settings`) on build, on add (every add up to :data:`SMALL` items, then when
the gallery has grown by :data:`RECOMPUTE_GROWTH` since), after ``shitu adapt``, and on first use of a gallery
that records none. ``gallery info`` shows it under ``recognition.score_thres``. A number given for
``score_thres`` (pack, ``config.json``, request) is used as is.
"""

from __future__ import annotations

import statistics
from datetime import datetime, timezone
from typing import Any

import numpy as np

#: Share of the gallery's items whose best other-label match may pass the threshold.
FALSE_ACCEPT_RATE = 0.01
#: Items sampled to estimate it (the search cost is one query per sampled item).
SAMPLE = 1000
#: Galleries up to this size recompute on every add (a few milliseconds).
SMALL = 200
#: Recompute on add once the gallery has grown by this share since the recorded estimate.
RECOMPUTE_GROWTH = 0.1
#: Used when a gallery cannot give an estimate (fewer than two labels, or a gallery without ``get``), and the
#: lowest value of a similarity gallery with fewer than :data:`FEW` items: general-lite 1.2.0's calibrated value on
#: the demo photos.
FALLBACK = 0.5
#: Below this many impostor scores the threshold is at least the best of them (a fit of so few is loose).
FEW = 10
#: Items searched per sampled item, beyond those of its own label, to find its best other-label match.
_DEPTH = 5


def _sample_ids(gallery: Any, n: int) -> list[int]:
    ids: list[int] = []
    offset = 0
    while True:
        page = gallery.list(limit=1000, offset=offset)
        ids.extend(int(r["id"]) for r in page)
        if len(page) < 1000:
            break
        offset += len(page)
    if len(ids) <= n:
        return ids
    pick = np.linspace(0, len(ids) - 1, n).round().astype(int)
    return [ids[i] for i in pick]


def impostor_scores(gallery: Any, sample: int = SAMPLE) -> np.ndarray:
    """Best score of each sampled item against the items of other labels (raw scores, the gallery's metric)."""
    counts = gallery.label_counts()
    if len(counts) < 2:
        return np.zeros(0, np.float32)
    k = min(len(gallery), max(counts.values()) + _DEPTH, 200)
    ids = _sample_ids(gallery, sample)
    records = [r for r in (gallery.get(i, with_vector=True) for i in ids) if r is not None]
    if not records:
        return np.zeros(0, np.float32)
    hits = gallery.search(np.stack([r["vector"] for r in records]), k)
    out = []
    for rec, row in zip(records, hits):
        own = next((float(m.score) for m in row if m.id == rec["id"]), None)
        if own is None:  # not in this process's index yet (added by another worker): its neighbours are unknown
            continue
        # an identical vector under another label is the same picture filed twice, not an impostor
        other = next((m for m in row if m.label != rec["label"] and abs(float(m.score) - own) > 1e-4), None)
        if other is not None:
            out.append(float(other.score))
    return np.asarray(out, np.float32)


def threshold_from(scores: np.ndarray, higher_is_better: bool, rate: float = FALSE_ACCEPT_RATE) -> float:
    """The score impostors ``scores`` pass at ``rate`` under a robust normal fit (median and 1.4826 x the median
    absolute deviation, so that a few near-duplicate items under different labels do not set it); with fewer than
    :data:`FEW` scores at least the best impostor itself."""
    good = np.asarray(scores, np.float64) * (1 if higher_is_better else -1)
    centre = float(np.median(good))
    spread = 1.4826 * float(np.median(np.abs(good - centre))) or float(good.std()) or 1e-6
    t = statistics.NormalDist(centre, spread).inv_cdf(1 - rate)
    if len(good) < FEW:
        t = max(t, float(good.max()))
    return round(t if higher_is_better else -t, 4)


def calibrate(gallery: Any, rate: float = FALSE_ACCEPT_RATE) -> dict[str, Any] | None:
    """The ``score_thres`` record of ``gallery`` (``value``, ``false_accept_rate``, how many items it saw), or
    ``None`` when it cannot be estimated."""
    if not callable(getattr(gallery, "get", None)):
        return None
    scores = impostor_scores(gallery)
    if len(scores) < 2:
        return None
    value = threshold_from(scores, gallery.higher_is_better, rate)
    if len(scores) < FEW and gallery.higher_is_better:  # a handful of items: no looser than the fallback
        value = max(value, FALLBACK)
    if gallery.higher_is_better:
        value = min(value, 1.0) if getattr(gallery, "metric", "IP") == "IP" else value
    return {
        "auto": value,
        "false_accept_rate": rate,
        "items": len(gallery),
        "sampled": int(len(scores)),
        "computed_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),  # ISO 8601 UTC, as info's times
    }


def needs_recompute(record: Any, count: int) -> bool:
    """Whether an add that left ``count`` items should recompute the recorded ``record``."""
    if not isinstance(record, dict) or "auto" not in record:
        return True
    if count <= SMALL:
        return True
    return count >= (1 + RECOMPUTE_GROWTH) * int(record.get("items", 0))
