"""Which runtime runs a model: ``Global.det_backend`` / ``Global.rec_backend`` = ``auto`` resolved per model.

``auto`` (the default) picks onnxruntime when all of these hold, else paddle.inference:

- the model description names an ONNX file (``onnx_file``) and that file is in the model folder;
- onnxruntime is installed (it comes with ``pip install "shitu-hub[serving]"``);
- the model runs on the CPU (``Global.use_gpu`` off: the onnxruntime backend here is CPU-only).

Why: on the embedded general-lite models onnxruntime gives the fastest detector forward, the recogniser is close
on either runtime, and both on onnxruntime make the fastest pipeline end to end (``benchmarks/bench_pipeline.py``),
with the same boxes and embeddings as paddle.inference (cosine >= 0.9999, ``tests/test_runtime_parity.py``). Official PP-ShiTu models ship no ONNX file,
so they stay on paddle.inference (with the oneDNN pass list verified on them). An explicit ``paddle`` or
``onnxruntime`` (a user's ``--param``, ``config.json``, or a pack's ``params``) is used as given.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from shitu.model_spec import ModelSpec

#: Values of ``Global.det_backend`` / ``Global.rec_backend``.
BACKENDS = ("auto", "paddle", "onnxruntime")


def onnxruntime_installed() -> bool:
    """Whether ``import onnxruntime`` would find the package (without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def has_onnx_file(spec: ModelSpec) -> bool:
    return bool(spec.onnx_file) and (Path(spec.model_dir) / str(spec.onnx_file)).is_file()


def resolve_backend(backend: str, spec: ModelSpec, use_gpu: bool = False) -> str:
    """``paddle`` or ``onnxruntime`` for the model ``spec``: ``backend`` as given unless it is ``auto``."""
    if backend != "auto":
        return backend
    if not use_gpu and has_onnx_file(spec) and onnxruntime_installed():
        return "onnxruntime"
    return "paddle"
