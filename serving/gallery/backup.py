"""Gallery backups (consistent while the gallery is served and written to) and portable export archives.

**Backup / restore.** :func:`backup` copies ``gallery.db`` with SQLite's online backup API: the copy is one
consistent state of the database, whatever other processes commit meanwhile. The faiss snapshot that state
records is copied beside it and checked against the sha256 the database records for it (snapshot files are never
changed once named; when a newer one replaced it during the copy the backup is retried, and as a last resort the
copy drops its snapshot pointer so the restored gallery rebuilds its index from the vectors). ``backup.json``
records the checksums of both files; :func:`restore` checks them, opens the copy as a gallery (database check,
snapshot checksum), and only then renames it into place. A backup is plain files: it restores on any machine.

**Export / import.** :func:`export_archive` writes a ``.tar.gz`` holding ``manifest.json`` (dimension, metric,
index method, counts, the *model identity* that produced the vectors), ``records.jsonl`` (id, label, source,
metadata, content hash per item) and ``vectors.npy`` (float32 or packed bits; read back with
``allow_pickle=False``). :func:`import_archive` refuses an archive whose model identity differs from the target
gallery's, or whose dimension/metric cannot go into it; into a new gallery the ids are kept.

The model identity is ``{"name": <model folder name>, "sha256": <sha256 of its weights file>}``
(:func:`model_identity`); a gallery records it in its ``meta`` table (key ``model_identity``): the engine and
``shitu gallery build`` record the model they embed with when a gallery records none (:func:`remember_model`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.lib.format as npformat

from shitu.files import move_into_place, pid_alive, sha256_file, staging_dir
from shitu.serving.gallery.errors import BackupError, GalleryError
from shitu.serving.gallery.store import (
    DB_NAME,
    copy_database,
    meta_json,
    read_items,
)

__all__ = [
    "BackupError",
    "backup",
    "restore",
    "export_archive",
    "import_archive",
    "model_identity",
    "gallery_model_identity",
    "set_gallery_model_identity",
    "remember_model",
    "same_model",
    "describe_model",
    "MANIFEST",
]

log = logging.getLogger(__name__)

MANIFEST = "backup.json"
ARCHIVE_FORMAT = "shitu-gallery-export"
BACKUP_FORMAT = "shitu-gallery-backup"
#: Largest ``vectors.npy`` of an export archive, and manifest.
MAX_ARCHIVE_MEMBER = 8 << 30
MAX_MANIFEST_BYTES = 1 << 20
#: Largest ``records.jsonl``, and line of it (a record: label, source, metadata of at most 64 KiB as JSON, hash).
MAX_RECORDS_BYTES = 1 << 30
MAX_RECORD_BYTES = 80 << 10
_MEMBERS = ("manifest.json", "records.jsonl", "vectors.npy")
_MAX_MEMBERS = 16
#: Staging folders of backups, restores and imports (``.<dest>.<tag>.<pid>.tmp``), and what they may hold.
_STAGING = re.compile(r"^\..+\.(?:backup|restore|import)\.(\d+)\.tmp$")
_STAGED = re.compile(
    r"^(?:gallery\.db(?:-wal|-shm|-journal)?|gallery\.changes|backup\.json|index-[0-9a-f-]+\.faiss|\..+\.tmp.*)$"
)
_RETRIES = 5


def _fresh_dir(dest: Path, what: str) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest}: exists and is not empty; {what} into a new folder")


@contextmanager
def staged(dest: Path, tag: str, error: Callable[[str], Exception] = BackupError) -> Iterator[Path]:
    """A private folder beside ``dest`` to build it in (``.<dest>.<tag>.<pid>.tmp``; those killed runs left are
    removed first), moved into place when the block completes, removed when it fails. A gallery error naming the
    private folder is raised as ``error`` naming ``dest``."""
    tmp = staging_dir(dest, tag)
    _remove_stale_staging(tmp.parent)
    tmp.mkdir()
    try:
        yield tmp
        move_into_place(tmp, dest)
    except GalleryError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise error(str(e).replace(str(tmp), str(dest))) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_staging(folder: Path) -> None:
    """Remove the staging folders killed backups, restores and imports left in ``folder`` (their process is gone),
    when they hold nothing but gallery files."""
    for p in folder.glob(".*.tmp"):
        m = _STAGING.match(p.name)
        if not m or pid_alive(int(m.group(1))) or p.is_symlink() or not p.is_dir():
            continue
        try:
            if all(e.is_file() and not e.is_symlink() and _STAGED.match(e.name) for e in p.iterdir()):
                shutil.rmtree(p)
        except OSError as e:
            log.warning("%s: stale staging folder not removed: %s", p, e)


# -- model identity -------------------------------------------------------------------------------------------------


def model_identity(spec: Any) -> dict[str, str]:
    """The identity of a feature extractor (a :class:`~shitu.model_spec.ModelSpec`): folder name + weights sha256
    (+ the sha256 of its projection head, when it has one: ``shitu adapt`` keeps the weights and adds a head)."""
    _model, params = spec.files()
    identity = {"name": Path(spec.model_dir).name, "sha256": sha256_file(params)}
    if getattr(spec, "projection", None):
        identity["projection"] = sha256_file(Path(spec.model_dir) / spec.projection)
    return identity


def gallery_model_identity(gallery_dir: str | os.PathLike) -> dict[str, str] | None:
    """The model identity a gallery records (``None`` when it records none)."""
    return meta_json(Path(gallery_dir), "model_identity")


def set_gallery_model_identity(gallery_dir: str | os.PathLike, identity: dict[str, str]) -> None:
    """Record ``identity`` in the gallery (refused when it records a different one)."""
    current = gallery_model_identity(gallery_dir)
    if current is not None and current != identity:
        raise BackupError(
            f"{gallery_dir}: its vectors come from model {describe_model(current)}, not {describe_model(identity)}"
        )
    meta_json(Path(gallery_dir), "model_identity", lambda _: identity)


def remember_model(gallery_dir: str | os.PathLike, spec: Any) -> None:
    """Record the identity of extractor ``spec`` in a gallery that records none yet (best effort: a gallery that
    cannot be written keeps working without it; ``spec`` None: nothing to record)."""
    if spec is None:
        return
    try:
        if gallery_model_identity(gallery_dir) is None:
            set_gallery_model_identity(gallery_dir, model_identity(spec))
    except (OSError, GalleryError, ValueError) as e:
        log.warning("%s: model identity not recorded: %s", gallery_dir, e)


def same_model(a: dict[str, str], b: dict[str, str]) -> bool:
    """Whether two model identities name the same vectors: same weights and same projection head (the folder
    name does not matter: a pack's recogniser installed elsewhere is the same model)."""
    return a.get("sha256") == b.get("sha256") and a.get("projection") == b.get("projection")


def describe_model(identity: dict[str, str] | None) -> str:
    """``name (sha256 0123456789ab...)`` for messages."""
    return "unknown" if not identity else f"{identity.get('name')} (sha256 {str(identity.get('sha256'))[:12]}...)"


# -- backup / restore -----------------------------------------------------------------------------------------------


def backup(gallery_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """A consistent copy of the gallery in ``gallery_dir`` (served or not) into the new folder ``out_dir``."""
    src_dir, out = Path(gallery_dir), Path(out_dir)
    db = src_dir / DB_NAME
    if not db.is_file():
        raise BackupError(f"{src_dir}: not a gallery (no {DB_NAME})")
    _fresh_dir(out, "back up")
    with staged(out, "backup") as tmp:
        manifest = None
        for attempt in range(_RETRIES):
            manifest = _backup_once(db, src_dir, tmp, last=attempt == _RETRIES - 1)
            if manifest is not None:
                break
        assert manifest is not None  # the last attempt always answers
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _fsync_tree(tmp)
    return manifest


def _backup_once(db: Path, src_dir: Path, tmp: Path, last: bool) -> dict[str, Any] | None:
    for p in tmp.iterdir():
        p.unlink()
    dst_db = tmp / DB_NAME
    meta, count = copy_database(db, dst_db)
    snap = meta.get("snapshot_file") or ""
    snapshot = None
    if snap:
        try:
            shutil.copyfile(src_dir / snap, tmp / snap)
        except FileNotFoundError:
            if not last:
                return None  # replaced by a newer snapshot meanwhile: take a fresher copy
            # The database alone is a whole gallery: the restored copy rebuilds its index.
            dst_db.unlink()
            meta, count = copy_database(db, dst_db, keep_snapshot=False)
            snap = ""
        if snap:
            digest = sha256_file(tmp / snap)
            if digest != meta.get("snapshot_sha256"):
                raise BackupError(
                    f"{src_dir / snap}: the snapshot does not match the sha256 gallery.db "
                    "records for it; run `shitu gallery repair` first"
                )
            snapshot = {
                "file": snap,
                "sha256": digest,
                "size": (tmp / snap).stat().st_size,
                "seq": int(meta.get("snapshot_seq", 0)),
            }
    return {
        "format": BACKUP_FORMAT,
        "version": 1,
        "created_at": time.time(),
        "source": src_dir.name,
        "db": {"file": DB_NAME, "sha256": sha256_file(dst_db), "size": dst_db.stat().st_size},
        "snapshot": snapshot,
        "seq": int(meta.get("seq", 0)),
        "count": int(count),
        "dim": int(meta["dim"]),
        "metric": meta["metric"],
        "index_method": meta["index_method"],
        "model": json.loads(meta["model_identity"]) if meta.get("model_identity") else None,
    }


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_manifest(folder: Path) -> dict[str, Any]:
    p = folder / MANIFEST
    try:
        if p.stat().st_size > MAX_MANIFEST_BYTES:
            raise BackupError(f"{p}: too large for a backup manifest")
        manifest = json.loads(p.read_text())
    except FileNotFoundError:
        raise BackupError(f"{folder}: not a gallery backup (no {MANIFEST})") from None
    except (OSError, ValueError) as e:
        raise BackupError(f"{p}: unreadable backup manifest: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BACKUP_FORMAT:
        raise BackupError(f"{p}: not a shitu gallery backup manifest")
    return manifest


def _safe_name(name: Any, folder: Path) -> Path:
    if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
        raise BackupError(f"{folder / MANIFEST}: bad file name {name!r}")
    return folder / name


def restore(backup_dir: str | os.PathLike, dest: str | os.PathLike) -> dict[str, Any]:
    """Restore the backup in ``backup_dir`` as a gallery in the new folder ``dest`` (checksums verified)."""
    from shitu.serving.gallery.local import Gallery

    folder, dest = Path(backup_dir), Path(dest)
    manifest = _read_manifest(folder)
    files = [manifest.get("db") or {}]
    if manifest.get("snapshot"):
        files.append(manifest["snapshot"])
    for entry in files:
        p = _safe_name(entry.get("file"), folder)
        if not p.is_file():
            raise BackupError(f"{p}: missing from the backup")
        if sha256_file(p) != entry.get("sha256"):
            raise BackupError(f"{p}: damaged (sha256 differs from {MANIFEST})")
    if files[0].get("file") != DB_NAME:
        raise BackupError(f"{folder / MANIFEST}: the database must be {DB_NAME}")
    _fresh_dir(dest, "restore")
    with staged(dest, "restore") as tmp:
        for entry in files:
            shutil.copyfile(folder / entry["file"], tmp / entry["file"])
        _fsync_tree(tmp)
        with Gallery.open(tmp) as g:
            info = {"count": len(g), "seq": g.info()["seq"], "dim": g.dim, "metric": g.metric}
    return info


# -- export / import ------------------------------------------------------------------------------------------------


def export_archive(
    gallery_dir: str | os.PathLike, out_file: str | os.PathLike, model: dict[str, str] | None = None
) -> dict[str, Any]:
    """Write the gallery's records, vectors and model identity to the portable archive ``out_file`` (.tar.gz).

    Read in one SQLite read transaction: a consistent state even while the gallery is written to. ``model``
    is the identity of the model that produced the vectors, when the gallery does not record one.
    """
    src, out = Path(gallery_dir), Path(out_file)
    if not (src / DB_NAME).is_file():
        raise BackupError(f"{src}: not a gallery (no {DB_NAME})")
    if out.exists():
        raise BackupError(f"{out}: exists already")
    meta, rows, _ = read_items(src)
    recorded = json.loads(meta["model_identity"]) if meta.get("model_identity") else None
    if recorded and model and recorded != model:
        raise BackupError(f"{src}: its vectors come from model {describe_model(recorded)}, not {describe_model(model)}")
    dim, binary = int(meta["dim"]), meta["metric"] == "hamming"
    width = dim // 8 if binary else dim * 4
    if any(len(r[6]) != width for r in rows):
        raise BackupError(f"{src / DB_NAME}: a stored vector has the wrong size")
    raw = b"".join(r[6] for r in rows)
    vectors = (
        np.frombuffer(raw, np.uint8).reshape(len(rows), dim // 8)
        if binary
        else np.frombuffer(raw, "<f4").reshape(len(rows), dim)
    )
    manifest = {
        "format": ARCHIVE_FORMAT,
        "version": 1,
        "created_at": time.time(),
        "count": len(rows),
        "dim": dim,
        "metric": meta["metric"],
        "normalize": bool(int(meta.get("normalize", "0"))),
        "index_method": meta["index_method"],
        "hamming_radius": int(meta["hamming_radius"]),
        "model": recorded or model,
        "seq": int(meta["seq"]),
    }
    records = "".join(
        json.dumps(
            {
                "id": r[0],
                "label": r[1],
                "source": r[2],
                "metadata": json.loads(r[3]) if r[3] else None,
                "content_hash": r[4],
                "added_at": r[5],
            },
            ensure_ascii=False,
        )
        + "\n"
        for r in rows
    ).encode()
    npy = io.BytesIO()
    np.save(npy, vectors, allow_pickle=False)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for name, data in (
                ("manifest.json", json.dumps(manifest, indent=1).encode()),
                ("records.jsonl", records),
                ("vectors.npy", npy.getvalue()),
            ):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return manifest


def _check_manifest(manifest: Any, archive: Path) -> dict[str, Any]:
    """The export manifest with its fields checked (type and range), before anything is read by them."""
    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
        raise BackupError(f"{archive}: not a shitu gallery export")
    manifest.setdefault("hamming_radius", 100)

    def field(name: str, ok: Callable[[Any], bool], what: str) -> None:
        if not ok(manifest.get(name)):
            raise BackupError(f"{archive}: manifest.json: {name} must be {what}, not {manifest.get(name)!r}")

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    field("dim", lambda v: count(v) and v > 0, "a positive integer")
    field("metric", lambda v: v in ("IP", "L2", "hamming"), "IP, L2 or hamming")
    field("count", count, "a non-negative integer")
    field("hamming_radius", count, "a non-negative integer")
    field("index_method", lambda v: isinstance(v, str) and 0 < len(v) <= 256, "a faiss index name")
    field("model", lambda v: v is None or isinstance(v, dict), "an object or null")
    if manifest["metric"] == "hamming" and manifest["dim"] % 8:
        raise BackupError(f"{archive}: manifest.json: a hamming dim must be a multiple of 8, not {manifest['dim']}")
    if manifest["count"] * _row_bytes(manifest) > MAX_ARCHIVE_MEMBER:
        raise BackupError(f"{archive}: manifest.json: {manifest['count']} vectors exceed {MAX_ARCHIVE_MEMBER} bytes")
    return manifest


def _row_bytes(manifest: dict[str, Any]) -> int:
    return manifest["dim"] // 8 if manifest["metric"] == "hamming" else manifest["dim"] * 4


def _read_records(f: IO[bytes], size: int, count: int, archive: Path) -> list[dict[str, Any]]:
    """``records.jsonl``, its size checked from the tar header first, then read a line at a time."""
    limit = min(MAX_RECORDS_BYTES, count * (MAX_RECORD_BYTES + 1))
    if size > limit:
        raise BackupError(f"{archive}: records.jsonl is {size} bytes; {count} records take at most {limit}")
    records: list[dict[str, Any]] = []
    while line := f.readline(MAX_RECORD_BYTES + 1):
        if len(line) > MAX_RECORD_BYTES:
            raise BackupError(f"{archive}: records.jsonl line {len(records) + 1} is over {MAX_RECORD_BYTES} bytes")
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or not isinstance(record.get("label"), str):
            raise BackupError(f"{archive}: records.jsonl holds an entry without a label")
        records.append(record)
        if len(records) > count:
            raise BackupError(f"{archive}: records.jsonl holds more records than the manifest's count {count}")
    return records


def _read_vectors(f: IO[bytes], size: int, manifest: dict[str, Any], archive: Path) -> np.ndarray:
    """``vectors.npy``: its header (shape, dtype) checked against the manifest and the member's size, then the
    data read straight into the array (no copy of the file in memory)."""
    version = npformat.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise BackupError(f"{archive}: vectors.npy has the unknown format version {version}")
    read_header = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    binary = manifest["metric"] == "hamming"
    want = (manifest["count"], manifest["dim"] // 8 if binary else manifest["dim"])
    want_dtype = np.dtype(np.uint8) if binary else np.dtype("<f4")
    if tuple(shape) != want or dtype != want_dtype or fortran:
        raise BackupError(f"{archive}: vectors.npy is {dtype} {list(shape)}, expected {want_dtype} {list(want)}")
    vectors = np.empty(want, want_dtype)
    if size - f.tell() != vectors.nbytes:
        raise BackupError(f"{archive}: vectors.npy holds {size - f.tell()} bytes of data, not {vectors.nbytes}")
    flat, done = vectors.reshape(-1).view(np.uint8), 0
    while done < len(flat):
        chunk = f.read(min(1 << 24, len(flat) - done))
        if not chunk:
            raise BackupError(f"{archive}: vectors.npy is truncated")
        flat[done : done + len(chunk)] = np.frombuffer(chunk, np.uint8)
        done += len(chunk)
    return vectors


def read_archive(archive: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray]:
    """(manifest, records, vectors) of an export archive, checked for consistency; nothing is unpacked to disk.

    Read in one pass in archive order (``manifest.json`` first, as :func:`export_archive` writes it): every size
    is checked from a header (tar member, ``.npy``) before anything is allocated or read by it."""
    archive = Path(archive)
    found: dict[str, Any] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for seen, info in enumerate(tar):
                if seen >= _MAX_MEMBERS:
                    raise BackupError(f"{archive}: more than {_MAX_MEMBERS} members: not a gallery export")
                if info.name not in _MEMBERS or info.name in found:
                    continue
                if not info.isreg():
                    raise BackupError(f"{archive}: {info.name} is not a regular file")
                f = tar.extractfile(info)
                assert f is not None
                if info.name == "manifest.json":
                    if info.size > MAX_MANIFEST_BYTES:
                        raise BackupError(
                            f"{archive}: manifest.json is {info.size} bytes; the limit is {MAX_MANIFEST_BYTES}"
                        )
                    found[info.name] = _check_manifest(json.loads(f.read()), archive)
                elif "manifest.json" not in found:
                    raise BackupError(f"{archive}: manifest.json must come first, as `shitu gallery export` writes it")
                elif info.name == "records.jsonl":
                    found[info.name] = _read_records(f, info.size, found["manifest.json"]["count"], archive)
                else:
                    found[info.name] = _read_vectors(f, info.size, found["manifest.json"], archive)
                if len(found) == len(_MEMBERS):
                    break
    except (tarfile.TarError, OSError, ValueError, EOFError) as e:
        raise BackupError(f"{archive}: not a readable gallery export: {e}") from None
    for name in _MEMBERS:
        if name not in found:
            raise BackupError(f"{archive}: not a gallery export (no {name})")
    manifest, records, vectors = (found[name] for name in _MEMBERS)
    if len(records) != manifest["count"]:
        raise BackupError(f"{archive}: records.jsonl holds {len(records)} records, the manifest {manifest['count']}")
    return manifest, records, vectors


def import_archive(
    archive: str | os.PathLike, gallery_dir: str | os.PathLike, model: dict[str, str] | None = None
) -> dict[str, Any]:
    """Add an export archive's items to the gallery in ``gallery_dir`` (created, with the same ids, when new).

    Refused when the archive's model identity differs from the gallery's (or from ``model``, the identity of the
    model the caller will search with), or when dimension or metric differ.
    """
    from shitu.serving.gallery.local import Gallery

    manifest, records, vectors = read_archive(archive)
    dest = Path(gallery_dir)
    theirs = manifest.get("model")
    exists = (dest / DB_NAME).is_file()
    ours = gallery_model_identity(dest) if exists else None
    for other in (ours, model):
        if theirs and other and theirs != other:
            raise BackupError(
                f"{archive}: its vectors come from model {describe_model(theirs)}; the gallery's model is "
                f"{describe_model(other)}: vectors of different models cannot be searched together"
            )
    fields = ([r.get("source") for r in records], [r.get("metadata") for r in records])
    hashes = [r.get("content_hash") for r in records]
    labels = [r["label"] for r in records]
    identity = theirs or model
    if exists:  # one transaction: all or nothing
        with Gallery.open(dest) as g:
            if g.dim != manifest["dim"] or g.metric != manifest["metric"]:
                raise BackupError(
                    f"{archive}: {manifest['metric']} vectors of dim {manifest['dim']} cannot go "
                    f"into {dest}, a {g.metric} gallery of dim {g.dim}"
                )
            added = len(g.add(vectors, labels, *fields, hashes))
            count = len(g)
        if identity:
            set_gallery_model_identity(dest, identity)
        return {"added": added, "count": count, "kept_ids": False}
    # A new gallery keeps the archive's ids; built in a private folder and moved into place when complete.
    _fresh_dir(dest, "import")
    with staged(dest, "import") as tmp:
        dist = "cosine" if manifest.get("normalize") else manifest["metric"]
        with Gallery.create(
            tmp,
            int(manifest["dim"]),
            index_method=manifest["index_method"],
            dist_type=dist,
            hamming_radius=manifest["hamming_radius"],
        ) as g:
            ids: list[Any] = [r.get("id") for r in records]
            keep_ids = (
                bool(ids)
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
                and all(b > a for a, b in zip(ids, ids[1:]))
            )
            added = len(g.add(vectors, labels, *fields, hashes, ids=ids if keep_ids else None))
            count = len(g)
        if identity:
            set_gallery_model_identity(tmp, identity)
    return {"added": added, "count": count, "kept_ids": bool(keep_ids)}
