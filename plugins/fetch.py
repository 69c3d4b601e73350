"""Moving bytes into the pack store safely: hashing, copying, downloading and archive extraction.

- :func:`download` streams an http(s) URL to a file with a tqdm progress bar, a short connect timeout, a read
  timeout and a size limit. It is only called by ``install``, i.e. when the user asked for it.
- :func:`extract_archive` unpacks ``.tar``/``.tar.gz``/``.tgz``/``.zip`` without trusting the archive: its member
  count and declared sizes are checked before anything is written, then tarfile's ``data`` filter judges every
  member (zip members too); links are written as copies of the regular file inside the archive they point at.
- :func:`copy_tree` copies a pack folder within the same limits (links inside the folder are copied as files).

Limits come from the environment, read at call time: ``SHITU_CONNECT_TIMEOUT`` (seconds, default 5),
``SHITU_READ_TIMEOUT`` (default 60), ``SHITU_DOWNLOAD_DEADLINE`` (default 1800), ``SHITU_MAX_DOWNLOAD_BYTES``
(default 4 GiB, used when the manifest gives no size), ``SHITU_MAX_PACK_BYTES`` (default 8 GiB: total extracted or
copied), ``SHITU_MAX_PACK_RATIO`` (default 50) and ``SHITU_MAX_PACK_MEMBERS`` (default :data:`MAX_PACK_MEMBERS`).
No download is retried: a failed one stops the install with instructions (a retry would hold the store lock longer
for a network that is down).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import socket
import stat
import sys
import tarfile
import threading
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from shitu.files import sha256_file  # noqa: F401 - re-exported (installer, registry)
from shitu.plugins.errors import InvalidPack, PackError, PackTooLarge, PackUnavailable

CHUNK = 1 << 20
MAX_PACK_MEMBERS = 20_000
"""Files, folders and links an archive or a pack folder may hold (``SHITU_MAX_PACK_MEMBERS`` overrides it): the
byte budget does not bound an archive of empty files (a 12 MB tar.gz of 2M of them was still unpacking after
280 s). The built-in packs hold under 50; a pack with a large demo gallery, a few thousand."""
#: Called by :func:`copy_file` with the bytes copied so far after each chunk (``None``: nothing is called). An
#: observer's hook: e.g. a test pauses here to kill the process half-way through a copy.
on_copy_chunk: Callable[[int], None] | None = None


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def max_pack_bytes() -> int:
    return int(_env_number("SHITU_MAX_PACK_BYTES", 8 << 30))


def max_pack_members() -> int:
    return int(_env_number("SHITU_MAX_PACK_MEMBERS", MAX_PACK_MEMBERS))


def max_expansion(archive_bytes: int) -> int:
    """Bytes an archive of ``archive_bytes`` may declare in all: ``SHITU_MAX_PACK_RATIO`` (50) times its size, at
    least 256 MiB, at most :func:`max_pack_bytes`. Model weights barely compress; a bomb expands a thousandfold."""
    ratio = _env_number("SHITU_MAX_PACK_RATIO", 50.0)
    return int(min(max_pack_bytes(), max(256 << 20, archive_bytes * ratio)))


def download_deadline() -> float:
    """Seconds a whole download may take (``SHITU_DOWNLOAD_DEADLINE``, default 1800): a server that drips a byte
    now and then never trips the read timeout, and the store lock is held meanwhile."""
    return _env_number("SHITU_DOWNLOAD_DEADLINE", 1800.0)


def _abort_after(seconds: float, resp: Any) -> tuple[threading.Timer, threading.Event]:
    """Shut ``resp``'s socket after ``seconds`` (wakes a read blocked on it); the event says it happened."""
    expired = threading.Event()

    def abort() -> None:
        expired.set()
        sock = getattr(getattr(resp.raw, "connection", None), "sock", None)
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
            else:
                resp.close()
        except OSError:
            pass

    timer = threading.Timer(seconds, abort)
    timer.daemon = True
    timer.start()
    return timer, expired


