"""The client SDK: :class:`ShituClient` (blocking, over requests) and :class:`AsyncShituClient` (over
httpx.AsyncClient) for the served HTTP API.

Light: numpy, requests, httpx and the result types (:mod:`shitu.serving.results`); Pillow to draw; no paddle,
faiss or OpenCV, nothing of :mod:`shitu.serving.engine`. See ``docs/sdk-cli.md``.
"""

from shitu.serving.client.sdk import (  # noqa: F401
    DEFAULT_URL,
    RETRY_HTTP_STATUSES,
    VECTOR_BATCH,
    AsyncShituClient,
    Box,
    ConnectionFailed,
    Embeddings,
    GalleryInfo,
    GalleryItem,
    ImageDetections,
    ImageFailed,
    ImageRecognitions,
    ImageResult,
    InputError,
    Scenario,
    SearchHits,
    ServerError,
    ShituClient,
    ShituError,
    Timeout,
    draw,
    image_bytes,
    load_image,
)

__all__ = [
    "DEFAULT_URL",
    "RETRY_HTTP_STATUSES",
    "VECTOR_BATCH",
    "ShituError",
    "InputError",
    "ServerError",
    "ImageFailed",
    "ConnectionFailed",
    "Timeout",
    "Box",
    "ImageResult",
    "ImageRecognitions",
    "ImageDetections",
    "SearchHits",
    "Embeddings",
    "GalleryItem",
    "GalleryInfo",
    "Scenario",
    "image_bytes",
    "load_image",
    "draw",
    "ShituClient",
    "AsyncShituClient",
]
