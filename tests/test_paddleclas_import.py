"""Importing PaddleClas index folders: real folders written by PaddleClas's own ``build_gallery.py``, and hostile
``id_map.pkl`` files that must be refused without anything being executed."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shitu.serving.gallery.local import Gallery
from shitu.serving.gallery.paddleclas_index import (
    IndexImportError,
    import_paddleclas_index,
    read_faiss_index,
    read_id_map,
)

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
REC_MODEL = SHARED / "official_format" / "legacy" / "general_PPLCNetV2_base_pretrained_v1.0_infer"

# (PaddleClas IndexProcess.index_method, dist_type) -> what the imported gallery reads as.
# PaddleClas 2.6.0's plain "IVF" crashes in its own _create_index (NameError: gallery_images), and its binary
# path never trains, so IVF is given as a factory string and binary IVF is not something it can write.
KINDS = {
    "flat_ip": ("Flat", "IP", "Flat"),
    "hnsw_ip": ("HNSW32", "IP", "HNSW32"),
    "ivf_l2": ("IVF2,Flat", "L2", "IVF"),
    "flat_hamming": ("Flat", "hamming", "Flat"),
    "hnsw_hamming": ("HNSW32", "hamming", "HNSW32"),
}


def _paddleclas_available() -> bool:
    try:
        import paddleclas  # noqa: F401
    except Exception:
        return False
    return REC_MODEL.is_dir()


needs_paddleclas = pytest.mark.skipif(
    not _paddleclas_available(), reason="paddleclas==2.6.0 (dev extra) or ../shared official models missing"
)


def _write_gallery_images(root: Path, photos: dict) -> list[str]:
    import cv2

    img = root / "gallery"
    img.mkdir(parents=True, exist_ok=True)
    lines = []
    for label, bgr in list(photos.items())[:4]:
        h, w = bgr.shape[:2]
        for j in range(4):
            crop = bgr[j * h // 16 : h - j * h // 16, j * w // 16 : w - j * w // 16]
            cv2.imwrite(str(img / f"{label}_{j}.jpg"), crop)
            lines.append(f"{label}_{j}.jpg\t{label}")
    (img / "list.txt").write_text("\n".join(lines) + "\n")
    return lines


def build_with_paddleclas(root: Path, index_method: str, dist_type: str) -> Path:
    """Run PaddleClas's own ``deploy/python/build_gallery.py`` (as ``python -m``) on the gallery under ``root``."""
    import yaml

    binary = dist_type == "hamming"
    cfg = {
        "Global": {
            "rec_inference_model_dir": str(REC_MODEL),
            "batch_size": 1,
            "use_gpu": False,
            "enable_mkldnn": False,
            "cpu_num_threads": 1,
            "enable_benchmark": False,
            "use_fp16": False,
            "ir_optim": True,
            "use_tensorrt": False,
            "gpu_mem": 8000,
            "enable_profile": False,
        },
        "RecPreProcess": {
            "transform_ops": [
                {
                    "ResizeImage": {
                        "size": [224, 224],
                        "return_numpy": False,
                        "interpolation": "bilinear",
                        "backend": "cv2",
                    }
                },
                {
                    "NormalizeImage": {
                        "scale": 0.00392157,
                        "mean": [0.485, 0.456, 0.406],
                        "std": [0.229, 0.224, 0.225],
                        "order": "hwc",
                    }
                },
                {"ToCHWImage": None},
            ]
        },
        "RecPostProcess": {"main_indicator": "Binarize", "Binarize": {"method": "sign"}} if binary else None,
        "IndexProcess": {
            "index_method": index_method,
            "image_root": str(root / "gallery"),
            "index_dir": str(root / "index"),
            "data_file": str(root / "gallery" / "list.txt"),
            "index_operation": "new",
            "delimiter": "\t",
            "dist_type": dist_type,
            "embedding_size": 512,
            "batch_size": 32,
        },
    }
    (root / "build.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, FLAGS_enable_pir_api="0")  # PaddleClas's predictor loads legacy graphs only so
    proc = subprocess.run(
        [sys.executable, "-m", "paddleclas.deploy.python.build_gallery", "-c", str(root / "build.yaml")],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "index"


@pytest.fixture(scope="module")
def paddleclas_folders(tmp_path_factory, photos) -> dict[str, tuple[Path, list[str]]]:
    out = {}
    for name, (method, dist, _) in KINDS.items():
        root = tmp_path_factory.mktemp(f"paddleclas_{name}")
        lines = _write_gallery_images(root, photos)
        out[name] = (build_with_paddleclas(root, method, dist), lines)
    return out


@needs_paddleclas
@pytest.mark.parametrize("kind", list(KINDS))
def test_real_paddleclas_folder_imports_with_same_ids_labels_vectors(kind, paddleclas_folders, tmp_path):
    import faiss

    folder, lines = paddleclas_folders[kind]
    _method, dist, expect_method = KINDS[kind]
    summary = import_paddleclas_index(folder, tmp_path / "g")
    assert summary["count"] == len(lines) and summary["metric"] == dist
    assert summary["index_method"] == expect_method
    # PaddleClas's own view of the folder, read the way it reads it (its own files, trusted here).
    with open(folder / "id_map.pkl", "rb") as f:
        theirs = pickle.load(f)  # noqa: S301 - a file this test just made with PaddleClas
    raw = (
        faiss.read_index_binary(str(folder / "vector.index"))
        if dist == "hamming"
        else faiss.read_index(str(folder / "vector.index"))
    )
    if kind == "ivf_l2":
        faiss.extract_index_ivf(raw).make_direct_map()
    with Gallery.open(tmp_path / "g") as g:
        assert g.metric == dist and len(g) == len(lines)
        for pid, doc in theirs.items():
            rec = g.get(int(pid), with_vector=True)
            assert rec is not None, pid
            path, label = doc.split("\t")
            assert (rec["label"], rec["source"]) == (label, path)
            want = raw.reconstruct(int(pid)) if dist != "hamming" or kind == "flat_hamming" else None
            if want is not None:
                np.testing.assert_array_equal(rec["vector"], want)
        # Searching with a stored vector finds that very item (or an identical vector of the same photo) first.
        rec = g.get(5, with_vector=True)
        top = g.search(rec["vector"][None], k=1)[0][0]
        assert top.label == rec["label"]
        np.testing.assert_array_equal(g.get(top.id, with_vector=True)["vector"], rec["vector"])


@needs_paddleclas
def test_cli_import_paddleclas_and_open_message(paddleclas_folders, tmp_path):
    from shitu.serving.gallery.local import GalleryError

    folder, lines = paddleclas_folders["hnsw_ip"]
    with pytest.raises(GalleryError, match="import-paddleclas"):
        Gallery.open(folder)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "shitu",
            "gallery",
            "import-paddleclas",
            str(folder),
            str(tmp_path / "g"),
            "--model-dir",
            str(REC_MODEL),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"count": 16' in proc.stdout and REC_MODEL.name in proc.stdout
    again = subprocess.run(
        [sys.executable, "-m", "shitu", "gallery", "import-paddleclas", str(folder), str(tmp_path / "g")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 3 and "not empty" in again.stderr


# -- hostile pickles (no PaddleClas needed) ---------------------------------------------------------------------


def _write(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "id_map.pkl"
    p.write_bytes(data)
    return p


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_reduce_payload_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    for proto in (0, 2, 4, 5):
        data = pickle.dumps({0: _Payload(marker)}, protocol=proto)
        with pytest.raises(IndexImportError, match="refused"):
            read_id_map(_write(tmp_path, data))
    assert not marker.exists()


def test_payload_hidden_behind_numpy_names_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    # A numpy scalar whose dtype is an object dtype, and a direct call of a global that is not numpy's.
    obj_scalar = pickle.dumps({np.array([1], dtype=object)[0:1][0]: "a"}, protocol=4)  # int key: plain ok
    assert read_id_map(_write(tmp_path, obj_scalar)) == {1: "a"}
    evil = (
        b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x05numpy\x8c\x05dtype\x93\x8c\x02O8\x89\x88"
        b"\x87R\x94K\x00\x8c\x01a\x94s."
    )
    with pytest.raises(IndexImportError, match="refused|not a readable"):
        read_id_map(_write(tmp_path, evil))
    glob = b"cposix\nsystem\n(Vtouch " + str(marker).encode() + b"\ntR."
    with pytest.raises(IndexImportError, match="refused"):
        read_id_map(_write(tmp_path, glob))
    assert not marker.exists()


def test_huge_declared_sizes_are_refused_without_allocating(tmp_path):
    # BINUNICODE8 / BINBYTES8 / BINUNICODE declaring far more than the file holds.
    for blob in (
        b"\x80\x04\x8d" + struct.pack("<Q", 1 << 60) + b"abc",
        b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"abc",
        b"\x80\x03X" + struct.pack("<I", 0xFFFFFFF0) + b"abc",
        b"\x80\x04\x95" + struct.pack("<Q", 1 << 62) + b"}.",
    ):
        with pytest.raises(IndexImportError):
            read_id_map(_write(tmp_path, blob))
    # A file over the byte cap is refused before it is read; a dict over the entry cap too.
    p = _write(tmp_path, pickle.dumps({i: f"x{i}.jpg\tl" for i in range(1000)}))
    with pytest.raises(IndexImportError, match="limit"):
        read_id_map(p, max_bytes=100)
    with pytest.raises(IndexImportError, match="limit"):
        read_id_map(p, max_items=10)


def test_other_shapes_are_refused(tmp_path):
    import collections

    for obj in ([1, 2], {"a": "b"}, {1: 2}, collections.OrderedDict({1: "a\tb"}), {1: b"bytes"}):
        with pytest.raises(IndexImportError):
            read_id_map(_write(tmp_path, pickle.dumps(obj, protocol=4)))
    with pytest.raises(IndexImportError, match="not a readable pickle"):
        read_id_map(_write(tmp_path, b"\x80\x04garbage"))
    # numpy int64 keys, as PaddleClas writes them, read as plain ints (numpy 1.x and 2.x module names).
    data = pickle.dumps({np.int64(3): "p.jpg\tcat", np.int64(-2): "q.jpg\tdog"}, protocol=4)
    assert read_id_map(_write(tmp_path, data)) == {3: "p.jpg\tcat", -2: "q.jpg\tdog"}
    old = pickle.dumps({np.int64(3): "p.jpg\tcat", np.int64(-2): "q.jpg\tdog"}, protocol=2)
    old = old.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # as numpy 1.x (PaddleClas's pin) writes
    assert b"numpy.core.multiarray\nscalar" in old
    assert read_id_map(_write(tmp_path, old)) == {3: "p.jpg\tcat", -2: "q.jpg\tdog"}


def test_synthetic_folder_with_gaps_keeps_ids_and_refuses_mismatch(tmp_path):
    """A folder made here with faiss (PaddleClas's layout after an ``index_operation: remove``: ids with gaps)."""
    import faiss

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((6, 16)).astype(np.float32)
    ids = np.array([0, 1, 2, 7, 8, 20], np.int64)
    index = faiss.IndexIDMap2(faiss.index_factory(16, "Flat", faiss.METRIC_INNER_PRODUCT))
    index.add_with_ids(vecs, ids)
    folder = tmp_path / "idx"
    folder.mkdir()
    faiss.write_index(index, str(folder / "vector.index"))
    (folder / "id_map.pkl").write_bytes(pickle.dumps({np.int64(i): f"img{i}.jpg\tlabel {i}" for i in ids}))
    import_paddleclas_index(folder, tmp_path / "g")
    with Gallery.open(tmp_path / "g") as g:
        assert [r["id"] for r in g.list()] == ids.tolist()
        assert g.get(7)["label"] == "label 7"
        np.testing.assert_allclose(g.get(20, with_vector=True)["vector"], vecs[5])
    contents = read_faiss_index(folder / "vector.index")
    assert contents.ids.tolist() == ids.tolist()
    (folder / "id_map.pkl").write_bytes(pickle.dumps({int(i): f"img{i}.jpg\tl" for i in ids[:-1]}))
    with pytest.raises(IndexImportError, match="inconsistent"):
        import_paddleclas_index(folder, tmp_path / "g2")
    assert not (tmp_path / "g2").exists()


def test_binary_ivf_folder_made_with_faiss_imports(tmp_path):
    """PaddleClas 2.6.0 cannot write a binary IVF index (it never trains one); faiss can: the reader takes it."""
    import faiss

    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (64, 8), dtype=np.uint8)
    index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(64), 64, 2)
    index.train(codes)
    index.add(codes)
    folder = tmp_path / "idx"
    folder.mkdir()
    faiss.write_index_binary(index, str(folder / "vector.index"))
    (folder / "id_map.pkl").write_bytes(pickle.dumps({np.int64(i): f"{i}.jpg\tl{i % 4}" for i in range(64)}))
    summary = import_paddleclas_index(folder, tmp_path / "g")
    assert summary["metric"] == "hamming" and summary["count"] == 64
    with Gallery.open(tmp_path / "g") as g:
        for i in (0, 31, 63):
            rec = g.get(i, with_vector=True)
            assert rec["label"] == f"l{i % 4}"
            np.testing.assert_array_equal(rec["vector"], codes[i])
