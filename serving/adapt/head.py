"""Adapting a recogniser to a gallery's own images: a projection head trained on frozen embeddings.

PaddleClas's FAQ answers poor accuracy on one's own data with fine-tuning. This is the CPU-minutes version: the
backbone stays frozen; each gallery image is pasted on background photographs (scale, rotation, colour jitter,
blur, JPEG, a loose crop around it as a detector would give) to make training views; their embeddings train a
linear map ``W [d, d]`` (started at the identity) with a cosine-softmax loss over the gallery's labels. The result
is a new recogniser folder: the same model files plus ``projection.npy`` and a ``shitu_model.yml`` naming it, which
:class:`~.extraction.FeatureExtractor` applies after pooling. Galleries must then be re-embedded with it
(``Global.rec_inference_model_dir``).

Held-out views measure R@1 before and after: made with another seed on background images the head never saw
(:func:`heldout_backgrounds`: synthetic clutter, not any sample photo a user's test images may share; issue #28).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from shitu.model_spec import SPEC_FILE, ModelSpec
from shitu.serving.engine.extraction import crop, l2_normalize

PROJECTION_FILE = "projection.npy"
REPORT_FILE = "adapt_report.json"


@dataclass
class AdaptReport:
    classes: int
    train_views: int
    heldout_views: int
    steps: int
    final_loss: float
    heldout_r1_before: float
    heldout_r1_after: float
    seconds: float = 0.0
    labels: list[str] = field(default_factory=list)
    heldout_backgrounds: str = ""


def default_backgrounds() -> list[np.ndarray]:
    """The photographs bundled in the scikit-image / scikit-learn wheels (BGR); no download."""
    try:
        import skimage.data
        from sklearn.datasets import load_sample_image
    except ImportError as exc:
        raise RuntimeError(
            f"background photos need scikit-image and scikit-learn ({exc}); "
            "pip install 'shitu-hub[demo]' or pass background images"
        ) from None
    out = [cv2.cvtColor(load_sample_image(n), cv2.COLOR_RGB2BGR) for n in ("china.jpg", "flower.jpg")]
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "brick", "grass", "gravel"):
        img = getattr(skimage.data, name)()
        img = np.stack([img] * 3, axis=2) if img.ndim == 2 else img[:, :, :3]
        out.append(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return out


def heldout_backgrounds(n: int = 8, seed: int = 2028) -> list[np.ndarray]:
    """``n`` synthetic cluttered backgrounds (BGR, 320 x 320): a smooth random colour field, random filled
    rectangles, ellipses and lines, and a fine texture; deterministic for ``seed``. Held-out views are made on
    these, so they share no photograph with training (nor with the scikit sample photos users often test on)."""
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        field_ = cv2.resize(rng.randint(0, 256, (4, 4, 3)).astype(np.uint8), (320, 320), interpolation=cv2.INTER_CUBIC)
        img = np.ascontiguousarray(field_)
        for _ in range(rng.randint(6, 14)):
            colour = tuple(int(c) for c in rng.randint(0, 256, 3))
            x, y = (int(v) for v in rng.randint(0, 320, 2))
            w, h = (int(v) for v in rng.randint(15, 140, 2))
            kind = rng.randint(3)
            if kind == 0:
                cv2.rectangle(img, (x, y), (x + w, y + h), colour, -1)
            elif kind == 1:
                cv2.ellipse(img, (x, y), (w // 2, h // 2), float(rng.uniform(0, 180)), 0, 360, colour, -1)
            else:
                cv2.line(img, (x, y), (x + w, y + h), colour, int(rng.randint(2, 9)))
        noise = rng.normal(0, rng.uniform(4, 20), img.shape)
        img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        out.append(cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 1.5))))
    return out


def _object_mask(img: np.ndarray) -> np.ndarray:
    """Where the object is: non-white pixels for a picture on white (all four corners near white), else all."""
    h, w = img.shape[:2]
    corners = img[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]]
    if (corners > 240).all():
        mask = np.where((img < 240).any(axis=2), 255, 0).astype(np.uint8)
        if mask.any():
            return cv2.dilate(mask, np.ones((3, 3), np.uint8))
    return np.full((h, w), 255, np.uint8)


def make_view(img: np.ndarray, background: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """One training view: ``img`` jittered, pasted on a crop of ``background``, loosely cropped around it."""
    mask = _object_mask(img)
    ys, xs = np.nonzero(mask)
    img, mask = (
        img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1],
        mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1],
    )
    bh, bw = background.shape[:2]
    side = min(bh, bw)
    canvas = cv2.resize(background[:side, :side], (320, 320)).astype(np.float32)
    scale = rng.uniform(0.35, 0.8) * 320 / max(img.shape[:2])
    size = (max(8, int(img.shape[1] * scale)), max(8, int(img.shape[0] * scale)))
    obj: np.ndarray = cv2.resize(img, size).astype(np.float32)
    m: np.ndarray = cv2.resize(mask, size)
    obj = np.clip(obj * rng.uniform(0.75, 1.25) + rng.uniform(-25, 25) + rng.uniform(-12, 12, 3), 0, 255)
    angle = rng.uniform(-20, 20)
    pad = max(size) // 2
    obj = cv2.copyMakeBorder(obj, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    m = cv2.copyMakeBorder(m, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    rot = cv2.getRotationMatrix2D((obj.shape[1] / 2, obj.shape[0] / 2), angle, 1.0)
    obj = cv2.warpAffine(obj, rot, obj.shape[1::-1])
    m = cv2.warpAffine(m, rot, m.shape[1::-1])
    ys, xs = np.nonzero(m > 32)
    obj, m = obj[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    oh, ow = min(obj.shape[0], 320), min(obj.shape[1], 320)
    x, y = rng.randint(0, 321 - ow), rng.randint(0, 321 - oh)
    alpha = (m[:oh, :ow].astype(np.float32) / 255.0)[:, :, None]
    region = canvas[y : y + oh, x : x + ow]
    region[:] = region * (1 - alpha) + obj[:oh, :ow] * alpha
    out: np.ndarray = canvas.astype(np.uint8)
    if rng.rand() < 0.5:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.2))
    ok, enc = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.randint(50, 95))])
    decoded = cv2.imdecode(enc, cv2.IMREAD_COLOR) if ok else None
    out = decoded if decoded is not None else out
    return crop(out, [x, y, x + ow, y + oh], rng.uniform(0.0, 0.2))


#: Training views made and embedded at a time: memory stays bounded (a view is up to 320 x 320 pixels) whatever the
#: number of gallery images.
VIEW_CHUNK = 64


def iter_views(
    images: Sequence[np.ndarray], backgrounds: Sequence[np.ndarray], per_image: int, seed: int
) -> Iterator[tuple[np.ndarray, int]]:
    """``per_image`` views of each image, one at a time: ``(view, index of the image it came from)``."""
    rng = np.random.RandomState(seed)
    for i, img in enumerate(images):
        for _ in range(per_image):
            yield make_view(img, backgrounds[rng.randint(len(backgrounds))], rng), i


def embed_views(
    embed: Callable[[list[np.ndarray]], np.ndarray],
    images: Sequence[np.ndarray],
    backgrounds: Sequence[np.ndarray],
    per_image: int,
    seed: int,
) -> tuple[np.ndarray, list[int]]:
    """The embeddings of :func:`iter_views`' views, made :data:`VIEW_CHUNK` at a time; (features, owners)."""
    feats: list[np.ndarray] = []
    owner: list[int] = []
    chunk: list[np.ndarray] = []
    for view, i in iter_views(images, backgrounds, per_image, seed):
        chunk.append(view)
        owner.append(i)
        if len(chunk) == VIEW_CHUNK:
            feats.append(np.asarray(embed(chunk), np.float32))
            chunk = []
    if chunk:
        feats.append(np.asarray(embed(chunk), np.float32))
    return (np.concatenate(feats) if feats else np.zeros((0, 0), np.float32)), owner


