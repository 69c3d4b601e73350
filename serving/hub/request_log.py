"""Request ids and bounded logs for ``hub serving``.

- **Request id**: every request gets one (``X-Request-ID`` from the client when it is 1-128 characters of
  ``[A-Za-z0-9._:-]``, else a new random one). It is answered in the ``X-Request-ID`` header, put into every
  error envelope (``"request_id"``) and into every log line written while the request is handled.
- **Request log**: one line per request in ``$SHITU_LOG_DIR/shitu-requests.log`` (default ``$HUB_HOME/log``):
  time, request id, worker pid, method, path, module, operation, envelope status, HTTP code, milliseconds, images,
  boxes, the error message (truncated). ``SHITU_LOG_FORMAT=json`` writes JSON lines; the default is
  ``key=value`` text. Never logged: request bodies, images, embeddings, tokens, headers.
- **Rotation**: that log, PaddleHub's ``HubServing-<date>.log`` and ``shitu-server.log`` (every message of the
  ``shitu`` and ``PaddleHub`` loggers, tracebacks included) rotate at ``Limits.max_log_bytes`` keeping
  ``Limits.log_backups`` old files. Rotation is safe across gunicorn workers (an ``flock`` around each write;
  a process notices another rotated the file). Every message is cut to :data:`MAX_MESSAGE_CHARS` characters,
  on the console too, so a request echoing 8 MB of input cannot write 8 MB of log.
- **Escaping**: a log line holds no raw control character whatever a client sent (a path with ``%0A``, a label
  with U+2028 or U+202E): every message, every request-log field and every traceback goes through :func:`escape`
  (``\\n``, ``\\x1b``, ``\\u202e``...), in the text and the JSON formats, on the console too; a traceback keeps
  its lines but each one after the first is indented, so no line of it can pass for a record of its own.
- **A full log disk**: a record that cannot be written is dropped; the server says so on stderr once a minute
  (one line, no traceback per request).
"""

from __future__ import annotations

import contextvars
import fcntl
import json
import logging
import logging.handlers
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

__all__ = [
    "REQUEST_ID",
    "HEADER",
    "new_request_id",
    "current_request_id",
    "configure_logs",
    "log_request",
    "LockedRotatingFileHandler",
    "MAX_MESSAGE_CHARS",
    "log_dir",
]

HEADER = "X-Request-ID"
#: Longest log message kept (characters); the rest is replaced by a note of how much was cut.
MAX_MESSAGE_CHARS = 2000
REQUEST_LOG = "shitu-requests.log"
SERVER_LOG = "shitu-server.log"
_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: Seconds between two "cannot write the log" lines on stderr.
WRITE_FAILURE_EVERY_S = 60.0


def escape(text: str, keep_newlines: bool = False) -> str:
    """``text`` without raw control or invisible format characters (C0, DEL, C1, U+2028/9, bidi controls...):
    each is written as its Python escape. With ``keep_newlines`` (tracebacks) a newline stays, and the next line is
    indented."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch == "\n" and keep_newlines:
            out.append("\n    ")
        elif ch == " ":
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


#: The id of the request being handled in this context ("-" outside requests).
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("shitu_request_id", default="-")

_request_logger = logging.getLogger("shitu.requests")
_configured: set[str] = set()


def new_request_id(given: str | None = None) -> str:
    """The client's id when acceptable, else a fresh random one (32 hex characters)."""
    if given and _ID_RE.fullmatch(given):
        return given
    return secrets.token_hex(16)


def current_request_id() -> str:
    return REQUEST_ID.get()


