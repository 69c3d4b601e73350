"""How far an int8 engine's answers are from the fp32 engine's, on held-out images; and the bounds a version must meet.

Every figure compares the *same* pipeline (the pack's parameters, pre-processing, decoding, pooling) with only the
forwards swapped, so a difference is the quantization's:

- **features**: cosine between the fp32 and int8 embeddings of the same crops (the fp32 detector's boxes);
- **boxes**: each fp32 box matched to the int8 box of highest IoU (``boxes_matched``: the share matched at IoU >=
  :data:`MATCH_IOU`), and the share of images with as many boxes in both;
- **labels**: the nearest neighbour of each crop among the reference images (embedded by fp32, as a gallery built
  before quantizing is), found with the fp32 and with the int8 query: the share that agree;
- **speed**: detection + embedding of each image, fp32 and int8 interleaved, median ms (and the ratio).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shitu.serving.results.types import pairwise_iou

__all__ = ["BOUNDS", "MATCH_IOU", "Agreement", "capture_inputs", "compare", "shortfalls"]

#: IoU at which an int8 box counts as the fp32 box found again.
MATCH_IOU = 0.9
#: Lower bounds a quantized version must meet (``shitu plugins quantize`` refuses to install one below them).
BOUNDS = {"feature_cos_median": 0.99, "label_agreement": 0.98, "boxes_matched": 0.95}


@dataclass
class Agreement:
    images: int
    crops: int
    feature_cos_median: float
    feature_cos_min: float
    boxes_matched: float
    box_iou_median: float
    box_count_agreement: float
    label_agreement: float
    ms_fp32: float
    ms_int8: float

    @property
    def speedup(self) -> float:
        return self.ms_fp32 / self.ms_int8 if self.ms_int8 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "speedup": round(self.speedup, 3)}


def shortfalls(agreement: Agreement, bounds: dict[str, float] | None = None) -> list[str]:
    """``"<figure> <value> < <bound>"`` for each bound the agreement misses (empty: it meets them all)."""
    got = asdict(agreement)
    return [f"{k} {got[k]:.4f} < {v}" for k, v in (BOUNDS if bounds is None else bounds).items() if got[k] < v]


def capture_inputs(engine: Any, images: Sequence[np.ndarray], limit: int = 256) -> dict[str, list[np.ndarray]]:
    """The input tensors ``engine``'s detector and recogniser get for ``images`` through the real pipeline
    (detection, then the crops of the kept boxes), one sample per image or crop, at most ``limit`` per model."""
    samples: dict[str, list[np.ndarray]] = {"det": [], "rec": []}
    hooked = (("det", engine.detector.predictor), ("rec", engine.extractor.predictor))
    originals = [(p, p.run) for _, p in hooked]
    for kind, predictor in hooked:

        def run(inputs: dict[str, np.ndarray], _run: Any = predictor.run, _kind: str = kind) -> dict[str, np.ndarray]:
            for row in next(iter(inputs.values())):
                if len(samples[_kind]) < limit:
                    samples[_kind].append(row[None].copy())
            return _run(inputs)

        predictor.run = run
    try:
        for image in images:
            boxes = engine.detect([image])[0]
            engine.extract([image], [boxes.xyxy.tolist()])
    finally:
        for predictor, original in originals:
            predictor.run = original
    return samples


def compare(
    fp32: Any, int8: Any, held_out: Sequence[np.ndarray], reference: Sequence[np.ndarray], rounds: int = 1
) -> Agreement:
    """fp32 vs int8 engines (same pack, forwards swapped) on ``held_out``; ``reference``: the gallery images."""
    ref = fp32.embed(list(reference)) if reference else np.zeros((0, 1), np.float32)
    cos: list[float] = []
    ious: list[float] = []
    matched = counts = same_label = crops = 0
    n_boxes = 0
    t32: list[float] = []
    t8: list[float] = []
    for image in held_out:
        for _ in range(rounds):  # interleaved, so load on the machine costs both the same
            for engine, times in ((fp32, t32), (int8, t8)):
                start = time.perf_counter()
                engine.extract([image], [engine.detect([image])[0].xyxy.tolist()])
                times.append(time.perf_counter() - start)
        a, b = fp32.detect([image])[0].xyxy, int8.detect([image])[0].xyxy
        counts += len(a) == len(b)
        if len(a):
            best = pairwise_iou(a, b).max(axis=1) if len(b) else np.zeros(len(a))
            ious.extend(best.tolist())
            matched += int((best >= MATCH_IOU).sum())
            n_boxes += len(a)
        boxes = [np.asarray(a).tolist()] if len(a) else None
        e32, e8 = fp32.extract([image], boxes)[0], int8.extract([image], boxes)[0]
        cos.extend(
            np.sum(e32 * e8, axis=1) / np.maximum(np.linalg.norm(e32, axis=1) * np.linalg.norm(e8, axis=1), 1e-12)
        )
        crops += len(e32)
        if len(ref):
            same_label += int(((e32 @ ref.T).argmax(axis=1) == (e8 @ ref.T).argmax(axis=1)).sum())
    return Agreement(
        images=len(held_out),
        crops=crops,
        feature_cos_median=float(np.median(cos)) if cos else 0.0,
        feature_cos_min=float(np.min(cos)) if cos else 0.0,
        boxes_matched=matched / n_boxes if n_boxes else 1.0,
        box_iou_median=float(np.median(ious)) if ious else 1.0,
        box_count_agreement=counts / len(held_out) if held_out else 0.0,
        label_agreement=same_label / crops if crops and len(ref) else 1.0,
        ms_fp32=statistics.median(t32) * 1e3 if t32 else 0.0,
        ms_int8=statistics.median(t8) * 1e3 if t8 else 0.0,
    )
