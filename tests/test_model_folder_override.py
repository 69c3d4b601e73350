"""A model folder given by parameter replaces the pack's model and brings its own pre-processing.

``Global.rec_inference_model_dir`` / ``det_inference_model_dir`` on top of general-lite (the default pack): the
pack's parameters that describe its own models (``PACK_MODEL_PARAMS``: pre-processing, pooling, the centring
file in its recogniser folder) must not be applied to an official PaddleClas folder. Before the fix,
general-lite 1.2.0's ``RecPostProcess.centering: centering.npy`` made the load fail, and with it turned off the
official recogniser ran on general-lite's pre-processing (square padding, BGR NanoDet normalisation).

Real models: the official-format fixtures of ``../shared/official_format`` and the embedded general-lite pack.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "official_format" / "legacy"
REC = SHARED / "general_PPLCNetV2_base_pretrained_v1.0_infer"
DET = SHARED / "picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer"

pytestmark = pytest.mark.skipif(not REC.is_dir() or not DET.is_dir(), reason="needs ../shared/official_format")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_real_official_recogniser_by_parameter_embeds_with_its_own_preprocessing(photos):
    from shitu.model_spec import ModelSpec
    from shitu.serving.engine.engine import load_engine
    from shitu.serving.engine.extraction import FeatureExtractor

    engine = load_engine(params={"Global": {"rec_inference_model_dir": str(REC)}})  # general-lite is current
    try:
        p = engine.params
        assert p["RecPreProcess.transform_ops"] is None and p["RecPostProcess.centering"] is None
        assert p["Global.threshold"] == 0.2  # the pack's pipeline settings still apply
        images = list(photos.values())[:3]
        own = FeatureExtractor(ModelSpec.from_dir(REC, "extractor")).embed(images, p)
        assert _cos(engine.embed(images), own).min() >= 0.9999
    finally:
        engine.close()


def test_real_caller_settings_still_apply_to_a_replaced_model():
    from shitu.serving.engine.engine import load_engine

    ops = [
        {"ResizeImage": {"size": [224, 224]}},
        {"NormalizeImage": {"scale": 1 / 255, "order": "hwc"}},
        {"ToCHWImage": None},
    ]
    engine = load_engine(
        params={"Global": {"rec_inference_model_dir": str(REC)}, "RecPreProcess": {"transform_ops": ops}}
    )
    try:
        assert engine.params["RecPreProcess.transform_ops"] == ops
    finally:
        engine.close()


def test_real_official_detector_by_parameter_keeps_the_pack_recogniser_settings(photos):
    from shitu.serving.engine.engine import load_engine

    engine = load_engine(params={"Global": {"det_inference_model_dir": str(DET)}})
    try:
        p = engine.params
        assert p["DetPreProcess.transform_ops"] is None  # the export's infer_cfg.yml pre-processing, not NanoDet's
        assert p["RecPostProcess.centering"] == "centering.npy"  # general-lite's own recogniser is still used
        assert p["RecPreProcess.transform_ops"][0] == {"PadToSquare": {"value": [103.53, 116.28, 123.675]}}
        det = engine.detect([next(iter(photos.values()))])
        assert len(det) == 1
    finally:
        engine.close()


def test_real_a_gallery_of_another_recogniser_is_refused_not_searched(photos, tmp_path):
    """The pack's demo gallery holds general-lite's vectors: an engine whose recogniser was replaced refuses it with
    a clear error (before, it searched it and every score compared two embedding spaces), and works on a gallery
    built with its own recogniser."""
    from shitu.serving.engine.engine import load_engine
    from shitu.serving.galleries.manager import GalleryRequestError

    images = list(photos.values())[:2]
    engine = load_engine(params={"Global": {"rec_inference_model_dir": str(REC)}})
    try:
        with pytest.raises(
            GalleryRequestError, match="holds vectors of model rec .* not of this engine's recogniser general_PPLCNetV2"
        ):
            engine.recognize(images[:1])  # the default gallery: general-lite's demo gallery
        own = tmp_path / "official-gallery"
        engine.gallery_add(images, ["a", "b"], gallery=own)
        (found,) = engine.recognize(images[:1], gallery=own, score_thres=-1.0)
        assert found and found[0].label == "a"
    finally:
        engine.close()
    pack_engine = load_engine()  # general-lite itself: its demo gallery is fine, the official one is refused
    try:
        pack_engine.recognize(images[:1])
        with pytest.raises(GalleryRequestError, match="holds vectors of model general_PPLCNetV2"):
            pack_engine.recognize(images[:1], gallery=own)
    finally:
        pack_engine.close()
