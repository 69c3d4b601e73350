"""Versions of a pack made on this machine, installed like any other version: another recogniser (``shitu adapt
--pack``, this module's :func:`stage`) or int8 models (``shitu plugins quantize``, :mod:`shitu.serving.quantize`,
through :func:`copy_version` / :func:`write_manifest`).

:func:`stage` copies the pack version being adapted (its folder as installed), puts the new recogniser folder in
place of its recogniser, bumps the version with a local label (``1.1.0`` -> ``1.1.0+adapt.1``, then ``+adapt.2``...),
lists every recogniser file with its sha256 and size in the manifest, applies the parameters the recogniser was
trained with, and lets a caller rewrite galleries shipped as vectors (they are in the old embedding space).
:func:`install_staged` then hands the folder to the ordinary installer (every file checked against its sha256,
each model run once in a child process, one ``rename`` under the store's lock), so ``shitu plugins use`` /
``rollback`` switch between the versions. Nothing here imports the serving runtime.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from shitu.plugins import registry, store
from shitu.plugins.errors import InvalidPack, PackConflict
from shitu.plugins.fetch import copy_tree, sha256_file
from shitu.plugins.manifest import DESCRIPTION_KEYS, MANIFEST_FILE, Manifest, read_manifest

__all__ = [
    "LOCAL_PREFIX",
    "copy_version",
    "ensure_in_store",
    "install_staged",
    "list_files",
    "next_version",
    "stage",
    "write_manifest",
]

LOCAL_PREFIX = "adapt"
#: Keys of a recogniser folder's ``shitu_model.yml`` that the manifest's recogniser entry repeats.
_DESCRIPTION_KEYS = tuple(k for k in DESCRIPTION_KEYS if k not in ("kind", "decoder", "decoder_args"))
#: Files of a pack version that are the store's, not the pack's.
_STORE_FILES = (store.INSTALL_RECORD,)


def next_version(name: str, base_version: str, prefix: str = LOCAL_PREFIX) -> str:
    """``<release>+<prefix>.<n>`` with ``n`` one more than any such version of ``name`` in the store."""
    release = base_version.partition("+")[0]
    pattern = re.compile(rf"^{re.escape(release)}\+{re.escape(prefix)}\.([0-9]+)\Z")
    taken = [int(m.group(1)) for v in store.installed_versions(name) if (m := pattern.match(v))]
    return f"{release}+{prefix}.{max(taken, default=0) + 1}"


def ensure_in_store(name: str) -> tuple[registry.Pack, bool]:
    """The current version of pack ``name``, installed into the store first when it is not there (a built-in or
    entry-point pack, from its own files), so that ``rollback`` has a version to return to; (pack, installed)."""
    pack = registry.get_pack(name)
    if pack.source == "store":
        return pack, False
    registry.install(pack.name, name=pack.name, progress=False)  # (a store version would have been found)
    return registry.get_pack(pack.name, pack.version), True


def copy_version(pack: registry.Pack, dest: Path) -> dict[str, Any]:
    """Copy the installed folder of ``pack`` into the new folder ``dest`` (without the store's own files); its
    manifest's data, to edit and give to :func:`write_manifest`."""
    if dest.exists():
        raise PackConflict(f"{dest}: exists already")
    copy_tree(pack.root, dest)
    for name in _STORE_FILES:
        (dest / name).unlink(missing_ok=True)
    return yaml.safe_load((dest / MANIFEST_FILE).read_text(encoding="utf-8"))


def list_files(folder: Path, files: list[str]) -> list[dict[str, Any]]:
    """Manifest ``files`` entries (path, sha256, size) of ``files`` under ``folder``."""
    return [{"path": rel, "sha256": sha256_file(folder / rel), "size": (folder / rel).stat().st_size} for rel in files]


def write_manifest(dest: Path, data: dict[str, Any], header: str) -> Manifest:
    """Write the edited manifest ``data`` of the staged folder ``dest`` under the comment ``header``; read back."""
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    (dest / MANIFEST_FILE).write_text(
        comment + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    return read_manifest(dest / MANIFEST_FILE)


def stage(
    pack: registry.Pack,
    rec_dir: Path,
    dest: Path,
    *,
    version: str,
    params: dict[str, dict[str, Any]] | None = None,
    note: str = "",
    rewrite_vectors: Callable[[Path], None] | None = None,
) -> Manifest:
    """Write into the new folder ``dest`` version ``version`` of ``pack`` with the recogniser folder ``rec_dir``.

    ``params``: sections merged into the manifest's ``params`` (the recognition settings the recogniser was
    trained with). ``rewrite_vectors(path)``: called for each gallery ``vectors_file`` (rewrites it in place for the
    new recogniser); without it a pack shipping vectors is refused, since they would be in the wrong space.
    """
    rec_dir, dest = Path(rec_dir), Path(dest)
    data = copy_version(pack, dest)
    entry = data["models"]["recognizer"]
    folder = dest / entry["path"]
    shutil.rmtree(folder, ignore_errors=True)
    files = copy_tree(rec_dir, folder)
    desc = yaml.safe_load((rec_dir / "shitu_model.yml").read_text(encoding="utf-8")) or {}
    for key in _DESCRIPTION_KEYS:
        if desc.get(key) is not None:
            entry[key] = desc[key]
        else:
            entry.pop(key, None)
    entry["files"] = list_files(folder, files)
    entry["name"] = f"{entry['name']}+{LOCAL_PREFIX}"
    for section, values in (params or {}).items():
        data.setdefault("params", {}).setdefault(section, {}).update(values)
    for gname, gallery in (data.get("galleries") or {}).items():
        if not gallery.get("vectors_file"):
            continue
        if rewrite_vectors is None:
            raise InvalidPack(
                f"pack {pack.name!r}: gallery {gname!r} ships vectors of the old recogniser and this "
                "recogniser cannot map them; remove the gallery from the pack or give its images"
            )
        path = dest / gallery["vectors_file"]
        rewrite_vectors(path)
        for f in gallery.get("files") or []:
            if f.get("path") == gallery["vectors_file"]:
                f["sha256"], f["size"] = sha256_file(path), path.stat().st_size
    data["version"] = version
    header = f"{pack.name} {version}: {pack.version} with its recogniser adapted by `shitu adapt` on this machine."
    return write_manifest(dest, data, header + (f"\n{note}" if note else ""))


def install_staged(folder: Path, *, make_current: bool = True) -> registry.PackInfo:
    """Install the staged version ``folder``; with ``make_current=False`` the version served before stays
    current (and the rollback history as it was)."""
    manifest = read_manifest(Path(folder) / MANIFEST_FILE)
    before = store.read_pointer(manifest.name), store.current_version(manifest.name)
    info = registry.install(str(folder), name=manifest.name, progress=False)
    if not make_current:
        (current, history), served = before
        with store.lock():
            store.write_pointer(manifest.name, current or served, history)
    return info
