"""PaddleHub module ``index_search``: index search: embeddings -> top-k gallery matches; gallery add, remove, info, list.

Request (``POST /predict/index_search``, JSON)::

    {"operation": "search", "embeddings": [[0.01, ...]], "return_k": 3}

Answer ``results``::

    [{"index": 0, "matches": [{"id": 3, "label": "cat", "score": 0.97, "source": "...", "metadata": null}]}]

Every request field and operation is documented in docs/serving.md ("HTTP API"); the handling itself is
:class:`shitu.serving.hub.service.SearchService`.
"""

from __future__ import annotations

from paddlehub.module.module import moduleinfo

from shitu.serving.hub.module import ServiceModule
from shitu.serving.hub.service import SearchService

from .params import get_default_params


@moduleinfo(
    name="index_search",
    version="1.0.0",
    summary="Index search: embeddings -> top-k gallery matches; gallery add, remove, info, list.",
    author="shitu-hub",
    author_email="",
    type="cv/image_retrieval",
)
class IndexSearch(ServiceModule):
    service_class = SearchService
    default_params = staticmethod(get_default_params)
