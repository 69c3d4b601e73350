"""Parameters of the ``image_recognition`` hub module that differ from the schema's defaults (:mod:`shitu.params`).

None do: the module reads every pipeline parameter (Global.threshold, max_det_results, append_whole_image,
rec_nms_thresold, batch_size; IndexProcess.score_thres, labels, ...) with the schema's defaults, which live in one
place only. Put a value here only when this module needs another default than every other one. Precedence when
serving: schema defaults < these < scenario pack < ``config.json`` ``init_args`` < per-request arguments.
"""

from __future__ import annotations

from typing import Any


def get_default_params() -> dict[str, dict[str, Any]]:
    """``{Section: {key: value}}`` of this module's own defaults (none)."""
    return {}
