"""Pre-processing pipelines built from config lists with PaddleClas's op names and semantics.

A PP-ShiTu ``inference_*.yaml`` section can be used as is::

    RecPreProcess:
      transform_ops:
        - ResizeImage: {size: 224}
        - NormalizeImage: {scale: 0.00392157, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], order: ''}
        - ToCHWImage:

Images enter as OpenCV decodes them (BGR, uint8, HWC); :class:`Transforms` converts the colour order once, to what
the model expects (``input_color``), then applies the ops. Detector ops (``Det*``) also keep the ``im_shape`` /
``scale_factor`` that PaddleDetection exports take as inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from shitu.errors import InvalidArgument

_INTERP = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "linear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


class TransformError(InvalidArgument):
    """An op name or its arguments are invalid."""


@dataclass
class Sample:
    """One image moving through the ops, with the geometry detectors need."""

    image: np.ndarray
    #: Original (height, width).
    orig_shape: tuple[int, int]
    #: (scale_y, scale_x) from the original image to the network input.
    scale_factor: tuple[float, float] = (1.0, 1.0)
    #: Whether ``image`` is already CHW (normalisation writes CHW directly; ToCHWImage then has nothing to do).
    chw: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


Op = Callable[[Sample], Sample]
OPS: dict[str, Callable[..., Op]] = {}


def register_op(name: str) -> Callable[[Callable[..., Op]], Callable[..., Op]]:
    """Decorator: make ``name`` usable in ``transform_ops`` lists."""

    def wrap(factory: Callable[..., Op]) -> Callable[..., Op]:
        OPS[name] = factory
        return factory

    return wrap


def _interp(value: Any, default: int = cv2.INTER_LINEAR) -> int:
    if value is None:
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lower() in _INTERP:
        return _INTERP[value.lower()]
    raise TransformError(f"unknown interpolation {value!r}; use one of {sorted(_INTERP)} or a cv2 flag")


def _pair(value: Any, what: str) -> tuple[int, int]:
    """``224`` or ``[w, h]`` -> (w, h) (PaddleClas's ResizeImage ``size`` is (w, h))."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise TransformError(f"{what} must be an int or [w, h], got {value!r}")


def _scale(value: Any) -> float:
    if isinstance(value, str):  # PaddleClas writes scale: 1.0/255.0
        try:
            num, _, den = value.partition("/")
            return float(num) / float(den) if den else float(num)
        except ValueError:
            raise TransformError(f"scale must be a number or 'a/b', got {value!r}") from None
    return float(value)


@register_op("ResizeImage")
def resize_image(
    size: Any = None,
    resize_short: int | None = None,
    interpolation: Any = None,
    backend: str = "cv2",
    return_numpy: bool = True,
) -> Op:
    """Resize to ``size`` ([w, h] or an int), or the short side to ``resize_short`` keeping the aspect ratio."""
    if (size is None) == (resize_short is None):
        raise TransformError("ResizeImage needs exactly one of 'size' or 'resize_short'")
    if backend not in ("cv2", "pil"):
        raise TransformError(f"ResizeImage backend must be 'cv2' or 'pil', got {backend!r}")
    flag = _interp(interpolation)
    target = _pair(size, "ResizeImage.size") if size is not None else None

    def op(s: Sample) -> Sample:
        h, w = _hwc(s).shape[:2]
        if target is not None:
            tw, th = target
        else:
            assert resize_short is not None  # exactly one of size and resize_short (checked above)
            ratio = float(resize_short) / min(h, w)
            tw, th = max(1, int(round(w * ratio))), max(1, int(round(h * ratio)))
        if backend == "pil":
            from PIL import Image

            pil_flag = {cv2.INTER_NEAREST: 0, cv2.INTER_LINEAR: 2, cv2.INTER_CUBIC: 3, cv2.INTER_LANCZOS4: 1}
            s.image = np.asarray(Image.fromarray(s.image).resize((tw, th), pil_flag.get(flag, 2)))
        else:
            s.image = cv2.resize(s.image, (tw, th), interpolation=flag)
        return s

    return op


@register_op("PadToSquare")
def pad_to_square(value: Any = (0, 0, 0)) -> Op:
    """Pad the shorter side (evenly on both ends) with a constant colour so the image is square.

    Put before a square ``ResizeImage`` to keep the object's aspect ratio instead of stretching it (a detector
    box of a tall bottle then looks like a gallery picture of the bottle). ``value`` is one colour in the model's
    channel order (``input_color``); ``NormalizeImage``'s ``mean`` makes the padding zero at the network input.
    """
    fill = [float(v) for v in value] if isinstance(value, (list, tuple)) else None
    if fill is None or len(fill) not in (1, 3):
        raise TransformError(f"PadToSquare value must be a list of 1 or 3 numbers, got {value!r}")

    def op(s: Sample) -> Sample:
        img = _hwc(s)
        h, w = img.shape[:2]
        if h == w:
            return s
        top, left = (w - h) // 2 if w > h else 0, (h - w) // 2 if h > w else 0
        bottom, right = max(w - h - top, 0), max(h - w - left, 0)
        colour = fill * (img.shape[2] if img.ndim == 3 and len(fill) == 1 else 1)
        s.image = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=colour)
        return s

    return op


