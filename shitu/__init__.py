"""shitu-hub: image recognition as a service (the PP-ShiTu design on PaddleHub).

Subpackages:

- :mod:`shitu.params` -- the typed parameter schema and its merging.
- :mod:`shitu.serving` -- the runtime: predictors, transforms, detection, extraction, gallery, pipeline, client.
- :mod:`shitu.plugins` -- the scenario-pack registry and the built-in packs.
- :mod:`shitu.hub_modules` -- the PaddleHub modules served with ``hub serving``.
"""

from ._version import __version__

__all__ = ["__version__"]
