"""Import a PaddleClas index folder (``vector.index`` + ``id_map.pkl``) into a new gallery, executing nothing.

PaddleClas's ``deploy/python/build_gallery.py`` writes a folder holding

- ``vector.index``: a faiss index (``faiss.write_index`` of ``IDMap2,<method>`` for float embeddings, or
  ``faiss.write_index_binary`` of a ``B<method>`` index for hamming galleries, whose ids are the add order);
- ``id_map.pkl``: a pickled ``dict`` from faiss id (a ``numpy.int64``) to the list-file line
  (``"path<TAB>label"``).

A pickle is a program: ``pickle.load`` of a file a user hands over runs whatever it names. This module never
calls it. :func:`read_id_map` first walks the opcodes (``pickletools.genops``, which only parses) and refuses any
opcode outside the handful a dict of ints and strings needs, any global other than numpy's scalar
reconstructor, ``dtype`` (the names PaddleClas's int64 keys pickle as) and ``_codecs.encode`` (bytes in protocol 2),
and any file, entry or string
over the caps. Only then does a :class:`pickle.Unpickler` subclass run it, whose ``find_class`` maps those two
names to small stand-ins here (an integer decoder that accepts only integer dtypes) and refuses everything else:
no numpy or other code is reached through the pickle.

The faiss file is read by faiss (size-capped); every vector is reconstructed and added to a new gallery with the
same ids, labels (the second column of the line) and sources (the first), the same metric (IP, L2, hamming)
and the corresponding index method (``Flat``, ``HNSW<M>``, ``IVF``). The gallery is built in a temporary folder
and renamed into place, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from shitu.errors import InvalidArgument
from shitu.serving.gallery.errors import GalleryError

__all__ = [
    "IndexImportError",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ITEMS",
    "read_id_map",
    "read_faiss_index",
    "import_paddleclas_index",
    "is_paddleclas_index",
]

#: Defaults of ``Limits.max_index_import_bytes`` / ``Limits.max_index_import_items`` (see the parameter schema).
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_ITEMS = 10_000_000
#: Longest list-file line accepted in ``id_map.pkl`` (characters).
MAX_DOC_CHARS = 4096

ID_MAP = "id_map.pkl"
VECTOR_INDEX = "vector.index"

#: Opcodes a pickled dict of int/str (numpy int64 keys included) is made of; anything else is refused.
_ALLOWED_OPCODES = frozenset(
    {
        "PROTO",
        "FRAME",
        "STOP",
        "MARK",
        "POP",
        "POP_MARK",
        "EMPTY_DICT",
        "DICT",
        "SETITEM",
        "SETITEMS",
        "EMPTY_TUPLE",
        "TUPLE",
        "TUPLE1",
        "TUPLE2",
        "TUPLE3",
        "EMPTY_LIST",
        "LIST",
        "APPEND",
        "APPENDS",
        "MEMOIZE",
        "PUT",
        "BINPUT",
        "LONG_BINPUT",
        "GET",
        "BINGET",
        "LONG_BINGET",
        "INT",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG",
        "LONG1",
        "NONE",
        "NEWTRUE",
        "NEWFALSE",
        "UNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "SHORT_BINBYTES",
        "BINBYTES",
        # numpy.int64 keys: GLOBAL/STACK_GLOBAL of the two names below, REDUCE to call them, BUILD for dtype state.
        "GLOBAL",
        "STACK_GLOBAL",
        "REDUCE",
        "BUILD",
    }
)
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
#: The only globals an id map may name (each mapped to a stand-in defined here, never imported).
_GLOBALS = frozenset({f"{m}.scalar" for m in _NUMPY_MODULES} | {"numpy.dtype", "_codecs.encode"})


class IndexImportError(GalleryError, InvalidArgument):
    """The folder is not an importable PaddleClas index; the message names the file and the problem."""


# -- the two stand-ins numpy's int64 pickles name -------------------------------------------------------------


class _IntDType:
    """Stands in for ``numpy.dtype`` while unpickling: integer dtypes only (``i1``..``u8``)."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False):
        if not isinstance(code, str) or not re.fullmatch(r"[iu][1248]", code):
            raise pickle.UnpicklingError(f"id_map.pkl: dtype {code!r} refused (only integer ids are accepted)")
        self.signed = code[0] == "i"
        self.size = int(code[1])
        self.order = "<"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError("id_map.pkl: unexpected dtype state refused")
        self.order = state[1]


