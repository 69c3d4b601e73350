"""Serving so that slow or idle clients cost a bounded amount and never starve the others.

PaddleHub 2.4 serves either with Werkzeug (single process, ``threaded=False``: one idle socket blocks the server)
or with gunicorn's default *sync* workers (one idle or slow socket blocks a whole worker until the arbiter kills
it). This module replaces both transports, keeping PaddleHub's app and its ``config.json``:

- **single process** (``hub serving start -m ...``): :func:`serve_single` runs the same Flask app on a threaded
  Werkzeug server holding at most ``Limits.max_connections`` connections (more are answered ``503`` at once);
- **multi-process** (``use_multiprocess``): :func:`gunicorn_settings` selects :class:`ThreadWorker` (gunicorn's
  ``gthread`` worker, ``Limits.max_connections`` threads per worker), bounded keep-alive, and puts gunicorn's
  control socket under ``$HUB_HOME`` instead of the user's shared ``~/.gunicorn``;
- **both**: from its first byte, a request (headers and body) must arrive within ``Limits.request_timeout``
  seconds. A :class:`Watchdog` thread shuts the reading side of a socket whose deadline passed, which wakes the
  thread blocked on it whatever the server; :class:`BodyReader` reads the whole body before the app runs and
  answers a late one with a ``408`` envelope, an oversized (also chunked) one with ``413``. Then the module
  works on the process's one compute thread (requests of a process run one at a time, as before), while
  ``/health`` answers on the connection's own thread. Once the answer is ready the client has
  ``Limits.response_timeout`` seconds to take all of it: past that the watchdog shuts both sides of the socket,
  which wakes the thread blocked writing to a client that does not read (it would hold that thread for good).

Both listen on ``127.0.0.1`` unless told otherwise (:data:`HOST_ENV`, ``init_args`` ``host``,
``shitu serve --host``).
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from shitu.serving.hub import browsers, envelopes, request_log

#: Environment variable naming the address to listen on (default loopback only).
HOST_ENV = "SHITU_HOST"
DEFAULT_HOST = "127.0.0.1"
#: Seconds a kept-alive connection may stay idle between requests (gunicorn ``keepalive``).
KEEPALIVE_S = 5
#: gunicorn worker heartbeat timeout (a gthread worker's main loop beats while its threads work).
WORKER_TIMEOUT_S = 120

log = logging.getLogger("shitu.serving")


class Settings:
    """What the served modules asked for (set while PaddleHub creates them, read when it starts serving)."""

    configured = False
    host: str | None = None
    #: Whether some served module has no admin token (its galleries can be changed by anyone who connects).
    open_writes = False
    #: Admin tokens of the served modules that protect reads (``protect_reads``).
    read_tokens: list[str] = []
    request_timeout: float = 20.0
    response_timeout: float = 120.0
    max_connections: int = 64
    #: ``Limits.max_request_bytes``: a declared ``Content-Length`` over it is refused before any byte is read.
    max_request_bytes: int = 64 * 1024 * 1024
    #: ``Limits.min_free_disk_bytes``: below it ``/health`` reports the disk full (:func:`shitu.serving.hub.app.degraded`).
    min_free_disk_bytes: int = 64 * 1024 * 1024


SETTINGS = Settings()


def configure(params: Any) -> None:
    """Record a served module's ``Limits`` (the most generous module wins)."""
    timeout, connections = float(params["Limits.request_timeout"]), int(params["Limits.max_connections"])
    answer = float(params["Limits.response_timeout"])
    if SETTINGS.configured:
        timeout, connections = max(timeout, SETTINGS.request_timeout), max(connections, SETTINGS.max_connections)
        answer = max(answer, SETTINGS.response_timeout)
    body = int(params["Limits.max_request_bytes"])
    if SETTINGS.configured:
        body = max(body, SETTINGS.max_request_bytes)
    SETTINGS.request_timeout, SETTINGS.max_connections, SETTINGS.configured = timeout, connections, True
    SETTINGS.response_timeout, SETTINGS.max_request_bytes = answer, body
    SETTINGS.min_free_disk_bytes = int(params["Limits.min_free_disk_bytes"])
    browsers.configure(params)


def note_token(token: str | None, protect_reads: bool = False) -> None:
    """Record whether a served module has an admin token (for :func:`warn_if_exposed` at start), and the token of a
    module that protects reads (``GET /metrics`` then needs one of them: :func:`metrics_allowed`)."""
    SETTINGS.open_writes = SETTINGS.open_writes or not token
    if protect_reads and token:
        SETTINGS.read_tokens.append(token)


