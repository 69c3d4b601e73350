"""Result types shared by every layer: the engine returns them, the modules and the client serialise them.

- :class:`Detections` -- numpy-backed boxes of one image (like supervision's ``Detections``).
- :class:`Match` -- one gallery hit for one embedding (what every gallery backend's ``search`` returns).
- :class:`Recognition` -- one recognised object: where (``bbox``), what (``label``), how sure (``score``).

This module imports only numpy, so the client SDK can use it without paddle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Detections", "Match", "Recognition", "pairwise_iou"]


@dataclass
class Match:
    """One gallery hit: item ``id``, its ``label`` and the raw metric ``score`` (IP: similarity; L2/hamming: distance)."""

    id: int
    label: str
    score: float
    source: str | None = None
    metadata: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score"] = round(float(self.score), 6)
        return d


@dataclass
class Detections:
    """Boxes found in one image, as parallel numpy arrays.

    ``xyxy`` is ``float32 [N, 4]`` in original-image pixels; ``scores`` ``float32 [N]``; ``class_ids`` ``int32 [N]``
    (the detector's class, -1 for the whole-image box); ``is_whole_image`` ``bool [N]``.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    is_whole_image: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(0, bool))

    @classmethod
    def from_arrays(cls, xyxy: Any, scores: Any, class_ids: Any = None, is_whole_image: Any = None) -> Detections:
        xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
        n = len(xyxy)
        return cls(
            xyxy,
            np.asarray(scores, np.float32).reshape(n),
            np.zeros(n, np.int32) if class_ids is None else np.asarray(class_ids, np.int32).reshape(n),
            np.zeros(n, bool) if is_whole_image is None else np.asarray(is_whole_image, bool).reshape(n),
        )

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: Any) -> Detections:
        """Index, slice or boolean mask -> a new :class:`Detections`."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(self.xyxy[index], self.scores[index], self.class_ids[index], self.is_whole_image[index])

    def concat(self, other: Detections) -> Detections:
        return Detections(
            np.concatenate([self.xyxy, other.xyxy]),
            np.concatenate([self.scores, other.scores]),
            np.concatenate([self.class_ids, other.class_ids]),
            np.concatenate([self.is_whole_image, other.is_whole_image]),
        )

    def to_list(self) -> list[dict[str, Any]]:
        """Plain JSON-ready dicts: ``{"bbox", "score", "class_id", "is_whole_image"}``."""
        return [
            {
                "bbox": [int(round(v)) for v in box],
                "score": round(float(s), 6),
                "class_id": int(c),
                "is_whole_image": bool(w),
            }
            for box, s, c, w in zip(self.xyxy, self.scores, self.class_ids, self.is_whole_image)
        ]


@dataclass
class Recognition:
    """One recognised object of an image."""

    bbox: list[int]
    label: str
    score: float
    det_score: float
    is_whole_image: bool = False
    #: Gallery item id of the best match (``None`` when unknown, e.g. from an older server).
    id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "bbox": [int(v) for v in self.bbox],
            "label": self.label,
            "score": round(float(self.score), 6),
            "det_score": round(float(self.det_score), 6),
            "is_whole_image": bool(self.is_whole_image),
        }
        if self.id is not None:
            d["id"] = int(self.id)
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recognition:
        known = {"bbox", "label", "score", "det_score", "is_whole_image", "id"}
        return cls(
            bbox=[int(v) for v in d["bbox"]],
            label=str(d["label"]),
            score=float(d["score"]),
            det_score=float(d.get("det_score", 0.0)),
            is_whole_image=bool(d.get("is_whole_image", False)),
            id=d.get("id"),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def __str__(self) -> str:
        where = "whole image" if self.is_whole_image else f"[{', '.join(map(str, self.bbox))}]"
        return f"{self.label} {self.score:.3f} at {where}"


def pairwise_iou(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """IoU of every box of ``a`` ``[n, 4]`` with every box of ``b`` ``[m, 4]`` (xyxy) -> ``[n, m]``; the one IoU of the
    house (rec-NMS, explanations, the video tracker)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
