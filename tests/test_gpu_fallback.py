"""``Global.use_gpu`` on a machine without a usable GPU (issue 30): ``auto`` runs the CPU path with the CPU's own
answers, one warning naming why and a description saying ``cpu``; ``true`` refuses to load, naming why; a pack's
``params`` can carry the setting. Real paddle.inference and onnxruntime on the real default weights; the rule
itself with a GPU present is checked with fake device probes (named so)."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from shitu.model_spec import ModelSpec
from shitu.serving.engine import runtimes

pytestmark = pytest.mark.skipif(
    runtimes.paddle_gpu_missing(0) is None or runtimes.onnxruntime_gpu_missing() is None,
    reason="a GPU is usable here: these tests are for the CPU fallback",
)
ON_PADDLE = {"det_backend": "paddle", "rec_backend": "paddle"}


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Each test sees the warning its own load logs (the process logs each reason once)."""
    monkeypatch.setattr(runtimes, "_warned", set())


def _fallback_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "use_gpu is auto" in r.getMessage()]


def _answers(engine, photo):
    boxes = engine.detect([photo])[0]
    return boxes.xyxy, boxes.scores, engine.extract([photo], [boxes.xyxy.tolist()])[0]


def test_use_gpu_auto_on_paddle_without_cuda_gives_the_cpu_answers_real(photos, fresh_warnings, caplog, tmp_path):
    """paddle.inference, both models, ``use_gpu: auto``: the same boxes and embeddings as ``use_gpu: false``, one
    warning line for both models naming paddle's missing CUDA, and descriptions saying ``cpu``."""
    from shitu.serving.engine.engine import load_engine

    caplog.set_level(logging.INFO, logger="shitu.serving.engine")
    cpu = load_engine(gallery=tmp_path / "cpu", params={"Global": {**ON_PADDLE, "use_gpu": False}})
    auto = load_engine(gallery=tmp_path / "auto", params={"Global": {**ON_PADDLE, "use_gpu": "auto"}})
    try:
        warnings = _fallback_warnings(caplog)
        assert warnings == [
            "Global.use_gpu is auto but no GPU is usable (paddle: this paddle build has no CUDA support): the models "
            "run on the CPU"
        ]
        for part in (auto.detector, auto.extractor):
            assert part.predictor.options.use_gpu is False and part.predictor.options.backend == "paddle"
            assert part.predictor.description.startswith("paddle.inference ")
            assert "(cpu, oneDNN on, 2 threads)" in part.predictor.description
        assert any("recogniser paddle.inference model.json (cpu" in r.getMessage() for r in caplog.records)
        for label in ("cat", "coffee"):
            for a, b in zip(_answers(cpu, photos[label]), _answers(auto, photos[label])):
                np.testing.assert_array_equal(a, b)
    finally:
        cpu.close()
        auto.close()


def test_use_gpu_true_without_a_gpu_refuses_to_load_real(models_dir):
    """``true`` is a requirement (an operator asking for a GPU learns at load time there is none): paddle and
    onnxruntime each say why, and the message names ``auto``."""
    from shitu.serving.engine.predictor import Predictor, PredictorError, RuntimeOptions

    spec = ModelSpec.from_dir(models_dir / "rec")
    with pytest.raises(PredictorError, match=r"use_gpu is true but no GPU can run rec \(paddle: this paddle build"):
        Predictor(spec, RuntimeOptions(backend="paddle", use_gpu=True))
    with pytest.raises(PredictorError, match="onnxruntime: onnxruntime has no CUDAExecutionProvider.*use_gpu: auto"):
        Predictor(spec, RuntimeOptions(backend="onnxruntime", use_gpu=True))