def bearer_token() -> str | None:
    """The ``Authorization: Bearer`` token of the current HTTP request, when served by Flask."""
    try:
        from flask import has_request_context, request

        if has_request_context():
            auth = request.headers.get("Authorization", "")
            if auth.lower().startswith("bearer "):
                return auth[7:].strip()
    except ImportError:
        pass
    return None


def metrics_allowed(bearer: str | None) -> bool:
    """Whether a scrape with this ``Authorization: Bearer`` token may read ``/metrics``: always, unless a served
    module protects reads (its metrics name its galleries and count their items); then only with such a token."""
    if not SETTINGS.read_tokens:
        return True
    return isinstance(bearer, str) and any(
        hmac.compare_digest(bearer.encode(), t.encode()) for t in SETTINGS.read_tokens
    )


def _warn_exposed(host: str) -> None:
    warning = warn_if_exposed(host, not SETTINGS.open_writes)
    if warning:
        log.warning(warning)


def set_host(host: str | None) -> None:
    """The address to listen on, from a module's ``init_args`` ``host`` (default: ``$SHITU_HOST``, loopback)."""
    if host is not None:
        if not isinstance(host, str) or not host or any(c.isspace() for c in host):
            raise ValueError(f"init_args 'host' must be an address such as 127.0.0.1 or 0.0.0.0, got {host!r}")
        SETTINGS.host = host


def listen_host() -> str:
    return SETTINGS.host or os.environ.get(HOST_ENV) or DEFAULT_HOST


def warn_if_exposed(host: str, has_token: bool) -> str | None:
    """The warning to print when listening beyond loopback without an admin token (None when fine)."""
    if host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.") or has_token:
        return None
    return (
        f"WARNING: listening on {host} without an admin token: anyone who can reach this address can add to "
        "and remove from the galleries. Set a token (shitu serve --token, init_args token or "
        "SHITU_ADMIN_TOKEN) or listen on 127.0.0.1."
    )


# -- deadlines ---------------------------------------------------------------------------------------------------
class _Entry:
    __slots__ = ("sock", "deadline", "expired", "how")

    def __init__(self, sock: socket.socket, deadline: float, how: int = socket.SHUT_RD):
        self.sock, self.deadline, self.expired, self.how = sock, deadline, False, how


class Watchdog:
    """Shuts the reading side of sockets whose request did not arrive in time, and both sides of sockets whose
    answer was not taken in time (one thread per process)."""

    def __init__(self, tick: float = 0.2):
        self._tick = tick
        self._entries: set[_Entry] = set()
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._local = threading.local()

    def arm(self, sock: socket.socket, seconds: float, how: int = socket.SHUT_RD) -> _Entry:
        """Start the deadline of the request now read from ``sock`` by this thread (``how``: what to shut then)."""
        entry = _Entry(sock, time.monotonic() + seconds, how)
        with self._lock:
            if self._pid != os.getpid():  # first use in this process (gunicorn forks after import)
                self._pid = os.getpid()
                self._entries = set()
                threading.Thread(target=self._run, name="shitu-read-deadlines", daemon=True).start()
            self._entries.add(entry)
        self._local.entry = entry
        self._local.sock = sock
        return entry

    def done(self) -> None:
        """This thread's request is over: stop its answer's deadline, if one was started, and forget its socket."""
        self.disarm()
        self._local.sock = None

    def arm_answer(self, seconds: float) -> None:
        """Start the deadline for this thread's client to take its answer (the socket of this thread's last
        :meth:`arm`): past it both sides are shut, which fails a write blocked on a client that does not read."""
        sock = getattr(self._local, "sock", None)
        if sock is None:
            return
        self.disarm()
        self.arm(sock, seconds, socket.SHUT_RDWR)

    def disarm(self, entry: _Entry | None = None) -> bool:
        """Stop the deadline (default: this thread's); True when it had already passed."""
        entry = entry or getattr(self._local, "entry", None)
        if entry is None:
            return False
        with self._lock:
            self._entries.discard(entry)
        if getattr(self._local, "entry", None) is entry:
            self._local.entry = None
        return entry.expired

    def _run(self) -> None:
        while True:
            time.sleep(self._tick)
            now = time.monotonic()
            with self._lock:
                late = [e for e in self._entries if e.deadline <= now]
                self._entries.difference_update(late)
            for e in late:
                e.expired = True
                try:  # SHUT_RD wakes a recv blocked on it (an answer can still be written); SHUT_RDWR a send too
                    e.sock.shutdown(e.how)
                except OSError:
                    pass


WATCHDOG = Watchdog()


