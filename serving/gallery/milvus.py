"""A gallery in a Milvus collection: the backend for galleries bigger than one machine (``pip install
"shitu-hub[milvus]"``). How it talks to the server (the URI ``milvus://host:port/collection``, credentials, index
types, filter expressions, a server that does not answer: :class:`MilvusUnavailable`): :mod:`.milvus_protocol`.

One gallery is one collection. Its fields: ``id`` (INT64 primary key, assigned here: stable, JSON-safe below
2**53), ``vector`` (FLOAT_VECTOR, or BINARY_VECTOR for hamming galleries), ``label``, ``source``, ``metadata``
(JSON text), ``content_hash``, ``added_at``, ``updated_at``. The gallery's settings (dimension, metric, index
method, hamming radius) are a collection property (``shitu.gallery``, JSON), so any process that opens the URI
sees the same gallery. Removes are Milvus deletes (no rebuild); an update is an upsert keeping the id. Every read
and search runs at ``Strong`` consistency, so an acknowledged write is seen by the next request to any replica.
Nothing is cached in the process: N serving instances sharing the collection are stateless.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from shitu.serving.gallery.backend import Match
from shitu.serving.gallery.errors import (
    GalleryError,
    GalleryExists,
    GalleryNotFound,
    GalleryReadOnly,
    ItemNotFound,
    MilvusUnavailable,
)
from shitu.serving.gallery.milvus_protocol import (
    MilvusTarget,
    binary_bytes,
    connect,
    filter_in,
    guarded,
    index_params,
    parse_uri,
    settings_json,
    settings_of,
)
from shitu.serving.gallery.validation import (
    DEFAULT_MAX_LABEL_LENGTH,
    check_fields,
    check_label,
    check_radius,
    check_settings,
    check_vectors,
    iso_time,
    metadata_json,
    normal_labels,
)

__all__ = ["MilvusGallery", "MilvusTarget", "MilvusUnavailable", "parse_uri", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_ID_BITS = 53  # ids stay exact in JavaScript numbers
_BATCH = 2000  # rows per insert / ids per query expression
_QUERY_LIMIT = 16384  # Milvus's largest query window (limit + offset)
_MAX_SOURCE = 4096
_INFO_LABELS_UP_TO = 100_000  # info() counts distinct labels (a full read) only up to this many items
_MAX_METADATA = 65535


def _chunks(seq: Sequence[Any], n: int = _BATCH) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class MilvusGallery:
    """A gallery in a Milvus collection, with the methods of the local ``Gallery`` (see the module doc)."""

    _FIELDS = ["id", "label", "source", "metadata", "content_hash", "added_at", "updated_at"]

    def __init__(
        self, target: MilvusTarget, client: Any, settings: dict[str, Any], readonly: bool, max_label_length: int
    ):
        # Private: use create / open.
        self.target = target
        self.path = target.uri  # what the CLI prints; the service drops it from answers
        self.readonly = readonly
        self.max_label_length = int(max_label_length)
        self._client = client
        self._s = settings
        self._binary = settings["metric"] == "hamming"
        self._closed = False
        self.tuning: dict[str, Any] = {"ef_search": 128, "nprobe": None}

    # -- properties ------------------------------------------------------------------------------------------
    dim = property(lambda self: int(self._s["dim"]))
    metric = property(lambda self: str(self._s["metric"]))
    index_method = property(lambda self: str(self._s["index_method"]))
    hamming_radius = property(lambda self: int(self._s["hamming_radius"]))
    higher_is_better = property(lambda self: self._s["metric"] == "IP")
    normalize = property(lambda self: bool(self._s["normalize"]))

    # -- connecting ----------------------------------------------------------------------------------------------
    @classmethod
    def exists(cls, uri: str) -> bool:
        target = parse_uri(uri)
        client = connect(target)
        try:
            return bool(guarded(target, lambda: client.has_collection(target.collection, timeout=target.call_timeout)))
        finally:
            client.close()

    @classmethod
    def create(
        cls,
        uri: str,
        dim: int,
        index_method: str = "HNSW32",
        dist_type: str = "IP",
        hamming_radius: int = 100,
        exist_ok: bool = False,
        *,
        max_label_length: int = DEFAULT_MAX_LABEL_LENGTH,
        **tuning: Any,
    ) -> MilvusGallery:
        """Create the collection of gallery ``uri`` (arguments as ``Gallery.create``; ``tuning`` is ignored
        except ``ef_search`` / ``nprobe``). With ``exist_ok`` an existing one of the same dim and kind is opened."""
        from pymilvus import DataType, MilvusClient

        target = parse_uri(uri)
        dim, metric, normalize, index_method, hamming_radius = check_settings(
            dim, dist_type, index_method, hamming_radius
        )
        binary = metric == "hamming"
        index_type, build = index_params(str(index_method), metric, binary)
        settings = {
            "shitu_gallery": FORMAT_VERSION,
            "dim": int(dim),
            "metric": metric,
            "normalize": normalize,
            "index_method": index_method,
            "hamming_radius": hamming_radius,
            "created_at": time.time(),
        }
        client = connect(target)
        try:
            if guarded(target, lambda: client.has_collection(target.collection, timeout=target.call_timeout)):
                client.close()
                if not exist_ok:
                    raise GalleryExists(f"{target.uri}: a gallery exists already")
                g = cls.open(uri, max_label_length=max_label_length)
                if g.dim != int(dim) or (g.metric == "hamming") != binary:
                    g.close()
                    raise GalleryError(
                        f"{target.uri}: holds a {g.metric} gallery of dim {g.dim}, not {metric} of dim {dim}"
                    )
                return g
            schema = MilvusClient.create_schema(
                auto_id=False, enable_dynamic_field=False, description=json.dumps(settings, sort_keys=True)
            )
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.BINARY_VECTOR if binary else DataType.FLOAT_VECTOR, dim=int(dim))
            schema.add_field("label", DataType.VARCHAR, max_length=max(1, int(max_label_length)) * 4)
            schema.add_field("source", DataType.VARCHAR, max_length=_MAX_SOURCE)
            schema.add_field("metadata", DataType.VARCHAR, max_length=_MAX_METADATA)
            schema.add_field("content_hash", DataType.VARCHAR, max_length=128)
            schema.add_field("added_at", DataType.DOUBLE)
            schema.add_field("updated_at", DataType.DOUBLE)
            index = client.prepare_index_params()
            index.add_index(
                field_name="vector", index_type=index_type, metric_type="HAMMING" if binary else metric, params=build
            )
            guarded(
                target,
                lambda: client.create_collection(
                    target.collection,
                    schema=schema,
                    index_params=index,
                    consistency_level="Strong",
                    properties=settings_json(settings),
                    timeout=target.call_timeout,
                ),
            )
        except BaseException:
            client.close()
            raise
        g = cls(target, client, settings, False, max_label_length)
        g.tuning.update({k: v for k, v in tuning.items() if k in g.tuning})
        return g

    @classmethod
    def open_or_create(cls, uri: str, dim: int, **kw: Any) -> MilvusGallery:
        """Open the gallery in ``uri``, creating it first when there is none. Two replicas whose first add to a new
        gallery comes at the same moment both try to create it; the one that loses opens the winner's."""
        try:
            return cls.create(uri, dim, exist_ok=True, **kw)
        except MilvusUnavailable:
            if not cls.exists(uri):
                raise
            return cls.create(uri, dim, exist_ok=True, **kw)

    @classmethod
    def open(
        cls, uri: str, readonly: bool = False, *, verify: bool = True, max_label_length: int = DEFAULT_MAX_LABEL_LENGTH
    ) -> MilvusGallery:
        """Open the gallery in collection ``uri``; GalleryError when there is none or it is not a gallery."""
        target = parse_uri(uri)
        client = connect(target)
        try:
            if not guarded(target, lambda: client.has_collection(target.collection, timeout=target.call_timeout)):
                raise GalleryNotFound(f"{target.uri}: no such gallery (no collection {target.collection!r})")
            desc = guarded(target, lambda: client.describe_collection(target.collection, timeout=target.call_timeout))
            settings = settings_of(desc)
            if settings is None:
                raise GalleryError(f"{target.uri}: collection {target.collection!r} is not a shitu-hub gallery")
            if int(settings.get("shitu_gallery", 0)) > FORMAT_VERSION:
                raise GalleryError(
                    f"{target.uri}: gallery format {settings['shitu_gallery']} is newer than this "
                    f"release supports ({FORMAT_VERSION}); upgrade shitu-hub"
                )
            guarded(target, lambda: client.load_collection(target.collection, timeout=target.call_timeout))
        except BaseException:
            client.close()
            raise
        return cls(target, client, settings, readonly, max_label_length)

    # -- calling Milvus ----------------------------------------------------------------------------------------------
    def _call(self, method: str, *args: Any, **kw: Any) -> Any:
        """``client.<method>(collection, ...)`` with the timeout; reloads once a collection found not loaded."""
        if self._closed:
            raise GalleryError(f"{self.target.uri}: the gallery is closed")
        fn = getattr(self._client, method)
        kw.setdefault("timeout", self.target.call_timeout)
        try:
            return guarded(self.target, lambda: fn(self.target.collection, *args, **kw))
        except MilvusUnavailable as e:
            if not any(w in str(e).lower() for w in ("not loaded", "released", "load()")):
                raise
            guarded(
                self.target,
                lambda: self._client.load_collection(self.target.collection, timeout=self.target.call_timeout),
            )
            return guarded(self.target, lambda: fn(self.target.collection, *args, **kw))

    def _query(self, expr: str, fields: list[str], limit: int | None = None, offset: int = 0) -> list[dict]:
        kw: dict[str, Any] = {"filter": expr, "output_fields": fields, "consistency_level": "Strong"}
        if limit is not None:
            kw.update(limit=int(limit), offset=int(offset))
        return list(self._call("query", **kw))

    def _pages(self, expr: str, fields: list[str], page: int = _BATCH) -> Iterator[list[dict]]:
        """Every row matching ``expr``, in pages of at most ``page`` rows by increasing id.

        Milvus does not promise the order of a limited query, so the id space is cut into ranges small enough
        to be read whole (counted first, halved while too full)."""
        ranges = [(0, (1 << 63) - 1)]
        while ranges:
            lo, hi = ranges.pop()
            cond = f"id >= {lo} and id < {hi}" + (f" and ({expr})" if expr else "")
            counted = self._query(cond, ["count(*)"])
            n = int(counted[0]["count(*)"]) if counted else 0
            if n == 0:
                continue
            if n > page and hi - lo > 1:
                mid = (lo + hi) // 2
                ranges += [(mid, hi), (lo, mid)]  # the lower half is read first
                continue
            rows = self._query(cond, fields + ["id"], limit=max(n, 1))
            yield sorted(rows, key=lambda r: int(r["id"]))

    def _all(self, expr: str, fields: list[str]) -> list[dict]:
        return [r for rows in self._pages(expr, fields) for r in rows]

    def iter_records(self, page: int = 1000) -> Iterator[list[dict[str, Any]]]:
        """Every record with its ``vector``, in pages by increasing id."""
        for rows in self._pages("", self._FIELDS + ["vector"], page):
            out = []
            for r in rows:
                rec = self._record(r)
                rec["vector"] = self._vector_of(r["vector"])
                out.append(rec)
            yield out

    def _vector_of(self, v: Any) -> np.ndarray:
        return np.frombuffer(binary_bytes(v), np.uint8).copy() if self._binary else np.asarray(v, np.float32)

    # -- writing ---------------------------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.readonly:
            raise GalleryReadOnly(f"{self.target.uri}: opened read-only")

    def check_label(self, label: Any) -> str:
        """``label`` as stored (NFC), or :class:`LabelError` naming the problem (the rule: :mod:`.validation`)."""
        return check_label(label, self.max_label_length)

    def _vectors(self, vectors: Any, what: str = "vectors") -> np.ndarray:
        return check_vectors(vectors, self.dim, self._binary, self.normalize, what)

    def _row_vector(self, v: np.ndarray) -> Any:
        return v.tobytes() if self._binary else v.tolist()

    @staticmethod
    def _field_text(value: Any, what: str, limit: int) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise GalleryError(f"{what} must be a string or None, not {type(value).__name__}")
        if len(value.encode("utf-8")) > limit:
            raise GalleryError(f"{what} is longer than {limit} bytes")
        return value

    def _new_ids(self, n: int) -> list[int]:
        """``n`` fresh random ids below 2**53, none of them in use (checked against the collection)."""
        ids: set[int] = set()
        while len(ids) < n:
            want = [secrets.randbits(_ID_BITS) or 1 for _ in range(n - len(ids))]
            fresh = set(want) - ids
            for part in _chunks(sorted(fresh)):
                fresh -= {int(r["id"]) for r in self._query(filter_in("id", list(part)), ["id"])}
            ids |= fresh
        return list(ids)

    def add(
        self,
        vectors: np.ndarray,
        labels: Sequence[str],
        sources: Sequence[str | None] | None = None,
        metadata: Sequence[dict | None] | None = None,
        content_hashes: Sequence[str | None] | None = None,
        *,
        ids: Sequence[int] | None = None,
    ) -> list[int]:
        """Add items; returns their ids, in order. ``ids`` keeps given ids (``shitu gallery migrate``). All or
        nothing: when the server fails part-way, the rows already inserted are deleted again."""
        self._check_writable()
        vecs = self._vectors(vectors)
        n = len(vecs)
        labels, srcs, metas, content_hashes = check_fields(
            n, labels, sources, metadata, content_hashes, self.max_label_length, _MAX_METADATA
        )
        src = [self._field_text(s, "source", _MAX_SOURCE) for s in srcs]
        meta = [m or "" for m in metas]
        if n == 0:
            return []
        if ids is not None:
            new_ids = [int(i) for i in ids]
            if len(new_ids) != n or len(set(new_ids)) != n or min(new_ids) <= 0 or max(new_ids) >= 1 << _ID_BITS:
                raise GalleryError("ids must be distinct integers in [1, 2**53), one per vector")
            taken = [
                int(r["id"]) for part in _chunks(new_ids) for r in self._query(filter_in("id", list(part)), ["id"])
            ]
            if taken:
                raise GalleryError(f"ids already in the gallery: {sorted(taken)[:10]}")
        else:
            new_ids = self._new_ids(n)
        now = time.time()
        rows = [
            {
                "id": new_ids[i],
                "vector": self._row_vector(vecs[i]),
                "label": labels[i],
                "source": src[i],
                "metadata": meta[i],
                "content_hash": content_hashes[i] or "",
                "added_at": now,
                "updated_at": now,
            }
            for i in range(n)
        ]
        done = 0
        try:
            for part in _chunks(rows):
                self._call("insert", data=list(part))
                done += len(part)
        except BaseException:
            if done:
                try:
                    self._call("delete", ids=new_ids[:done])
                except GalleryError:
                    pass
            raise
        return new_ids

    def remove(self, ids: Sequence[int] | None = None, labels: Sequence[str] | None = None) -> int:
        """Remove items by id and/or label (Milvus deletes); returns how many were removed."""
        self._check_writable()
        ids = [int(i) for i in (ids or [])]
        labels = normal_labels([labels] if isinstance(labels, str) else list(labels or []))
        found: set[int] = set()
        for part in _chunks(ids):
            found |= {int(r["id"]) for r in self._query(filter_in("id", list(part)), ["id"])}
        for part in _chunks(labels):
            found |= {int(r["id"]) for r in self._all(filter_in("label", list(part)), [])}
        for part in _chunks(sorted(found)):
            self._call("delete", ids=list(part))
        return len(found)

    def update(
        self,
        id: int,
        label: str | None = None,
        vector: np.ndarray | None = None,
        *,
        source: str | None = None,
        metadata: dict | None = None,
        content_hash: str | None = None,
    ) -> None:
        """Relabel an item and/or replace its vector, source, metadata, content hash; the id stays."""
        self._check_writable()
        rows = self._query(f"id == {int(id)}", self._FIELDS + ["vector"])
        if not rows:
            raise ItemNotFound(f"{self.target.uri}: no item with id {int(id)}")
        row = {k: rows[0][k] for k in self._FIELDS + ["vector"]}
        if self._binary:
            row["vector"] = binary_bytes(row["vector"])
        if label is not None:
            row["label"] = self.check_label(label)
        if vector is not None:
            vec = self._vectors(vector, "vector")
            if len(vec) != 1:
                raise GalleryError("update takes one vector")
            row["vector"] = self._row_vector(vec[0])
        if source is not None:
            row["source"] = self._field_text(source, "source", _MAX_SOURCE)
        if metadata is not None:
            row["metadata"] = metadata_json(metadata, _MAX_METADATA) or ""
        if content_hash is not None:
            row["content_hash"] = content_hash
        row["updated_at"] = time.time()
        self._call("upsert", data=[row])

    def checkpoint(self) -> None:
        """Ask Milvus to persist its growing segments (writes are durable without it)."""
        self._call("flush")

    def compact(self) -> None:
        """Milvus compacts deleted rows itself; this asks it to now."""
        self._call("compact")

    # -- searching ---------------------------------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int = 5, labels: Sequence[str] | None = None, hamming_radius: int | None = None
    ) -> list[list[Match]]:
        """The ``k`` best matches of each query, best first (scores as the local gallery's: IP similarity,
        squared L2 or hamming distance; hamming hits beyond ``hamming_radius`` dropped: this call's, else the
        gallery's own)."""
        q = self._vectors(queries, "queries")
        k = int(k)
        if k <= 0:
            raise GalleryError(f"k must be positive, not {k}")
        if isinstance(labels, str):
            labels = [labels]
        if labels is not None and not list(labels):
            return [[] for _ in range(len(q))]
        params: dict[str, Any] = {"metric_type": "HAMMING" if self._binary else self.metric, "params": {}}
        method = self.index_method.upper()
        if method.startswith("HNSW"):
            params["params"]["ef"] = max(int(self.tuning["ef_search"]), k)
        elif method.startswith("IVF"):
            params["params"]["nprobe"] = int(self.tuning["nprobe"] or 16)
        expr = filter_in("label", sorted(normal_labels(list(labels)))) if labels is not None else ""
        hits = self._call(
            "search",
            data=[self._row_vector(v) for v in q],
            limit=k,
            filter=expr,
            output_fields=["label", "source", "metadata"],
            search_params=params,
            consistency_level="Strong",
        )
        out: list[list[Match]] = []
        radius = check_radius(hamming_radius)
        radius = (self.hamming_radius if radius is None else radius) if self._binary else None
        for row in hits:
            matches = []
            for h in row:
                d = float(h["distance"])
                if radius is not None and d > radius:
                    continue
                ent = h.get("entity", {})
                matches.append(
                    Match(
                        id=int(h["id"]),
                        label=ent.get("label"),
                        score=d,
                        source=ent.get("source") or None,
                        metadata=json.loads(ent["metadata"]) if ent.get("metadata") else None,
                    )
                )
            out.append(matches)
        return out

    # -- reading records ------------------------------------------------------------------------------------------
    @staticmethod
    def _record(r: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": int(r["id"]),
            "label": r["label"],
            "source": r.get("source") or None,
            "metadata": json.loads(r["metadata"]) if r.get("metadata") else None,
            "content_hash": r.get("content_hash") or None,
            "added_at": r.get("added_at"),
            "updated_at": r.get("updated_at"),
        }

    def get(self, id: int, with_vector: bool = False) -> dict[str, Any] | None:
        rows = self._query(f"id == {int(id)}", self._FIELDS + (["vector"] if with_vector else []))
        if not rows:
            return None
        rec = self._record(rows[0])
        if with_vector:
            rec["vector"] = self._vector_of(rows[0]["vector"])
        return rec

    def list(self, label: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Records (optionally of one label), ``limit`` from ``offset``, in the server's order (by id within
        the page); ``offset + limit`` is at most 16384, Milvus's query window."""
        if int(offset) + int(limit) > _QUERY_LIMIT:
            raise GalleryError(f"offset + limit must be at most {_QUERY_LIMIT} for Milvus galleries")
        expr = filter_in("label", normal_labels([label])) if label is not None else ""
        rows = self._query(expr, self._FIELDS, limit=limit, offset=offset)
        return sorted((self._record(r) for r in rows), key=lambda r: r["id"])

    def label_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self._all("", ["label"]):
            counts[r["label"]] = counts.get(r["label"], 0) + 1
        return dict(sorted(counts.items()))

    def has_hash(self, content_hash: str) -> bool:
        return bool(self.hashes_present([content_hash]))

    def hashes_present(self, hashes: Iterable[str]) -> set[str]:
        wanted = sorted({h for h in hashes if h})
        found: set[str] = set()
        for part in _chunks(wanted):
            found |= {r["content_hash"] for r in self._all(filter_in("content_hash", list(part)), ["content_hash"])}
        return found

    def __len__(self) -> int:
        rows = self._query("", ["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def info(self) -> dict[str, Any]:
        """Counts and configuration (the Milvus index as the server describes it)."""
        try:
            idx = self._call("describe_index", "vector")
        except GalleryError:
            idx = {}
        count = len(self)
        return {
            "path": self.target.uri,
            "backend": "milvus",
            "collection": self.target.collection,
            "count": count,
            "labels": len(self.label_counts()) if count <= _INFO_LABELS_UP_TO else None,
            "dim": self.dim,
            "metric": self.metric,
            "normalize": self.normalize,
            "index_method": self.index_method,
            "index": (idx or {}).get("index_type"),
            "hamming_radius": self.hamming_radius if self._binary else None,
            "format_version": int(self._s.get("shitu_gallery", 1)),
            "writable": None,  # the Milvus server's permissions decide, which a read does not show
            "created_at": iso_time(self._s.get("created_at")),
            "tuning": dict(self.tuning),
            "recognition": self.recognition(),
        }

    # -- recognition settings (issue #28: framing rule, score_thres auto) ---------------------------------------------
    def recognition(self) -> dict[str, Any]:
        """The recognition settings the collection records (re-read: another replica may have written them)."""
        value = (settings_of(self._call("describe_collection")) or self._s).get("recognition")
        return value if isinstance(value, dict) else {}

    def update_recognition(self, merge: Callable[[Any], dict[str, Any]]) -> None:
        """Record ``merge(current)`` in the collection's settings (two replicas writing at once: the last wins)."""
        self._check_writable()
        settings = dict(settings_of(self._call("describe_collection")) or self._s)
        settings["recognition"] = merge(settings.get("recognition"))
        self._call("alter_collection_properties", properties=settings_json(settings))
        self._s = settings

    # -- lifetime --------------------------------------------------------------------------------------------------
    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._client.close()
            except Exception:  # closing a channel to a dead server
                pass

    def __enter__(self) -> MilvusGallery:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MilvusGallery({self.target.uri!r}, dim={self.dim}, metric={self.metric!r})"
