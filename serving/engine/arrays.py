"""Reading a float array that a model folder ships (``.npy``, never unpickled): the centring vector, the projection."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shitu.serving.engine.predictor import PredictorError


def load_float_array(path: Path, ndim: int, what: str, shape: str) -> np.ndarray:
    """``path`` as float32 with ``ndim`` dimensions and finite values; PredictorError naming ``what`` otherwise."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PredictorError(f"{path}: cannot read {what}: {exc}") from None
    if array.ndim != ndim or array.dtype.kind != "f" or not np.isfinite(array).all():
        kind = "vector" if ndim == 1 else "matrix"
        raise PredictorError(f"{path}: {what} must be a finite float {kind} {shape}")
    return array.astype(np.float32)
