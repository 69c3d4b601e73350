"""The recognition engine: one scenario's models, parameters and galleries, loaded once and used many times.

``load_engine()`` is the entry point for the library, the CLI and every hub module::

    engine = load_engine()                           # the default scenario pack (general-lite: offline models)
    engine.gallery_add([img1, img2], ["cat", "cup"])  # BGR images, as cv2.imread gives
    engine.recognize([query])                         # -> [[Recognition(bbox, label, score, ...)]]
    engine.recognize([query], threshold=0.5)          # per-call overrides, PP-ShiTu names

Parameters merge as defaults < scenario pack < ``params`` (e.g. ``config.json`` ``init_args``) < per-call overrides.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from shitu.errors import InvalidArgument
from shitu.model_spec import ModelSpec
from shitu.names import GALLERY_NAME  # gallery names a request may use (never a path)
from shitu.params import Params, flatten, merge
from shitu.serving.engine.bulk import BulkEmbedder
from shitu.serving.engine.detection import MainbodyDetector
from shitu.serving.engine.extraction import FeatureExtractor
from shitu.serving.engine.gallery_rules import GalleryRules
from shitu.serving.engine.pipeline import SearchIndex, accepted_matches, recognize, search_options
from shitu.serving.engine.predictor import RuntimeOptions
from shitu.serving.engine.timing import NULL_TIMER, StageTimer
from shitu.serving.galleries.manager import GalleryManager
from shitu.serving.results import Detections, Match, Recognition
from shitu.serving.results.explanation import Explanation

if TYPE_CHECKING:
    from shitu.plugins.gallery_spec import GallerySpec
    from shitu.serving.gallery.backend import GalleryBackend
    from shitu.serving.gallery.local import Gallery


log = logging.getLogger("shitu.serving.engine")


class EngineError(InvalidArgument):
    """A request to the engine is invalid (bad boxes, images and labels that do not pair up...)."""


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

    def __init__(
        self,
        detector_spec: ModelSpec,
        extractor_spec: ModelSpec,
        params: Params | None = None,
        gallery_root: Path | None = None,
        default_gallery: str = "default",
        scenario: str = "custom",
        gallery_specs: dict[str, GallerySpec] | None = None,
        pack_extractor: ModelSpec | None = None,
    ):
        self.params = params or merge()
        self.scenario = scenario
        detector_spec = detector_spec.with_transform_ops(self.params["DetPreProcess.transform_ops"])
        extractor_spec = extractor_spec.with_transform_ops(self.params["RecPreProcess.transform_ops"])
        self.detector = MainbodyDetector(detector_spec, runtime_options(self.params, "det"))
        self.extractor = FeatureExtractor(extractor_spec, runtime_options(self.params, "rec"))
        self.extractor.centering(self.params["RecPostProcess.centering"])  # a missing or bad file fails the load
        log.info(  # the runtime and the device each model runs on (Global.use_gpu: auto may have fallen back)
            "%s: detector %s; recogniser %s",
            scenario,
            getattr(self.detector.predictor, "description", "(a stand-in predictor)"),
            getattr(self.extractor.predictor, "description", "(a stand-in predictor)"),
        )
        #: Each gallery's framing rule and ``score_thres: auto`` (issue #28).
        self.rules = GalleryRules(self.params, self.extractor.spec.transform_ops)
        #: Gallery names, open/create, model identity, pack galleries (built through the framing rule) and thumbnails.
        self.galleries = GalleryManager(
            self.params,
            self.embedding_size,
            self.extractor.spec,
            self.rules.embedder(None, self.embed),
            gallery_root=gallery_root,
            default_gallery=default_gallery,
            scenario=scenario,
            gallery_specs=gallery_specs,
            pack_extractor=pack_extractor,
        )
        self._bulk = BulkEmbedder(self.extractor, self.params)  # gallery builds; copies made on first use

    # -- parameters ----------------------------------------------------------------------------------------------
    def request_params(self, overrides: dict[str, Any] | None = None, params: Params | None = None) -> Params:
        """Engine parameters with per-request ``overrides`` (validated; load-time parameters refused), or ``params``
        as they are: a server's request parsed once at its edge (:mod:`shitu.serving.hub.requests`)."""
        if params is not None:
            if overrides:
                raise EngineError("give parameter overrides or params=, not both")
            return params
        return self.params.override(overrides, per_request=True) if overrides else self.params

    @property
    def embedding_size(self) -> int:
        return self.extractor.embedding_size

    # -- galleries (the manager's, kept here for callers) -------------------------------------------------------
    @property
    def default_gallery(self) -> str:
        return self.galleries.default_gallery

    @property
    def gallery_root(self) -> Path | None:
        return self.galleries.gallery_root

    @property
    def gallery_specs(self) -> dict[str, GallerySpec]:
        return self.galleries.specs

    @property
    def pack_extractor(self) -> ModelSpec:
        return self.galleries.pack_extractor

    @property
    def model_identity(self) -> dict[str, str]:
        return self.galleries.model_identity

    def gallery_path(self, name: str | None = None) -> Path:
        return self.galleries.path(name)

    def gallery(self, name: str | Path | GalleryBackend | None = None, create: bool = False) -> GalleryBackend:
        return self.galleries.get(name, create)

    def _index(self, gallery: str | Path | SearchIndex | None) -> SearchIndex:
        """The gallery to search: an index object as it is, else the manager's gallery of that name or folder."""
        if gallery is None or isinstance(gallery, (str, Path)):
            return cast("SearchIndex", self.gallery(gallery))  # a backend's read-only higher_is_better serves
        return gallery

    def maker_of(self, spec: GallerySpec) -> dict[str, str]:
        return self.galleries.maker_of(spec)

    def close(self) -> None:
        self.galleries.close()
        self._bulk.close()

    # -- operations ----------------------------------------------------------------------------------------------
    def detect(self, images: Sequence[np.ndarray], params: Params | None = None, **overrides: Any) -> list[Detections]:
        p = self.request_params(overrides, params)
        return [self.detector.detect(img, p) for img in images]

    def embed(self, images: Sequence[np.ndarray], **overrides: Any) -> np.ndarray:
        """Whole images -> embeddings ``[n, d]``."""
        return self.extractor.embed(list(images), self.request_params(overrides))

    def embed_bulk(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Whole images -> embeddings ``[n, d]`` for gallery builds: on onnxruntime each call's images split over
        single-thread copies of the recogniser running at once, elsewhere batched through the engine's own
        (:mod:`shitu.serving.engine.bulk`); equal to :meth:`embed`."""
        return self._bulk(images)

    def extract(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence[Sequence[Sequence[float]]] | None = None,
        params: Params | None = None,
        **overrides: Any,
    ) -> list[np.ndarray]:
        """One ``[n_boxes, d]`` array per image (the whole image when ``boxes`` is None or an image's list is)."""
        p = self.request_params(overrides, params)
        out = []
        for i, img in enumerate(images):
            img_boxes = boxes[i] if boxes is not None and i < len(boxes) else None
            if not img_boxes:
                out.append(self.extractor.embed([img], p))
                continue
            arr = check_boxes(img_boxes, img.shape, i)
            out.append(self.extractor.extract(img, arr, p))
        return out

    def search(
        self,
        embeddings: np.ndarray,
        gallery: str | Path | SearchIndex | None = None,
        params: Params | None = None,
        **overrides: Any,
    ) -> list[list[Match]]:
        """Top ``IndexProcess.return_k`` matches per embedding that pass ``IndexProcess.score_thres``."""
        g = self._index(gallery)
        p = self.rules.apply(self.request_params(overrides, params), g, overrides if params is None else None)
        hits = g.search(np.asarray(embeddings), p["IndexProcess.return_k"], **search_options(g, p))
        return accepted_matches(hits, p["IndexProcess.score_thres"], g.higher_is_better)

    def recognize(
        self,
        images: Sequence[np.ndarray],
        gallery: str | Path | SearchIndex | None = None,
        timer: StageTimer = NULL_TIMER,
        params: Params | None = None,
        explanations: Sequence[Explanation] | None = None,
        **overrides: Any,
    ) -> list[list[Recognition]]:
        """What and where, per image, best first (the crops of all images go through the recogniser together).

        ``params``: the request's parameters, already merged (else ``overrides`` by PP-ShiTu name); ``explanations``:
        one :class:`~.explain.Explanation` per image to fill with every stage's view. The gallery's own framing and
        ``score_thres: auto`` apply (:mod:`.gallery_rules`)."""
        g = self._index(gallery)
        p = self.rules.apply(self.request_params(overrides, params), g, overrides if params is None else None)
        return recognize(images, self.detector, self.extractor, g, p, timer, explanations)

    def recognize_explained(
        self,
        images: Sequence[np.ndarray],
        gallery: str | Path | SearchIndex | None = None,
        timer: StageTimer = NULL_TIMER,
        params: Params | None = None,
        **overrides: Any,
    ) -> list[tuple[list[Recognition], Explanation]]:
        """:meth:`recognize` plus, per image, an :class:`~.explain.Explanation` of every stage (``explain``)."""
        p = self.request_params(overrides, params)
        explanations = [Explanation.start(p) for _ in images]
        found = self.recognize(images, gallery, timer, params=p, explanations=explanations)
        return list(zip(found, explanations))

    def gallery_add(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[str],
        gallery: str | Path | None = None,
        sources: Sequence[str | None] | None = None,
        metadata: Sequence[dict | None] | None = None,
        content_hashes: Sequence[str | None] | None = None,
    ) -> list[int]:
        """Add whole images under ``labels``; returns their gallery ids."""
        if len(images) != len(labels):
            raise EngineError(f"{len(images)} images but {len(labels)} labels")
        g = self.gallery(gallery, create=True)
        feats = self.rules.embedder(g, lambda ims: self.extractor.embed(list(ims), self.params))(images)
        ids = g.add(
            feats,
            list(labels),
            sources=list(sources) if sources is not None else None,
            metadata=list(metadata) if metadata is not None else None,
            content_hashes=list(content_hashes) if content_hashes is not None else None,
        )
        self.galleries.store_thumbnails(g, ids, images)
        self.rules.after_add(g)
        return ids

    def gallery_build(
        self,
        source: str | Path,
        gallery: str | Path | None = None,
        image_root: str | Path | None = None,
        skip_bad: bool = False,
        progress: bool = False,
    ) -> Any:
        """Add the images of a PaddleClas list file (``path<TAB>label``) or a ``label/image`` folder tree.

        In-process twin of ``shitu gallery build``: images already in the gallery (same content) are skipped; a bad
        line or image fails the whole build unless ``skip_bad``. Returns the build report (``added``, ``ids``,
        ``bad``...).
        """
        from shitu.serving.gallery.build import build_from_source, embed_images_fn

        g = self.gallery(gallery, create=True)
        report = build_from_source(
            cast("Gallery", g),  # any backend builds: it adds and looks up
            source,
            embed_images_fn(self, g),
            image_root=image_root,
            delimiter=self.params["IndexProcess.delimiter"],
            batch_size=self.params["Global.batch_size"],
            skip_bad=skip_bad,
            progress=progress,
        )
        self.rules.recalibrate(g)
        return report

    def gallery_embedder(self, gallery: Any = None) -> Any:
        """Whole images -> vectors for gallery ``gallery`` (an open gallery; ``None``: one about to be made),
        through its framing rule (:mod:`.gallery_rules`), with the bulk embedder of gallery builds."""
        return self.rules.embedder(gallery, self.embed_bulk)

    def gallery_remove(
        self, ids: Sequence[int] | None = None, labels: Sequence[str] | None = None, gallery: str | Path | None = None
    ) -> int:
        return self.gallery(gallery).remove(ids=list(ids) if ids else None, labels=list(labels) if labels else None)

    def gallery_info(self, gallery: str | Path | None = None) -> dict[str, Any]:
        g = self.gallery(gallery)
        info = g.info()
        framing = self.rules.framing(g)
        # what requests against it get (also for a gallery that records nothing: the pre-#28 rule)
        info["recognition"] = {
            **info.get("recognition", {}),
            "framing": framing.as_dict(),
            "score_thres": self.rules.score_thres(g),
        }
        return info


def check_boxes(boxes: Any, shape: tuple[int, ...], index: int) -> np.ndarray:
    """``[[x1, y1, x2, y2], ...]`` for image ``index`` as an array, or EngineError naming the image and box."""
    try:
        arr = np.asarray(boxes, np.float64)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float
        raise EngineError(f"image {index}: boxes must be lists of 4 numbers [x1, y1, x2, y2]") from None
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.all(np.isfinite(arr)):
        raise EngineError(f"image {index}: boxes must be lists of 4 finite numbers [x1, y1, x2, y2]")
    h, w = shape[:2]
    bad = (
        (arr[:, 2] <= arr[:, 0])
        | (arr[:, 3] <= arr[:, 1])
        | (arr[:, 2] <= 0)
        | (arr[:, 3] <= 0)
        | (arr[:, 0] >= w)
        | (arr[:, 1] >= h)
    )
    if bad.any():
        raise EngineError(f"image {index}: box {arr[bad][0].tolist()} is empty or outside the {w}x{h} image")
    return arr


def builtin_models_dir() -> Path:
    """The embedded default models (general-lite pack): ``det/`` and ``rec/``."""
    import shitu.plugins

    return Path(shitu.plugins.__file__).resolve().parent / "packs" / "general_lite" / "models"


#: Parameters of a pack that describe its own models (pre-processing, pooling, the centring file in its recogniser
#: folder): they do not apply to a model folder given in ``Global.det_inference_model_dir`` /
#: ``rec_inference_model_dir``, which brings its own (an official PaddleClas folder's pre-processing, say).
PACK_MODEL_PARAMS: dict[str, tuple[str, ...]] = {
    "Global.det_inference_model_dir": ("DetPreProcess.transform_ops",),
    "Global.rec_inference_model_dir": (
        "RecPreProcess.transform_ops",
        "RecPostProcess.pooling",
        "RecPostProcess.gem_power",
        "RecPostProcess.centering",
    ),
}


def pack_params_for(pack_params: dict[str, Any], given: Params) -> dict[str, Any]:
    """``pack_params`` without the :data:`PACK_MODEL_PARAMS` of each pack model that ``given`` (the caller's layers)
    replaces with a folder of its own."""
    dropped = {name for key, names in PACK_MODEL_PARAMS.items() if given[key] for name in names}
    if not dropped:
        return pack_params
    return {name: value for name, value in flatten(pack_params).items() if name not in dropped}


def load_engine(
    scenario: str | None = None,
    gallery: str | Path | None = None,
    params: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    *,
    gallery_dir: str | Path | None = None,
) -> Engine:
    """An :class:`Engine` for scenario pack ``scenario`` (default pack when None).

    ``gallery``: a gallery name of the pack (``"shop"``), or a folder (a ``Path``, or a string that is not a valid
    name such as ``"./shop"``), used as the default gallery. ``gallery_dir``: always a folder (``"shop"`` is then
    ``./shop``); give one or the other. Parameters merge as
    ``defaults`` (a hub module's ``params.py``) < the pack's < ``params`` (``Global.det_inference_model_dir`` /
    ``rec_inference_model_dir`` replace the pack's models, and the pack's parameters that describe the model
    replaced, :data:`PACK_MODEL_PARAMS`, are then not applied).
    """
    from shitu.plugins import registry

    pack = registry.get_pack(scenario)
    merged = merge(defaults, pack_params_for(pack.params, merge(defaults, params)), params)
    det_dir = merged["Global.det_inference_model_dir"]
    rec_dir = merged["Global.rec_inference_model_dir"]
    det_spec = ModelSpec.from_dir(det_dir, "detector") if det_dir else pack.detector_spec()
    rec_spec = ModelSpec.from_dir(rec_dir, "extractor") if rec_dir else pack.extractor_spec()
    default_gallery = pack.default_gallery
    gallery_root = pack.gallery_dir(default_gallery).parent
    if gallery_dir is not None:
        if gallery is not None:
            raise EngineError("give gallery= (a name) or gallery_dir= (a folder), not both")
        gallery = Path(gallery_dir).absolute()
    if isinstance(gallery, Path) or (isinstance(gallery, str) and not GALLERY_NAME.match(gallery)):
        merged = merged.override({"IndexProcess.index_dir": str(gallery)})
    elif gallery:
        default_gallery = gallery
    return Engine(
        det_spec,
        rec_spec,
        merged,
        gallery_root=gallery_root,
        default_gallery=default_gallery,
        scenario=pack.name,
        gallery_specs=pack.galleries,
        pack_extractor=pack.extractor_spec() if rec_dir else None,
    )
