"""The recognition pipeline for 1..n images: detect -> crop -> extract -> search -> filter -> rec-NMS.

Detection runs per image; the crops of *all* images go through ``FeatureExtractor.embed`` in one call
(``Global.batch_size`` crops per forward pass) and through one gallery search, so a request of 8 images with two
boxes each runs one batched pass, not 8. Then each image's boxes are filtered, fall back to the whole image
(again batched over the images that need it) and pass rec-NMS on their own: the answers do not depend on which
images came together (scores equal up to float rounding of batched forwards). An optional explanation sink (one
:class:`~.explain.Explanation` per image) records every stage's view.

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

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from shitu.params import Params
from shitu.serving.engine.boxes import nms
from shitu.serving.engine.detection import MainbodyDetector, whole_image_box
from shitu.serving.engine.extraction import FeatureExtractor
from shitu.serving.engine.framing import Framing, fill_colour, frame_box
from shitu.serving.engine.timing import NULL_TIMER, StageTimer
from shitu.serving.results import Detections, Match, Recognition
from shitu.serving.results.explanation import Explanation


class SearchIndex(Protocol):
    """What the pipeline needs from a gallery (``shitu.serving.gallery.local.Gallery`` is the real one)."""

    higher_is_better: bool

    def search(self, queries: np.ndarray, k: int = 5, labels: list[str] | None = None) -> list[list[Match]]: ...


def search_options(index: SearchIndex, params: Params) -> dict[str, Any]:
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
    images: Sequence[np.ndarray],
    detector: MainbodyDetector,
    extractor: FeatureExtractor,
    index: SearchIndex,
    params: Params,
    timer: StageTimer = NULL_TIMER,
    explanations: Sequence[Explanation] | None = None,
) -> list[list[Recognition]]:
    """Everything recognised in each BGR image of ``images``, best first per image.

    With ``Global.append_whole_image: fallback`` an image's whole frame is embedded and searched only when none of
    its detected boxes gave an accepted match. ``explanations`` (one per image), when given, are filled with every
    stage's view (see :mod:`.explain`).
    """
    if explanations is not None and len(explanations) != len(images):
        raise ValueError(f"{len(images)} images but {len(explanations)} explanations")
    notes: Sequence[Explanation | None] = explanations if explanations is not None else [None] * len(images)
    dets = [detector.detect(img, params, timer, note) for img, note in zip(images, notes)]
    runs = [_Run(img, det, note) for img, det, note in zip(images, dets, notes)]
    _search(runs, [r.det for r in runs], extractor, index, params, timer)
    setting = params["Global.append_whole_image"]
    again = [r for r in runs if falls_back(setting, r.found, r.det)]
    _search(again, [whole_image_box(*r.image.shape[:2]) for r in again], extractor, index, params, timer)
    thres, per_label = params["Global.rec_nms_thresold"], params["Global.rec_nms_per_label"]
    out = []
    for r in runs:
        if r.note is not None:
            r.note.whole_image = _whole_image_note(setting, any(r is a for a in again), r.det)
        with timer.stage("rec_nms"):
            kept = rec_nms(r.found, thres, index.higher_is_better, per_label)
            if r.note is not None:
                r.note.rec_nms(r.found, r.searched, kept, thres, index.higher_is_better, per_label)
        out.append(kept)
    return out


class _Run:
    """One image on its way through the pipeline: its detections, what it found, its explanation sink."""

    def __init__(self, image: np.ndarray, det: Detections, note: Explanation | None):
        self.image, self.det, self.note = image, det, note
        self.found: list[Recognition] = []
        self.searched: list[int] = []  # explanation index of each found recognition


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
    runs: Sequence[_Run],
    dets: Sequence[Detections],
    extractor: FeatureExtractor,
    index: SearchIndex,
    params: Params,
    timer: StageTimer,
) -> None:
    """Embed the boxes ``dets`` of every run in one call, search them in one call; append each run's accepted
    best matches to its ``found`` (and every searched box to its explanation)."""
    with timer.stage("crop"):
        framing, fill = Framing.of(params), fill_colour(extractor.spec.transform_ops)
        crops = [
            frame_box(r.image, box, whole, framing, fill)
            for r, det in zip(runs, dets)
            for box, whole in zip(det.xyxy, det.is_whole_image)
        ]
    if not crops:
        return
    feats = extractor.embed(crops, params, timer)
    explaining = any(r.note is not None for r in runs)
    k = min(params["IndexProcess.return_k"], params["Limits.max_explain_matches"]) if explaining else 1
    with timer.stage("search"):
        matches = index.search(
            feats, max(k, params["IndexProcess.candidates"] * CANDIDATE_DEPTH), **search_options(index, params)
        )
    start = 0
    for r, det in zip(runs, dets):
        if len(det):
            _collect(r, det, matches[start : start + len(det)], k, index.higher_is_better, params, timer)
        start += len(det)


def _collect(
    run: _Run,
    det: Detections,
    matches: list[list[Match]],
    k: int,
    higher_is_better: bool,
    params: Params,
    timer: StageTimer,
) -> None:
    """Append to ``run.found`` a recognition per box of ``det`` whose best match (``matches``, one row per box)
    passes ``IndexProcess.score_thres``; ``k`` hits per box go to the explanation."""
    thres = params["IndexProcess.score_thres"]
    note = run.note
    with timer.stage("rec_nms"):  # the score_thres filter, timed with rec-NMS as before
        for i, hits in enumerate(matches):
            ok = bool(hits) and accepts(hits[0].score, thres, higher_is_better)
            at = -1
            if note is not None:
                at = note.searched_box(
                    det.xyxy[i], det.scores[i], det.is_whole_image[i], hits[:k], ok, higher_is_better
                )
            if not ok:
                continue
            best = hits[0]
            run.found.append(
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
            run.searched.append(at)
