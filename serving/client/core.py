"""The request-building core that the blocking and the asyncio client share (httpx's split: one core, two
transports).

Every operation is written once, as a generator that *yields* the HTTP calls it needs (:class:`Call`) and gets
each call's unwrapped ``results`` back (or the call's :class:`~.errors.ServerError` thrown in), and *returns* the
operation's answer. Batching, per-image fallbacks, ``partial`` results and answer parsing live here;
:class:`~.sdk.ShituClient` drives the generators over ``requests``, :class:`~.sdk.AsyncShituClient` over
``httpx.AsyncClient``. Both retry by the same urllib3 :class:`~urllib3.util.Retry` policies (:meth:`Core.retry`).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from urllib3.util import Retry

from shitu.serving.client.errors import (
    CLIENT_ERRORS,
    IMAGE_INDEX,
    ConnectionFailed,
    ImageFailed,
    InputError,
    ServerError,
    Timeout,
)
from shitu.serving.client.images import as_list, draw, image_bytes
from shitu.serving.client.results import (
    Embeddings,
    GalleryInfo,
    GalleryItem,
    ImageDetections,
    ImageRecognitions,
    Scenario,
    SearchHits,
)

DEFAULT_URL = "http://127.0.0.1:8866"
#: HTTP answers worth retrying for safe operations (a proxy or load balancer between client and server).
RETRY_HTTP_STATUSES = frozenset({502, 503, 504})
#: Embedding rows per ``search`` / ``gallery_add(embeddings=...)`` request: the server's default
#: ``Limits.max_queries`` (a client of a server with other limits says so: ``ShituClient(max_queries=...)``).
VECTOR_BATCH = 256
#: The server's default ``Limits.max_matches``: embeddings x ``return_k`` one search request may ask for.
MAX_MATCHES = 2560
#: The server's default ``IndexProcess.return_k`` (used to size search requests that do not set it).
DEFAULT_RETURN_K = 5

T = TypeVar("T")
S = TypeVar("S")


@dataclass(frozen=True)
class Call:
    """One HTTP call of an operation: ``POST path`` with ``body`` (``GET`` when None)."""

    module: str
    operation: str | None
    path: str
    body: bytes | None
    #: Safe to repeat (retried on timeouts, dropped connections and 502/503/504), else retried only when the
    #: connection could not even be opened.
    idempotent: bool
    retried: bool = True


@dataclass(frozen=True)
class Answer:
    """What a transport got back for a :class:`Call`."""

    status_code: int
    text: str
    headers: Mapping[str, str]
    reason: str = ""


Operation = Generator[Call, Any, T]


def operation(fn: Callable[..., Operation[Any]]) -> Callable[..., Any]:
    """A core operation as a client method: the client's ``_run`` drives it (blocking, or a coroutine)."""

    @functools.wraps(fn)
    def method(self: Core[Any], *args: Any, **kwargs: Any) -> Any:
        return self._run(fn(self, *args, **kwargs))

    return method


def unwrap(call: Call, answer: Answer) -> Any:
    """The envelope's ``results``, or the :class:`ServerError` the answer means."""
    try:
        body = json.loads(answer.text)
    except ValueError:
        body = None
    if not isinstance(body, dict) or "status" not in body:
        text = " ".join(answer.text.split())[:300] or answer.reason
        code = answer.status_code
        raise ServerError(
            f"HTTP {code}: not a shitu-hub answer: {text}", str(code), code, None, call.module, call.operation
        )
    status = str(body.get("status"))
    if status != "000" or answer.status_code >= 400:
        msg = str(body.get("msg") or f"error status {status}")
        m = IMAGE_INDEX.match(msg)
        raise ServerError(
            msg,
            status,
            answer.status_code,
            int(m.group(1)) if m else None,
            call.module,
            call.operation,
            request_id=body.get("request_id") or answer.headers.get("X-Request-ID"),
        )
    return body.get("results")


