"""The scenario-pack manifest (``pack.yaml``): its schema, its validation and its parsed form.

Reading a manifest imports no code: it is YAML, read with ``yaml.SafeLoader`` (duplicate keys refused), checked
key by key, and every error names the key path that is wrong, e.g.
``models.recognizer.files[1].sha256: expected 64 hex characters``. ``docs/writing-packs.md`` documents every key
with a complete example.

Layout of a manifest (schema version 1)::

    schema_version: 1
    name, version, title, description, license, shitu_hub (compatible shitu-hub versions), homepage, authors, notes
    models:
      detector:   {name, format, path, files, archive?, <ModelSpec description keys>}
      recognizer: {name, format, path, embedding_size, files, archive?, <ModelSpec description keys>}
    params:       {Section: {key: value}}   # PP-ShiTu names, validated by shitu.params
    galleries:    {<name>: {title, list_file | folder | vectors_file, image_root, delimiter, index_method, dist_type,
                            data_url}}
    default_gallery: <name>

Keys starting with ``x-`` are extensions and are ignored anywhere.

Longer than 600 lines: the manifest schema is one table of keys and their key-by-key checks, read top to
bottom.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

from shitu.names import GALLERY_NAME
from shitu.plugins.errors import ManifestError

SCHEMA_VERSION = 1
MANIFEST_FILE = "pack.yaml"

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?\Z")
#: A release (``1.1.0``, ``1.0rc1``) with an optional PEP 440 local label (``1.1.0+adapt.1``: a version made on this
#: machine from a published one, as ``shitu adapt --pack`` writes).
VERSION_RE = re.compile(
    r"^[0-9]+(?:\.[0-9]+){0,3}(?:[.-]?(?:a|b|rc|dev|post)[0-9]*)?"
    r"(?:\+[a-z0-9]+(?:\.[a-z0-9]+)*)?\Z"
)
GALLERY_RE = GALLERY_NAME  # one rule for gallery names (shitu.names)
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")

ROLES = {"detector": "detector", "recognizer": "extractor"}  # manifest role -> ModelSpec kind
FORMATS = ("paddle", "onnx")
#: ModelSpec description keys a model entry may carry (see shitu.model_spec).
DESCRIPTION_KEYS = (
    "kind",
    "model_file",
    "params_file",
    "onnx_file",
    "input_color",
    "transform_ops",
    "decoder",
    "decoder_args",
    "pooling",
    "projection",
    "onednn",
    "onednn_passes",
)
#: Parameters a pack may not set: the registry derives them from the pack's models and galleries.
PACK_MANAGED_PARAMS = ("Global.det_inference_model_dir", "Global.rec_inference_model_dir", "IndexProcess.index_dir")

_TOP_KEYS = {
    "schema_version": True,
    "name": True,
    "version": True,
    "title": True,
    "description": False,
    "license": True,
    "shitu_hub": True,
    "homepage": False,
    "authors": False,
    "notes": False,
    "models": True,
    "params": False,
    "galleries": True,
    "default_gallery": False,
}
_MODEL_KEYS = {
    "name": True,
    "format": True,
    "path": True,
    "files": True,
    "archive": False,
    "source": False,
    "embedding_size": False,
    "notes": False,
    **{k: False for k in DESCRIPTION_KEYS},
}
_FILE_KEYS = {"path": True, "sha256": True, "size": False, "url": False, "optional": False}
_ARCHIVE_KEYS = {"url": True, "sha256": True, "size": False, "root": False, "filename": False}
_GALLERY_KEYS = {
    "title": False,
    "description": False,
    "list_file": False,
    "image_root": False,
    "folder": False,
    "delimiter": False,
    "index_method": False,
    "dist_type": False,
    "data_url": False,
    "files": False,
    "vectors_file": False,
}


# -- parsed form ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileEntry:
    """One file of a model or gallery: ``path`` relative to the model's (or pack's) folder."""

    path: str
    sha256: str | None
    size: int | None = None
    url: str | None = None
    optional: bool = False


@dataclass(frozen=True)
class ArchiveSource:
    """Where a model's files are published as one archive (PaddleClas's ``*_infer.tar``)."""

    url: str
    sha256: str | None
    size: int | None = None
    root: str | None = None  # folder inside the archive that holds the files (stripped on extraction)
    filename: str = ""  # the name a downloaded copy has (``--from`` files are matched by it)


@dataclass(frozen=True)
class ModelEntry:
    role: str  # "detector" | "recognizer"
    name: str
    format: str
    path: str  # folder relative to the pack root
    files: tuple[FileEntry, ...]
    description: dict[str, Any]  # ModelSpec.from_dict input (kind included)
    embedding_size: int | None = None
    archive: ArchiveSource | None = None
    source: str | None = None

    @property
    def kind(self) -> str:
        return ROLES[self.role]


@dataclass(frozen=True)
class GalleryEntry:
    name: str
    title: str
    description: str
    list_file: str | None
    image_root: str | None
    folder: str | None
    delimiter: str
    index_method: str
    dist_type: str
    data_url: str | None
    files: tuple[FileEntry, ...] = ()
    vectors_file: str | None = None  # precomputed embeddings (JSON) the gallery starts with


@dataclass
class Manifest:
    schema_version: int
    name: str
    version: str
    title: str
    description: str
    license: str
    shitu_hub: str
    models: dict[str, ModelEntry]
    params: dict[str, dict[str, Any]]
    galleries: dict[str, GalleryEntry]
    default_gallery: str
    homepage: str | None = None
    authors: tuple[str, ...] = ()
    notes: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    file: str | None = None

    def all_files(self) -> list[tuple[str, FileEntry]]:
        """Every listed file as ``(path relative to the pack root, entry)``."""
        out = [(_join(m.path, f.path), f) for m in self.models.values() for f in m.files]
        out += [(f.path, f) for g in self.galleries.values() for f in g.files]
        return out


def _join(folder: str, rel: str) -> str:
    return str(PurePosixPath(folder) / rel) if folder not in ("", ".") else rel


# -- reading -------------------------------------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (plain YAML silently keeps the last one) and aliases.

    Aliases (``*name``) are refused outright: a 2 KB "billion laughs" manifest would otherwise expand to gigabytes
    the first time something walks it (``plugins info --json``). A manifest has no use for them.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in a pack manifest", event.start_mark
            )
        return super().compose_node(parent, index)


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = True
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, file: str | None = None) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ManifestError("", f"not valid YAML: {exc}", file) from exc
    if data is None:
        raise ManifestError("", "the manifest is empty", file)
    if not isinstance(data, dict):
        raise ManifestError("", f"expected a mapping at the top level, got {_tname(data)}", file)
    return data


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate ``path`` (a ``pack.yaml`` or a folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ManifestError("", "no such manifest", str(path)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError("", f"cannot read: {exc}", str(path)) from exc
    return parse_manifest(load_yaml(text, str(path)), file=str(path))


def parse_manifest(data: dict[str, Any], file: str | None = None) -> Manifest:
    """Validate a manifest given as a mapping; raise :class:`ManifestError` naming the first wrong key."""
    try:
        return _parse(data, file)
    except ManifestError as exc:
        if exc.file is None and file is not None:
            raise ManifestError(exc.key, exc.problem, file) from None
        raise


# -- validation helpers --------------------------------------------------------------------------------------------
def _tname(value: Any) -> str:
    if value is None:
        return "null"
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(key, f"expected a mapping, got {_tname(value)}")
    for k in value:
        if not isinstance(k, str):
            raise ManifestError(key, f"keys must be strings, got {k!r}")
    return value


def _check_keys(data: dict[str, Any], key: str, spec: dict[str, bool]) -> None:
    prefix = f"{key}." if key else ""
    for k in data:
        if k in spec or k.startswith("x-"):
            continue
        close = difflib.get_close_matches(k, list(spec), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ManifestError(f"{prefix}{k}", f"unknown key{hint}")
    for k, required in spec.items():
        if required and k not in data:
            raise ManifestError(f"{prefix}{k}", "required key is missing")


def _str(value: Any, key: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        hint = " (quote it)" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
        raise ManifestError(key, f"expected a string, got {_tname(value)}{hint}")
    if not allow_empty and not value.strip():
        raise ManifestError(key, "must not be empty")
    return value


def _opt_str(value: Any, key: str) -> str | None:
    return None if value is None else _str(value, key)


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ManifestError(key, f"expected true or false, got {_tname(value)}")
    return value


def _int(value: Any, key: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ManifestError(key, f"expected an integer, got {_tname(value)}")
    if value < minimum:
        raise ManifestError(key, f"must be >= {minimum}, got {value}")
    return value


def _url(value: Any, key: str) -> str:
    text = _str(value, key)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ManifestError(key, f"expected an http(s) URL, got {text!r}")
    return text


def _sha256(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not SHA256_RE.match(value.lower()):
        raise ManifestError(key, "expected 64 hex characters (or null when the hash is not published)")
    return value.lower()


def safe_relpath(value: Any, key: str) -> str:
    """A relative POSIX path that stays inside its folder: no absolute paths, ``..``, ``.`` or backslashes."""
    text = _str(value, key)
    if "\\" in text or "\0" in text or text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise ManifestError(key, f"must be a relative path inside the pack, got {text!r}")
    parts = text.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ManifestError(key, f"must be a relative path without '..', '.' or empty parts, got {text!r}")
    return text


def _folder(value: Any, key: str) -> str:
    if value in (".", ""):
        return "."
    return safe_relpath(value, key)


def _list(value: Any, key: str) -> list[Any]:
    if not isinstance(value, list):
        raise ManifestError(key, f"expected a list, got {_tname(value)}")
    return value


# -- versions ------------------------------------------------------------------------------------------------------
_SUFFIX_RANK = {"dev": -3, "a": -2, "b": -1, "rc": 0, "": 1, "post": 2}


def version_key(version: str) -> tuple:
    """Sort key of a version string (``1.2`` < ``1.10``; ``1.0rc1`` < ``1.0`` < ``1.0+adapt.2`` < ``1.0+adapt.10``
    < ``1.0.post1``)."""
    m = re.match(r"^([0-9]+(?:\.[0-9]+)*)(?:[.-]?(a|b|rc|dev|post)([0-9]*))?", version)
    if not m:
        return ((0,), -9, 0, (), version)
    nums = tuple(int(x) for x in m.group(1).split("."))
    nums = nums + (0,) * (4 - len(nums))
    suffix = m.group(2) or ""
    # a local label sorts after the release it was made from, its parts compared as numbers where they are
    local = tuple((0, int(x), "") if x.isdigit() else (1, 0, x) for x in version.partition("+")[2].split(".") if x)
    return (nums, _SUFFIX_RANK[suffix], int(m.group(3) or 0), local, version)


def _release(version: str) -> tuple[int, ...]:
    return tuple(version_key(version)[0])


_CLAUSE_RE = re.compile(r"^\s*(~=|==|!=|>=|<=|>|<)\s*([0-9][0-9A-Za-z.*-]*)\s*$")


def check_specifier(spec: str, key: str = "shitu_hub") -> list[tuple[str, str]]:
    """Parse ``">=0.1,<0.2"`` into clauses, or raise :class:`ManifestError`."""
    clauses = []
    for part in spec.split(","):
        m = _CLAUSE_RE.match(part)
        if not m:
            raise ManifestError(key, f"expected version clauses like '>=0.1.0,<0.2', got {spec!r}")
        op, ver = m.groups()
        if "*" in ver and not (op in ("==", "!=") and ver.endswith(".*") and "*" not in ver[:-2]):
            raise ManifestError(key, f"a wildcard is only allowed as '==X.*' or '!=X.*', got {part.strip()!r}")
        if not VERSION_RE.match(ver[:-2] if ver.endswith(".*") else ver):
            raise ManifestError(key, f"{ver!r} is not a version")
        clauses.append((op, ver))
    return clauses


def version_matches(version: str, spec: str) -> bool:
    """Whether ``version`` satisfies the specifier ``spec``."""
    v = version_key(version)
    for op, ver in check_specifier(spec):
        if ver.endswith(".*"):
            n = len(ver[:-2].split("."))
            hit = _release(version)[:n] == _release(ver[:-2])[:n]
            ok = hit if op == "==" else not hit
        else:
            w = version_key(ver)
            ok = {
                "==": v[:3] == w[:3],
                "!=": v[:3] != w[:3],
                ">=": v[:3] >= w[:3],
                "<=": v[:3] <= w[:3],
                ">": v[:3] > w[:3],
                "<": v[:3] < w[:3],
            }.get(op)
            if op == "~=":
                n = len(ver.split("."))
                ok = v[:3] >= w[:3] and _release(version)[: n - 1] == _release(ver)[: n - 1]
        if not ok:
            return False
    return True


# -- the parser ----------------------------------------------------------------------------------------------------
def _parse(data: dict[str, Any], file: str | None) -> Manifest:
    _mapping(data, "")
    sv = data.get("schema_version")
    if "schema_version" not in data:
        raise ManifestError("schema_version", "required key is missing (this shitu-hub reads schema_version 1)")
    if isinstance(sv, bool) or not isinstance(sv, int):
        raise ManifestError("schema_version", f"expected an integer, got {_tname(sv)}")
    if sv != SCHEMA_VERSION:
        raise ManifestError(
            "schema_version",
            f"this shitu-hub reads schema_version {SCHEMA_VERSION}, got {sv} (upgrade shitu-hub for newer packs)",
        )
    _check_keys(data, "", _TOP_KEYS)

    name = _str(data["name"], "name")
    if not NAME_RE.match(name):
        raise ManifestError("name", f"expected lowercase letters, digits and '-' (e.g. 'general-lite'), got {name!r}")
    version = data["version"]
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    if isinstance(version, float):
        raise ManifestError("version", f'expected a string, got the number {version!r} (quote it: "{version}")')
    version = _str(version, "version")
    if not VERSION_RE.match(version):
        raise ManifestError("version", f"expected a version like '1.0.0', got {version!r}")
    title = _str(data["title"], "title")
    description = _str(data.get("description", ""), "description", allow_empty=True)
    license_ = _str(data["license"], "license")
    shitu_hub = _str(data["shitu_hub"], "shitu_hub")
    check_specifier(shitu_hub)
    homepage = _url(data["homepage"], "homepage") if data.get("homepage") is not None else None
    authors = tuple(_str(a, f"authors[{i}]") for i, a in enumerate(_list(data.get("authors") or [], "authors")))
    notes = _str(data.get("notes") or "", "notes", allow_empty=True)

    models_raw = _mapping(data["models"], "models")
    _check_keys(models_raw, "models", {"detector": True, "recognizer": True})
    models = {role: _parse_model(role, models_raw[role], f"models.{role}") for role in ROLES}

    params = _parse_params(data.get("params"))
    index_defaults = _index_defaults(params)

    galleries_raw = _mapping(data["galleries"], "galleries")
    if not galleries_raw:
        raise ManifestError("galleries", "a pack needs at least one gallery")
    galleries = {g: _parse_gallery(g, v, f"galleries.{g}", index_defaults) for g, v in galleries_raw.items()}
    default_gallery = data.get("default_gallery")
    if default_gallery is None:
        default_gallery = next(iter(galleries))
    else:
        default_gallery = _str(default_gallery, "default_gallery")
        if default_gallery not in galleries:
            raise ManifestError("default_gallery", f"{default_gallery!r} is not one of galleries {list(galleries)}")

    seen: dict[str, str] = {}
    for role, m in models.items():
        for i, f in enumerate(m.files):
            full = _join(m.path, f.path)
            if full in seen:
                raise ManifestError(f"models.{role}.files[{i}].path", f"{full!r} is also listed by {seen[full]}")
            seen[full] = f"models.{role}"
    for g in galleries.values():
        for i, f in enumerate(g.files):
            if f.path in seen:
                raise ManifestError(
                    f"galleries.{g.name}.files[{i}].path", f"{f.path!r} is also listed by {seen[f.path]}"
                )
            seen[f.path] = f"galleries.{g.name}"

    return Manifest(
        schema_version=sv,
        name=name,
        version=version,
        title=title,
        description=description,
        license=license_,
        shitu_hub=shitu_hub,
        models=models,
        params=params,
        galleries=galleries,
        default_gallery=default_gallery,
        homepage=homepage,
        authors=authors,
        notes=notes,
        raw=data,
        file=file,
    )


def _parse_files(value: Any, key: str, *, required: bool) -> tuple[FileEntry, ...]:
    items = _list(value, key)
    if required and not items:
        raise ManifestError(key, "list at least one file")
    out: list[FileEntry] = []
    paths: set[str] = set()
    for i, item in enumerate(items):
        k = f"{key}[{i}]"
        item = _mapping(item, k)
        _check_keys(item, k, _FILE_KEYS)
        path = safe_relpath(item["path"], f"{k}.path")
        if path in paths:
            raise ManifestError(f"{k}.path", f"{path!r} is listed twice")
        paths.add(path)
        out.append(
            FileEntry(
                path=path,
                sha256=_sha256(item["sha256"], f"{k}.sha256"),
                size=_int(item["size"], f"{k}.size") if item.get("size") is not None else None,
                url=_url(item["url"], f"{k}.url") if item.get("url") is not None else None,
                optional=_bool(item.get("optional", False), f"{k}.optional"),
            )
        )
    return tuple(out)


def _parse_archive(value: Any, key: str) -> ArchiveSource:
    data = _mapping(value, key)
    _check_keys(data, key, _ARCHIVE_KEYS)
    url = _url(data["url"], f"{key}.url")
    filename = data.get("filename")
    if filename is None:
        filename = PurePosixPath(urlsplit(url).path).name
        if not filename:
            raise ManifestError(f"{key}.filename", "the URL has no file name; give 'filename'")
    else:
        filename = _str(filename, f"{key}.filename")
        if "/" in filename or "\\" in filename or filename in (".", ".."):
            raise ManifestError(f"{key}.filename", f"expected a bare file name, got {filename!r}")
    root = data.get("root")
    return ArchiveSource(
        url=url,
        sha256=_sha256(data["sha256"], f"{key}.sha256"),
        size=_int(data["size"], f"{key}.size") if data.get("size") is not None else None,
        root=safe_relpath(root, f"{key}.root") if root is not None else None,
        filename=filename,
    )


def _check_ops(value: Any, key: str) -> list[dict[str, Any]]:
    ops = _list(value, key)
    for i, op in enumerate(ops):
        if not (isinstance(op, dict) and len(op) == 1 and isinstance(next(iter(op)), str)):
            raise ManifestError(f"{key}[{i}]", "expected a one-key mapping {OpName: {args}}")
        args = next(iter(op.values()))
        if args is not None and not isinstance(args, dict):
            raise ManifestError(f"{key}[{i}].{next(iter(op))}", "arguments must be a mapping or null")
    return ops


def _parse_model(role: str, value: Any, key: str) -> ModelEntry:
    data = _mapping(value, key)
    _check_keys(data, key, _MODEL_KEYS)
    kind = ROLES[role]
    name = _str(data["name"], f"{key}.name")
    fmt = _str(data["format"], f"{key}.format")
    if fmt not in FORMATS:
        raise ManifestError(f"{key}.format", f"expected one of {list(FORMATS)}, got {fmt!r}")
    path = _folder(data["path"], f"{key}.path")
    files = _parse_files(data["files"], f"{key}.files", required=True)
    archive = _parse_archive(data["archive"], f"{key}.archive") if data.get("archive") is not None else None
    source = _opt_str(data.get("source"), f"{key}.source")
    _opt_str(data.get("notes"), f"{key}.notes")

    embedding_size = data.get("embedding_size")
    if role == "recognizer":
        if embedding_size is None:
            raise ManifestError(f"{key}.embedding_size", "required for the recognizer (the feature dimension)")
        embedding_size = _int(embedding_size, f"{key}.embedding_size", minimum=1)
    elif embedding_size is not None:
        raise ManifestError(f"{key}.embedding_size", "only the recognizer has an embedding size")

    desc: dict[str, Any] = {"kind": kind}
    if data.get("kind", kind) != kind:
        raise ManifestError(f"{key}.kind", f"the {role} is a {kind!r} model, got {data.get('kind')!r}")
    listed = {f.path: f for f in files}
    for fk in ("model_file", "params_file", "onnx_file"):
        if data.get(fk) is not None:
            rel = safe_relpath(data[fk], f"{key}.{fk}")
            if rel not in listed:
                raise ManifestError(f"{key}.{fk}", f"{rel!r} is not listed in {key}.files")
            if listed[rel].optional:
                raise ManifestError(f"{key}.{fk}", f"{rel!r} is marked optional in {key}.files")
            desc[fk] = rel
    if fmt == "paddle" and ("model_file" not in desc or "params_file" not in desc):
        missing = "model_file" if "model_file" not in desc else "params_file"
        raise ManifestError(f"{key}.{missing}", "required for format 'paddle'")
    if fmt == "onnx" and "onnx_file" not in desc:
        raise ManifestError(f"{key}.onnx_file", "required for format 'onnx'")
    if data.get("input_color") is not None:
        color = _str(data["input_color"], f"{key}.input_color")
        if color not in ("RGB", "BGR"):
            raise ManifestError(f"{key}.input_color", f"expected RGB or BGR, got {color!r}")
        desc["input_color"] = color
    if data.get("transform_ops") is not None:
        desc["transform_ops"] = _check_ops(data["transform_ops"], f"{key}.transform_ops")
    decoder = data.get("decoder")
    if role == "detector":
        if decoder not in ("gfl", "paddledet"):
            raise ManifestError(f"{key}.decoder", f"expected 'gfl' or 'paddledet', got {decoder!r}")
        desc["decoder"] = decoder
    elif decoder is not None:
        raise ManifestError(f"{key}.decoder", "only the detector has a decoder")
    if data.get("decoder_args") is not None:
        desc["decoder_args"] = _mapping(data["decoder_args"], f"{key}.decoder_args")
    if data.get("pooling") is not None:
        if data["pooling"] not in ("gap", "gem", "none"):
            raise ManifestError(f"{key}.pooling", f"expected 'gap', 'gem' or 'none', got {data['pooling']!r}")
        desc["pooling"] = data["pooling"]
    if data.get("projection") is not None:
        desc["projection"] = _str(data["projection"], f"{key}.projection")
    if data.get("onednn") is not None:
        desc["onednn"] = _bool(data["onednn"], f"{key}.onednn")
    if data.get("onednn_passes") is not None:
        passes = _list(data["onednn_passes"], f"{key}.onednn_passes")
        desc["onednn_passes"] = [_str(p, f"{key}.onednn_passes[{i}]") for i, p in enumerate(passes)]

    # Final word: the engine's own parser must accept the description.
    from shitu.model_spec import ModelSpec, ModelSpecError

    try:
        ModelSpec.from_dict(dict(desc), Path(path))
    except ModelSpecError as exc:
        raise ManifestError(key, str(exc)) from None
    return ModelEntry(
        role=role,
        name=name,
        format=fmt,
        path=path,
        files=files,
        description=desc,
        embedding_size=embedding_size,
        archive=archive,
        source=source,
    )


def _parse_params(value: Any) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    _mapping(value, "params")
    from shitu.params import ParamError, flatten

    try:
        flat = flatten(value)
    except ParamError as exc:
        prefix = f"parameter {exc.name!r}: "
        text = str(exc)
        raise ManifestError(f"params.{exc.name}", text[len(prefix) :] if text.startswith(prefix) else text) from None
    for name in flat:
        if name in PACK_MANAGED_PARAMS:
            raise ManifestError(
                f"params.{name}", "is set by the registry from the pack's models and galleries; a pack may not set it"
            )
    nested: dict[str, dict[str, Any]] = {}
    for name, v in flat.items():
        section, key = name.split(".", 1)
        nested.setdefault(section, {})[key] = v
    return nested


def _index_defaults(params: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from shitu.params import BY_NAME

    idx = params.get("IndexProcess", {})
    return {
        "index_method": idx.get("index_method", BY_NAME["IndexProcess.index_method"].default),
        "dist_type": idx.get("dist_type", BY_NAME["IndexProcess.dist_type"].default),
        "delimiter": idx.get("delimiter", BY_NAME["IndexProcess.delimiter"].default),
    }


def _parse_gallery(name: str, value: Any, key: str, defaults: dict[str, Any]) -> GalleryEntry:
    if not GALLERY_RE.match(name):
        raise ManifestError(
            key,
            "gallery names are letters, digits, '_', '.' and '-', starting with a letter or digit (they name a folder)",
        )
    data = _mapping(value if value is not None else {}, key)
    _check_keys(data, key, _GALLERY_KEYS)
    list_file = safe_relpath(data["list_file"], f"{key}.list_file") if data.get("list_file") is not None else None
    folder = safe_relpath(data["folder"], f"{key}.folder") if data.get("folder") is not None else None
    image_root = safe_relpath(data["image_root"], f"{key}.image_root") if data.get("image_root") is not None else None
    vectors_file = (
        safe_relpath(data["vectors_file"], f"{key}.vectors_file") if data.get("vectors_file") is not None else None
    )
    if list_file and folder:
        raise ManifestError(f"{key}.folder", "give either list_file or folder, not both")
    if vectors_file and (list_file or folder):
        raise ManifestError(f"{key}.vectors_file", "give one of list_file, folder or vectors_file")
    if image_root and not list_file:
        raise ManifestError(f"{key}.image_root", "only used with list_file")
    dist_type = data.get("dist_type", defaults["dist_type"])
    if dist_type not in ("IP", "L2", "hamming"):
        raise ManifestError(f"{key}.dist_type", f"expected one of ['IP', 'L2', 'hamming'], got {dist_type!r}")
    index_method = _str(data.get("index_method", defaults["index_method"]), f"{key}.index_method")
    return GalleryEntry(
        name=name,
        title=_str(data.get("title") or name, f"{key}.title"),
        description=_str(data.get("description") or "", f"{key}.description", allow_empty=True),
        list_file=list_file,
        image_root=image_root,
        folder=folder,
        delimiter=_str(data.get("delimiter", defaults["delimiter"]), f"{key}.delimiter", allow_empty=True),
        index_method=index_method,
        dist_type=dist_type,
        data_url=_url(data["data_url"], f"{key}.data_url") if data.get("data_url") is not None else None,
        files=_parse_files(data.get("files") or [], f"{key}.files", required=False),
        vectors_file=vectors_file,
    )
