"""Request handling shared by the four hub modules: validate -> decode -> run the engine -> plain JSON.

Each hub module is a thin PaddleHub wrapper around one :class:`Service` subclass (the TorchServe handler idea:
preprocess / inference / postprocess in one place per capability). A request is the JSON object PaddleHub passes
to the module's ``@serving`` method as keyword arguments.

Fields every service understands:

- ``images``: list of base64 strings of encoded files (JPEG, PNG, BMP, WebP, TIFF); ``data:`` URLs accepted;
- ``scenario``: the scenario pack to use (default: the module's, from ``config.json`` or the default pack);
- ``gallery``: a gallery *name* of that pack (never a path);
- ``params``: a mapping of parameter overrides (``{"Global": {"threshold": 0.5}}`` or ``{"threshold": 0.5}``);
  any other top-level key is read as a parameter override too (``"threshold": 0.5``). Unknown or ill-typed
  names are errors that name them.
- ``operation``: for modules with several operations (``index_search``, ``image_recognition``).

Errors raise :class:`RequestError`; PaddleHub turns the exception into ``{"status": "101", "msg": ...}``. When some
images of a batch fail and others succeed, the answer is ``status "000"`` with ``{"index": i, "error": ...}`` in
place of the failed images' results.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from shitu.echo import clip
from shitu.params import ParamError, flatten, merge
from shitu.serving.engine.engine import GALLERY_NAME, Engine, EngineError, check_boxes, load_engine
from shitu.serving.engine.images import ImageError, ImageLimits, b64decode, check_bytes, decode, header_size
from shitu.serving.engine.timing import current_timer
from shitu.serving.gallery.list_file import label_problem
from shitu.serving.hub.connections import bearer_token
from shitu.serving.hub.gallery_view import GalleryViewOps

#: Keys with a meaning of their own; every other top-level key is a parameter override.
COMMON_FIELDS = {"images", "scenario", "gallery", "params", "operation", "token"}
TOKEN_ENV = "SHITU_ADMIN_TOKEN"


class RequestError(ValueError):
    """The request is invalid; the message says which field and why."""


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


class Service:
    """Base of the four services. Subclasses implement ``op_<operation>`` methods."""

    #: Operation used when the request names none.
    default_operation = "predict"
    #: Operations that change a gallery (protected by the admin token when one is configured).
    write_operations: frozenset[str] = frozenset()
    #: Extra request fields (besides COMMON_FIELDS) per operation.
    fields: dict[str, set[str]] = {}

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

    def engine(self, request: dict[str, Any]) -> Engine:
        scenario = request.get("scenario")
        if scenario is not None and not isinstance(scenario, str):
            raise RequestError("field 'scenario' must be a string")
        return self.engines.get(scenario or self.default_scenario)

    # -- request handling --------------------------------------------------------------------------------------
    def handle(self, request: dict[str, Any]) -> Any:
        """One request (the JSON object) -> plain-JSON results. Raises RequestError on bad input.

        Whatever goes wrong, the message a client gets holds no server path and quotes at most a little of its
        input; an unexpected error is logged here and named only by its type.
        """
        from shitu.echo import client_message
        from shitu.plugins.errors import PackError
        from shitu.serving.gallery.local import GalleryError

        try:
            return self._handle(request)
        except (ValueError, PackError, GalleryError) as exc:
            raise RequestError(client_message(str(exc))) from None
        except RecursionError:
            raise RequestError("the request is nested too deeply") from None
        except Exception as exc:
            logging.getLogger("shitu.serving").error("request failed: %s", exc, exc_info=exc)
            raise RequestError(f"internal error ({type(exc).__name__}); the server log has the details") from None

    def _handle(self, request: dict[str, Any]) -> Any:
        if not isinstance(request, dict):
            raise RequestError("the request body must be a JSON object")
        operation = request.get("operation", self.default_operation)
        if not isinstance(operation, str) or not hasattr(self, f"op_{operation}"):
            ops = sorted(n[3:] for n in dir(self) if n.startswith("op_"))
            raise RequestError(f"unknown operation {clip(operation)}; this module supports {ops}")
        if operation in self.write_operations or self._protect_reads:
            self._check_token(request)
        known = COMMON_FIELDS | self.fields.get(operation, set())
        overrides = self._overrides(request, known)
        gallery = request.get("gallery")
        if gallery is not None and (not isinstance(gallery, str) or not GALLERY_NAME.match(gallery)):
            raise RequestError(
                f"invalid gallery name {clip(gallery)}: a gallery is named with letters, digits, "
                "'_', '-' and '.' (max 64), never by a path"
            )
        try:
            result = getattr(self, f"op_{operation}")(request, overrides)
        except (ParamError, ImageError, EngineError) as exc:
            raise RequestError(str(exc)) from None
        return to_jsonable(result)

    def _overrides(self, request: dict[str, Any], known: set[str]) -> dict[str, Any]:
        params = request.get("params") or {}
        if not isinstance(params, dict):
            raise RequestError("field 'params' must be an object of parameter overrides")
        overrides = dict(params)
        overrides.update({k: v for k, v in request.items() if k not in known})
        try:
            flatten(overrides)  # names and types checked before any work is done
        except ParamError as exc:
            raise RequestError(str(exc)) from None
        return overrides

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
    @staticmethod
    def _list_field(request: dict[str, Any], name: str, required: bool = True) -> list[Any] | None:
        value = request.get(name)
        if value is None:
            if required:
                raise RequestError(f"missing field {name!r}")
            return None
        if not isinstance(value, list):
            raise RequestError(f"field {name!r} must be a list, got {type(value).__name__}")
        if required and not value:
            raise RequestError(f"field {name!r} is an empty list")
        return value

    def decode_images(
        self, request: dict[str, Any], engine: Engine, strict: bool = False
    ) -> list[np.ndarray | ImageError]:
        """Decode ``images``; a failed image becomes its :class:`ImageError` (or raises when ``strict``)."""
        items = self._list_field(request, "images")
        assert items is not None
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
        for i, data in enumerate(raw):
            try:
                if isinstance(data, ImageError):
                    raise data
                with current_timer().stage("decode"):
                    out.append(decode(data, limits))
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
    def _labels(self, request: dict[str, Any], count: int, engine: Engine) -> list[str]:
        labels = self._list_field(request, "labels")
        assert labels is not None
        if len(labels) != count:
            raise RequestError(f"{count} items but {len(labels)} labels")
        limit = engine.params["Limits.max_label_length"]
        for i, lab in enumerate(labels):
            problem = label_problem(lab, limit)  # the gallery's own rule, checked before any image is embedded
            if problem:
                raise RequestError(f"labels[{i}] {problem}")
            if not _is_text(lab):
                raise RequestError(f"labels[{i}] is not valid Unicode (a lone surrogate)")
        return labels

    def _metadata(self, request: dict[str, Any], count: int, engine: Engine) -> list[dict | None] | None:
        meta = self._list_field(request, "metadata", required=False)
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
            if not _is_text(text):
                raise RequestError(f"metadata[{i}] is not valid Unicode (a lone surrogate)")
            if len(text.encode()) > max_bytes:
                raise RequestError(
                    f"metadata[{i}] is {len(text.encode())} bytes of JSON, more than the limit of "
                    f"{max_bytes} (Limits.max_metadata_bytes)"
                )
        return meta

    def _sources(self, request: dict[str, Any], count: int, engine: Engine) -> list[str]:
        """The client's names for the added images (``sources``, e.g. file names), else ``request:<i>``."""
        given = self._list_field(request, "sources", required=False)
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

    def gallery_add_images(self, request: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        engine = self.engine(request)
        images = self.decode_images(request, engine, strict=True)  # all or nothing
        labels = self._labels(request, len(images), engine)
        ids = engine.gallery_add(
            images,
            labels,
            gallery=request.get("gallery"),  # type: ignore[arg-type]
            sources=self._sources(request, len(images), engine),
            metadata=self._metadata(request, len(images), engine),
        )
        return {"ids": ids, "added": len(ids)}

    def gallery_remove(self, request: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        ids = self._list_field(request, "ids", required=False)
        labels = self._list_field(request, "labels", required=False)
        if not ids and not labels:
            raise RequestError("remove needs 'ids' (list of integers) or 'labels' (list of strings)")
        if ids and not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**63 for i in ids):
            raise RequestError("field 'ids' must be a list of integers in 0..2**63-1")
        if labels and not all(isinstance(lab, str) and _is_text(lab) for lab in labels):
            raise RequestError("field 'labels' must be a list of strings (valid Unicode)")
        removed = self.engine(request).gallery_remove(ids=ids, labels=labels, gallery=request.get("gallery"))
        return {"removed": removed}

    def gallery_info(self, request: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        info = dict(self.engine(request).gallery_info(request.get("gallery")))
        info.pop("path", None)  # server paths stay on the server
        return info


def _is_text(text: str) -> bool:
    """Whether ``text`` is valid Unicode (JSON's ``\\ud800`` escapes can carry lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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

    def op_predict(self, request: dict[str, Any], overrides: dict[str, Any]) -> list[dict[str, Any]]:
        engine = self.engine(request)
        p = engine.request_params(overrides)
        images = self.decode_images(request, engine)
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

    fields = {"predict": {"boxes"}}

    def op_predict(self, request: dict[str, Any], overrides: dict[str, Any]) -> list[dict[str, Any]]:
        engine = self.engine(request)
        p = engine.request_params(overrides)
        boxes = self._list_field(request, "boxes", required=False)
        count = sum(len(b) for b in boxes or () if isinstance(b, list))
        if count > engine.params["Limits.max_boxes"]:  # checked before any image is decoded
            raise RequestError(f"{count} boxes in one request; the limit is {engine.params['Limits.max_boxes']}")
        images = self.decode_images(request, engine)
        if boxes is not None and len(boxes) != len(images):
            raise RequestError(f"field 'boxes' must hold one list per image ({len(images)}), got {len(boxes)}")

        def run(i: int, img: np.ndarray) -> dict[str, Any]:
            img_boxes = boxes[i] if boxes is not None else None
            if img_boxes is not None and not isinstance(img_boxes, list):
                raise RequestError(f"boxes[{i}] must be a list of [x1, y1, x2, y2]")
            if img_boxes:  # answered as used: clipped to the image, as the crops are
                h, w = img.shape[:2]
                img_boxes = np.clip(check_boxes(img_boxes, img.shape, i), 0, [w, h, w, h]).round().astype(int).tolist()
            (feats,) = engine.extract([img], [img_boxes] if img_boxes else None, **overrides)
            used = img_boxes or [[0, 0, img.shape[1], img.shape[0]]]
            return {
                "boxes": used,
                "embeddings": feats,
                "dim": engine.embedding_size,
                "normalized": p["RecPostProcess.normalize"],
                "binary": p["RecPostProcess.binarize"],
            }

        return self.per_image(images, run)


class SearchService(Service):
    """``index_search``: embeddings -> top-k matches; gallery add / remove / info / list."""

    default_operation = "search"
    write_operations = frozenset({"add", "remove"})
    fields = {
        "search": {"embeddings"},
        "add": {"embeddings", "labels", "metadata", "sources"},
        "remove": {"ids", "labels"},
        "list": {"label", "limit", "offset"},
    }

    def _embeddings(self, request: dict[str, Any], engine: Engine, binary: bool) -> np.ndarray:
        rows = self._list_field(request, "embeddings")
        assert rows is not None
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

    def op_search(self, request: dict[str, Any], overrides: dict[str, Any]) -> list[dict[str, Any]]:
        engine = self.engine(request)
        p = engine.request_params(overrides)
        if p["IndexProcess.return_k"] > engine.params["Limits.max_return_k"]:
            raise RequestError(
                f"return_k {p['IndexProcess.return_k']} is more than the limit of "
                f"{engine.params['Limits.max_return_k']} (Limits.max_return_k)"
            )
        queries = self._embeddings(request, engine, p["RecPostProcess.binarize"])
        matches, limit = len(queries) * p["IndexProcess.return_k"], engine.params["Limits.max_matches"]
        if matches > limit:
            raise RequestError(
                f"{len(queries)} embeddings x return_k {p['IndexProcess.return_k']} = {matches} "
                f"matches; the limit is {limit} (Limits.max_matches): send fewer embeddings per "
                "request or ask for fewer matches"
            )
        with current_timer().stage("search"):
            hits = engine.search(queries, gallery=request.get("gallery"), **overrides)
        return [{"index": i, "matches": [m.to_dict() for m in row]} for i, row in enumerate(hits)]

    def op_add(self, request: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        if request.get("images") is not None:
            return self.gallery_add_images(request, overrides)
        engine = self.engine(request)
        vectors = self._embeddings(request, engine, engine.params["RecPostProcess.binarize"])
        labels = self._labels(request, len(vectors), engine)
        ids = engine.gallery(request.get("gallery"), create=True).add(
            vectors,
            labels,
            sources=self._sources(request, len(vectors), engine) if "sources" in request else None,
            metadata=self._metadata(request, len(vectors), engine),
        )
        return {"ids": ids, "added": len(ids)}

    def op_remove(self, request: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        return self.gallery_remove(request, overrides)

    def op_info(self, request: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        return self.gallery_info(request, overrides)

    def op_list(self, request: dict[str, Any], overrides: dict[str, Any]) -> list[dict[str, Any]]:
        label, limit, offset = request.get("label"), request.get("limit", 100), request.get("offset", 0)
        if label is not None and not isinstance(label, str):
            raise RequestError("field 'label' must be a string")
        for name, v in (("limit", limit), ("offset", offset)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 10_000:
                raise RequestError(f"field {name!r} must be an integer in 0..10000")
        rows = self.engine(request).gallery(request.get("gallery")).list(label=label, limit=limit, offset=offset)
        return [{k: v for k, v in r.items() if k != "vector"} for r in rows]


class RecognitionService(GalleryViewOps, Service):
    """``image_recognition``: the whole pipeline; gallery add / remove / info; the scenarios served; browsing
    galleries (``galleries``, ``labels``: :mod:`shitu.serving.hub.gallery_view`)."""

    default_operation = "recognize"
    write_operations = frozenset({"add", "remove"})
    fields = {
        "recognize": {"explain"},
        "add": {"labels", "metadata", "sources"},
        "remove": {"ids", "labels"},
        **GalleryViewOps.fields,
    }

    def op_recognize(self, request: dict[str, Any], overrides: dict[str, Any]) -> list[dict[str, Any]]:
        engine = self.engine(request)
        engine.request_params(overrides)  # validate before decoding
        explain = request.get("explain", False)
        if not isinstance(explain, bool):
            raise RequestError(f"field 'explain' must be true or false, got {type(explain).__name__}")
        images = self.decode_images(request, engine)
        gallery = request.get("gallery")
        engine.gallery(gallery)  # an unknown gallery fails the whole request, not each image
        if explain:
            return self.per_image(
                images, lambda i, img: _explained(engine.recognize_explained([img], gallery=gallery, **overrides)[0])
            )
        batched = _recognize_together(engine, images, gallery, overrides)
        return self.per_image(
            images,
            lambda i, img: {
                "results": [
                    r.to_dict()
                    for r in (
                        batched[i]
                        if i in batched
                        else engine.recognize([img], gallery=gallery, timer=current_timer(), **overrides)[0]
                    )
                ]
            },
        )

    def op_add(self, request: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        return self.gallery_add_images(request, overrides)

    def op_remove(self, request: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        return self.gallery_remove(request, overrides)

    def op_info(self, request: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
        return self.gallery_info(request, overrides)

    def op_scenarios(self, request: dict[str, Any], overrides: dict[str, Any]) -> list[dict[str, Any]]:
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


def _explained(answer: tuple[list[Any], Any]) -> dict[str, Any]:
    """``(recognitions, explanation)`` of one image -> its ``results`` and ``explanation`` fields."""
    recognitions, explanation = answer
    return {"results": [r.to_dict() for r in recognitions], "explanation": explanation.to_dict()}


def _recognize_together(
    engine: Engine, images: list[np.ndarray | ImageError], gallery: Any, overrides: dict[str, Any]
) -> dict[int, list[Any]]:
    """The recognitions of the decoded images, their crops embedded together (:mod:`shitu.serving.engine.batched`),
    by image index; ``{}`` for a single image, or when the batch fails (each image then runs alone and keeps its
    own error)."""
    good = [i for i, img in enumerate(images) if not isinstance(img, ImageError)]
    if len(good) < 2:
        return {}
    try:
        answers = engine.recognize([images[i] for i in good], gallery=gallery, timer=current_timer(), **overrides)
    except (RequestError, EngineError):
        return {}
    return dict(zip(good, answers))
