"""PaddleHub module ``image_recognition``: image recognition: the whole PP-ShiTu pipeline (detect, extract, search) in one call; gallery maintenance.

Request (``POST /predict/image_recognition``, JSON)::

    {"images": ["<base64>"], "threshold": 0.3}

Answer ``results``::

    [{"index": 0, "width": 640, "height": 427,
      "results": [{"bbox": [0, 0, 640, 427], "label": "rocket", "score": 0.97, "det_score": 1.0,
                   "is_whole_image": true, "id": 3}]}]

Every request field and operation is documented in docs/serving.md ("HTTP API"); the handling itself is
:class:`shitu.serving.hub.service.RecognitionService`.
"""

from __future__ import annotations

from paddlehub.module.module import moduleinfo

from shitu.serving.hub.module import ServiceModule
from shitu.serving.hub.service import RecognitionService

from .params import get_default_params


@moduleinfo(
    name="image_recognition",
    version="1.0.0",
    summary="Image recognition: the whole PP-ShiTu pipeline (detect, extract, search) in one call; gallery maintenance.",
    author="shitu-hub",
    author_email="",
    type="cv/image_recognition",
)
class ImageRecognition(ServiceModule):
    service_class = RecognitionService
    default_params = staticmethod(get_default_params)
