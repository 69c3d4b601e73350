"""The scenario-pack registry: discovery, selection and the store operations.

Packs come from three sources, all declared statically by a ``pack.yaml`` (reading one imports no code):

- ``builtin``: ``plugins/packs/*/pack.yaml`` shipped with shitu-hub;
- ``entrypoint``: installed Python distributions declaring ``[shitu.packs] <name> = <module>``; the module or
  package folder holding ``pack.yaml`` is located with import machinery finders, without running its code;
- ``store``: versions installed by :func:`install` under ``$SHITU_HOME/packs`` (see :mod:`.store`).

A name resolves to one pack: the store's current version if the store has the pack, else an entry-point pack,
else a built-in one. ``get_pack(None)`` is the default pack: ``$SHITU_DEFAULT_PACK``, else the store's configured
default (``shitu plugins use``), else ``general-lite``.

Example::

    from shitu.plugins import registry
    pack = registry.get_pack()                     # the default pack
    det, rec = pack.detector_spec(), pack.extractor_spec()
    gallery = pack.gallery()                       # its default gallery: folder, dimension, index settings
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shitu.plugins import runtime_check, store
from shitu.plugins.errors import InvalidPack, ManifestError, PackConflict, PackError, PackNotFound
from shitu.plugins.gallery_spec import GallerySpec
from shitu.plugins.installer import install as _install
from shitu.plugins.manifest import MANIFEST_FILE, Manifest, read_manifest
from shitu.plugins.pack import Pack
from shitu.plugins.versions import shitu_version, version_key

__all__ = [
    "FileCheck",
    "GallerySpec",
    "ManifestError",
    "Pack",
    "PackError",
    "PackInfo",
    "default_pack_name",
    "find_pack",
    "get_pack",
    "install",
    "list_packs",
    "rollback",
    "select",
    "uninstall",
    "use",
    "verify",
    "verify_files",
]

ENTRY_POINT_GROUP = "shitu.packs"
FALLBACK_DEFAULT = "general-lite"
BUILTIN_DIR = Path(__file__).resolve().parent / "packs"
SOURCES = ("store", "entrypoint", "builtin")  # resolution order for one name


# -- public types --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PackInfo:
    """One discovered pack version (``error`` set when its manifest cannot be used)."""

    name: str
    version: str
    title: str
    source: str  # "builtin" | "entrypoint" | "store"
    root: Path
    current: bool = False  # the version get_pack(name) resolves to
    default: bool = False  # name is the default pack
    available: bool = False  # every required model file is present
    compatible: bool = True  # this shitu-hub is in the manifest's shitu_hub range
    error: str | None = None
    detail: str = ""  # entry point "name = value" / store install source

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``root`` as a string)."""
        return {**self.__dict__, "root": str(self.root)}


@dataclass(frozen=True)
class FileCheck:
    """The state of one listed file. ``status``: ok | missing | mismatch | size | unverified | absent-optional."""

    pack: str
    version: str
    path: str
    status: str
    detail: str = ""

    @property
    def problem(self) -> bool:
        return self.status not in ("ok", "absent-optional")


# -- discovery -----------------------------------------------------------------------------------------------------
_MANIFEST_CACHE: dict[tuple[str, int, int], Manifest | PackError] = {}


def _load_manifest(path: Path) -> Manifest:
    try:
        st = path.stat()
    except OSError:
        raise ManifestError("", "no such manifest", str(path)) from None
    key = (str(path), st.st_mtime_ns, st.st_size)
    hit = _MANIFEST_CACHE.get(key)
    if hit is None:
        try:
            hit = read_manifest(path)
        except PackError as exc:
            hit = exc
        if len(_MANIFEST_CACHE) > 256:
            _MANIFEST_CACHE.clear()
        _MANIFEST_CACHE[key] = hit
    if isinstance(hit, PackError):
        raise hit
    return hit


@dataclass
class _Found:
    source: str
    root: Path
    manifest: Manifest | None
    error: str | None
    name: str  # manifest name, or the best guess (folder / entry point name) when broken
    detail: str = ""
    record: dict[str, Any] | None = None


def _builtin() -> list[_Found]:
    found = []
    for path in sorted(BUILTIN_DIR.glob(f"*/{MANIFEST_FILE}")):
        found.append(_found("builtin", path.parent, path.parent.name.replace("_", "-")))
    return found