#: Called with ``(environ, http code, message, request id)`` for each request refused before the app runs (the
#: request log and the metrics of :mod:`.observability` register here).
REFUSAL_HOOKS: list[Callable[[dict[str, Any], int, str, str], None]] = []
#: The environ key holding the request id chosen before the app runs (the app's request hooks use the same one).
RID_KEY = "shitu.request_id"


def request_id_of(environ: dict[str, Any]) -> str:
    """This request's id: the client's ``X-Request-ID`` when acceptable, else a new one (chosen once per request)."""
    rid = environ.get(RID_KEY)
    if rid is None:
        rid = environ[RID_KEY] = request_log.new_request_id(environ.get("HTTP_X_REQUEST_ID"))
    return str(rid)


def _envelope_response(
    start_response: Callable, code: int, reason: str, msg: str, environ: dict[str, Any] | None = None
) -> list[bytes]:
    """The route's error envelope (:mod:`.envelopes`) with its request id. No ``Connection`` header: Werkzeug closes
    every connection itself, gunicorn decides (it drops hop-by-hop headers of the app)."""
    environ = environ if environ is not None else {}
    rid = request_id_of(environ)
    body = envelopes.error_body(environ.get("PATH_INFO", ""), code, msg, rid)
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), (request_log.HEADER, rid)]
    start_response(f"{code} {reason}", headers + browsers.cors_headers(environ))
    for hook in REFUSAL_HOOKS:
        try:
            hook(environ, code, msg, rid)
        except Exception:  # noqa: BLE001 - a metric or a log line must never fail the answer
            log.debug("refusal hook failed", exc_info=True)
    return [body]


def too_large_message(limit: int) -> str:
    return f"the request body is larger than the limit of {limit} bytes (Limits.max_request_bytes)"


def declared_too_large(content_length: str | None, limit: int) -> bool:
    """Whether a declared ``Content-Length`` is over ``limit`` (checked before a byte of the body is read, and before
    ``100 Continue`` is sent)."""
    value = (content_length or "").strip()
    return value.isdigit() and (len(value) > 20 or int(value) > limit)


class BodyReader:
    """WSGI middleware: the whole body is read (under the request deadline, within the size limit) before the app.

    The app then sees a complete in-memory body, so a slow client can hold a connection only until its deadline
    and never while a module works.
    """

    def __init__(self, app: Callable, max_bytes: Callable[[], int]):
        self.app = app
        self._max_bytes = max_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
        from werkzeug.wsgi import get_input_stream

        limit = self._max_bytes()
        refused = browsers.refusal(environ, listen_host())
        if refused is not None:
            WATCHDOG.disarm()
            code, msg = refused
            return _envelope_response(start_response, code, envelopes.reason(code), msg, environ)
        preflight = browsers.preflight_headers(environ)
        if preflight is not None:
            WATCHDOG.disarm()
            start_response("204 No Content", preflight + [(request_log.HEADER, request_id_of(environ))])
            return [b""]
        if declared_too_large(environ.get("CONTENT_LENGTH"), limit):
            WATCHDOG.disarm()
            return _envelope_response(start_response, 413, "Content Too Large", too_large_message(limit), environ)
        data = b""
        try:
            stream = get_input_stream(environ, max_content_length=limit)
            chunks, total = [], 0
            while True:
                chunk = stream.read(min(1 << 16, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise RequestEntityTooLarge()
            data = b"".join(chunks)
            declared = environ.get("CONTENT_LENGTH")
            if declared and declared.isdigit() and len(data) < int(declared):
                raise EOFError
        except RequestEntityTooLarge:
            WATCHDOG.disarm()
            return _envelope_response(start_response, 413, "Content Too Large", too_large_message(limit), environ)
        except (EOFError, OSError, ValueError, ClientDisconnected) as exc:
            expired = WATCHDOG.disarm()
            if expired or isinstance(exc, (socket.timeout, TimeoutError)):
                return _envelope_response(
                    start_response,
                    408,
                    "Request Timeout",
                    f"the request did not arrive within {SETTINGS.request_timeout:g} s",
                    environ,
                )
            return _envelope_response(start_response, 400, "Bad Request", "the request body is incomplete", environ)
        if WATCHDOG.disarm():  # the deadline passed just as the last byte came
            return _envelope_response(
                start_response,
                408,
                "Request Timeout",
                f"the request did not arrive within {SETTINGS.request_timeout:g} s",
                environ,
            )
        path = environ.get("PATH_INFO", "")
        predict = path.startswith("/predict/")
        if predict and "json" in environ.get("CONTENT_TYPE", "") and data.strip() and data.lstrip()[:1] != b"{":
            return _envelope_response(
                start_response, 400, "Bad Request", "the request body must be a JSON object", environ
            )
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input_terminated"] = True
        cors = browsers.cors_headers(environ)
        if cors:  # an allowed foreign origin (Limits.allowed_origins)

            def start_response(status: str, headers: list, exc_info: Any = None, _inner: Callable = start_response):  # type: ignore[no-redef]
                return _inner(status, list(headers) + cors, exc_info)

        if path in _LIGHT_PATHS or path.startswith("/web/"):  # answer at once, whatever the modules are doing
            answer = self.app(environ, start_response)
        else:
            answer = list(_compute().submit(lambda: list(self.app(environ, start_response))).result())
        WATCHDOG.arm_answer(SETTINGS.response_timeout)  # the server writes it after this returns
        return answer


#: Paths answered on the connection's own thread: they run no model (every other path, the peer APIs included,
#: runs on the compute thread, where the paddle predictors live).
_LIGHT_PATHS = frozenset({"/", "/health", "/metrics", "/web"})
_executor: tuple[int, Any] | None = None
_executor_lock = threading.Lock()


def _compute() -> Any:
    """This process's single compute thread: module work runs there, one request at a time, as with PaddleHub's
    own servers (paddle predictors keep per-thread state; many threads would multiply their memory and break)."""
    global _executor
    with _executor_lock:
        if _executor is None or _executor[0] != os.getpid():
            from concurrent.futures import ThreadPoolExecutor

            _executor = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="shitu-compute"))
        return _executor[1]


