"""A cross-style retrieval set built at run time from two Debian icon themes and the scikit photos.

Same shape as the set issue #18 was judged on (one artist's drawings in the gallery, another artist's drawings
of the same objects as queries), different data:

- gallery: style A (``oxygen-icon-theme``, 128 px PNG) of each name in two framings: ``margin`` (centred on a
  white 256 x 256 canvas, 75 % of its side) and ``tight`` (cut to its alpha bounding box on white: the object fills
  its image, as in the set issue #28 was measured on);
- ``alone`` queries: style B (``elementary-xfce-icon-theme``, 128 px PNG) of the same name on white;
- ``scene`` queries: style B pasted on a real photograph (scikit-image / scikit-learn sample photos), at 25-60 %
  of the photo's short side, rotated (up to 25 degrees), blurred and JPEG-compressed; the true box is kept.

Names are those both themes draw in their ``apps``, ``devices``, ``places``, ``categories``, ``actions`` and
``status`` folders (mime-type icons are left out: they are near-identical sheets of paper), with duplicates (the
same picture under two names in either theme) removed. Everything is deterministic for a given ``seed``.
Nothing is downloaded: the themes come from ``apt-get install oxygen-icon-theme elementary-xfce-icon-theme``.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

ICONS = Path(os.environ.get("SHITU_ICON_ROOT", "/usr/share/icons"))
THEME_A = ("oxygen", "oxygen/base/128x128/{folder}/*.png", "oxygen-icon-theme")
THEME_B = ("elementary-xfce", "elementary-xfce/{folder}/128/*.png", "elementary-xfce-icon-theme")
FOLDERS = ("apps", "devices", "places", "categories", "actions", "status")
#: Colour photographs bundled in the scikit-image / scikit-learn wheels (no download).
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "brick",
    "grass",
    "gravel",
    "china.jpg",
    "flower.jpg",
)
CANVAS = 256


class MissingData(RuntimeError):
    """An icon theme or photo is not installed; the message says which package to install."""


@dataclass
class Scene:
    image: np.ndarray  # BGR
    label: str
    box: list[float]  # [x1, y1, x2, y2], the pasted object's visible pixels


@dataclass
class QualitySet:
    labels: list[str]
    gallery: list[np.ndarray]  # BGR, one per label (style A on a white margin)
    alone: list[np.ndarray]  # BGR, one per label (style B on white)
    scenes: list[Scene] = field(default_factory=list)
    gallery_tight: list[np.ndarray] = field(default_factory=list)  # BGR, style A cut to its alpha box, on white
    styles: tuple[str, str] = (THEME_A[0], THEME_B[0])

    def framings(self) -> dict[str, list[np.ndarray]]:
        """The gallery in each framing: ``margin`` and ``tight``."""
        return {"margin": self.gallery, "tight": self.gallery_tight}

    def describe(self) -> str:
        return (
            f"{len(self.labels)} classes: gallery {self.styles[0]} (margin / tight), queries {self.styles[1]} alone "
            f"({len(self.alone)}) and on photos ({len(self.scenes)})"
        )


def _theme_icons(pattern: str, package: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for folder in FOLDERS:
        for path in sorted(glob.glob(str(ICONS / pattern.format(folder=folder)))):
            found.setdefault(Path(path).stem, path)
    if not found:
        raise MissingData(f"no icons under {ICONS / pattern.split('/')[0]}: apt-get install {package}")
    return found


def _read_rgba(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise MissingData(f"cannot read {path}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGRA)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    return img


def _digest(path: str) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def pick_labels(n_classes: int, seed: int) -> list[tuple[str, str, str]]:
    """(name, style A path, style B path) for ``n_classes`` names drawn deterministically."""
    a, b = _theme_icons(THEME_A[1], THEME_A[2]), _theme_icons(THEME_B[1], THEME_B[2])
    seen_a: set[str] = set()
    seen_b: set[str] = set()
    rows = []
    for name in sorted(set(a) & set(b)):
        da, db = _digest(a[name]), _digest(b[name])
        if da in seen_a or db in seen_b:
            continue  # the same picture under another name: ambiguous truth
        seen_a.add(da)
        seen_b.add(db)
        rows.append((name, a[name], b[name]))
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(rows))[:n_classes]
    return [rows[i] for i in sorted(order)]


def on_white(rgba: np.ndarray, size: int = CANVAS) -> np.ndarray:
    """An RGBA icon centred on a white square canvas (BGR)."""
    h, w = rgba.shape[:2]
    scale = 0.75 * size / max(h, w)
    icon = cv2.resize(rgba, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    canvas = np.full((size, size, 3), 255, np.float32)
    y, x = (size - icon.shape[0]) // 2, (size - icon.shape[1]) // 2
    _paste(canvas, icon, x, y)
    return canvas.astype(np.uint8)


def tight(rgba: np.ndarray) -> np.ndarray:
    """An RGBA icon cut to its visible pixels (alpha > 32) on white (BGR): the object fills the image."""
    ys, xs = np.nonzero(rgba[:, :, 3] > 32)
    if len(ys):
        rgba = rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    canvas = np.full(rgba.shape[:2] + (3,), 255, np.float32)
    _paste(canvas, rgba, 0, 0)
    return canvas.astype(np.uint8)


def _paste(canvas: np.ndarray, rgba: np.ndarray, x: int, y: int) -> None:
    h, w = rgba.shape[:2]
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    region = canvas[y : y + h, x : x + w]
    region[:] = region * (1 - alpha) + rgba[:, :, :3].astype(np.float32) * alpha


def load_photos() -> list[np.ndarray]:
    """The background photographs (BGR, colour)."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    out = []
    for name in PHOTOS:
        try:
            img = load_sample_image(name) if name.endswith(".jpg") else getattr(skimage.data, name)()
        except Exception as exc:  # noqa: BLE001 - the message names the package to install
            raise MissingData(f"photo {name}: {exc} (pip install scikit-image scikit-learn)") from exc
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=2)
        out.append(cv2.cvtColor(img[:, :, :3], cv2.COLOR_RGB2BGR))
    return out


