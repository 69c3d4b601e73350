"""Why an answer came out as it did: every stage's view of one image (``explain`` in requests, ``--explain``).

An :class:`Explanation` is built only when asked for (the pipeline gets ``explanations=None`` otherwise and skips
every line here). It records, per image:

- **detector** -- each box the detector returned (after the model's own NMS), its score, and whether it was kept
  or which filter dropped it: ``Global.threshold``, ``Global.min_box_size`` or ``Global.max_det_results``;
- **whole image** -- what ``Global.append_whole_image`` did: ``appended``, ``off``, ``fallback: searched`` (no
  detected box gave an accepted match), ``fallback: not needed`` or ``fallback: no detected box``;
- **searched** -- each box embedded and searched: its top ``IndexProcess.return_k`` gallery matches with scores (at
  most ``Limits.max_explain_matches``), and
  its verdict: ``kept``, rejected by ``IndexProcess.score_thres`` (or by ``IndexProcess.labels``: no match at all;
  ``dropped_by`` null: an empty gallery),
  or suppressed by ``Global.rec_nms_thresold`` and by which searched box (with their IoU).

Like :mod:`.results` this module needs only numpy, so the client SDK reads explanations without paddle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shitu.serving.results.types import Detections, Match, Recognition, pairwise_iou

#: Parameters that steer the stages an explanation describes (reported with it).
EXPLAINED_PARAMS = (
    "Global.threshold",
    "Global.min_box_size",
    "Global.max_det_results",
    "Global.append_whole_image",
    "IndexProcess.score_thres",
    "IndexProcess.return_k",
    "Global.rec_nms_thresold",
    "Global.rec_nms_per_label",
    "Global.min_box_ratio",
)
#: ``IndexProcess.labels`` is reported as the *number* of labels filtered on (null: no filter), never as the list: a
#: client's filter (up to ``Limits.max_filter_labels`` labels) is not echoed into every image's explanation.
LABELS_FILTER = "IndexProcess.labels"

KEPT = "kept"
REJECTED = "rejected"
SUPPRESSED = "suppressed"


def _count(labels: list[str] | None) -> int | None:
    return None if labels is None else len(labels)


def _box(xyxy: Any) -> list[int]:
    return [int(round(float(v))) for v in xyxy]


@dataclass
class DetectorBox:
    """One box the detector returned: kept (``dropped_by`` is None) or dropped by the filter named."""

    bbox: list[int]
    score: float
    dropped_by: str | None = None
    reason: str = ""

    @property
    def kept(self) -> bool:
        return self.dropped_by is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "bbox": self.bbox,
            "score": round(self.score, 6),
            "kept": self.kept,
            "dropped_by": self.dropped_by,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorBox:
        return cls(_box(d["bbox"]), float(d["score"]), d.get("dropped_by"), str(d.get("reason", "")))


@dataclass
class SearchedBox:
    """One box embedded and searched: its top matches and what became of its best one."""

    bbox: list[int]
    det_score: float
    is_whole_image: bool
    matches: list[Match]
    verdict: str = REJECTED
    dropped_by: str | None = None
    reason: str = ""
    #: Index (in :attr:`Explanation.searched`) of the box whose match suppressed this one in rec-NMS.
    suppressed_by: int | None = None
    iou: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "bbox": self.bbox,
            "det_score": round(self.det_score, 6),
            "is_whole_image": self.is_whole_image,
            "matches": [{"id": m.id, "label": m.label, "score": round(float(m.score), 6)} for m in self.matches],
            "verdict": self.verdict,
            "dropped_by": self.dropped_by,
            "reason": self.reason,
            "suppressed_by": self.suppressed_by,
            "iou": None if self.iou is None else round(self.iou, 4),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchedBox:
        return cls(
            _box(d["bbox"]),
            float(d.get("det_score", 0.0)),
            bool(d.get("is_whole_image", False)),
            [Match(int(m["id"]), str(m["label"]), float(m["score"])) for m in d.get("matches") or []],
            str(d.get("verdict", REJECTED)),
            d.get("dropped_by"),
            str(d.get("reason", "")),
            d.get("suppressed_by"),
            d.get("iou"),
        )


@dataclass
class Explanation:
    """Every stage's view of one image; see the module docstring. Plain JSON with :meth:`to_dict`."""

    params: dict[str, Any] = field(default_factory=dict)
    detector: list[DetectorBox] = field(default_factory=list)
    whole_image: str = "off"
    searched: list[SearchedBox] = field(default_factory=list)

    # -- recording (called by detection and the pipeline) ---------------------------------------------------------
    @classmethod
    def start(cls, params: Mapping[str, Any]) -> Explanation:
        labels = params[LABELS_FILTER]
        return cls(params={**{name: params[name] for name in EXPLAINED_PARAMS}, LABELS_FILTER: _count(labels)})

    def detector_filters(self, det: Detections, low: np.ndarray, small: np.ndarray, over: np.ndarray) -> None:
        """Raw detector boxes and the filter that dropped each (boolean masks ``low``/``small``, indices ``over``)."""
        p = self.params
        over_set = {int(i) for i in over}
        self.detector = []
        for i in range(len(det)):
            score = float(det.scores[i])
            box = DetectorBox(_box(det.xyxy[i]), score)
            w, h = (det.xyxy[i, 2:] - det.xyxy[i, :2]).tolist()
            if low[i]:
                box.dropped_by, box.reason = "Global.threshold", f"score {score:.3f} < {p['Global.threshold']}"
            elif small[i] and min(w, h) >= p["Global.min_box_size"]:
                box.dropped_by = "Global.min_box_ratio"
                box.reason = f"{w:.0f}x{h:.0f} px, short side under {p['Global.min_box_ratio']} of the image's"
            elif small[i]:
                box.dropped_by = "Global.min_box_size"
                box.reason = f"{w:.0f}x{h:.0f} px, smaller than {p['Global.min_box_size']} px"
            elif i in over_set:
                box.dropped_by = "Global.max_det_results"
                box.reason = f"only the best {p['Global.max_det_results']} boxes are kept"
            self.detector.append(box)

    def searched_box(
        self,
        bbox: Any,
        det_score: float,
        is_whole_image: bool,
        matches: list[Match],
        accepted: bool,
        higher_is_better: bool,
    ) -> int:
        """Record one searched box and whether its best match passed ``IndexProcess.score_thres``; its index."""
        box = SearchedBox(_box(bbox), float(det_score), bool(is_whole_image), list(matches))
        thres = self.params["IndexProcess.score_thres"]
        if not matches and self.params.get("IndexProcess.labels") is not None:
            box.dropped_by, box.reason = "IndexProcess.labels", "no gallery item has one of the labels searched"
        elif not matches:
            box.reason = "the gallery is empty"
        elif not accepted:
            box.dropped_by = "IndexProcess.score_thres"
            rel = "<" if higher_is_better else ">"
            box.reason = f"best match {matches[0].label} {matches[0].score:.3f} {rel} {thres}"
        else:
            box.verdict = KEPT
        self.searched.append(box)
        return len(self.searched) - 1

    def rec_nms(
        self,
        found: list[Recognition],
        searched_index: list[int],
        kept: list[Recognition],
        iou_threshold: float,
        higher_is_better: bool,
        per_label: bool,
    ) -> None:
        """Name, for each accepted box that rec-NMS dropped, the kept box that suppressed it (greedy NMS: the
        best-ranked kept box overlapping it by more than ``iou_threshold``)."""
        kept_ids = {id(r) for r in kept}
        position = {id(r): k for k, r in enumerate(found)}
        for r in found:
            if id(r) in kept_ids:
                continue
            me = self.searched[searched_index[position[id(r)]]]
            me.verdict, me.dropped_by = SUPPRESSED, "Global.rec_nms_thresold"
            for other in kept:  # best first, as rec-NMS visits them
                if per_label and other.label != r.label:
                    continue
                overlap = float(pairwise_iou(other.bbox, r.bbox)[0, 0])
                if overlap > iou_threshold:
                    me.suppressed_by, me.iou = searched_index[position[id(other)]], overlap
                    me.reason = (
                        f"overlaps searched box {me.suppressed_by} ({other.label} {other.score:.3f}) "
                        f"with IoU {overlap:.2f} > {iou_threshold}"
                    )
                    break
            else:  # only at an IoU equal to the threshold up to float rounding
                me.reason = f"overlaps a better box with IoU about {iou_threshold}"

    # -- reading ----------------------------------------------------------------------------------------------
    def notable_detector_boxes(self) -> list[tuple[int, DetectorBox]]:
        """``(index, box)`` of the detector boxes worth showing: all but those under ``Global.threshold`` beyond
        the best ``max_det_results`` of them (a detector returns dozens of faint boxes; :meth:`to_dict` has all)."""
        room = int(self.params.get("Global.max_det_results", 5))
        out = []
        for i, b in enumerate(self.detector):  # best first, as the detector returns them
            if b.dropped_by == "Global.threshold":
                if room <= 0:
                    continue
                room -= 1
            out.append((i, b))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": dict(self.params),
            "detector": [b.to_dict() for b in self.detector],
            "whole_image": self.whole_image,
            "searched": [s.to_dict() for s in self.searched],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Explanation:
        return cls(
            dict(d.get("params") or {}),
            [DetectorBox.from_dict(b) for b in d.get("detector") or []],
            str(d.get("whole_image", "off")),
            [SearchedBox.from_dict(s) for s in d.get("searched") or []],
        )

    def format(self, indent: str = "    ") -> str:
        """A readable table: detector boxes (of those under ``Global.threshold`` the best ``max_det_results``), then
        searched boxes with their top matches and verdicts."""
        p = self.params
        lines = [
            f"{indent}detector boxes (threshold {p.get('Global.threshold')}, min_box_size "
            f"{p.get('Global.min_box_size')}, max_det_results {p.get('Global.max_det_results')}):"
        ]
        if not self.detector:
            lines.append(f"{indent}    (none)")
        shown = self.notable_detector_boxes()
        for i, b in shown:
            verdict = "kept" if b.kept else f"dropped by {b.dropped_by}: {b.reason}"
            lines.append(f"{indent}  d{i:<3} {str(b.bbox):<24} det {b.score:.3f}   {verdict}")
        if len(shown) < len(self.detector):
            lines.append(f"{indent}  ... and {len(self.detector) - len(shown)} more dropped by Global.threshold")
        setting = p.get("Global.append_whole_image")
        lines.append(f"{indent}whole image: {self.whole_image} (append_whole_image {setting})")
        lines.append(
            f"{indent}searched boxes (score_thres {p.get('IndexProcess.score_thres')}, rec_nms_thresold "
            f"{p.get('Global.rec_nms_thresold')}, per label {p.get('Global.rec_nms_per_label')}):"
        )
        if not self.searched:
            lines.append(f"{indent}    (none)")
        for i, s in enumerate(self.searched):
            where = "whole image" if s.is_whole_image else str(s.bbox)
            top = ", ".join(f"{m.label} {m.score:.3f}" for m in s.matches) or "no match"
            verdict = s.verdict if s.dropped_by is None else f"{s.verdict} by {s.dropped_by}: {s.reason}"
            lines.append(f"{indent}  s{i:<3} {where:<24} {verdict}")
            lines.append(f"{indent}        top matches: {top}")
        return "\n".join(lines)
