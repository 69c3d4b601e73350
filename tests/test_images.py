"""What cameras, phones and attackers send: every format decodes to BGR uint8, bad bytes are clear errors."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from shitu.serving.engine.images import ImageError, ImageLimits, b64decode, decode, load, to_bgr


def pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def rgb():
    a = np.zeros((60, 90, 3), np.uint8)
    a[:, :30] = (255, 0, 0)  # red band on the left (RGB)
    a[:, 30:60] = (0, 255, 0)
    a[:, 60:] = (0, 0, 255)
    return Image.fromarray(a)


def test_exif_orientation_is_applied(rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img = decode(pil_bytes(rgb, "JPEG", exif=exif, quality=95))
    assert img.shape == (90, 60, 3)  # displayed upright: width and height swapped
    assert img[2, 30, 2] > 200  # red band now at the top (BGR: red is channel 2)


@pytest.mark.parametrize(
    "fmt,mode,kw",
    [
        ("PNG", "L", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "I;16", {}),
        ("JPEG", "CMYK", {}),
        ("JPEG", "RGB", {"progressive": True}),
        ("WEBP", "RGB", {}),
        ("BMP", "RGB", {}),
        ("PNG", "P", {}),
        ("TIFF", "RGB", {}),
    ],
)
def test_formats_decode_to_bgr8(rgb, fmt, mode, kw):
    im = (
        rgb.convert(mode)
        if mode != "I;16"
        else Image.fromarray((np.asarray(rgb.convert("L")).astype(np.uint16) * 257), "I;16")
    )
    out = decode(pil_bytes(im, fmt, **kw))
    assert out.dtype == np.uint8 and out.shape == (60, 90, 3)
    # The values, not only the shape: each band's colour (BGR), or its gray level for gray images (16-bit
    # scaled back to 8 bits, CMYK not inverted). Lossy formats get a tolerance.
    if mode in ("L", "I;16"):
        gray = np.asarray(rgb.convert("L"))[30, [15, 45, 75]]
        want = [[int(v)] * 3 for v in gray]
    else:
        want = [[0, 0, 255], [0, 255, 0], [255, 0, 0]]  # red, green, blue bands as BGR
    got = out[30, [15, 45, 75]].astype(int)
    tol = 40 if fmt in ("JPEG", "WEBP") else 2
    assert np.abs(got - np.array(want)).max() <= tol, (mode, got.tolist(), want)


def test_truncated_and_garbage_are_errors(rgb):
    data = pil_bytes(rgb, "JPEG")
    with pytest.raises(ImageError, match="truncated"):
        decode(data[: len(data) // 2])
    png = pil_bytes(rgb, "PNG")
    with pytest.raises(ImageError, match="truncated"):
        decode(png[:-20])
    for junk in (b"hello world", b"\x00" * 100, b"GIF89a" + b"\x00" * 10):
        with pytest.raises(ImageError):
            decode(junk)
    with pytest.raises(ImageError, match="empty"):
        decode(b"")


def test_decompression_bomb_refused_before_decoding():
    """A small PNG that declares 30000x30000 pixels."""
    im = Image.new("1", (30000, 30000))
    data = pil_bytes(im, "PNG", optimize=True)
    assert len(data) < 200_000
    with pytest.raises(ImageError, match="limit"):
        decode(data, ImageLimits(max_pixels=40_000_000))


def test_size_limits(rgb):
    data = pil_bytes(rgb, "PNG")
    with pytest.raises(ImageError, match="larger than the limit"):
        decode(data, ImageLimits(max_image_bytes=100))
    with pytest.raises(ImageError, match="pixels"):
        decode(data, ImageLimits(max_pixels=100))


def test_base64_variants(rgb):
    data = pil_bytes(rgb, "PNG")
    std = base64.b64encode(data).decode()
    assert b64decode(std) == data
    assert b64decode("data:image/png;base64," + std) == data
    assert b64decode(base64.urlsafe_b64encode(data).decode().rstrip("=")) == data
    assert b64decode(std[:40] + "\n" + std[40:]) == data
    for bad in ("", "####", "abc$", "é"):
        with pytest.raises(ImageError):
            b64decode(bad)
    with pytest.raises(ImageError, match="base64 string"):
        b64decode(b"bytes")  # type: ignore[arg-type]


def test_load_accepts_paths_arrays_pil(tmp_path, rgb):
    p = tmp_path / "x.png"
    rgb.save(p)
    assert load(p).shape == (60, 90, 3)
    assert load(rgb).shape == (60, 90, 3)
    assert load(np.zeros((5, 6), np.uint8)).shape == (5, 6, 3)
    assert to_bgr(np.zeros((5, 6, 4), np.uint8)).shape == (5, 6, 3)
    with pytest.raises(ImageError, match="cannot read"):
        load(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="shape"):
        to_bgr(np.zeros((5,), np.uint8))
