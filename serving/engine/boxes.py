"""Box geometry shared by detection, rec-NMS and explanations: IoU and greedy NMS on ``[x1, y1, x2, y2]`` boxes.

Kept here rather than taken from supervision (``box_iou_batch``, ``box_non_max_suppression``): the engine must not
need supervision, and these are two numpy expressions.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def iou(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """IoU of every box of ``a`` ``[n, 4]`` with every box of ``b`` ``[m, 4]`` -> ``[n, m]`` (0: both empty)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first (ties in input order)."""
    if len(xyxy) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[iou(xyxy[i], xyxy[rest])[0] <= iou_threshold]
    return np.asarray(keep, np.int64)
