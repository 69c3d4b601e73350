"""Drawing recognitions on images (annotated copies for the demo, the CLI's ``--draw`` and videos).

Needs only numpy and OpenCV (imported when drawing), so the client SDK can use it;
:mod:`shitu.serving.client.pil_draw` draws the same with PIL where OpenCV is not installed.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from shitu.serving.engine.results import Recognition

_PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
            (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0)]


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
        cv2.putText(out, text, (x1 + 2, ty - base - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick, (255, 255, 255),
                    thick, cv2.LINE_AA)
    return out
