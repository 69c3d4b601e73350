"""What a web page on another site may do with this server: nothing, unless configured (CSRF, DNS rebinding, CORS).

A browser lets any page send a POST to any address (``fetch(url, {mode: "no-cors", body})``) without asking the
server first when the body is ``text/plain`` or a form; it cannot read the answer, but the request is served. And a
page whose DNS name is re-pointed at 127.0.0.1 (DNS rebinding) talks to a loopback server as its *own* origin. So
every request is checked before its body is read (:func:`refusal`):

- ``Host``: its name (port ignored) must be the address the server listens on, a loopback name, or one of
  ``Limits.allowed_hosts`` (``["*"]``: any); with ``allowed_hosts`` null, any name when the server listens on all
  addresses (``0.0.0.0``, ``::``). Else ``403``. ``GET /health`` answers whatever the name.
- ``Origin`` (sent by browsers with every cross-origin request and every POST): on a POST it must be the server's
  own (the ``Host`` the request was sent to) or one of ``Limits.allowed_origins``. Else ``403``. Clients that are
  not browsers send no ``Origin`` and are not concerned.
- Content type of a POST: ``/predict/*`` and the PaddleX routes need ``application/json`` (or ``...+json``) unless
  the request carries an ``Authorization`` header (which a page cannot add without a CORS preflight this server
  does not grant); the Paddle Serving route also accepts none (PaddleClas's client sends none). ``text/plain`` and
  form bodies are refused everywhere (``415``).
- CORS: answered only for ``Limits.allowed_origins`` (preflight ``OPTIONS`` and ``Access-Control-Allow-Origin`` on
  the answers); nothing otherwise.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

__all__ = ["configure", "refusal", "cors_headers", "preflight_headers", "Policy", "POLICY"]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
#: Methods that only read (no Origin or content-type rule; ``Host`` still checked).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Paths answered whatever the ``Host`` (load balancers probe them by address).
HOST_EXEMPT = frozenset({"/health"})
CORS_ALLOW_HEADERS = "Content-Type, Authorization, X-Request-ID"


class Policy:
    """The served modules' ``Limits.allowed_hosts`` / ``allowed_origins`` (the union of what they ask for)."""

    def __init__(self) -> None:
        self.hosts: set[str] | None = None  # None: the default rule
        self.origins: set[str] = set()
        self._lock = threading.Lock()


POLICY = Policy()


def _origin(value: str) -> str:
    """``scheme://host[:port]`` in lower case, without a default port."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return value
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port and port != default else "")


def configure(params: Any) -> None:
    """Record a served module's ``Limits.allowed_hosts`` and ``Limits.allowed_origins``."""
    hosts, origins = params["Limits.allowed_hosts"], params["Limits.allowed_origins"] or []
    with POLICY._lock:
        if hosts is not None:
            POLICY.hosts = (POLICY.hosts or set()) | {str(h).lower().strip("[]") for h in hosts}
        POLICY.origins |= {_origin(o) for o in origins}


def _host_name(host: str) -> str:
    """The name part of a ``Host`` header (``[::1]:8866`` -> ``::1``, ``Example.com:80`` -> ``example.com``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def host_allowed(host: str, listen_host: str) -> bool:
    name = _host_name(host)
    if name in LOOPBACK_NAMES or name.startswith("127.") or name == listen_host.lower().strip("[]"):
        return True  # a foreign page's request carries the page's own name, never these
    if POLICY.hosts is None:
        return listen_host in WILDCARD_HOSTS
    return "*" in POLICY.hosts or name in POLICY.hosts


def _host_port(host: str) -> str | None:
    """The port of a ``Host`` header, None when it names none."""
    host = host.strip()
    if host.startswith("["):
        rest = host.partition("]")[2]
        return rest[1:] if rest.startswith(":") else None
    return host.rpartition(":")[2] if host.count(":") == 1 else None


def _same_origin(origin: str, host: str) -> bool:
    """Whether ``Origin`` names the ``Host`` the request was sent to (a Host without a port: the scheme's default)."""
    try:
        parts = urlsplit(origin.strip())
        default = {"http": 80, "https": 443}.get(parts.scheme.lower())
        port = parts.port or default
    except ValueError:
        return False
    if not parts.hostname or port is None:
        return False
    return parts.hostname.lower() == _host_name(host) and (_host_port(host) or str(default)) == str(port)


def _is_json(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


#: Content types a page may POST cross-site without a preflight (the CORS "simple" ones).
_SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")


def refusal(environ: dict[str, Any], listen_host: str) -> tuple[int, str] | None:
    """``(HTTP code, message)`` when this request must be refused, else None (checked before its body is read)."""
    path = environ.get("PATH_INFO", "")
    host = environ.get("HTTP_HOST", "")
    if path not in HOST_EXEMPT and not host_allowed(host, listen_host):
        return 403, (f"this server does not answer for the host name {_host_name(host)[:100]!r} (Limits.allowed_hosts)")
    method = environ.get("REQUEST_METHOD", "GET").upper()
    if method in SAFE_METHODS:
        return None
    origin = environ.get("HTTP_ORIGIN")
    if origin is not None and not _same_origin(origin, host) and _origin(origin) not in POLICY.origins:
        return 403, (
            f"requests from the web origin {origin[:100]!r} are not allowed (Limits.allowed_origins); this "
            "server takes requests from its own pages and from clients that are not browsers"
        )
    content_type = environ.get("CONTENT_TYPE", "")
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime in _SIMPLE_TYPES:
        return 415, "the request body must be JSON (Content-Type: application/json)"
    needs_json = path.startswith(("/predict/", "/shitu-"))
    if needs_json and not _is_json(content_type) and "HTTP_AUTHORIZATION" not in environ:
        return 415, "the request body must be JSON (Content-Type: application/json)"
    return None


def cors_headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    """CORS headers for an answer to an allowed foreign origin (none otherwise)."""
    origin = environ.get("HTTP_ORIGIN")
    if not origin or _origin(origin) not in POLICY.origins:
        return []
    return [
        ("Access-Control-Allow-Origin", origin),
        ("Vary", "Origin"),
        ("Access-Control-Expose-Headers", "X-Request-ID"),
    ]


def preflight_headers(environ: dict[str, Any]) -> list[tuple[str, str]] | None:
    """The answer headers of a CORS preflight from an allowed origin; None when it is not one (no CORS)."""
    if environ.get("REQUEST_METHOD") != "OPTIONS" or "HTTP_ACCESS_CONTROL_REQUEST_METHOD" not in environ:
        return None
    headers = cors_headers(environ)
    if not headers:
        return None
    return headers + [
        ("Access-Control-Allow-Methods", "GET, POST"),
        ("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS),
        ("Access-Control-Max-Age", "600"),
        ("Content-Length", "0"),
    ]
