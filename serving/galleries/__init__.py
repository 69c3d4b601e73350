"""The galleries an engine serves: :class:`~.manager.GalleryManager` (names, open/create, model identity, pack
galleries, thumbnails) over the bounded cache of open galleries (:mod:`.open_galleries`).

May import :mod:`shitu.serving.gallery` (the backends), :mod:`shitu.plugins` (pack declarations) and the leaves
(``shitu.errors``, ``shitu.params``); never :mod:`shitu.serving.engine`, which composes it.
"""
