"""What the engine needs to know about a model folder: files, pre-processing, decoding and runtime settings.

A model folder describes itself in ``shitu_model.yml`` (written for the embedded defaults and by scenario packs).
PaddleDetection exports, as PP-ShiTu ships its mainbody detector, carry ``infer_cfg.yml`` instead; it is read too,
and also completes a ``paddledet`` description (a pack's, or ``shitu_model.yml``) that leaves out the pre-processing
or the class names.
A folder with neither gets the PaddleClas defaults for its kind.

``shitu_model.yml`` keys (all optional but ``kind``)::

    kind: detector | extractor
    model_file: model.json          # default: inference.json / inference.pdmodel / model.json / model.pdmodel
    params_file: model.pdiparams    # default: the model file's stem + .pdiparams
    onnx_file: model.onnx           # for the onnxruntime backend
    input_color: BGR | RGB          # channel order the network expects (PaddleClas/PaddleDetection: RGB)
    transform_ops: [...]            # PaddleClas op list, see shitu.serving.engine.transforms
    decoder: gfl | paddledet        # detectors: raw GFL heads (NanoDet) or PaddleDetection's NMS'd rows
    decoder_args: {...}             # gfl: strides, reg_max, input_size; class_names
    pooling: gap | gem | none       # extractors whose output is a feature map [N, C, H, W]
    projection: head.npy            # extractors: a float32 [d_in, d_out] matrix applied after pooling (written by
                                    # `shitu adapt`; read with numpy, never unpickled)
    centering: centering.npy        # extractors: a float32 [d] vector subtracted after pooling, used when the
                                    # parameter RecPostProcess.centering is null (written by `shitu adapt`)
    onednn: false                   # oneDNN only where verified: Paddle 3.3.1's default passes crash some
                                    # models (conv + leaky_relu), so it is off unless the folder says so or
                                    # `shitu plugins verify --onednn` recorded a pass list verified on the model
    onednn_passes: [...]            # the oneDNN pass list verified for this model; without one oneDNN stays
                                    # off (paddle's implicit default list is never used: it can segfault)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from shitu.errors import InvalidArgument

SPEC_FILE = "shitu_model.yml"
PADDLEDET_CFG = "infer_cfg.yml"
MODEL_FILE_CANDIDATES = ("inference.json", "inference.pdmodel", "model.json", "model.pdmodel")

#: PaddleClas's default recognition pre-processing (ImageNet statistics, RGB).
DEFAULT_REC_OPS: list[dict[str, Any]] = [
    {"ResizeImage": {"size": [224, 224], "return_numpy": False, "interpolation": "bilinear", "backend": "cv2"}},
    {
        "NormalizeImage": {
            "scale": 1.0 / 255.0,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "order": "hwc",
        }
    },
    {"ToCHWImage": None},
]
#: PP-ShiTu's mainbody detector pre-processing (PicoDet, 640x640).
DEFAULT_DET_OPS: list[dict[str, Any]] = [
    {"DetResize": {"interp": 2, "keep_ratio": False, "target_size": [640, 640]}},
    {"DetNormalizeImage": {"is_scale": True, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}},
    {"DetPermute": {}},
]


class ModelSpecError(InvalidArgument):
    """A model folder or its description is unusable; the message names the path."""


@dataclass
class ModelSpec:
    kind: str
    model_dir: Path
    model_file: str | None = None
    params_file: str | None = None
    onnx_file: str | None = None
    input_color: str = "RGB"
    transform_ops: list[dict[str, Any]] = field(default_factory=list)
    decoder: str | None = None
    decoder_args: dict[str, Any] = field(default_factory=dict)
    pooling: str = "none"
    projection: str | None = None
    centering: str | None = None
    #: None (unset): off unless a pass list was verified on this model (shitu.serving.engine.onednn).
    onednn: bool | None = None
    onednn_passes: list[str] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], model_dir: str | Path) -> ModelSpec:
        model_dir = Path(model_dir)
        data = _with_paddledet_cfg(data, model_dir)
        known = set(cls.__dataclass_fields__) - {"model_dir"}
        unknown = set(data) - known
        if unknown:
            raise ModelSpecError(f"{model_dir}: unknown key(s) {sorted(unknown)} in model description")
        kind = data.get("kind")
        if kind not in ("detector", "extractor"):
            raise ModelSpecError(f"{model_dir}: 'kind' must be 'detector' or 'extractor', got {kind!r}")
        spec = cls(kind=kind, model_dir=model_dir, **{k: v for k, v in data.items() if k != "kind"})
        if spec.input_color not in ("RGB", "BGR"):
            raise ModelSpecError(f"{model_dir}: input_color must be RGB or BGR, got {spec.input_color!r}")
        if not spec.transform_ops:
            spec.transform_ops = list(DEFAULT_DET_OPS if kind == "detector" else DEFAULT_REC_OPS)
        if kind == "detector" and spec.decoder not in ("gfl", "paddledet"):
            raise ModelSpecError(f"{model_dir}: detector 'decoder' must be 'gfl' or 'paddledet', got {spec.decoder!r}")
        return spec

    @classmethod
    def from_dir(cls, model_dir: str | Path, kind: str | None = None) -> ModelSpec:
        """Read ``shitu_model.yml`` or PaddleDetection's ``infer_cfg.yml`` in ``model_dir``."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelSpecError(f"model folder not found: {model_dir}")
        spec_path = model_dir / SPEC_FILE
        if spec_path.is_file():
            data = _read_yaml(spec_path)
            if kind and data.get("kind", kind) != kind:
                raise ModelSpecError(f"{spec_path}: describes a {data.get('kind')}, expected a {kind}")
            data.setdefault("kind", kind)
            return cls.from_dict(data, model_dir)
        det_cfg = model_dir / PADDLEDET_CFG
        if det_cfg.is_file():
            return cls.from_dict(_from_paddledet_cfg(_read_yaml(det_cfg), det_cfg), model_dir)
        if kind is None:
            raise ModelSpecError(f"{model_dir}: no {SPEC_FILE} or {PADDLEDET_CFG}; cannot tell what the model is")
        data = {"kind": kind}
        if kind == "detector":
            data["decoder"] = "paddledet"
        return cls.from_dict(data, model_dir)

    def with_transform_ops(self, ops: list[dict[str, Any]] | None) -> ModelSpec:
        """This description with pre-processing ``ops`` instead of the folder's (``None``: unchanged).

        ``DetPreProcess.transform_ops`` / ``RecPreProcess.transform_ops`` reach the engine through this."""
        return self if ops is None else replace(self, transform_ops=[dict(op) for op in ops])

    def files(self) -> tuple[Path, Path]:
        """(graph file, weights file), checked to exist; a clear error names the missing path."""
        if self.model_file:
            model = self.model_dir / self.model_file
        else:
            found = [self.model_dir / n for n in MODEL_FILE_CANDIDATES if (self.model_dir / n).is_file()]
            if not found:
                raise ModelSpecError(f"{self.model_dir}: no model file (looked for {', '.join(MODEL_FILE_CANDIDATES)})")
            model = found[0]
        params = self.model_dir / (self.params_file or (model.stem + ".pdiparams"))
        for p in (model, params):
            if not p.is_file():
                raise ModelSpecError(f"model file not found: {p}")
        return model, params


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelSpecError(f"{path}: cannot read: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelSpecError(f"{path}: expected a mapping at the top level")
    return data


def _with_paddledet_cfg(data: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """A ``paddledet`` detector description completed from its folder's ``infer_cfg.yml`` (packs included).

    The export's ``Preprocess`` and ``label_list`` fill ``transform_ops`` and ``decoder_args.class_names`` where the
    description does not set them; what the description sets wins.
    """
    cfg_path = model_dir / PADDLEDET_CFG
    if data.get("kind") != "detector" or data.get("decoder") != "paddledet" or not cfg_path.is_file():
        return data
    cfg = _from_paddledet_cfg(_read_yaml(cfg_path), cfg_path)
    data = dict(data)
    if not data.get("transform_ops"):
        data["transform_ops"] = cfg["transform_ops"]
    args = dict(data.get("decoder_args") or {})
    if not args.get("class_names") and cfg["decoder_args"]["class_names"]:
        args["class_names"] = cfg["decoder_args"]["class_names"]
    data["decoder_args"] = args
    return data


def _from_paddledet_cfg(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """PaddleDetection's ``infer_cfg.yml`` (``Preprocess: [{type: Resize, ...}]``) -> a detector description."""
    ops: list[dict[str, Any]] = []
    for step in cfg.get("Preprocess") or []:
        step = dict(step)
        kind = step.pop("type", None)
        if kind == "Resize":
            ops.append(
                {
                    "DetResize": {
                        "target_size": step.get("target_size", [640, 640]),
                        "keep_ratio": step.get("keep_ratio", False),
                        "interp": step.get("interp", 2),
                    }
                }
            )
        elif kind == "NormalizeImage":
            ops.append(
                {
                    "DetNormalizeImage": {
                        "is_scale": step.get("is_scale", True),
                        "mean": step.get("mean", [0.485, 0.456, 0.406]),
                        "std": step.get("std", [0.229, 0.224, 0.225]),
                    }
                }
            )
        elif kind == "Permute":
            ops.append({"DetPermute": {}})
        elif kind == "PadStride":
            ops.append({"DetPadStride": {"stride": step.get("stride", 0)}})
        else:
            raise ModelSpecError(f"{path}: unsupported Preprocess type {kind!r}")
    return {
        "kind": "detector",
        "decoder": "paddledet",
        "transform_ops": ops or list(DEFAULT_DET_OPS),
        "decoder_args": {"class_names": list(cfg.get("label_list") or [])},
    }
