"""PaddleHub module ``mainbody_detection``: mainbody detection: images -> class-agnostic boxes of the main objects (PP-ShiTu's first stage).

Request (``POST /predict/mainbody_detection``, JSON)::

    {"images": ["<base64>"], "threshold": 0.3}

Answer ``results``::

    [{"index": 0, "width": 451, "height": 300,
      "boxes": [{"bbox": [16, 1, 443, 299], "score": 0.49, "is_whole_image": false}, ...]}]

Every request field and operation is documented in docs/serving.md ("HTTP API"); the handling itself is
:class:`shitu.serving.hub.service.DetectionService`.
"""

from __future__ import annotations

from paddlehub.module.module import moduleinfo

from shitu.serving.hub.module import ServiceModule
from shitu.serving.hub.service import DetectionService

from .params import get_default_params


@moduleinfo(
    name="mainbody_detection",
    version="1.0.0",
    summary="Mainbody detection: images -> class-agnostic boxes of the main objects (PP-ShiTu's first stage).",
    author="shitu-hub",
    author_email="",
    type="cv/object_detection",
)
class MainbodyDetection(ServiceModule):
    service_class = DetectionService
    default_params = staticmethod(get_default_params)