# -- single process: threaded Werkzeug ---------------------------------------------------------------------------
_HTTP_MESSAGES = {
    400: "the request is not valid HTTP",
    414: "the request line (method and URL) is too long",
    431: "the request headers are too many or too long",
}


def _http_message(code: int, detail: str | None = None) -> str:
    base = _HTTP_MESSAGES.get(code, envelopes.reason(code).lower())
    return f"{base} ({detail[:200]})" if detail and code not in (414, 431) else base


_BUSY_BODY = json.dumps({"status": "503", "msg": "too many open connections; retry", "results": ""}).encode()
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    + f"Content-Length: {len(_BUSY_BODY)}\r\n\r\n".encode()
    + _BUSY_BODY
)


def _werkzeug_classes() -> tuple[type, type]:
    from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

    class DeadlineHandler(WSGIRequestHandler):
        """Each request must arrive within ``Limits.request_timeout`` of the handler starting to read it."""

        def setup(self) -> None:
            self.timeout = SETTINGS.request_timeout  # per-read socket timeout as well
            super().setup()

        def handle_expect_100(self) -> bool:
            """http.server's ``Expect: 100-continue``: a declared body over the limit is refused at once (``413``),
            else nothing is sent here (Werkzeug's ``run_wsgi`` sends the one ``100 Continue``)."""
            if declared_too_large(self.headers.get("Content-Length"), SETTINGS.max_request_bytes):
                self._refuse_too_large()
                return False
            return True

        def _refuse_too_large(self) -> None:
            self.close_connection = True
            path = self.path.partition("?")[0]
            rid = request_log.new_request_id(self.headers.get(request_log.HEADER))
            msg = too_large_message(SETTINGS.max_request_bytes)
            self.wfile.write(envelopes.raw_response(413, path, msg, rid))

        def run_wsgi(self) -> None:
            """A declared body over the limit is refused before Werkzeug sends ``100 Continue`` (or reads it)."""
            if declared_too_large(self.headers.get("Content-Length"), SETTINGS.max_request_bytes):
                self._refuse_too_large()
                return
            super().run_wsgi()

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """http.server's own refusals (``414`` request line, ``431`` headers, ``400``...) as JSON envelopes."""
            self.close_connection = True
            path = str(getattr(self, "path", "") or "").partition("?")[0]
            rid = request_log.new_request_id()
            self.log_error("code %d, message %s", code, message)
            self.wfile.write(envelopes.raw_response(code, path, _http_message(code, message), rid))

        def handle_one_request(self) -> None:
            entry = WATCHDOG.arm(self.connection, SETTINGS.request_timeout)
            try:
                super().handle_one_request()
            finally:
                WATCHDOG.disarm(entry)
                WATCHDOG.done()  # the answer's deadline, if one was started

    class BoundedServer(ThreadedWSGIServer):
        """One thread per connection, at most ``Limits.max_connections`` at a time."""

        daemon_threads = True
        block_on_close = False

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._slots = threading.BoundedSemaphore(SETTINGS.max_connections)

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self._slots.acquire(blocking=False):
                try:
                    request.sendall(_BUSY)
                except OSError:
                    pass
                self.shutdown_request(request)
                return
            try:
                super().process_request(request, client_address)
            except Exception:
                self._slots.release()
                raise

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self._slots.release()

    return DeadlineHandler, BoundedServer