def _int_scalar(dtype: Any, data: Any = None) -> int:
    """Stands in for numpy's scalar reconstructor: integer bytes -> a Python int."""
    if not isinstance(dtype, _IntDType) or not isinstance(data, bytes) or len(data) != dtype.size:
        raise pickle.UnpicklingError("id_map.pkl: only integer numpy scalars are accepted")
    order: Literal["big", "little"] = "big" if dtype.order == ">" else "little"
    return int.from_bytes(data, order, signed=dtype.signed)


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """Stands in for ``_codecs.encode``, which protocol-2 pickles use for bytes: latin-1 strings only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or len(text) > 64:
        raise pickle.UnpicklingError("id_map.pkl: unexpected encoded bytes refused")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if module in _NUMPY_MODULES and name == "scalar":
            return _int_scalar
        if module == "_codecs" and name == "encode":
            return _latin1
        if module == "numpy" and name == "dtype":
            return _IntDType
        raise pickle.UnpicklingError(
            f"id_map.pkl: refers to {module}.{name}; refused (only ints and strings are read from a PaddleClas id map)"
        )


def _scan(data: bytes, max_items: int) -> None:
    """Parse (never run) the opcodes: allowed ones only, declared lengths within the data, bounded counts."""
    ops = 0
    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            if op.name not in _ALLOWED_OPCODES:
                raise IndexImportError(
                    f"{ID_MAP}: pickle opcode {op.name} refused (a PaddleClas id map is a dict of ints and strings)"
                )
            if op.name in ("GLOBAL",) and (not isinstance(arg, str) or arg.replace(" ", ".") not in _GLOBALS):
                raise IndexImportError(f"{ID_MAP}: refers to {arg!r}; refused")
            if isinstance(arg, (str, bytes)) and len(arg) > MAX_DOC_CHARS:
                raise IndexImportError(f"{ID_MAP}: a string of {len(arg)} characters; the limit is {MAX_DOC_CHARS}")
            ops += 1
            if ops > 64 * max_items + 64:
                raise IndexImportError(
                    f"{ID_MAP}: more than {max_items} entries; the limit is {max_items} (Limits.max_index_import_items)"
                )
    except IndexImportError:
        raise
    except Exception as e:  # truncated data, a declared length past the end, an unknown opcode byte
        raise IndexImportError(f"{ID_MAP}: not a readable pickle ({e})") from None


def read_id_map(
    path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES, max_items: int = DEFAULT_MAX_ITEMS
) -> dict[int, str]:
    """``id_map.pkl`` -> ``{faiss id: list-file line}``, without executing anything (see the module doc)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise IndexImportError(f"{ID_MAP}: {size} bytes; the limit is {max_bytes} (Limits.max_index_import_bytes)")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise IndexImportError(f"{ID_MAP}: cannot read it: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise IndexImportError(f"{ID_MAP}: larger than the limit of {max_bytes} bytes")
    _scan(data, max_items)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    except IndexImportError:
        raise
    except Exception as e:
        raise IndexImportError(f"{ID_MAP}: refused: {e}") from None
    if not isinstance(obj, dict):
        raise IndexImportError(f"{ID_MAP}: holds a {type(obj).__name__}, not the dict PaddleClas writes")
    if len(obj) > max_items:
        raise IndexImportError(f"{ID_MAP}: {len(obj)} entries; the limit is {max_items}")
    out: dict[int, str] = {}
    for k, v in obj.items():
        if not isinstance(k, int) or isinstance(k, bool) or not isinstance(v, str):
            raise IndexImportError(
                f"{ID_MAP}: an entry {type(k).__name__} -> {type(v).__name__}; PaddleClas writes int -> str"
            )
        out[k] = v
    return out


# -- the faiss side ---------------------------------------------------------------------------------------------


@dataclass
class FaissContents:
    """What a PaddleClas ``vector.index`` holds."""

    ids: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, d] or packed-bit uint8 [n, d/8]
    dim: int  # dimension (bits for binary)
    metric: str  # IP | L2 | hamming
    index_method: str  # Flat | HNSW<M> | IVF


def _method_of(inner: Any) -> str:
    name = type(inner).__name__
    if "HNSW" in name:
        try:
            return f"HNSW{int(inner.hnsw.nb_neighbors(1))}"
        except Exception:  # pragma: no cover - older faiss
            return "HNSW32"
    if "IVF" in name:
        return "IVF"
    return "Flat"


