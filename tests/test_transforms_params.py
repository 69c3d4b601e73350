"""Pre-processing ops (PaddleClas names) and the parameter schema."""

from __future__ import annotations

import numpy as np
import pytest

from shitu.params import FIELDS, ParamError, merge, resolve
from shitu.serving.engine.transforms import OPS, TransformError, Transforms, build_op


def test_resize_short_and_crop_like_paddleclas():
    img = np.zeros((300, 600, 3), np.uint8)
    t = Transforms(
        [
            {"ResizeImage": {"resize_short": 256}},
            {"CropImage": {"size": 224}},
            {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0, 0, 0], "std": [1, 1, 1], "order": "hwc"}},
            {"ToCHWImage": None},
        ]
    )
    out = t(img).image
    assert out.shape == (3, 224, 224) and out.dtype == np.float32


def test_resize_size_is_w_h():
    out = Transforms([{"ResizeImage": {"size": [100, 50]}}])(np.zeros((10, 10, 3), np.uint8)).image
    assert out.shape == (3, 50, 100)


def test_normalize_values_and_color_order():
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    rgb = Transforms(
        [{"NormalizeImage": {"scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1], "order": "chw"}}], input_color="RGB"
    )(img).image
    assert rgb[2].max() == pytest.approx(1.0) and rgb[0].max() == 0  # blue ends up last in RGB
    bgr = Transforms([{"NormalizeImage": {"scale": 1.0, "mean": [255, 0, 0], "std": [2, 1, 1]}}], input_color="BGR")(
        img
    ).image
    assert bgr[0].max() == 0


def test_det_resize_keeps_scale_factor():
    t = Transforms(
        [
            {"DetResize": {"target_size": [320, 320], "keep_ratio": False}},
            {"DetNormalizeImage": {"is_scale": True}},
            {"DetPermute": {}},
        ]
    )
    s = t(np.zeros((160, 640, 3), np.uint8))
    assert s.image.shape == (3, 320, 320)
    assert s.scale_factor == pytest.approx((2.0, 0.5))
    keep = Transforms([{"DetResize": {"target_size": [320, 320], "keep_ratio": True}}])(
        np.zeros((160, 640, 3), np.uint8)
    )
    assert keep.scale_factor[0] == keep.scale_factor[1]


def test_unknown_op_lists_known_ones():
    with pytest.raises(TransformError) as e:
        build_op({"RandomFlip": {}})
    for name in (
        "ResizeImage",
        "CropImage",
        "NormalizeImage",
        "ToCHWImage",
        "DetResize",
        "DetNormalizeImage",
        "DetPermute",
    ):
        assert name in str(e.value) and name in OPS


def test_bad_op_arguments():
    with pytest.raises(TransformError, match="ResizeImage"):
        build_op({"ResizeImage": {"size": 224, "resize_short": 256}})
    with pytest.raises(TransformError, match="unexpected keyword"):
        build_op({"CropImage": {"sise": 224}})
    with pytest.raises(TransformError, match="interpolation"):
        build_op({"ResizeImage": {"size": 224, "interpolation": "fancy"}})


def test_params_spellings_and_errors():
    assert merge({"Global": {"threshold": 0.4}})["threshold"] == 0.4
    assert merge({"Global.max_det_results": 3})["Global.max_det_results"] == 3
    assert merge({"rec_nms_threshold": 0.2})["Global.rec_nms_thresold"] == 0.2
    assert merge({"score_thres": 1})["IndexProcess.score_thres"] == 1.0  # int widened to float
    for bad, word in [
        ({"thresold": 0.3}, "unknown"),
        ({"threshold": "0.3"}, "expected float"),
        ({"threshold": 1.5}, "<= 1.0"),
        ({"max_det_results": 2.5}, "integer"),
        ({"append_whole_image": 1}, "true or false"),
        ({"transform_ops": []}, "ambiguous"),
        ({"score_thres": float("nan")}, "finite"),
        ({"dist_type": "cos"}, "one of"),
    ]:
        with pytest.raises(ParamError, match=word):
            merge(bad)


def test_per_request_refuses_load_time_params():
    p = merge()
    assert p.override({"threshold": 0.9}, per_request=True)["threshold"] == 0.9
    with pytest.raises(ParamError, match="fixed when the service starts"):
        p.override({"Global": {"rec_inference_model_dir": "/tmp"}}, per_request=True)


def test_every_field_documented_and_default_valid():
    from shitu.params import coerce

    for f in FIELDS:
        assert f.doc and resolve(f.name) is f
        coerce(f, f.default)
