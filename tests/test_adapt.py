"""``shitu adapt``: a projection head trained on a gallery list, written as a new recogniser folder.

Real embedded models through paddle.inference, real paddle training, the real ``shitu`` CLI entry point.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from shitu.model_spec import ModelSpec
from shitu.serving.engine.extraction import FeatureExtractor, l2_normalize
from shitu.serving.engine.predictor import PredictorError


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, photos):
    from shitu.serving import cli

    tmp = tmp_path_factory.mktemp("adapt")
    lines = []
    for label in ("cat", "coffee", "rocket"):
        cv2.imwrite(str(tmp / f"{label}.png"), photos[label])
        lines.append(f"{label}.png\t{label}")
    (tmp / "list.txt").write_text("\n".join(lines) + "\n")
    out = tmp / "rec"
    rc = cli.main(["adapt", str(tmp / "list.txt"), "--out", str(out), "--views", "2", "--steps", "15"])
    assert rc == 0
    return tmp, out


def test_adapt_cli_writes_a_loadable_recogniser(adapted, photos, capsys):
    from shitu.serving import cli
    from shitu.serving.engine import load_engine

    tmp, out = adapted
    assert {p.name for p in out.iterdir()} >= {
        "model.json",
        "model.pdiparams",
        "projection.npy",
        "shitu_model.yml",
        "adapt_report.json",
    }
    report = json.loads((out / "adapt_report.json").read_text())
    assert report["classes"] == 3 and report["train_views"] == 6 and 0 <= report["heldout_r1_after"] <= 1
    spec = ModelSpec.from_dir(out, "extractor")
    assert spec.projection == "projection.npy" and spec.pooling == "gem"
    # trained on centred features, so it says so itself: loaded by parameter it gets no pack settings
    assert spec.centering == "centering.npy" and (out / "centering.npy").is_file()
    matrix = np.load(out / "projection.npy", allow_pickle=False)
    assert matrix.shape == (512, 512)
    eng = load_engine(params={"Global.rec_inference_model_dir": str(out), "Global.cpu_num_threads": 1})
    base = load_engine(params={"Global.cpu_num_threads": 1})
    try:
        got = eng.embed([photos["cat"]])
        raw = base.extractor.embed([photos["cat"]], base.params.override({"RecPostProcess.normalize": False}))
        assert np.allclose(got, l2_normalize(raw @ matrix), atol=1e-4)  # the head is applied after pooling
    finally:
        eng.close()
        base.close()
    # a non-empty output folder is refused, nothing overwritten
    rc = cli.main(["adapt", str(tmp / "list.txt"), "--out", str(out), "--views", "1", "--steps", "1"])
    assert rc == 2 and "not empty" in capsys.readouterr().err


def test_projection_is_never_unpickled(tmp_path, models_dir):
    import shutil

    rec = tmp_path / "rec"
    shutil.copytree(models_dir / "rec", rec)
    np.save(rec / "head.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)  # a pickle inside
    (rec / "shitu_model.yml").write_text((rec / "shitu_model.yml").read_text() + "projection: head.npy\n")
    with pytest.raises(PredictorError, match="cannot read the projection"):
        FeatureExtractor(ModelSpec.from_dir(rec, "extractor"))
    np.save(rec / "head.npy", np.ones((3, 3), np.float32))
    ex = FeatureExtractor(ModelSpec.from_dir(rec, "extractor"))
    with pytest.raises(PredictorError, match="expects 3-d features, the model gives 512"):
        ex.embed([np.zeros((64, 64, 3), np.uint8)])


def test_adapt_needs_two_labels(tmp_path, photos):
    from shitu.serving import cli

    cv2.imwrite(str(tmp_path / "cat.png"), photos["cat"])
    (tmp_path / "list.txt").write_text("cat.png\tcat\n")
    assert cli.main(["adapt", str(tmp_path / "list.txt"), "--out", str(tmp_path / "rec")]) == 2


def test_write_recognizer_carries_the_folders_other_files_but_not_old_network_files(tmp_path, models_dir):
    """A recogniser folder's other files (a vector its description names, a notice) come along; a fine-tuned
    network replaces the old files and the ONNX copy of the old weights is left out. (``save_network`` here copies
    the real files under new names: the real fine-tuning path is tests/test_adapt_pack.py.)"""
    import shutil

    from shitu.serving.adapt.head import AdaptReport, write_recognizer

    rec = tmp_path / "rec"
    shutil.copytree(models_dir / "rec", rec)
    np.save(rec / "centering.npy", np.zeros(512, np.float32))
    (rec / "NOTICE.txt").write_text("notice\n")
    spec = ModelSpec.from_dir(rec, "extractor")
    report = AdaptReport(2, 2, 2, 1, 0.0, 0.5, 1.0)
    out = write_recognizer(spec, "gem", np.eye(512, dtype=np.float32), tmp_path / "head", report)
    assert {p.name for p in out.iterdir()} == {
        "model.json",
        "model.pdiparams",
        "model.onnx",
        "shitu_model.yml",
        "projection.npy",
        "adapt_report.json",
        "centering.npy",
        "NOTICE.txt",
    }

    def save(d):
        shutil.copy2(rec / "model.json", d / "net.json")
        shutil.copy2(rec / "model.pdiparams", d / "net.pdiparams")
        return "net.json", "net.pdiparams"

    out = write_recognizer(spec, "gem", np.eye(512, dtype=np.float32), tmp_path / "ft", report, save_network=save)
    assert {p.name for p in out.iterdir()} == {
        "net.json",
        "net.pdiparams",
        "shitu_model.yml",
        "projection.npy",
        "adapt_report.json",
        "centering.npy",
        "NOTICE.txt",
    }
    written = ModelSpec.from_dir(out, "extractor")
    assert (written.model_file, written.params_file, written.onnx_file) == ("net.json", "net.pdiparams", None)


def test_training_views_are_embedded_a_chunk_at_a_time_fake_embedder(photos):
    """Memory stays bounded for a large list: views are made and embedded VIEW_CHUNK at a time, in the same order
    (same seed, same views) as one list would give. (A fake embedder isolates the chunking; the real path is
    test_adapt_cli_writes_a_loadable_recogniser.)"""
    from shitu.serving.adapt.head import VIEW_CHUNK, embed_views, iter_views

    images = [cv2.resize(photos["cat"], (48, 32)), cv2.resize(photos["coffee"], (40, 40))]
    backgrounds = [photos["rocket"]]
    calls = []

    def embed(batch):
        calls.append(len(batch))
        return np.stack([[float(v.mean()), float(v.shape[0])] for v in batch])

    feats, owner = embed_views(embed, images, backgrounds, VIEW_CHUNK, seed=3)
    assert calls == [VIEW_CHUNK, VIEW_CHUNK] and owner == [0] * VIEW_CHUNK + [1] * VIEW_CHUNK
    expected = [[float(v.mean()), float(v.shape[0])] for v, _ in iter_views(images, backgrounds, VIEW_CHUNK, 3)]
    assert np.allclose(feats, expected)


def test_adapt_needs_exactly_one_of_pack_and_out(tmp_path, capsys):
    from shitu.serving import cli

    (tmp_path / "list.txt").write_text("a.png\ta\n")
    assert cli.main(["adapt", str(tmp_path / "list.txt")]) == 2
    assert "give --pack NAME" in capsys.readouterr().err
    assert cli.main(["adapt", str(tmp_path / "list.txt"), "--pack", "general-lite", "--out", str(tmp_path)]) == 2
    assert cli.main(["adapt", str(tmp_path / "list.txt"), "--pack", "general-lite", "--scenario", "general"]) == 2
    assert "leave out --scenario" in capsys.readouterr().err


def test_heldout_views_use_backgrounds_never_trained_on(adapted):
    """Issue #28: held-out R@1 is measured on synthetic backgrounds, none of the training photos."""
    from shitu.serving.adapt.head import default_backgrounds, heldout_backgrounds

    _, out = adapted
    report = json.loads((out / "adapt_report.json").read_text())
    assert report["heldout_backgrounds"] == "8 synthetic clutter images"
    held, again = heldout_backgrounds(), heldout_backgrounds()
    assert len(held) == 8 and all(np.array_equal(a, b) for a, b in zip(held, again))  # deterministic
    train = [cv2.resize(b, (64, 64)).astype(np.float32) for b in default_backgrounds()]
    for h in held:
        small = cv2.resize(h, (64, 64)).astype(np.float32)
        assert min(float(np.abs(small - t).mean()) for t in train) > 10  # no training photo among them
