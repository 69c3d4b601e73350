"""Feature extraction: crops -> embeddings.

Crops are pre-processed and run through the recognition model ``Global.batch_size`` at a time (crops of one batch
share the network input size, which the resize op fixes). A model whose output is a feature map
``[N, C, H, W]`` is pooled: ``gap`` (the folder's ``pooling: gap``) or generalised-mean ``gem`` (``RecPostProcess.pooling``,
power ``RecPostProcess.gem_power``; measured better on the embedded backbone, see ``benchmarks/quality``). Embeddings are L2-normalised (``RecPostProcess.normalize``) and can
be sign-binarised for hamming galleries (``RecPostProcess.binarize``). The embedding size is read from the model's
output, not assumed. A ``RecPostProcess.centering`` vector is subtracted right after pooling (:mod:`.centering`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shitu.model_spec import ModelSpec
from shitu.serving.engine.arrays import load_float_array
from shitu.serving.engine.centering import center, load_centering
from shitu.serving.engine.predictor import Predictor, PredictorError, RuntimeOptions
from shitu.serving.engine.timing import NULL_TIMER, StageTimer
from shitu.serving.engine.transforms import Transforms


def crop(image: np.ndarray, box: Sequence[float], padding: float = 0.0) -> np.ndarray:
    """The pixels of ``box`` [x1, y1, x2, y2], widened by ``padding`` x its width / height on each side
    (``Global.crop_padding``), clipped to the image; at least 1 x 1."""
    h, w = image.shape[:2]
    bx1, by1, bx2, by2 = (float(v) for v in box[:4])
    if padding:
        dx, dy = padding * (bx2 - bx1), padding * (by2 - by1)
        bx1, by1, bx2, by2 = bx1 - dx, by1 - dy, bx2 + dx, by2 + dy
    x1, y1, x2, y2 = (int(round(v)) for v in (bx1, by1, bx2, by2))
    x1, y1 = min(max(x1, 0), w - 1), min(max(y1, 0), h - 1)
    x2, y2 = max(min(x2, w), x1 + 1), max(min(y2, h), y1 + 1)
    return image[y1:y2, x1:x2]


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def pool(feature_map: np.ndarray, method: str, power: float = 3.0) -> np.ndarray:
    """``[N, C, H, W]`` -> ``[N, C]``: ``gap`` (mean) or ``gem`` (generalised mean, ``(mean(max(x, eps)^p))^(1/p)``)."""
    if method == "gem":  # float32 (4x faster than float64 for a batch of crops; within 2e-7 relative)
        x = np.maximum(feature_map.astype(np.float32, copy=False), np.float32(1e-6))
        x = x * x * x if power == 3.0 else x ** np.float32(power)
        return (x.mean(axis=(2, 3), dtype=np.float32) ** np.float32(1.0 / power)).astype(np.float32)
    return feature_map.mean(axis=(2, 3))


def binarize(x: np.ndarray) -> np.ndarray:
    """Sign bits packed 8 per byte: ``float [n, d]`` -> ``uint8 [n, ceil(d / 8)]``."""
    return np.packbits(x > 0, axis=1)


def load_projection(spec: ModelSpec) -> np.ndarray | None:
    """The folder's ``projection`` matrix (``shitu adapt``), float32 ``[d_in, d_out]``; never unpickled."""
    if not spec.projection:
        return None
    path = spec.model_dir / spec.projection
    return load_float_array(path, 2, "the projection", "[d_in, d_out]")


