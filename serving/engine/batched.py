"""Recognition of several images in one call: detection per image, the crops of *all* images through the
recogniser together.

:func:`shitu.serving.engine.pipeline.recognize` embeds one image's boxes at a time, so a request of 8 images with
two boxes each ran 8 forward passes of 2 crops. Here the crops of every image go through
``FeatureExtractor.embed`` in one call (``Global.batch_size`` crops per forward pass) and through one gallery
search; then each image's boxes are filtered, fall back to the whole image (``Global.append_whole_image:
fallback``, again batched over the images that need it) and pass rec-NMS on their own. The answers are those of
the one-image pipeline (same boxes, labels and ids; scores equal up to float rounding of batched forwards).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shitu.serving.engine.detection import MainbodyDetector, whole_image_box
from shitu.serving.engine.extraction import FeatureExtractor
from shitu.serving.engine.framing import Framing, fill_colour, frame_box
from shitu.serving.engine.pipeline import (
    CANDIDATE_DEPTH,
    SearchIndex,
    collect,
    falls_back,
    rec_nms,
    recognize,
    search_options,
)
from shitu.serving.engine.results import Detections, Recognition
from shitu.serving.engine.timing import NULL_TIMER, StageTimer

__all__ = ["recognize_many"]


def recognize_many(
    images: Sequence[np.ndarray],
    detector: MainbodyDetector,
    extractor: FeatureExtractor,
    index: SearchIndex,
    params: Any,
    timer: StageTimer = NULL_TIMER,
) -> list[list[Recognition]]:
    """Everything recognised in each BGR image of ``images``, best first per image."""
    if len(images) <= 1:
        return [recognize(img, detector, extractor, index, params, timer) for img in images]
    dets = [detector.detect(img, params, timer) for img in images]
    found: list[list[Recognition]] = [[] for _ in images]
    _search_all(images, dets, extractor, index, params, timer, found)
    setting = params["Global.append_whole_image"]
    again = [i for i, det in enumerate(dets) if falls_back(setting, found[i], det)]
    if again:
        _search_all(
            [images[i] for i in again],
            [whole_image_box(*images[i].shape[:2]) for i in again],
            extractor,
            index,
            params,
            timer,
            [found[i] for i in again],
        )
    with timer.stage("rec_nms"):
        return [
            rec_nms(f, params["Global.rec_nms_thresold"], index.higher_is_better, params["Global.rec_nms_per_label"])
            for f in found
        ]


def _search_all(
    images: Sequence[np.ndarray],
    dets: Sequence[Detections],
    extractor: FeatureExtractor,
    index: SearchIndex,
    params: Any,
    timer: StageTimer,
    found: list[list[Recognition]],
) -> None:
    """Embed the boxes of every image in one call, search them in one call; append each image's accepted best
    matches to its list in ``found``."""
    with timer.stage("crop"):
        framing, fill = Framing.of(params), fill_colour(extractor.spec.transform_ops)
        crops = [
            frame_box(img, box, whole, framing, fill)
            for img, det in zip(images, dets)
            for box, whole in zip(det.xyxy, det.is_whole_image)
        ]
    if not crops:
        return
    feats = extractor.embed(crops, params, timer)
    with timer.stage("search"):
        matches = index.search(
            feats, max(1, params["IndexProcess.candidates"] * CANDIDATE_DEPTH), **search_options(index, params)
        )
    start = 0
    for det, out in zip(dets, found):
        n = len(det)
        if n:
            collect(det, matches[start : start + n], 1, index, params, timer, None, out, [])
        start += n
