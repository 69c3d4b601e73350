"""The scenario-pack manifest (``pack.yaml``): its schema (pydantic models), and its bounded reading.

Reading a manifest imports no code: its bytes are capped (:data:`MAX_MANIFEST_BYTES`) before YAML parses them, the
YAML loader is a ``SafeLoader`` refusing aliases and duplicate keys and capping nesting (:data:`MAX_MANIFEST_DEPTH`)
and number lengths (:data:`MAX_NUMBER_CHARS`), then the pydantic models below check it. Every error names the key
path that is wrong, e.g. ``models.recognizer.files[1].sha256: expected 64 hex characters``; keys starting with
``x-`` are extensions, ignored anywhere. Versions and ``shitu_hub`` ranges are PEP 440 (:mod:`.versions`).
``docs/writing-packs.md`` documents every key with a complete example.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from shitu.names import GALLERY_NAME
from shitu.plugins.errors import ManifestError
from shitu.plugins.versions import VERSION_RE

SCHEMA_VERSION = 1
MANIFEST_FILE = "pack.yaml"
MAX_MANIFEST_BYTES = 256 * 1024
"""Bytes a ``pack.yaml`` may have, refused before YAML reads it (the built-in ones are 4-8 KB; a 3 MB manifest
took 190 s and 2 GB to install)."""
MAX_MANIFEST_DEPTH = 32
"""Nesting levels of mappings and lists a manifest may have (the deepest built-in one has 7)."""
MAX_NUMBER_CHARS = 64
"""Characters of one number in a manifest (a million-digit integer costs seconds to convert)."""

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?\Z")
GALLERY_RE = GALLERY_NAME  # one rule for gallery names (shitu.names)
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")

ROLES = {"detector": "detector", "recognizer": "extractor"}  # manifest role -> ModelSpec kind
#: ModelSpec description keys a model entry may carry (see shitu.model_spec).
_KEYS = "kind model_file params_file onnx_file input_color transform_ops decoder decoder_args pooling projection onednn"
DESCRIPTION_KEYS = (*_KEYS.split(), "onednn_passes")
#: Parameters a pack may not set: the registry derives them from the pack's models and galleries.
PACK_MANAGED_PARAMS = ("Global.det_inference_model_dir", "Global.rec_inference_model_dir", "IndexProcess.index_dir")


class _At(ValueError):
    """A problem found by a validator, ``at`` the key path below the value being validated."""

    def __init__(self, problem: str, *at: str | int):
        super().__init__(problem)
        self.problem, self.at = problem, at


def _unknown(key: Any, known: Iterable[str]) -> _At:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    return _At("unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""), key)


# -- value types ---------------------------------------------------------------------------------------------------
def _non_empty(value: str) -> str:
    if not value.strip():
        raise _At("must not be empty")
    return value


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _At(f"expected an http(s) URL, got {value!r}")
    return value


def _sha256(value: str | None) -> str | None:
    if value is not None and not SHA256_RE.match(value.lower()):
        raise _At("expected 64 hex characters (or null when the hash is not published)")
    return None if value is None else value.lower()


def safe_relpath(value: str) -> str:
    """A relative POSIX path that stays inside its folder: no absolute paths, ``..``, ``.`` or backslashes."""
    if "\\" in value or "\0" in value or value.startswith("/") or re.match(r"^[A-Za-z]:", value):
        raise _At(f"must be a relative path inside the pack, got {value!r}")
    if any(p in ("", ".", "..") for p in value.split("/")):
        raise _At(f"must be a relative path without '..', '.' or empty parts, got {value!r}")
    return value


def _folder(value: str) -> str:
    return "." if value in (".", "") else safe_relpath(_non_empty(value))


def _spec(value: str) -> str:
    try:
        SpecifierSet(value)
    except InvalidSpecifier:
        raise _At(f"expected version clauses like '>=0.1.0,<0.2', got {value!r}") from None
    return value


Str = Annotated[str, Strict()]
Text = Annotated[str, Strict(), AfterValidator(_non_empty)]
Url = Annotated[str, Strict(), AfterValidator(_url)]
RelPath = Annotated[str, Strict(), AfterValidator(_non_empty), AfterValidator(safe_relpath)]
Size = Annotated[int, Strict(), Field(ge=0)]
Sha256 = Annotated[Str | None, AfterValidator(_sha256)]


class _Entry(BaseModel):
    """A mapping of the manifest: unknown keys refused (with a suggestion), ``x-`` keys dropped, null = absent."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    _empty_is_absent: ClassVar[tuple[str, ...]] = ()  # keys whose false-ish value (0, "", []) means "not given"

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        keys = list(cls.model_fields)
        out = {}
        for k, v in data.items():
            if not isinstance(k, str):
                raise _At(f"keys must be strings, got {k!r}")
            if k.startswith("x-"):
                continue
            if k not in keys:
                raise _unknown(k, keys)
            if k in cls._empty_is_absent and not v:
                continue
            if v is not None or cls.model_fields[k].is_required():
                out[k] = v
        return out


