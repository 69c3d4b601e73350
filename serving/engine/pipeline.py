"""The recognition pipeline, one image at a time: detect -> crop -> extract -> search -> filter -> rec-NMS.

Stages, with the PP-ShiTu parameters that steer them:

1. **detect** -- mainbody boxes (``Global.threshold``, ``Global.max_det_results``, ``Global.append_whole_image``;
   its ``fallback`` value searches the whole image only when no detected box gives an accepted match);
2. **extract** -- one embedding per box, ``Global.batch_size`` crops per forward pass;
3. **search** -- the best gallery match per box (``IndexProcess.labels`` restricts the labels searched);
4. **filter** -- ``IndexProcess.score_thres``, respecting the metric: for IP a score must be *at least* the threshold,
   for L2 / hamming a distance must be *at most* it;
5. **rec-NMS** -- among recognised boxes, a box overlapping a better-scoring one by more than
   ``Global.rec_nms_thresold`` (IoU) is dropped (with ``Global.rec_nms_per_label`` only by a box of the same label);
6. results ordered best first.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from shitu.serving.engine.detection import MainbodyDetector, nms, whole_image_box
from shitu.serving.engine.explain import Explanation
from shitu.serving.engine.extraction import FeatureExtractor
from shitu.serving.engine.framing import Framing, fill_colour, frame_box
from shitu.serving.engine.results import Detections, Match, Recognition
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


def accepted_matches(rows: list[list[Match]], threshold: float, higher_is_better: bool) -> list[list[Match]]:
    """The matches of each row that pass ``IndexProcess.score_thres``: one rule for ``Engine.search``, the
    recognition pipeline and ``shitu gallery search``."""
    return [[m for m in row if accepts(m.score, threshold, higher_is_better)] for row in rows]


#: Gallery items fetched per candidate label asked for (several items may share a label).
CANDIDATE_DEPTH = 3


def candidates(hits: list[Match], n: int) -> dict[str, Any]:
    """``{"candidates": [{"label", "score"}, ...]}``: the ``n`` best labels among ``hits`` (best item of each), so a
    caller sees the margin between the answer and the runner-up (``IndexProcess.candidates``); ``{}`` when 0."""
    if n <= 0:
        return {}
    best: dict[str, float] = {}
    for m in hits:
        best.setdefault(m.label, float(m.score))
    return {"candidates": [{"label": lab, "score": round(sc, 6)} for lab, sc in list(best.items())[:n]]}


def rec_nms(
    recognitions: list[Recognition], iou_threshold: float, higher_is_better: bool, per_label: bool = False
) -> list[Recognition]:
    """Drop recognised boxes that overlap a better match by more than ``iou_threshold``; best first.

    ``per_label`` (``Global.rec_nms_per_label``): only boxes recognised with the same label suppress each other.
    """
    if not recognitions:
        return []
    xyxy = np.array([r.bbox for r in recognitions], np.float32)
    scores = np.array([r.score for r in recognitions], np.float32)
    key = scores if higher_is_better else -scores
    if not per_label:
        return [recognitions[i] for i in nms(xyxy, key, iou_threshold)]
    keep: list[int] = []
    for label in dict.fromkeys(r.label for r in recognitions):
        group = np.array([i for i, r in enumerate(recognitions) if r.label == label], np.int64)
        keep.extend(int(group[k]) for k in nms(xyxy[group], key[group], iou_threshold))
    keep.sort()
    keep.sort(key=lambda i: -key[i])  # best first; ties in input order, as nms does
    return [recognitions[i] for i in keep]


def recognize(
    image: np.ndarray,
    detector: MainbodyDetector,
    extractor: FeatureExtractor,
    index: SearchIndex,
    params: Any,
    timer: StageTimer = NULL_TIMER,
    explanation: Explanation | None = None,
) -> list[Recognition]:
    """Everything recognised in one BGR image, best first.

    With ``Global.append_whole_image: fallback`` the whole image is embedded and searched only when no detected box
    gave an accepted match. ``explanation``, when given, is filled with every stage's view (see :mod:`.explain`).
    """
    det = detector.detect(image, params, timer, explanation)
    found: list[Recognition] = []
    searched: list[int] = []  # explanation index of each found recognition
    _search(image, det, extractor, index, params, timer, explanation, found, searched)
    setting = params["Global.append_whole_image"]
    fall_back = falls_back(setting, found, det)
    if fall_back:
        _search(image, whole_image_box(*image.shape[:2]), extractor, index, params, timer, explanation, found, searched)
    if explanation is not None:
        explanation.whole_image = _whole_image_note(setting, fall_back, det)
    with timer.stage("rec_nms"):
        kept = rec_nms(
            found, params["Global.rec_nms_thresold"], index.higher_is_better, params["Global.rec_nms_per_label"]
        )
        if explanation is not None:
            explanation.rec_nms(
                found,
                searched,
                kept,
                params["Global.rec_nms_thresold"],
                index.higher_is_better,
                params["Global.rec_nms_per_label"],
            )
        return kept


def falls_back(setting: Any, found: list[Recognition], det: Detections) -> bool:
    """``Global.append_whole_image: fallback``: search the whole image, as no detected box was accepted."""
    return setting == "fallback" and not found and len(det) > 0 and not det.is_whole_image.any()


def _whole_image_note(setting: Any, fell_back: bool, det: Detections) -> str:
    """What ``Global.append_whole_image`` did, for the explanation."""
    if setting != "fallback":
        return "appended" if setting else "off"
    if fell_back:
        return "fallback: searched (no detected box was accepted)"
    if det.is_whole_image.any():
        return "fallback: searched (no detected box)"
    return "fallback: not needed"


def _search(
    image: np.ndarray,
    det: Detections,
    extractor: FeatureExtractor,
    index: SearchIndex,
    params: Any,
    timer: StageTimer,
    explanation: Explanation | None,
    found: list[Recognition],
    searched: list[int],
) -> None:
    """Embed and search the boxes ``det``; append accepted best matches to ``found``."""
    if len(det) == 0:
        return
    with timer.stage("crop"):
        framing, fill = Framing.of(params), fill_colour(extractor.spec.transform_ops)
        crops = [frame_box(image, box, whole, framing, fill) for box, whole in zip(det.xyxy, det.is_whole_image)]
    feats = extractor.embed(crops, params, timer)
    with timer.stage("search"):
        k = min(params["IndexProcess.return_k"], params["Limits.max_explain_matches"]) if explanation is not None else 1
        matches = index.search(
            feats, max(k, params["IndexProcess.candidates"] * CANDIDATE_DEPTH), **search_options(index, params)
        )
    collect(det, matches, k, index, params, timer, explanation, found, searched)


def collect(
    det: Detections,
    matches: list[list[Match]],
    k: int,
    index: SearchIndex,
    params: Any,
    timer: StageTimer,
    explanation: Explanation | None,
    found: list[Recognition],
    searched: list[int],
) -> None:
    """Append to ``found`` a recognition per box of ``det`` whose best match (``matches``, one row per box)
    passes ``IndexProcess.score_thres``; ``k`` hits per box go to the explanation."""
    thres = params["IndexProcess.score_thres"]
    with timer.stage("rec_nms"):  # the score_thres filter, timed with rec-NMS as before
        for i, hits in enumerate(matches):
            ok = bool(hits) and accepts(hits[0].score, thres, index.higher_is_better)
            if explanation is not None:
                at = explanation.searched_box(
                    det.xyxy[i], det.scores[i], det.is_whole_image[i], hits[:k], ok, index.higher_is_better
                )
            if not ok:
                continue
            best = hits[0]
            found.append(
                Recognition(
                    bbox=[int(round(v)) for v in det.xyxy[i]],
                    label=best.label,
                    score=float(best.score),
                    det_score=float(det.scores[i]),
                    is_whole_image=bool(det.is_whole_image[i]),
                    id=best.id,
                    extra=candidates(hits, params["IndexProcess.candidates"]),
                )
            )
            if explanation is not None:
                searched.append(at)
