"""Request handling shared by the four hub modules: parse -> decode -> run the engine -> plain JSON.

Each hub module is a thin PaddleHub wrapper around one :class:`Service` subclass (the TorchServe handler idea:
preprocess / inference / postprocess in one place per capability). A request (the JSON object PaddleHub passes to
the module's ``@serving`` method) is parsed once, here, into its operation's typed model and validated parameter
overrides (:mod:`shitu.serving.hub.request_models`); the operations pass typed values inward (``params=``, an
opened gallery), so nothing is validated or resolved twice.

A client's fault raises its :class:`~shitu.errors.ShituError`, answered as :func:`envelope_of` says (PaddleHub's
``{"status": "101", "msg": ...}``); any other exception is a server error, answered with its request id only. When
some images of a batch fail and others succeed, the answer is ``status "000"`` with ``{"index": i, "error": ...}``
in place of the failed images' results.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic

import numpy as np

from shitu.echo import clip
from shitu.errors import ShituError
from shitu.params import Params, flatten, merge
from shitu.serving.engine.engine import Engine, EngineError, check_boxes, load_engine
from shitu.serving.engine.images import ImageError, ImageLimits, b64decode, check_bytes, decode, header_size
from shitu.serving.engine.timing import current_timer
from shitu.serving.galleries.manager import GalleryRequestError
from shitu.serving.gallery.list_file import label_problem
from shitu.serving.hub import request_models as rm
from shitu.serving.hub.connections import bearer_token
from shitu.serving.hub.envelopes import ServerFault, envelope_of
from shitu.serving.hub.gallery_view import GalleryViewOps
from shitu.serving.hub.request_models import RequestError, is_text
from shitu.serving.results.explanation import Explanation

TOKEN_ENV = "SHITU_ADMIN_TOKEN"
__all__ = ["RequestError", "ServerFault", "Call", "Service", "envelope_of", "to_jsonable"]


def to_jsonable(value: Any) -> Any:
    """numpy scalars/arrays and tuples -> plain JSON types, recursively."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float):
        return round(value, 6)
    return value


class EngineCache:
    """Engines by scenario, loaded lazily *in the process that uses them*.

    ``hub serving --use_multiprocess`` creates the module in the master and forks gunicorn workers: a paddle
    predictor must not cross a fork, so each worker (pid) loads its own engine on its first request.
    """

    def __init__(self, loader: Callable[[str | None], Engine], stamp: Callable[[str | None], Any] | None = None):
        self._loader = loader
        #: ``stamp(scenario)``: a cheap fingerprint of the store's pointers for that pack; when it changes
        #: (``shitu plugins use`` / ``install`` / ``rollback``) the next request loads the version now current.
        self._stamp = stamp
        self._engines: dict[tuple[int, str | None], tuple[Engine, Any]] = {}
        self._lock = threading.Lock()

    def get(self, scenario: str | None) -> Engine:
        key = (os.getpid(), scenario)
        stamp = self._stamp(scenario) if self._stamp else None
        hit = self._engines.get(key)
        if hit is None or hit[1] != stamp:
            with self._lock:
                hit = self._engines.get(key)
                if hit is None or hit[1] != stamp:
                    hit = (self._loader(scenario), stamp)  # requests in flight keep the engine they hold
                    self._engines[key] = hit
        return hit[0]


@dataclass
class Call(Generic[rm.R]):
    """One parsed request on its way in: the operation's typed ``request``, its validated parameter ``overrides``
    and, resolved once when first asked for, the scenario's engine, the merged :class:`~shitu.params.Params` and the
    gallery."""

    service: Service
    request: rm.R
    overrides: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def engine(self) -> Engine:
        return self.service.engine(self.request.scenario)

    @cached_property
    def params(self) -> Params:
        """The engine's parameters with this request's overrides (load-time ones refused)."""
        return self.engine.params.apply(self.overrides, per_request=True)

    @cached_property
    def gallery(self) -> Any:
        """The request's gallery, opened (an unknown name fails the whole request here, once)."""
        return self.engine.gallery(self.request.gallery)


