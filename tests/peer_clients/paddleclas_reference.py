"""PaddleClas's own PP-ShiTu inference (``paddleclas==2.6.0`` ``deploy/python``) as the parity reference.

Run in a subprocess by ``tests/test_parity_paddleclas.py`` with ``FLAGS_enable_pir_api=0`` (PaddleClas's predictors
load legacy ``.pdmodel`` graphs on paddle 3.3.1 only so)::

    python paddleclas_reference.py job.json out.json

``job.json``: ``{"config": <PaddleClas inference yaml>, "queries": [image paths]}``. The gallery named by the
config's ``IndexProcess`` is built first with PaddleClas's ``GalleryBuilder`` (``build_gallery.py``). Per query it
records what ``predict_rec.py``, ``predict_det.py`` and ``predict_system.py`` compute, through their own classes
(``RecPredictor.predict``, ``DetPredictor.predict``, ``SystemPredictor.predict``) on the image as their ``main``
reads it (``cv2.imread(path)[:, :, ::-1]``). When ``predict_system`` raises (it cannot crop a box with negative
coordinates), the error is recorded and ``system_clipped`` holds its answer with the detector's boxes clipped to the
image, shitu-hub's one intended difference.
"""

import json
import sys

import cv2
import numpy as np
from paddleclas.deploy.python.build_gallery import GalleryBuilder
from paddleclas.deploy.python.predict_det import DetPredictor
from paddleclas.deploy.python.predict_rec import RecPredictor
from paddleclas.deploy.python.predict_system import SystemPredictor
from paddleclas.deploy.utils import config as pc_config


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _clipping(predict, shape):
    h, w = shape[:2]

    def clipped(img, *args, **kwargs):
        results = predict(img, *args, **kwargs)
        for r in results:
            r["bbox"] = np.clip(r["bbox"], 0, [w, h, w, h])
        return results

    return clipped


def main(job_path: str, out_path: str) -> int:
    job = json.load(open(job_path))
    cfg = pc_config.get_config(job["config"], show=False)
    GalleryBuilder(cfg)
    rec, det, system = RecPredictor(cfg), DetPredictor(cfg), SystemPredictor(cfg)
    out = []
    for path in job["queries"]:
        img = cv2.imread(path)[:, :, ::-1]
        entry = {
            "path": path,
            "feature": rec.predict([img])[0].tolist(),
            "boxes": [[r["score"], *r["bbox"]] for r in _plain(det.predict(img))],
        }
        try:
            entry["system"] = _plain(system.predict(img))
        except Exception as exc:  # noqa: BLE001 - e.g. a crop of a box with negative coordinates
            entry["system"] = {"error": f"{type(exc).__name__}: {exc}"}
            # The same pipeline with shitu-hub's one intended difference: detector boxes clipped to the image.
            system.det_predictor.predict = _clipping(det.predict, img.shape)
            entry["system_clipped"] = _plain(system.predict(img))
            system.det_predictor.predict = det.predict
        out.append(entry)
    json.dump(out, open(out_path, "w"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
