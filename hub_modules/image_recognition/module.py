"""PaddleHub module ``image_recognition``: image recognition: the whole PP-ShiTu pipeline (detect, extract, search) in one call; gallery maintenance.

Request (``POST /predict/image_recognition``, JSON)::

    {"images": ["<base64>"], "threshold": 0.3}

Answer ``results``::

    [{"index": 0, "width": 640, "height": 427,
      "results": [{"bbox": [0, 0, 640, 427], "label": "rocket", "score": 0.97, "det_score": 1.0,
                   "is_whole_image": true, "id": 3}]}]

Every request field and operation is documented in the README ("Serving API"); the handling itself is
:class:`shitu.serving.service.RecognitionService`.
"""
from __future__ import annotations

from typing import Any

from paddlehub.module.module import moduleinfo, serving

from shitu.serving import hub_app
from shitu.serving.service import RecognitionService

from .params import get_default_params

hub_app.install()


@moduleinfo(name="image_recognition", version="1.0.0", summary="Image recognition: the whole PP-ShiTu pipeline (detect, extract, search) in one call; gallery maintenance.", author="shitu-hub",
            author_email="", type="cv/image_recognition")
class ImageRecognition:
    """``init_args`` (config.json): ``scenario``, ``gallery``, ``token``, ``protect_reads``, ``params`` and any
    parameter by name."""

    def __init__(self, scenario: str | None = None, gallery: str | None = None, token: str | None = None,
                 protect_reads: bool = False, **init_args: Any):
        init_args.pop("directory", None)
        self.service = RecognitionService(get_default_params(), scenario=scenario, gallery=gallery, token=token,
            protect_reads=protect_reads, **init_args)

    def predict(self, **request: Any) -> Any:
        """In-process use (``hub.Module(name="image_recognition").predict(images=[...])``): same fields as over HTTP."""
        return self.service.handle(request)

    @serving
    def serving_method(self, **request: Any) -> Any:
        return self.service.handle(request)