def log_dir() -> Path:
    """``$SHITU_LOG_DIR``, else PaddleHub's log folder ``$HUB_HOME/log``."""
    env = os.environ.get("SHITU_LOG_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("HUB_HOME", Path.home() / ".paddlehub")) / "log"


def _cut(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return f"{text[:MAX_MESSAGE_CHARS]}... [{len(text) - MAX_MESSAGE_CHARS} characters cut]"


def _traceback(text: str) -> str:
    """A traceback for a log: cut, escaped, every line indented (none of them can pass for a record)."""
    return "    " + escape(_cut(text), keep_newlines=True)


class RequestContextFilter(logging.Filter):
    """Adds ``request_id`` to every record and cuts long messages (arguments merged first)."""

    def __init__(self, prefix: bool = False):
        super().__init__()
        self.prefix = prefix  # for foreign formatters that do not print %(request_id)s

    def filter(self, record: logging.LogRecord) -> bool:
        rid = REQUEST_ID.get()
        if getattr(record, "_shitu_done", False):
            return True
        record.request_id = rid
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the record
            message = str(record.msg)
        message = escape(_cut(message))
        if self.prefix and rid != "-":
            message = f"[request_id={rid}] {message}"
        record.msg, record.args = message, None
        if record.exc_info and record.exc_text is None:
            record.exc_text = _traceback(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = _traceback(record.exc_text)
        record._shitu_done = True
        return True


class LockedRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A size-rotated log that several processes may write: each write holds an ``flock`` on ``<log>.lock``, and a
    process reopens the file when another one rotated it meanwhile."""

    def __init__(self, filename: str | os.PathLike, max_bytes: int, backups: int):
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(filename, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
        self._lock_path = f"{self.baseFilename}.lock"
        self._failure_noted = -WRITE_FAILURE_EVERY_S

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        """A record that cannot be written (a full or read-only log disk) is dropped with one line on stderr per
        minute, not logging's traceback per record."""
        import sys

        now = time.monotonic()
        if now - self._failure_noted < WRITE_FAILURE_EVERY_S:
            return
        self._failure_noted = now
        exc = sys.exc_info()[1]
        try:
            sys.stderr.write(f"shitu: cannot write {self.baseFilename} ({exc}); log records are dropped\n")
        except Exception:  # noqa: BLE001 - stderr itself is gone
            pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError:
            self.handleError(record)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.stream is not None:
                try:
                    rotated = os.stat(self.baseFilename).st_ino != os.fstat(self.stream.fileno()).st_ino
                except FileNotFoundError:
                    rotated = True
                if rotated:
                    self.stream.close()
                    self.stream = None  # reopened by emit
            super().emit(record)
        finally:
            os.close(fd)  # releases the lock


def _text_formatter() -> logging.Formatter:
    return logging.Formatter(
        "[%(asctime)s] [%(levelname)s] [pid %(process)d] [request_id=%(request_id)s] %(name)s: %(message)s"
    )


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if fields is not None:
            safe = {k: escape(v) if isinstance(v, str) else v for k, v in fields.items()}
            return json.dumps(safe, ensure_ascii=False, sort_keys=False)
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "pid": record.process,
            "request_id": getattr(record, "request_id", "-"),
            "logger": record.name,
            "message": escape(record.getMessage()),
        }
        if record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


class _RequestTextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        parts = []
        for k, v in fields.items():
            v = "-" if v is None else str(v)
            quote = not v or not v.isprintable() or any(c in v for c in ' ="\\')
            parts.append(f"{k}={escape(json.dumps(v, ensure_ascii=False)) if quote else v}")
        return " ".join(parts)


def configure_logs(paddlehub_file_logger: Any, max_bytes: int, backups: int) -> None:
    """Rotating, request-id-stamped, message-capped logs for this process (idempotent per log folder)."""
    folder = log_dir()
    key = f"{folder}:{max_bytes}:{backups}"
    as_json = os.environ.get("SHITU_LOG_FORMAT", "text").lower() == "json"
    if key not in _configured:
        _configured.add(key)
        request_handler = LockedRotatingFileHandler(folder / REQUEST_LOG, max_bytes, backups)
        request_handler.setFormatter(_JsonFormatter() if as_json else _RequestTextFormatter())
        _request_logger.handlers = [request_handler]
        _request_logger.setLevel(logging.INFO)
        _request_logger.propagate = False
        server_handler = LockedRotatingFileHandler(folder / SERVER_LOG, max_bytes, backups)
        server_handler.setFormatter(_JsonFormatter() if as_json else _text_formatter())
        server_handler.addFilter(RequestContextFilter())
        for name in ("shitu", "PaddleHub"):
            logger = logging.getLogger(name)
            logger.handlers = [h for h in logger.handlers if not isinstance(h, LockedRotatingFileHandler)]
            logger.addHandler(server_handler)
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)
            for h in logger.handlers:  # the console copies: request id in front, long messages cut
                if not any(isinstance(f, RequestContextFilter) for f in h.filters):
                    h.addFilter(RequestContextFilter(prefix=True))
    # PaddleHub's own HubServing-<date>.log: the same file, rotated and capped.
    inner = getattr(paddlehub_file_logger, "logger", paddlehub_file_logger)
    if isinstance(inner, logging.Logger):
        for h in list(inner.handlers):
            if isinstance(h, logging.FileHandler) and not isinstance(h, LockedRotatingFileHandler):
                rotating = LockedRotatingFileHandler(h.baseFilename, max_bytes, backups)
                rotating.setFormatter(h.formatter)
                rotating.addFilter(RequestContextFilter(prefix=True))
                inner.removeHandler(h)
                h.close()
                inner.addHandler(rotating)


def log_request(**fields: Any) -> None:
    """Write the one line of a finished request (``fields`` in order; ``error`` cut to a bounded length)."""
    if fields.get("error"):
        fields["error"] = _cut(str(fields["error"]))[:500]
    record = _request_logger.makeRecord(_request_logger.name, logging.INFO, __file__, 0, "request", None, None)
    record.fields = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() % 1 * 1000):03d}Z",
        **fields,
    }
    _request_logger.handle(record)
