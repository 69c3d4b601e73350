"""The recognition engine: models in, answers out. Needs paddle (or onnxruntime); knows nothing of HTTP or PaddleHub.

- :mod:`.predictor` -- one wrapper over paddle.inference (and onnxruntime) for every model.
- :mod:`.runtimes` -- which runtime runs a model (``auto``: onnxruntime where the model ships its ONNX file).
- :mod:`.transforms` -- pre-processing from PaddleClas op lists.
- :mod:`.detection`, :mod:`.extraction`, :mod:`.pipeline` -- mainbody boxes, embeddings, recognition.
- :mod:`.engine` -- :class:`Engine` and :func:`load_engine`: one scenario's models, parameters and galleries.
- :mod:`.images` (decoding with limits), :mod:`.timing` -- light helpers that do not import paddle.

Result types and drawing live in :mod:`shitu.serving.results`, gallery names and opening in
:mod:`shitu.serving.galleries`, training in :mod:`shitu.serving.adapt`.

``from shitu.serving.engine import load_engine`` works and imports paddle only when called for.
"""

from __future__ import annotations

from typing import Any

_LAZY = {"load_engine", "Engine", "EngineError", "builtin_models_dir", "GALLERY_NAME"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from shitu.serving.engine import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