class FeatureExtractor:
    """Images (or crops) -> float32 embeddings ``[n, embedding_size]``."""

    def __init__(self, spec: ModelSpec, options: RuntimeOptions = RuntimeOptions(), predictor: Predictor | None = None):
        if spec.kind != "extractor":
            raise ValueError(f"{spec.model_dir} is a {spec.kind}, not a feature extractor")
        self.spec = spec
        self.transforms = Transforms(spec.transform_ops, spec.input_color)
        self.predictor = predictor or Predictor(spec, options)
        self.projection = load_projection(spec)
        self._centering: tuple[str | None, np.ndarray | None] = (None, None)
        self._embedding_size: int | None = None

    @property
    def embedding_size(self) -> int:
        """Read from the model by running one blank image through it (once)."""
        if self._embedding_size is None:
            self._embedding_size = int(self._forward([np.zeros((64, 64, 3), np.uint8)]).shape[1])
        return self._embedding_size

    def _forward(self, images: list[np.ndarray], timer: StageTimer = NULL_TIMER, params: Any = None) -> np.ndarray:
        with timer.stage("rec_preprocess"):
            batch = [self.transforms(img).image for img in images]
            shapes = {b.shape for b in batch}
            if len(shapes) > 1:
                raise PredictorError(
                    f"{self.spec.model_dir}: pre-processing gives different sizes "
                    f"{sorted(shapes)}; add a fixed-size ResizeImage/CropImage op"
                )
            x = np.stack(batch)
        with timer.stage("rec_forward"):
            out = self.predictor.run({self.predictor.input_names[0]: x})
        feats = out[self.predictor.output_names[0]]
        if feats.ndim == 4:
            method = (params["RecPostProcess.pooling"] if params is not None else None) or self.spec.pooling
            if method not in ("gap", "gem"):
                raise PredictorError(
                    f"{self.spec.model_dir}: the model outputs a feature map {feats.shape}; "
                    "set 'pooling: gap' in its shitu_model.yml"
                )
            feats = pool(feats, method, params["RecPostProcess.gem_power"] if params is not None else 3.0)
        feats = feats.reshape(len(images), -1).astype(np.float32)
        centering = self.centering(params["RecPostProcess.centering"] if params is not None else None)
        if centering is not None:
            feats = center(feats, centering, self.spec.model_dir.name)
        if self.projection is not None:
            if feats.shape[1] != self.projection.shape[0]:
                raise PredictorError(
                    f"{self.spec.model_dir}: projection {self.spec.projection} expects "
                    f"{self.projection.shape[0]}-d features, the model gives {feats.shape[1]}"
                )
            feats = feats @ self.projection
        return feats

    def centering(self, name: str | None) -> np.ndarray | None:
        """The ``RecPostProcess.centering`` vector ``name`` (read once, then kept); ``None``: the folder's own
        (``centering:`` in its ``shitu_model.yml``), else no centering."""
        name = name or self.spec.centering
        if self._centering[0] != name:
            self._centering = (name, load_centering(self.spec, name))
        return self._centering[1]

    def embed(self, images: Sequence[np.ndarray], params: Any = None, timer: StageTimer = NULL_TIMER) -> np.ndarray:
        """BGR images -> embeddings, ``Global.batch_size`` per forward pass.

        Returns float32 ``[n, d]`` (normalised if ``RecPostProcess.normalize``), or packed uint8 bits
        ``[n, d / 8]`` if ``RecPostProcess.binarize``.
        """
        batch_size = params["Global.batch_size"] if params is not None else 8
        normalize = params["RecPostProcess.normalize"] if params is not None else True
        parts = [
            self._forward(list(images[i : i + batch_size]), timer, params) for i in range(0, len(images), batch_size)
        ]
        if not parts:
            return np.zeros((0, self.embedding_size), np.float32)
        feats = np.concatenate(parts)
        if self._embedding_size is None:
            self._embedding_size = int(feats.shape[1])
        if normalize:
            feats = l2_normalize(feats)
        if params is not None and params["RecPostProcess.binarize"]:
            return binarize(feats)
        return feats

    def extract(self, image: np.ndarray, boxes: np.ndarray, params: Any = None) -> np.ndarray:
        """One embedding per box of ``image``."""
        padding = params["Global.crop_padding"] if params is not None else 0.0
        return self.embed([crop(image, b, padding) for b in boxes], params)