def failure(url: str, timed_out: bool, attempts: int, detail: str, timeout: object) -> Timeout | ConnectionFailed:
    """The error of a call that got no answer after ``attempts`` tries."""
    tries = f" after {attempts} attempt{'s' if attempts > 1 else ''}"
    if timed_out:
        return Timeout(f"{url}: no answer within {timeout} s{tries}", url, attempts)
    m = re.search(r"\[Errno -?\d+\] ([^'\")]+)", detail)
    return ConnectionFailed(f"{url}: cannot connect{tries}: {m.group(1).strip() if m else detail}", url, attempts)


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _return_k(params: Mapping[str, Any]) -> int:
    """The ``return_k`` a request's parameters ask for (short, dotted or nested name), else the server default."""
    nested = params.get("IndexProcess")
    for value in (
        params.get("return_k"),
        params.get("IndexProcess.return_k"),
        nested.get("return_k") if isinstance(nested, Mapping) else None,
    ):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return DEFAULT_RETURN_K


class Core(Generic[S]):
    """Settings, request building and the operations of a shitu-hub client (see :class:`~.sdk.ShituClient`);
    ``S``: the transport's session type (``session=``, a caller's own, else None)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        timeout: float | tuple[float, float] = 60.0,
        retries: int = 2,
        token: str | None = None,
        batch_size: int = 8,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_batch_bytes: int = 32 * 1024 * 1024,
        image_format: str = "jpeg",
        jpeg_quality: int = 95,
        max_queries: int = VECTOR_BATCH,
        max_matches: int = MAX_MATCHES,
        session: S | None = None,
    ):
        if "://" not in base_url:
            base_url = "http://" + base_url
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if max_queries < 1 or max_matches < 1:
            raise ValueError(f"max_queries and max_matches must be >= 1, got {max_queries} and {max_matches}")
        if image_format not in ("jpeg", "png"):
            raise ValueError(f"image_format must be 'jpeg' or 'png', got {image_format!r}")
        self.max_queries, self.max_matches = max_queries, max_matches
        self.base_url = base_url.rstrip("/")
        self.timeout, self.retries, self.batch_size = timeout, retries, batch_size
        self.scenario, self.gallery, self.params = scenario, gallery, dict(params or {})
        self.backoff, self.max_backoff, self.max_batch_bytes = backoff, max_backoff, max_batch_bytes
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._given = session
        self._setup()

    def _setup(self) -> None:
        """The transport's own state (connections), made at the end of ``__init__``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, batch_size={self.batch_size}, retries={self.retries})"

    def _run(self, op: Operation[T]) -> Any:  # pragma: no cover - each client drives the operations its way
        raise NotImplementedError

    draw = staticmethod(draw)

    # -- plumbing ------------------------------------------------------------------------------------------------
    def retry(self, call: Call) -> Retry:
        """The urllib3 retry policy of ``call``: safe operations retry connection errors, timeouts, dropped
        connections and 502/503/504 ``retries`` times; the others only a connection that could not be opened
        (refused, connect timeout), since the server may have acted on one it received. Backoff as urllib3 does
        it: the first retry at once, then ``backoff * 2**(n-1)`` seconds (at most ``max_backoff``), jittered."""
        n = self.retries if call.retried else 0
        policy = Retry(
            total=n,
            connect=n,
            redirect=False,
            raise_on_status=False,
            respect_retry_after_header=False,
            backoff_factor=self.backoff,
            backoff_max=self.max_backoff,
            backoff_jitter=self.backoff / 4,
        )
        if not call.idempotent:
            return policy.new(read=False, status=0)
        safe = frozenset({"GET", "POST"})
        return policy.new(read=n, status=n, other=n, allowed_methods=safe, status_forcelist=RETRY_HTTP_STATUSES)

    def _call(self, module: str, payload: dict[str, Any], idempotent: bool) -> Call:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return Call(module, payload.get("operation"), f"/predict/{module}", body, idempotent)

    def _payload(
        self,
        operation: str,
        scenario: str | None,
        gallery: str | None,
        params: Mapping[str, Any] | None,
        overrides: Mapping[str, Any],
        **fields: Any,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"operation": operation}
        scenario = scenario or self.scenario
        gallery = gallery or self.gallery
        if scenario:
            payload["scenario"] = scenario
        if gallery:
            payload["gallery"] = gallery
        merged = _deep_merge(_deep_merge(self.params, params or {}), overrides)
        if merged:
            payload["params"] = merged  # under "params": never confused with an operation's own fields
        payload.update({k: v for k, v in fields.items() if v is not None})
        return payload

    def _batches(self, images: list[Any]) -> Iterator[tuple[int, list[str]]]:
        """(start, base64 strings) per request: at most ``batch_size`` images and ``max_batch_bytes`` bytes."""
        start, size = 0, 0
        batch: list[str] = []
        for i, img in enumerate(images):
            try:
                data = image_bytes(img, self.image_format, self.jpeg_quality)
            except InputError as exc:
                raise InputError(f"image {i}: {exc}", i) from None
            encoded = base64.b64encode(data).decode("ascii")
            if batch and (len(batch) >= self.batch_size or size + len(encoded) > self.max_batch_bytes):
                yield start, batch
                start, batch, size = i, [], 0
            batch.append(encoded)
            size += len(encoded)
        if batch:
            yield start, batch

    def _per_image(
        self,
        module: str,
        operation: str,
        images: Any,
        parse: Callable[[Mapping[str, Any], int], Any],
        raise_on_error: bool,
        payload: Callable[[list[str], int], dict[str, Any]],
    ) -> Operation[Any]:
        """Send ``images`` in batches; per-image results in order; failed images per ``raise_on_error``."""
        single, items = as_list(images)
        if not items:
            return []
        out: list[Any] = []

        def send(start: int, encoded: list[str]) -> Operation[list[Any]]:
            try:
                answer = yield self._call(module, payload(encoded, start), idempotent=True)
            except ServerError as exc:
                if exc.index is None or not 0 <= exc.index < len(encoded):
                    raise
                if len(encoded) == 1:  # the one image of this request failed: a per-image error
                    reason = IMAGE_INDEX.match(exc.msg)
                    return [parse({"index": 0, "error": reason.group(2) if reason else exc.msg}, start)]
                # Every image of the batch failed (or one failed the whole request): ask image by image, so
                # each image gets its own result or reason. Safe: these operations change nothing.
                each = []
                for k, enc in enumerate(encoded):
                    each.extend((yield from send(start + k, [enc])))
                return each
            if not isinstance(answer, list) or len(answer) != len(encoded):
                got = f"{len(answer)} items" if isinstance(answer, list) else type(answer).__name__
                raise ServerError(f"expected {len(encoded)} results, got {got}", "000", 200, None, module, operation)
            return [parse(r, start + k) for k, r in enumerate(answer)]

        try:
            for start, encoded in self._batches(items):
                out.extend((yield from send(start, encoded)))
        except CLIENT_ERRORS as exc:
            exc.partial = out
            raise
        errors = {r.index: r.error for r in out if r.error is not None}
        if errors and raise_on_error:
            raise ImageFailed(errors, out, module, operation)
        return out[0] if single else out

    # -- operations ----------------------------------------------------------------------------------------------
    @operation
    def recognize(
        self,
        images: Any,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        raise_on_error: bool = True,
        explain: bool = False,
        **overrides: Any,
    ) -> Operation[Any]:
        """What and where: one :class:`ImageRecognitions` (a list of :class:`Recognition`, best first) per image;
        one image in, one out; a list in, a list out. ``explain``: each also carries its ``explanation``."""
        return self._per_image(
            "image_recognition",
            "recognize",
            images,
            lambda d, i: ImageRecognitions.from_dict(d, i),
            raise_on_error,
            lambda enc, start: self._payload(
                "recognize", scenario, gallery, params, overrides, images=enc, explain=True if explain else None
            ),
        )

    @operation
    def detect(
        self,
        images: Any,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        raise_on_error: bool = True,
        **overrides: Any,
    ) -> Operation[Any]:
        """Main-object boxes: one :class:`ImageDetections` (a list of :class:`Box`) per image."""
        return self._per_image(
            "mainbody_detection",
            "predict",
            images,
            lambda d, i: ImageDetections.from_dict(d, i),
            raise_on_error,
            lambda enc, start: self._payload("predict", scenario, gallery, params, overrides, images=enc),
        )

    @operation
    def extract(
        self,
        images: Any,
        boxes: Sequence[Sequence[Sequence[float]] | None] | None = None,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        raise_on_error: bool = True,
        **overrides: Any,
    ) -> Operation[Any]:
        """Embeddings: one :class:`Embeddings` per image, one row per box of ``boxes[i]`` (``[[x1, y1, x2, y2],
        ...]``; the whole image when ``boxes`` or ``boxes[i]`` is None). For one image, ``boxes`` is its list."""
        single, items = as_list(images)
        per_image: list[list[list[float]] | None] | None = None
        if boxes is not None:
            given = [boxes] if single else list(boxes)
            if len(given) != len(items):
                raise InputError(f"boxes: one list per image expected ({len(items)}), got {len(given)}")
            per_image = [None if b is None else np.asarray(b, np.float64).reshape(-1, 4).tolist() for b in given]

        def payload(enc: list[str], start: int) -> dict[str, Any]:
            part = per_image[start : start + len(enc)] if per_image is not None else None
            if part is not None and all(b is None for b in part):
                part = None
            return self._payload(
                "predict",
                scenario,
                gallery,
                params,
                overrides,
                images=enc,
                boxes=None if part is None else [b or [] for b in part],
            )

        out = yield from self._per_image(
            "feature_extraction", "predict", items, lambda d, i: Embeddings.from_dict(d, i), raise_on_error, payload
        )
        return out[0] if single else out

    @operation
    def search(
        self,
        embeddings: Any,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Operation[Any]:
        """Gallery matches per embedding: one :class:`SearchHits` (a list of :class:`Match`) per row. Takes a
        ``[n, d]`` array or list of rows (a list out), one ``[d]`` vector (one out) or an :class:`Embeddings`
        (its rows; a list out). ``return_k=`` and ``score_thres=`` are the usual knobs."""
        if isinstance(embeddings, Embeddings):
            embeddings = embeddings.vectors
        arr = np.asarray(embeddings)
        single = arr.ndim == 1
        arr = arr.reshape(1, -1) if single else arr
        if arr.ndim != 2 or arr.dtype.kind not in "uif":
            raise InputError(f"embeddings must be numbers of shape [n, d] or [d], got {arr.dtype} {arr.shape}")
        out: list[SearchHits] = []
        k = _return_k(self._payload("search", scenario, gallery, params, overrides).get("params") or {})
        per_request = max(1, min(self.max_queries, self.max_matches // k))
        try:
            for start in range(0, len(arr), per_request):
                rows = arr[start : start + per_request].tolist()
                payload = self._payload("search", scenario, gallery, params, overrides, embeddings=rows)
                answer = yield self._call("index_search", payload, idempotent=True)
                out.extend(SearchHits.from_dict(r, start + j) for j, r in enumerate(answer))
        except CLIENT_ERRORS as exc:
            exc.partial = out
            raise
        return out[0] if single else out

    @operation
    def gallery_add(
        self,
        images: Any = None,
        labels: str | Sequence[str] | None = None,
        *,
        embeddings: Any = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Operation[list[int]]:
        """Add images (or precomputed ``embeddings``) under ``labels`` (one per item, or one label for all);
        returns the new gallery ids in order. Needs the admin token when the server has one. Each request is all
        or nothing; when a later batch fails, the exception's ``partial`` holds the ids already added."""
        if (images is None) == (embeddings is None):
            raise InputError("gallery_add needs images or embeddings (one of them)")
        items: list[Any] = []
        vecs = np.zeros((0, 0))
        if images is not None:
            items = as_list(images)[1]
            count = len(items)
        else:
            vecs = np.asarray(embeddings.vectors if isinstance(embeddings, Embeddings) else embeddings)
            vecs = vecs.reshape(1, -1) if vecs.ndim == 1 else vecs
            if vecs.ndim != 2 or vecs.dtype.kind not in "uif":
                raise InputError(f"embeddings must be numbers of shape [n, d], got {vecs.dtype} {vecs.shape}")
            count = len(vecs)
        names = list(labels or []) if not isinstance(labels, str) else [labels] * count
        if not count:
            raise InputError("gallery_add: no images or embeddings given")
        if len(names) != count:
            raise InputError(f"{count} items but {len(names)} labels")
        if metadata is not None and len(metadata) != count:
            raise InputError(f"{count} items but {len(metadata)} metadata entries")
        ids: list[int] = []
        # Image files keep their names on the server (the items' `source`); other images are "request:<i>".
        sources = [Path(x).name if isinstance(x, (str, os.PathLike)) else None for x in items]

        def fields(start: int, n: int) -> dict[str, Any]:
            meta = None if metadata is None else [None if m is None else dict(m) for m in metadata[start : start + n]]
            out: dict[str, Any] = {"labels": names[start : start + n], "metadata": meta}
            if any(sources[start : start + n]):
                out["sources"] = sources[start : start + n]
            return out

        try:
            if images is not None:
                for start, enc in self._batches(items):
                    payload = self._payload(
                        "add", scenario, gallery, params, overrides, images=enc, **fields(start, len(enc))
                    )
                    try:
                        answer = yield self._call("image_recognition", payload, idempotent=False)
                    except ServerError as exc:
                        if exc.index is not None:
                            exc.index += start
                        raise
                    ids.extend(int(i) for i in answer["ids"])
            else:
                for start in range(0, count, self.max_queries):
                    rows = vecs[start : start + self.max_queries].tolist()
                    payload = self._payload(
                        "add", scenario, gallery, params, overrides, embeddings=rows, **fields(start, len(rows))
                    )
                    answer = yield self._call("index_search", payload, idempotent=False)
                    ids.extend(int(i) for i in answer["ids"])
        except CLIENT_ERRORS as exc:
            exc.partial = ids
            raise
        return ids

    @operation
    def gallery_remove(
        self,
        ids: int | Sequence[int] | None = None,
        labels: str | Sequence[str] | None = None,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Operation[int]:
        """Remove items by id and/or every item of some labels; returns how many were removed."""
        id_list = [ids] if isinstance(ids, (int, np.integer)) else ids
        label_list = [labels] if isinstance(labels, str) else labels
        if not id_list and not label_list:
            raise InputError("gallery_remove needs ids or labels")
        payload = self._payload(
            "remove",
            scenario,
            gallery,
            params,
            overrides,
            ids=[int(i) for i in id_list] if id_list else None,
            labels=list(label_list) if label_list else None,
        )
        answer = yield self._call("image_recognition", payload, idempotent=True)
        return int(answer["removed"])

    @operation
    def gallery_info(
        self,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Operation[GalleryInfo]:
        """Counts and configuration of a gallery (the server's default gallery when none is named)."""
        payload = self._payload("info", scenario, gallery, params, overrides)
        return GalleryInfo.from_dict((yield self._call("image_recognition", payload, idempotent=True)))

    @operation
    def gallery_list(
        self,
        label: str | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Operation[list[GalleryItem]]:
        """Gallery records by id (optionally of one ``label``), ``limit`` from ``offset``."""
        payload = self._payload("list", scenario, gallery, params, overrides, label=label, limit=limit, offset=offset)
        return [GalleryItem.from_dict(r) for r in (yield self._call("index_search", payload, idempotent=True))]

    @operation
    def scenarios(
        self,
        *,
        scenario: str | None = None,
        gallery: str | None = None,
        params: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Operation[list[Scenario]]:
        """The scenario packs the server knows; ``default`` marks the one it uses when none is named."""
        payload = self._payload("scenarios", scenario, gallery, params, overrides)
        return [Scenario.from_dict(d) for d in (yield self._call("image_recognition", payload, idempotent=True))]

    @operation
    def health(self) -> Operation[dict[str, Any]]:
        """``GET /health``: the modules served and the answering process (no retries)."""
        answer: dict[str, Any] = yield Call("health", None, "/health", None, idempotent=True, retried=False)
        return answer