class Service:
    """Base of the four services. Subclasses implement ``op_<operation>(call)`` methods and name each operation's
    request model in :attr:`requests`."""

    #: Operation used when the request names none.
    default_operation = "predict"
    #: Operations that change a gallery (protected by the admin token when one is configured).
    write_operations: frozenset[str] = frozenset()
    #: The request model of each operation (:mod:`shitu.serving.hub.request_models`); default: the common fields.
    requests: dict[str, type[rm.Request]] = {}

    def __init__(
        self,
        module_defaults: dict[str, Any] | None = None,
        scenario: str | None = None,
        gallery: str | None = None,
        token: str | None = None,
        protect_reads: bool = False,
        **init_params: Any,
    ):
        self.default_scenario = scenario
        self.default_gallery = gallery
        self._token = token or os.environ.get(TOKEN_ENV) or None
        self._protect_reads = bool(protect_reads)
        # config.json init_args: a "params" mapping and/or parameters given directly.
        extra = dict(init_params.pop("params", None) or {})
        extra.update(init_params)
        self._module_defaults = flatten(module_defaults)
        self._init_params = flatten(extra)  # a bad config.json fails here, at start-up
        self.engines = EngineCache(self._load, stamp=self._pack_stamp)
        self._check_scenario(self.default_scenario)  # an unknown or uninstalled pack fails at start
        from shitu.serving.hub import app as hub_app
        from shitu.serving.hub import connections

        merged = merge(self._module_defaults, self._init_params)
        hub_app.set_body_limit(merged["Limits.max_request_bytes"])
        hub_app.set_log_limits(merged["Limits.max_log_bytes"], merged["Limits.log_backups"])
        connections.configure(merged)

    # -- loading ---------------------------------------------------------------------------------------------
    def _load(self, scenario: str | None) -> Engine:
        """module defaults < scenario pack < init_args, then models and galleries of that pack."""
        from shitu.plugins.errors import PackError

        scenario = scenario or self.default_scenario
        try:
            return load_engine(scenario, self.default_gallery, self._init_params, defaults=self._module_defaults)
        except PackError as exc:  # unknown pack, or one whose models are not installed
            raise RequestError(f"scenario {clip(scenario)}: {exc}") from None

    def _pack_stamp(self, scenario: str | None) -> Any:
        from shitu.plugins import registry, store

        return store.pointer_stamp(scenario or self.default_scenario or registry.default_pack_name())

    @staticmethod
    def _check_scenario(scenario: str | None) -> None:
        from shitu.plugins import registry
        from shitu.plugins.errors import PackError

        try:
            pack = registry.get_pack(scenario)
        except PackError as exc:
            raise ValueError(f"scenario {scenario!r}: {exc}") from None
        if not pack.is_available():
            raise ValueError(f"scenario {pack.name!r}: {pack.fetch_instructions()}")

    def engine(self, scenario: str | None = None) -> Engine:
        """The engine of ``scenario`` (default: the module's), loaded in this process on first use."""
        return self.engines.get(scenario or self.default_scenario)

    # -- request handling --------------------------------------------------------------------------------------
    def handle(self, request: dict[str, Any]) -> Any:
        """One request (the JSON object) -> plain-JSON results.

        A client's fault raises its :class:`~shitu.errors.ShituError` (:func:`envelope_of` says how it is
        answered); its message holds no server path and quotes at most a little of the input. Anything else is
        logged here with its traceback and raised as :class:`ServerFault`, which names only the request id.
        """
        from shitu.echo import client_message

        try:
            return self._handle(request)
        except ShituError as exc:
            if envelope_of(exc)[1] == 500:  # a broken invariant: answered like any unexpected error
                raise ServerFault.of(exc) from None
            exc.args = (client_message(str(exc)),)  # no server paths, a bounded length; the class is kept
            raise
        except RecursionError:
            raise RequestError("the request is nested too deeply") from None
        except Exception as exc:
            raise ServerFault.of(exc) from None

    def _handle(self, raw: dict[str, Any]) -> Any:
        if not isinstance(raw, dict):
            raise RequestError("the request body must be a JSON object")
        operation = raw.get("operation", self.default_operation)
        if not isinstance(operation, str) or not hasattr(self, f"op_{operation}"):
            ops = sorted(n[3:] for n in dir(self) if n.startswith("op_"))
            raise RequestError(f"unknown operation {clip(operation)}; this module supports {ops}")
        if operation in self.write_operations or self._protect_reads:
            self._check_token(raw)
        request, overrides = rm.parse(self.requests.get(operation, rm.Request), raw)
        result = getattr(self, f"op_{operation}")(Call(self, request, overrides))
        return to_jsonable(result)

    def authorize(self, request: dict[str, Any], write: bool) -> None:
        """RequestError unless the admin token allows a write (or, with ``protect_reads``, any) operation."""
        if write or self._protect_reads:
            self._check_token(request)

    def _check_token(self, request: dict[str, Any]) -> None:
        if not self._token:
            return
        given = request.get("token") or bearer_token()
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self._token.encode()):
            raise RequestError(
                "this operation needs a valid admin token (field 'token' or header "
                "'Authorization: Bearer ...'); the token given is missing or wrong"
            )

    # -- helpers for subclasses --------------------------------------------------------------------------------
    def decode_images(self, items: list[Any], engine: Engine, strict: bool = False) -> list[np.ndarray | ImageError]:
        """Decode ``images``; a failed image becomes its :class:`ImageError` (or raises when ``strict``)."""
        limits = ImageLimits.from_params(engine.params)
        if len(items) > engine.params["Limits.max_images"]:
            raise RequestError(f"{len(items)} images in one request; the limit is {engine.params['Limits.max_images']}")
        raw: list[bytes | ImageError] = []
        total = 0  # pixels of the whole request, from the headers, before anything is decoded
        for i, item in enumerate(items):
            try:
                data = check_bytes(b64decode(item, limits), limits)
                width, height = header_size(data, limits)
                total += width * height
                raw.append(data)
            except ImageError as exc:
                raw.append(ImageError(exc.reason, i))
        if total > engine.params["Limits.max_request_pixels"]:
            raise RequestError(
                f"the images of this request have {total} pixels together, more than the limit of "
                f"{engine.params['Limits.max_request_pixels']}; send fewer or smaller images"
            )
        out: list[np.ndarray | ImageError] = []
        for i, encoded in enumerate(raw):
            try:
                if isinstance(encoded, ImageError):
                    raise encoded
                with current_timer().stage("decode"):
                    out.append(decode(encoded, limits))
            except ImageError as exc:
                err = ImageError(exc.reason, i)
                if strict:
                    raise RequestError(str(err)) from None
                out.append(err)
        return out

    @staticmethod
    def per_image(
        images: list[np.ndarray | ImageError], run: Callable[[int, np.ndarray], dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Run ``run`` on each decoded image; failed images keep their error. All failed -> RequestError."""
        results: list[dict[str, Any]] = []
        for i, img in enumerate(images):
            if isinstance(img, ImageError):
                results.append({"index": i, "error": img.reason})
                continue
            try:
                results.append({"index": i, "width": int(img.shape[1]), "height": int(img.shape[0]), **run(i, img)})
            except (RequestError, EngineError) as exc:  # a problem of this image's own fields (e.g. its boxes)
                results.append({"index": i, "error": str(exc).removeprefix(f"image {i}: ")})
        if results and all("error" in r for r in results):
            first = next(r for r in results)
            raise RequestError(
                f"image {first['index']}: {first['error']}"
                + (f" (and {len(results) - 1} more failed)" if len(results) > 1 else "")
            )
        return results

    # -- gallery operations shared by index_search and image_recognition --------------------------------------
    @staticmethod
    def _labels(labels: list[Any] | None, count: int, engine: Engine) -> list[str]:
        labels = _present(labels, "labels")
        if len(labels) != count:
            raise RequestError(f"{count} items but {len(labels)} labels")
        limit = engine.params["Limits.max_label_length"]
        for i, lab in enumerate(labels):
            problem = label_problem(lab, limit)  # the gallery's own rule, checked before any image is embedded
            if problem:  # (lone surrogates included)
                raise RequestError(f"labels[{i}] {problem}")
        return labels

    @staticmethod
    def _metadata(meta: list[Any] | None, count: int, engine: Engine) -> list[dict | None] | None:
        if meta is None:
            return None
        if len(meta) != count or not all(m is None or isinstance(m, dict) for m in meta):
            raise RequestError(f"field 'metadata' must be a list of {count} objects or nulls")
        max_bytes, max_depth = engine.params["Limits.max_metadata_bytes"], engine.params["Limits.max_metadata_depth"]
        for i, m in enumerate(meta):
            if m is None:
                continue
            if _depth(m, max_depth + 1) > max_depth:  # before json.dumps, which would recurse
                raise RequestError(
                    f"metadata[{i}] is nested more than {max_depth} levels deep (Limits.max_metadata_depth)"
                )
            text = json.dumps(m, ensure_ascii=False)
            if not is_text(text):
                raise RequestError(f"metadata[{i}] is not valid Unicode (a lone surrogate)")
            if len(text.encode()) > max_bytes:
                raise RequestError(
                    f"metadata[{i}] is {len(text.encode())} bytes of JSON, more than the limit of "
                    f"{max_bytes} (Limits.max_metadata_bytes)"
                )
        return meta

    @staticmethod
    def _sources(given: list[Any] | None, count: int, engine: Engine) -> list[str]:
        """The client's names for the added images (``sources``, e.g. file names), else ``request:<i>``."""
        if given is None:
            return [f"request:{i}" for i in range(count)]
        limit = engine.params["Limits.max_source_length"]
        if len(given) != count or not all(
            v is None or (isinstance(v, str) and len(v) <= limit and v.isprintable()) for v in given
        ):
            raise RequestError(
                f"field 'sources' must be a list of {count} names (printable, at most {limit} "
                "characters; Limits.max_source_length) or nulls"
            )
        return [v if v else f"request:{i}" for i, v in enumerate(given)]

    def gallery_add_images(self, call: Call[rm.AddRequest]) -> dict[str, Any]:
        r, engine = call.request, call.engine
        images = self.decode_images(_present(r.images, "images"), engine, strict=True)  # all or nothing
        labels = self._labels(r.labels, len(images), engine)
        ids = engine.gallery_add(
            images,  # type: ignore[arg-type]  # strict: no ImageError left
            labels,
            gallery=r.gallery,
            sources=self._sources(r.sources, len(images), engine),
            metadata=self._metadata(r.metadata, len(images), engine),
        )
        return {"ids": ids, "added": len(ids)}


class GalleryOps:
    """``remove`` and ``info`` of the two modules that keep galleries (``index_search``, ``image_recognition``);
    the detection and extraction modules answer neither (their ``write_operations`` protect nothing)."""

    def op_remove(self, call: Call[rm.RemoveRequest]) -> dict[str, Any]:
        r = call.request
        return {"removed": call.engine.gallery_remove(ids=r.ids, labels=r.labels, gallery=r.gallery)}

    def op_info(self, call: Call[rm.Request]) -> dict[str, Any]:
        info = dict(call.gallery.info())
        info.pop("path", None)  # server paths stay on the server
        return info


def _present(value: list[Any] | None, name: str) -> list[Any]:
    """A list field an operation needs (checked after the fields that come first, as clients know the messages)."""
    if not value:
        raise RequestError(f"missing field {name!r}" if value is None else f"field {name!r} is an empty list")
    return value


def _depth(value: Any, cap: int) -> int:
    """Nesting depth of a JSON value, counted iteratively and no further than ``cap``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d >= cap:
                return d
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


class DetectionService(Service):
    """``mainbody_detection``: images -> boxes per image."""

    requests = {"predict": rm.DetectRequest}

    def op_predict(self, call: Call[rm.DetectRequest]) -> list[dict[str, Any]]:
        engine, p = call.engine, call.params
        images = self.decode_images(call.request.images, engine)
        return self.per_image(
            images,
            lambda i, img: {
                "boxes": [
                    {k: v for k, v in d.items() if k != "class_id"}
                    for d in engine.detector.detect(img, p, current_timer()).to_list()
                ]
            },
        )


class ExtractionService(Service):
    """``feature_extraction``: images (optionally with boxes) -> one embedding per crop."""

    requests = {"predict": rm.ExtractRequest}

    def op_predict(self, call: Call[rm.ExtractRequest]) -> list[dict[str, Any]]:
        engine, p, boxes = call.engine, call.params, call.request.boxes
        count = sum(len(b) for b in boxes or () if isinstance(b, list))
        if count > engine.params["Limits.max_boxes"]:  # checked before any image is decoded
            raise RequestError(f"{count} boxes in one request; the limit is {engine.params['Limits.max_boxes']}")
        images = self.decode_images(call.request.images, engine)
        if boxes is not None and len(boxes) != len(images):
            raise RequestError(f"field 'boxes' must hold one list per image ({len(images)}), got {len(boxes)}")

        def run(i: int, img: np.ndarray) -> dict[str, Any]:
            img_boxes = boxes[i] if boxes is not None else None
            if img_boxes is not None and not isinstance(img_boxes, list):
                raise RequestError(f"boxes[{i}] must be a list of [x1, y1, x2, y2]")
            if img_boxes:  # answered as used: clipped to the image, as the crops are
                h, w = img.shape[:2]
                img_boxes = np.clip(check_boxes(img_boxes, img.shape, i), 0, [w, h, w, h]).round().astype(int).tolist()
            (feats,) = engine.extract([img], [img_boxes] if img_boxes else None, params=p)
            used = img_boxes or [[0, 0, img.shape[1], img.shape[0]]]
            return {
                "boxes": used,
                "embeddings": feats,
                "dim": engine.embedding_size,
                "normalized": p["RecPostProcess.normalize"],
                "binary": p["RecPostProcess.binarize"],
            }

        return self.per_image(images, run)


class SearchService(GalleryOps, Service):
    """``index_search``: embeddings -> top-k matches; gallery add / remove / info / list."""

    default_operation = "search"
    write_operations = frozenset({"add", "remove"})
    requests = {
        "search": rm.SearchRequest,
        "add": rm.AddEmbeddingsRequest,
        "remove": rm.RemoveRequest,
        "list": rm.ListRequest,
    }

    @staticmethod
    def _embeddings(rows: list[Any] | None, engine: Engine, binary: bool) -> np.ndarray:
        rows = _present(rows, "embeddings")
        if len(rows) > engine.params["Limits.max_queries"]:
            raise RequestError(
                f"{len(rows)} embeddings in one request; the limit is {engine.params['Limits.max_queries']}"
            )
        dim = engine.embedding_size // 8 if binary else engine.embedding_size
        try:
            arr = np.asarray(rows, np.uint8 if binary else np.float32)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float
            raise RequestError("field 'embeddings' must be a list of lists of numbers") from None
        if arr.ndim != 2 or arr.shape[1] != dim or not np.all(np.isfinite(arr)):
            raise RequestError(
                f"field 'embeddings' must be a list of {dim}-number lists (finite), got shape {list(arr.shape)}"
            )
        return arr

    def op_search(self, call: Call[rm.SearchRequest]) -> list[dict[str, Any]]:
        engine, p = call.engine, call.params
        if p["IndexProcess.return_k"] > engine.params["Limits.max_return_k"]:
            raise RequestError(
                f"return_k {p['IndexProcess.return_k']} is more than the limit of "
                f"{engine.params['Limits.max_return_k']} (Limits.max_return_k)"
            )
        queries = self._embeddings(call.request.embeddings, engine, p["RecPostProcess.binarize"])
        matches, limit = len(queries) * p["IndexProcess.return_k"], engine.params["Limits.max_matches"]
        if matches > limit:
            raise RequestError(
                f"{len(queries)} embeddings x return_k {p['IndexProcess.return_k']} = {matches} "
                f"matches; the limit is {limit} (Limits.max_matches): send fewer embeddings per "
                "request or ask for fewer matches"
            )
        with current_timer().stage("search"):
            hits = engine.search(queries, gallery=call.gallery, params=p)
        return [{"index": i, "matches": [m.to_dict() for m in row]} for i, row in enumerate(hits)]

    def op_add(self, call: Call[rm.AddEmbeddingsRequest]) -> dict[str, Any]:
        r, engine = call.request, call.engine
        if r.images is not None:
            return self.gallery_add_images(call)  # type: ignore[arg-type]
        vectors = self._embeddings(r.embeddings, engine, engine.params["RecPostProcess.binarize"])
        labels = self._labels(r.labels, len(vectors), engine)
        ids = engine.gallery(r.gallery, create=True).add(
            vectors,
            labels,
            sources=self._sources(r.sources, len(vectors), engine) if r.sources is not None else None,
            metadata=self._metadata(r.metadata, len(vectors), engine),
        )
        return {"ids": ids, "added": len(ids)}

    def op_list(self, call: Call[rm.ListRequest]) -> list[dict[str, Any]]:
        r = call.request
        rows = call.gallery.list(label=r.label, limit=r.limit, offset=r.offset)
        return [{k: v for k, v in row.items() if k != "vector"} for row in rows]


class RecognitionService(GalleryViewOps, GalleryOps, Service):
    """``image_recognition``: the whole pipeline; gallery add / remove / info; the scenarios served; browsing
    galleries (``galleries``, ``labels``: :mod:`shitu.serving.hub.gallery_view`)."""

    default_operation = "recognize"
    write_operations = frozenset({"add", "remove"})
    requests = {
        "recognize": rm.RecognizeRequest,
        "add": rm.AddRequest,
        "remove": rm.RemoveRequest,
        "labels": rm.LabelsRequest,
    }

    def op_recognize(self, call: Call[rm.RecognizeRequest]) -> list[dict[str, Any]]:
        engine, p, explain = call.engine, call.params, call.request.explain
        images = self.decode_images(call.request.images, engine)
        gallery = call.gallery  # an unknown gallery fails the whole request, not each image

        def run(batch: list[np.ndarray]) -> list[dict[str, Any]]:
            notes = [Explanation.start(p) for _ in batch] if explain else None
            found = engine.recognize(batch, gallery, current_timer(), params=p, explanations=notes)
            out: list[dict[str, Any]] = [{"results": [r.to_dict() for r in rows]} for rows in found]
            for answer, note in zip(out, notes or ()):
                answer["explanation"] = note.to_dict()
            return out

        together = _together(images, run)
        return self.per_image(images, lambda i, img: together[i] if i in together else run([img])[0])

    def op_add(self, call: Call[rm.AddRequest]) -> dict[str, Any]:
        return self.gallery_add_images(call)

    def op_scenarios(self, call: Call[rm.Request]) -> list[dict[str, Any]]:
        from shitu.plugins import registry

        default = self.default_scenario or registry.default_pack_name()
        out = []
        for info in registry.list_packs():
            d = info.to_dict() if hasattr(info, "to_dict") else dict(vars(info))
            d.pop("path", None)
            d.pop("root", None)
            d["default"] = d.get("name") == default
            out.append(d)
        return out


def _together(
    images: list[np.ndarray | ImageError], run: Callable[[list[np.ndarray]], list[dict[str, Any]]]
) -> dict[int, dict[str, Any]]:
    """The answers of the decoded images run as one batch (their crops embedded together), by image index; ``{}``
    for a single image, or when the batch fails on a client fault (each image then runs alone and keeps its own
    error)."""
    good = [i for i, img in enumerate(images) if not isinstance(img, ImageError)]
    if len(good) < 2:
        return {}
    try:
        answers = run([images[i] for i in good])  # type: ignore[misc]
    except (RequestError, EngineError, GalleryRequestError):
        return {}
    return dict(zip(good, answers))
