"""The recognition engine: one scenario's models, parameters and galleries, loaded once and used many times.

``load_engine()`` is the entry point for the library, the CLI and every hub module::

    engine = load_engine()                           # the default scenario pack (general-lite: offline models)
    engine.gallery_add([img1, img2], ["cat", "cup"])  # BGR images, as cv2.imread gives
    engine.recognize([query])                         # -> [[Recognition(bbox, label, score, ...)]]
    engine.recognize([query], threshold=0.5)          # per-call overrides, PP-ShiTu names

Parameters merge as defaults < scenario pack < ``params`` (e.g. ``config.json`` ``init_args``) < per-call overrides.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from shitu.params import Params, merge

from shitu.serving.engine.detection import MainbodyDetector
from shitu.serving.engine.extraction import FeatureExtractor
from shitu.model_spec import ModelSpec
from shitu.serving.engine.pipeline import SearchIndex, accepts, recognize
from shitu.serving.engine.predictor import RuntimeOptions
from shitu.serving.engine.results import Detections, Match, Recognition
from shitu.serving.engine.timing import NULL_TIMER, StageTimer

#: Gallery names a request may use (never a path).
GALLERY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class EngineError(ValueError):
    """A request to the engine is invalid (unknown gallery, bad boxes...)."""


def runtime_options(params: Params, which: str) -> RuntimeOptions:
    """``Global.*`` runtime parameters -> options for the ``det`` or ``rec`` model."""
    return RuntimeOptions(
        cpu_threads=params["Global.cpu_num_threads"],
        enable_mkldnn=params["Global.enable_mkldnn"],
        use_gpu=params["Global.use_gpu"],
        gpu_id=params["Global.gpu_id"],
        backend=params[f"Global.{which}_backend"],
    )


class Engine:
    """Detector + feature extractor + galleries of one scenario, with merged parameters."""

    def __init__(self, detector_spec: ModelSpec, extractor_spec: ModelSpec, params: Params | None = None,
                 gallery_root: Path | None = None, default_gallery: str = "default", scenario: str = "custom"):
        self.params = params or merge()
        self.scenario = scenario
        self.detector = MainbodyDetector(detector_spec, runtime_options(self.params, "det"))
        self.extractor = FeatureExtractor(extractor_spec, runtime_options(self.params, "rec"))
        self.gallery_root = Path(gallery_root) if gallery_root else None
        self.default_gallery = default_gallery
        self._galleries: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- parameters ----------------------------------------------------------------------------------------------
    def request_params(self, overrides: dict[str, Any] | None = None) -> Params:
        """Engine parameters with per-request ``overrides`` (validated; load-time parameters refused)."""
        return self.params.override(overrides, per_request=True) if overrides else self.params

    @property
    def embedding_size(self) -> int:
        return self.extractor.embedding_size

    # -- galleries -----------------------------------------------------------------------------------------------
    def gallery_path(self, name: str | None = None) -> Path:
        """Folder of gallery ``name`` (a name, never a path: requests pick galleries by name)."""
        name = name or self.default_gallery
        if not GALLERY_NAME.match(name):
            raise EngineError(f"invalid gallery name {name!r}: use letters, digits, '_', '-', '.' (max 64)")
        if name == self.default_gallery and self.params["IndexProcess.index_dir"]:
            return Path(self.params["IndexProcess.index_dir"])
        if self.gallery_root is None:
            raise EngineError("this engine has no gallery folder; pass gallery= or set IndexProcess.index_dir")
        return self.gallery_root / name

    def gallery(self, name: str | Path | SearchIndex | None = None, create: bool = False) -> Any:
        """The open gallery ``name``, or a folder path, or an index object as is.

        A folder path and the default gallery are created empty on first use; another gallery *name* must exist
        unless ``create`` (adding images creates it), so a mistyped name in a request is an error, not a new folder.
        """
        if name is not None and not isinstance(name, (str, Path)):
            return name
        from shitu.serving.gallery.backend import is_remote, remote_gallery_uri

        index_dir = self.params["IndexProcess.index_dir"]
        uri = name if is_remote(name) else remote_gallery_uri(name, self.default_gallery, index_dir)  # type: ignore
        if uri is not None:
            return self._remote_gallery(uri, name, create)
        path = Path(name) if isinstance(name, Path) else self.gallery_path(name)
        key = str(path.resolve())
        with self._lock:
            if key not in self._galleries:
                from shitu.serving.gallery.local import DB_NAME, Gallery

                named = isinstance(name, str) and name != self.default_gallery
                if named and not create and not (path / DB_NAME).is_file():
                    raise EngineError(f"no gallery named {name!r} in scenario {self.scenario!r} "
                                      "(adding images creates it)")

                binary = self.params["RecPostProcess.binarize"]
                self._galleries[key] = Gallery.open_or_create(
                    path, self.embedding_size,
                    index_method=self.params["IndexProcess.index_method"],
                    dist_type="hamming" if binary else self.params["IndexProcess.dist_type"],
                    hamming_radius=self.params["IndexProcess.hamming_radius"],
                    max_label_length=self.params["Limits.max_label_length"],
                )
            return self._galleries[key]

    def _remote_gallery(self, uri: str, name: Any, create: bool) -> Any:
        """The gallery in a Milvus collection (``shitu.serving.gallery.milvus``); as for folders, only the
        default gallery and ``create`` make a missing one."""
        with self._lock:
            if uri not in self._galleries:
                from shitu.serving.gallery.milvus import MilvusGallery

                named = isinstance(name, str) and name != self.default_gallery and uri != name
                if named and not create and not MilvusGallery.exists(uri):
                    raise EngineError(f"no gallery named {name!r} in scenario {self.scenario!r} "
                                      "(adding images creates it)")
                binary = self.params["RecPostProcess.binarize"]
                self._galleries[uri] = MilvusGallery.open_or_create(
                    uri, self.embedding_size,
                    index_method=self.params["IndexProcess.index_method"],
                    dist_type="hamming" if binary else self.params["IndexProcess.dist_type"],
                    hamming_radius=self.params["IndexProcess.hamming_radius"],
                    max_label_length=self.params["Limits.max_label_length"],
                )
            return self._galleries[uri]

    def close(self) -> None:
        with self._lock:
            for g in self._galleries.values():
                g.close()
            self._galleries.clear()

    # -- operations ----------------------------------------------------------------------------------------------
    def detect(self, images: Sequence[np.ndarray], **overrides: Any) -> list[Detections]:
        p = self.request_params(overrides)
        return [self.detector.detect(img, p) for img in images]

    def embed(self, images: Sequence[np.ndarray], **overrides: Any) -> np.ndarray:
        """Whole images -> embeddings ``[n, d]``."""
        return self.extractor.embed(list(images), self.request_params(overrides))

    def extract(self, images: Sequence[np.ndarray], boxes: Sequence[Sequence[Sequence[float]]] | None = None,
                **overrides: Any) -> list[np.ndarray]:
        """One ``[n_boxes, d]`` array per image (the whole image when ``boxes`` is None or an image's list is)."""
        p = self.request_params(overrides)
        out = []
        for i, img in enumerate(images):
            img_boxes = boxes[i] if boxes is not None and i < len(boxes) else None
            if not img_boxes:
                out.append(self.extractor.embed([img], p))
                continue
            arr = check_boxes(img_boxes, img.shape, i)
            out.append(self.extractor.extract(img, arr, p))
        return out

    def search(self, embeddings: np.ndarray, gallery: str | Path | None = None, **overrides: Any
               ) -> list[list[Match]]:
        """Top ``IndexProcess.return_k`` matches per embedding that pass ``IndexProcess.score_thres``."""
        p = self.request_params(overrides)
        g = self.gallery(gallery)
        hits = g.search(np.asarray(embeddings), p["IndexProcess.return_k"], labels=p["IndexProcess.labels"])
        thres = p["IndexProcess.score_thres"]
        return [[m for m in row if accepts(m.score, thres, g.higher_is_better)] for row in hits]

    def recognize(self, images: Sequence[np.ndarray], gallery: str | Path | SearchIndex | None = None,
                  timer: StageTimer = NULL_TIMER, **overrides: Any) -> list[list[Recognition]]:
        """What and where, per image, best first."""
        p = self.request_params(overrides)
        g = self.gallery(gallery)
        return [recognize(img, self.detector, self.extractor, g, p, timer) for img in images]

    def gallery_add(self, images: Sequence[np.ndarray], labels: Sequence[str], gallery: str | Path | None = None,
                    sources: Sequence[str | None] | None = None, metadata: Sequence[dict | None] | None = None,
                    content_hashes: Sequence[str | None] | None = None) -> list[int]:
        """Add whole images under ``labels``; returns their gallery ids."""
        if len(images) != len(labels):
            raise EngineError(f"{len(images)} images but {len(labels)} labels")
        feats = self.extractor.embed(list(images), self.params)
        return self.gallery(gallery, create=True).add(
            feats, list(labels),
            sources=list(sources) if sources is not None else None,
            metadata=list(metadata) if metadata is not None else None,
            content_hashes=list(content_hashes) if content_hashes is not None else None,
        )

    def gallery_remove(self, ids: Sequence[int] | None = None, labels: Sequence[str] | None = None,
                       gallery: str | Path | None = None) -> int:
        return self.gallery(gallery).remove(ids=list(ids) if ids else None, labels=list(labels) if labels else None)

    def gallery_info(self, gallery: str | Path | None = None) -> dict[str, Any]:
        return self.gallery(gallery).info()


def check_boxes(boxes: Any, shape: tuple[int, ...], index: int) -> np.ndarray:
    """``[[x1, y1, x2, y2], ...]`` for image ``index`` as an array, or EngineError naming the image and box."""
    try:
        arr = np.asarray(boxes, np.float64)
    except (TypeError, ValueError):
        raise EngineError(f"image {index}: boxes must be lists of 4 numbers [x1, y1, x2, y2]") from None
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.all(np.isfinite(arr)):
        raise EngineError(f"image {index}: boxes must be lists of 4 finite numbers [x1, y1, x2, y2]")
    h, w = shape[:2]
    bad = (arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1]) | (arr[:, 2] <= 0) | (arr[:, 3] <= 0) | \
        (arr[:, 0] >= w) | (arr[:, 1] >= h)
    if bad.any():
        raise EngineError(f"image {index}: box {arr[bad][0].tolist()} is empty or outside the {w}x{h} image")
    return arr


