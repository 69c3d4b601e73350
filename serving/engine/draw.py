"""Drawing recognitions on images (annotated copies for the demo, the CLI's ``--draw`` and videos), and with
``--explain`` the boxes an answer left out, dashed, with the reason.

Needs only numpy and OpenCV (imported when drawing), so the client SDK can use it;
:mod:`shitu.serving.client.pil_draw` draws the same with PIL where OpenCV is not installed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from shitu.serving.engine.explain import Explanation
from shitu.serving.engine.results import Recognition

_PALETTE = [
    (56, 56, 255),
    (151, 157, 255),
    (31, 112, 255),
    (29, 178, 255),
    (49, 210, 207),
    (10, 249, 72),
    (23, 204, 146),
    (134, 219, 61),
    (52, 147, 26),
    (187, 212, 0),
    (168, 153, 44),
    (255, 194, 0),
]


def color_for(label: str) -> tuple[int, int, int]:
    """A stable colour per label."""
    return _PALETTE[sum(label.encode("utf-8")) % len(_PALETTE)]


def draw_recognitions(image_bgr: np.ndarray, recognitions: Iterable[Recognition], prefix: str = "") -> np.ndarray:
    """A copy of ``image_bgr`` with each box and ``label score`` drawn; the whole-image match as a banner."""
    import cv2

    out = image_bgr.copy()
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 300))
    for r in recognitions:
        color = color_for(r.label)
        text = f"{prefix}{r.label} {r.score:.2f}" + (" (whole image)" if r.is_whole_image else "")
        x1, y1, x2, y2 = r.bbox
        if not r.is_whole_image:
            cv2.rectangle(out, (x1, y1), (x2, y2), color, thick + 1)
        else:
            x1, y1 = 0, 0
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick, thick)
        ty = y1 + th + base + 2 if y1 < th + base + 2 else y1
        cv2.rectangle(out, (x1, ty - th - base - 2), (x1 + tw + 4, ty), color, -1)
        cv2.putText(
            out,
            text,
            (x1 + 2, ty - base - 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5 * thick,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
    return out


_DROPPED = (128, 128, 128)  # detector boxes dropped by a filter: grey, dashed
_REJECTED = (0, 140, 255)  # searched, best match under IndexProcess.score_thres: orange, dashed
_SUPPRESSED = (255, 0, 255)  # searched and accepted, dropped by rec-NMS: magenta, dashed


def dashed_rectangle(
    image: np.ndarray, box: Sequence[int], color: tuple[int, int, int], thickness: int = 1, dash: int = 8
) -> None:
    """Draw ``box`` [x1, y1, x2, y2] on ``image`` in place as a dashed outline."""
    import cv2

    x1, y1, x2, y2 = (int(v) for v in box)
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay))
        for start in range(0, length, 2 * dash):
            end = min(start + dash, length)
            p = (ax + (bx - ax) * start // max(length, 1), ay + (by - ay) * start // max(length, 1))
            q = (ax + (bx - ax) * end // max(length, 1), ay + (by - ay) * end // max(length, 1))
            cv2.line(image, p, q, color, thickness, cv2.LINE_AA)


def draw_explanation(
    image_bgr: np.ndarray, recognitions: Iterable[Recognition], explanation: Explanation
) -> np.ndarray:
    """The answer drawn as :func:`draw_recognitions` does, over the boxes the answer left out, dashed and captioned
    with why: detector boxes dropped by a filter (grey; of those under ``Global.threshold`` only the best
    ``Global.max_det_results``, the explanation lists them all), searched boxes rejected by ``score_thres`` (orange)
    and boxes suppressed by rec-NMS (magenta, naming the searched box that won). A whole image left out is a banner
    at the bottom."""
    out = image_bgr.copy()
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 300))
    notes: list[tuple[list[int], str, tuple[int, int, int]]] = []
    for i, b in explanation.notable_detector_boxes():
        if b.kept:
            continue
        notes.append((b.bbox, f"d{i} {b.score:.2f} {(b.dropped_by or '').split('.')[-1]}", _DROPPED))
    banner = ""
    for i, s in enumerate(explanation.searched):
        if s.verdict == "kept":
            continue
        best = f"{s.matches[0].label} {s.matches[0].score:.2f}" if s.matches else "no match"
        why = f"suppressed by s{s.suppressed_by}" if s.suppressed_by is not None else "< score_thres"
        if s.is_whole_image:
            banner = f"whole image s{i}: {best} {why}"
        else:
            notes.append((s.bbox, f"s{i} {best} {why}", _SUPPRESSED if s.suppressed_by is not None else _REJECTED))
    for box, text, color in notes:
        dashed_rectangle(out, box, color, thick)
        _caption(out, text, box[0], box[3], color, thick, below=True)
    if banner:
        _caption(out, banner, 0, h, _SUPPRESSED if "suppressed" in banner else _REJECTED, thick, below=True)
    return draw_recognitions(out, recognitions)


def _caption(
    image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int], thick: int, below: bool = False
) -> None:
    """``text`` on a filled ``color`` strip at (x, y): above that point, or inside the box's bottom edge."""
    import cv2

    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, thick)
    ty = y - 2 if below else y
    ty = max(ty, th + base + 2)
    cv2.rectangle(image, (x, ty - th - base - 2), (x + tw + 4, ty), color, -1)
    cv2.putText(
        image, text, (x + 2, ty - base - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, (255, 255, 255), thick, cv2.LINE_AA
    )
