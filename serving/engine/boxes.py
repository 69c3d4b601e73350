"""Greedy NMS on ``[x1, y1, x2, y2]`` boxes, for detection and rec-NMS; the IoU is the house's one
(:func:`shitu.serving.results.types.pairwise_iou`, shared with explanations and the video tracker).

Kept here rather than taken from supervision (``box_non_max_suppression``): the engine must not need supervision,
and this is a short numpy loop.
"""

from __future__ import annotations

import numpy as np

from shitu.serving.results.types import pairwise_iou as iou


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
