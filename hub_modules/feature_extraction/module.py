"""PaddleHub module ``feature_extraction`` (requests and answers: docs/serving.md ("HTTP API"); the code:
:mod:`shitu.serving.hub.module`)."""

from paddlehub.module.module import moduleinfo

from shitu.serving.hub.module import ServiceModule


@moduleinfo(
    name="feature_extraction",
    version="1.0.0",
    summary="Feature extraction: images or boxes of images -> L2-normalised embeddings.",
    author="shitu-hub",
    author_email="",
    type="cv/feature_extraction",
)
class FeatureExtraction(ServiceModule):
    pass
