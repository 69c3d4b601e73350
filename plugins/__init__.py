"""Scenario packs: a detector, a recogniser, their PP-ShiTu parameters and galleries, as installable plugins.

- :mod:`.registry` -- discovery (built-in, entry points ``shitu.packs``, the user's store), selection
  (``get_pack``), and the store operations (install, uninstall, use, rollback, verify).
- :mod:`.pack` -- ``Pack``: one usable pack version (model specs, galleries, what is missing and how to fetch it).
- :mod:`.manifest` -- the ``pack.yaml`` schema (pydantic) and its bounded reading; reading a manifest imports no code.
- :mod:`.versions` -- PEP 440 pack versions and ``shitu_hub`` ranges (``packaging``).
- :mod:`.store` -- the store layout under ``$SHITU_HOME`` and its lock / atomic commits.
- :mod:`.installer`, :mod:`.fetch` -- installing: staging, downloads, safe archive extraction, checksums.
- :mod:`.cli` -- ``shitu plugins list|info|install|remove|verify|use|rollback``.
- ``packs/`` -- the built-in packs (``general-lite`` embedded and offline; ``general``, ``product``, ``vehicle``,
  ``logo``, ``anime`` describing PP-ShiTu's published models, installed on demand).

``docs/writing-packs.md`` explains how to write a pack. Importing this package imports nothing else.
"""
