"""A PaddleDetection export's ``infer_cfg.yml`` is read wherever the detector is loaded: model folders and packs."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "plugins"))
import packkit  # noqa: E402
from packkit import home  # noqa: E402,F401  (autouse: a fresh SHITU_HOME per test)

from shitu.model_spec import ModelSpec  # noqa: E402
from shitu.plugins import registry  # noqa: E402

INFER_CFG = {
    "mode": "paddle",
    "arch": "GFL",
    "Preprocess": [
        {"type": "Resize", "interp": 2, "keep_ratio": False, "target_size": [320, 320]},
        {"type": "NormalizeImage", "is_scale": True, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        {"type": "Permute"},
    ],
    "label_list": ["foreground"],
}
CFG_BYTES = yaml.safe_dump(INFER_CFG).encode()


def _resize_of(spec: ModelSpec) -> list[int]:
    return next(op["DetResize"]["target_size"] for op in spec.transform_ops if "DetResize" in op)


def test_pack_detector_without_transform_ops_reads_infer_cfg(tmp_path):
    def mutate(data):
        det = data["models"]["detector"]
        del det["transform_ops"], det["decoder_args"]
        det["files"].append({"path": "infer_cfg.yml", "sha256": packkit.sha(CFG_BYTES), "size": len(CFG_BYTES)})

    folder = packkit.make_pack(tmp_path / "src", name="cfgpack", mutate=mutate)
    (folder / "models" / "det" / "infer_cfg.yml").write_bytes(CFG_BYTES)
    registry.install(str(folder), progress=False)
    spec = registry.get_pack("cfgpack").detector_spec()
    assert _resize_of(spec) == [320, 320]  # before: PP-ShiTu's 640 default, the export's own file ignored
    assert {
        "DetNormalizeImage": {"is_scale": True, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    } in spec.transform_ops
    assert spec.decoder_args["class_names"] == ["foreground"]


def test_description_keys_win_over_infer_cfg(tmp_path):
    (tmp_path / "infer_cfg.yml").write_bytes(CFG_BYTES)
    ops = [{"DetResize": {"interp": 2, "keep_ratio": False, "target_size": [416, 416]}}, {"DetPermute": {}}]
    spec = ModelSpec.from_dict(
        {"kind": "detector", "decoder": "paddledet", "transform_ops": ops, "decoder_args": {"class_names": ["thing"]}},
        tmp_path,
    )
    assert _resize_of(spec) == [416, 416] and spec.decoder_args["class_names"] == ["thing"]
    spec = ModelSpec.from_dict({"kind": "detector", "decoder": "paddledet"}, tmp_path)
    assert _resize_of(spec) == [320, 320]