def read_faiss_index(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> FaissContents:
    """Read ``vector.index`` (float or binary) and reconstruct its ids and vectors."""
    import faiss

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise IndexImportError(f"{VECTOR_INDEX}: cannot read it: {e.strerror or e}") from None
    if size > max_bytes:
        raise IndexImportError(
            f"{VECTOR_INDEX}: {size} bytes; the limit is {max_bytes} (Limits.max_index_import_bytes)"
        )
    with open(path, "rb") as f:
        head = f.read(4)
    binary = head[:1] == b"I" and head[1:2] == b"B"  # binary fourccs: IBxF, IBHf, IBwF, IBMp, ...
    # faiss objects are SWIG classes downcast at run time (the stubs know the base classes only).
    owner: Any
    index: Any
    inner: Any
    try:
        owner = faiss.read_index_binary(str(path)) if binary else faiss.read_index(str(path))
    except RuntimeError as e:
        raise IndexImportError(f"{VECTOR_INDEX}: faiss cannot read it: {str(e).splitlines()[0]}") from None
    # ``owner`` owns the C++ object: keep it referenced while the downcast views are in use.
    index = faiss.downcast_IndexBinary(owner) if binary else faiss.downcast_index(owner)
    n = int(index.ntotal)
    inner = index
    if type(index).__name__.startswith(("IndexIDMap", "IndexBinaryIDMap")):
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        inner = faiss.downcast_IndexBinary(index.index) if binary else faiss.downcast_index(index.index)
    else:
        ids = np.arange(n, dtype=np.int64)  # binary indexes (and the Android demo's flat one): add order
    if "IVF" in type(inner).__name__:
        inner.make_direct_map()
    try:
        vectors = (
            inner.reconstruct_n(0, n)
            if n
            else np.zeros((0, index.d // 8 if binary else index.d), np.uint8 if binary else np.float32)
        )
    except RuntimeError as e:
        raise IndexImportError(f"{VECTOR_INDEX}: cannot reconstruct its vectors: {str(e).splitlines()[0]}") from None
    if binary:
        metric = "hamming"
    elif index.metric_type == faiss.METRIC_INNER_PRODUCT:
        metric = "IP"
    elif index.metric_type == faiss.METRIC_L2:
        metric = "L2"
    else:
        raise IndexImportError(f"{VECTOR_INDEX}: metric {index.metric_type} is neither IP nor L2")
    if len(ids) != n or len(vectors) != n:
        raise IndexImportError(f"{VECTOR_INDEX}: {n} vectors but {len(ids)} ids")
    contents = FaissContents(ids, np.array(vectors), int(index.d), metric, _method_of(inner))
    del owner
    return contents


# -- the import ---------------------------------------------------------------------------------------------------


def is_paddleclas_index(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / ID_MAP).is_file() and (folder / VECTOR_INDEX).is_file()


def split_doc(doc: str, delimiter: str = "\t") -> tuple[str, str]:
    """A list-file line -> (image path, label): split at the delimiter, else at whitespace (as PaddleClas reads)."""
    parts = doc.strip().split(delimiter, 1) if delimiter and delimiter in doc else doc.strip().split(None, 1)
    if len(parts) < 2 or not parts[1].strip():
        raise IndexImportError(f"{ID_MAP}: entry {doc[:80]!r} has no label column")
    return parts[0].strip(), parts[1].strip()


def import_paddleclas_index(
    folder: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    delimiter: str = "\t",
    index_method: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_items: int = DEFAULT_MAX_ITEMS,
    max_label_length: int | None = None,
) -> dict[str, Any]:
    """Import PaddleClas index ``folder`` into a new gallery at ``dest``; returns a summary.

    Ids, labels and vectors are kept; sources are the image paths of the list file. ``index_method`` overrides
    the method read from the index (``Flat``, ``HNSW<M>``, ``IVF``).
    """
    from shitu.serving.gallery.backup import staged
    from shitu.serving.gallery.local import DB_NAME, Gallery
    from shitu.serving.gallery.validation import DEFAULT_MAX_LABEL_LENGTH

    folder, dest = Path(folder), Path(dest)
    if not is_paddleclas_index(folder):
        raise IndexImportError(f"{folder}: not a PaddleClas index folder (needs {VECTOR_INDEX} and {ID_MAP})")
    if (dest / DB_NAME).exists() or (dest.exists() and any(dest.iterdir())):
        raise IndexImportError(f"{dest}: exists and is not empty; import into a new gallery folder")
    id_map = read_id_map(folder / ID_MAP, max_bytes, max_items)
    contents = read_faiss_index(folder / VECTOR_INDEX, max_bytes)
    if len(contents.ids) > max_items:
        raise IndexImportError(f"{VECTOR_INDEX}: {len(contents.ids)} vectors; the limit is {max_items}")
    if set(contents.ids.tolist()) != set(id_map) or len(id_map) != len(contents.ids):
        raise IndexImportError(
            f"{VECTOR_INDEX} holds {len(contents.ids)} vectors and {ID_MAP} {len(id_map)} "
            "entries, with different ids: the folder is inconsistent"
        )
    order = np.argsort(contents.ids, kind="stable")
    ids = contents.ids[order]
    vectors = contents.vectors[order]
    docs = [split_doc(id_map[int(i)], delimiter) for i in ids]
    if len(ids) and int(ids[0]) < 0:
        raise IndexImportError(f"{VECTOR_INDEX}: negative ids cannot be kept")
    method = index_method or contents.index_method
    with staged(dest, "import", IndexImportError) as tmp:
        with Gallery.create(
            tmp,
            contents.dim,
            index_method=method,
            dist_type=contents.metric,
            max_label_length=max_label_length or DEFAULT_MAX_LABEL_LENGTH,
        ) as gallery:
            gallery.add(vectors, [d[1] for d in docs], sources=[d[0] for d in docs], ids=ids.tolist())
            summary = {
                "count": len(gallery),
                "labels": len(gallery.label_counts()),
                "dim": contents.dim,
                "metric": contents.metric,
                "index_method": method,
            }
    return summary
