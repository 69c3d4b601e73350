"""Python SDK for a shitu-hub server: images in, typed results out; no paddle, no base64, no envelope.

::

    from shitu.serving.client.sdk import ShituClient

    with ShituClient("http://127.0.0.1:8866", token="s3cret") as client:
        client.gallery_add(["cat.jpg", "cup.jpg"], ["cat", "cup"], gallery="shop")
        for r in client.recognize("query.jpg", gallery="shop", threshold=0.5):
            print(r)                          # cat 0.912 at [16, 1, 443, 299]

It needs ``numpy``, ``requests`` (the blocking client), ``httpx`` (:class:`AsyncShituClient`) and, to draw or to
encode arrays without OpenCV, ``Pillow``: never paddle, faiss or OpenCV. Modules: :mod:`.core` (request building
and every operation, written once), :mod:`.results`, :mod:`.images`, :mod:`.errors`; this one holds the two
transports.

**Images** are a path (``str`` / ``os.PathLike``: the file's bytes are sent as they are), encoded bytes, a numpy
array (BGR or gray, as OpenCV gives; sent as JPEG, or PNG with ``image_format="png"``) or a PIL image; one image
or a list (a 4-D numpy array is a list of frames). One image in, one result out; a list in, a list out, in order.
Lists are sent in requests of at most ``batch_size`` images (and ``max_batch_bytes`` encoded bytes).

**Parameters**: every method takes ``scenario=``, ``gallery=``, ``params=`` (a mapping, nested PaddleClas-style
``{"Global": {"threshold": 0.5}}``, dotted or short names) and any parameter as a keyword argument by its PP-ShiTu
name (``threshold=0.5``, ``score_thres=0.9``, ``**{"IndexProcess.return_k": 3}``); the server checks names and
types and answers unknown ones with a :class:`ServerError` that names them.

**Errors** are :class:`shitu.errors.ShituError` subclasses (:mod:`.errors`):

- :class:`InputError` -- an image or argument cannot be used; nothing (more) was sent;
- :class:`ServerError` -- the server refused the request: ``status`` and ``msg`` (PaddleHub's envelope),
  ``http_status``, and ``index`` when one image is to blame (index in *your* list, across batches);
- :class:`ImageFailed` (a ``ServerError``) -- with ``raise_on_error=True`` (the default) of ``recognize`` /
  ``detect`` / ``extract``, some images failed: ``index`` is the first, ``errors`` maps every failed index to its
  reason, ``results`` holds the results of *all* images (failed ones empty, with ``.error`` set). With
  ``raise_on_error=False`` the same list is returned instead and the caller checks ``.error`` / ``.ok``;
- :class:`ConnectionFailed` (also a ``ConnectionError``) and :class:`Timeout` (also a ``TimeoutError``).

Every exception raised by a batched call has ``partial``: what the earlier batches of the call returned (for
``gallery_add``, the ids already added, so the caller can remove them).

**Retries**: a connection error, a timeout or an HTTP 502/503/504 is retried ``retries`` times with exponential
backoff by a urllib3 ``Retry`` (the first retry at once, then ``backoff * 2**(n-1)`` seconds, at most
``max_backoff``; ``Retry-After`` is not waited for) for the operations that are safe to repeat:
``recognize``, ``detect``, ``extract``, ``search``, ``gallery_remove`` (removing twice removes nothing more),
``gallery_info``, ``gallery_list``, ``scenarios``. ``gallery_add`` is not idempotent: it is retried only when the
connection could not even be opened (refused, connect timeout), as urllib3 does for connect errors; a read
timeout or a dropped connection after sending is raised at once, since the server may have added the images.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError
from urllib3.util import Retry

from shitu.serving.client.core import (
    DEFAULT_RETURN_K,
    DEFAULT_URL,
    MAX_MATCHES,
    RETRY_HTTP_STATUSES,
    VECTOR_BATCH,
    Answer,
    Call,
    Core,
    Operation,
    T,
    failure,
    unwrap,
)
from shitu.serving.client.errors import (
    CLIENT_ERRORS,
    ConnectionFailed,
    ImageFailed,
    InputError,
    ServerError,
    ShituError,
    Timeout,
)
from shitu.serving.client.images import draw, image_bytes, load_image
from shitu.serving.client.results import (
    Box,
    Embeddings,
    GalleryInfo,
    GalleryItem,
    ImageDetections,
    ImageRecognitions,
    ImageResult,
    Scenario,
    SearchHits,
)
from shitu.serving.results import Match, Recognition

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEFAULT_RETURN_K",
    "DEFAULT_URL",
    "MAX_MATCHES",
    "RETRY_HTTP_STATUSES",
    "VECTOR_BATCH",
    "AsyncShituClient",
    "Box",
    "ConnectionFailed",
    "Embeddings",
    "GalleryInfo",
    "GalleryItem",
    "ImageDetections",
    "ImageFailed",
    "ImageRecognitions",
    "ImageResult",
    "InputError",
    "Match",
    "Recognition",
    "Scenario",
    "SearchHits",
    "ServerError",
    "ShituClient",
    "ShituError",
    "Timeout",
    "draw",
    "image_bytes",
    "load_image",
]


class _RetryPerCall(HTTPAdapter):
    """requests' adapter with the urllib3 ``Retry`` of the call the calling thread is making (safe and unsafe
    operations share one session and its keep-alive connections)."""

    def __init__(self, chosen: threading.local):
        self._chosen = chosen
        super().__init__()

    @property
    def max_retries(self) -> Retry:
        return getattr(self._chosen, "retry", None) or Retry(0, read=False)

    @max_retries.setter
    def max_retries(self, value: Retry) -> None:  # HTTPAdapter.__init__ sets a default: the call's wins
        pass


class ShituClient(Core[requests.Session]):
    """A shitu-hub server's four modules as methods, over ``requests``. Thread-safe (one keep-alive session per
    thread).

    ``base_url``: the server (``http://host:8866``); ``timeout``: seconds per request (or ``(connect, read)``);
    ``retries``: extra attempts for safe operations; ``token``: admin token for gallery changes (sent as
    ``Authorization: Bearer``); ``batch_size``: images per request; ``scenario`` / ``gallery`` / ``params``:
    defaults for every call; ``backoff`` / ``max_backoff``: the retries' waits; ``max_batch_bytes``: encoded image
    bytes per request (keep under the server's ``Limits.max_request_bytes``, 64 MiB by default); ``image_format``
    (``"jpeg"`` / ``"png"``) and ``jpeg_quality``: how numpy and PIL images are encoded; ``session``: a
    ``requests.Session`` to use (proxies, certificates) instead of the client's own per-thread sessions (the client
    mounts its retrying adapter on it for ``base_url``); ``max_queries`` / ``max_matches``: the server's ``Limits``
    of the same names (embedding rows per request; rows x ``return_k`` per search), when not the defaults: vectors
    are sent in requests that fit them.
    """

    def _setup(self) -> None:
        self._chosen = threading.local()  # the Retry of the call this thread is making
        if self._given is not None:
            self._given.mount(self.base_url + "/", _RetryPerCall(self._chosen))
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        if self._given is not None:
            return self._given
        s: requests.Session | None = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.mount(self.base_url + "/", _RetryPerCall(self._chosen))
            with self._lock:
                self._sessions.append(s)
            self._local.session = s
        return s

    def close(self) -> None:
        """Close the keep-alive connections (the client stays usable: new ones open on the next call)."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            s.close()
        self._local = threading.local()

    def __enter__(self) -> ShituClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, op: Operation[T]) -> T:
        try:
            call = next(op)
            while True:
                try:
                    result = unwrap(call, self._send(call))
                except CLIENT_ERRORS as exc:
                    call = op.throw(exc)
                else:
                    call = op.send(result)
        except StopIteration as stop:
            value: T = stop.value
            return value

    def _send(self, call: Call) -> Answer:
        url = self.base_url + call.path
        policy = self._chosen.retry = self.retry(call)
        try:
            if call.body is None:
                resp = self._session().get(url, timeout=self.timeout)
            else:
                resp = self._session().post(url, data=call.body, headers=self._headers, timeout=self.timeout)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            cause = exc.args[0] if exc.args else None
            exhausted = isinstance(cause, MaxRetryError)  # every retry the policy allows was made
            reason = cause.reason if isinstance(cause, MaxRetryError) else cause
            timed_out = isinstance(exc, requests.exceptions.Timeout) or (
                isinstance(reason, (ReadTimeoutError, ConnectTimeoutError))
                and not isinstance(reason, NewConnectionError)
            )
            attempts = 1 + int(policy.total or 0) if exhausted else 1
            raise failure(url, timed_out, attempts, str(exc), self.timeout) from exc
        except requests.RequestException as exc:
            raise ConnectionFailed(f"{url}: {exc}", url) from exc
        finally:
            self._chosen.retry = None
        return Answer(resp.status_code, resp.text, resp.headers, resp.reason or "")