def _unique(files: list[FileEntry]) -> list[FileEntry]:
    seen: set[str] = set()
    for i, f in enumerate(files):
        if f.path in seen:
            raise _At(f"{f.path!r} is listed twice", i, "path")
        seen.add(f.path)
    return files


class FileEntry(_Entry):
    """One file of a model or gallery: ``path`` relative to the model's (or pack's) folder."""

    path: RelPath
    sha256: Sha256
    size: Size | None = None
    url: Url | None = None
    optional: Annotated[bool, Strict()] = False


Files = Annotated[list[FileEntry], AfterValidator(_unique)]


class ArchiveSource(_Entry):
    """Where a model's files are published as one archive (PaddleClas's ``*_infer.tar``)."""

    url: Url
    sha256: Sha256
    size: Size | None = None
    root: RelPath | None = None  # folder inside the archive that holds the files (stripped on extraction)
    filename: Str = ""  # the name a downloaded copy has (``--from`` files are matched by it); default: the URL's

    @model_validator(mode="after")
    def _filename(self) -> ArchiveSource:
        if not self.filename:
            self.filename = PurePosixPath(urlsplit(self.url).path).name
            if not self.filename:
                raise _At("the URL has no file name; give 'filename'", "filename")
        elif "/" in self.filename or "\\" in self.filename or self.filename in (".", ".."):
            raise _At(f"expected a bare file name, got {self.filename!r}", "filename")
        return self


def _ops(ops: list[Any]) -> list[Any]:
    for i, op in enumerate(ops):
        if not (isinstance(op, dict) and len(op) == 1 and isinstance(next(iter(op)), str)):
            raise _At("expected a one-key mapping {OpName: {args}}", i)
        if not isinstance(next(iter(op.values())), (dict, type(None))):
            raise _At("arguments must be a mapping or null", i, next(iter(op)))
    return ops


class ModelEntry(_Entry):
    """The detector or the recogniser: its files, where they are published and its ``ModelSpec`` description."""

    role: Literal["detector", "recognizer"]  # the key it is under (set by the enclosing mapping)
    name: Text
    format: Literal["paddle", "onnx"]
    path: Annotated[str, Strict(), AfterValidator(_folder)]  # folder relative to the pack root
    files: Files
    archive: ArchiveSource | None = None
    source: Text | None = None
    notes: Text | None = None
    embedding_size: Annotated[int, Strict(), Field(ge=1)] | None = None
    kind: Str | None = None
    model_file: RelPath | None = None
    params_file: RelPath | None = None
    onnx_file: RelPath | None = None
    input_color: Literal["RGB", "BGR"] | None = None
    transform_ops: Annotated[list[Any], AfterValidator(_ops)] | None = None
    decoder: Literal["gfl", "paddledet"] | None = None
    decoder_args: dict[str, Any] | None = None
    pooling: Literal["gap", "gem", "none"] | None = None
    projection: Text | None = None
    onednn: Annotated[bool, Strict()] | None = None
    onednn_passes: list[Text] | None = None

    @model_validator(mode="after")
    def _listed(self) -> ModelEntry:
        if not self.files:
            raise _At("list at least one file", "files")
        listed = {f.path: f for f in self.files}
        for key in ("model_file", "params_file", "onnx_file"):
            rel = getattr(self, key)
            if rel is not None and rel not in listed:
                raise _At(f"{rel!r} is not listed in this model's files", key)
            if rel is not None and listed[rel].optional:
                raise _At(f"{rel!r} is marked optional in this model's files", key)
        needed = ("model_file", "params_file") if self.format == "paddle" else ("onnx_file",)
        for key in needed:
            if getattr(self, key) is None:
                raise _At(f"required for format {self.format!r}", key)
        return self

    @property
    def description(self) -> dict[str, Any]:
        """The ``ModelSpec.from_dict`` input (a fresh copy)."""
        desc = {k: copy.deepcopy(getattr(self, k)) for k in DESCRIPTION_KEYS if getattr(self, k) is not None}
        return {**desc, "kind": ROLES[self.role]}

    @model_validator(mode="after")
    def _role(self) -> ModelEntry:
        """The rules of its role; the engine's parser has the final word."""
        role = self.role
        if self.kind not in (None, ROLES[role]):
            raise _At(f"the {role} is a {ROLES[role]!r} model, got {self.kind!r}", "kind")
        if role == "recognizer" and self.embedding_size is None:
            raise _At("required for the recognizer (the feature dimension)", "embedding_size")
        if role == "detector" and self.embedding_size is not None:
            raise _At("only the recognizer has an embedding size", "embedding_size")
        if role == "detector" and self.decoder is None:
            raise _At("expected 'gfl' or 'paddledet', got None", "decoder")
        if role == "recognizer" and self.decoder is not None:
            raise _At("only the detector has a decoder", "decoder")
        from shitu.model_spec import ModelSpec, ModelSpecError

        try:
            ModelSpec.from_dict(self.description, Path(self.path))
        except ModelSpecError as exc:
            raise _At(str(exc)) from None
        return self


