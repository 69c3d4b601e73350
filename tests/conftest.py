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


@pytest.fixture(scope="session")
def models_dir() -> Path:
    from shitu.serving.engine import builtin_models_dir

    return builtin_models_dir()


@pytest.fixture(scope="session")
def engine(models_dir):
    """The embedded default models, loaded once per test session (oneDNN on, as served)."""
    from shitu.params import merge
    from shitu.serving.engine import Engine
    from shitu.serving.model_spec import ModelSpec

    eng = Engine(ModelSpec.from_dir(models_dir / "det"), ModelSpec.from_dir(models_dir / "rec"), merge(GENERAL_LITE),
                 gallery_root=_SESSION_HOME / "engine-galleries")
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def photos():
    """label -> BGR real photograph (scikit-image / scikit-learn sample images)."""
    from shitu.serving.demo import gallery_photos

    return gallery_photos()


@pytest.fixture(scope="session")
def queries(photos):
    from shitu.serving.demo import query_photos

    return query_photos(photos)


@pytest.fixture(scope="session")
def memory_gallery(engine, photos):
    """An exact in-memory gallery of the demo photos (IP on normalised embeddings)."""
    from shitu.serving.pipeline import MemoryIndex

    index = MemoryIndex(engine.embedding_size, "IP")
    index.add(engine.embed(list(photos.values())), list(photos))
    return index
