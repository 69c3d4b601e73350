"""PaddleClas's ``inference_general.yaml`` for its ``deploy/python/predict_system.py`` on the official-format
PP-ShiTu models of ``../shared/official_format`` (the parity test and ``bench_vs_paddleclas.py`` both run it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: ``../shared/official_format`` and the two model folders in each of its layouts (``legacy``, ``pir``).
OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "official_format"
DET = "picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer"
REC = "general_PPLCNetV2_base_pretrained_v1.0_infer"
#: The pipeline settings both sides run with (PaddleClas's names: ``rec_nms_thresold`` is its spelling).
SETTINGS = {"threshold": 0.2, "max_det_results": 5, "rec_nms_thresold": 0.05, "score_thres": 0.5, "return_k": 5}


def paddleclas_config(
    tmp: Path, list_file: Path, threads: int = 1, onednn: bool = False, layout: str = "legacy"
) -> dict[str, Any]:
    """The config for these models (``layout``), the gallery ``list_file`` (images beside it), an index under
    ``tmp/index`` and these CPU settings."""
    return {
        "Global": {
            "infer_imgs": str(tmp),
            "det_inference_model_dir": str(OFFICIAL / layout / DET),
            "rec_inference_model_dir": str(OFFICIAL / layout / REC),
            "rec_nms_thresold": SETTINGS["rec_nms_thresold"],
            "batch_size": 1,
            "image_shape": [3, 640, 640],
            "threshold": SETTINGS["threshold"],
            "max_det_results": SETTINGS["max_det_results"],
            "label_list": ["foreground"],
            "use_gpu": False,
            "enable_mkldnn": onednn,
            "cpu_num_threads": threads,
            "enable_benchmark": False,
            "use_fp16": False,
            "ir_optim": True,
            "use_tensorrt": False,
            "gpu_mem": 8000,
            "enable_profile": False,
        },
        "DetPreProcess": {
            "transform_ops": [
                {"DetResize": {"interp": 2, "keep_ratio": False, "target_size": [640, 640]}},
                {"DetNormalizeImage": {"is_scale": True, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}},
                {"DetPermute": {}},
            ]
        },
        "DetPostProcess": {},
        "RecPreProcess": {
            "transform_ops": [
                {
                    "ResizeImage": {
                        "size": [224, 224],
                        "return_numpy": False,
                        "interpolation": "bilinear",
                        "backend": "cv2",
                    }
                },
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
        },
        "RecPostProcess": None,
        "IndexProcess": {
            "index_method": "Flat",
            "image_root": str(list_file.parent),
            "index_dir": str(tmp / "index"),
            "data_file": str(list_file),
            "index_operation": "new",
            "delimiter": "\t",
            "dist_type": "IP",
            "embedding_size": 512,
            "batch_size": 32,
            "return_k": SETTINGS["return_k"],
            "score_thres": SETTINGS["score_thres"],
        },
    }
