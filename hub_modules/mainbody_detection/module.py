"""PaddleHub module ``mainbody_detection``: mainbody detection: images -> class-agnostic boxes of the main objects (PP-ShiTu's first stage).

Request (``POST /predict/mainbody_detection``, JSON)::

    {"images": ["<base64>"], "threshold": 0.3}

Answer ``results``::

    [{"index": 0, "width": 451, "height": 300,
      "boxes": [{"bbox": [16, 1, 443, 299], "score": 0.49, "is_whole_image": false}, ...]}]

Every request field and operation is documented in the README ("Serving API"); the handling itself is
:class:`shitu.serving.service.DetectionService`.
"""
from __future__ import annotations

from typing import Any

from paddlehub.module.module import moduleinfo, serving

from shitu.serving import hub_app
from shitu.serving.service import DetectionService

from .params import get_default_params

hub_app.install()


@moduleinfo(name="mainbody_detection", version="1.0.0", summary="Mainbody detection: images -> class-agnostic boxes of the main objects (PP-ShiTu's first stage).", author="shitu-hub",
            author_email="", type="cv/object_detection")
class MainbodyDetection:
    """``init_args`` (config.json): ``scenario``, ``gallery``, ``token``, ``protect_reads``, ``params`` and any
    parameter by name."""

    def __init__(self, scenario: str | None = None, gallery: str | None = None, token: str | None = None,
                 protect_reads: bool = False, **init_args: Any):
        init_args.pop("directory", None)
        self.service = DetectionService(get_default_params(), scenario=scenario, gallery=gallery, token=token,
            protect_reads=protect_reads, **init_args)

    def predict(self, **request: Any) -> Any:
        """In-process use (``hub.Module(name="mainbody_detection").predict(images=[...])``): same fields as over HTTP."""
        return self.service.handle(request)

    @serving
    def serving_method(self, **request: Any) -> Any:
        return self.service.handle(request)
