"""The base class of the four PaddleHub modules (imports paddlehub; the modules' ``module.py`` files use it)."""

from __future__ import annotations

import os
from typing import Any

from paddlehub.module.module import serving

from shitu.serving.hub import app as hub_app
from shitu.serving.hub import connections, observability
from shitu.serving.hub.service import TOKEN_ENV

hub_app.install()


class ServiceModule:
    """Base of the four hub modules: one :class:`~shitu.serving.hub.service.Service` behind PaddleHub's API.

    A module class sets ``service_class`` and ``default_params`` (its ``params.py``) and is decorated with
    ``@moduleinfo``; PaddleHub finds the ``@serving`` method here through the class's bases.

    ``init_args`` (config.json): ``scenario``, ``gallery``, ``token``, ``protect_reads``, ``host`` (address to
    listen on, default 127.0.0.1), ``params`` and any parameter by name.
    """

    service_class: Any = None
    default_params: Any = None

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
        self.service = self.service_class(
            type(self).default_params(),
            scenario=scenario,
            gallery=gallery,
            token=token,
            protect_reads=protect_reads,
            **init_args,
        )
        connections.note_token(token or os.environ.get(TOKEN_ENV), protect_reads)

    def predict(self, **request: Any) -> Any:
        """In-process use (``hub.Module(name=...).predict(images=[...])``): the same fields as over HTTP; ``images``
        may also hold numpy BGR arrays, and ``paths=[...]`` image files, as PaddleHub's CV modules take them."""
        from shitu.serving.hub.inprocess import InProcessError, to_request
        from shitu.serving.hub.service import RequestError

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
            observability.note_error(exc)  # its kind, for the metrics and the request log
            raise