def train_projection(
    feats: np.ndarray,
    targets: np.ndarray,
    classes: int,
    steps: int = 300,
    lr: float = 0.01,
    scale: float = 16.0,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """A ``[d, d]`` map (from the identity) trained with cosine softmax; (matrix, final loss)."""
    import paddle

    paddle.seed(seed)
    d = feats.shape[1]
    w = paddle.create_parameter([d, d], "float32", default_initializer=paddle.nn.initializer.Assign(np.eye(d)))
    centres = paddle.create_parameter([d, classes], "float32")
    x = paddle.to_tensor(l2_normalize(feats))
    y = paddle.to_tensor(targets.astype(np.int64))
    opt = paddle.optimizer.Adam(lr, parameters=[w, centres], weight_decay=1e-4)
    loss = None
    for _ in range(steps):
        z = paddle.nn.functional.normalize(x @ w, axis=1)
        loss = paddle.nn.functional.cross_entropy(scale * z @ paddle.nn.functional.normalize(centres, axis=0), y)
        loss.backward()
        opt.step()
        opt.clear_grad()
    return w.numpy().astype(np.float32), float(loss) if loss is not None else float("nan")


def _r1(queries: np.ndarray, owner: list[int], gallery: np.ndarray, labels: Sequence[str]) -> float:
    best = np.argmax(l2_normalize(queries) @ l2_normalize(gallery).T, axis=1)
    return float(np.mean([labels[b] == labels[o] for b, o in zip(best, owner)]))


def adapt(
    embed: Any,
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    backgrounds: Sequence[np.ndarray],
    per_image: int = 12,
    heldout_per_image: int = 3,
    steps: int = 300,
    seed: int = 0,
    heldout: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, AdaptReport]:
    """Train the projection for ``images`` under ``labels``; ``embed``: BGR images -> un-projected features.
    Held-out views are pasted on ``heldout`` (default :func:`heldout_backgrounds`), never on ``backgrounds``."""
    import time

    t0 = time.perf_counter()
    names = sorted(set(labels))
    target_of = {n: i for i, n in enumerate(names)}
    g = np.asarray(embed(list(images)), np.float32)
    train, owner = embed_views(embed, images, backgrounds, per_image, seed)
    feats = np.concatenate([g, train]) if len(train) else g
    targets = np.array([target_of[lab] for lab in labels] + [target_of[labels[o]] for o in owner])
    matrix, loss = train_projection(feats, targets, len(names), steps, seed=seed)
    held_bgs = list(heldout) if heldout is not None else heldout_backgrounds()
    h, held_owner = embed_views(embed, images, held_bgs, heldout_per_image, seed + 1000)
    report = AdaptReport(
        len(names),
        len(owner),
        len(held_owner),
        steps,
        loss,
        _r1(h, held_owner, g, labels),
        _r1(h @ matrix, held_owner, g @ matrix, labels),
        labels=names,
        heldout_backgrounds="given" if heldout is not None else f"{len(held_bgs)} synthetic clutter images",
    )
    report.seconds = time.perf_counter() - t0
    return matrix, report


def write_recognizer(
    spec: ModelSpec,
    pooling: str,
    matrix: np.ndarray,
    out_dir: Path,
    report: AdaptReport,
    save_network: Callable[[Path], tuple[str, str]] | None = None,
    centering: str | None = None,
) -> Path:
    """A new recogniser folder: ``spec``'s model files, ``projection.npy`` and its ``shitu_model.yml``.

    ``centering``: the centring vector's file the features were trained with (copied with the folder's other
    files), declared in the description so the folder embeds as trained wherever it is loaded.

    ``save_network(out_dir)``: writes a fine-tuned network there instead of copying ``spec``'s (returns its
    model and params file names; the ONNX copy of the old weights is then left out)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    old_model, old_params = spec.files()
    old_network = {n for n in (spec.onnx_file, old_model.name, old_params.name) if n}
    if save_network is not None:
        model_name, params_name = save_network(out_dir)
        model, params = out_dir / model_name, out_dir / params_name
        spec = replace(spec, onnx_file=None)
    else:
        model, params = old_model, old_params
    for f in (model, params, spec.model_dir / spec.onnx_file if spec.onnx_file else None):
        if f is not None and f.is_file() and f.parent != out_dir:
            shutil.copy2(f, out_dir / f.name)
    # the folder's other files (vectors its description names, notices) come along; its own description, head and
    # report are written anew, and the old network files were handled above
    skip = old_network | {SPEC_FILE, PROJECTION_FILE, REPORT_FILE, spec.projection or PROJECTION_FILE}
    for f in sorted(Path(spec.model_dir).iterdir()):
        if f.is_file() and not f.is_symlink() and f.name not in skip and not (out_dir / f.name).exists():
            shutil.copy2(f, out_dir / f.name)
    np.save(out_dir / PROJECTION_FILE, matrix.astype(np.float32), allow_pickle=False)
    desc = {
        "kind": "extractor",
        "model_file": model.name,
        "params_file": params.name,
        "onnx_file": spec.onnx_file if spec.onnx_file and (out_dir / spec.onnx_file).is_file() else None,
        "input_color": spec.input_color,
        "transform_ops": spec.transform_ops,
        "pooling": pooling,
        "projection": PROJECTION_FILE,
        "centering": centering,
        "onednn": spec.onednn,
        "onednn_passes": spec.onednn_passes,
    }
    network = "its last layers fine-tuned" if save_network is not None else "the same network"
    header = (
        f"# Adapted by `shitu adapt` from {spec.model_dir.name}: {network} plus a projection head "
        f"trained on {report.classes} labels\n# (held-out R@1 {report.heldout_r1_before:.3f} -> "
        f"{report.heldout_r1_after:.3f}; adapt_report.json).\n"
    )
    (out_dir / SPEC_FILE).write_text(
        header + yaml.safe_dump({k: v for k, v in desc.items() if v is not None}, sort_keys=False)
    )
    (out_dir / REPORT_FILE).write_text(json.dumps(asdict(report), indent=2))
    return out_dir
