"""Shared fixtures. The test session gets its own SHITU_HOME and HUB_HOME so nothing touches the user's."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="shitu-test-home-"))
os.environ["SHITU_HOME"] = str(_SESSION_HOME / "shitu")
os.environ["HUB_HOME"] = str(_SESSION_HOME / "hub")
os.environ.setdefault("GLOG_minloglevel", "2")

GENERAL_LITE = {"Global": {"threshold": 0.3}, "IndexProcess": {"score_thres": 0.8, "index_method": "Flat"}}


def pytest_configure(config):
    config.addinivalue_line("markers", "timing: asserts a wall-clock bound; run by `make bench` (pytest -m timing)")


def pytest_collection_modifyitems(config, items):
    """Tests that assert a time run only when asked for (``-m timing``, as ``make bench`` does)."""
    if "timing" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="asserts a wall-clock bound: run by `make bench` (pytest -m timing)")
    for item in items:
        if "timing" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    from shitu.serving.engine.engine import builtin_models_dir

    return builtin_models_dir()


@pytest.fixture(scope="session")
def engine(models_dir):
    """The embedded default models, loaded once per test session (oneDNN on, as served)."""
    from shitu.model_spec import ModelSpec
    from shitu.params import merge
    from shitu.serving.engine.engine import Engine

    eng = Engine(
        ModelSpec.from_dir(models_dir / "det"),
        ModelSpec.from_dir(models_dir / "rec"),
        merge(GENERAL_LITE),
        gallery_root=_SESSION_HOME / "engine-galleries",
    )
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def photos():
    """label -> BGR real photograph (scikit-image / scikit-learn sample images)."""
    from shitu.serving.cli.demo import gallery_photos

    return gallery_photos()


@pytest.fixture(scope="session")
def queries(photos):
    from shitu.serving.cli.demo import query_photos

    return query_photos(photos)


@pytest.fixture(scope="session")
def photo_gallery(engine, photos, tmp_path_factory):
    """The demo photos in a real gallery (SQLite + faiss Flat, IP on normalised embeddings)."""
    from shitu.serving.gallery import Gallery

    g = Gallery.create(tmp_path_factory.mktemp("photo-gallery") / "g", engine.embedding_size, index_method="Flat")
    g.add(engine.embed(list(photos.values())), list(photos))
    yield g
    g.close()


@pytest.fixture(scope="session")
def memory_gallery(photo_gallery):
    """The former name of ``photo_gallery`` (now a real faiss gallery), for tests written before the rename."""
    return photo_gallery


class Served:
    """A running ``hub serving`` subprocess: ``url``, ``proc``, ``log``."""

    def __init__(self, url: str, proc, log: Path):
        self.url, self.proc, self.log = url, proc, log

    def post(self, module: str, payload, **kw):
        import requests

        return requests.post(f"{self.url}/predict/{module}", json=payload, timeout=kw.pop("timeout", 120), **kw)


_MODULES_INSTALLED = False


def workers_with_gallery_open(served: Served, gallery: str) -> set[int]:
    """pids of the server's worker processes that hold ``gallery`` open."""
    import psutil

    workers = psutil.Process(served.proc.pid).children(recursive=True)
    return {w.pid for w in workers if any(f"{gallery}/gallery.db" in f.path for f in w.open_files())}


def warm_every_worker(served: Served, request: dict, gallery: str, workers: int = 2, rounds: int = 10) -> None:
    """Send ``request`` (a recognition on ``gallery``) concurrently until every worker has loaded and opened it."""
    import concurrent.futures as cf

    for _ in range(rounds):
        with cf.ThreadPoolExecutor(2 * workers) as pool:
            for r in pool.map(lambda _: served.post("image_recognition", request), range(2 * workers)):
                assert r.json()["status"] == "000", r.text
        if len(workers_with_gallery_open(served, gallery)) >= workers:
            return
    raise AssertionError(f"not every worker opened gallery {gallery!r}")


def install_modules_once() -> None:
    """``hub install`` the four modules into the session HUB_HOME, once per session."""
    from shitu.serving.hub import control as hub_serving

    global _MODULES_INSTALLED
    if not _MODULES_INSTALLED:
        hub_serving.install_modules()
        _MODULES_INSTALLED = True


@pytest.fixture(scope="session")
def hub_modules_installed() -> None:
    """The four modules installed with the real ``hub install`` (what ``hub.Module(name=...)`` loads)."""
    install_modules_once()


def start_served(tmp: Path, workers: int = 1, init_args: dict | None = None) -> Served:
    """Install the four modules into the session HUB_HOME (once) and start ``hub serving -c`` on a free port."""
    import json

    from shitu.serving.hub import control as hub_serving

    install_modules_once()
    port = hub_serving.free_port()
    cfg = tmp / f"config-{port}.json"
    cfg.write_text(json.dumps(hub_serving.serving_config(port=port, workers=workers, init_args=init_args)))
    log = tmp / f"serving-{port}.log"
    proc = hub_serving.start(cfg, log_path=log)
    url = f"http://127.0.0.1:{port}"
    try:
        hub_serving.wait_ready(url, proc)
    except Exception:
        hub_serving.stop(proc)
        raise RuntimeError(f"hub serving did not start; log:\n{log.read_text()[-3000:]}") from None
    return Served(url, proc, log)


ADMIN_TOKEN = "test-admin-token-5f1c"
#: ``Limits.response_timeout`` of the session's servers: short, so the tests of clients that never read their
#: answers see them cut (every other test's client reads at once).
ANSWER_DEADLINE = 10.0


@pytest.fixture(scope="session")
def served_multi(tmp_path_factory):
    """``hub serving`` in gunicorn mode with 2 workers and an admin token for gallery changes."""
    from shitu.serving.hub import control as hub_serving

    s = start_served(
        tmp_path_factory.mktemp("served-multi"),
        workers=2,
        init_args={"token": ADMIN_TOKEN, "params": {"Limits": {"response_timeout": ANSWER_DEADLINE}}},
    )
    yield s
    hub_serving.stop(s.proc)


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """One real ``hub serving`` (single process, all four modules) shared by the whole test session."""
    from shitu.serving.hub import control as hub_serving

    s = start_served(
        tmp_path_factory.mktemp("served"), init_args={"params": {"Limits": {"response_timeout": ANSWER_DEADLINE}}}
    )
    yield s
    hub_serving.stop(s.proc)


def b64(image) -> str:
    """BGR array -> base64 JPEG string, as a request carries it."""
    import base64

    from shitu.serving.engine.images import encode

    return base64.b64encode(encode(image)).decode()


def unit_vectors(n: int, d: int, seed: int = 0):
    """``n`` random L2-normalised float32 vectors of ``d`` dimensions, the same for the same ``seed``."""
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
