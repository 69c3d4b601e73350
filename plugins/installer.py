"""``install``: bring a pack into the store, checking every file, committing with one rename under the lock.

Steps (all inside ``$SHITU_HOME/packs/.tmp/stage-*``, removed whatever happens):

1. stage the pack folder from the source: a folder, a ``pack.yaml``, an archive, an http(s) URL of an archive, or
   the name of a built-in / entry-point pack;
2. read and check the manifest (name, version not yet installed, compatible with this shitu-hub);
3. fetch missing model files: from ``--from`` files (matched by file name, or by sha256), else from the URLs the
   manifest gives (model ``archive`` or per-file ``url``); a failed download stops at once with instructions
   for fetching the files on another machine;
4. check every listed file: present, size, sha256. Files without a published sha256 need ``--sha256`` (the hash
   the user checked) or ``--trust``; their hashes are recorded in ``install.json`` so ``verify`` sees later
   changes;
4b. run each model once in a child process with the pack's runtime settings (:mod:`.runtime_check`): a model
   that crashes or hangs is refused; the outcome is recorded (oneDNN is later enabled only as recorded);
5. write ``install.json``, rename the staged folder to ``packs/<name>/<version>``, make it current.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shitu.plugins import runtime_check, store
from shitu.plugins.errors import InvalidPack, ManifestError, PackConflict, PackNotFound, PackUnavailable
from shitu.plugins.fetch import DownloadError, archive_names, copy_tree, download, extract_archive, sha256_file
from shitu.plugins.manifest import (
    MANIFEST_FILE,
    NAME_RE,
    SHA256_RE,
    Manifest,
    ModelEntry,
    join,
    read_manifest,
)
from shitu.plugins.versions import shitu_version, version_matches


def _is_url(text: str) -> bool:
    return urlsplit(text).scheme in ("http", "https")


class _Ctx:
    def __init__(self, tmp: Path, trust: bool, hashes: set[str], from_files: list[Path], progress: bool):
        self.tmp = tmp
        self.trust = trust
        self.hashes = hashes
        self.used_hashes: set[str] = set()
        self.from_files = from_files
        self.used_from: set[Path] = set()
        self.progress = progress
        self.source_desc = ""
        self.source_arg = ""  # the source as the user gave it (for instructions)
        self.provenance: dict[str, str] = {}  # pack-relative path -> how it was verified when it has no sha256
        self.downloads_dir = tmp / "downloads"
        self.find_pack: Callable[[str], list[Any]] | None = None  # the registry's discovery, for a pack name
        self._n = 0

    def scratch(self, prefix: str) -> Path:
        self._n += 1
        path = self.tmp / f"{prefix}-{self._n}"
        path.mkdir(parents=True)
        return path


def _normalize_hashes(sha256: str | Iterable[str] | None) -> set[str]:
    if sha256 is None:
        return set()
    values = [sha256] if isinstance(sha256, str) else list(sha256)
    out = set()
    for v in values:
        v = str(v).strip().lower()
        if not SHA256_RE.match(v):
            raise InvalidPack(f"--sha256 {v!r}: expected 64 hex characters")
        out.add(v)
    return out


def install(
    source: str,
    *,
    name: str | None = None,
    trust: bool = False,
    sha256: str | Iterable[str] | None = None,
    progress: bool = True,
    from_files: Iterable[str | os.PathLike] | None = None,
    find_pack: Callable[[str], list[Any]] | None = None,
) -> tuple[str, str]:
    """Install ``source`` into the store (see ``registry.install``); ``find_pack(name)`` lists the packs known by
    that name (the registry's discovery: items with ``source``, ``manifest``, ``root``, ``error``), for a source
    that is a pack name."""
    hashes = _normalize_hashes(sha256)
    files = [Path(p).expanduser() for p in (from_files or [])]
    for f in files:
        if not f.is_file():
            raise InvalidPack(f"--from {f}: no such file")
    if name is not None and not NAME_RE.match(name):
        raise InvalidPack(f"--name {name!r}: not a pack name")
    with store.lock():
        with store.staging() as tmp:
            ctx = _Ctx(tmp, trust, hashes, [f.resolve() for f in files], progress)
            ctx.find_pack = find_pack
            stage = tmp / "pack"
            ctx.source_arg = str(source)
            manifest = _stage(str(source), stage, ctx)
            if name is not None and manifest.name != name:
                raise InvalidPack(f"{source}: holds pack {manifest.name!r}, not {name!r}")
            if not version_matches(shitu_version(), manifest.shitu_hub):
                raise PackConflict(
                    f"pack {manifest.name!r} {manifest.version} needs shitu-hub {manifest.shitu_hub}; "
                    f"this is {shitu_version()}"
                )
            _refuse_installed(manifest)
            for model in manifest.models.values():
                _complete_model(manifest, model, stage, ctx)
            record_files = _check_files(manifest, stage, ctx)
            unused = ctx.hashes - ctx.used_hashes
            if unused:
                raise InvalidPack(
                    f"--sha256 {', '.join(sorted(unused))}: matches no file of pack {manifest.name!r} that needed one"
                )
            unused_from = [str(f) for f in ctx.from_files if f not in ctx.used_from]
            if unused_from:
                raise InvalidPack(
                    f"--from {', '.join(unused_from)}: not needed by pack {manifest.name!r} (it needs: "
                    f"{', '.join(_needed_names(manifest)) or 'nothing'})"
                )
            runtime = runtime_check.check_models(manifest, stage)
            refused = runtime_check.refusal(manifest, runtime, f"pack {manifest.name!r} {manifest.version}")
            if refused:
                raise InvalidPack(refused)
            store.write_record(
                stage,
                {
                    "name": manifest.name,
                    "version": manifest.version,
                    "source": ctx.source_desc,
                    "installed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "shitu_hub": shitu_version(),
                    "trusted": ctx.trust and any(v.get("verified") == "trust" for v in record_files.values()),
                    "files": record_files,
                    "runtime": runtime,
                },
            )
            store.commit(stage, manifest.name, manifest.version)
            store.set_current(manifest.name, manifest.version)
    return manifest.name, manifest.version


def _refuse_installed(manifest: Manifest) -> None:
    if store.version_dir(manifest.name, manifest.version).exists():
        raise PackConflict(
            f"pack {manifest.name!r} {manifest.version} is already installed; switch to it with "
            f"`shitu plugins use {manifest.name} {manifest.version}`, or remove it first "
            f"(`shitu plugins remove {manifest.name} {manifest.version}`)"
        )


def _needed_names(m: Manifest) -> list[str]:
    out = []
    for model in m.models.values():
        if model.archive:
            out.append(model.archive.filename)
        out += [Path(urlsplit(f.url).path).name for f in model.files if f.url]
    return out


# -- staging the pack folder ---------------------------------------------------------------------------------------
def _stage(source: str, stage: Path, ctx: _Ctx) -> Manifest:
    if _is_url(source):
        ctx.source_desc = source
        fname = Path(urlsplit(source).path).name or "pack-archive"
        ctx.downloads_dir.mkdir(exist_ok=True)
        archive = ctx.downloads_dir / fname
        download(source, archive, progress=ctx.progress, desc=fname)
        _check_archive_hash(archive, None, source, ctx, required=False)
        return _stage_archive(archive, stage, ctx, source)
    path = Path(source).expanduser()
    if path.is_dir() and (path / MANIFEST_FILE).is_file():
        ctx.source_desc = str(path.resolve())
        copy_tree(path, stage)
        return _read_staged(stage, str(path / MANIFEST_FILE))
    if path.is_file() and path.name == MANIFEST_FILE:
        ctx.source_desc = str(path.resolve())
        copy_tree(path.parent, stage)
        return _read_staged(stage, str(path))
    if path.is_file():
        ctx.source_desc = str(path.resolve())
        _check_archive_hash(path, None, source, ctx, required=False)
        return _stage_archive(path, stage, ctx, source)
    if NAME_RE.match(source):  # a pack name (even if a folder of that name, without pack.yaml, is here)
        return _stage_named(source, stage, ctx)
    if path.is_dir():
        raise InvalidPack(f"{path}: no {MANIFEST_FILE} in this folder")
    raise PackNotFound(f"{source!r} is not a pack folder, an archive, an http(s) URL or the name of a known pack")


def _stage_archive(archive: Path, stage: Path, ctx: _Ctx, label: str) -> Manifest:
    # The manifest first (its size budget checked, nothing else written): a pack already installed is refused
    # before the rest of the archive is extracted.
    peek = ctx.scratch("peek")
    extract_archive(archive, peek, lambda n: n if n.count("/") <= 1 and n.rpartition("/")[2] == MANIFEST_FILE else None)
    found = [p for p in (peek / MANIFEST_FILE, *peek.glob(f"*/{MANIFEST_FILE}")) if p.is_file()]
    if len(found) == 1:
        with contextlib.suppress(ManifestError):  # a bad one is reported after the full extraction, by its name
            _refuse_installed(read_manifest(found[0]))
    out = ctx.scratch("extract")
    extract_archive(archive, out)
    root = out
    if not (out / MANIFEST_FILE).is_file():
        entries = [p for p in out.iterdir()]
        if len(entries) == 1 and entries[0].is_dir() and (entries[0] / MANIFEST_FILE).is_file():
            root = entries[0]
        else:
            raise InvalidPack(f"{label}: the archive has no {MANIFEST_FILE} at its top level or in a single top folder")
    inner = root.relative_to(out).as_posix()
    os.rename(root, stage)
    return _read_staged(stage, f"{label} ({inner + '/' if inner != '.' else ''}{MANIFEST_FILE})")


def _stage_named(name: str, stage: Path, ctx: _Ctx) -> Manifest:
    items = [i for i in (ctx.find_pack(name) if ctx.find_pack else []) if i.source != "store"]
    good = [i for i in items if i.manifest is not None]
    if not good:
        if items:
            raise InvalidPack(f"pack {name!r} cannot be installed: {items[0].error}")
        if store.installed_versions(name):
            raise InvalidPack(
                f"pack {name!r} is only in the store; to install another version give its folder, archive or URL"
            )
        hint = f" ({Path(name).resolve()} is a folder without {MANIFEST_FILE})" if Path(name).is_dir() else ""
        raise PackNotFound(f"{name!r} is not a folder, an archive, an http(s) URL or the name of a known pack{hint}")
    item = next((i for i in good if i.source == "entrypoint"), good[0])
    ctx.source_desc = f"{item.source}:{name} ({item.root})"
    copy_tree(item.root, stage)
    return _read_staged(stage, str(item.root / MANIFEST_FILE))


def _read_staged(stage: Path, shown: str) -> Manifest:
    """Read the staged copy's manifest; an error names the user's file (``shown``), not the staging folder."""
    try:
        return read_manifest(stage / MANIFEST_FILE)
    except ManifestError as exc:
        raise ManifestError(exc.key, exc.problem, shown) from None


def install_hint(target: str, downloads: Sequence[tuple[str, str, str | None]]) -> str:
    """How to install a pack whose model files are remote, with and without network on this machine.

    ``target`` is what to pass to ``shitu plugins install`` (a pack name, folder, archive or URL)."""
    import shlex

    if not downloads:
        return (
            "The manifest says nowhere to download them; get the complete pack from its author and run "
            "`shitu plugins install <folder or archive>`."
        )
    trust = any(sha is None for _, _, sha in downloads)
    from_args = " ".join(f"--from {shlex.quote(fname)}" for _, fname, _ in downloads)
    target = shlex.quote(target)
    cmd = f"shitu plugins install {target} {from_args}" + (" --trust" if trust else "")
    lines = [
        f"With network: shitu plugins install {target}" + (" --trust" if trust else ""),
        "Without network here: on a connected machine download",
    ]
    lines += [f"  {url}" for url, _, _ in downloads]
    lines.append("copy the file(s) to this machine, and in the folder holding them run:")
    lines.append(f"  {cmd}")
    if trust:
        lines.append(
            "(--trust: no sha256 is published for these files; instead of --trust you may pass "
            "--sha256 <hex> for each file you checked.)"
        )
    return "\n".join(lines)


# -- model files ---------------------------------------------------------------------------------------------------
def _match_from(filename: str, known_sha: str | None, ctx: _Ctx) -> Path | None:
    for f in ctx.from_files:
        if f.name == filename:
            ctx.used_from.add(f)
            return f
    if known_sha:
        for f in ctx.from_files:
            if f not in ctx.used_from and sha256_file(f) == known_sha:
                ctx.used_from.add(f)
                return f
    return None


def _fetch(m: Manifest, url: str, filename: str, size: int | None, ctx: _Ctx) -> Path:
    ctx.downloads_dir.mkdir(exist_ok=True)
    dest = ctx.downloads_dir / filename
    try:
        download(url, dest, expected_size=size, progress=ctx.progress, desc=filename)
    except DownloadError as exc:
        downloads = []
        for model in m.models.values():
            if model.archive:
                downloads.append((model.archive.url, model.archive.filename, model.archive.sha256))
            else:
                downloads += [(f.url, Path(urlsplit(f.url).path).name, f.sha256) for f in model.files if f.url]
        target = ctx.source_arg if not NAME_RE.match(ctx.source_arg) else m.name
        raise PackUnavailable(f"pack {m.name!r} {m.version}: {exc}\n{install_hint(target, downloads)}") from None
    return dest


def _check_archive_hash(path: Path, expected: str | None, label: str, ctx: _Ctx, *, required: bool) -> str:
    """Check a downloaded/given archive; return how it was verified ("manifest" | "user-sha256" | "trust" | "")."""
    got = sha256_file(path)
    if expected:
        if got != expected:
            raise InvalidPack(f"checksum mismatch for {label}: sha256 {got}, the manifest says {expected}")
        return "manifest"
    if got in ctx.hashes:
        ctx.used_hashes.add(got)
        return "user-sha256"
    if not required:
        return ""
    if ctx.trust:
        return "trust"
    raise InvalidPack(
        f"{label}: no sha256 is published for this file, so it cannot be verified. Its sha256 is {got}; "
        f"if that is the file you expect, pass --sha256 {got} (or --trust to accept it unverified)"
    )


def _complete_model(m: Manifest, model: ModelEntry, stage: Path, ctx: _Ctx) -> None:
    folder = stage / model.path if model.path != "." else stage
    missing = [f for f in model.files if not (folder / f.path).is_file()]
    if not any(not f.optional for f in missing):
        return
    if model.archive:
        a = model.archive
        path = _match_from(a.filename, a.sha256, ctx)
        if path is None:
            path = _fetch(m, a.url, a.filename, a.size, ctx)
        how = _check_archive_hash(path, a.sha256, a.filename, ctx, required=True)
        wanted = {f.path for f in missing}
        prefix = _archive_prefix(path, a.root, {f.path for f in missing if not f.optional})

        def select(member: str) -> str | None:
            if prefix and not member.startswith(prefix):
                return None
            rel = member[len(prefix) :]
            return rel if rel in wanted else None

        got = set(extract_archive(path, folder, select))
        for f in missing:
            if f.path in got:
                ctx.provenance[join(model.path, f.path)] = how
        lacking = [f.path for f in missing if not f.optional and f.path not in got]
        if lacking:
            raise InvalidPack(
                f"pack {m.name!r}: archive {a.filename} has no {', '.join(prefix + p for p in lacking)} "
                f"(models.{model.role}.archive.root is {a.root!r})"
            )
        return
    for f in missing:
        if f.url is None:
            if f.optional:
                continue
            raise InvalidPack(
                f"pack {m.name!r}: {join(model.path, f.path)} is missing and models.{model.role} gives "
                "no archive or url to fetch it from"
            )
        fname = Path(urlsplit(f.url).path).name or Path(f.path).name
        path = _match_from(fname, f.sha256, ctx) or _fetch(m, f.url, fname, f.size, ctx)
        dest = folder / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest) if path.is_relative_to(ctx.tmp) else _copy(path, dest)


def _archive_prefix(archive: Path, root: str | None, required: set[str]) -> str:
    """Where the model files sit in the archive: under ``root`` as the manifest says, else at the top level or
    in its single top folder (published archives are not always laid out as documented)."""
    names = set(archive_names(archive))
    candidates = [(root.rstrip("/") + "/") if root else "", ""]
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    if len(tops) == 1:
        candidates.append(next(iter(tops)) + "/")
    for prefix in candidates:
        if all(prefix + r in names for r in required):
            return prefix
    return candidates[0]


def _copy(src: Path, dst: Path) -> None:
    from shitu.plugins.fetch import copy_file

    copy_file(src, dst)


def _check_files(m: Manifest, stage: Path, ctx: _Ctx) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for rel, f in m.all_files():
        path = stage / rel
        if not path.is_file():
            if f.optional:
                continue
            raise InvalidPack(f"pack {m.name!r} {m.version}: {rel} is listed in the manifest but not present")
        size = path.stat().st_size
        if f.size is not None and size != f.size:
            raise InvalidPack(f"pack {m.name!r} {m.version}: {rel}: {size} bytes, the manifest says {f.size}")
        got = sha256_file(path)
        if f.sha256:
            if got != f.sha256:
                raise InvalidPack(
                    f"checksum mismatch: pack {m.name!r} {m.version}: {rel}: sha256 {got}, the manifest says {f.sha256}"
                )
            how = "manifest"
        elif ctx.provenance.get(rel) in ("manifest", "user-sha256"):
            how = "archive"
        elif got in ctx.hashes:
            ctx.used_hashes.add(got)
            how = "user-sha256"
        elif ctx.trust:
            how = "trust"
        else:
            raise InvalidPack(
                f"pack {m.name!r} {m.version}: {rel} has no sha256 in the manifest. Its sha256 is {got}; "
                f"pass --sha256 {got} if that is the file you expect, or --trust to accept it unverified"
            )
        record[rel] = {"sha256": got, "size": size, "verified": how}
    man = stage / MANIFEST_FILE
    record[MANIFEST_FILE] = {"sha256": sha256_file(man), "size": man.stat().st_size, "verified": "install"}
    return record
