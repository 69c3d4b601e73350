"""oneDNN on official-format models only with a pass list verified on that model (each check in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shitu.model_spec import ModelSpec

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "official_format"
DET = "picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer"
REC = "general_PPLCNetV2_base_pretrained_v1.0_infer"

pytestmark = pytest.mark.skipif(
    not (OFFICIAL / "legacy" / REC).is_dir(), reason=f"official-format fixtures not found at {OFFICIAL}"
)


@pytest.fixture
def onednn_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHITU_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "onednn"


def test_real_official_model_runs_without_onednn_until_verified(onednn_home, photos):
    from shitu.params import merge
    from shitu.serving.engine.extraction import FeatureExtractor
    from shitu.serving.engine.predictor import Predictor

    spec = ModelSpec.from_dir(OFFICIAL / "legacy" / REC, "extractor")
    assert spec.onednn is None
    assert "oneDNN off" in Predictor(spec).description  # nothing verified yet

    out = subprocess.run(
        [sys.executable, "-m", "shitu.serving.engine.onednn", str(OFFICIAL / "legacy" / REC), "extractor"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "SHITU_HOME": str(onednn_home.parent)},
    )
    assert out.returncode == 0 and "oneDNN verified" in out.stdout, out.stdout + out.stderr
    (record_file,) = onednn_home.glob("*.json")
    record = json.loads(record_file.read_text())
    assert record["ok"] and record["speedup"] > 0 and record["kind"] == "extractor"

    on = FeatureExtractor(spec)
    assert "oneDNN on" in on.predictor.description
    from shitu.serving.engine.predictor import RuntimeOptions

    off = FeatureExtractor(spec, RuntimeOptions(enable_mkldnn=False))
    assert "oneDNN off" in off.predictor.description  # Global.enable_mkldnn false still wins
    imgs = list(photos.values())[:3]
    a, b = on.embed(imgs, merge()), off.embed(imgs, merge())
    assert np.all(np.sum(a * b, axis=1) >= 0.9999)


def test_real_pir_detector_default_passes_fail_then_short_list_verified(onednn_home):
    from shitu.serving.engine import onednn
    from shitu.serving.engine.predictor import Predictor

    spec = ModelSpec.from_dir(OFFICIAL / "pir" / DET, "detector")
    record = onednn.verify(spec)
    first, second = record["tried"]
    assert first["passes"] == onednn.default_passes() and not first["ok"]  # paddle's default list fails here ...
    assert "same answers" not in first["detail"], first
    assert "same answers" in second["detail"], second  # ... the short list gives the same answers
    # it is used only when it was also measured faster (MIN_SPEEDUP); the predictor follows the record
    assert record["ok"] == second["ok"]
    assert ("oneDNN on" if record["ok"] else "oneDNN off") in Predictor(spec).description


def test_real_explicit_onednn_setting_is_never_changed(onednn_home, models_dir):
    from shitu.serving.engine import onednn

    spec = ModelSpec.from_dir(models_dir / "rec")  # general-lite: onednn true with its own pass list
    assert onednn.resolve(spec) is spec
    out = subprocess.run(
        [sys.executable, "-m", "shitu", "plugins", "verify", "general-lite", "--onednn"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "general-lite detector: oneDNN on as the pack says" in out.stdout
    assert not onednn_home.exists()
