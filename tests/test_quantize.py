"""``shitu plugins quantize``: int8 versions of a pack, calibrated on its pipeline, compared, installed, rolled back.

Real parts: the embedded general-lite models quantized by onnxruntime, the real pipeline on scikit photos, the real
installer (hashes, a run of each model in a child process); official-format PP-ShiTu models (seeded weights) for
a pack with paddle-only models. Each test has its own SHITU_HOME.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from shitu.errors import InvalidArgument

OFFICIAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "official_format" / "legacy"
#: Bounds every int8 version passes: these tests check the mechanism; the real bounds are measured in benchmarks.
LAX = {"feature_cos_median": 0.5}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHITU_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def calibration(tmp_path, photos, queries):
    """Twelve photographs and crops of them (the demo's gallery and query photos, written as files)."""
    folder = tmp_path / "calibration"
    folder.mkdir()
    images = [*photos.values(), *queries.values()]
    for i, img in enumerate(images[:12]):
        cv2.imwrite(str(folder / f"{i:02d}.jpg"), img)
    return folder


def test_real_quantize_installs_an_int8_version_that_serves_and_rolls_back(home, calibration, photos):
    from shitu.plugins import registry
    from shitu.serving.engine import load_engine
    from shitu.serving.quantize.int8 import INT8_FILE
    from shitu.serving.quantize.pack import quantize_pack

    report = quantize_pack("general-lite", calibration, bounds=LAX)
    assert report.version == "1.3.0+int8.1" and report.models == ["detector", "recognizer"]
    a = report.agreement
    held_out = len(sorted(calibration.iterdir())[2::3])  # every third image, never calibrated on
    assert a.images == held_out and a.crops >= held_out and 0.5 < a.feature_cos_median <= 1.0 and a.ms_int8 > 0
    pack = registry.get_pack("general-lite")
    assert pack.version == "1.3.0+int8.1" and pack.embedding_space is None  # keeps the fp32 version's galleries
    engine = load_engine("general-lite")
    try:
        assert INT8_FILE in engine.detector.predictor.description
        assert INT8_FILE in engine.extractor.predictor.description
        found = engine.recognize([photos["cat"]])[0]
        assert found and found[0].label == "cat"  # the demo gallery (fp32 vectors) answers int8 queries
    finally:
        engine.close()
    assert registry.rollback("general-lite") == "1.3.0"
    assert registry.get_pack("general-lite").version == "1.3.0"


def test_real_quantize_refuses_a_version_below_its_bounds_and_installs_nothing(home, calibration):
    from shitu.plugins import store
    from shitu.serving.quantize.pack import quantize_pack

    report = quantize_pack("general-lite", calibration, models=["recognizer"], bounds={"feature_cos_median": 1.01})
    assert report.version is None and report.refused and report.refused[0].startswith("feature_cos_median ")
    assert not [v for v in store.installed_versions("general-lite") if "int8" in v]


def test_quantize_needs_enough_calibration_images(home, tmp_path):
    from shitu.serving.quantize.pack import MIN_IMAGES, quantize_pack

    folder = tmp_path / "two"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((64, 64, 3), 40 * i, np.uint8))
    with pytest.raises(InvalidArgument, match=f"2 image.*at least {MIN_IMAGES}"):
        quantize_pack("general-lite", folder)


def test_real_quantize_cli_dry_run_prints_the_agreement_and_installs_nothing(home, calibration, capsys):
    from shitu.plugins import store
    from shitu.serving.cli import main

    code = main(["plugins", "quantize", "general-lite", "--images", str(calibration), "--dry-run", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == (1 if report["refused"] else 0)
    assert report["version"] is None and set(report["agreement"]) >= {
        "feature_cos_median",
        "label_agreement",
        "boxes_matched",
        "speedup",
    }
    assert not store.installed_versions("general-lite")


def _tar(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w") as tar:
        tar.add(folder, arcname=folder.name)
    return out


def _pir_pack(folder: Path) -> Path:
    """The `general` pack's manifest on the PIR export (``inference.json``): a pack folder holding the models."""
    import hashlib
    import shutil

    import yaml

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "plugins/packs/general/pack.yaml").read_text())
    data["name"] = "general-pir"
    for role, stem in (("detector", DET_STEM), ("recognizer", REC_STEM)):
        model, src = data["models"][role], OFFICIAL.parent / "pir" / f"{stem}_infer"
        shutil.copytree(src, folder / model["path"])
        model.pop("archive")
        model["model_file"] = "inference.json"
        model["files"] = [
            {"path": f.name, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()} for f in sorted(src.iterdir())
        ]
    (folder / "pack.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder


DET_STEM, REC_STEM = "picodet_PPLCNet_x2_5_mainbody_lite_v1.0", "general_PPLCNetV2_base_pretrained_v1.0"


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="needs ../shared/official_format")
@pytest.mark.parametrize("export", ["legacy", "pir"])
def test_real_quantize_an_official_format_pack(home, calibration, tmp_path, export):
    """PP-ShiTuV2's layout (paddle-only, no ONNX file), legacy and PIR exports: the recogniser goes through
    paddle2onnx and is quantized; paddle2onnx 2.1 cannot convert the PicoDet mainbody graph, so the detector stays
    fp32 and the report says why."""
    from shitu.plugins import registry
    from shitu.serving.quantize.pack import quantize_pack

    if export == "pir":
        name = "general-pir"
        registry.install(str(_pir_pack(tmp_path / "pack")), trust=True, progress=False)
    else:
        name = "general"
        tars = [_tar(OFFICIAL / f"{stem}_infer", tmp_path / f"{stem}_infer.tar") for stem in (DET_STEM, REC_STEM)]
        registry.install(name, from_files=[str(t) for t in tars], trust=True, progress=False)
    report = quantize_pack(name, calibration, bounds=LAX)
    assert report.models == ["recognizer"] and report.version == "1.0.0+int8.1"
    assert "paddle2onnx cannot convert" in report.skipped["detector"]
    assert report.agreement.boxes_matched == 1.0  # the same fp32 detector on both sides
    assert registry.get_pack(name).version == "1.0.0+int8.1"
