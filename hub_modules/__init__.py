"""The PaddleHub modules: one folder per capability, each ``module.py`` + ``params.py``.

``hub install hub_modules/<name>`` copies a folder into ``$HUB_HOME/modules``; ``hub serving start -m <name>``
serves it. The folders also install with the package (``shitu.hub_modules``), which is how ``shitu serve`` finds
them. The request handling itself lives in :mod:`shitu.serving.hub.service`.
"""

from pathlib import Path

MODULES = ("mainbody_detection", "feature_extraction", "index_search", "image_recognition")


def module_dir(name: str) -> Path:
    """Folder of hub module ``name`` (what ``hub install`` takes)."""
    if name not in MODULES:
        raise ValueError(f"unknown hub module {name!r}; known: {', '.join(MODULES)}")
    return Path(__file__).resolve().parent / name