def serve_single(app: Any, port: int) -> None:
    """Serve ``app`` on ``listen_host():port`` until interrupted (replaces PaddleHub's ``threaded=False`` run)."""
    handler, server_class = _werkzeug_classes()
    host = listen_host()
    server = server_class(host, int(port), app, handler=handler)
    _warn_exposed(host)
    log.warning(
        "serving on http://%s:%s (threaded, %d connections, requests within %g s)",
        host,
        port,
        SETTINGS.max_connections,
        SETTINGS.request_timeout,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# -- multi-process: gunicorn gthread -----------------------------------------------------------------------------
def _thread_worker_class() -> type:
    from gunicorn.workers.gthread import ThreadWorker as GThreadWorker

    class ThreadWorker(GThreadWorker):
        """gunicorn's gthread worker with a read deadline on every request and a deadline on taking its answer; a
        declared body over the limit is refused before gunicorn sends ``100 Continue`` or reads it."""

        def handle_request(self, req: Any, conn: Any) -> Any:
            declared = next((v for k, v in req.headers if k == "CONTENT-LENGTH"), None)
            if declared_too_large(declared, SETTINGS.max_request_bytes):
                given = next((v for k, v in req.headers if k == request_log.HEADER.upper()), None)
                msg = too_large_message(SETTINGS.max_request_bytes)
                answer = envelopes.raw_response(413, req.path or "", msg, request_log.new_request_id(given))
                conn.sock.sendall(answer)
                return False  # close: the body is never read
            return super().handle_request(req, conn)

        def handle(self, conn: Any) -> Any:
            entry = WATCHDOG.arm(conn.sock, SETTINGS.request_timeout)
            try:
                return super().handle(conn)
            finally:
                WATCHDOG.disarm(entry)
                WATCHDOG.done()  # the answer's deadline, if one was started

    return ThreadWorker


def __getattr__(name: str) -> Any:  # gunicorn loads the worker class by its dotted name
    if name == "ThreadWorker":
        return _thread_worker_class()
    raise AttributeError(name)


def server_home() -> Path:
    """Where this server keeps its state: ``$HUB_HOME`` (PaddleHub's home), never a folder shared by all servers."""
    return Path(os.environ.get("HUB_HOME", Path.home() / ".paddlehub"))


def gunicorn_settings(port: int | str) -> dict[str, Any]:
    """Settings forced onto PaddleHub's gunicorn application."""
    ctl = server_home() / "gunicorn" / f"serving-{port}.ctl"
    ctl.parent.mkdir(parents=True, exist_ok=True)
    return {
        "bind": f"[{listen_host()}]:{port}" if ":" in listen_host() else f"{listen_host()}:{port}",  # IPv6 in []
        "worker_class": f"{__name__}.ThreadWorker",
        "threads": SETTINGS.max_connections,
        "worker_connections": SETTINGS.max_connections * 2,
        "keepalive": KEEPALIVE_S,
        "timeout": WORKER_TIMEOUT_S,
        "control_socket": str(ctl),
    }


def install_gunicorn() -> None:
    """Make PaddleHub's gunicorn application use :func:`gunicorn_settings` (idempotent)."""
    try:
        from paddlehub.serving.http_server import StandaloneApplication
    except ImportError:
        return
    if getattr(StandaloneApplication, "_shitu_hardened", False):
        return
    from gunicorn import util as gunicorn_util

    def write_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
        """gunicorn's own refusals (bad request line, ``414``, ``431``...) as JSON envelopes, not HTML."""
        body = envelopes.raw_response(status_int, "", _http_message(status_int, mesg), request_log.new_request_id())
        gunicorn_util.write_nonblock(sock, body)

    gunicorn_util.write_error = write_error
    original = StandaloneApplication.load_config

    def load_config(self: Any) -> None:
        original(self)
        port = str(self.cfg.bind[0]).rpartition(":")[2] if self.cfg.bind else "8866"
        for key, value in gunicorn_settings(port).items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)
        log.warning(
            "serving on http://%s (gunicorn gthread, %s threads per worker, requests within %g s)",
            self.cfg.bind[0],
            SETTINGS.max_connections,
            SETTINGS.request_timeout,
        )
        _warn_exposed(listen_host())

    StandaloneApplication.load_config = load_config
    StandaloneApplication._shitu_hardened = True