class AsyncShituClient(Core["httpx.AsyncClient"]):
    """``await``-able twin of :class:`ShituClient` (same arguments and methods) over one ``httpx.AsyncClient``:
    many calls may be in flight at once on one event loop, with no threads. ``session``: an ``httpx.AsyncClient``
    to use instead of the client's own. Retries follow the same urllib3 ``Retry`` policies, waited with
    ``asyncio.sleep``. Images are read and encoded on the event loop."""

    def _setup(self) -> None:
        self._http, self._own = self._given, self._given is None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            import httpx

            connect, read = self.timeout if isinstance(self.timeout, tuple) else (self.timeout, self.timeout)
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(read, connect=connect))
        return self._http

    async def close(self) -> None:
        """Close the client's own connections (a ``session`` given to it is the caller's to close)."""
        if self._own and self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def __aenter__(self) -> AsyncShituClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, op: Operation[T]) -> T:
        try:
            call = next(op)
            while True:
                try:
                    result = unwrap(call, await self._send(call))
                except CLIENT_ERRORS as exc:
                    call = op.throw(exc)
                else:
                    call = op.send(result)
        except StopIteration as stop:
            value: T = stop.value
            return value

    async def _send(self, call: Call) -> Answer:
        import httpx
        from urllib3 import HTTPResponse

        url = self.base_url + call.path
        method = "GET" if call.body is None else "POST"
        headers = self._headers if call.body is not None else None
        retry, attempts = self.retry(call), 0
        while True:
            attempts += 1
            try:
                resp = await self._client().request(method, url, content=call.body, headers=headers)
            except httpx.TransportError as exc:
                connecting = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                error = ConnectTimeoutError(str(exc)) if connecting else ProtocolError(str(exc))
                try:
                    retry = retry.increment(method, url, error=error)
                except (MaxRetryError, ConnectTimeoutError, ProtocolError):
                    timed_out = isinstance(exc, httpx.TimeoutException)
                    raise failure(url, timed_out, attempts, str(exc) or type(exc).__name__, self.timeout) from exc
            else:
                answer = Answer(resp.status_code, resp.text, resp.headers, resp.reason_phrase)
                if not retry.is_retry(method, resp.status_code):
                    return answer
                try:
                    retry = retry.increment(method, url, response=HTTPResponse(status=resp.status_code))
                except MaxRetryError:
                    return answer
            await asyncio.sleep(retry.get_backoff_time())
