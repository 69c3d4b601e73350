"""PaddleHub module ``index_search`` (requests and answers: docs/serving.md ("HTTP API"); the code:
:mod:`shitu.serving.hub.module`)."""

from paddlehub.module.module import moduleinfo

from shitu.serving.hub.module import ServiceModule


@moduleinfo(
    name="index_search",
    version="1.0.0",
    summary="Index search: embeddings -> top-k gallery matches; gallery add, remove, info, list.",
    author="shitu-hub",
    author_email="",
    type="cv/image_retrieval",
)
class IndexSearch(ServiceModule):
    pass
