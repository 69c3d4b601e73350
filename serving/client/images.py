"""Images in the SDK: what a call accepts (path, bytes, numpy BGR array, PIL image; one or many), how it is encoded
for the wire, and :func:`load_image` / :func:`draw` for looking at answers.

OpenCV is imported only to encode a numpy array when it is installed (PIL is the fallback), PIL only when an array
is encoded without OpenCV, a PIL image is sent, or something is drawn: a client-only install (numpy, requests,
Pillow) does all of it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from shitu.serving.client.errors import InputError
from shitu.serving.client.results import Box
from shitu.serving.results import Recognition

__all__ = ["as_list", "draw", "image_bytes", "load_image"]


def _is_pil(obj: Any) -> bool:
    return hasattr(obj, "mode") and hasattr(obj, "size") and hasattr(obj, "save") and not isinstance(obj, np.ndarray)


def _is_single_image(obj: Any) -> bool:
    if isinstance(obj, np.ndarray):
        return obj.ndim != 4
    return isinstance(obj, (str, bytes, bytearray, memoryview, os.PathLike)) or _is_pil(obj)


def as_list(images: Any) -> tuple[bool, list[Any]]:
    """(single?, list of images). A list/tuple/iterable is many; a 4-D array is many frames."""
    if _is_single_image(images):
        return True, [images]
    if isinstance(images, np.ndarray):  # N x H x W x C
        return False, list(images)
    if isinstance(images, Iterable):
        return False, list(images)
    raise InputError(f"cannot use a {type(images).__name__} as an image (path, bytes, numpy array or PIL image)")


def _encode_array(a: np.ndarray, fmt: str, quality: int) -> bytes:
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)) or 0 in a.shape[:2]:
        raise ValueError(f"expected an H x W or H x W x 1/3/4 image array, got shape {a.shape}")
    if a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"unsupported image dtype {a.dtype} (use uint8, as OpenCV gives)")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if fmt == "jpeg" and (a.dtype == np.uint16 or (a.ndim == 3 and a.shape[2] == 4)):
        fmt = "png"  # JPEG holds neither 16-bit samples nor alpha
    try:
        import cv2
    except ImportError:  # a client-only install: PIL below
        pass
    else:
        ext, flags = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality]) if fmt == "jpeg" else (".png", [])
        ok, buf = cv2.imencode(ext, np.ascontiguousarray(a), flags)
        if not ok:
            raise ValueError(f"OpenCV could not encode the array as {fmt}")
        return buf.tobytes()
    from PIL import Image  # no OpenCV: PIL, with BGR(A) -> RGB(A)

    if a.dtype == np.uint16:
        a = (a / 257).astype(np.uint8)
    if a.ndim == 3:
        a = a[:, :, [2, 1, 0, 3][: a.shape[2]]]
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(out, format=fmt.upper(), quality=quality)
    return out.getvalue()


def _encode_pil(img: Any, fmt: str, quality: int) -> bytes:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        fmt = "png"
    if fmt == "jpeg" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, format=fmt.upper(), **({"quality": quality} if fmt == "jpeg" else {}))
    return out.getvalue()


def image_bytes(image: Any, image_format: str = "jpeg", quality: int = 95) -> bytes:
    """One image (path, bytes, numpy BGR array, PIL image) -> encoded file bytes, as sent to the server."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, np.ndarray):
        try:
            data = _encode_array(image, image_format, quality)
        except ValueError as exc:
            raise InputError(str(exc)) from None
    elif _is_pil(image):
        data = _encode_pil(image, image_format, quality)
    else:
        raise InputError(f"cannot use a {type(image).__name__} as an image (path, bytes, numpy array or PIL image)")
    if not data:
        raise InputError("empty image data")
    return data


def load_image(image: Any) -> np.ndarray:
    """One image (path, bytes, numpy array, PIL image) -> BGR uint8 array, decoded with PIL as the server decodes
    it (EXIF orientation applied)."""
    if isinstance(image, np.ndarray):
        a = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise InputError(f"expected an H x W or H x W x 1/3/4 image array, got shape {image.shape}")
        return np.ascontiguousarray(a[:, :, :3]).astype(np.uint8, copy=False)
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        if _is_pil(image):
            rgb = ImageOps.exif_transpose(image).convert("RGB")
        else:
            with Image.open(io.BytesIO(image_bytes(image))) as opened:
                rgb = ImageOps.exif_transpose(opened).convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot decode the image: {exc}") from None
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


def draw(image: Any, results: Iterable[Any], prefix: str = "") -> np.ndarray:
    """A BGR copy of ``image`` with ``results`` drawn on it: :class:`Recognition` or :class:`Box` objects (or
    their dicts), e.g. what ``recognize`` / ``detect`` gave for that image; an ``ImageRecognitions`` with an
    ``explanation`` also shows, dashed, the boxes the answer left out and why."""
    from shitu.serving.results.draw import draw_explanation, draw_recognitions

    explanation = getattr(results, "explanation", None)
    if explanation is not None:
        return draw_explanation(load_image(image), list(results), explanation)
    recs = []
    for r in results:
        if isinstance(r, Mapping):
            r = Recognition.from_dict(dict(r)) if "label" in r else Box.from_dict(r)
        if isinstance(r, Box):
            r = Recognition(list(r.bbox), "object", r.score, r.score, r.is_whole_image)
        recs.append(r)
    return draw_recognitions(load_image(image), recs, prefix=prefix)