def _entry_point_root(value: str) -> Path:
    """The folder of the module/package an entry point names, found without importing it."""
    modname = value.split(":", 1)[0].strip()
    parts = modname.split(".")
    if not all(p.isidentifier() for p in parts):
        raise InvalidPack(f"entry point value {value!r} is not a module name")
    spec = importlib.util.find_spec(parts[0])  # top level: consults finders, imports nothing
    if spec is None:  # installed after the finders cached their folder listings
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(parts[0])
    for part in parts[1:]:
        if spec is None or not spec.submodule_search_locations:
            spec = None
            break
        spec = importlib.machinery.PathFinder.find_spec(part, list(spec.submodule_search_locations))
    if spec is None:
        raise PackNotFound(f"module {modname!r} of entry point {value!r} cannot be found")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        return Path(spec.origin).parent
    raise InvalidPack(f"module {modname!r} has no folder on disk")


def _entrypoints() -> list[_Found]:
    from importlib.metadata import entry_points

    found = []
    seen: set[tuple[str, str]] = set()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if (ep.name, ep.value) in seen:
            continue
        seen.add((ep.name, ep.value))
        dist = getattr(getattr(ep, "dist", None), "name", None)
        detail = f"{ep.name} = {ep.value}" + (f" ({dist})" if dist else "")
        try:
            root = _entry_point_root(ep.value)
        except (PackError, ImportError, ValueError) as exc:
            found.append(_Found("entrypoint", Path(), None, f"entry point {detail}: {exc}", ep.name, detail))
            continue
        item = _found("entrypoint", root, ep.name, detail)
        if item.manifest is not None and item.manifest.name != ep.name:
            item.error = (
                f"entry point {detail}: its manifest names the pack {item.manifest.name!r}; the entry "
                "point name must be the pack name"
            )
            item.manifest = None
            item.name = ep.name
        found.append(item)
    return found


def _store(name: str | None = None) -> list[_Found]:
    found = []
    for n in [name] if name else store.installed_names():
        for v in store.installed_versions(n):
            folder = store.version_dir(n, v)
            item = _found("store", folder, n)
            item.record = store.read_record(folder)
            if item.record:
                item.detail = str(item.record.get("source", ""))
            if item.manifest is not None and (item.manifest.name, item.manifest.version) != (n, v):
                item.error = (
                    f"{folder}: the manifest says {item.manifest.name} {item.manifest.version}, the "
                    "store folder says otherwise"
                )
                item.manifest = None
                item.name = n
            found.append(item)
    return found


def _found(source: str, root: Path, guess: str, detail: str = "") -> _Found:
    try:
        m = _load_manifest(root / MANIFEST_FILE)
    except PackError as exc:
        return _Found(source, root, None, str(exc), guess, detail)
    return _Found(source, root, m, None, m.name, detail)


def _discover(name: str | None = None) -> list[_Found]:
    items = _store(name) + _entrypoints() + _builtin()
    if name is not None:
        items = [i for i in items if i.name == name]
    return items


def _pick(items: list[_Found], name: str, version: str | None) -> _Found:
    good = [i for i in items if i.name == name and i.manifest is not None]
    if version is not None:
        for source in SOURCES:
            for i in good:
                if i.source == source and i.manifest.version == version:  # type: ignore[union-attr]
                    return i
        have = sorted({i.manifest.version for i in good}, key=version_key)  # type: ignore[union-attr]
        raise PackNotFound(
            f"pack {name!r} has no version {version!r}" + (f" (available: {', '.join(have)})" if have else "")
        )
    stored = [i for i in items if i.name == name and i.source == "store"]
    if stored:  # the store has the pack: its current version, even when broken (never a silent fallback)
        current = store.current_version(name)
        for i in stored:
            if i.root.name == current:
                if i.manifest is None:
                    raise InvalidPack(f"pack {name!r} {current} (store) cannot be used: {i.error}")
                return i
    for source in ("entrypoint", "builtin"):
        same = [i for i in good if i.source == source]
        if same:
            return max(same, key=lambda i: version_key(i.manifest.version))  # type: ignore[union-attr]
    broken = [i for i in items if i.name == name]
    if broken:
        raise InvalidPack(f"pack {name!r} cannot be used: {broken[0].error}")
    known = sorted({i.name for i in _discover() if i.manifest is not None})
    raise PackNotFound(
        f"no pack named {name!r} (known: {', '.join(known) or 'none'}); install one with "
        "`shitu plugins install <folder|archive|url|name>`"
    )


def _to_pack(item: _Found) -> Pack:
    return Pack(item.manifest, item.root, item.source, item.record)  # type: ignore[arg-type]


# -- public API ----------------------------------------------------------------------------------------------------
def default_pack_name() -> str:
    """``$SHITU_DEFAULT_PACK``, else the store's configured default, else ``general-lite``."""
    return os.environ.get("SHITU_DEFAULT_PACK", "").strip() or store.read_default() or FALLBACK_DEFAULT


