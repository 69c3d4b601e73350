"""Default parameters of the ``mainbody_detection`` hub module, in PP-ShiTu's section/key names.

Built from the typed schema in :mod:`shitu.params`; precedence when serving:
these defaults < scenario pack < ``config.json`` ``init_args`` < per-request arguments.
"""
from __future__ import annotations

from typing import Any

from shitu.params import section_defaults


def get_default_params() -> dict[str, dict[str, Any]]:
    """Detection parameters: how many boxes come back (``threshold`` + ``max_det_results``), whole-image box."""
    return section_defaults("Global", ["threshold", "max_det_results", "append_whole_image", "det_nms_threshold",
                                       "min_box_size"])
