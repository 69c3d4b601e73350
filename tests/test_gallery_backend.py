"""The gallery backend interface: the local backend (real SQLite + faiss) implements every method of it."""

from __future__ import annotations

import inspect

import numpy as np

from shitu.serving.gallery.backend import GalleryBackend
from shitu.serving.gallery.local import Gallery


def test_local_gallery_is_a_gallery_backend(tmp_path):
    with Gallery.create(tmp_path / "g", 8) as g:
        assert isinstance(g, GalleryBackend)
        v = np.eye(8, dtype=np.float32)[:2]
        ids = g.add(v, ["a", "b"])
        assert [m.label for m in g.search(v[:1], 1, labels=["a"])[0]] == ["a"]
        assert g.info()["count"] == len(g) == 2 and g.label_counts() == {"a": 1, "b": 1}
        assert g.remove(ids=[ids[1]]) == 1 and [r["label"] for r in g.list()] == ["a"]


def test_backend_signatures_match_the_local_backend():
    """Every method of the interface exists on Gallery with the same parameters; the local backend may add only
    keyword-only ones with defaults (a drift guard)."""
    for name, member in vars(GalleryBackend).items():
        if name.startswith("_") and name != "__len__" or not callable(member):
            continue
        want = list(inspect.signature(member).parameters)
        params = inspect.signature(getattr(Gallery, name)).parameters
        have = list(params)
        assert have[: len(want)] == want, f"{name}: interface {want} vs local {have}"
        for extra in have[len(want) :]:
            p = params[extra]
            assert p.kind is p.KEYWORD_ONLY and p.default is not p.empty, f"{name}: extra parameter {extra}"
