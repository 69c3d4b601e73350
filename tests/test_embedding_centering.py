"""Issue #18: general-lite 1.2.0's embedding: crops padded to a square (``PadToSquare``) and centred on the mean
embedding of generic photographs (``RecPostProcess.centering``).

The real-model tests run the embedded recogniser through paddle.inference with the pack's settings; the
``PadToSquare`` and file-reading tests use small arrays and files made here (named so).
"""

from __future__ import annotations

import numpy as np
import pytest

from shitu.model_spec import ModelSpec
from shitu.serving.engine.centering import center, estimate, generic_images, load_centering
from shitu.serving.engine.extraction import l2_normalize, pool
from shitu.serving.engine.predictor import PredictorError
from shitu.serving.engine.transforms import TransformError, Transforms

MEAN = [103.53, 116.28, 123.675]


@pytest.fixture(scope="module")
def lite():
    """The general-lite pack as shipped (its params: GeM, PadToSquare, centering.npy)."""
    from shitu.serving.engine import load_engine

    eng = load_engine(params={"Global.cpu_num_threads": 1})
    yield eng
    eng.close()


def test_pad_to_square_keeps_the_aspect_ratio_small_arrays():
    t = Transforms([{"PadToSquare": {"value": MEAN}}, {"ResizeImage": {"size": [64, 64]}}], "BGR")
    wide = np.full((20, 60, 3), 200, np.uint8)
    out = t(wide).image  # CHW float32, 64 x 64
    assert out.shape == (3, 64, 64)
    # the 20-row strip becomes rows ~21..42 of 64; above and below is the fill colour (rounded to uint8)
    assert np.allclose(out[:, 0, 32], np.round(MEAN), atol=1) and np.allclose(out[:, 63, 32], np.round(MEAN), atol=1)
    assert np.allclose(out[:, 32, 0], 200) and np.allclose(out[:, 32, 63], 200)  # full width: not stretched
    tall = np.full((60, 20, 3), 10, np.uint8)
    out = t(tall).image
    assert np.allclose(out[:, 32, 0], np.round(MEAN), atol=1) and np.allclose(out[:, 0, 32], 10)
    square = np.random.RandomState(0).randint(0, 255, (30, 30, 3)).astype(np.uint8)
    only = Transforms([{"PadToSquare": {"value": [0]}}], "BGR")
    assert np.array_equal(only(square).image, square.transpose(2, 0, 1).astype(np.float32))  # already square
    assert only(np.zeros((1, 7, 3), np.uint8)).image.shape == (3, 7, 7)


@pytest.mark.parametrize("value", ["white", [1, 2], None, 3])
def test_pad_to_square_refuses_a_bad_colour(value):
    with pytest.raises(TransformError, match="PadToSquare value"):
        Transforms([{"PadToSquare": {"value": value}}], "BGR")


def test_centering_is_the_shipped_mean_subtracted_real_model(lite, photos):
    """Real paddle.inference: embedding = l2(l2(GeM(feature map of the padded crop)) - mean)."""
    ex = lite.extractor
    assert lite.params["RecPostProcess.centering"] == "centering.npy"
    mean = np.load(ex.spec.model_dir / "centering.npy", allow_pickle=False)
    img = photos["rocket"]  # 640 x 427: padded top and bottom
    got = lite.embed([img])
    x = np.stack([ex.transforms(img).image])
    assert x.shape[2:] == (224, 224) and np.allclose(x[0, :, 0, 112], 0, atol=0.02)  # padding: zero at the input
    fmap = ex.predictor.run({ex.predictor.input_names[0]: x})[ex.predictor.output_names[0]]
    want = l2_normalize(l2_normalize(pool(fmap, "gem", 3.0)) - mean)
    assert np.allclose(got, want, atol=1e-4)
    off = ex.embed([img], lite.params.override({"RecPostProcess.centering": None}))
    assert float((off * got).sum()) < 0.9  # centring changes the embedding


def test_centring_spreads_different_photos_apart_real_model(lite, photos):
    """The demo photographs: different objects no longer score high against each other (1.1.0: up to 0.835)."""
    vecs = lite.embed(list(photos.values()))
    pairs = (vecs @ vecs.T)[~np.eye(len(vecs), dtype=bool)]
    assert pairs.max() < 0.5 and lite.params["IndexProcess.score_thres"] == "auto"
    from shitu.serving.engine.calibration import threshold_from

    best_other = np.sort(pairs.reshape(len(vecs), -1), axis=1)[:, -1]  # each photo's best other-label score
    assert pairs.max() <= threshold_from(best_other, True)  # auto, as a gallery of these photos derives it
    uncentred = lite.extractor.embed(list(photos.values()), lite.params.override({"RecPostProcess.centering": None}))
    assert (uncentred @ uncentred.T)[~np.eye(len(vecs), dtype=bool)].max() > 0.6


def test_shipped_centering_vector_is_what_the_estimator_gives_real_model(lite):
    """centering.npy is reproducible: the mean of the generic crops' embeddings with the pack's settings."""
    raw = lite.params.override({"RecPostProcess.normalize": False, "RecPostProcess.centering": None})
    mean = estimate(lambda imgs: lite.extractor.embed(imgs, raw), generic_images(0))
    shipped = np.load(lite.extractor.spec.model_dir / "centering.npy", allow_pickle=False)
    assert shipped.shape == (512,) and shipped.dtype == np.float32
    assert np.allclose(mean, shipped, atol=2e-3)


def test_a_missing_centering_file_fails_the_load_with_its_name():
    from shitu.serving.engine import load_engine

    with pytest.raises(PredictorError, match=r"RecPostProcess.centering: no file 'nope.npy' in the recogniser folder"):
        load_engine(params={"RecPostProcess.centering": "nope.npy"})


def test_centering_files_are_never_unpickled_and_must_be_vectors_files_made_here(tmp_path):
    spec = ModelSpec(kind="extractor", model_dir=tmp_path)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PredictorError, match="cannot read the centering vector"):
        load_centering(spec, "objects.npy")
    np.save(tmp_path / "matrix.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(PredictorError, match=r"finite float vector \[d\]"):
        load_centering(spec, "matrix.npy")
    np.save(tmp_path / "nan.npy", np.array([np.nan, 0.0], np.float32))
    with pytest.raises(PredictorError, match="finite"):
        load_centering(spec, "nan.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(PredictorError, match="cannot read"):
        load_centering(spec, "junk.npy")
    np.save(tmp_path / "ok.npy", np.ones(4, np.float64))
    assert load_centering(spec, "ok.npy").dtype == np.float32
    assert load_centering(spec, None) is None
    with pytest.raises(PredictorError, match="3 values, the model gives 4-d"):
        center(np.ones((1, 4), np.float32), np.zeros(3, np.float32), "rec")
