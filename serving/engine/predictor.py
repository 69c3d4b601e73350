"""One wrapper over ``paddle.inference`` (and, optionally, onnxruntime) for every model.

- Loads ``inference.json`` (Paddle 3 PIR, what ``paddle.jit.save`` writes) or ``*.pdmodel`` (legacy programs, what
  official PP-ShiTu models ship) plus ``.pdiparams``.
- CPU threads, oneDNN on/off with a per-model pass list (the default models crash under Paddle's default oneDNN
  passes), a GPU when ``Global.use_gpu`` asks and one is usable (``true``: required; ``auto``: else the CPU, with
  one warning; :func:`shitu.serving.engine.runtimes.resolve`). ``description`` names the device actually used.
- Inputs and outputs by name, batch input, glog silenced.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from shitu.errors import InternalError
from shitu.model_spec import ModelSpec, ModelSpecError

# Silence paddle's C++ logging before paddle is imported anywhere.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("FLAGS_call_stack_level", "0")


class PredictorError(InternalError, RuntimeError):
    """A model cannot be loaded or run; the message names the model path (a server error: never the caller's)."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How to run a model (from ``Global.*`` parameters)."""

    cpu_threads: int = 2
    enable_mkldnn: bool = True
    #: ``Global.use_gpu`` as given (``True``, ``False`` or ``"auto"``); a :class:`Predictor`'s own ``options`` hold
    #: the device it runs on (``True`` / ``False``).
    use_gpu: bool | str = False
    gpu_id: int = 0
    backend: str = "paddle"


class Predictor:
    """A loaded model: ``run({input_name: array}) -> {output_name: array}``.

    Thread-safe: ``paddle.inference`` predictors are not re-entrant, so calls are serialised with a lock (hub
    serving answers requests on threads). Use one predictor per worker process.
    """

    def __init__(self, spec: ModelSpec, options: RuntimeOptions = RuntimeOptions()):
        from shitu.serving.engine import runtimes
        from shitu.serving.engine.onednn import resolve

        # `auto`: onnxruntime where the model folder has its ONNX file; the GPU where asked and usable
        asked = options.use_gpu
        runtime = runtimes.resolve(options.backend, asked, options.gpu_id, spec)
        if asked is True and not runtime.gpu:
            raise PredictorError(
                f"Global.use_gpu is true but no GPU can run {Path(spec.model_dir).name} ({runtime.no_gpu}); "
                "use_gpu: auto runs on the CPU instead"
            )
        options = replace(options, backend=runtime.backend, use_gpu=runtime.gpu)
        spec = resolve(spec) if options.backend == "paddle" and options.enable_mkldnn and not runtime.gpu else spec
        self.spec = spec
        self.options = options
        self._lock = threading.Lock()
        if options.backend == "onnxruntime":
            self._impl: _Backend = _OnnxBackend(spec, options)
        elif options.backend == "paddle":
            self._impl = _PaddleBackend(spec, options)
        else:
            raise PredictorError(f"unknown backend {options.backend!r}; use 'auto', 'paddle' or 'onnxruntime'")
        if options.use_gpu and not self._impl.on_gpu:  # onnxruntime's CUDA provider listed but could not start
            why = f"{options.backend}: its CUDA provider did not start"
            if asked is True:
                raise PredictorError(f"Global.use_gpu is true but {Path(spec.model_dir).name} runs on the CPU ({why})")
            runtimes.warn_cpu_fallback(why)
            self.options = replace(options, use_gpu=False)

    @property
    def input_names(self) -> list[str]:
        return self._impl.input_names

    @property
    def output_names(self) -> list[str]:
        return self._impl.output_names

    @property
    def description(self) -> str:
        return self._impl.description

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise PredictorError(
                f"{self.spec.model_dir}: missing input(s) {sorted(missing)}; the model takes {self.input_names}"
            )
        with self._lock:
            return self._impl.run(inputs)


_DTYPE_BYTES = {
    "f32": 4,
    "f64": 8,
    "i64": 8,
    "i32": 4,
    "f16": 2,
    "bf16": 2,
    "i8": 1,
    "u8": 1,
    "b": 1,
    "i16": 2,
    "FP32": 4,
    "FP64": 8,
    "INT64": 8,
    "INT32": 4,
    "FP16": 2,
    "BF16": 2,
    "INT8": 1,
    "UINT8": 1,
    "BOOL": 1,
    "INT16": 2,
}


def _weights_in_graph(model_file: Path) -> tuple[int, int]:
    """(bytes of parameter data, number of parameters) the graph file declares."""
    total = count = 0
    if model_file.suffix == ".json":
        import json

        stack: list[Any] = [json.loads(model_file.read_text(encoding="utf-8"))]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if node.get("#") == "p":
                    dtype, shape = node["O"]["TT"]["D"][0]["#"].rpartition("t_")[2], node["O"]["TT"]["D"][1]
                    total += int(np.prod(shape, dtype=np.int64)) * _DTYPE_BYTES[dtype]
                    count += 1
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    else:
        import importlib

        framework_pb2: Any = importlib.import_module("paddle.base.proto.framework_pb2")  # generated: no types
        program = framework_pb2.ProgramDesc.FromString(model_file.read_bytes())
        names = framework_pb2.VarType.Type
        for var in program.blocks[0].vars:
            if var.persistable and var.type.type == framework_pb2.VarType.DENSE_TENSOR:
                t = var.type.dense_tensor.tensor
                total += int(np.prod(list(t.dims), dtype=np.int64)) * _DTYPE_BYTES[names.Name(t.data_type)]
                count += 1
    return total, count


def check_weights(model_file: Path, params_file: Path) -> None:
    """Refuse a weights file that cannot belong to the graph (paddle would crash the process on it).

    Each tensor in ``.pdiparams`` is its data plus a header of a few dozen bytes, so the file size must lie
    between the data size the graph declares and that plus a bounded header allowance.
    """
    try:
        expected, count = _weights_in_graph(model_file)
    except Exception as exc:
        raise PredictorError(f"cannot read model file {model_file}: {_first_line(exc)}") from None
    size = params_file.stat().st_size
    if not expected <= size <= expected + 256 * count + 64:
        raise PredictorError(
            f"weights file {params_file} does not match model {model_file}: the graph declares {count} "
            f"parameters ({expected} bytes of data), the file has {size} bytes"
        )


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class _Backend:
    input_names: list[str]
    output_names: list[str]
    description: str
    on_gpu: bool = False

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError


class _PaddleBackend(_Backend):
    def __init__(self, spec: ModelSpec, options: RuntimeOptions):
        try:
            model_file, params_file = spec.files()
        except ModelSpecError as exc:
            raise PredictorError(str(exc)) from None
        check_weights(model_file, params_file)
        import paddle.inference as pi

        config = pi.Config(str(model_file), str(params_file))
        mkldnn = False
        if options.use_gpu:  # resolved: paddle has CUDA and sees this device
            config.enable_use_gpu(256, options.gpu_id)
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(options.cpu_threads)
            # oneDNN only with a pass list verified for this model: Paddle's default list segfaults on some
            # models while the predictor is built, which would take the whole server down.
            passes = spec.onednn_passes if options.enable_mkldnn and spec.onednn else None
            mkldnn = passes is not None
            if passes is not None:
                config.enable_mkldnn()
                config.enable_custom_passes(list(passes), True)
            else:
                config.disable_mkldnn()
        config.disable_glog_info()
        try:
            self._predictor = pi.create_predictor(config)
        except Exception as exc:  # paddle raises its own error types
            raise PredictorError(f"cannot load model {model_file}: {_first_line(exc)}") from exc
        self.input_names = list(self._predictor.get_input_names())
        self.output_names = list(self._predictor.get_output_names())
        self.description = f"paddle.inference {model_file.name} " + (
            f"(gpu {options.gpu_id})"
            if options.use_gpu
            else f"(cpu, oneDNN {'on' if mkldnn else 'off'}, {options.cpu_threads} threads)"
        )
        self._model_file = model_file
        self.on_gpu = options.use_gpu is True

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        p = self._predictor
        for name in self.input_names:
            handle = p.get_input_handle(name)
            arr = np.ascontiguousarray(inputs[name])
            handle.reshape(list(arr.shape))
            handle.copy_from_cpu(arr)
        try:
            p.run()
        except Exception as exc:
            raise PredictorError(f"{self._model_file}: inference failed: {_first_line(exc)}") from exc
        return {name: p.get_output_handle(name).copy_to_cpu() for name in self.output_names}


class _OnnxBackend(_Backend):
    def __init__(self, spec: ModelSpec, options: RuntimeOptions):
        if not spec.onnx_file:
            raise PredictorError(f"{spec.model_dir}: no onnx_file in the model description")
        path = Path(spec.model_dir) / spec.onnx_file
        if not path.is_file():
            raise PredictorError(f"model file not found: {path}")
        try:
            import onnxruntime as ort
        except ImportError:
            raise PredictorError(
                'the onnxruntime backend needs onnxruntime: `pip install "shitu-hub[serving]"`'
            ) from None
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.cpu_threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        # Idle pool threads must sleep, not spin: the detector's and the recogniser's sessions each own a pool, and
        # on few cores one spinning pool starves the other (measured: 180 ms end-to-end spinning vs 41-72 ms not).
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        providers: list[Any] = ["CPUExecutionProvider"]
        if options.use_gpu:  # resolved: onnxruntime has the CUDA provider
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": options.gpu_id}))
        self._session = ort.InferenceSession(str(path), so, providers=providers)
        # onnxruntime itself falls back to the CPU when the CUDA provider cannot start (no device, no CUDA libraries)
        self.on_gpu = "CUDAExecutionProvider" in self._session.get_providers()
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        where = f"gpu {options.gpu_id}" if self.on_gpu else f"cpu, {options.cpu_threads} threads"
        self.description = f"onnxruntime {path.name} ({where})"

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._session.run(self.output_names, {n: inputs[n] for n in self.input_names})
        return dict(zip(self.output_names, outs))
