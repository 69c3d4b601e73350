"""PaddleHub module ``feature_extraction``: feature extraction: images or boxes of images -> L2-normalised embeddings.

Request (``POST /predict/feature_extraction``, JSON)::

    {"images": ["<base64>"], "boxes": [[[10, 10, 200, 200]]]}

Answer ``results``::

    [{"index": 0, "width": 451, "height": 300, "boxes": [[10, 10, 200, 200]], "embeddings": [[0.01, ...]],
      "dim": 512, "normalized": true, "binary": false}]

Every request field and operation is documented in docs/serving.md ("HTTP API"); the handling itself is
:class:`shitu.serving.hub.service.ExtractionService`.
"""

from __future__ import annotations

from paddlehub.module.module import moduleinfo

from shitu.serving.hub.module import ServiceModule
from shitu.serving.hub.service import ExtractionService

from .params import get_default_params


@moduleinfo(
    name="feature_extraction",
    version="1.0.0",
    summary="Feature extraction: images or boxes of images -> L2-normalised embeddings.",
    author="shitu-hub",
    author_email="",
    type="cv/feature_extraction",
)
class FeatureExtraction(ServiceModule):
    service_class = ExtractionService
    default_params = staticmethod(get_default_params)
