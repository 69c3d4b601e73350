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

import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from shitu.files import move_into_place, staging_dir

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
#: Largest member read from an export archive (records.jsonl, vectors.npy) and manifest.
MAX_ARCHIVE_MEMBER = 8 << 30
MAX_MANIFEST_BYTES = 1 << 20
_RETRIES = 5


class BackupError(Exception):
    """A backup, restore, export or import cannot be done; the message says why and names the folder."""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fresh_dir(dest: Path, what: str) -> None:
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest}: exists and is not empty; {what} into a new folder")


def _tmp_beside(dest: Path, tag: str) -> Path:
    tmp = staging_dir(dest, tag)
    tmp.mkdir()
    return tmp


def _meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


# -- model identity -------------------------------------------------------------------------------------------------


def model_identity(spec: Any) -> dict[str, str]:
    """The identity of a feature extractor (a :class:`~shitu.model_spec.ModelSpec`): folder name + weights sha256
    (+ the sha256 of its projection head, when it has one: ``shitu adapt`` keeps the weights and adds a head)."""
    _model, params = spec.files()
    identity = {"name": Path(spec.model_dir).name, "sha256": _sha256_file(params)}
    if getattr(spec, "projection", None):
        identity["projection"] = _sha256_file(Path(spec.model_dir) / spec.projection)
    return identity


def gallery_model_identity(gallery_dir: str | os.PathLike) -> dict[str, str] | None:
    """The model identity a gallery records (``None`` when it records none)."""
    from shitu.serving.gallery.local import DB_NAME

    conn = sqlite3.connect(f"{(Path(gallery_dir) / DB_NAME).resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        value = _meta(conn).get("model_identity")
    finally:
        conn.close()
    return json.loads(value) if value else None


def set_gallery_model_identity(gallery_dir: str | os.PathLike, identity: dict[str, str]) -> None:
    """Record ``identity`` in the gallery (refused when it records a different one)."""
    from shitu.serving.gallery.local import DB_NAME

    current = gallery_model_identity(gallery_dir)
    if current is not None and current != identity:
        raise BackupError(f"{gallery_dir}: its vectors come from model {_describe(current)}, not {_describe(identity)}")
    conn = sqlite3.connect(str(Path(gallery_dir) / DB_NAME), isolation_level=None, timeout=30)
    try:
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('model_identity', ?)",
            (json.dumps(identity, sort_keys=True),),
        )
    finally:
        conn.close()


def remember_model(gallery_dir: str | os.PathLike, spec: Any) -> None:
    """Record the identity of extractor ``spec`` in a gallery that records none yet (best effort: a gallery that
    cannot be written keeps working without it; ``spec`` None: nothing to record)."""
    if spec is None:
        return
    try:
        if gallery_model_identity(gallery_dir) is None:
            set_gallery_model_identity(gallery_dir, model_identity(spec))
    except (OSError, sqlite3.Error, BackupError, ValueError) as e:
        log.warning("%s: model identity not recorded: %s", gallery_dir, e)


def same_model(a: dict[str, str], b: dict[str, str]) -> bool:
    """Whether two model identities name the same vectors: same weights and same projection head (the folder
    name does not matter: a pack's recogniser installed elsewhere is the same model)."""
    return a.get("sha256") == b.get("sha256") and a.get("projection") == b.get("projection")


def describe_model(identity: dict[str, str] | None) -> str:
    """``name (sha256 0123456789ab...)`` for messages."""
    return _describe(identity)


def _describe(identity: dict[str, str] | None) -> str:
    return "unknown" if not identity else f"{identity.get('name')} (sha256 {str(identity.get('sha256'))[:12]}...)"


# -- backup / restore -----------------------------------------------------------------------------------------------


