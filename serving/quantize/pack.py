"""``shitu plugins quantize NAME``: an int8 version of a pack, made, checked and installed as a new pack version.

1. Calibration images: the ``images`` folder given, else the images of the pack's galleries (their list files);
   a third of them (every third, sorted by path) is held out for the comparison, never calibrated on.
2. The fp32 engine of the pack runs the calibration images through the real pipeline; the inputs its detector and
   recogniser receive are the calibration data (:func:`~.compare.capture_inputs`).
3. Each model is quantized (:mod:`.int8`); an engine with the int8 forwards swapped in is compared with the fp32
   one on the held-out images (:mod:`.compare`). Below :data:`~.compare.BOUNDS` nothing is installed and the error
   says which figure missed.
4. The version ``<release>+int8.<n>`` is staged (the fp32 files stay beside the int8 graph, so the galleries keep
   their model identity and paddle can still run the pack) with ``Global.det_backend`` / ``rec_backend``
   ``onnxruntime`` for the quantized models, and installed by the ordinary installer (hashes, a run of each
   model in a child process, one rename under the store's lock). ``shitu plugins use NAME <fp32 version>`` or
   ``rollback`` goes back.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shitu.serving.quantize.compare import Agreement, capture_inputs, compare, shortfalls
from shitu.serving.quantize.int8 import INT8_FILE, QuantizeError, onnx_source, quantize_onnx

__all__ = ["ROLES", "QuantizeReport", "quantize_pack"]

#: Manifest model roles and the engine's parameter prefix for each.
ROLES = {"detector": "det", "recognizer": "rec"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MIN_IMAGES = 6


@dataclass
class QuantizeReport:
    pack: str
    base_version: str
    version: str | None
    models: list[str]
    calibration_images: int
    agreement: Agreement
    skipped: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "agreement": self.agreement.to_dict()}


def _images(folder: Path | None, pack: Any) -> list[Path]:
    if folder is not None:
        paths = [p for p in sorted(Path(folder).rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        from shitu.serving.gallery.list_file import read_entries

        found: set[Path] = set()
        for spec in pack.galleries.values():
            source = spec.list_file or spec.folder
            if source is not None and Path(source).exists():
                found.update(Path(e.path) for e in read_entries(source, spec.image_root, spec.delimiter))
        paths = sorted(found)
    if len(paths) < MIN_IMAGES:
        where = f"folder {Path(folder).name}" if folder is not None else f"the galleries of pack {pack.name!r}"
        raise QuantizeError(
            f"{where} give(s) {len(paths)} image(s); calibration needs at least {MIN_IMAGES}: give a folder of "
            "images like the ones the pack will see (--images DIR)"
        )
    return paths


def _read(paths: Sequence[Path]) -> list[np.ndarray]:
    from shitu.serving.engine.images import load

    return [load(p) for p in paths]


def _swap_in(engine: Any, role: str, folder: Path) -> None:
    """Give ``engine`` the int8 forward of ``role`` found in ``folder`` (everything else as it was)."""
    from shitu.serving.engine.predictor import Predictor

    part = engine.detector if role == "detector" else engine.extractor
    spec = dataclasses.replace(part.predictor.spec, model_dir=folder, onnx_file=INT8_FILE)
    part.predictor = Predictor(spec, dataclasses.replace(part.predictor.options, backend="onnxruntime"))


def quantize_pack(
    name: str,
    images: Path | None = None,
    *,
    models: Sequence[str] = tuple(ROLES),
    make_current: bool = True,
    install: bool = True,
    bounds: dict[str, float] | None = None,
) -> QuantizeReport:
    """Make, compare and (when it meets ``bounds``, default :data:`~.compare.BOUNDS`) install the int8 version of
    pack ``name``'s current version; ``install=False`` measures only."""
    from shitu.plugins import adapted_version, registry
    from shitu.plugins.embedding_space import QUANTIZED_PREFIX, local_label
    from shitu.serving.engine import load_engine

    pack = registry.get_pack(name)
    if local_label(pack.version):
        raise QuantizeError(
            f"pack {name!r} {pack.version} was made on this machine; quantize the published version it came from"
        )
    unknown = sorted(set(models) - set(ROLES))
    if unknown:
        raise QuantizeError(f"unknown model role(s) {unknown}; choose among {list(ROLES)}")
    paths = _images(images, pack)
    held = paths[2::3]
    calib = [p for i, p in enumerate(paths) if i % 3 != 2]
    fp32 = load_engine(name)
    int8 = load_engine(name)
    try:
        samples = capture_inputs(fp32, _read(calib))
        with tempfile.TemporaryDirectory(prefix="shitu_quantize_") as tmp:
            stage = Path(tmp) / "version"
            data = adapted_version.copy_version(pack, stage)
            done, skipped = [], {}
            for role in models:
                entry = data["models"][role]
                folder = stage / entry["path"]
                spec = (fp32.detector if role == "detector" else fp32.extractor).predictor.spec
                try:
                    src = onnx_source(spec, Path(tmp))
                    quantize_onnx(src, folder / INT8_FILE, samples[ROLES[role]])
                except QuantizeError as exc:
                    skipped[role] = str(exc)
                    continue
                _swap_in(int8, role, folder)
                old_onnx = entry.get("onnx_file")
                if old_onnx and old_onnx != INT8_FILE:  # the fp32 graph is not needed beside the paddle files
                    (folder / old_onnx).unlink(missing_ok=True)
                entry["onnx_file"] = INT8_FILE
                entry["name"] = f"{entry['name']}+int8"
                kept = [f["path"] for f in entry.get("files") or [] if (folder / f["path"]).is_file()]
                entry["files"] = adapted_version.list_files(folder, [*kept, INT8_FILE])
                data.setdefault("params", {}).setdefault("Global", {})[f"{ROLES[role]}_backend"] = "onnxruntime"
                done.append(role)
            if not done:
                raise QuantizeError("no model could be quantized: " + "; ".join(skipped.values()))
            for role in set(ROLES) - set(done):  # as installed (a trusted file may have no published sha256)
                entry, folder = data["models"][role], stage / data["models"][role]["path"]
                present = [f["path"] for f in entry.get("files") or [] if (folder / f["path"]).is_file()]
                entry["files"] = adapted_version.list_files(folder, present)
            agreement = compare(fp32, int8, _read(held), _read(calib))
            refused = shortfalls(agreement, bounds)
            version = adapted_version.next_version(pack.name, pack.version, QUANTIZED_PREFIX)
            report = QuantizeReport(pack.name, pack.version, None, done, len(calib), agreement, skipped, refused)
            if refused or not install:
                return report
            adapted_version.ensure_in_store(pack.name)  # so that `rollback` has the fp32 version to return to
            data["version"] = version
            header = (
                f"{pack.name} {version}: {pack.version} with int8 {' and '.join(done)} made by `shitu plugins "
                f"quantize` on this machine ({len(calib)} calibration images)."
            )
            adapted_version.write_manifest(stage, data, header)
            adapted_version.install_staged(stage, make_current=make_current)
            report.version = version
            return report
    finally:
        fp32.close()
        int8.close()
