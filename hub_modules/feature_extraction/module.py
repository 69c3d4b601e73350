"""PaddleHub module ``feature_extraction``: feature extraction: images or boxes of images -> L2-normalised embeddings.

Request (``POST /predict/feature_extraction``, JSON)::

    {"images": ["<base64>"], "boxes": [[[10, 10, 200, 200]]]}

Answer ``results``::

    [{"index": 0, "width": 451, "height": 300, "boxes": [[10, 10, 200, 200]], "embeddings": [[0.01, ...]],
      "dim": 512, "normalized": true, "binary": false}]

Every request field and operation is documented in the README ("Serving API"); the handling itself is
:class:`shitu.serving.service.ExtractionService`.
"""
from __future__ import annotations

from typing import Any

from paddlehub.module.module import moduleinfo, serving

from shitu.serving import hub_app
from shitu.serving.service import ExtractionService

from .params import get_default_params

hub_app.install()


@moduleinfo(name="feature_extraction", version="1.0.0", summary="Feature extraction: images or boxes of images -> L2-normalised embeddings.", author="shitu-hub",
            author_email="", type="cv/feature_extraction")
class FeatureExtraction:
    """``init_args`` (config.json): ``scenario``, ``gallery``, ``token``, ``protect_reads``, ``params`` and any
    parameter by name."""

    def __init__(self, scenario: str | None = None, gallery: str | None = None, token: str | None = None,
                 protect_reads: bool = False, **init_args: Any):
        init_args.pop("directory", None)
        self.service = ExtractionService(get_default_params(), scenario=scenario, gallery=gallery, token=token,
            protect_reads=protect_reads, **init_args)

    def predict(self, **request: Any) -> Any:
        """In-process use (``hub.Module(name="feature_extraction").predict(images=[...])``): same fields as over HTTP."""
        return self.service.handle(request)

    @serving
    def serving_method(self, **request: Any) -> Any:
        return self.service.handle(request)
