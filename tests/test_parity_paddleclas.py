"""Parity with PaddleClas's own PP-ShiTu pipeline on official-format models (``../shared/official_format``).

The reference is PaddleClas 2.6.0's ``deploy/python`` (``predict_rec.py``, ``predict_det.py``,
``predict_system.py`` and ``build_gallery.py``, through their own classes) run in a subprocess by
``tests/peer_clients/paddleclas_reference.py`` on the legacy ``.pdmodel`` exports (PaddleClas cannot load the PIR
files: ``enable_memory_optim()`` fails on them). shitu-hub runs the same photos through both the legacy and the PIR
exports. Asserted: features cos >= 0.9999, detector boxes equal within 1 px, same recognised labels.

The one intended difference: shitu-hub clips boxes to the image; PaddleClas keeps negative coordinates (and then
fails to crop such a box, so ``predict_system`` raises on those images: they are compared on boxes and features
only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from paddleclas_config import DET, OFFICIAL, REC, SETTINGS, paddleclas_config  # noqa: E402

PARAMS = {
    "Global": {
        "threshold": SETTINGS["threshold"],
        "max_det_results": SETTINGS["max_det_results"],
        "rec_nms_thresold": SETTINGS["rec_nms_thresold"],
        "enable_mkldnn": False,
        "cpu_num_threads": 1,
    },
    "IndexProcess": {"score_thres": SETTINGS["score_thres"], "return_k": SETTINGS["return_k"]},
}

pytestmark = pytest.mark.skipif(
    not (OFFICIAL / "legacy" / DET).is_dir(),
    reason=f"official-format fixtures not found at {OFFICIAL} (../shared/official_format beside the repository)",
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, photos, queries):
    """PaddleClas's answers per query image (skips when paddleclas 2.6.0 is not installed)."""
    try:
        import paddleclas  # noqa: F401
    except ImportError:
        pytest.skip("paddleclas is not installed (pip install --no-deps paddleclas==2.6.0; `make test` does)")
    tmp = tmp_path_factory.mktemp("paddleclas-ref")
    (tmp / "gallery").mkdir()
    lines = []
    for label, img in photos.items():
        cv2.imwrite(str(tmp / "gallery" / f"{label}.png"), img)
        lines.append(f"{label}.png\t{label}")
    list_file = tmp / "gallery" / "list.txt"
    list_file.write_text("\n".join(lines) + "\n")
    (tmp / "queries").mkdir()
    paths = []
    for name, img in {**queries, **{f"gallery_{k}": v for k, v in photos.items()}}.items():
        paths.append(str(tmp / "queries" / f"{name}.png"))
        cv2.imwrite(paths[-1], img)
    cfg = tmp / "inference_general.yaml"
    cfg.write_text(yaml.safe_dump(paddleclas_config(tmp, list_file)))
    job, out = tmp / "job.json", tmp / "out.json"
    job.write_text(json.dumps({"config": str(cfg), "queries": paths}))
    script = Path(__file__).parent / "peer_clients" / "paddleclas_reference.py"
    env = {**os.environ, "FLAGS_enable_pir_api": "0"}
    run = subprocess.run(
        [sys.executable, str(script), str(job), str(out)], cwd=tmp, env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return {Path(r["path"]).stem: r for r in json.loads(out.read_text())}


@pytest.fixture(scope="module", params=["legacy", "pir"])
def ours(request, photos, queries, tmp_path_factory):
    """shitu-hub's answers per image on the legacy or the PIR export: feature, detector boxes, recognitions."""
    from shitu.model_spec import ModelSpec
    from shitu.params import merge
    from shitu.serving.engine.engine import Engine
    from shitu.serving.gallery import Gallery

    root = OFFICIAL / request.param
    engine = Engine(
        ModelSpec.from_dir(root / DET, "detector"), ModelSpec.from_dir(root / REC, "extractor"), merge(PARAMS)
    )
    gallery = Gallery.create(
        tmp_path_factory.mktemp(f"parity-{request.param}") / "g",
        engine.embedding_size,
        index_method="Flat",
        dist_type="IP",
    )  # a real faiss gallery, exact search
    gallery.add(engine.embed(list(photos.values())), list(photos))
    det_params = engine.request_params({"Global.append_whole_image": False})
    answers = {
        name: {
            "feature": engine.embed([img])[0],
            "boxes": engine.detector.detect(img, det_params),
            "recognitions": engine.recognize([img], gallery=gallery)[0],
            "shape": img.shape,
        }
        for name, img in _images(photos, queries).items()
    }
    return request.param, answers


def _images(photos, queries):
    return {**queries, **{f"gallery_{k}": v for k, v in photos.items()}}


def _clip(box, shape):
    h, w = shape[:2]
    return np.clip(np.asarray(box, np.float64), 0, [w, h, w, h])


def test_real_features_equal_paddleclas(reference, ours):
    fmt, answers = ours
    for name, mine in answers.items():
        ref = np.asarray(reference[name]["feature"], np.float64)
        cos = float(mine["feature"] @ ref / (np.linalg.norm(mine["feature"]) * np.linalg.norm(ref)))
        assert cos >= 0.9999, (fmt, name, cos)


def test_real_boxes_equal_paddleclas_predict_det(reference, ours):
    """Failed before the detector stopped running a second NMS on PaddleDetection exports."""
    fmt, answers = ours
    compared = 0
    for name, mine in answers.items():
        boxes, ref = mine["boxes"], reference[name]["boxes"]
        assert len(boxes) == len(ref), (fmt, name, boxes.xyxy.tolist(), ref)
        for box, score, (ref_score, *ref_box) in zip(boxes.xyxy, boxes.scores, ref):
            np.testing.assert_allclose(box, _clip(ref_box, mine["shape"]), atol=1.0, err_msg=f"{fmt} {name}")
            assert abs(float(score) - ref_score) < 1e-3
            compared += 1
    assert compared > 0


def test_real_recognition_labels_equal_paddleclas_predict_system(reference, ours):
    fmt, answers = ours
    crashed = []
    for name, mine in answers.items():
        ref = reference[name]["system"]
        if isinstance(ref, dict):  # PaddleClas raised on a box with negative coordinates; ours clips it
            crashed.append(name)
            ref = reference[name]["system_clipped"]
        found = mine["recognitions"]
        assert [r.label for r in found] == [r["rec_docs"] for r in ref], (fmt, name, found, ref)
        for r, e in zip(found, ref):
            np.testing.assert_allclose(r.bbox, _clip(e["bbox"], mine["shape"]), atol=1.0, err_msg=f"{fmt} {name}")
    print(
        f"PaddleClas predict_system raised on {len(crashed)} of {len(answers)} images "
        f"(boxes with negative coordinates): {crashed}"
    )
