"""Bulk embedding for gallery builds: each batch split over single-thread copies of the recogniser, concurrently.

A gallery build embeds many whole images and only cares about throughput. One predictor with ``N`` threads
parallelises inside each operator of a small network (LCNet-size convolutions on 224 x 224 inputs), which keeps
the cores only partly busy; ``N`` copies of the predictor with one thread each, every copy taking its share of a
batch (pre-processing included: OpenCV and onnxruntime release the GIL), keep them busy. Measured in
``benchmarks/bench_gallery_build.py``.

Copies only help a runtime whose forward runs while other Python threads run: onnxruntime does (two single-thread
copies in two threads did 1.75x the work of one in the same time, measured on the 2-core VM); paddle.inference's
``run()`` holds the GIL (0.93x: the copies take turns), so on paddle a build sends its batches through the
engine's own predictor, all its threads, ``Global.batch_size`` images per forward (1.76x the images per second of
one at a time there, where batching does pay: oneDNN's batch-1 forward costs 1.5x a batched one per image).

:class:`BulkEmbedder` makes ``min(Global.cpu_num_threads, MAX_COPIES)`` copies on onnxruntime (each with
``cpu_num_threads // copies`` threads), created on first use and kept by the engine (each copy holds its own
weights: the embedded recogniser's are 13 MB). A call with one image, a paddle or GPU model or ``cpu_num_threads: 1``
uses the engine's own recogniser. The vectors equal the engine's ``embed`` (same pre-processing, pooling,
normalisation; float rounding of a different batch split aside, cos >= 0.9999).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from shitu.serving.engine.extraction import FeatureExtractor

__all__ = ["BulkEmbedder", "CONCURRENT_BACKENDS", "MAX_COPIES", "runs_concurrently", "split"]

#: At most this many recogniser copies run a build's batches (more copies than cores only add memory).
MAX_COPIES = 4


def split(n: int, parts: int) -> list[slice]:
    """``range(n)`` cut into at most ``parts`` contiguous slices of near-equal size, none empty."""
    parts = max(1, min(parts, n))
    size, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (1 if i < extra else 0)
        out.append(slice(start, stop))
        start = stop
    return out


#: Runtimes whose forward lets other Python threads run meanwhile (copies of their predictors run at once).
CONCURRENT_BACKENDS = ("onnxruntime",)


def runs_concurrently(options: Any) -> bool:
    """Whether single-thread copies of a predictor with these ``RuntimeOptions`` would run at the same time: a CPU
    model on a runtime of :data:`CONCURRENT_BACKENDS` (``None``, a stand-in predictor: no)."""
    return options is not None and not options.use_gpu and options.backend in CONCURRENT_BACKENDS


class BulkEmbedder:
    """``embedder(images) -> [n, d]`` like ``extractor.embed(images, params)``, with each call's images split over
    single-thread copies of ``extractor``'s model running at the same time (see the module doc)."""

    def __init__(self, extractor: FeatureExtractor, params: Any):
        self.extractor = extractor
        self.params = params
        options = getattr(extractor.predictor, "options", None)  # None: a stand-in predictor, used as it is
        threads = options.cpu_threads if options is not None else 1
        self.copies = max(1, min(threads, MAX_COPIES)) if runs_concurrently(options) else 1
        self._threads = max(1, threads // self.copies)
        self._workers: list[FeatureExtractor] = []
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _start(self) -> tuple[list[FeatureExtractor], ThreadPoolExecutor]:
        with self._lock:
            if self._pool is None:
                spec, options = self.extractor.spec, self.extractor.predictor.options
                one = dataclasses.replace(options, cpu_threads=self._threads)
                self._workers = [FeatureExtractor(spec, one) for _ in range(self.copies)]
                self._pool = ThreadPoolExecutor(self.copies, thread_name_prefix="bulk-embed")
            return self._workers, self._pool

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        images = list(images)
        if self.copies == 1 or len(images) < 2:
            return self.extractor.embed(images, self.params)
        workers, pool = self._start()
        parts = split(len(images), len(workers))
        futures = [pool.submit(w.embed, images[s], self.params) for w, s in zip(workers, parts)]
        return np.concatenate([f.result() for f in futures])

    def close(self) -> None:
        """Stop the worker threads and drop the copies (the next call starts them again)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._pool, self._workers = None, []
