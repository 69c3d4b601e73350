"""What both gallery backends accept: labels, item fields, metadata and vectors (numpy only, no faiss).

**The label rule.** A label is stored in Unicode normal form **NFC**, so the same word typed with a precomposed
``é`` or with ``e`` + a combining accent is one label (adding, searching, listing and removing by either form act on
the same items). NFC and not NFKC: NFKC would also rewrite compatibility characters users mean as typed (full-width
Chinese punctuation ``（罐装）`` -> ``(罐装)``, ``H₂O`` -> ``H2O``, ``①`` -> ``1``), and answers return labels as
stored; so a full-width ``ｃａｆé`` stays a label of its own. After NFC a label must

- be a string of 1 to ``max_length`` characters (``Limits.max_label_length``, 128 by default),
- hold at least one visible character (not only spaces, zero-width or other format characters, fillers),
- hold no control character (C0, DEL, C1: tabs and newlines included), no surrogate, and no bidirectional control
  (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069): those reorder how the text around a label is shown.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

from shitu.serving.gallery.errors import GalleryError, LabelError

__all__ = [
    "DEFAULT_MAX_LABEL_LENGTH",
    "check_fields",
    "check_label",
    "check_vectors",
    "iso_time",
    "label_problem",
    "metadata_json",
    "normal_label",
    "normal_labels",
]

DEFAULT_MAX_LABEL_LENGTH = 128
#: Bidirectional formatting characters: refused in labels.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: Characters of a visible category that show nothing (fillers, blank pattern, invisible marks).
_INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0\u180b\u180c\u180d\u180e\u180f") | frozenset(
    chr(c) for c in range(0xFE00, 0xFE10)
)
_NOT_SHOWN = ("Zs", "Zl", "Zp", "Cf", "Cc", "Cs", "Cn", "Co")
#: Longest content hash accepted.
MAX_HASH = 128


def normal_label(label: str) -> str:
    """``label`` in the stored form (NFC)."""
    return unicodedata.normalize("NFC", label)


def normal_labels(labels: Sequence[Any]) -> list[str]:
    """Labels to look items up by (remove, search filters, list): each as given and in its stored form."""
    out: dict[str, None] = {}
    for lab in labels:
        if isinstance(lab, str):
            out[lab] = None
            out[normal_label(lab)] = None
    return list(out)


def label_problem(label: object, max_length: int = DEFAULT_MAX_LABEL_LENGTH) -> str | None:
    """Why ``label`` is not a valid gallery label (the rule in the module doc), or ``None`` when it is."""
    if not isinstance(label, str):
        return f"must be a string, not {type(label).__name__}"
    if not label.strip():
        return "must not be empty"
    for ch in label:
        cat = unicodedata.category(ch)
        if cat == "Cc":
            return f"contains the control character U+{ord(ch):04X}"
        if cat == "Cs":
            return f"is not valid Unicode (the lone surrogate U+{ord(ch):04X})"
        if ch in BIDI_CONTROLS:
            return f"contains the bidirectional control U+{ord(ch):04X}"
    label = normal_label(label)
    if len(label) > max_length:
        return f"is {len(label)} characters long, more than the {max_length} allowed"
    if all(unicodedata.category(ch) in _NOT_SHOWN or ch in _INVISIBLE for ch in label):
        return "has no visible character (only spaces, zero-width or format characters)"
    return None


def check_label(label: Any, max_length: int = DEFAULT_MAX_LABEL_LENGTH) -> str:
    """``label`` as stored (NFC), or :class:`LabelError` naming the problem."""
    problem = label_problem(label, max_length)
    if problem:
        raise LabelError(f"invalid label {label!r}: {problem}")
    return normal_label(label)


def metadata_json(m: Any, limit: int | None = None) -> str | None:
    """Item metadata (a dict or ``None``) as stored: JSON text (``None`` stays ``None``)."""
    if m is None:
        return None
    if not isinstance(m, dict):
        raise GalleryError(f"metadata must be a dict or None, not {type(m).__name__}")
    try:
        text = json.dumps(m, ensure_ascii=False, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError, RecursionError) as e:
        raise GalleryError(f"metadata is not JSON-serialisable: {e}") from None
    if limit is not None and len(text.encode("utf-8")) > limit:
        raise GalleryError(f"metadata is longer than {limit} bytes as JSON")
    return text


def check_fields(
    n: int,
    labels: Sequence[Any],
    sources: Sequence[Any] | None,
    metadata: Sequence[Any] | None,
    content_hashes: Sequence[Any] | None,
    max_label_length: int,
    metadata_limit: int | None = None,
) -> tuple[list[str], list[str | None], list[str | None], list[str | None]]:
    """The fields of ``n`` items to add, checked: (labels as stored, sources, metadata JSON, content hashes)."""
    labels = list(labels)
    if len(labels) != n:
        raise GalleryError(f"{n} vectors but {len(labels)} labels")
    stored: dict[str, str] = {}
    out_labels = []
    for label in labels:
        if not (isinstance(label, str) and label in stored):
            stored[label] = check_label(label, max_label_length)
        out_labels.append(stored[label])
    srcs = [None] * n if sources is None else list(sources)
    metas = [None] * n if metadata is None else list(metadata)
    hashes = [None] * n if content_hashes is None else list(content_hashes)
    if len(srcs) != n or len(metas) != n or len(hashes) != n:
        raise GalleryError("sources, metadata and content_hashes must have one entry per vector")
    for s in srcs:
        if s is not None and not isinstance(s, str):
            raise GalleryError(f"source must be a string or None, not {type(s).__name__}")
    for h in hashes:
        if h is not None and not (isinstance(h, str) and 0 < len(h) <= MAX_HASH):
            raise GalleryError(f"content hash must be a non-empty string or None, not {h!r}")
    return out_labels, srcs, [metadata_json(m, metadata_limit) for m in metas], hashes


def check_vectors(vectors: Any, dim: int, binary: bool, normalize: bool, what: str = "vectors") -> np.ndarray:
    """``vectors`` as a C-contiguous ``[n, dim]`` float32 array (``[n, dim / 8]`` uint8 packed bits when
    ``binary``), L2-normalised when ``normalize``; :class:`GalleryError` naming the problem otherwise."""
    arr = np.asarray(vectors)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if binary:
        width = dim // 8
        if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != width:
            raise GalleryError(
                f"{what} must be packed bits, uint8 [n, {width}] for this {dim}-bit hamming gallery; "
                f"got {arr.dtype} {list(arr.shape)}"
            )
        return np.ascontiguousarray(arr)
    if arr.ndim != 2 or arr.shape[1] != dim or not np.issubdtype(arr.dtype, np.number):
        raise GalleryError(f"{what} must be float [n, {dim}]; got {arr.dtype} {list(arr.shape)}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise GalleryError(f"{what} contain NaN or infinite values")
    if normalize:
        arr = arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)
    return arr


#: ``dist_type`` (``IndexProcess.dist_type``) -> the metric stored; ``cosine`` is IP on normalised vectors.
METRICS = {"ip": "IP", "inner_product": "IP", "cosine": "IP", "l2": "L2", "hamming": "hamming"}


def check_settings(dim: Any, dist_type: Any, index_method: Any, hamming_radius: Any) -> tuple[int, str, bool, str, int]:
    """A new gallery's settings, checked: ``(dim, metric, normalize, index_method, hamming_radius)``."""
    metric = METRICS.get(str(dist_type).lower())
    if metric is None:
        raise GalleryError(f"unknown dist_type {dist_type!r}: use IP, L2, hamming or cosine")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or int(dim) <= 0:
        raise GalleryError(f"dim must be a positive integer, not {dim!r}")
    if metric == "hamming" and dim % 8:
        raise GalleryError(f"hamming galleries need dim (in bits) to be a multiple of 8, not {dim}")
    if not isinstance(index_method, str) or not index_method.strip():
        raise GalleryError(f"index_method must be a non-empty string, not {index_method!r}")
    radius = check_radius(hamming_radius)
    if radius is None:
        raise GalleryError("hamming_radius must be a non-negative integer, not None")
    return int(dim), metric, str(dist_type).lower() == "cosine", index_method.strip(), radius


def check_radius(radius: Any) -> int | None:
    """A search's ``hamming_radius``: ``None`` or a non-negative integer."""
    if radius is None:
        return None
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise GalleryError(f"hamming_radius must be a non-negative integer, not {radius!r}")
    return int(radius)


def iso_time(epoch: Any) -> str | None:
    """A gallery's recorded time (seconds since the epoch) as ISO 8601 UTC, as ``info()`` answers it; None when
    not recorded (0 or missing)."""
    from datetime import datetime, timezone

    try:
        seconds = float(epoch)
    except (TypeError, ValueError):
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds") if seconds > 0 else None
