"""Default parameters of the ``feature_extraction`` hub module, in PP-ShiTu's section/key names.

Built from the typed schema in :mod:`shitu.params`; precedence when serving:
these defaults < scenario pack < ``config.json`` ``init_args`` < per-request arguments.
"""
from __future__ import annotations

from typing import Any

from shitu.params import section_defaults


def get_default_params() -> dict[str, dict[str, Any]]:
    """Extraction parameters: batch size, normalisation, binarisation."""
    return {**section_defaults("Global", ["batch_size"]),
            **section_defaults("RecPostProcess", ["normalize", "binarize"])}