class GalleryEntry(_Entry):
    """One gallery a pack declares; unset index settings come from the pack's ``IndexProcess`` parameters."""

    _empty_is_absent = ("title", "description", "files")
    name: str  # its key under ``galleries`` (set by the enclosing mapping)
    title: Str = ""  # default: its name
    description: Str = ""
    list_file: RelPath | None = None
    image_root: RelPath | None = None
    folder: RelPath | None = None
    delimiter: Str
    index_method: Text
    dist_type: Literal["IP", "L2", "hamming"]
    data_url: Url | None = None
    files: Files = []
    vectors_file: RelPath | None = None  # precomputed embeddings (JSON) the gallery starts with

    @model_validator(mode="after")
    def _sources(self) -> GalleryEntry:
        self.title = self.title or self.name
        if self.list_file and self.folder:
            raise _At("give either list_file or folder, not both", "folder")
        if self.vectors_file and (self.list_file or self.folder):
            raise _At("give one of list_file, folder or vectors_file", "vectors_file")
        if self.image_root and not self.list_file:
            raise _At("only used with list_file", "image_root")
        return self


def _models(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    for k in value:
        if k not in ROLES and not str(k).startswith("x-"):
            raise _unknown(k, ROLES)
    for role in ROLES:
        if role not in value:
            raise _At("required key is missing", role)
    return {role: _inject(value[role], role, "role") for role in ROLES}


def _inject(entry: Any, name: str, key: str, defaults: dict[str, Any] | None = None) -> Any:
    """``entry`` (under the key ``name``) with ``key``, not a manifest key, set to ``name``, after ``defaults``."""
    if isinstance(entry, dict) and key in entry:
        raise _At("unknown key", name, key)
    return {**(defaults or {}), **entry, key: name} if isinstance(entry, dict) else entry


def _galleries(value: Any, defaults: dict[str, Any]) -> Any:
    if not isinstance(value, dict):
        return value
    if not value:
        raise _At("a pack needs at least one gallery")
    for name in value:
        if not isinstance(name, str) or not GALLERY_RE.match(name):
            problem = "gallery names are letters, digits, '_', '.' and '-', starting with a letter or digit"
            raise _At(problem + " (they name a folder)", str(name))
    return {name: _inject({} if v is None else v, name, "name", defaults) for name, v in value.items()}


def _params(value: Any) -> dict[str, dict[str, Any]]:
    """``{Section: {key: value}}`` checked by ``shitu.params`` (PP-ShiTu names); registry-managed keys refused."""
    if not isinstance(value, dict):
        raise _At(f"expected a mapping, got {_tname(value)}")
    from shitu.params import ParamError, flatten

    try:
        flat = flatten(value)
    except ParamError as exc:
        prefix, text = f"parameter {exc.name!r}: ", str(exc)
        raise _At(text.removeprefix(prefix), *exc.name.split(".", 1)) from None
    nested: dict[str, dict[str, Any]] = {}
    for name, v in flat.items():
        if name in PACK_MANAGED_PARAMS:
            msg = "is set by the registry from the pack's models and galleries; a pack may not set it"
            raise _At(msg, *name.split(".", 1))
        section, key = name.split(".", 1)
        nested.setdefault(section, {})[key] = v
    return nested


def _version(value: Any) -> Any:
    if isinstance(value, float):
        raise _At(f'expected a string, got the number {value!r} (quote it: "{value}")')
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_version(value: str) -> str:
    if not VERSION_RE.match(value):
        raise _At(f"expected a version like '1.0.0', got {value!r}")
    return value


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise _At(f"expected lowercase letters, digits and '-' (e.g. 'general-lite'), got {value!r}")
    return value


class Manifest(_Entry):
    """A parsed ``pack.yaml`` (schema version 1)."""

    _empty_is_absent = ("authors", "notes")

    schema_version: int
    name: Annotated[Text, AfterValidator(_check_name)]
    version: Annotated[Text, BeforeValidator(_version), AfterValidator(_check_version)]
    title: Text
    description: Str = ""
    license: Text
    shitu_hub: Annotated[Text, AfterValidator(_spec)]
    homepage: Url | None = None
    authors: list[Text] = []
    notes: Str = ""
    models: dict[str, ModelEntry]
    params: dict[str, dict[str, Any]] = {}  # checked by ``_schema``
    galleries: dict[str, GalleryEntry]
    default_gallery: Str = ""
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)  # the mapping as read
    file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _schema(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise _At(f"expected a mapping at the top level, got {_tname(data)}")
        if "schema_version" not in data:
            raise _At(
                f"required key is missing (this shitu-hub reads schema_version {SCHEMA_VERSION})", "schema_version"
            )
        sv = data["schema_version"]
        if isinstance(sv, bool) or not isinstance(sv, int):
            raise _At(f"expected an integer, got {_tname(sv)}", "schema_version")
        if sv != SCHEMA_VERSION:
            raise _At(
                f"this shitu-hub reads schema_version {SCHEMA_VERSION}, got {sv} (upgrade shitu-hub for newer packs)",
                "schema_version",
            )
        for key in ("raw", "file"):
            if key in data:
                raise _At("unknown key", key)
        from shitu.params import BY_NAME

        data = dict(data)
        try:
            key = "params"
            data[key] = _params({} if data.get(key) is None else data[key])
            idx = data[key].get("IndexProcess", {})
            defaults = {
                k: idx.get(k, BY_NAME[f"IndexProcess.{k}"].default) for k in ("index_method", "dist_type", "delimiter")
            }
            for key, check in (("models", _models), ("galleries", lambda v: _galleries(v, defaults))):
                if key in data:
                    data[key] = check(data[key])
        except _At as exc:
            raise _At(exc.problem, key, *exc.at) from None
        return data

    @model_validator(mode="after")
    def _whole(self) -> Manifest:
        if not self.default_gallery:
            self.default_gallery = next(iter(self.galleries))
        elif self.default_gallery not in self.galleries:
            raise _At(f"{self.default_gallery!r} is not one of galleries {list(self.galleries)}", "default_gallery")
        seen: dict[str, tuple[str, str]] = {}
        owners = [(("models", r), m.path, m.files) for r, m in self.models.items()]
        for owner, prefix, files in owners + [(("galleries", g), ".", e.files) for g, e in self.galleries.items()]:
            for i, f in enumerate(files):
                full = join(prefix, f.path)
                if full in seen:
                    raise _At(f"{full!r} is also listed by {'.'.join(seen[full])}", *owner, "files", i, "path")
                seen[full] = owner
        return self

    def all_files(self) -> list[tuple[str, FileEntry]]:
        """Every listed file as ``(path relative to the pack root, entry)``."""
        out = [(join(m.path, f.path), f) for m in self.models.values() for f in m.files]
        out += [(f.path, f) for g in self.galleries.values() for f in g.files]
        return out


def join(folder: str, rel: str) -> str:
    """``rel`` inside ``folder`` (a model's ``path``), relative to the pack root."""
    return str(PurePosixPath(folder) / rel) if folder not in ("", ".") else rel


# -- errors: pydantic's, in the manifest's words -------------------------------------------------------------------
_NAMES = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}


