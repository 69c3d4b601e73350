"""Moving bytes into the pack store safely: hashing, copying, downloading and archive extraction.

- :func:`download` streams an http(s) URL to a file with a tqdm progress bar, a short connect timeout, a read
  timeout and a size limit. It is only called by ``install``, i.e. when the user asked for it.
- :func:`extract_archive` unpacks ``.tar``/``.tar.gz``/``.tgz``/``.zip`` without trusting the archive: absolute
  names, ``..``, backslashes, device files and FIFOs are refused, links are only accepted when they point at a
  regular file inside the archive (and are written as copies), duplicate names and oversized content are refused.
  Nothing is written before every member has been checked.
- :func:`copy_tree` copies a pack folder with the same rules (links inside the folder are copied as files).

Limits come from the environment, read at call time: ``SHITU_CONNECT_TIMEOUT`` (seconds, default 5),
``SHITU_READ_TIMEOUT`` (default 60), ``SHITU_MAX_DOWNLOAD_BYTES`` (default 4 GiB, used when the manifest gives no
size) and ``SHITU_MAX_PACK_BYTES`` (default 8 GiB: total extracted or copied).
"""

from __future__ import annotations

import os
import posixpath
import socket
import stat
import sys
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from shitu.files import sha256_file  # noqa: F401 - re-exported (installer, registry)
from shitu.plugins.errors import PackError

CHUNK = 1 << 20
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


