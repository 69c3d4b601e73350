"""Which embedding space a pack version's galleries live in, so that versions with different recognisers never
share gallery folders.

A gallery holds vectors made by one recogniser: switching the recogniser (``shitu plugins use`` / ``rollback``
between a pack and the version ``shitu adapt --pack`` made from it) must switch the galleries with it, or the
queries and the stored vectors come from two different embedding spaces and every score is meaningless.

Published versions (``1.1.0``) keep their galleries in ``$SHITU_HOME/galleries/<pack>/`` as before. A version with a
local label (``1.1.0+adapt.1``: made on this machine from a published one) keeps them in
``$SHITU_HOME/galleries/<pack>+<space>/``, where ``<space>`` is :func:`fingerprint` of its recogniser: the sha256 of
every recogniser file the manifest lists (network, weights, projection head...), its description (pooling,
projection, pre-processing) and the pack's ``RecPreProcess`` / ``RecPostProcess`` parameters. Two versions with the
same recogniser share one copy; a rollback finds the galleries of the version it returns to untouched.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from shitu.plugins.manifest import Manifest

__all__ = ["QUANTIZED_PREFIX", "embedding_space", "fingerprint", "local_label"]

#: Parameter sections that change what a recogniser's vectors mean.
SPACE_SECTIONS = ("RecPreProcess", "RecPostProcess")


def local_label(version: str) -> str | None:
    """The PEP 440 local label of ``version`` (``"adapt.1"`` of ``1.1.0+adapt.1``), or None."""
    return version.partition("+")[2] or None


def fingerprint(manifest: Manifest) -> str:
    """16 hex digits naming the recogniser of ``manifest``: its files' sha256, description and the pack's
    recognition parameters (read from the manifest: nothing is hashed from disk)."""
    rec = manifest.models["recognizer"]
    params = {s: manifest.params.get(s) for s in SPACE_SECTIONS if manifest.params.get(s)}
    doc: dict[str, Any] = {
        "files": sorted((f.path, f.sha256) for f in rec.files),
        "description": rec.description,
        "params": params,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: The local label of int8 versions (``1.2.0+int8.1``, ``shitu plugins quantize``): made only from published versions
#: and refused unless their features agree with it (median cosine >= 0.99), they keep its galleries.
QUANTIZED_PREFIX = "int8"


def embedding_space(manifest: Manifest) -> str | None:
    """None for a published version (galleries in ``galleries/<pack>/``) and its int8 versions, else
    :func:`fingerprint`."""
    label = local_label(manifest.version)
    if label is None or label.partition(".")[0] == QUANTIZED_PREFIX:
        return None
    return fingerprint(manifest)
