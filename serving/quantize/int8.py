"""int8 copies of a model: its ONNX graph quantized by onnxruntime (static, QDQ, per-channel weights).

Why this method (measured on general-lite's models, ``benchmarks/bench_int8.py``): static quantization keeps the
activations in int8 between convolutions, which is where AVX-512 VNNI earns its speed; per-channel weight scales
and a percentile (99.999) calibration of the activations keep the recogniser's pooled features at cosine ~0.997
of fp32 where per-tensor scales or min/max calibration lose more. A paddle-only model folder (official PP-ShiTu
exports) is converted with paddle2onnx first; where paddle2onnx cannot convert a graph the error says so and the
model stays fp32.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from shitu.errors import InvalidArgument
from shitu.model_spec import ModelSpec

__all__ = ["INT8_FILE", "QuantizeError", "onnx_source", "quantize_onnx"]

#: The int8 graph's file name inside a model folder (beside the fp32 files it was made from).
INT8_FILE = "model.int8.onnx"
#: Seconds a paddle2onnx conversion may take.
CONVERT_TIMEOUT_S = 300
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: Percentile of activation magnitudes the calibration keeps (onnxruntime's CalibrationMethod.Percentile).
PERCENTILE = 99.999


class QuantizeError(InvalidArgument):
    """A model cannot be quantized (no ONNX graph and paddle2onnx cannot convert it, or no calibration data)."""


def onnx_source(spec: ModelSpec, workdir: Path) -> Path:
    """The fp32 ONNX graph of ``spec``: its own ``onnx_file``, else a paddle2onnx conversion into ``workdir``."""
    if spec.onnx_file and (Path(spec.model_dir) / spec.onnx_file).is_file():
        return Path(spec.model_dir) / spec.onnx_file
    model, params = spec.files()
    out = Path(workdir) / f"{spec.kind}.fp32.onnx"
    # In a child process: paddle2onnx ends the process (sys.exit) on a graph it cannot convert.
    code = (
        "import sys, paddle2onnx; paddle2onnx.export(sys.argv[1], sys.argv[2], sys.argv[3], opset_version=13, "
        "enable_onnx_checker=True)"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(model), str(params), str(out)],
            capture_output=True,
            text=True,
            timeout=CONVERT_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise QuantizeError(f"{spec.model_dir.name}: paddle2onnx did not finish in {CONVERT_TIMEOUT_S} s") from None
    if proc.returncode != 0 or not out.is_file():
        text = _ANSI.sub("", proc.stdout + proc.stderr)
        lines = [ln.strip() for ln in text.splitlines() if "ERROR" in ln or "Error" in ln] or ["no ONNX file written"]
        if "No module named 'paddle2onnx'" in text:
            lines = ["paddle2onnx is not installed"]
        raise QuantizeError(f"{spec.model_dir.name}: paddle2onnx cannot convert this graph ({lines[-1][:200]})")
    return out


def quantize_onnx(src: Path, dst: Path, samples: Sequence[np.ndarray]) -> Path:
    """Write ``dst``: ``src`` quantized with ``samples`` (the model's own input tensors, one batch each) as
    calibration data. Every convolution is quantized: keeping any one of general-lite's 25 recogniser convolutions
    in fp32 moved the median feature cosine by at most 0.0003 (the loss is spread over the network). Raises
    :class:`QuantizeError` when there are no samples."""
    if not samples:
        raise QuantizeError(f"{Path(src).name}: no calibration inputs (no image reached this model)")
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ort.set_default_logger_severity(3)  # its graph clean-up notices are not the user's concern
    input_name = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[np.ndarray] = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    # onnxruntime's calibrators print their progress: kept out of the command's output
    with tempfile.TemporaryDirectory(prefix="shitu_int8_") as tmp, contextlib.redirect_stdout(io.StringIO()):
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": PERCENTILE, "CalibTensorRangeSymmetric": False},
        )
    return Path(dst)