def make_scene(rgba: np.ndarray, photo: np.ndarray, rng: np.random.RandomState) -> tuple[np.ndarray, list[float]]:
    """``rgba`` pasted on a crop of ``photo``: (BGR JPEG-compressed image, true box)."""
    ph, pw = photo.shape[:2]
    out_w, out_h = (480, 360) if rng.rand() < 0.5 else (360, 480)
    s = min(pw / out_w, ph / out_h) * rng.uniform(0.6, 1.0)
    cw, ch = int(out_w * s), int(out_h * s)
    x0, y0 = rng.randint(0, pw - cw + 1), rng.randint(0, ph - ch + 1)
    bg = cv2.resize(photo[y0 : y0 + ch, x0 : x0 + cw], (out_w, out_h), interpolation=cv2.INTER_AREA).astype(np.float32)
    side = int(min(out_w, out_h) * rng.uniform(0.25, 0.60))
    icon = cv2.resize(rgba, (side, side), interpolation=cv2.INTER_AREA if side < rgba.shape[0] else cv2.INTER_CUBIC)
    angle = rng.uniform(-25, 25)
    pad = side // 2
    icon = cv2.copyMakeBorder(icon, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0, 0))
    c = icon.shape[0] / 2
    rot = cv2.getRotationMatrix2D((c, c), angle, 1.0)
    icon = cv2.warpAffine(icon, rot, icon.shape[:2][::-1], flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    ys, xs = np.nonzero(icon[:, :, 3] > 32)
    icon = icon[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    ih, iw = icon.shape[:2]
    x, y = rng.randint(0, max(1, out_w - iw)), rng.randint(0, max(1, out_h - ih))
    icon = icon[: out_h - y, : out_w - x]
    _paste(bg, icon, x, y)
    sigma = rng.uniform(0.0, 1.5)
    img = bg.astype(np.uint8)
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.randint(40, 86))])
    assert ok
    return cv2.imdecode(enc, cv2.IMREAD_COLOR), [float(x), float(y), float(x + icon.shape[1]), float(y + icon.shape[0])]


def build(n_classes: int = 80, scenes_per_class: int = 1, seed: int = 0, reverse: bool = False) -> QualitySet:
    """The whole set, in memory (a few MB); ``reverse``: the other style pair (gallery style B, queries style A)."""
    picked = pick_labels(n_classes, seed)
    photos = load_photos()
    rng = np.random.RandomState(seed + 1)
    labels, gallery, gallery_tight, alone, scenes = [], [], [], [], []
    for name, path_a, path_b in picked:
        if reverse:
            path_a, path_b = path_b, path_a
        labels.append(name)
        a = _read_rgba(path_a)
        gallery.append(on_white(a))
        gallery_tight.append(tight(a))
        b = _read_rgba(path_b)
        alone.append(on_white(b))
        for _ in range(scenes_per_class):
            img, box = make_scene(b, photos[rng.randint(len(photos))], rng)
            scenes.append(Scene(img, name, box))
    styles = (THEME_B[0], THEME_A[0]) if reverse else (THEME_A[0], THEME_B[0])
    return QualitySet(labels, gallery, alone, scenes, gallery_tight, styles)


def write_list_file(qs: QualitySet, folder: Path) -> Path:
    """The gallery as PaddleClas writes it: ``images/<label>.png`` and ``gallery.txt`` (``path<TAB>label``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    lines = []
    for label, img in zip(qs.labels, qs.gallery):
        rel = f"images/{label}.png"
        cv2.imwrite(str(folder / rel), img)
        lines.append(f"{rel}\t{label}")
    out = folder / "gallery.txt"
    out.write_text("\n".join(lines) + "\n")
    return out
