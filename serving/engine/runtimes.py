"""Which runtime runs a model: ``Global.det_backend`` / ``Global.rec_backend`` = ``auto`` resolved per model.

``auto`` (the default) picks onnxruntime when all of these hold, else paddle.inference:

- the model description names an ONNX file (``onnx_file``) and that file is in the model folder;
- onnxruntime is installed (it comes with ``pip install "shitu-hub[serving]"``);
- the model runs on the CPU (``Global.use_gpu`` off, or ``auto`` on a machine without a usable GPU; on a GPU,
  ``auto`` prefers paddle.inference: see below).

Why: on the embedded general-lite models onnxruntime gives the fastest detector forward, the recogniser is close
on either runtime, and both on onnxruntime make the fastest pipeline end to end (``benchmarks/bench_pipeline.py``),
with the same boxes and embeddings as paddle.inference (cosine >= 0.9999, ``tests/test_runtime_parity.py``). Official PP-ShiTu models ship no ONNX file,
so they stay on paddle.inference (with the oneDNN pass list verified on them). An explicit ``paddle`` or
``onnxruntime`` (a user's ``--param``, ``config.json``, or a pack's ``params``) is used as given.

Which device: ``Global.use_gpu`` (:func:`resolve`). ``false`` (the default): the CPU. ``true``: a GPU, or the model
does not load (a :class:`~shitu.serving.engine.predictor.PredictorError` naming why: an operator who asks for a
GPU learns at load time that there is none). ``auto``: a GPU where one is usable, else the CPU path exactly as with
``false``, with one warning log line naming why (the setting for a pack that ships to machines with and without
GPUs). A GPU is usable by paddle.inference when paddle is built with CUDA and sees device ``Global.gpu_id``; by
onnxruntime when it has the ``CUDAExecutionProvider`` (the onnxruntime-gpu package). With ``auto`` backends a GPU
run prefers paddle.inference, then onnxruntime where the model has its ONNX file.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from shitu.model_spec import ModelSpec

#: Values of ``Global.det_backend`` / ``Global.rec_backend``.
BACKENDS = ("auto", "paddle", "onnxruntime")
#: Values of ``Global.use_gpu``.
GPU_CHOICES = (False, True, "auto")
log = logging.getLogger("shitu.serving.engine")
_warned: set[str] = set()  # fallback reasons already logged by this process (one line each, not one per model)


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


@dataclass(frozen=True)
class Runtime:
    """What runs a model: ``backend`` (``paddle`` / ``onnxruntime``), on the GPU or not, and, when a GPU was asked
    for and none is usable, ``no_gpu``: why (the backends' reasons)."""

    backend: str
    gpu: bool
    no_gpu: str | None = None


def paddle_gpu_missing(gpu_id: int) -> str | None:
    """Why paddle.inference cannot run on GPU ``gpu_id`` here (None: it can)."""
    import paddle

    if not paddle.is_compiled_with_cuda():
        return "this paddle build has no CUDA support"
    count = int(paddle.device.cuda.device_count())
    if gpu_id >= count:
        return f"paddle sees {count} CUDA device(s), Global.gpu_id is {gpu_id}" if count else "no CUDA device visible"
    return None


def onnxruntime_gpu_missing() -> str | None:
    """Why onnxruntime cannot run on a GPU here (None: it has the CUDA execution provider)."""
    if not onnxruntime_installed():
        return "onnxruntime is not installed"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (that needs the onnxruntime-gpu package)"
    return None


def resolve(backend: str, use_gpu: bool | str, gpu_id: int, spec: ModelSpec) -> Runtime:
    """The runtime and device for ``spec`` from ``Global.<det|rec>_backend``, ``use_gpu`` and ``gpu_id``; with
    ``use_gpu: auto`` and no usable GPU, one warning per reason is logged and the CPU path is returned."""
    if use_gpu is False:
        return Runtime(resolve_backend(backend, spec), False)
    candidates = [backend] if backend != "auto" else ["paddle"] + (["onnxruntime"] if has_onnx_file(spec) else [])
    reasons = []
    for name in candidates:
        why = paddle_gpu_missing(gpu_id) if name == "paddle" else onnxruntime_gpu_missing()
        if why is None:
            return Runtime(name, True)
        reasons.append(f"{name}: {why}")
    runtime = Runtime(resolve_backend(backend, spec), False, "; ".join(reasons))
    if use_gpu == "auto":
        warn_cpu_fallback(str(runtime.no_gpu))
    return runtime


def warn_cpu_fallback(reason: str) -> None:
    """The one warning line of ``use_gpu: auto`` running on the CPU (once per process and reason)."""
    if reason not in _warned:
        _warned.add(reason)
        log.warning("Global.use_gpu is auto but no GPU is usable (%s): the models run on the CPU", reason)
