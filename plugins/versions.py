"""Pack versions (PEP 440, through ``packaging``): how one is spelled, how they sort, which ``shitu_hub`` range
holds this shitu-hub."""

from __future__ import annotations

import re

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

#: How a version is spelled (it names a store folder): a PEP 440 release (``1.1.0``, ``1.0rc1``) with an optional
#: local label (``1.1.0+adapt.1``: a version made on this machine from a published one, as ``shitu adapt --pack``
#: writes), in lowercase.
VERSION_RE = re.compile(
    r"^[0-9]+(?:\.[0-9]+){0,3}(?:[.-]?(?:a|b|rc|dev|post)[0-9]*)?"
    r"(?:\+[a-z0-9]+(?:\.[a-z0-9]+)*)?\Z"
)


def shitu_version() -> str:
    """This shitu-hub's version (what ``shitu_hub`` ranges are checked against)."""
    from shitu._version import __version__

    return __version__


def version_key(version: str) -> Version:
    """Sort key of a version string (PEP 440: ``1.2`` < ``1.10``; ``1.0rc1`` < ``1.0`` < ``1.0+adapt.2`` <
    ``1.0+adapt.10`` < ``1.0.post1``); a string that is no version sorts first."""
    try:
        return Version(version)
    except InvalidVersion:
        return Version("0.dev0")


def version_matches(version: str, spec: str) -> bool:
    """Whether ``version`` is in the PEP 440 range ``spec`` (``">=0.1,<0.2"``; pre-releases compare by number)."""
    try:
        return SpecifierSet(spec).contains(version, prereleases=True)
    except InvalidSpecifier:
        return False