def builtin_models_dir() -> Path:
    """The embedded default models (general-lite pack): ``det/`` and ``rec/``."""
    import shitu.plugins

    return Path(shitu.plugins.__file__).resolve().parent / "packs" / "general_lite" / "models"


def load_engine(scenario: str | None = None, gallery: str | Path | None = None,
                params: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None) -> Engine:
    """An :class:`Engine` for scenario pack ``scenario`` (default pack when None).

    ``gallery``: a gallery name of the pack, or a folder path, used as the default gallery. Parameters merge as
    ``defaults`` (a hub module's ``params.py``) < the pack's < ``params`` (``Global.det_inference_model_dir`` /
    ``rec_inference_model_dir`` replace the pack's models).
    """
    from shitu.plugins import registry

    pack = registry.get_pack(scenario)
    merged = merge(defaults, pack.params, params)
    det_dir = merged["Global.det_inference_model_dir"]
    rec_dir = merged["Global.rec_inference_model_dir"]
    det_spec = ModelSpec.from_dir(det_dir, "detector") if det_dir else pack.detector_spec()
    rec_spec = ModelSpec.from_dir(rec_dir, "extractor") if rec_dir else pack.extractor_spec()
    default_gallery = pack.default_gallery
    gallery_root = pack.gallery_dir(default_gallery).parent
    if isinstance(gallery, Path) or (isinstance(gallery, str) and not GALLERY_NAME.match(gallery)):
        merged = merged.override({"IndexProcess.index_dir": str(gallery)})
    elif gallery:
        default_gallery = gallery
    return Engine(det_spec, rec_spec, merged, gallery_root=gallery_root, default_gallery=default_gallery,
                  scenario=pack.name)

