"""The default runtime (``Global.det_backend`` / ``rec_backend`` = ``auto``: onnxruntime where the model folder has
its ONNX file) gives the paddle.inference path's answers on real photographs: same boxes (same count, within 1 px),
embeddings with cosine >= 0.9999, same labels; an explicit ``paddle`` still wins, and a model without an ONNX file
stays on paddle. Real models, real onnxruntime and paddle.inference, real faiss."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from shitu.model_spec import ModelSpec

pytest.importorskip("onnxruntime")

PADDLE = {"Global": {"det_backend": "paddle", "rec_backend": "paddle"}}


@pytest.fixture(scope="module")
def served_engines(tmp_path_factory):
    """(the general-lite pack as served, by default; the same pack forced onto paddle.inference)."""
    from shitu.serving.engine.engine import load_engine

    root = tmp_path_factory.mktemp("parity")
    default = load_engine(gallery=root / "default")
    paddle = load_engine(gallery=root / "paddle", params=PADDLE)
    yield default, paddle
    default.close()
    paddle.close()


@pytest.fixture(scope="module")
def all_photos(photos, queries):
    """The demo photographs and the tests' query photographs (crops, mirrors, blur, a collage, an unknown)."""
    return {**photos, **queries}


def test_general_lite_runs_on_onnxruntime_by_default_real(served_engines):
    default, paddle = served_engines
    assert default.params["Global.det_backend"] == "auto"
    assert default.detector.predictor.description.startswith("onnxruntime ")
    assert default.extractor.predictor.description.startswith("onnxruntime ")
    # a user's --param det_backend=paddle / rec_backend=paddle still wins
    assert paddle.detector.predictor.description.startswith("paddle.inference ")
    assert paddle.extractor.predictor.description.startswith("paddle.inference ")


def test_default_runtime_gives_the_paddle_boxes_on_real_photos(served_engines, all_photos):
    default, paddle = served_engines
    for name, img in all_photos.items():
        a, b = default.detect([img])[0], paddle.detect([img])[0]
        assert len(a) == len(b), name
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1.0, err_msg=name)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-3, err_msg=name)


def test_default_runtime_gives_the_paddle_embeddings_on_real_photos(served_engines, all_photos):
    default, paddle = served_engines
    images = list(all_photos.values())
    boxes = [paddle.detect([img])[0].xyxy.tolist() for img in images]
    for ea, eb, name in zip(default.extract(images, boxes), paddle.extract(images, boxes), all_photos):
        cos = (ea * eb).sum(axis=1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))
        assert cos.min() >= 0.9999, (name, cos)
    whole = (default.embed(images) * paddle.embed(images)).sum(axis=1)
    assert whole.min() >= 0.9999, whole


def test_default_runtime_gives_the_paddle_labels_on_real_photos(served_engines, all_photos, photo_gallery):
    default, paddle = served_engines
    for name, img in all_photos.items():
        a = default.recognize([img], gallery=photo_gallery)[0]
        b = paddle.recognize([img], gallery=photo_gallery)[0]
        assert [r.label for r in a] == [r.label for r in b], name
        np.testing.assert_allclose([r.score for r in a], [r.score for r in b], atol=1e-4, err_msg=name)
        np.testing.assert_allclose([r.bbox for r in a], [r.bbox for r in b], atol=1.0, err_msg=name)


def test_shipped_demo_vectors_match_the_default_runtime_real(served_engines, photos):
    """gallery/demo_vectors.json was embedded on paddle.inference; the default runtime needs no re-embedding."""
    from shitu.plugins import registry

    default, _ = served_engines
    pack = registry.get_pack("general-lite")
    data = json.loads((pack.root / "gallery" / "demo_vectors.json").read_text())
    shipped = {item["label"]: np.asarray(item["vector"], np.float32) for item in data["items"]}
    assert set(shipped) == set(photos)
    for label, vec in shipped.items():
        mine = default.embed([photos[label]])[0]
        assert float(mine @ vec) / float(np.linalg.norm(vec)) >= 0.9999, label


def test_model_folder_without_onnx_file_stays_on_paddle_real(models_dir, tmp_path):
    """``auto`` falls back to paddle.inference when the ONNX file is missing or not named (official PP-ShiTu
    exports ship none); an explicit ``onnxruntime`` on such a folder is a clear error."""
    from shitu.serving.engine.predictor import Predictor, PredictorError, RuntimeOptions

    folder = tmp_path / "rec"
    shutil.copytree(models_dir / "rec", folder)
    (folder / "model.onnx").unlink()
    spec = ModelSpec.from_dir(folder)
    assert spec.onnx_file == "model.onnx"  # named, but not there
    assert Predictor(spec, RuntimeOptions(backend="auto")).description.startswith("paddle.inference ")
    unnamed = replace(ModelSpec.from_dir(models_dir / "rec"), onnx_file=None)
    assert Predictor(unnamed, RuntimeOptions(backend="auto")).description.startswith("paddle.inference ")
    with pytest.raises(PredictorError, match="model file not found: .*model.onnx"):
        Predictor(spec, RuntimeOptions(backend="onnxruntime"))


def test_auto_backend_choice_rules(models_dir, monkeypatch):
    """The rule itself (no model loaded): GPU runs and installs without onnxruntime stay on paddle."""
    from shitu.serving.engine import runtimes

    spec = ModelSpec.from_dir(models_dir / "det")
    assert runtimes.resolve_backend("auto", spec) == "onnxruntime"
    assert runtimes.resolve_backend("auto", spec, use_gpu=True) == "paddle"
    assert runtimes.resolve_backend("paddle", spec) == "paddle"
    assert runtimes.resolve_backend("onnxruntime", replace(spec, onnx_file=None)) == "onnxruntime"
    monkeypatch.setattr(runtimes, "onnxruntime_installed", lambda: False)
    assert runtimes.resolve_backend("auto", spec) == "paddle"


def test_plugins_verify_runs_each_model_on_the_runtime_that_serves_it_real(capsys):
    """`shitu plugins verify` runs the models in child processes on paddle.inference (the oneDNN check) and, for a
    model that ships its ONNX file, on onnxruntime too: `auto` serves those on onnxruntime."""
    from shitu.serving.cli import main

    assert main(["plugins", "verify", "general-lite"]) == 0
    out = capsys.readouterr().out
    for role in ("detector", "recognizer"):
        line = next(ln for ln in out.splitlines() if f"(run {role}, onnxruntime)" in ln)
        assert " ok " in f" {line} " and "onnxruntime model.onnx" in line, line


def test_a_crash_on_onnxruntime_refuses_the_pack_fake_child(monkeypatch):
    """Beside the real check above: a child that dies on onnxruntime (faked here) refuses the pack like a paddle
    crash does, naming the model and the runtime."""
    from shitu.plugins import registry, runtime_check

    def child(entry, root, onednn, timeout, backend="paddle"):
        if backend == "onnxruntime":
            return {"status": "crashed", "detail": "the process was killed by SIGSEGV while loading or running it"}
        return {"status": "ok", "detail": "paddle.inference"}

    monkeypatch.setattr(runtime_check, "_run_child", child)
    pack = registry.find_pack("general-lite", None)
    results = runtime_check.check_models(pack._m, pack.root)
    assert results["detector"]["status"] == "ok" and results["detector"]["onnxruntime"]["status"] == "crashed"
    msg = runtime_check.refusal(pack._m, results, "general-lite 1.1.0")
    assert msg and "models.detector" in msg and "on onnxruntime" in msg and "SIGSEGV" in msg
