"""Adapting (training) a recogniser to one's own images: the engine's inference room never imports this one.

- :mod:`.head` -- a projection head trained on frozen embeddings of augmented views (``shitu adapt``).
- :mod:`.finetune` -- the head, then the network's last layers too (``--method finetune``).
- :mod:`.pack` -- ``shitu adapt --pack NAME``: train, then install the result as a new version of the pack.

May import :mod:`shitu.serving.engine` (models, extraction), :mod:`shitu.serving.gallery` and :mod:`shitu.plugins`.
"""
