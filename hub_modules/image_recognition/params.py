"""Default parameters of the ``image_recognition`` hub module, in PP-ShiTu's section/key names.

Built from the typed schema in :mod:`shitu.params`; precedence when serving:
these defaults < scenario pack < ``config.json`` ``init_args`` < per-request arguments.
"""
from __future__ import annotations

from typing import Any

from shitu.params import section_defaults


def get_default_params() -> dict[str, dict[str, Any]]:
    """Every pipeline parameter that a request may change."""
    return {**section_defaults("Global", ["threshold", "max_det_results", "append_whole_image", "rec_nms_thresold",
                                          "batch_size"]),
            **section_defaults("IndexProcess", ["score_thres"])}
