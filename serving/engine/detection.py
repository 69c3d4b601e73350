"""Mainbody detection: where the objects are, class-agnostic.

Two detector output formats are decoded:

- ``paddledet``: PaddleDetection exports as PP-ShiTu ships them. Inputs ``image``, ``scale_factor`` and sometimes
  ``im_shape``; outputs rows ``[class, score, x1, y1, x2, y2]`` in original-image pixels (NMS already done inside
  the graph) plus the number of boxes per image. Those rows are used as the graph gives them (no second NMS), so
  boxes equal PaddleClas's ``predict_det.py`` on the same export; the one intended difference is that boxes are
  clipped to the image (PaddleClas keeps negative coordinates and then fails to crop them).
- ``gfl``: raw GFL heads (NanoDet, the offline default): per stride a score map ``[1, N, classes]`` and a box
  distribution ``[1, N, 4 * (reg_max + 1)]``; decoded here (integral of the softmax per side), then class-agnostic
  NMS (``Global.det_nms_threshold``).

Then ``Global.threshold`` drops weak boxes, ``Global.min_box_size`` / ``Global.min_box_ratio`` drop specks (which
otherwise match random gallery items and crowd the object out of the top-k), ``Global.max_det_results`` keeps the best ones, and the whole image is
appended as one more box when ``Global.append_whole_image`` is on (``"fallback"``: only when no box is left).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shitu.model_spec import ModelSpec
from shitu.serving.engine.boxes import nms
from shitu.serving.engine.predictor import Predictor, PredictorError, RuntimeOptions
from shitu.serving.engine.timing import NULL_TIMER, StageTimer
from shitu.serving.engine.transforms import Transforms
from shitu.serving.results import Detections
from shitu.serving.results.explanation import Explanation


def whole_image_box(height: int, width: int) -> Detections:
    return Detections.from_arrays([[0, 0, width, height]], [1.0], [-1], [True])


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


class GFLDecoder:
    """Decodes raw GFL heads (NanoDet): outputs are picked by shape, not by name."""

    def __init__(
        self,
        input_size: list[int],
        strides: list[int],
        reg_max: int,
        class_names: list[str] | None = None,
        pre_nms_top_k: int = 1000,
        min_score: float = 0.05,
    ):
        self.input_h, self.input_w = int(input_size[0]), int(input_size[1])
        self.strides = [int(s) for s in strides]
        self.reg_max = int(reg_max)
        self.class_names = class_names or []
        self.pre_nms_top_k = pre_nms_top_k
        self.min_score = min_score
        self._centers = {s: self._grid(s) for s in self.strides}

    def _grid(self, stride: int) -> np.ndarray:
        gh, gw = -(-self.input_h // stride), -(-self.input_w // stride)
        rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        return np.stack([(cols.ravel() + 0.5) * stride, (rows.ravel() + 0.5) * stride], axis=1).astype(np.float32)

    def decode(
        self,
        outputs: dict[str, np.ndarray],
        scale_yx: tuple[float, float],
        nms_iou: float,
        min_score: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (xyxy in original pixels, scores, class ids), after class-agnostic NMS.

        ``min_score``: drop cells scoring under it (never under the decoder's own floor) before decoding and NMS.
        Greedy NMS only lets a box be suppressed by better-scored ones, so the boxes at or above ``min_score`` come
        out exactly as without it, for a fraction of the work (most cells score between the floor and
        ``Global.threshold``)."""
        floor = self.min_score if min_score is None else max(self.min_score, float(min_score))
        bins = 4 * (self.reg_max + 1)
        by_len: dict[int, dict[str, np.ndarray]] = {}
        for arr in outputs.values():
            a = arr.reshape(arr.shape[-2], arr.shape[-1]) if arr.ndim == 3 else arr
            kind = "box" if a.shape[-1] == bins else "cls"
            by_len.setdefault(a.shape[0], {})[kind] = a
        boxes_all, scores_all, cls_all = [], [], []
        for stride in self.strides:
            centers = self._centers[stride]
            level = by_len.get(len(centers))
            if not level or "box" not in level or "cls" not in level:
                raise PredictorError(f"GFL decoder: no score/box outputs with {len(centers)} cells for stride {stride}")
            cls_scores, dist = level["cls"], level["box"]
            best = cls_scores.max(axis=1)
            idx = np.nonzero(best >= floor)[0]
            if idx.size == 0:
                continue
            prob = _softmax(dist[idx].reshape(-1, 4, self.reg_max + 1).astype(np.float32))
            d = (prob * np.arange(self.reg_max + 1, dtype=np.float32)).sum(-1) * stride  # l, t, r, b
            c = centers[idx]
            boxes_all.append(np.stack([c[:, 0] - d[:, 0], c[:, 1] - d[:, 1], c[:, 0] + d[:, 2], c[:, 1] + d[:, 3]], 1))
            scores_all.append(best[idx])
            cls_all.append(cls_scores[idx].argmax(axis=1))
        if not boxes_all:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)
        boxes = np.concatenate(boxes_all)
        scores = np.concatenate(scores_all).astype(np.float32)
        classes = np.concatenate(cls_all).astype(np.int32)
        if len(scores) > self.pre_nms_top_k:
            top = np.argpartition(-scores, self.pre_nms_top_k)[: self.pre_nms_top_k]
            boxes, scores, classes = boxes[top], scores[top], classes[top]
        keep = nms(boxes, scores, nms_iou)
        sy, sx = scale_yx
        boxes = boxes[keep] / np.array([sx, sy, sx, sy], np.float32)
        return boxes.astype(np.float32), scores[keep], classes[keep]


