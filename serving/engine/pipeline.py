"""The recognition pipeline, one image at a time: detect -> crop -> extract -> search -> filter -> rec-NMS.

Stages, with the PP-ShiTu parameters that steer them:

1. **detect** -- mainbody boxes (``Global.threshold``, ``Global.max_det_results``, ``Global.append_whole_image``);
2. **extract** -- one embedding per box, ``Global.batch_size`` crops per forward pass;
3. **search** -- the best gallery match per box (``IndexProcess.labels`` restricts the labels searched);
4. **filter** -- ``IndexProcess.score_thres``, respecting the metric: for IP a score must be *at least* the threshold,
   for L2 / hamming a distance must be *at most* it;
5. **rec-NMS** -- among recognised boxes, a box overlapping a better-scoring one by more than
   ``Global.rec_nms_thresold`` (IoU) is dropped;
6. results ordered best first.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from shitu.serving.engine.detection import MainbodyDetector, nms
from shitu.serving.engine.extraction import FeatureExtractor, crop
from shitu.serving.engine.results import Match, Recognition
from shitu.serving.engine.timing import NULL_TIMER, StageTimer


class SearchIndex(Protocol):
    """What the pipeline needs from a gallery (``shitu.serving.gallery.local.Gallery`` is the real one)."""

    higher_is_better: bool

    def search(self, queries: np.ndarray, k: int = 5, labels: list[str] | None = None) -> list[list[Match]]: ...


def search_options(index: SearchIndex, params: Any) -> dict[str, Any]:
    """Keyword arguments of ``index.search`` from the request: ``IndexProcess.labels``, and for hamming galleries
    ``IndexProcess.hamming_radius`` (the largest distance searched, per request)."""
    options: dict[str, Any] = {"labels": params["IndexProcess.labels"]}
    if getattr(index, "metric", None) == "hamming":
        options["hamming_radius"] = params["IndexProcess.hamming_radius"]
    return options


def accepts(score: float, threshold: float, higher_is_better: bool) -> bool:
    """``IndexProcess.score_thres`` for either metric direction."""
    return score >= threshold if higher_is_better else score <= threshold


def rec_nms(recognitions: list[Recognition], iou_threshold: float, higher_is_better: bool) -> list[Recognition]:
    """Drop recognised boxes that overlap a better match by more than ``iou_threshold``; best first."""
    if not recognitions:
        return []
    xyxy = np.array([r.bbox for r in recognitions], np.float32)
    scores = np.array([r.score for r in recognitions], np.float32)
    keep = nms(xyxy, scores if higher_is_better else -scores, iou_threshold)
    return [recognitions[i] for i in keep]


def recognize(image: np.ndarray, detector: MainbodyDetector, extractor: FeatureExtractor, index: SearchIndex,
              params: Any, timer: StageTimer = NULL_TIMER) -> list[Recognition]:
    """Everything recognised in one BGR image, best first."""
    det = detector.detect(image, params, timer)
    if len(det) == 0:
        return []
    with timer.stage("crop"):
        crops = [crop(image, box) for box in det.xyxy]
    feats = extractor.embed(crops, params, timer)
    with timer.stage("search"):
        matches = index.search(feats, 1, **search_options(index, params))
    with timer.stage("rec_nms"):
        thres = params["IndexProcess.score_thres"]
        found = []
        for i, hits in enumerate(matches):
            if not hits or not accepts(hits[0].score, thres, index.higher_is_better):
                continue
            best = hits[0]
            found.append(Recognition(
                bbox=[int(round(v)) for v in det.xyxy[i]],
                label=best.label,
                score=float(best.score),
                det_score=float(det.scores[i]),
                is_whole_image=bool(det.is_whole_image[i]),
                id=best.id,
            ))
        return rec_nms(found, params["Global.rec_nms_thresold"], index.higher_is_better)
