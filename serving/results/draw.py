"""Annotated copies, drawn in one place for every caller: recognitions (the demo, ``--draw``, PaddleX's
``visualize``), an explanation's left-out boxes (``--explain --draw``) and video tracks (``shitu video --out``).

One colour scheme: a stable colour per label (per track id for tracks), white text on a strip of that colour; the
whole-image match is a banner at the top. Arrays are BGR (as the engine and OpenCV hold images), files are drawn as
they were sent (EXIF orientation applied, as the server decodes them).

Drawn with PIL, not supervision's annotators: supervision 0.31 pulls av, matplotlib and scipy into what must stay
the light client install (numpy, requests, Pillow), and has no dashed outline for the explanation's boxes.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from shitu.serving.results.explanation import Explanation

__all__ = ["color_for", "draw_explanation", "draw_file", "draw_recognitions", "draw_tracks", "track_color"]

RGB = tuple[int, int, int]

_PALETTE: list[RGB] = [
    (255, 56, 56),
    (255, 157, 151),
    (255, 112, 31),
    (255, 178, 29),
    (207, 210, 49),
    (72, 249, 10),
    (146, 204, 23),
    (61, 219, 134),
    (26, 147, 52),
    (0, 212, 187),
    (44, 153, 168),
    (0, 194, 255),
]
_WHITE: RGB = (255, 255, 255)
_DROPPED: RGB = (128, 128, 128)  # detector boxes dropped by a filter: grey, dashed
_REJECTED: RGB = (255, 140, 0)  # searched, best match under IndexProcess.score_thres: orange, dashed
_SUPPRESSED: RGB = (255, 0, 255)  # searched and accepted, dropped by rec-NMS: magenta, dashed


def color_for(label: str) -> RGB:
    """A stable RGB colour per label."""
    return _PALETTE[sum(label.encode("utf-8")) % len(_PALETTE)]


def track_color(track_id: int) -> RGB:
    """A stable, well separated RGB colour per track id (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((track_id * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


class Boxed(Protocol):
    """What can be drawn: a :class:`~.types.Recognition`, or a detected box (no ``label``: drawn as ``object``)."""

    @property
    def bbox(self) -> Sequence[int]: ...
    @property
    def score(self) -> float: ...
    @property
    def is_whole_image(self) -> bool: ...


class Labelled(Protocol):
    """A track, or the frame label, of a video frame (:mod:`shitu.serving.video.tracker`)."""

    @property
    def label(self) -> str: ...
    @property
    def score(self) -> float: ...


class Track(Labelled, Protocol):
    @property
    def bbox(self) -> Sequence[float]: ...
    @property
    def track_id(self) -> int: ...


class FrameTracks(Protocol):
    """A processed video frame's tracks (:class:`shitu.serving.video.report.FrameResult`)."""

    @property
    def tracks(self) -> Sequence[Track]: ...
    @property
    def frame_label(self) -> Labelled | None: ...


@dataclass(frozen=True)
class _Mark:
    box: tuple[int, int, int, int] | None  # None: a caption only
    text: str
    color: RGB
    dashed: bool = False
    at_bottom: bool = False  # the caption sits inside the box's bottom edge (the explanation's notes)


def _recognition_marks(results: Iterable[Boxed], prefix: str = "") -> list[_Mark]:
    marks = []
    for r in results:
        label = str(getattr(r, "label", "object"))
        text = f"{prefix}{label} {r.score:.2f}" + (" (whole image)" if r.is_whole_image else "")
        x1, y1, x2, y2 = (int(v) for v in r.bbox)
        marks.append(_Mark(None if r.is_whole_image else (x1, y1, x2, y2), text, color_for(label)))
    return marks


def _explanation_marks(explanation: Explanation, height: int) -> list[_Mark]:
    """The boxes an answer left out, dashed, captioned with why (a whole image left out: a bottom banner)."""
    marks = []
    for i, b in explanation.notable_detector_boxes():
        if not b.kept:
            why = (b.dropped_by or "").split(".")[-1]
            marks.append(_Mark(_box(b.bbox), f"d{i} {b.score:.2f} {why}", _DROPPED, dashed=True, at_bottom=True))
    for i, s in enumerate(explanation.searched):
        if s.verdict == "kept":
            continue
        best = f"{s.matches[0].label} {s.matches[0].score:.2f}" if s.matches else "no match"
        why = f"suppressed by s{s.suppressed_by}" if s.suppressed_by is not None else "< score_thres"
        color = _SUPPRESSED if s.suppressed_by is not None else _REJECTED
        if s.is_whole_image:
            marks.append(_Mark((0, height, 0, height), f"whole image s{i}: {best} {why}", color, at_bottom=True))
        else:
            marks.append(_Mark(_box(s.bbox), f"s{i} {best} {why}", color, dashed=True, at_bottom=True))
    return marks


def _box(bbox: Sequence[float]) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (int(v) for v in bbox)
    return x1, y1, x2, y2


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _render(img: Image.Image, marks: Sequence[_Mark], thick: int = 0) -> Image.Image:
    """Draw ``marks`` on ``img`` in place; outlines ``thick + 1`` pixels wide, centred on the box's edges
    (``thick``: 1/300 of the shorter side unless given)."""
    canvas = ImageDraw.Draw(img)
    thick = thick or max(1, round(min(img.size) / 300))
    font = _font(11 * max(1, round(min(img.size) / 300)))
    for m in marks:
        x1, y1 = (m.box[0], m.box[1]) if m.box else (0, 0)
        if m.box and m.dashed:
            _dashed(canvas, m.box, m.color, thick, 8 * thick)
        elif m.box and m.box[2] > m.box[0]:
            half = (thick + 1) // 2
            outline = (m.box[0] - half, m.box[1] - half, m.box[2] + half, m.box[3] + half)
            canvas.rectangle(outline, outline=m.color, width=thick + 1)
        left, top, right, bottom = canvas.textbbox((0, 0), m.text, font=font)
        th = bottom - top + 4
        if m.at_bottom and m.box:  # inside the bottom edge
            x1, ty = m.box[0], max(m.box[3] - 2, th)
        else:  # above the top edge, or inside it at the image's top
            ty = y1 if y1 >= th else y1 + th
        canvas.rectangle((x1, ty - th, x1 + right - left + 4, ty), fill=m.color)
        canvas.text((x1 + 2, ty - th + 2 - top), m.text, fill=_WHITE, font=font)
    return img


def _dashed(canvas: ImageDraw.ImageDraw, box: tuple[int, int, int, int], color: RGB, width: int, dash: int) -> None:
    x1, y1, x2, y2 = box
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay), 1)
        for start in range(0, length, 2 * dash):
            end = min(start + dash, length)
            p = (ax + (bx - ax) * start // length, ay + (by - ay) * start // length)
            q = (ax + (bx - ax) * end // length, ay + (by - ay) * end // length)
            canvas.line((p, q), fill=color, width=width)


def _on_array(image_bgr: np.ndarray, marks: Sequence[_Mark], thick: int = 0) -> np.ndarray:
    rgb = image_bgr[..., 2::-1] if image_bgr.ndim == 3 else np.stack([image_bgr] * 3, axis=-1)
    img = Image.fromarray(np.ascontiguousarray(rgb).astype(np.uint8, copy=False))
    return np.ascontiguousarray(np.asarray(_render(img, marks, thick))[..., ::-1])


def draw_recognitions(image_bgr: np.ndarray, recognitions: Iterable[Boxed], prefix: str = "") -> np.ndarray:
    """A BGR copy of ``image_bgr`` with each box and ``label score`` drawn; the whole-image match as a banner."""
    return _on_array(image_bgr, _recognition_marks(recognitions, prefix))


def draw_explanation(image_bgr: np.ndarray, recognitions: Iterable[Boxed], explanation: Explanation) -> np.ndarray:
    """The answer drawn as :func:`draw_recognitions` does, over the boxes the answer left out, dashed and captioned
    with why: detector boxes dropped by a filter (grey; of those under ``Global.threshold`` only the best
    ``Global.max_det_results``, the explanation lists them all), searched boxes rejected by ``score_thres`` (orange)
    and boxes suppressed by rec-NMS (magenta, naming the searched box that won). A whole image left out is a banner
    at the bottom."""
    marks = _explanation_marks(explanation, image_bgr.shape[0]) + _recognition_marks(recognitions)
    return _on_array(image_bgr, marks)


def draw_tracks(image_bgr: np.ndarray, result: FrameTracks) -> np.ndarray:
    """A BGR copy of a video frame with each track's box and ``#id label score`` (``result``: a
    :class:`~shitu.serving.video.stream.FrameResult`), and the frame label as a banner at the bottom."""
    marks = [
        _Mark(_box(t.bbox), f"#{t.track_id} {t.label} {t.score:.2f}", track_color(t.track_id)) for t in result.tracks
    ]
    if result.frame_label is not None:
        h = image_bgr.shape[0]
        fl = result.frame_label
        marks.append(_Mark((0, h, 0, h), f"frame: {fl.label} {fl.score:.2f}", _DROPPED, at_bottom=True))
    # bolder than on stills: frames are seen moving
    return _on_array(image_bgr, marks, thick=max(2, round(max(0.4, min(image_bgr.shape[:2]) / 800) * 3)))


def draw_file(image: str | Path | bytes, results: Iterable[Boxed], out: str | Path, prefix: str = "") -> None:
    """Draw ``results`` (recognitions, or boxes with a score; with an ``explanation`` attribute, its left-out boxes
    too) on ``image`` (a path or encoded bytes) as it was sent; save ``out`` as JPEG."""
    with Image.open(io.BytesIO(image) if isinstance(image, bytes) else Path(image)) as opened:
        img = ImageOps.exif_transpose(opened).convert("RGB")
    explanation = getattr(results, "explanation", None)
    marks = _explanation_marks(explanation, img.size[1]) if isinstance(explanation, Explanation) else []
    _render(img, marks + _recognition_marks(results, prefix)).save(out, "JPEG", quality=90)
