"""PaddleHub module ``index_search``: index search: embeddings -> top-k gallery matches; gallery add, remove, info, list.

Request (``POST /predict/index_search``, JSON)::

    {"operation": "search", "embeddings": [[0.01, ...]], "return_k": 3}

Answer ``results``::

    [{"index": 0, "matches": [{"id": 3, "label": "cat", "score": 0.97, "source": "...", "metadata": null}]}]

Every request field and operation is documented in the README ("Serving API"); the handling itself is
:class:`shitu.serving.service.SearchService`.
"""
from __future__ import annotations

from typing import Any

from paddlehub.module.module import moduleinfo, serving

from shitu.serving import hub_app
from shitu.serving.service import SearchService

from .params import get_default_params

hub_app.install()


@moduleinfo(name="index_search", version="1.0.0", summary="Index search: embeddings -> top-k gallery matches; gallery add, remove, info, list.", author="shitu-hub",
            author_email="", type="cv/image_retrieval")
class IndexSearch:
    """``init_args`` (config.json): ``scenario``, ``gallery``, ``token``, ``protect_reads``, ``params`` and any
    parameter by name."""

    def __init__(self, scenario: str | None = None, gallery: str | None = None, token: str | None = None,
                 protect_reads: bool = False, **init_args: Any):
        init_args.pop("directory", None)
        self.service = SearchService(get_default_params(), scenario=scenario, gallery=gallery, token=token,
            protect_reads=protect_reads, **init_args)

    def predict(self, **request: Any) -> Any:
        """In-process use (``hub.Module(name="index_search").predict(images=[...])``): same fields as over HTTP."""
        return self.service.handle(request)

    @serving
    def serving_method(self, **request: Any) -> Any:
        return self.service.handle(request)
