"""Prometheus metrics of ``hub serving`` (``GET /metrics``, text format), aggregated across gunicorn workers.

prometheus_client's multi-process mode: every process writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR``
and a scrape (answered by whichever worker gets it) sums them all. :func:`prepare` sets that variable before
prometheus_client is imported, to ``<memory folder>/shitu-metrics-<uid>/<master pid>`` (a fresh folder per server
start; folders of servers no longer running are removed), unless the operator set it. The memory folder is
``$SHITU_METRICS_DIR``, else ``/dev/shm`` (RAM), else the system's temporary folder: never the galleries' disk.
prometheus_client *mmaps* those files, and a page of a sparse mmapped file that cannot be allocated on a full disk
kills the process with SIGBUS, so with them next to the galleries a full galleries disk killed every worker on its
next request (issue 27). Failing to record a metric never fails a request. When a gunicorn worker exits the master
marks its live gauges dead and counts a restart.

Metrics (all prefixed ``shitu_``):

| name | type | labels | meaning |
|---|---|---|---|
| ``requests_total`` | counter | module, operation, status | requests answered, by envelope status (``000``, ``101``, ``413``...) |
| ``request_seconds`` | histogram | module, operation | wall time from the request's arrival to its answer |
| ``stage_seconds`` | histogram | stage | per request: ``decode``, ``detect``, ``extract``, ``search`` (the pipeline's stage timer) |
| ``images_per_request`` | histogram | module | images in a request |
| ``boxes_per_request`` | histogram | module | boxes answered (detections or recognitions) per request |
| ``errors_total`` | counter | module, kind | failed requests by kind (exception class, or ``http_<code>``) |
| ``gallery_items`` | gauge | scenario, gallery | items in each served gallery (read at scrape time) |
| ``worker_restarts_total`` | counter | | gunicorn workers that exited (and were replaced) |
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shitu.files import pid_alive

__all__ = ["prepare", "Metrics", "get", "STAGE_GROUPS", "CONTENT_TYPE"]

ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The folder under which each server's metrics folder is made (default ``/dev/shm``, else the temporary folder).
BASE_ENV = "SHITU_METRICS_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The pipeline's stage names (engine timing) -> the stages reported.
STAGE_GROUPS = {
    "decode": "decode",
    "det_preprocess": "detect",
    "det_forward": "detect",
    "det_postprocess": "detect",
    "crop": "extract",
    "rec_preprocess": "extract",
    "rec_forward": "extract",
    "search": "search",
    "rec_nms": "search",
}
#: Galleries counted per scrape at most (a scrape stays cheap whatever the number of galleries).
MAX_GALLERIES = 256
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_COUNT_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128)

_metrics: Metrics | None = None


def _shitu_home() -> Path:
    from shitu.plugins.store import home

    return home()


def metrics_base() -> Path:
    """Where servers put their metrics folders: ``$SHITU_METRICS_DIR``, else ``/dev/shm``, else the temporary
    folder (``shitu-metrics-<uid>`` inside the latter two)."""
    given = os.environ.get(BASE_ENV)
    if given:
        return Path(given)
    shm = Path("/dev/shm")
    memory = shm if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else Path(tempfile.gettempdir())
    return memory / f"shitu-metrics-{os.getuid()}"


def prepare() -> Path:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for this server (and the workers it forks); returns the folder."""
    given = os.environ.get(ENV)
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return Path(given)
    run = metrics_base()
    run.mkdir(mode=0o700, parents=True, exist_ok=True)
    for old in run.iterdir():
        try:
            pid = int(old.name)
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(old, ignore_errors=True)
    folder = run / str(os.getpid())
    shutil.rmtree(folder, ignore_errors=True)  # a pid reused from an earlier run: start from zero
    folder.mkdir()
    os.environ[ENV] = str(folder)
    return folder


class _GalleryCollector:
    """``shitu_gallery_items``: counts of the served galleries (``$SHITU_HOME/galleries/<scenario>/<gallery>``)."""

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from shitu.serving.gallery.store import item_count

        family = GaugeMetricFamily(
            "shitu_gallery_items", "Items in each served gallery.", labels=["scenario", "gallery"]
        )
        root = _shitu_home() / "galleries"
        for db in sorted(root.glob("*/*/gallery.db"))[:MAX_GALLERIES]:
            n = item_count(db)
            if n is None:
                continue
            family.add_metric([db.parent.parent.name, db.parent.name], float(n))
        yield family


class Metrics:
    """The metric objects of this process (created after :func:`prepare`)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        self.requests = Counter(
            "shitu_requests_total", "Requests answered, by envelope status.", ["module", "operation", "status"]
        )
        self.latency = Histogram(
            "shitu_request_seconds",
            "Time from a request's arrival to its answer.",
            ["module", "operation"],
            buckets=_LATENCY_BUCKETS,
        )
        self.stages = Histogram(
            "shitu_stage_seconds", "Pipeline time per request and stage.", ["stage"], buckets=_LATENCY_BUCKETS
        )
        self.images = Histogram("shitu_images_per_request", "Images in a request.", ["module"], buckets=_COUNT_BUCKETS)
        self.boxes = Histogram(
            "shitu_boxes_per_request", "Boxes answered per request.", ["module"], buckets=_COUNT_BUCKETS
        )
        self.errors = Counter("shitu_errors_total", "Failed requests by kind.", ["module", "kind"])
        self.restarts = Counter("shitu_worker_restarts_total", "gunicorn workers that exited and were replaced.")

    def observe(
        self,
        module: str,
        operation: str,
        status: str,
        seconds: float,
        stages: dict[str, float],
        images: int | None,
        boxes: int | None,
        error_kind: str | None,
    ) -> None:
        try:
            self._observe(module, operation, status, seconds, stages, images, boxes, error_kind)
        except OSError as exc:  # the metrics folder is full or gone: the request still gets its answer
            logging.getLogger("shitu.serving").warning("metrics not recorded: %s", exc)

    def _observe(
        self,
        module: str,
        operation: str,
        status: str,
        seconds: float,
        stages: dict[str, float],
        images: int | None,
        boxes: int | None,
        error_kind: str | None,
    ) -> None:
        self.requests.labels(module, operation, status).inc()
        self.latency.labels(module, operation).observe(seconds)
        grouped: dict[str, float] = {}
        for name, value in stages.items():
            group = STAGE_GROUPS.get(name)
            if group:
                grouped[group] = grouped.get(group, 0.0) + value
        for group, value in grouped.items():
            self.stages.labels(group).observe(value)
        if images is not None:
            self.images.labels(module).observe(images)
        if boxes is not None:
            self.boxes.labels(module).observe(boxes)
        if error_kind:
            self.errors.labels(module, error_kind).inc()

    def worker_exited(self, pid: int) -> None:
        """In the gunicorn master, when a worker exits."""
        from prometheus_client import multiprocess

        self.restarts.inc()
        multiprocess.mark_process_dead(pid)

    @staticmethod
    def render() -> bytes:
        """The scrape: every process's samples summed (multi-process mode) plus the gallery sizes."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # prepare() set PROMETHEUS_MULTIPROC_DIR at start-up
        registry.register(_GalleryCollector())
        return generate_latest(registry)


def get() -> Metrics:
    """This process's :class:`Metrics` (created on first use)."""
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics
