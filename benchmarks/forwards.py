"""Isolated model forwards under every runtime combination available here, timed interleaved.

Used by ``bench_pipeline.py``: per model (detector, extractor) and per combination of runtime (paddle.inference
with oneDNN on the model's verified pass list, onnxruntime) and CPU threads (1, 2), the median time of one forward
on the pipeline's real input shapes (the detector's one image, the extractor's batch of N crops). The fastest
combination per model and shape is the yardstick end-to-end times are compared with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import numpy as np

RUNTIMES = {"paddle+oneDNN": ("paddle", True), "onnxruntime": ("onnxruntime", True)}


def predictors(spec: Any, threads: Iterable[int]) -> dict[str, Any]:
    """``{"<runtime>, <n> thr": Predictor}`` for every runtime the model folder supports and every thread count."""
    from shitu.serving.engine.predictor import Predictor, RuntimeOptions

    out = {}
    for name, (backend, mkldnn) in RUNTIMES.items():
        if backend == "onnxruntime" and not spec.onnx_file:
            continue
        for n in threads:
            out[f"{name}, {n} thr"] = Predictor(spec, RuntimeOptions(n, enable_mkldnn=mkldnn, backend=backend))
    return out


def interleaved(calls: dict[str, Callable[[], Any]], repeat: int, warmup: int = 2) -> dict[str, float]:
    """Median ms per call; each call warmed up ``warmup`` times, then rounds alternate the calls' order."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    keys = list(calls)
    for r in range(max(1, repeat)):
        for k in keys if r % 2 == 0 else reversed(keys):
            t = time.perf_counter()
            calls[k]()
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) * 1000 for k, v in times.items()}


def time_isolated(preds: dict[str, Any], x: np.ndarray, repeat: int) -> dict[str, float]:
    """Median ms of one forward on ``x`` per predictor, interleaved."""
    return interleaved({k: partial(p.run, {p.input_names[0]: x}) for k, p in preds.items()}, repeat)


def fastest(medians: dict[str, float]) -> tuple[str, float]:
    """(combination, median ms) of the fastest combination."""
    k = min(medians, key=medians.__getitem__)
    return k, medians[k]


#: Candidate defaults timed end to end: (detector runtime, recogniser runtime).
CANDIDATES = {
    "auto (default)": ("auto", "auto"),
    "paddle / paddle": ("paddle", "paddle"),
    "onnxruntime / paddle": ("onnxruntime", "paddle"),
    "paddle / onnxruntime": ("paddle", "onnxruntime"),
}


def isolated_and_ratios(
    engine: Any,
    requests: dict[str, tuple[Callable[[], Any], int]],
    image: np.ndarray,
    threads: Iterable[int],
    repeat: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(isolated, ratios).

    ``isolated``: per model and input shape of the pipeline (the detector's one image; the recogniser's batch of N
    crops, N = boxes of a photo incl. the whole image), the median ms of every runtime x threads combination, each
    model alone, interleaved. ``ratios``: per photo of ``requests`` (name -> (one end-to-end request, N)), its
    end-to-end median over the sum of the fastest detector and recogniser forwards for its shapes, the three timed
    interleaved in the same rounds (so load on a shared machine hits them alike)."""
    threads = list(threads)
    det_preds = predictors(engine.detector.spec, threads)
    rec_preds = predictors(engine.extractor.spec, threads)
    det_x = engine.detector.transforms(image).image[None]  # the embedded detector's one input
    crop = engine.extractor.transforms(image).image[None]
    rec_x = {b: np.repeat(crop, b, axis=0) for b in sorted({n for _, n in requests.values()})}
    isolated = {
        "det": {"b1": time_isolated(det_preds, det_x, repeat)},
        "rec": {f"b{b}": time_isolated(rec_preds, x, repeat) for b, x in rec_x.items()},
    }
    det_k = fastest(isolated["det"]["b1"])[0]
    ratios = {}
    for name, (request, n) in requests.items():
        rec_k = fastest(isolated["rec"][f"b{n}"])[0]
        det_p, rec_p = det_preds[det_k], rec_preds[rec_k]
        m = interleaved(
            {
                "e2e": request,
                "det": partial(det_p.run, {det_p.input_names[0]: det_x}),
                "rec": partial(rec_p.run, {rec_p.input_names[0]: rec_x[n]}),
            },
            repeat,
        )
        ratios[name] = {
            "e2e_ms": m["e2e"],
            "fastest_det": det_k,
            "fastest_det_ms": m["det"],
            "fastest_rec": rec_k,
            "fastest_rec_ms": m["rec"],
            "rec_batch": n,
            "ratio": m["e2e"] / (m["det"] + m["rec"]),
        }
    return isolated, ratios


def time_candidates(engines: dict[str, Any], image: np.ndarray, gallery: Any, repeat: int) -> dict[str, float]:
    """Median end-to-end ms of ``engine.recognize([image])`` per engine (same gallery), interleaved."""
    return interleaved({k: partial(e.recognize, [image], gallery=gallery) for k, e in engines.items()}, repeat)