@register_op("CropImage")
def crop_image(size: Any = 224) -> Op:
    """Centre crop to ``size`` ([w, h] or an int)."""
    cw, ch = _pair(size, "CropImage.size")

    def op(s: Sample) -> Sample:
        h, w = _hwc(s).shape[:2]
        if w < cw or h < ch:
            raise TransformError(f"CropImage: image {w}x{h} is smaller than the crop {cw}x{ch}")
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        s.image = s.image[y0 : y0 + ch, x0 : x0 + cw]
        return s

    return op


def _normalizer(scale: float, mean: Any, std: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``(x * scale - mean) / std`` per channel, HWC in, **CHW float32 out**.

    Computed one channel plane at a time as ``x * a + b`` straight into the CHW buffer: about ten times faster
    than broadcasting over HWC and transposing afterwards (0.24 vs 2.5 ms for 416x416x3).
    """
    mean_a = np.asarray(mean, np.float32).reshape(-1)
    std_a = np.asarray(std, np.float32).reshape(-1)
    if np.any(std_a == 0):
        raise TransformError("std must not contain 0")
    a = (np.float32(scale) / std_a).astype(np.float32)
    b = (-mean_a / std_a).astype(np.float32)

    def apply(img: np.ndarray) -> np.ndarray:
        channels = img.shape[2] if img.ndim == 3 else 1
        if len(a) not in (1, channels):
            raise TransformError(f"mean/std have {len(a)} values for a {channels}-channel image")
        out = np.empty((channels, img.shape[0], img.shape[1]), np.float32)
        for c in range(channels):
            plane = img[:, :, c] if img.ndim == 3 else img
            k = c if len(a) > 1 else 0
            np.multiply(plane, a[k], out=out[c], dtype=np.float32)
            out[c] += b[k]
        return out

    return apply


def _hwc(s: Sample) -> np.ndarray:
    """The image as HWC, for ops that work on pixels (resize, crop)."""
    if s.chw:
        s.image, s.chw = np.ascontiguousarray(s.image.transpose(1, 2, 0)), False
    return s.image


@register_op("NormalizeImage")
def normalize_image(
    scale: Any = 1.0 / 255.0,
    mean: Any = (0.485, 0.456, 0.406),
    std: Any = (0.229, 0.224, 0.225),
    order: str = "hwc",
    channel_num: int = 3,
    output_fp16: bool = False,
) -> Op:
    """``(x * scale - mean) / std`` per channel (``order`` is accepted for PaddleClas configs; output is CHW)."""
    order = (order or "hwc").lower()
    if order not in ("hwc", "chw"):
        raise TransformError(f"NormalizeImage order must be 'hwc' or 'chw', got {order!r}")
    if channel_num != 3:
        raise TransformError("NormalizeImage: only channel_num 3 is supported")
    norm = _normalizer(_scale(scale), mean, std)

    def op(s: Sample) -> Sample:
        s.image, s.chw = norm(_hwc(s)), True  # CHW either way: the pipeline's output is CHW
        if output_fp16:
            s.image = s.image.astype(np.float16)
        return s

    return op


@register_op("ToCHWImage")
def to_chw_image() -> Op:
    def op(s: Sample) -> Sample:
        if not s.chw:
            s.image, s.chw = s.image.transpose(2, 0, 1), True
        return s

    return op


@register_op("DetResize")
def det_resize(target_size: Any = (640, 640), keep_ratio: bool = False, interp: Any = cv2.INTER_LINEAR) -> Op:
    """PaddleDetection's Resize: to ``target_size`` ([h, w]); ``keep_ratio`` fits the image inside it."""
    if isinstance(target_size, int):
        target_size = [target_size, target_size]
    if not (isinstance(target_size, (list, tuple)) and len(target_size) == 2):
        raise TransformError(f"DetResize.target_size must be [h, w], got {target_size!r}")
    th, tw = int(target_size[0]), int(target_size[1])
    flag = _interp(interp)

    def op(s: Sample) -> Sample:
        h, w = _hwc(s).shape[:2]
        if keep_ratio:
            ratio = min(min(th, tw) / min(h, w), max(th, tw) / max(h, w))
            sy = sx = ratio
        else:
            sy, sx = th / h, tw / w
        s.image = (
            cv2.resize(s.image, None, None, fx=sx, fy=sy, interpolation=flag)
            if keep_ratio
            else cv2.resize(s.image, (tw, th), interpolation=flag)
        )
        s.scale_factor = (s.scale_factor[0] * sy, s.scale_factor[1] * sx)
        return s

    return op


@register_op("DetNormalizeImage")
def det_normalize_image(
    is_scale: bool = True,
    mean: Any = (0.485, 0.456, 0.406),
    std: Any = (0.229, 0.224, 0.225),
    norm_type: str = "mean_std",
) -> Op:
    """PaddleDetection's NormalizeImage: optional ``/255`` then ``(x - mean) / std``."""
    if norm_type not in ("mean_std", "none"):
        raise TransformError(f"DetNormalizeImage norm_type must be 'mean_std' or 'none', got {norm_type!r}")
    if norm_type == "none":
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    norm = _normalizer(1.0 / 255.0 if is_scale else 1.0, mean, std)

    def op(s: Sample) -> Sample:
        s.image, s.chw = norm(_hwc(s)), True
        return s

    return op


@register_op("DetPermute")
def det_permute() -> Op:
    return to_chw_image()


@register_op("DetPadStride")
def det_pad_stride(stride: int = 0) -> Op:
    """Zero-pad a CHW image so height and width are multiples of ``stride``."""

    def op(s: Sample) -> Sample:
        if stride <= 0:
            return s
        if not s.chw:
            s.image, s.chw = s.image.transpose(2, 0, 1), True
        c, h, w = s.image.shape
        ph, pw = -(-h // stride) * stride, -(-w // stride) * stride
        padded = np.zeros((c, ph, pw), s.image.dtype)
        padded[:, :h, :w] = s.image
        s.image = padded
        return s

    return op


def build_op(entry: dict[str, Any]) -> Op:
    """One ``{OpName: {args}}`` entry -> a callable op."""
    if not isinstance(entry, dict) or len(entry) != 1:
        raise TransformError(f"each transform op must be a one-key mapping {{OpName: {{args}}}}, got {entry!r}")
    name, args = next(iter(entry.items()))
    if name not in OPS:
        raise TransformError(f"unknown transform op {name!r}; known ops: {', '.join(sorted(OPS))}")
    try:
        return OPS[name](**(args or {}))
    except TypeError as exc:
        raise TransformError(f"{name}: {exc}") from None


class Transforms:
    """A pre-processing pipeline: BGR uint8 image -> network input (float32 CHW, float16 with ``output_fp16``)
    plus geometry."""

    def __init__(self, ops: list[dict[str, Any]], input_color: str = "RGB"):
        self.config = ops
        self.ops = [build_op(e) for e in ops]
        self.input_color = input_color

    def __call__(self, image_bgr: np.ndarray) -> Sample:
        img = image_bgr if self.input_color == "BGR" else cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        s = Sample(img, (int(image_bgr.shape[0]), int(image_bgr.shape[1])))
        for op in self.ops:
            s = op(s)
        if s.image.ndim != 3:
            raise TransformError("the transform pipeline must end with a 3-d image")
        if not s.chw:
            s.image, s.chw = s.image.transpose(2, 0, 1), True  # ops left it HWC: the network takes CHW
        # float32, or float16 when NormalizeImage(output_fp16=True) asked for it (models taking fp16 input).
        dtype = np.float16 if s.image.dtype == np.float16 else np.float32
        s.image = np.ascontiguousarray(s.image, dtype=dtype)
        return s
