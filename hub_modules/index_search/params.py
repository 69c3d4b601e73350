"""Default parameters of the ``index_search`` hub module, in PP-ShiTu's section/key names.

Built from the typed schema in :mod:`shitu.params`; precedence when serving:
these defaults < scenario pack < ``config.json`` ``init_args`` < per-request arguments.
"""
from __future__ import annotations

from typing import Any

from shitu.params import section_defaults


def get_default_params() -> dict[str, dict[str, Any]]:
    """Search parameters with PaddleClas's IndexProcess names."""
    return section_defaults("IndexProcess", ["return_k", "score_thres", "hamming_radius"])
