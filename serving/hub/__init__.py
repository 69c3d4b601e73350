"""PaddleHub glue: the only room that imports paddlehub.

- :mod:`.service` -- request handling per capability (validation, limits, envelopes), on top of the engine.
- :mod:`.module` -- the base class of the four hub modules.
- :mod:`.app` -- hooks into PaddleHub's Flask app (``/health``, request limits).
- :mod:`.control` -- ``hub install`` / ``hub serving start`` / stop, and the ``config.json`` they read.
"""
