"""Bulk embedding for gallery builds (``shitu.serving.engine.bulk``): batches split over single-thread recogniser
copies (onnxruntime) or batched through the engine's own predictor (paddle, whose forward holds the GIL) give the
same gallery as one image at a time: same items, labels, sources, order, vectors (cos >= 0.9999).

Real models (the embedded general-lite recogniser, paddle+oneDNN and onnxruntime), real faiss galleries; the only
stand-in is ``test_split_*``'s arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from shitu.serving.engine.bulk import MAX_COPIES, BulkEmbedder, split


def test_split_cuts_contiguous_near_equal_nonempty_parts():
    for n in range(1, 20):
        for parts in range(1, 6):
            slices = split(n, parts)
            assert len(slices) == min(n, parts)
            covered = [i for s in slices for i in range(n)[s]]
            assert covered == list(range(n))
            sizes = [s.stop - s.start for s in slices]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@pytest.fixture(scope="module")
def tree(tmp_path_factory, photos) -> Path:
    """``label/NN.jpg``: the demo photos at a few scales and crops (13 images, so the last chunk is partial)."""
    root = tmp_path_factory.mktemp("bulk-tree")
    items = list(photos.items())
    for i in range(13):
        label, img = items[i % len(items)]
        h, w = img.shape[:2]
        k = i // len(items)
        view = cv2.resize(img[k * 9 : h - k * 5, k * 7 : w - k * 3], None, fx=0.6 + 0.2 * k, fy=0.6 + 0.2 * k)
        (root / label).mkdir(exist_ok=True)
        cv2.imwrite(str(root / label / f"{i:02d}.jpg"), view)
    return root


def _build(engine, root: Path, dest: Path, batch_size: int, embed_fn):
    from shitu.serving.gallery.build import build_from_entries
    from shitu.serving.gallery.list_file import scan_folder
    from shitu.serving.gallery.local import Gallery

    g = Gallery.create(dest, engine.embedding_size, index_method="Flat", dist_type="IP")
    report = build_from_entries(g, scan_folder(root), embed_fn, batch_size=batch_size, progress=False)
    items = [g.get(i, with_vector=True) for i in report.ids]
    g.close()
    return report, items


@pytest.mark.parametrize("backend", ["paddle", "onnxruntime"])
def test_real_bulk_build_equals_one_at_a_time(tmp_path, tree, backend):
    from shitu.serving.engine.engine import load_engine
    from shitu.serving.gallery.build import embed_images_fn

    engine = load_engine(gallery=tmp_path / "unused", params={"Global": {"rec_backend": backend, "cpu_num_threads": 2}})
    try:
        one, items_one = _build(engine, tree, tmp_path / "one", 1, lambda imgs: engine.embed(imgs))
        bulk_fn = embed_images_fn(engine)
        # the CLI's and Engine.gallery_build's embed_fn: the bulk embedder, through the gallery's framing rule
        assert bulk_fn.embed == engine.embed_bulk
        many, items_many = _build(engine, tree, tmp_path / "many", 5, bulk_fn)
        if backend == "onnxruntime":
            assert engine._bulk.copies == 2 and len(engine._bulk._workers) == 2  # the copies really ran
        else:  # paddle's run() holds the GIL: copies would take turns, so the engine's own predictor batches
            assert engine._bulk.copies == 1 and engine._bulk._workers == []
        assert one.added == many.added == 13
        for a, b in zip(items_one, items_many):
            assert (a["label"], a["source"], a["content_hash"]) == (b["label"], b["source"], b["content_hash"])
            cos = float(a["vector"] @ b["vector"] / (np.linalg.norm(a["vector"]) * np.linalg.norm(b["vector"])))
            assert cos >= 0.9999, (a["source"], cos)
    finally:
        engine.close()


def test_real_bulk_embed_equals_engine_embed_on_odd_counts(engine, photos):
    images = list(photos.values()) * 2 + [list(photos.values())[0][:50, :70]]
    bulk = BulkEmbedder(engine.extractor, engine.params)
    try:
        for n in (1, 2, 3, len(images)):
            want = engine.embed(images[:n])
            got = bulk(images[:n])
            assert got.shape == want.shape and got.dtype == want.dtype
            cos = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
            assert cos.min() >= 0.9999, (n, cos)
        assert bulk(images[:0]).shape == (0, engine.embedding_size)
    finally:
        bulk.close()


def test_real_bulk_copies_follow_the_thread_count(engine, models_dir):
    from shitu.model_spec import ModelSpec
    from shitu.serving.engine.extraction import FeatureExtractor
    from shitu.serving.engine.predictor import RuntimeOptions

    spec = ModelSpec.from_dir(models_dir / "rec")
    ort = "onnxruntime"
    single = BulkEmbedder(FeatureExtractor(spec, RuntimeOptions(cpu_threads=1, backend=ort)), engine.params)
    assert single.copies == 1
    single([np.zeros((32, 32, 3), np.uint8)] * 3)
    assert single._workers == []  # one thread: the extractor itself, no copies
    assert (
        BulkEmbedder(FeatureExtractor(spec, RuntimeOptions(cpu_threads=16, backend=ort)), engine.params).copies
        == MAX_COPIES
    )


def test_real_bulk_makes_no_copies_of_a_paddle_recogniser(engine, models_dir):
    """paddle.inference's run() holds the GIL: two single-thread copies in two threads did 0.93x the work of one
    (onnxruntime 1.75x), and a build through them ran at 1.04x one image at a time against 1.76x batched through one
    2-thread predictor (benchmarks/bench_gallery_build.py). Before the fix a paddle recogniser got copies too."""
    from shitu.model_spec import ModelSpec
    from shitu.serving.engine.extraction import FeatureExtractor
    from shitu.serving.engine.predictor import RuntimeOptions

    spec = ModelSpec.from_dir(models_dir / "rec")
    bulk = BulkEmbedder(FeatureExtractor(spec, RuntimeOptions(cpu_threads=2, backend="paddle")), engine.params)
    assert bulk.copies == 1
    images = [np.full((40, 50, 3), v, np.uint8) for v in (0, 90, 200)]
    got = bulk(images)
    assert bulk._workers == []  # the extractor itself, batched
    want = bulk.extractor.embed(images, engine.params)
    assert np.allclose(got, want, atol=1e-6)
