"""Store-installable copies of the embedded general-lite pack, for tests that need real models in a pack."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from shitu.plugins import registry

BUILTIN = Path(registry.BUILTIN_DIR) / "general_lite"
CRASHING_PASSES = ["conv2d_bias_fuse_pass", "conv_activation_onednn_fuse_pass"]


def lite_pack(
    folder: Path,
    name: str,
    det_passes="keep",
    version: str = "1.0.0",
    mutate: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """A store-installable copy of general-lite (paddle files and the centering vector only, its demo gallery vectors), with the detector's
    pass list changed: ``None`` drops the key (the README template's optional list), a list replaces it.
    ``mutate`` edits the manifest dict before it is written."""
    data = yaml.safe_load((BUILTIN / "pack.yaml").read_text())
    data["name"], data["version"] = name, version
    for role, sub in (("detector", "det"), ("recognizer", "rec")):
        model = data["models"][role]
        model.pop("onnx_file", None)
        model["files"] = [f for f in model["files"] if f["path"] in ("model.json", "model.pdiparams", "centering.npy")]
        (folder / "models" / sub).mkdir(parents=True, exist_ok=True)
        for f in model["files"]:
            shutil.copyfile(BUILTIN / "models" / sub / f["path"], folder / "models" / sub / f["path"])
    det = data["models"]["detector"]
    if det_passes is None:
        det.pop("onednn_passes")
    elif det_passes != "keep":
        det["onednn_passes"] = list(det_passes)
    shutil.copytree(BUILTIN / "gallery", folder / "gallery", dirs_exist_ok=True)
    if mutate:
        mutate(data)
    (folder / "pack.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder
