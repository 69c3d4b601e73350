"""PaddleHub module ``mainbody_detection`` (requests and answers: docs/serving.md ("HTTP API"); the code:
:mod:`shitu.serving.hub.module`)."""

from paddlehub.module.module import moduleinfo

from shitu.serving.hub.module import ServiceModule


@moduleinfo(
    name="mainbody_detection",
    version="1.0.0",
    summary="Mainbody detection: images -> class-agnostic boxes of the main objects (PP-ShiTu's first stage).",
    author="shitu-hub",
    author_email="",
    type="cv/object_detection",
)
class MainbodyDetection(ServiceModule):
    pass
