"""The runtime, one sub-package per job. Importing this package imports nothing else; pick the room you need.

- :mod:`.engine` -- models in, answers out: predictor, transforms, detection, extraction, pipeline, engine
  (``load_engine``), plus the light helpers images and timing. Never imports paddlehub.
- :mod:`.results` -- the leaf every room shares: result types, explanations, drawing (numpy and PIL only).
- :mod:`.galleries` -- the gallery manager an engine composes: names, open/create, model identity, pack
  galleries, thumbnails.
- :mod:`.adapt` -- training a recogniser on one's own images (``shitu adapt``).
- :mod:`.gallery` -- labeled embeddings: the backend interface, the local backend (SQLite + faiss, in parts:
  storage, index, snapshot, replication, maintenance, reading), list files, builds.
- :mod:`.hub` -- PaddleHub glue: request handling (``service``), the hub module base, Flask hooks, ``hub serving``
  control. The only room that imports paddlehub.
- :mod:`.client` -- the SDK (``ShituClient``, ``AsyncShituClient``): HTTP only, no paddle, nothing of the engine.
- :mod:`.video` -- frame sources and the tracker.
- :mod:`.cli` -- every ``shitu`` subcommand and their shared toolkit.
"""
