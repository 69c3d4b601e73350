"""The recognition engine: one scenario's models, parameters and galleries, loaded once and used many times.

``load_engine()`` is the entry point for the library, the CLI and every hub module::

    engine = load_engine()                           # the default scenario pack (general-lite: offline models)
    engine.gallery_add([img1, img2], ["cat", "cup"])  # BGR images, as cv2.imread gives
    engine.recognize([query])                         # -> [[Recognition(bbox, label, score, ...)]]
    engine.recognize([query], threshold=0.5)          # per-call overrides, PP-ShiTu names

Parameters merge as defaults < scenario pack < ``params`` (e.g. ``config.json`` ``init_args``) < per-call overrides.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shitu.echo import clip
from shitu.model_spec import ModelSpec
from shitu.names import GALLERY_NAME  # gallery names a request may use (never a path)
from shitu.params import Params, flatten, merge
from shitu.serving.engine.batched import recognize_many
from shitu.serving.engine.bulk import BulkEmbedder
from shitu.serving.engine.detection import MainbodyDetector
from shitu.serving.engine.explain import Explanation
from shitu.serving.engine.extraction import FeatureExtractor
from shitu.serving.engine.gallery_rules import GalleryRules
from shitu.serving.engine.open_galleries import OpenGalleries
from shitu.serving.engine.pipeline import SearchIndex, accepted_matches, recognize, search_options
from shitu.serving.engine.predictor import RuntimeOptions
from shitu.serving.engine.results import Detections, Match, Recognition
from shitu.serving.engine.timing import NULL_TIMER, StageTimer


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

    def __init__(
        self,
        detector_spec: ModelSpec,
        extractor_spec: ModelSpec,
        params: Params | None = None,
        gallery_root: Path | None = None,
        default_gallery: str = "default",
        scenario: str = "custom",
        gallery_specs: dict[str, Any] | None = None,
        pack_extractor: ModelSpec | None = None,
    ):
        self.params = params or merge()
        #: The scenario pack's own recogniser, which made the vectors a pack ships (``vectors_file``); differs from
        #: the extractor when ``Global.rec_inference_model_dir`` replaced it.
        self.pack_extractor = pack_extractor or extractor_spec
        self._identities: dict[tuple[str, str | None], dict[str, str]] = {}  # by (model folder, projection)
        self.scenario = scenario
        detector_spec = detector_spec.with_transform_ops(self.params["DetPreProcess.transform_ops"])
        extractor_spec = extractor_spec.with_transform_ops(self.params["RecPreProcess.transform_ops"])
        #: The scenario pack's declared galleries (name -> GallerySpec): built on first use, with their own
        #: index_method / dist_type (shitu.serving.gallery.pack_gallery).
        self.gallery_specs = dict(gallery_specs or {})
        self.detector = MainbodyDetector(detector_spec, runtime_options(self.params, "det"))
        self.extractor = FeatureExtractor(extractor_spec, runtime_options(self.params, "rec"))
        self.extractor.centering(self.params["RecPostProcess.centering"])  # a missing or bad file fails the load
        self.gallery_root = Path(gallery_root) if gallery_root else None
        self.default_gallery = default_gallery
        self._galleries = OpenGalleries(self.params["Limits.max_open_galleries"])
        self._lock = threading.Lock()
        self._bulk = BulkEmbedder(self.extractor, self.params)  # gallery builds; copies made on first use
        #: Each gallery's framing rule and ``score_thres: auto`` (issue #28).
        self.rules = GalleryRules(self.params, self.extractor.spec.transform_ops)

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
            raise EngineError(f"invalid gallery name {clip(name)}: use letters, digits, '_', '-', '.' (max 64)")
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
        spec = None
        with self._lock:
            if key not in self._galleries:
                from shitu.serving.gallery.local import DB_NAME

                spec = self._declared_gallery(name, path)
                named = isinstance(name, str) and name != self.default_gallery
                if named and not create and not (path / DB_NAME).is_file() and spec is None:
                    raise EngineError(
                        f"no gallery named {name!r} in scenario {self.scenario!r} (adding images creates it)"
                    )
            return self._galleries.get(key, lambda: self._open_gallery(path, spec))

    def _open_gallery(self, path: Path, spec: Any = None) -> Any:
        """Open or create the gallery folder ``path``; ``spec``: the pack's declaration, whose index wins."""
        from shitu.serving.gallery.local import Gallery

        binary = self.params["RecPostProcess.binarize"]
        gallery = Gallery.open_or_create(
            path,
            self.embedding_size,
            index_method=spec.index_method if spec else self.params["IndexProcess.index_method"],
            dist_type="hamming" if binary else (spec.dist_type if spec else self.params["IndexProcess.dist_type"]),
            hamming_radius=self.params["IndexProcess.hamming_radius"],
            max_label_length=self.params["Limits.max_label_length"],
        )
        gallery.record_cache_capacity = self.params["Limits.gallery_record_cache"]
        from shitu.serving.gallery.backup import describe_model, gallery_model_identity, remember_model, same_model

        recorded = gallery_model_identity(path)
        if recorded is not None and not same_model(recorded, self.model_identity):
            gallery.close()
            raise EngineError(
                f"gallery {path.name!r} holds vectors of model {describe_model(recorded)}, not of this engine's "
                f"recogniser {describe_model(self.model_identity)}: scores between two embedding spaces mean nothing. "
                "Use it with the recogniser that built it, or build a gallery with this one (shitu gallery build)"
            )
        remember_model(path, self.extractor.spec)  # what made the vectors, checked here and by export/import
        return gallery

    def maker_of(self, spec: Any) -> dict[str, str]:
        """The model identity of what makes the vectors of the pack's declared gallery ``spec`` when it is built:
        the pack's own recogniser for the vectors it ships (``vectors_file``), else this engine's, which embeds the
        images of its list."""
        return self._identity_of(self.pack_extractor) if spec.vectors_file is not None else self.model_identity

    @property
    def model_identity(self) -> dict[str, str]:
        """The recogniser's model identity (weights and projection sha256, :mod:`shitu.serving.gallery.backup`): a
        gallery that records another one is refused."""
        return self._identity_of(self.extractor.spec)

    def _identity_of(self, spec: ModelSpec) -> dict[str, str]:
        """:func:`~shitu.serving.gallery.backup.model_identity` of ``spec``, hashed once per model folder (the pack's
        recogniser is usually the engine's own)."""
        key = (str(Path(spec.model_dir).resolve()), spec.projection)
        if key not in self._identities:
            from shitu.serving.gallery.backup import model_identity

            self._identities[key] = model_identity(spec)
        return self._identities[key]

    def _declared_gallery(self, name: str | Path | None, path: Path) -> Any:
        """The pack's declaration of gallery ``name`` when ``path`` is its folder, built now if it declares content
        and has no folder yet (None for folders and undeclared names)."""
        spec = self.gallery_specs.get(name or self.default_gallery) if not isinstance(name, Path) else None
        if spec is None or Path(spec.dir()).resolve() != path.resolve():
            return None
        from shitu.serving.gallery.local import GalleryError
        from shitu.serving.gallery.pack_gallery import ensure_built

        try:
            if not ensure_built(
                spec,
                self.rules.embedder(None, self.embed),
                self.embedding_size,
                max_label_length=self.params["Limits.max_label_length"],
                identity=self.maker_of(spec),
            ):
                from shitu.serving.gallery.backup import remember_model

                remember_model(path, self.pack_extractor)  # built before galleries recorded it: by the pack's own
        except GalleryError as exc:  # the details name files on this machine: point to the command that shows them
            first = str(exc).splitlines()[0]
            raise EngineError(
                f"gallery {spec.name!r} of scenario {self.scenario!r} cannot be built from the pack's "
                f"{spec.source().name} ({first.split(';')[0]}); `shitu gallery build --scenario "
                f"{self.scenario} --gallery {spec.name}` on the server shows why"
            ) from None
        return spec

    def _remote_gallery(self, uri: str, name: Any, create: bool) -> Any:
        """The gallery in a Milvus collection (``shitu.serving.gallery.milvus``); as for folders, only the
        default gallery and ``create`` make a missing one."""
        from shitu.serving.gallery.milvus import MilvusGallery

        with self._lock:
            if uri not in self._galleries:
                named = isinstance(name, str) and name != self.default_gallery and uri != name
                if named and not create and not MilvusGallery.exists(uri):
                    raise EngineError(
                        f"no gallery named {name!r} in scenario {self.scenario!r} (adding images creates it)"
                    )
            binary = self.params["RecPostProcess.binarize"]
            return self._galleries.get(
                uri,
                lambda: MilvusGallery.open_or_create(
                    uri,
                    self.embedding_size,
                    index_method=self.params["IndexProcess.index_method"],
                    dist_type="hamming" if binary else self.params["IndexProcess.dist_type"],
                    hamming_radius=self.params["IndexProcess.hamming_radius"],
                    max_label_length=self.params["Limits.max_label_length"],
                ),
            )

    def close(self) -> None:
        with self._lock:
            self._galleries.close()
        self._bulk.close()

    # -- operations ----------------------------------------------------------------------------------------------
    def detect(self, images: Sequence[np.ndarray], **overrides: Any) -> list[Detections]:
        p = self.request_params(overrides)
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
        self, images: Sequence[np.ndarray], boxes: Sequence[Sequence[Sequence[float]]] | None = None, **overrides: Any
    ) -> list[np.ndarray]:
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

    def search(self, embeddings: np.ndarray, gallery: str | Path | None = None, **overrides: Any) -> list[list[Match]]:
        """Top ``IndexProcess.return_k`` matches per embedding that pass ``IndexProcess.score_thres``."""
        g = self.gallery(gallery)
        p = self.rules.apply(self.request_params(overrides), g, overrides)
        hits = g.search(np.asarray(embeddings), p["IndexProcess.return_k"], **search_options(g, p))
        return accepted_matches(hits, p["IndexProcess.score_thres"], g.higher_is_better)

    def recognize(
        self,
        images: Sequence[np.ndarray],
        gallery: str | Path | SearchIndex | None = None,
        timer: StageTimer = NULL_TIMER,
        **overrides: Any,
    ) -> list[list[Recognition]]:
        """What and where, per image, best first (the crops of all images go through the recogniser together)."""
        g = self.gallery(gallery)
        p = self.rules.apply(self.request_params(overrides), g, overrides)
        return recognize_many(images, self.detector, self.extractor, g, p, timer)

    def recognize_explained(
        self,
        images: Sequence[np.ndarray],
        gallery: str | Path | SearchIndex | None = None,
        timer: StageTimer = NULL_TIMER,
        **overrides: Any,
    ) -> list[tuple[list[Recognition], Explanation]]:
        """:meth:`recognize` plus, per image, an :class:`~.explain.Explanation` of every stage (``explain``)."""
        g = self.gallery(gallery)
        p = self.rules.apply(self.request_params(overrides), g, overrides)
        out = []
        for img in images:
            explanation = Explanation.start(p)
            out.append((recognize(img, self.detector, self.extractor, g, p, timer, explanation), explanation))
        return out

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
        from shitu.serving.gallery import thumbnails

        thumbnails.store(g, ids, images)  # for browsing the gallery (web page); never fails the add
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
            g,
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
    except (TypeError, ValueError):
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
