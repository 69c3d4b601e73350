"""Loaders and decoders on tiny Paddle models built on the fly, in both file formats."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from shitu.model_spec import ModelSpec, ModelSpecError
from shitu.params import merge
from shitu.serving.engine.detection import MainbodyDetector
from shitu.serving.engine.extraction import FeatureExtractor
from shitu.serving.engine.predictor import Predictor, PredictorError

from .tiny_models import build

INFER_CFG = {
    "mode": "paddle",
    "arch": "PicoDet",
    "Preprocess": [
        {"type": "Resize", "interp": 2, "keep_ratio": False, "target_size": [64, 64]},
        {"type": "NormalizeImage", "is_scale": True, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        {"type": "Permute"},
    ],
    "label_list": ["foreground"],
}


@pytest.fixture(scope="module", params=["pir", "legacy"])
def tiny_det(request, tmp_path_factory):
    d = build("paddledet", tmp_path_factory.mktemp(f"det_{request.param}"), legacy=request.param == "legacy")
    (d / "infer_cfg.yml").write_text(yaml.safe_dump(INFER_CFG))
    return request.param, d


@pytest.fixture(scope="module", params=["pir", "legacy"])
def tiny_rec(request, tmp_path_factory):
    d = build("featuremap", tmp_path_factory.mktemp(f"rec_{request.param}"), legacy=request.param == "legacy")
    (d / "shitu_model.yml").write_text(
        yaml.safe_dump(
            {
                "kind": "extractor",
                "pooling": "gap",
                "input_color": "RGB",
                "transform_ops": [
                    {"ResizeImage": {"size": 32}},
                    {
                        "NormalizeImage": {
                            "scale": "1.0/255.0",
                            "mean": [0.5, 0.5, 0.5],
                            "std": [0.5, 0.5, 0.5],
                            "order": "",
                        }
                    },
                    {"ToCHWImage": None},
                ],
            }
        )
    )
    return request.param, d


def test_format_files_as_expected(tiny_det):
    fmt, d = tiny_det
    assert (d / ("inference.json" if fmt == "pir" else "inference.pdmodel")).is_file()
    assert (d / "inference.pdiparams").is_file()


def test_paddledet_export_is_decoded(tiny_det):
    _, d = tiny_det
    spec = ModelSpec.from_dir(d)
    assert spec.kind == "detector" and spec.decoder == "paddledet"
    det = MainbodyDetector(spec)
    assert det.predictor.input_names == ["image", "scale_factor"]
    img = np.full((240, 320, 3), 127, np.uint8)
    raw = det.raw(img, nms_iou=0.5)
    # 3 counted rows, kept as the graph gives them (its own NMS ran: no second pass, as PaddleClas's predict_det),
    # even row 2 that overlaps row 0; the padding row (class -1) is dropped.
    assert raw.xyxy.tolist() == [[10, 20, 110, 220], [50, 60, 150, 160], [12, 22, 108, 218]]
    np.testing.assert_allclose(raw.scores, [0.9, 0.5, 0.3])
    p = merge({"Global": {"threshold": 0.6}})
    sel = det.detect(img, p)
    assert len(sel) == 2 and sel.is_whole_image.tolist() == [False, True]
    assert sel.xyxy[1].tolist() == [0, 0, 320, 240]


def test_feature_map_extractor_is_pooled(tiny_rec):
    _, d = tiny_rec
    ext = FeatureExtractor(ModelSpec.from_dir(d))
    assert ext.embedding_size == 8
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (40 + i * 7, 50, 3), np.uint8) for i in range(5)]
    e = ext.embed(imgs, merge({"Global": {"batch_size": 2}}))
    assert e.shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_missing_model_file_names_the_path(tmp_path):
    (tmp_path / "shitu_model.yml").write_text("kind: extractor\nmodel_file: nothing.json\n")
    with pytest.raises(PredictorError, match="nothing.json"):
        Predictor(ModelSpec.from_dir(tmp_path))
    (tmp_path / "shitu_model.yml").write_text("kind: extractor\n")
    with pytest.raises(PredictorError, match="no model file"):
        Predictor(ModelSpec.from_dir(tmp_path))


def test_mismatched_weights_are_a_clear_error(tiny_rec, tiny_det, tmp_path):
    """Graph of one model with the weights of another: the error names the model file."""
    import shutil

    _, rec = tiny_rec
    _, det = tiny_det
    for f in rec.iterdir():
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(det / "inference.pdiparams", tmp_path / "inference.pdiparams")
    with pytest.raises(PredictorError, match=str(tmp_path)):
        ext = FeatureExtractor(ModelSpec.from_dir(tmp_path))
        ext.embed([np.zeros((32, 32, 3), np.uint8)])


def test_model_spec_errors(tmp_path):
    with pytest.raises(ModelSpecError, match="not found"):
        ModelSpec.from_dir(tmp_path / "nope")
    with pytest.raises(ModelSpecError, match="cannot tell"):
        ModelSpec.from_dir(tmp_path)
    (tmp_path / "shitu_model.yml").write_text("kind: detector\ndecoder: yolo\n")
    with pytest.raises(ModelSpecError, match="decoder"):
        ModelSpec.from_dir(tmp_path)
    (tmp_path / "shitu_model.yml").write_text("kind: extractor\ncolour: RGB\n")
    with pytest.raises(ModelSpecError, match="colour"):
        ModelSpec.from_dir(tmp_path)
