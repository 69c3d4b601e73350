"""Turning what users send into images: base64 strings, bytes, paths, numpy arrays.

Every image becomes a BGR ``uint8`` ``H x W x 3`` array, decoded once with OpenCV, which also applies the EXIF
orientation, flattens alpha, converts grayscale, 16-bit and CMYK. The pixel count is checked from the file header
*before* decoding, so a small PNG declaring 30000x30000 is refused without allocating it; a file whose header
cannot be read that way is refused, never handed to OpenCV to find out.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shitu.errors import InvalidArgument

NOT_AN_IMAGE = "not an image (unknown or corrupt format)"


class ImageError(InvalidArgument):
    """An image cannot be used. ``index`` is its position in the request when known."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message if index is None else f"image {index}: {message}")
        self.reason = message
        self.index = index


@dataclass(frozen=True)
class ImageLimits:
    """Limits on what one image may cost (``Limits.*`` parameters)."""

    max_image_bytes: int = 20_000_000
    max_pixels: int = 40_000_000

    @classmethod
    def from_params(cls, params: Any) -> ImageLimits:
        return cls(params["Limits.max_image_bytes"], params["Limits.max_pixels"])


def b64decode(text: str, limits: ImageLimits = ImageLimits()) -> bytes:
    """Strict base64 (standard or URL-safe alphabet, ``data:`` URL prefix allowed) -> bytes."""
    if not isinstance(text, str):
        raise ImageError(f"expected a base64 string, got {type(text).__name__}")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    text = "".join(text.split())
    if len(text) > limits.max_image_bytes * 4 // 3 + 8:
        raise ImageError(f"image is larger than the limit of {limits.max_image_bytes} bytes")
    if not text:
        raise ImageError("empty image string")
    text += "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text.encode("ascii"))
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ImageError("not valid base64") from None


def header_size(data: bytes, limits: ImageLimits = ImageLimits()) -> tuple[int, int]:
    """(width, height) read from the file header without decoding pixels.

    An image whose header PIL cannot read is refused *before* decoding: OpenCV would otherwise allocate whatever
    its own parser finds (a 1 KB RLE8 BMP with an unusual header size, or a JPEG with a stray marker after SOI,
    decodes to 15000x15000). Declaring more than ``limits.max_pixels`` is refused too.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
    except Image.DecompressionBombError:
        raise ImageError(f"image declares more pixels than the limit of {limits.max_pixels}") from None
    except Exception:
        raise ImageError(NOT_AN_IMAGE) from None
    if size[0] * size[1] > limits.max_pixels:
        raise ImageError(f"image is {size[0]}x{size[1]} pixels, more than the limit of {limits.max_pixels}")
    return size


def _truncated(data: bytes) -> bool:
    """JPEG without its end marker or PNG without its IEND chunk: OpenCV would decode them half grey."""
    tail = data[-4096:]
    if data[:2] == b"\xff\xd8":
        return b"\xff\xd9" not in tail
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in tail
    return False


def check_bytes(data: Any, limits: ImageLimits) -> bytes:
    """Encoded bytes checked for type and size before anything reads them."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"expected image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("empty image data")
    if len(data) > limits.max_image_bytes:
        raise ImageError(f"image is {len(data)} bytes, larger than the limit of {limits.max_image_bytes}")
    return bytes(data)


def decode(data: bytes, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Encoded file bytes (JPEG, PNG, BMP, WebP, TIFF...) -> BGR uint8 image."""
    data = check_bytes(data, limits)
    if _truncated(data):
        raise ImageError("truncated image (the file ends before its last marker)")
    header_size(data, limits)
    buf = np.frombuffer(data, np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # applies EXIF orientation; gray, alpha, 16-bit, CMYK -> BGR8
    except cv2.error:  # e.g. beyond OPENCV_IO_MAX_IMAGE_PIXELS when the environment sets it
        img = None
    if img is None:
        raise ImageError("truncated or corrupt image")
    if img.shape[0] * img.shape[1] > limits.max_pixels:
        raise ImageError(f"image is {img.shape[1]}x{img.shape[0]} pixels, more than the limit of {limits.max_pixels}")
    if img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / 65535.0)
    return img


def to_bgr(array: np.ndarray) -> np.ndarray:
    """A numpy image (gray, BGR or BGRA; uint8, uint16 or float in 0..1) -> BGR uint8."""
    a = np.asarray(array)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)) or min(a.shape[:2]) < 1:
        raise ImageError(f"expected an H x W or H x W x 1/3/4 image array, got shape {a.shape}")
    if a.dtype == np.uint16:
        a = (a / 257).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = np.clip(a * 255.0, 0, 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ImageError(f"unsupported image dtype {a.dtype}")
    if a.ndim == 2 or a.shape[2] == 1:
        return cv2.cvtColor(a, cv2.COLOR_GRAY2BGR)
    if a.shape[2] == 4:
        return cv2.cvtColor(a, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(a)


def load(source: Any, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """A path, bytes, numpy array or PIL image -> BGR uint8 (for the library and CLI, not for requests)."""
    if isinstance(source, np.ndarray):
        return to_bgr(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode(bytes(source), limits)
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"cannot read {path}: {exc.strerror}") from None
        try:
            return decode(data, limits)
        except ImageError as exc:
            raise ImageError(f"{path}: {exc.reason}") from None
    if hasattr(source, "mode") and hasattr(source, "size"):  # PIL image
        rgb = np.asarray(source.convert("RGB"))
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    raise ImageError(f"cannot use a {type(source).__name__} as an image")


def encode(image_bgr: np.ndarray, ext: str = ".jpg", quality: int = 95) -> bytes:
    """BGR image -> encoded bytes."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, image_bgr, params)
    if not ok:
        raise ImageError(f"cannot encode image as {ext}")
    return buf.tobytes()