class DownloadError(PackError):
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
    pointing outside, at a folder or at nothing, and any device file or FIFO, is a :class:`PackError`.
    """
    src = Path(src)
    root = src.resolve()
    skip = set(skip)
    copied: list[str] = []
    total = 0
    limit = max_pack_bytes()
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for d in list(dirnames):
            full = Path(dirpath, d)
            if full.is_symlink():
                raise PackError(f"{full}: symlinked folders are not allowed in a pack")
        for name in sorted(filenames):
            full = Path(dirpath, name)
            rel = full.relative_to(src).as_posix()
            if name.endswith(".pyc"):
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                target = full.resolve()
                if not target.is_relative_to(root):
                    raise PackError(f"{full}: symlink points outside the pack folder ({os.readlink(full)})")
                if not target.is_file():
                    raise PackError(f"{full}: symlink does not point at a regular file")
                st = os.stat(target)
            elif not stat.S_ISREG(st.st_mode):
                raise PackError(f"{full}: not a regular file (device files, FIFOs and sockets are refused)")
            total += st.st_size
            if total > limit:
                raise PackError(f"{src}: more than {limit} bytes (SHITU_MAX_PACK_BYTES)")
            copy_file(full, dst / rel)
            copied.append(rel)
    return copied


# -- downloads -----------------------------------------------------------------------------------------------------
def download(
    url: str, dest: Path, *, expected_size: int | None = None, progress: bool = True, desc: str | None = None
) -> int:
    """Stream ``url`` to ``dest``; return the byte count. Raise :class:`DownloadError` on any failure
    (the partial file is removed)."""
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
def _clean_name(name: str, archive: Path) -> str:
    """A member name as a safe relative POSIX path, or :class:`PackError`."""
    if "\\" in name or "\0" in name:
        raise PackError(f"{archive}: member {name!r} has a backslash or NUL in its name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise PackError(f"{archive}: member {name!r} has an absolute path; it would be written outside the pack")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PackError(f"{archive}: member {name!r} contains '..'; it would be written outside the pack")
    return "/".join(parts)


def _link_target(member: str, target: str, archive: Path, *, hard: bool) -> str:
    if target.startswith("/") or "\\" in target or "\0" in target:
        raise PackError(f"{archive}: {'hard' if hard else 'sym'}link {member!r} points outside the pack ({target!r})")
    joined = target if hard else posixpath.join(posixpath.dirname(member), target)
    norm = posixpath.normpath(joined)
    if norm == ".." or norm.startswith("../") or norm.startswith("/"):
        raise PackError(f"{archive}: {'hard' if hard else 'sym'}link {member!r} points outside the pack ({target!r})")
    return norm


class _Plan:
    """What an archive holds, checked before anything is written."""

    def __init__(self) -> None:
        self.files: dict[str, object] = {}  # name -> member handle (regular files)
        self.dirs: set[str] = set()
        self.links: dict[str, str] = {}  # name -> target name (regular file inside the archive)
        self.total = 0


def _budget(archive: Path, plan: _Plan, limit: int) -> None:
    if plan.total > limit:
        raise PackError(
            f"{archive}: declares more than {limit} bytes when extracted (SHITU_MAX_PACK_BYTES, "
            "SHITU_MAX_PACK_RATIO times the archive's size); refused before extracting"
        )


def _plan_tar(tf: tarfile.TarFile, archive: Path) -> _Plan:
    plan = _Plan()
    limit = max_expansion(archive.stat().st_size)
    raw_links: list[tuple[str, str, bool]] = []
    for m in tf:  # member by member: an oversized header is refused before the data behind it is decompressed
        name = _clean_name(m.name, archive)
        if not name:
            if m.isdir():
                continue
            raise PackError(f"{archive}: member {m.name!r} has no usable name")
        if name in plan.files or name in plan.links:
            raise PackError(f"{archive}: member {name!r} appears twice")
        if m.isreg():
            plan.files[name] = m
            plan.total += m.size
            _budget(archive, plan, limit)
        elif m.isdir():
            plan.dirs.add(name)
        elif m.issym() or m.islnk():
            raw_links.append((name, m.linkname, m.islnk()))
        else:
            kind = "device file" if (m.ischr() or m.isblk()) else "FIFO" if m.isfifo() else "special member"
            raise PackError(f"{archive}: member {name!r} is a {kind}; only regular files and folders are allowed")
    _resolve_links(plan, raw_links, archive)
    return plan


def _resolve_links(plan: _Plan, raw_links: list[tuple[str, str, bool]], archive: Path) -> None:
    pending = {name: (target, hard) for name, target, hard in raw_links}
    for name, (target, hard) in pending.items():
        seen = {name}
        cur, cur_hard = name, hard
        tgt = target
        while True:
            resolved = _link_target(cur, tgt, archive, hard=cur_hard)
            if resolved in plan.files:
                plan.links[name] = resolved
                break
            if resolved in pending and resolved not in seen:
                seen.add(resolved)
                cur = resolved
                tgt, cur_hard = pending[resolved]
                continue
            raise PackError(
                f"{archive}: link {name!r} -> {target!r} does not point at a regular file in the "
                "archive (links to folders, to missing members or in a loop are refused)"
            )


def _plan_zip(zf: zipfile.ZipFile, archive: Path) -> _Plan:
    plan = _Plan()
    limit = max_expansion(archive.stat().st_size)
    raw_links: list[tuple[str, str, bool]] = []
    for info in zf.infolist():
        name = _clean_name(info.filename, archive)
        if info.flag_bits & 0x1:
            raise PackError(f"{archive}: member {info.filename!r} is encrypted")
        mode = (info.external_attr >> 16) & 0xFFFF
        ftype = stat.S_IFMT(mode)
        if not name:
            if info.is_dir():
                continue
            raise PackError(f"{archive}: member {info.filename!r} has no usable name")
        if name in plan.files or name in plan.links:
            raise PackError(f"{archive}: member {name!r} appears twice")
        if info.is_dir() or ftype == stat.S_IFDIR:
            plan.dirs.add(name)
        elif ftype == stat.S_IFLNK:
            if info.file_size > 4096:
                raise PackError(f"{archive}: symlink {name!r} has an implausible target")
            raw_links.append((name, zf.read(info).decode("utf-8", "replace"), False))
        elif ftype in (0, stat.S_IFREG):
            plan.files[name] = info
            plan.total += info.file_size
            _budget(archive, plan, limit)
        else:
            raise PackError(
                f"{archive}: member {name!r} is a device file, FIFO or socket; only regular files "
                "and folders are allowed"
            )
    _resolve_links(plan, raw_links, archive)
    return plan


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


def archive_names(archive: Path) -> list[str]:
    """The regular files (and links to them) an archive holds, after the same checks as extraction."""
    archive = Path(archive)
    kind = archive_kind(archive)
    if kind is None:
        raise PackError(f"{archive}: not a .tar, .tar.gz, .tgz or .zip archive")
    try:
        if kind == "tar":
            with tarfile.open(archive, "r:*") as tf:
                plan = _plan_tar(tf, archive)
        else:
            with zipfile.ZipFile(archive) as zf:
                plan = _plan_zip(zf, archive)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise PackError(f"{archive}: damaged archive: {exc}") from None
    return [*plan.files, *plan.links]


def extract_archive(archive: Path, dest: Path, select: Callable[[str], str | None] | None = None) -> list[str]:
    """Extract ``archive`` into ``dest`` after checking every member; return the written relative paths.

    ``select(name) -> str | None`` maps a member name to the relative path to write (``None``: skip it); by default
    every regular file (and link, as a copy) is written under its own name.
    """
    archive = Path(archive)
    kind = archive_kind(archive)
    if kind is None:
        raise PackError(f"{archive}: not a .tar, .tar.gz, .tgz or .zip archive")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written: list[str] = []

    def target_of(name: str) -> Path | None:
        rel = select(name) if select else name
        if rel is None:
            return None
        out = dest / rel
        if not out.resolve().is_relative_to(root):
            raise PackError(f"{archive}: member {name!r} would be written outside {dest}")
        return out

    def write_stream(name: str, fin, size: int | None) -> None:
        out = target_of(name)
        if out is None:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        done = 0
        try:
            fout = open(out, "xb")
        except FileExistsError:
            raise PackError(f"{archive}: member {name!r} would overwrite {out.relative_to(dest)}") from None
        with fout:
            for chunk in iter(lambda: fin.read(CHUNK), b""):
                done += len(chunk)
                if size is not None and done > size:
                    raise PackError(f"{archive}: member {name!r} holds more bytes than its header says")
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        written.append(out.relative_to(dest).as_posix())

    try:
        if kind == "tar":
            with tarfile.open(archive, "r:*") as tf:
                plan = _plan_tar(tf, archive)
                for name, member in plan.files.items():
                    fin = tf.extractfile(member)  # type: ignore[arg-type]
                    if fin is None:
                        raise PackError(f"{archive}: cannot read member {name!r}")
                    with fin:
                        write_stream(name, fin, member.size)  # type: ignore[attr-defined]
                for name, target in plan.links.items():
                    fin = tf.extractfile(plan.files[target])  # type: ignore[arg-type]
                    with fin:  # type: ignore[union-attr]
                        write_stream(name, fin, None)
        else:
            with zipfile.ZipFile(archive) as zf:
                plan = _plan_zip(zf, archive)
                for name, info in plan.files.items():
                    with zf.open(info) as fin:  # type: ignore[arg-type]
                        write_stream(name, fin, info.file_size)  # type: ignore[attr-defined]
                for name, target in plan.links.items():
                    with zf.open(plan.files[target]) as fin:  # type: ignore[arg-type]
                        write_stream(name, fin, None)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise PackError(f"{archive}: damaged archive: {exc}") from None
    except OSError as exc:
        raise PackError(f"{archive}: cannot extract: {exc}") from None
    return written