class DownloadError(PackUnavailable):
    """A URL could not be fetched; ``url`` and ``reason`` say which and why."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"cannot download {url}: {reason}")
        self.url = url
        self.reason = reason


def copy_file(src: Path, dst: Path) -> int:
    """Copy a regular file in chunks (no metadata); return its size."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    done = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        for chunk in iter(lambda: fin.read(CHUNK), b""):
            fout.write(chunk)
            done += len(chunk)
            if on_copy_chunk is not None:
                on_copy_chunk(done)
        fout.flush()
        os.fsync(fout.fileno())
    return done


def copy_tree(src: Path, dst: Path, *, skip: Iterable[str] = ("__pycache__",)) -> list[str]:
    """Copy the regular files under ``src`` to ``dst``; return their relative POSIX paths.

    A symlink is followed only when it resolves to a regular file inside ``src`` (it is copied as a file); one
    pointing outside, at a folder or at nothing, and any device file or FIFO, is an :class:`InvalidPack`.
    """
    src, skip = Path(src), set(skip)
    root = src.resolve()
    copied: list[str] = []
    total, members, limit, most = 0, 0, max_pack_bytes(), max_pack_members()
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        members += len(dirnames) + len(filenames)
        if members > most:
            raise PackTooLarge(f"{src}: holds more than {most} files and folders (SHITU_MAX_PACK_MEMBERS)")
        for d in list(dirnames):
            full = Path(dirpath, d)
            if full.is_symlink():
                raise InvalidPack(f"{full}: symlinked folders are not allowed in a pack")
        for name in sorted(filenames):
            full = Path(dirpath, name)
            rel = full.relative_to(src).as_posix()
            if name.endswith(".pyc"):
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                target = full.resolve()
                if not target.is_relative_to(root):
                    raise InvalidPack(f"{full}: symlink points outside the pack folder ({os.readlink(full)})")
                if not target.is_file():
                    raise InvalidPack(f"{full}: symlink does not point at a regular file")
                st = os.stat(target)
            elif not stat.S_ISREG(st.st_mode):
                raise InvalidPack(f"{full}: not a regular file (device files, FIFOs and sockets are refused)")
            total += st.st_size
            if total > limit:
                raise PackTooLarge(f"{src}: more than {limit} bytes (SHITU_MAX_PACK_BYTES)")
            copy_file(full, dst / rel)
            copied.append(rel)
    return copied


# -- downloads -----------------------------------------------------------------------------------------------------
def download(
    url: str, dest: Path, *, expected_size: int | None = None, progress: bool = True, desc: str | None = None
) -> int:
    """Stream ``url`` to ``dest``; return the byte count. Raise :class:`DownloadError` on any failure
    (the partial file is removed). Kept by hand: requests/urllib3 bound each connect and read, not the whole
    transfer, so a timer shuts the socket at :func:`download_deadline`; nothing here is retried."""
    import requests
    from tqdm import tqdm

    connect_timeout = _env_number("SHITU_CONNECT_TIMEOUT", 5.0)
    read_timeout = _env_number("SHITU_READ_TIMEOUT", 60.0)
    limit = expected_size if expected_size is not None else int(_env_number("SHITU_MAX_DOWNLOAD_BYTES", 4 << 30))
    done = 0
    deadline = download_deadline()
    timer: threading.Timer | None = None
    expired = threading.Event()
    try:
        with requests.get(url, stream=True, timeout=(connect_timeout, read_timeout)) as resp:
            timer, expired = _abort_after(deadline, resp)
            if resp.status_code != 200:
                raise DownloadError(url, f"HTTP {resp.status_code} {resp.reason or ''}".strip())
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > limit:
                raise DownloadError(url, f"the server announces {total} bytes, more than the limit of {limit}")
            bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc or Path(dest).name,
                disable=not progress,
                file=sys.stderr,
                leave=False,
            )
            try:
                with open(dest, "wb") as fh:
                    for chunk in resp.iter_content(CHUNK):
                        done += len(chunk)
                        if done > limit:
                            raise DownloadError(
                                url,
                                f"more than {limit} bytes"
                                + (" (the size the manifest gives)" if expected_size else ""),
                            )
                        fh.write(chunk)
                        bar.update(len(chunk))
                    fh.flush()
                    os.fsync(fh.fileno())
            finally:
                bar.close()
    except DownloadError:
        Path(dest).unlink(missing_ok=True)
        raise
    except requests.RequestException as exc:
        Path(dest).unlink(missing_ok=True)
        if expired.is_set():
            raise DownloadError(url, f"not finished within {deadline:g} s (SHITU_DOWNLOAD_DEADLINE)") from None
        raise DownloadError(url, _reason(exc)) from None
    except OSError as exc:
        Path(dest).unlink(missing_ok=True)
        raise DownloadError(url, f"cannot write {dest}: {exc}") from None
    finally:
        if timer is not None:
            timer.cancel()
    if expired.is_set() and (expected_size is None or done != expected_size):
        Path(dest).unlink(missing_ok=True)
        raise DownloadError(url, f"not finished within {deadline:g} s (SHITU_DOWNLOAD_DEADLINE)")
    if expected_size is not None and done != expected_size:
        Path(dest).unlink(missing_ok=True)
        raise DownloadError(url, f"got {done} bytes, the manifest says {expected_size}")
    return done