def test_use_gpu_auto_on_onnxruntime_resolves_to_its_cpu_session_real(models_dir, fresh_warnings, caplog):
    """onnxruntime without its CUDA provider: ``rec_backend: onnxruntime`` stays on onnxruntime, on the CPU, with the
    CPU's output; ``auto`` backends resolve exactly as ``use_gpu: false`` does (onnxruntime where the ONNX file is),
    the warning naming both runtimes' reasons."""
    from shitu.serving.engine.predictor import Predictor, RuntimeOptions

    spec = ModelSpec.from_dir(models_dir / "rec")
    x = np.random.RandomState(0).rand(1, 3, 224, 224).astype(np.float32)
    cpu = Predictor(spec, RuntimeOptions(backend="onnxruntime"))
    auto = Predictor(spec, RuntimeOptions(backend="onnxruntime", use_gpu="auto"))
    assert auto.options.use_gpu is False and auto.description == "onnxruntime model.onnx (cpu, 2 threads)"
    name = cpu.input_names[0]
    for a, b in zip(cpu.run({name: x}).values(), auto.run({name: x}).values()):
        np.testing.assert_array_equal(a, b)
    either = Predictor(spec, RuntimeOptions(backend="auto", use_gpu="auto"))
    assert either.options.backend == "onnxruntime" and either.description == cpu.description
    warnings = _fallback_warnings(caplog)
    assert len(warnings) == 2, warnings  # one per reason: onnxruntime alone, then both runtimes
    assert "(onnxruntime: onnxruntime has no CUDAExecutionProvider" in warnings[0]
    assert "(paddle: this paddle build has no CUDA support; onnxruntime: " in warnings[1]


def test_a_pack_can_ask_for_the_gpu_real(tmp_path, monkeypatch, fresh_warnings, caplog):
    """A pack's ``params`` carry ``Global.use_gpu: auto`` (the setting of a pack shipped to machines with and
    without GPUs); its engine falls back with the warning; ``"yes"`` or ``1`` are refused by name."""
    import sys
    from pathlib import Path

    from shitu.params import ParamError, merge
    from shitu.plugins import registry
    from shitu.serving.engine.engine import load_engine

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lite_packs import lite_pack

    monkeypatch.setenv("SHITU_HOME", str(tmp_path / "home"))

    def gpu_auto(data):
        data["params"] = {"Global": {"use_gpu": "auto"}}

    registry.install(str(lite_pack(tmp_path / "src", "gpu-auto", mutate=gpu_auto)), progress=False)
    caplog.set_level(logging.WARNING, logger="shitu.serving.engine")
    engine = load_engine("gpu-auto")
    try:
        assert engine.params["Global.use_gpu"] == "auto"
        assert engine.extractor.predictor.options.use_gpu is False
        assert "(cpu, oneDNN on" in engine.extractor.predictor.description
        assert len(_fallback_warnings(caplog)) == 1
    finally:
        engine.close()
    for bad in ("yes", 1):
        with pytest.raises(ParamError, match="Global.use_gpu"):
            merge({"Global": {"use_gpu": bad}})


@pytest.fixture
def fake_devices(monkeypatch):
    """Fake device probes: paddle sees a GPU, onnxruntime has none (or both, via the returned setter)."""
    state = {"paddle": None, "onnxruntime": "no provider (fake)"}
    monkeypatch.setattr(runtimes, "paddle_gpu_missing", lambda gpu_id: state["paddle"])
    monkeypatch.setattr(runtimes, "onnxruntime_gpu_missing", lambda: state["onnxruntime"])
    return state


def test_resolve_rule_with_a_gpu_fake_devices(models_dir, fake_devices, fresh_warnings):
    """Where a GPU is usable: ``true`` and ``auto`` both take it, ``auto`` backends prefer paddle.inference, then
    onnxruntime where the model has its ONNX file; ``false`` never does."""
    spec = ModelSpec.from_dir(models_dir / "det")
    no_onnx = replace(spec, onnx_file=None)
    assert runtimes.resolve("auto", "auto", 0, spec) == runtimes.Runtime("paddle", True)
    assert runtimes.resolve("auto", True, 0, spec) == runtimes.Runtime("paddle", True)
    assert runtimes.resolve("auto", False, 0, spec) == runtimes.Runtime("onnxruntime", False)
    assert runtimes.resolve("onnxruntime", "auto", 0, spec).gpu is False
    fake_devices.update(paddle="no CUDA (fake)", onnxruntime=None)
    assert runtimes.resolve("auto", "auto", 0, spec) == runtimes.Runtime("onnxruntime", True)
    assert runtimes.resolve("auto", "auto", 0, no_onnx) == runtimes.Runtime("paddle", False, "paddle: no CUDA (fake)")
