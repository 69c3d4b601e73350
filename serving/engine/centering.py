"""Centering embeddings: subtracting the mean embedding of generic images, so cosine scores measure what differs.

A backbone trained for something else (the embedded NanoDet-g's, trained for COCO detection) gives every image a
large shared component: on general-lite 1.1.0 three quarters of the pairs of *different* gallery drawings scored
>= 0.8, and right and wrong answers overlapped (``benchmarks/quality/run.py --sweep``). Subtracting the mean
embedding of a generic image set, then L2-normalising again, removes that component: different images spread out
around 0.5, a right answer stands further above a wrong one (the standard first step of PCA whitening, without the
rotation, which needs far more images to estimate than a pack ships).

``RecPostProcess.centering`` names the vector's file (float32 ``[d]``, relative to the recogniser folder, read with
``allow_pickle=False``); :class:`~.extraction.FeatureExtractor` applies it to the L2-normalised pooled feature,
before any ``projection``. The vector belongs to the pre-processing and pooling it was estimated with (a scenario
pack sets all three together, as general-lite does), and galleries must be re-embedded when it changes.

``python -m shitu.serving.engine.centering OUT.npy [--scenario NAME]`` re-estimates it with a scenario's settings
from random crops of the photographs bundled in the scikit-image / scikit-learn wheels (no download).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shitu.model_spec import ModelSpec
from shitu.serving.engine.arrays import load_float_array
from shitu.serving.engine.predictor import PredictorError

#: scikit-image photographs bundled in its wheel (grey ones are repeated over 3 channels), and scikit-learn's two.
SKIMAGE_PHOTOS = (
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
    "camera",
    "clock",
    "coins",
    "moon",
    "page",
    "text",
    "colorwheel",
    "logo",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
CROPS_PER_PHOTO = 12


def load_centering(spec: ModelSpec, name: str | None) -> np.ndarray | None:
    """The centering vector ``name`` (relative to the recogniser folder), float32 ``[d]``; never unpickled."""
    if not name:
        return None
    path = spec.model_dir / name
    if not path.is_file():
        raise PredictorError(
            f"RecPostProcess.centering: no file {name!r} in the recogniser folder "
            f"{spec.model_dir.name}; copy it there or set the parameter to null"
        )
    return load_float_array(path, 1, "the centering vector", "[d]")


def center(feats: np.ndarray, mean: np.ndarray, where: Any = "") -> np.ndarray:
    """``l2(feats) - mean`` (rows); the caller normalises again. ``where`` names the folder in errors."""
    if feats.shape[1] != mean.shape[0]:
        raise PredictorError(
            f"{where}: the centering vector has {mean.shape[0]} values, the model gives {feats.shape[1]}-d features"
        )
    norm = np.linalg.norm(feats, axis=1, keepdims=True)
    return (feats / np.maximum(norm, 1e-12) - mean).astype(np.float32)


def generic_images(seed: int = 0) -> list[np.ndarray]:
    """Random crops (20-100 % of each side) of the bundled photographs, BGR; deterministic for ``seed``."""
    import cv2
    import skimage.data
    from sklearn.datasets import load_sample_image

    photos = []
    for name in SKIMAGE_PHOTOS:
        img = np.asarray(getattr(skimage.data, name)())
        img = np.stack([img] * 3, axis=2) if img.ndim == 2 else img[:, :, :3]
        photos.append(img.astype(np.uint8))
    photos += [load_sample_image(name) for name in SKLEARN_PHOTOS]
    rng = np.random.RandomState(seed)
    out = []
    for rgb in photos:
        bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
        h, w = bgr.shape[:2]
        for _ in range(CROPS_PER_PHOTO):
            s = rng.uniform(0.2, 1.0)
            ch, cw = int(h * s * rng.uniform(0.7, 1.0)), int(w * s * rng.uniform(0.7, 1.0))
            y, x = rng.randint(0, h - ch + 1), rng.randint(0, w - cw + 1)
            out.append(bgr[y : y + ch, x : x + cw])
    return out


def estimate(embed: Callable[[list[np.ndarray]], np.ndarray], images: Sequence[np.ndarray]) -> np.ndarray:
    """The mean of the L2-normalised embeddings of ``images`` (``embed``: un-normalised, un-centred features)."""
    feats = np.asarray(embed(list(images)), np.float64)
    feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    return feats.mean(axis=0).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Estimate a recogniser's centering vector from generic photographs.")
    ap.add_argument("out", help="the .npy file to write")
    ap.add_argument("--scenario", default=None, help="scenario pack whose recogniser and settings to use")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from shitu.serving.engine import load_engine

    engine = load_engine(args.scenario, params={"RecPostProcess.centering": None})
    params = engine.params.override({"RecPostProcess.normalize": False})
    mean = estimate(lambda imgs: engine.extractor.embed(imgs, params), generic_images(args.seed))
    np.save(args.out, mean, allow_pickle=False)
    print(
        f"{args.out}: mean of {len(SKIMAGE_PHOTOS + SKLEARN_PHOTOS) * CROPS_PER_PHOTO} generic crops, "
        f"norm {float(np.linalg.norm(mean)):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