def _reason(exc: Exception) -> str:
    import requests

    if isinstance(exc, requests.ConnectTimeout):
        return "connection timed out (no network?)"
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect (no network, or the host is unreachable)"
    if isinstance(exc, requests.Timeout):
        return "the server stopped sending (read timeout)"
    return f"{type(exc).__name__}: {exc}"


# -- archives ------------------------------------------------------------------------------------------------------
#: tarfile's data filter refusals, in the pack's words (its own messages name the staging folder).
_REFUSED = {
    tarfile.OutsideDestinationError: "member {!r} would be written outside the pack",
    tarfile.AbsoluteLinkError: "link {!r} points outside the pack",
    tarfile.LinkOutsideDestinationError: "link {!r} points outside the pack",
    tarfile.SpecialFileError: "member {!r} is a device file or FIFO; only regular files, folders and links are allowed",
}


def _budget(archive: Path, sizes: Iterable[int]) -> None:
    """Refuse an archive whose headers declare more members or bytes than allowed, before anything is written."""
    limit, most, total = max_expansion(archive.stat().st_size), max_pack_members(), 0
    for count, size in enumerate(sizes, 1):
        total += size
        if count > most:
            raise PackTooLarge(
                f"{archive}: holds more than {most} members (SHITU_MAX_PACK_MEMBERS); refused before extracting"
            )
        if total > limit:
            raise PackTooLarge(
                f"{archive}: declares more than {limit} bytes when extracted (SHITU_MAX_PACK_BYTES, "
                "SHITU_MAX_PACK_RATIO times the archive's size); refused before extracting"
            )


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tarfile.TarInfo:
    """A zip member as a ``TarInfo``, so that tarfile's data filter judges zip and tar members alike."""
    member = tarfile.TarInfo(info.filename)
    member.size, ftype = info.file_size, stat.S_IFMT(info.external_attr >> 16)
    if info.is_dir() or ftype == stat.S_IFDIR:
        member.type = tarfile.DIRTYPE
    elif ftype == stat.S_IFLNK:
        member.type, member.linkname = tarfile.SYMTYPE, zf.open(info).read(4096).decode("utf-8", "replace")
    elif ftype not in (0, stat.S_IFREG):
        member.type = tarfile.CHRTYPE  # device, FIFO or socket: refused by the filter
    return member


def archive_kind(path: Path) -> str | None:
    """``"zip"``, ``"tar"`` or ``None`` by content (not by suffix)."""
    try:
        if zipfile.is_zipfile(path):
            return "zip"
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        return None
    return None


