"""The user's pack store under ``$SHITU_HOME`` (default ``~/.shitu``), read at call time.

Layout::

    $SHITU_HOME/
      packs/
        .lock                      # filelock: one writer (install/remove/use/rollback) at a time
        .tmp/                      # staging folders; a crashed install leaves one, the next writer deletes it
        default                    # the configured default pack name (written by `shitu plugins use`)
        <name>/
          current                  # line 1: the current version; further lines: earlier currents (rollback)
          <version>/               # one installed version: pack.yaml, its files, install.json
      galleries/<pack>/<gallery>/  # gallery folders (shitu.serving.gallery.local)

Every change is made in a staging folder inside ``packs/.tmp`` and committed with ``rename`` while holding the
lock; pointer files are replaced atomically (write a temporary file, fsync, ``os.replace``). So a reader never
sees half a version, and an install that fails or is killed leaves the previous state as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from shitu.files import fsync_dir as _fsync_dir
from shitu.plugins.errors import PackConflict
from shitu.plugins.manifest import MANIFEST_FILE, NAME_RE
from shitu.plugins.versions import VERSION_RE, version_key

INSTALL_RECORD = "install.json"
LOCK_FILE = ".lock"
TMP_DIR = ".tmp"
DEFAULT_FILE = "default"
CURRENT_FILE = "current"


def home() -> Path:
    value = os.environ.get("SHITU_HOME")
    return Path(value).expanduser() if value else Path.home() / ".shitu"


def packs_dir() -> Path:
    return home() / "packs"


def galleries_dir() -> Path:
    return home() / "galleries"


def version_dir(name: str, version: str) -> Path:
    return packs_dir() / name / version


# -- small atomic helpers ------------------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


# -- the lock ------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def lock(timeout: float | None = None) -> Iterator[Path]:
    """Hold the store's exclusive lock; clean staging folders left by crashed writers. Yields ``packs/``."""
    root = packs_dir()
    root.mkdir(parents=True, exist_ok=True)
    if timeout is None:
        timeout = float(os.environ.get("SHITU_LOCK_TIMEOUT", "120"))
    try:
        with filelock.FileLock(root / LOCK_FILE, timeout=timeout):
            _clean_tmp(root / TMP_DIR)
            yield root
    except filelock.Timeout:
        raise PackConflict(
            f"{root}: another shitu command is changing the pack store (lock held for "
            f"more than {timeout:g} s; SHITU_LOCK_TIMEOUT)"
        ) from None


def _clean_tmp(tmp: Path) -> None:
    """Under the lock no other writer runs, so whatever is in ``.tmp`` was left by a crashed one."""
    if not tmp.is_dir():
        return
    for entry in tmp.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@contextlib.contextmanager
def staging() -> Iterator[Path]:
    """A fresh folder inside ``packs/.tmp`` (same filesystem as the store, so commits are renames); removed on
    exit. Call while holding :func:`lock`."""
    tmp = packs_dir() / TMP_DIR / f"stage-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- reading -------------------------------------------------------------------------------------------------------
def installed_names() -> list[str]:
    root = packs_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and NAME_RE.match(p.name))


def installed_versions(name: str) -> list[str]:
    """Versions of ``name`` in the store, oldest first."""
    folder = packs_dir() / name
    if not NAME_RE.match(name) or not folder.is_dir():
        return []
    found = [
        p.name for p in folder.iterdir() if p.is_dir() and VERSION_RE.match(p.name) and (p / MANIFEST_FILE).is_file()
    ]
    return sorted(found, key=version_key)


def read_pointer(name: str) -> tuple[str | None, list[str]]:
    """``(current version, earlier currents newest first)`` from ``packs/<name>/current``."""
    try:
        lines = (packs_dir() / name / CURRENT_FILE).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None, []
    lines = [v for v in lines if VERSION_RE.match(v)]
    return (lines[0], lines[1:]) if lines else (None, [])


def current_version(name: str) -> str | None:
    """The version of ``name`` the store serves: the pointer if it names an installed version, else the newest."""
    versions = installed_versions(name)
    if not versions:
        return None
    current, _ = read_pointer(name)
    return current if current in versions else versions[-1]


def pointer_stamp(name: str) -> tuple[int | None, ...]:
    """A cheap fingerprint (three ``stat`` calls) of what decides which version of ``name`` is served: the default
    pack file, the pack's ``current`` pointer and its folder (versions added or removed)."""
    root = packs_dir()
    out: list[int | None] = []
    for path in (root / DEFAULT_FILE, root / name / CURRENT_FILE, root / name):
        try:
            out.append(path.stat().st_mtime_ns)
        except (OSError, ValueError):
            out.append(None)
    return tuple(out)


def read_default() -> str | None:
    try:
        value = (packs_dir() / DEFAULT_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return value if NAME_RE.match(value) else None


def read_record(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / INSTALL_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- writing (call with the lock held) -----------------------------------------------------------------------------
def write_pointer(name: str, current: str | None, history: list[str]) -> None:
    path = packs_dir() / name / CURRENT_FILE
    if current is None:
        path.unlink(missing_ok=True)
        return
    seen: list[str] = []
    for v in history:
        if v != current and v not in seen:
            seen.append(v)
    write_atomic(path, "\n".join([current, *seen[:50]]) + "\n")


def set_current(name: str, version: str) -> None:
    """Make ``version`` current, remembering the previous current for :func:`rollback`."""
    current, history = read_pointer(name)
    if current == version:
        return
    if current is None:
        current_served = current_version(name)
        current = current_served if current_served != version else None
    write_pointer(name, version, ([current] if current else []) + history)


def write_default(name: str | None) -> None:
    path = packs_dir() / DEFAULT_FILE
    if name is None:
        path.unlink(missing_ok=True)
    else:
        write_atomic(path, name + "\n")


def write_record(folder: Path, record: dict[str, Any]) -> None:
    with open(folder / INSTALL_RECORD, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def commit(staged: Path, name: str, version: str) -> Path:
    """Move a complete staged version folder into place with one ``rename``."""
    target = version_dir(name, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise PackConflict(f"pack {name!r} {version} is already installed at {target}")
    _fsync_dir(staged)
    os.rename(staged, target)
    _fsync_dir(target.parent)
    return target


def remove_version(name: str, version: str) -> None:
    """Take a version out of the store: one rename out of sight, then delete."""
    target = version_dir(name, version)
    trash = packs_dir() / TMP_DIR / f"trash-{uuid.uuid4().hex[:12]}"
    trash.parent.mkdir(parents=True, exist_ok=True)
    os.rename(target, trash)
    _fsync_dir(target.parent)
    shutil.rmtree(trash, ignore_errors=True)


def remove_pack_folder(name: str) -> None:
    folder = packs_dir() / name
    (folder / CURRENT_FILE).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()