def backup(gallery_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """A consistent copy of the gallery in ``gallery_dir`` (served or not) into the new folder ``out_dir``."""
    from shitu.serving.gallery.local import DB_NAME

    src_dir, out = Path(gallery_dir), Path(out_dir)
    db = src_dir / DB_NAME
    if not db.is_file():
        raise BackupError(f"{src_dir}: not a gallery (no {DB_NAME})")
    _fresh_dir(out, "back up")
    tmp = _tmp_beside(out, "backup")
    try:
        for _attempt in range(_RETRIES):
            manifest = _backup_once(db, src_dir, tmp, last=_attempt == _RETRIES - 1)
            if manifest is not None:
                break
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _fsync_tree(tmp)
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _backup_once(db: Path, src_dir: Path, tmp: Path, last: bool) -> dict[str, Any] | None:
    from shitu.serving.gallery.local import DB_NAME

    for p in tmp.iterdir():
        p.unlink()
    dst_db = tmp / DB_NAME
    src = sqlite3.connect(str(db), timeout=60)
    try:
        dst = sqlite3.connect(str(dst_db), isolation_level=None)
        try:
            src.backup(dst)  # all pages in one step: one consistent state
            meta = _meta(dst)
            count = dst.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            snap = meta.get("snapshot_file") or ""
            snapshot = None
            if snap:
                try:
                    shutil.copyfile(src_dir / snap, tmp / snap)
                except FileNotFoundError:
                    if not last:
                        return None  # replaced by a newer snapshot meanwhile: take a fresher copy
                    # The database alone is a whole gallery: the restored copy rebuilds its index.
                    dst.executemany(
                        "UPDATE meta SET value = ? WHERE key = ?",
                        [("", "snapshot_file"), ("0", "snapshot_seq"), ("", "snapshot_sha256"), ("0", "snapshot_size")],
                    )
                    snap = ""
                if snap:
                    digest = _sha256_file(tmp / snap)
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
            dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            dst.close()
    finally:
        src.close()
    return {
        "format": BACKUP_FORMAT,
        "version": 1,
        "created_at": time.time(),
        "source": src_dir.name,
        "db": {"file": DB_NAME, "sha256": _sha256_file(dst_db), "size": dst_db.stat().st_size},
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
    from shitu.serving.gallery.local import DB_NAME, Gallery, GalleryError

    folder, dest = Path(backup_dir), Path(dest)
    manifest = _read_manifest(folder)
    files = [manifest.get("db") or {}]
    if manifest.get("snapshot"):
        files.append(manifest["snapshot"])
    for entry in files:
        p = _safe_name(entry.get("file"), folder)
        if not p.is_file():
            raise BackupError(f"{p}: missing from the backup")
        if _sha256_file(p) != entry.get("sha256"):
            raise BackupError(f"{p}: damaged (sha256 differs from {MANIFEST})")
    if files[0].get("file") != DB_NAME:
        raise BackupError(f"{folder / MANIFEST}: the database must be {DB_NAME}")
    _fresh_dir(dest, "restore")
    tmp = _tmp_beside(dest, "restore")
    try:
        for entry in files:
            shutil.copyfile(folder / entry["file"], tmp / entry["file"])
        _fsync_tree(tmp)
        try:
            with Gallery.open(tmp) as g:
                info = {"count": len(g), "seq": g.info()["seq"], "dim": g.dim, "metric": g.metric}
        except GalleryError as e:
            raise BackupError(str(e).replace(str(tmp), str(dest))) from None
        move_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


# -- export / import ------------------------------------------------------------------------------------------------


def export_archive(
    gallery_dir: str | os.PathLike, out_file: str | os.PathLike, model: dict[str, str] | None = None
) -> dict[str, Any]:
    """Write the gallery's records, vectors and model identity to the portable archive ``out_file`` (.tar.gz).

    Read in one SQLite read transaction: a consistent state even while the gallery is written to. ``model``
    is the identity of the model that produced the vectors, when the gallery does not record one.
    """
    from shitu.serving.gallery.local import DB_NAME

    src, out = Path(gallery_dir), Path(out_file)
    if not (src / DB_NAME).is_file():
        raise BackupError(f"{src}: not a gallery (no {DB_NAME})")
    if out.exists():
        raise BackupError(f"{out}: exists already")
    conn = sqlite3.connect(f"{(src / DB_NAME).resolve().as_uri()}?mode=ro", uri=True, timeout=60)
    try:
        conn.execute("BEGIN")
        meta = _meta(conn)
        rows = conn.execute(
            "SELECT i.id, i.label, i.source, i.metadata, i.content_hash, i.added_at, v.vector "
            "FROM items i JOIN vectors v ON v.slot = i.slot ORDER BY i.id"
        ).fetchall()
        conn.execute("COMMIT")
    finally:
        conn.close()
    recorded = json.loads(meta["model_identity"]) if meta.get("model_identity") else None
    if recorded and model and recorded != model:
        raise BackupError(f"{src}: its vectors come from model {_describe(recorded)}, not {_describe(model)}")
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


def _member(tar: tarfile.TarFile, name: str, limit: int, archive: Path) -> bytes:
    try:
        info = tar.getmember(name)
    except KeyError:
        raise BackupError(f"{archive}: not a gallery export (no {name})") from None
    if not info.isreg():
        raise BackupError(f"{archive}: {name} is not a regular file")
    if info.size > limit:
        raise BackupError(f"{archive}: {name} is {info.size} bytes; the limit is {limit}")
    f = tar.extractfile(info)
    assert f is not None
    return f.read(limit + 1)


def read_archive(archive: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]], np.ndarray]:
    """(manifest, records, vectors) of an export archive, checked for consistency; nothing is unpacked to disk."""
    archive = Path(archive)
    try:
        with tarfile.open(archive, "r:*") as tar:
            manifest = json.loads(_member(tar, "manifest.json", MAX_MANIFEST_BYTES, archive))
            lines = _member(tar, "records.jsonl", MAX_ARCHIVE_MEMBER, archive).decode().splitlines()
            vectors = np.load(io.BytesIO(_member(tar, "vectors.npy", MAX_ARCHIVE_MEMBER, archive)), allow_pickle=False)
        records = [json.loads(line) for line in lines if line.strip()]
    except (tarfile.TarError, OSError, ValueError, EOFError) as e:
        raise BackupError(f"{archive}: not a readable gallery export: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARCHIVE_FORMAT:
        raise BackupError(f"{archive}: not a shitu gallery export")
    dim, binary = int(manifest["dim"]), manifest["metric"] == "hamming"
    shape = (len(records), dim // 8 if binary else dim)
    if vectors.shape != shape or vectors.dtype != (np.uint8 if binary else np.dtype("<f4")):
        raise BackupError(f"{archive}: vectors.npy is {vectors.dtype} {list(vectors.shape)}, expected {list(shape)}")
    if not all(isinstance(r, dict) and isinstance(r.get("label"), str) for r in records):
        raise BackupError(f"{archive}: records.jsonl holds an entry without a label")
    return manifest, records, vectors


def import_archive(
    archive: str | os.PathLike, gallery_dir: str | os.PathLike, model: dict[str, str] | None = None
) -> dict[str, Any]:
    """Add an export archive's items to the gallery in ``gallery_dir`` (created, with the same ids, when new).

    Refused when the archive's model identity differs from the gallery's (or from ``model``, the identity of the
    model the caller will search with), or when dimension or metric differ.
    """
    from shitu.serving.gallery.keep_ids import add_keeping_ids
    from shitu.serving.gallery.local import DB_NAME, Gallery, GalleryError

    manifest, records, vectors = read_archive(archive)
    dest = Path(gallery_dir)
    theirs = manifest.get("model")
    exists = (dest / DB_NAME).is_file()
    ours = gallery_model_identity(dest) if exists else None
    for other in (ours, model):
        if theirs and other and theirs != other:
            raise BackupError(
                f"{archive}: its vectors come from model {_describe(theirs)}; the gallery's model is "
                f"{_describe(other)}: vectors of different models cannot be searched together"
            )
    fields = dict(
        sources=[r.get("source") for r in records],
        metadata=[r.get("metadata") for r in records],
        content_hashes=[r.get("content_hash") for r in records],
    )
    labels = [r["label"] for r in records]
    identity = theirs or model
    if exists:  # one transaction: all or nothing
        with Gallery.open(dest) as g:
            if g.dim != manifest["dim"] or g.metric != manifest["metric"]:
                raise BackupError(
                    f"{archive}: {manifest['metric']} vectors of dim {manifest['dim']} cannot go "
                    f"into {dest}, a {g.metric} gallery of dim {g.dim}"
                )
            added = len(g.add(vectors, labels, **fields))
            count = len(g)
        if identity:
            set_gallery_model_identity(dest, identity)
        return {"added": added, "count": count, "kept_ids": False}
    # A new gallery keeps the archive's ids; built in a private folder and moved into place when complete.
    _fresh_dir(dest, "import")
    tmp = _tmp_beside(dest, "import")
    try:
        dist = "cosine" if manifest.get("normalize") else manifest["metric"]
        with Gallery.create(
            tmp,
            int(manifest["dim"]),
            index_method=manifest["index_method"],
            dist_type=dist,
            hamming_radius=int(manifest.get("hamming_radius", 100)),
        ) as g:
            ids = np.array([int(r.get("id", 0)) for r in records], np.int64)
            keep_ids = bool(len(ids)) and bool(np.all(np.diff(ids) > 0)) and int(ids[0]) >= 0
            added = (
                add_keeping_ids(g, ids, vectors, labels, **fields)
                if keep_ids
                else len(g.add(vectors, labels, **fields))
            )
            count = len(g)
        if identity:
            set_gallery_model_identity(tmp, identity)
        move_into_place(tmp, dest)
    except GalleryError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BackupError(str(e).replace(str(tmp), str(dest))) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"added": added, "count": count, "kept_ids": bool(keep_ids)}
