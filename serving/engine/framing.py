"""How an object is framed before it is embedded: one rule for gallery items and query crops (issue #28).

A detector box is tight around its object; a gallery picture may be tight too (the object fills the image) or sit
on a plain margin (a catalogue photo, an icon on white). Embeddings depend on the object's scale in the crop, so a
gallery whose items are framed differently from the query crops loses most of its matches (general-lite 1.2.0's
``crop_padding`` 0.2, tuned on a margin gallery, cut scene R@1 3.6x on a tight one). Two rules:

- ``main_box`` (the default of new galleries): every image is reduced to its *main box* first -- the box of what
  differs from a plain border (:func:`main_box`; the whole image when the border is not plain) -- and every box,
  a gallery image's main box as well as a query's detector box, is widened by ``Global.crop_padding`` of its size
  per side, the part outside the image filled with the recogniser's mean colour (zero at the network input).
  A gallery picture on a margin and the same picture cropped tight give the same item; a query's whole-image box
  goes through the same function as a gallery image.
- ``whole_image`` (galleries built before issue #28, or vectors shipped by a pack): gallery images are embedded
  whole; query boxes are widened by ``crop_padding`` and clipped to the image.

The rule and its padding are recorded in the gallery (:mod:`shitu.serving.gallery.settings`), so a query against a
gallery gets the rule that gallery was built with, whatever the engine's defaults are now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shitu.serving.engine.extraction import crop

#: The rules, for ``Global.framing`` and the gallery record.
RULES = ("main_box", "whole_image")
#: A border pixel is "plain" when no channel differs from the border's median colour by more than this (JPEG noise
#: and anti-aliasing stay under it); the border is plain when this share of its pixels are.
PLAIN_TOLERANCE = 24
PLAIN_SHARE = 0.9


@dataclass(frozen=True)
class Framing:
    """A framing rule and its padding (``Global.framing``, ``Global.crop_padding``)."""

    rule: str = "main_box"
    padding: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "crop_padding": self.padding}

    @classmethod
    def from_dict(cls, d: Any) -> Framing | None:
        """The framing a gallery records, ``None`` for a missing or unreadable record."""
        if not isinstance(d, dict) or d.get("rule") not in RULES:
            return None
        try:
            return cls(str(d["rule"]), float(d.get("crop_padding", 0.0)))
        except (TypeError, ValueError):
            return None

    @classmethod
    def of(cls, params: Any) -> Framing:
        """The rule new galleries get from the parameters."""
        return cls(params["Global.framing"], float(params["Global.crop_padding"]))


def main_box(image: np.ndarray) -> list[float]:
    """``[x1, y1, x2, y2]`` of what differs from the image's plain border; the whole image when the border is not
    plain (a photograph) or nothing differs from it. A few lines of numpy: no library trims an array's margin."""
    h, w = image.shape[:2]
    whole = [0.0, 0.0, float(w), float(h)]
    if h < 3 or w < 3:
        return whole
    img = image if image.ndim == 3 else image[:, :, None]
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]]).astype(np.int16)
    colour = np.median(border, axis=0)
    if (np.abs(border - colour).max(axis=1) <= PLAIN_TOLERANCE).mean() < PLAIN_SHARE:
        return whole
    differs = np.abs(img.astype(np.int16) - colour).max(axis=2) > PLAIN_TOLERANCE
    rows, cols = np.nonzero(differs.any(axis=1))[0], np.nonzero(differs.any(axis=0))[0]
    if not len(rows):
        return whole
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]


def framed_crop(image: np.ndarray, box: Sequence[float], padding: float, fill: Sequence[float]) -> np.ndarray:
    """``box`` widened by ``padding`` x its width / height per side; what lies outside the image is ``fill``."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    dx, dy = padding * (x2 - x1), padding * (y2 - y1)
    fx1, fy1, fx2, fy2 = (int(round(v)) for v in (x1 - dx, y1 - dy, x2 + dx, y2 + dy))
    fx2, fy2 = max(fx2, fx1 + 1), max(fy2, fy1 + 1)
    if fx1 >= 0 and fy1 >= 0 and fx2 <= w and fy2 <= h:
        return image[fy1:fy2, fx1:fx2]
    out = np.empty((fy2 - fy1, fx2 - fx1) + image.shape[2:], image.dtype)
    out[:] = np.asarray(fill, np.float64)[: image.shape[2] if image.ndim == 3 else 1].round().astype(image.dtype)
    sx1, sy1, sx2, sy2 = max(fx1, 0), max(fy1, 0), min(fx2, w), min(fy2, h)
    if sx2 > sx1 and sy2 > sy1:
        out[sy1 - fy1 : sy2 - fy1, sx1 - fx1 : sx2 - fx1] = image[sy1:sy2, sx1:sx2]
    return out


def fill_colour(transform_ops: Sequence[dict[str, Any]]) -> list[float]:
    """The pixel value that is zero at the network input: ``PadToSquare``'s value, else ``NormalizeImage``'s
    ``mean / scale`` (mid-grey for a model with neither)."""
    for op in transform_ops:
        args = next(iter(op.values())) or {}
        if "PadToSquare" in op and args.get("value") is not None:
            return [float(v) for v in np.atleast_1d(args["value"])]
    for op in transform_ops:
        if "NormalizeImage" in op:
            args = op["NormalizeImage"] or {}
            scale = float(args.get("scale", 1.0) or 1.0)
            if isinstance(args.get("scale"), str):  # PaddleClas writes "1.0/255.0"
                num, _, den = args["scale"].partition("/")
                scale = float(num) / float(den or 1)
            return [float(m) / scale for m in args.get("mean", [0.5, 0.5, 0.5])]
    return [127.5, 127.5, 127.5]


def frame_image(image: np.ndarray, framing: Framing, fill: Sequence[float]) -> np.ndarray:
    """A whole image (a gallery item, or a query's whole-image box) as ``framing`` embeds it."""
    if framing.rule == "whole_image":
        return image
    return framed_crop(image, main_box(image), framing.padding, fill)


def frame_box(
    image: np.ndarray, box: Sequence[float], is_whole_image: bool, framing: Framing, fill: Sequence[float]
) -> np.ndarray:
    """A query box as ``framing`` crops it (a whole-image box as :func:`frame_image` frames a gallery image)."""
    if framing.rule == "whole_image":
        return crop(image, box, framing.padding)
    if is_whole_image:
        return frame_image(image, framing, fill)
    return framed_crop(image, box, framing.padding, fill)
