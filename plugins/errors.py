"""The errors of the pack system, rooted on :mod:`shitu.errors`. A message names the pack, the path and, for
manifests, the key."""

from __future__ import annotations

from shitu.errors import Conflict, InvalidArgument, NotFound, ShituError, TooLarge, Unavailable


class PackError(ShituError):
    """A pack cannot be found, read, installed or used. The message says which and why."""


class PackNotFound(PackError, NotFound):
    """No pack, version or gallery of that name (in the store, the entry points or the built-in packs)."""

    http_status = 404


class InvalidPack(PackError, InvalidArgument):
    """What was given as a pack is wrong: a damaged or hostile archive, a checksum mismatch, a bad option."""

    http_status = 400


class PackTooLarge(InvalidPack, TooLarge):
    """A pack (archive or folder) exceeds one of the limits of :mod:`shitu.plugins.fetch`."""

    http_status = 413


class PackConflict(PackError, Conflict):
    """The store says otherwise: the version is installed already, another writer holds the lock, this shitu-hub
    is not one the pack supports."""

    http_status = 409


class PackUnavailable(PackError, Unavailable):
    """The pack's model files are not installed, or cannot be downloaded now."""

    http_status = 503


class ManifestError(InvalidPack):
    """A ``pack.yaml`` is wrong. ``key`` is the key path (``models.recognizer.files[1].sha256``), ``file`` the
    manifest's path (or ``None`` for a manifest given as a mapping)."""

    def __init__(self, key: str, message: str, file: str | None = None):
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{key}: {message}" if key else f"{where}{message}")
        self.key = key
        self.problem = message
        self.file = file