def list_packs() -> list[PackInfo]:
    """Every discovered pack version, sorted by name; broken manifests are listed with ``error`` set."""
    items = _discover()
    default = default_pack_name()
    resolved: dict[str, _Found] = {}
    for name in {i.name for i in items}:
        try:
            resolved[name] = _pick(items, name, None)
        except PackError:
            pass
    out = []
    for i in items:
        if i.manifest is None:
            out.append(
                PackInfo(
                    name=i.name,
                    version="?",
                    title="",
                    source=i.source,
                    root=i.root,
                    default=i.name == default,
                    error=i.error,
                    detail=i.detail,
                )
            )
            continue
        pack = _to_pack(i)
        out.append(
            PackInfo(
                name=pack.name,
                version=pack.version,
                title=pack.title,
                source=i.source,
                root=i.root,
                current=resolved.get(i.name) is i,
                default=pack.name == default,
                available=pack.is_available(),
                compatible=pack.compatible,
                detail=i.detail,
            )
        )
    order = {s: n for n, s in enumerate(SOURCES)}
    out.sort(key=lambda p: (p.name, order[p.source], version_key(p.version)))
    return out


def get_pack(name: str | None = None, version: str | None = None) -> Pack:
    """The pack ``name`` (``None``: the default pack) at ``version`` (``None``: the current one)."""
    name = name or default_pack_name()
    pack = _to_pack(_pick(_discover(name), name, version))
    if not pack.compatible:
        raise PackConflict(
            f"pack {pack.name!r} {pack.version} ({pack.source}) needs shitu-hub {pack.shitu_hub}; "
            f"this is {shitu_version()}"
        )
    return pack


def select(pack: str | None = None, gallery: str | None = None) -> tuple[Pack, GallerySpec]:
    """What one request uses: the scenario ``pack`` (default: the default pack) and its ``gallery`` (default: the
    pack's default gallery). Raises :class:`PackError` naming what is unknown."""
    chosen = get_pack(pack)
    return chosen, chosen.gallery(gallery)


def find_pack(name: str, version: str | None = None) -> Pack:
    """Like :func:`get_pack` but also returns packs made for another shitu-hub version (for info/verify)."""
    return _to_pack(_pick(_discover(name), name, version))


def _info_of(name: str, version: str) -> PackInfo:
    for p in list_packs():
        if p.name == name and p.version == version and p.source == "store":
            return p
    raise PackNotFound(f"pack {name!r} {version} is not in the store")  # pragma: no cover - just committed


def install(
    source: str,
    *,
    name: str | None = None,
    trust: bool = False,
    sha256: str | Iterable[str] | None = None,
    progress: bool = True,
    from_files: Iterable[str | os.PathLike] | None = None,
) -> PackInfo:
    """Install a pack into the store and make it current; return its :class:`PackInfo`.

    ``source``: a pack folder, a ``pack.yaml``, a ``.tar``/``.tar.gz``/``.tgz``/``.zip`` archive, an http(s) URL
    of such an archive, or the name of a built-in / entry-point pack (its model files are then fetched from the
    URLs its manifest gives, or taken from ``from_files``: files downloaded elsewhere, matched by file name).
    ``name``: the pack name the source must have. ``sha256``: expected hash(es) for downloaded or given files
    whose manifest publishes none (and for a URL / archive source itself); ``trust``: accept such files unverified
    (their hashes are recorded, so ``verify`` notices later changes).
    """
    installed_name, version = _install(
        source, name=name, trust=trust, sha256=sha256, progress=progress, from_files=from_files, find_pack=_discover
    )
    return _info_of(installed_name, version)


def uninstall(name: str, version: str | None = None) -> list[str]:
    """Remove one version (or, with ``version=None``, every version) of ``name`` from the store; return the removed
    versions. Removing the current version makes the previous current (or the newest left) current."""
    with store.lock():
        versions = store.installed_versions(name)
        if not versions:
            others = [i.source for i in _discover(name) if i.source != "store"]
            why = f" ({'/'.join(others)} packs cannot be removed)" if others else ""
            raise PackNotFound(f"pack {name!r} has no version in the store {store.packs_dir()}{why}")
        if version is not None and version not in versions:
            raise PackNotFound(f"pack {name!r} {version} is not installed (installed: {', '.join(versions)})")
        targets = [version] if version is not None else list(versions)
        current, history = store.read_pointer(name)
        left = [v for v in versions if v not in targets]
        history = [v for v in history if v in left]
        if current not in left:
            current = history.pop(0) if history else (left[-1] if left else None)
        if left:
            store.write_pointer(name, current, history)
        for v in targets:
            store.remove_version(name, v)
        if not left:
            store.remove_pack_folder(name)
            if store.read_default() == name and not [i for i in _discover(name) if i.manifest is not None]:
                store.write_default(None)
    return targets


