"""The one exception of the pack system. Its message names the pack, the path and, for manifests, the key."""

from __future__ import annotations


class PackError(Exception):
    """A pack cannot be found, read, installed or used. The message says which and why."""


class ManifestError(PackError):
    """A ``pack.yaml`` is wrong. ``key`` is the key path (``models.recognizer.files[1].sha256``), ``file`` the
    manifest's path (or ``None`` for a manifest given as a mapping)."""

    def __init__(self, key: str, message: str, file: str | None = None):
        where = f"{file}: " if file else ""
        super().__init__(f"{where}{key}: {message}" if key else f"{where}{message}")
        self.key = key
        self.problem = message
        self.file = file
