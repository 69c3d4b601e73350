"""The one implementation of the four PaddleHub modules (imports paddlehub).

PaddleHub needs a ``module.py`` per module folder with a class decorated by ``@moduleinfo`` (it reads the
decorator's literal arguments when it installs a folder); each of those classes is empty and subclasses
:class:`ServiceModule`, which picks its :class:`~shitu.serving.hub.service.Service` by the module's name.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from paddlehub.module.module import serving

from shitu.serving.hub import app as hub_app
from shitu.serving.hub import connections, observability
from shitu.serving.hub.service import (
    TOKEN_ENV,
    DetectionService,
    ExtractionService,
    RecognitionService,
    RequestError,
    SearchService,
    Service,
)

hub_app.install()

#: The service behind each hub module, by module name.
SERVICES: dict[str, type[Service]] = {
    "mainbody_detection": DetectionService,
    "feature_extraction": ExtractionService,
    "index_search": SearchService,
    "image_recognition": RecognitionService,
}


class ServiceModule:
    """Base of the four hub modules: one :class:`~shitu.serving.hub.service.Service` behind PaddleHub's API.

    A module class is decorated with ``@moduleinfo`` (which sets ``name``); its folder's ``params.py`` holds the
    module's own parameter defaults. PaddleHub finds the ``@serving`` method here through the class's bases.

    ``init_args`` (config.json): ``scenario``, ``gallery``, ``token``, ``protect_reads``, ``host`` (address to
    listen on, default 127.0.0.1), ``params`` and any parameter by name.
    """

    name: str

    def __init__(
        self,
        scenario: str | None = None,
        gallery: str | None = None,
        token: str | None = None,
        protect_reads: bool = False,
        host: str | None = None,
        **init_args: Any,
    ):
        init_args.pop("directory", None)
        connections.set_host(host)  # where `hub serving` listens (default 127.0.0.1)
        self.service = SERVICES[self.name](
            self._default_params(),
            scenario=scenario,
            gallery=gallery,
            token=token,
            protect_reads=protect_reads,
            **init_args,
        )
        connections.note_token(token or os.environ.get(TOKEN_ENV), protect_reads)

    def _default_params(self) -> dict[str, Any]:
        """The module folder's ``params.py`` (next to the ``module.py`` that PaddleHub loaded)."""
        package = type(self).__module__.rpartition(".")[0]
        return importlib.import_module(f"{package}.params").get_default_params()

    def predict(self, **request: Any) -> Any:
        """In-process use (``hub.Module(name=...).predict(images=[...])``): the same fields as over HTTP; ``images``
        may also hold numpy BGR arrays, and ``paths=[...]`` image files, as PaddleHub's CV modules take them."""
        from shitu.serving.hub.inprocess import InProcessError, to_request

        try:
            call = to_request(request)
        except InProcessError as exc:
            raise RequestError(str(exc)) from None
        return self.service.handle(call)

    @serving  # registered under this class; PaddleHub finds it through the module classes' bases
    def serving_method(self, **request: Any) -> Any:
        try:
            return self.service.handle(request)
        except Exception as exc:
            observability.note_error(exc)  # for the envelope's status, the metrics and the request log
            raise