def _open(archive: Path) -> tarfile.TarFile | zipfile.ZipFile:
    kind = archive_kind(archive)
    if kind is None:
        raise InvalidPack(f"{archive}: not a .tar, .tar.gz, .tgz or .zip archive")
    if kind == "tar":
        return tarfile.open(archive, "r:*")
    with open(archive, "rb") as fh:  # the count its end record declares, before ZipFile makes an object per entry
        end = zipfile._EndRecData(fh)  # type: ignore[attr-defined]  # CPython's reader; no public API has it
    declared = int(end[zipfile._ECD_ENTRIES_TOTAL]) if end else 0  # type: ignore[attr-defined]
    _budget(archive, [0] * min(declared, max_pack_members() + 1))
    return zipfile.ZipFile(archive)


def archive_names(archive: Path) -> list[str]:
    """The names of the files (and links) an archive holds, within the same limits as extraction."""
    archive = Path(archive)
    try:
        with _open(archive) as af:
            members = list(af) if isinstance(af, tarfile.TarFile) else [_zip_member(af, i) for i in af.infolist()]
            _budget(archive, (m.size for m in members))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise InvalidPack(f"{archive}: damaged archive: {exc}") from None
    return [posixpath.normpath(m.name) for m in members if not m.isdir()]


def extract_archive(archive: Path, dest: Path, select: Callable[[str], str | None] | None = None) -> list[str]:
    """Extract ``archive`` into ``dest``; return the written relative paths.

    The member count and declared sizes are checked first (:func:`max_pack_members`, :func:`max_expansion`), then
    every member passes tarfile's ``data`` filter (no absolute or ``..`` names, no links leading out, no device
    files or FIFOs), zip members included. Links are then replaced by copies of the regular file inside the
    archive they point at (a link to a folder, to nothing or in a loop is refused). ``select(name) -> str | None``
    maps a member name to the relative path to write (``None``: skip it); by default each keeps its own name.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    def keep(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        name = posixpath.normpath(member.name)
        rel = select(name) if select else name
        if rel is None or member.isdir():
            return None  # folders are made for the files they hold
        kept = tarfile.data_filter(member.replace(name=rel, deep=False), path)
        written.append(kept.name)
        return kept

    try:
        with _open(archive) as af:
            if isinstance(af, tarfile.TarFile):
                _budget(archive, (m.size for m in af))
                af.extractall(dest, filter=keep)
            else:
                _budget(archive, (i.file_size for i in af.infolist()))
                for info in af.infolist():
                    member = keep(_zip_member(af, info), str(dest))
                    if member is None:
                        continue
                    out = dest / member.name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    if member.issym():
                        os.symlink(member.linkname, out)
                    else:
                        with af.open(info) as fin, open(out, "wb") as fout:
                            shutil.copyfileobj(fin, fout, CHUNK)
        _copy_links(dest, written, archive)
    except tarfile.FilterError as exc:
        why = _REFUSED.get(type(exc), "member {!r} is refused")
        raise InvalidPack(f"{archive}: " + why.format(exc.tarinfo.name)) from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, KeyError, RuntimeError) as exc:
        raise InvalidPack(f"{archive}: damaged archive: {exc}") from None  # KeyError: a hard link to nothing
    except OSError as exc:
        raise PackError(f"{archive}: cannot extract: {exc}") from None
    return written


def _copy_links(dest: Path, written: list[str], archive: Path) -> None:
    """Replace each extracted link by a copy of the regular file it leads to inside ``dest``."""
    root = dest.resolve()
    for rel in written:
        path = dest / rel
        target = Path(os.path.realpath(path))
        if not (target.is_relative_to(root) and target.is_file()):
            raise InvalidPack(
                f"{archive}: link {rel!r} does not point at a regular file in the archive (links to folders, to "
                "missing members or in a loop are refused)"
            )
        if path.is_symlink():
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            copy_file(target, tmp)
            os.replace(tmp, path)