def _tname(value: Any) -> str:
    return "null" if value is None else _NAMES.get(type(value), type(value).__name__)


def _message(err: ErrorDetails) -> tuple[str, str]:
    """``(key path, problem)`` of one pydantic error."""
    loc: list[str | int] = [p for p in err["loc"] if not (isinstance(p, str) and "[" in p)]  # drop union tags
    kind, got, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if isinstance(ctx.get("error"), _At):
        loc += ctx["error"].at
        problem = ctx["error"].problem
    elif kind == "missing":
        problem = "required key is missing"
    elif kind == "string_type":
        quote = " (quote it)" if isinstance(got, (int, float)) and not isinstance(got, bool) else ""
        problem = f"expected a string, got {_tname(got)}{quote}"
    elif kind in ("int_type", "bool_type", "dict_type", "model_type", "list_type"):
        want = {"int": "an integer", "bool": "true or false", "list": "a list"}.get(kind[:-5], "a mapping")
        problem = f"expected {want}, got {_tname(got)}"
    elif kind == "greater_than_equal":
        problem = f"must be >= {ctx['ge']}, got {got}"
    elif kind == "literal_error":
        problem = f"expected {ctx['expected']}, got {got!r}"
    else:
        problem = err["msg"].removeprefix("Value error, ")
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return path, problem


# -- reading -------------------------------------------------------------------------------------------------------
_LIBYAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser where present: about 10x faster


def _check_events(text: str) -> None:
    """Refuse aliases (a 2 KB "billion laughs" expands to gigabytes) and nesting past :data:`MAX_MANIFEST_DEPTH`
    (PyYAML's composer recurses) from the parser's flat event stream, before any node is built."""
    depth = 0
    for event in yaml.parse(text, Loader=_LIBYAML):
        if isinstance(event, yaml.AliasEvent):
            problem = "YAML aliases (*name) are not allowed in a pack manifest"
            raise yaml.composer.ComposerError(None, None, problem, event.start_mark)
        depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
        if depth > MAX_MANIFEST_DEPTH:
            problem = f"nested deeper than {MAX_MANIFEST_DEPTH} levels"
            raise yaml.composer.ComposerError(None, None, problem, event.start_mark)


class _BoundedLoader(_LIBYAML):  # type: ignore[misc, valid-type]
    """A safe loader refusing duplicate keys (plain YAML keeps the last one) and long numbers."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def _number(self, node: yaml.ScalarNode) -> Any:
        if len(node.value) > MAX_NUMBER_CHARS:
            raise yaml.constructor.ConstructorError(
                None, None, f"a number longer than {MAX_NUMBER_CHARS} characters", node.start_mark
            )
        return (self.construct_yaml_int if node.tag.endswith(":int") else self.construct_yaml_float)(node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader._number)
_BoundedLoader.add_constructor("tag:yaml.org,2002:float", _BoundedLoader._number)


def load_yaml(text: str, file: str | None = None) -> dict[str, Any]:
    """The mapping a manifest's text holds, read within the bounds above."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_MANIFEST_BYTES:
        raise ManifestError("", f"larger than {MAX_MANIFEST_BYTES} bytes (MAX_MANIFEST_BYTES)", file)
    try:
        _check_events(text)
        data = yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: Python's own cap on digits
        raise ManifestError("", f"not valid YAML: {exc}", file) from exc
    if data is None:
        raise ManifestError("", "the manifest is empty", file)
    if not isinstance(data, dict):
        raise ManifestError("", f"expected a mapping at the top level, got {_tname(data)}", file)
    return data


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate ``path`` (a ``pack.yaml`` or a folder holding one); at most :data:`MAX_MANIFEST_BYTES`
    are read."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)  # never more: the cap holds for a huge file too
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError("", f"larger than {MAX_MANIFEST_BYTES} bytes (MAX_MANIFEST_BYTES)", str(path))
        text = data.decode("utf-8")
    except FileNotFoundError as exc:
        raise ManifestError("", "no such manifest", str(path)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError("", f"cannot read: {exc}", str(path)) from exc
    return parse_manifest(load_yaml(text, str(path)), file=str(path))


def parse_manifest(data: dict[str, Any], file: str | None = None) -> Manifest:
    """Validate a manifest given as a mapping; raise :class:`ManifestError` naming the first wrong key."""
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(*_message(exc.errors()[0]), file) from None
    manifest.raw, manifest.file = data, file
    return manifest
