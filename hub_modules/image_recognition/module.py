"""PaddleHub module ``image_recognition`` (requests and answers: docs/serving.md ("HTTP API"); the code:
:mod:`shitu.serving.hub.module`)."""

from paddlehub.module.module import moduleinfo

from shitu.serving.hub.module import ServiceModule


@moduleinfo(
    name="image_recognition",
    version="1.0.0",
    summary="Image recognition: the whole PP-ShiTu pipeline (detect, extract, search) in one call; gallery maintenance.",
    author="shitu-hub",
    author_email="",
    type="cv/image_recognition",
)
class ImageRecognition(ServiceModule):
    pass
