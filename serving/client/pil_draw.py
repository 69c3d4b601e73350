"""Annotated copies with PIL, for client-only installs (``pip install shitu-hub``, no OpenCV).

The same picture as :func:`shitu.serving.engine.draw.draw_recognitions` (boxes, ``label score``, the whole-image
match as a banner, one stable colour per label), drawn on the image file as it was sent (EXIF orientation
applied, as the server decodes it).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shitu.serving.engine.draw import color_for


def draw_file(image: str | Path | bytes, results: Iterable[Any], out: str | Path, prefix: str = "") -> None:
    """Draw ``results`` (recognitions, or boxes with a score) on ``image`` (a path or encoded bytes); save ``out``
    as JPEG."""
    from PIL import Image, ImageDraw, ImageOps

    src = io.BytesIO(image) if isinstance(image, bytes) else Path(image)
    with Image.open(src) as opened:
        img = ImageOps.exif_transpose(opened).convert("RGB")
    canvas = ImageDraw.Draw(img)
    thick = max(1, round(min(img.size) / 300))
    for r in results:
        label = getattr(r, "label", "object")
        b, g, rd = color_for(label)
        color = (rd, g, b)
        text = f"{prefix}{label} {r.score:.2f}" + (" (whole image)" if r.is_whole_image else "")
        x1, y1, x2, y2 = (int(v) for v in r.bbox)
        if r.is_whole_image:
            x1, y1 = 0, 0
        else:
            canvas.rectangle((x1, y1, x2, y2), outline=color, width=thick + 1)
        left, top, right, bottom = canvas.textbbox((x1 + 2, y1), text)
        th = bottom - top + 4
        ty = y1 if y1 >= th else y1 + th
        canvas.rectangle((x1, ty - th, x1 + (right - left) + 4, ty), fill=color)
        canvas.text((x1 + 2, ty - th + 1), text, fill=(255, 255, 255))
    img.save(out, "JPEG", quality=90)