class MainbodyDetector:
    """Image -> :class:`Detections` (class-agnostic boxes)."""

    def __init__(self, spec: ModelSpec, options: RuntimeOptions = RuntimeOptions(), predictor: Predictor | None = None):
        if spec.kind != "detector":
            raise ValueError(f"{spec.model_dir} is a {spec.kind}, not a detector")
        self.spec = spec
        self.transforms = Transforms(spec.transform_ops, spec.input_color)
        self.predictor = predictor or Predictor(spec, options)
        if spec.decoder == "gfl":
            args = dict(spec.decoder_args)
            self._gfl: GFLDecoder | None = GFLDecoder(
                args.get("input_size", [416, 416]),
                args.get("strides", [8, 16, 32]),
                args.get("reg_max", 7),
                args.get("class_names"),
            )
        else:
            self._gfl = None

    def raw(
        self,
        image_bgr: np.ndarray,
        nms_iou: float = 0.5,
        timer: StageTimer = NULL_TIMER,
        min_score: float | None = None,
    ) -> Detections:
        """Every box the model finds (after its NMS), before threshold / top-k / whole-image box.

        ``nms_iou`` and ``min_score`` (boxes under it need not be decoded: :meth:`GFLDecoder.decode`) are used by
        the ``gfl`` decoder only: a PaddleDetection export has run its own NMS.
        """
        with timer.stage("det_preprocess"):
            sample = self.transforms(image_bgr)
            x = sample.image[None]
        names = self.predictor.input_names
        if self._gfl is not None:
            with timer.stage("det_forward"):
                outputs = self.predictor.run({names[0]: x})
            with timer.stage("det_postprocess"):
                xyxy, scores, classes = self._gfl.decode(outputs, sample.scale_factor, nms_iou, min_score)
        else:
            feed: dict[str, np.ndarray] = {}
            for name in names:
                if name == "scale_factor":
                    feed[name] = np.array([sample.scale_factor], np.float32)
                elif name == "im_shape":
                    feed[name] = np.array([x.shape[2:]], np.float32)
                else:
                    feed[name] = x
            with timer.stage("det_forward"):
                outputs = self.predictor.run(feed)
            with timer.stage("det_postprocess"):
                xyxy, scores, classes = _decode_paddledet(outputs)  # the graph's own NMS, no second pass
        h, w = sample.orig_shape
        xyxy = np.clip(xyxy, 0, [w, h, w, h]).astype(np.float32)
        return Detections.from_arrays(xyxy, scores, classes)

    def detect(
        self, image_bgr: np.ndarray, params: Any, timer: StageTimer = NULL_TIMER, explanation: Explanation | None = None
    ) -> Detections:
        """Boxes as ``Global.threshold``, ``Global.max_det_results``, ``Global.append_whole_image`` say."""
        # an explanation shows the boxes under Global.threshold too; otherwise they need not be decoded
        floor = None if explanation is not None else params["Global.threshold"]
        det = self.raw(image_bgr, params["Global.det_nms_threshold"], timer, floor)
        with timer.stage("det_postprocess"):
            return select_boxes(det, image_bgr.shape[0], image_bgr.shape[1], params, explanation)


def select_boxes(
    det: Detections, height: int, width: int, params: Any, explanation: Explanation | None = None
) -> Detections:
    """Apply threshold, minimum size, top-k and the whole-image box to raw detections.

    ``Global.append_whole_image``: ``True`` appends the whole-image box, ``"fallback"`` only when no detector box
    is left (the pipeline also searches it when no detected box gives an accepted match). ``explanation``, when
    given, records which filter dropped each box.
    """
    low = det.scores < params["Global.threshold"]
    side = (det.xyxy[:, 2:] - det.xyxy[:, :2]).min(axis=1)
    small = (side < params["Global.min_box_size"]) | (side < params["Global.min_box_ratio"] * min(height, width))
    passed = np.nonzero(~low & ~small)[0]
    order = passed[np.argsort(-det.scores[passed], kind="stable")]
    top = order[: params["Global.max_det_results"]]
    if explanation is not None:
        explanation.detector_filters(det, low, small, order[len(top) :])
    det = det[top]
    whole = params["Global.append_whole_image"]
    if whole is True or (whole == "fallback" and len(det) == 0):
        det = det.concat(whole_image_box(height, width))
    return det


def _decode_paddledet(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PaddleDetection's ``[class, score, x1, y1, x2, y2]`` rows (and a box-count output) -> arrays."""
    rows = None
    count = None
    for arr in outputs.values():
        if arr.ndim == 2 and arr.shape[1] == 6:
            rows = arr
        elif arr.ndim == 1 and arr.dtype.kind in "iu":
            count = int(arr[0]) if arr.size else 0
    if rows is None:
        shapes = {k: v.shape for k, v in outputs.items()}
        raise PredictorError(f"paddledet decoder: no [N, 6] box output among {shapes}")
    if count is not None:
        rows = rows[:count]
    rows = rows[rows[:, 0] >= 0]  # PaddleDetection pads with class -1 when nothing is found
    return rows[:, 2:6].astype(np.float32), rows[:, 1].astype(np.float32), rows[:, 0].astype(np.int32)