def use(name: str, version: str | None = None, *, default: bool = True) -> Pack:
    """Make ``version`` of ``name`` current (store packs) and, with ``default=True``, ``name`` the default pack."""
    with store.lock():
        versions = store.installed_versions(name)
        if version is not None and versions:
            if version not in versions:
                raise PackNotFound(
                    f"pack {name!r} {version} is not installed (installed: {', '.join(versions)}); install it first"
                )
            store.set_current(name, version)
        pack = find_pack(name, version)
        if not pack.compatible:
            raise PackConflict(
                f"pack {name!r} {pack.version} needs shitu-hub {pack.shitu_hub}; this is {shitu_version()}"
            )
        if default:
            store.write_default(name)
    return pack


def rollback(name: str) -> str:
    """Make the previous current version of ``name`` current again; return it."""
    with store.lock():
        versions = store.installed_versions(name)
        current, history = store.read_pointer(name)
        history = [v for v in history if v in versions and v != current]
        if not history:
            if not versions:
                raise PackNotFound(f"pack {name!r}: no earlier version to roll back to (not in the store)")
            served = store.current_version(name)
            raise PackConflict(
                f"pack {name!r}: no earlier version to roll back to: {served} is current and no other "
                f"version was current before it (installed: {', '.join(versions)}); switch to any "
                f"installed version with `shitu plugins use {name} VERSION`"
            )
        previous = history.pop(0)
        store.write_pointer(name, previous, history)
    return previous


def verify_files(name: str, version: str | None = None) -> list[FileCheck]:
    """Check every file the pack lists (and, for store packs, the manifest) against its sha256 and size."""
    from shitu.plugins.fetch import sha256_file

    pack = find_pack(name, version)
    recorded = (pack.record or {}).get("files", {}) if pack.record else {}
    out: list[FileCheck] = []

    def check(rel: str, expected: str | None, size: int | None, optional: bool) -> None:
        path = pack.root / rel
        if not path.is_file():
            out.append(
                FileCheck(
                    pack.name,
                    pack.version,
                    rel,
                    "absent-optional" if optional else "missing",
                    "optional, not present" if optional else "not present",
                )
            )
            return
        rec = recorded.get(rel) or {}
        want = expected or rec.get("sha256")
        actual_size = path.stat().st_size
        want_size = size if size is not None else rec.get("size")
        if want_size is not None and actual_size != want_size:
            out.append(FileCheck(pack.name, pack.version, rel, "size", f"{actual_size} bytes, expected {want_size}"))
            return
        if not want:
            out.append(
                FileCheck(pack.name, pack.version, rel, "unverified", "no sha256 in the manifest or the install record")
            )
            return
        got = sha256_file(path)
        if got != want:
            out.append(FileCheck(pack.name, pack.version, rel, "mismatch", f"sha256 {got}, expected {want}"))
        else:
            how = "manifest" if expected else f"pinned at install ({rec.get('verified', 'record')})"
            out.append(FileCheck(pack.name, pack.version, rel, "ok", f"sha256 matches ({how})"))

    if pack.source == "store" and recorded.get(MANIFEST_FILE):
        entry = recorded[MANIFEST_FILE]
        check(MANIFEST_FILE, entry.get("sha256"), entry.get("size"), False)
    for rel, f in pack._m.all_files():
        check(rel, f.sha256, f.size, f.optional)
    return out


def check_runtime(name: str, version: str | None = None) -> dict[str, dict[str, Any]]:
    """Run each model of the pack once in a child process with its runtime settings (see :mod:`.runtime_check`);
    for store packs the outcome replaces ``runtime`` in ``install.json`` (what enables oneDNN at load)."""
    pack = find_pack(name, version)
    if pack.missing_files():
        return {}
    results = runtime_check.check_models(pack._m, pack.root)
    if pack.source == "store":
        with store.lock():
            record = store.read_record(pack.root) or {}
            record["runtime"] = results
            store.write_record(pack.root, record)
    return results


def verify(name: str, version: str | None = None) -> list[str]:
    """Problems of one pack version (empty: every file is present and matches its sha256)."""
    try:
        pack = find_pack(name, version)
    except PackError as exc:
        return [str(exc)]
    problems = []
    if not pack.compatible:
        problems.append(f"{pack.name} {pack.version}: needs shitu-hub {pack.shitu_hub}, this is {shitu_version()}")
    problems += [
        f"{c.pack} {c.version}: {c.path}: {c.status}: {c.detail}"
        for c in verify_files(name, pack.version if version is None else version)
        if c.problem
    ]
    return problems
