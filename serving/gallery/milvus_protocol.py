"""How a Milvus gallery talks to its server: where (URI, credentials), what (index types, filter expressions,
binary fields) and how its failures read.

A gallery is named by a URI ``milvus://host:port/collection`` (port 19530 by default, ``?timeout=S`` per call,
10 s by default). Credentials come from the environment, never from the URI: ``SHITU_MILVUS_TOKEN``
(``user:password`` or an API key), or ``SHITU_MILVUS_USER`` + ``SHITU_MILVUS_PASSWORD``; ``SHITU_MILVUS_SECURE=1``
uses TLS. A call the server does not answer (down, restarting, timing out) raises :class:`MilvusUnavailable`
naming the gallery and the cause.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from shitu.serving.gallery.errors import GalleryError, MilvusUnavailable

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "MilvusTarget",
    "binary_bytes",
    "connect",
    "filter_in",
    "guarded",
    "index_params",
    "parse_uri",
    "reason",
    "settings_json",
    "settings_of",
    "token",
]

DEFAULT_PORT = 19530
DEFAULT_TIMEOUT = 10.0
_URI = re.compile(
    r"^milvus://(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d{1,5}))?"
    r"/(?P<collection>[^/?#]+)(?:\?timeout=(?P<timeout>\d+(?:\.\d+)?))?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class MilvusTarget:
    """Where a gallery lives: server and collection (credentials are read from the environment)."""

    host: str
    port: int
    collection: str
    timeout: float = DEFAULT_TIMEOUT

    @property
    def call_timeout(self) -> int:
        """Seconds per call, as an int: pymilvus bounds its retries by ``timeout`` only when it is an int."""
        return max(1, math.ceil(self.timeout))

    @property
    def uri(self) -> str:
        return f"milvus://{self.host}:{self.port}/{self.collection}"

    @property
    def endpoint(self) -> str:
        scheme = "https" if os.environ.get("SHITU_MILVUS_SECURE", "") in ("1", "true", "yes") else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def with_collection(self, name: str) -> MilvusTarget:
        """The same server, collection ``name`` (gallery names' ``-`` and ``.`` become ``_``)."""
        return replace(self, collection=_collection_name(name))


def _collection_name(name: str) -> str:
    coll = re.sub(r"[-.]", "_", name)
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$", coll):
        coll = "g_" + coll
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$", coll):
        raise GalleryError(f"invalid Milvus collection name {name!r}: letters, digits and '_' (first not a digit)")
    return coll


def parse_uri(uri: str) -> MilvusTarget:
    """``milvus://host[:port]/collection[?timeout=S]`` -> :class:`MilvusTarget`; GalleryError if malformed."""
    m = _URI.match(str(uri).strip())
    if not m:
        raise GalleryError(
            f"not a Milvus gallery URI: {uri!r} (expected milvus://host:port/collection; "
            "credentials go in SHITU_MILVUS_TOKEN, not in the URI)"
        )
    port = int(m["port"] or DEFAULT_PORT)
    if not 0 < port < 65536:
        raise GalleryError(f"{uri!r}: port {port} out of range")
    timeout = float(m["timeout"]) if m["timeout"] else DEFAULT_TIMEOUT
    return MilvusTarget(m["host"], port, _collection_name(m["collection"]), timeout)


def token() -> str:
    """The Milvus credentials from the environment (empty: none)."""
    token = os.environ.get("SHITU_MILVUS_TOKEN", "")
    if not token and os.environ.get("SHITU_MILVUS_USER"):
        token = f"{os.environ['SHITU_MILVUS_USER']}:{os.environ.get('SHITU_MILVUS_PASSWORD', '')}"
    return token


def reason(e: BaseException) -> str:
    """A server error in one line (for messages)."""
    msg = getattr(e, "message", None) or str(e) or type(e).__name__
    return re.sub(r"\s+", " ", str(msg))[:300]


def guarded(target: MilvusTarget, fn: Callable[[], Any]) -> Any:
    """Run one pymilvus call; its server-side failures become :class:`MilvusUnavailable` naming the gallery."""
    try:
        from pymilvus.exceptions import MilvusException
    except ImportError:  # pragma: no cover - checked on connect
        MilvusException = Exception
    try:
        return fn()
    except GalleryError:
        raise
    except (MilvusException, ConnectionError, TimeoutError, OSError) as e:
        raise MilvusUnavailable(f"Milvus gallery {target.collection!r} is unavailable: {reason(e)}") from None
    except Exception as e:  # grpc.RpcError and friends
        if type(e).__module__.startswith(("grpc", "pymilvus")):
            raise MilvusUnavailable(f"Milvus gallery {target.collection!r} is unavailable: {reason(e)}") from None
        raise


def index_params(index_method: str, metric: str, binary: bool) -> tuple[str, dict[str, Any]]:
    """``IndexProcess.index_method`` -> (Milvus index type, build params): ``Flat`` -> FLAT (BIN_FLAT),
    ``IVF<n>...`` -> IVF_FLAT (BIN_IVF_FLAT) with ``nlist`` n, ``HNSW<M>`` -> HNSW. (Metrics: ``IP`` and ``cosine``
    -> IP, ``L2`` -> L2, ``hamming`` -> HAMMING.)"""
    method = index_method.strip().upper()
    if method.startswith("FLAT"):
        return ("BIN_FLAT" if binary else "FLAT"), {}
    m = re.match(r"^IVF(\d*)", method)
    if m:
        return ("BIN_IVF_FLAT" if binary else "IVF_FLAT"), {"nlist": int(m.group(1) or 128)}
    m = re.match(r"^HNSW(\d*)", method)
    if m and not binary:
        return "HNSW", {"M": int(m.group(1) or 32), "efConstruction": 40}
    raise GalleryError(
        f"index_method {index_method!r} has no Milvus equivalent for {metric} galleries: use Flat, "
        "IVF<nlist> or HNSW<M> (HNSW: float vectors only)"
    )


def filter_in(field: str, values: Sequence[Any]) -> str:
    """``field in [...]`` with each value as a Milvus literal (strings JSON-escaped)."""
    return f"{field} in [{', '.join(json.dumps(v, ensure_ascii=False) for v in values)}]"


def binary_bytes(v: Any) -> bytes:
    """A BINARY_VECTOR field as pymilvus returns it (bytes, or a one-element list of bytes)."""
    if isinstance(v, (list, tuple)):
        v = v[0]
    return bytes(v)


#: The collection property (and, for servers without properties, the description) holding a gallery's settings.
SETTINGS_PROPERTY = "shitu.gallery"


def settings_json(settings: dict[str, Any]) -> dict[str, str]:
    """The collection properties that record ``settings``."""
    return {SETTINGS_PROPERTY: json.dumps(settings, sort_keys=True)}


def settings_of(desc: dict[str, Any]) -> dict[str, Any] | None:
    """The gallery settings a collection's description holds; None when it is not a shitu-hub gallery."""
    try:
        settings = json.loads((desc.get("properties") or {}).get(SETTINGS_PROPERTY) or desc.get("description") or "")
    except ValueError:
        return None
    return settings if isinstance(settings, dict) and "dim" in settings and "metric" in settings else None


def connect(target: MilvusTarget) -> Any:
    """A ``pymilvus.MilvusClient`` for ``target`` (GalleryError without pymilvus, MilvusUnavailable unreachable)."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise GalleryError('Milvus galleries need pymilvus: pip install "shitu-hub[milvus]"') from None
    try:
        return MilvusClient(uri=target.endpoint, token=token(), timeout=target.call_timeout)
    except Exception as e:  # pymilvus raises its own and grpc's errors
        raise MilvusUnavailable(
            f"cannot reach the Milvus server of gallery {target.collection!r}: {reason(e)}"
        ) from None
