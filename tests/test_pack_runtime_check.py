"""A pack can never crash the process: oneDNN only with a verified pass list, checked in a child process.

Real parts: the embedded general-lite models, real paddle.inference in real child processes. A pack written from
the README template with ``onednn: true`` and no pass list used to install and then segfault paddle on the first
request (``FusedConv2dOp``); a crashing pass list is now refused at install.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import yaml

from shitu.plugins import registry, store
from shitu.plugins.errors import PackError

from .lite_packs import CRASHING_PASSES, lite_pack


def recognize_in_child(scenario: str) -> subprocess.CompletedProcess:
    """Load the engine for ``scenario`` and recognise a photo in a child process (a crash must not kill pytest)."""
    code = textwrap.dedent(f"""
        from shitu.serving.engine.engine import load_engine
        from shitu.serving.cli.demo import gallery_photos
        engine = load_engine({scenario!r})
        print(engine.detector.predictor.description)
        print(len(engine.detect([gallery_photos()["cat"]])[0].xyxy))
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


def test_template_pack_with_onednn_and_no_pass_list_does_not_crash_real(tmp_path):
    registry.install(str(lite_pack(tmp_path / "src", "nopasses", det_passes=None)), progress=False)
    record = store.read_record(store.version_dir("nopasses", "1.0.0"))
    assert record["runtime"]["detector"]["status"] == "ok"
    assert record["runtime"]["detector"]["onednn"] is False  # no verified list: oneDNN stays off
    proc = recognize_in_child("nopasses")
    assert proc.returncode == 0, proc.stderr[-2000:]  # was -11 (SIGSEGV in FusedConv2dOp)
    assert "oneDNN off" in proc.stdout


def test_pass_list_that_crashes_is_refused_at_install_real(tmp_path):
    with pytest.raises(PackError) as err:
        registry.install(str(lite_pack(tmp_path / "src", "crashing", det_passes=CRASHING_PASSES)), progress=False)
    msg = str(err.value)
    assert "models.detector" in msg and "SIGSEGV" in msg and "onednn_passes" in msg
    assert "crashing" not in store.installed_names()  # nothing half-installed


def test_store_pack_enables_onednn_only_as_recorded_real(tmp_path):
    registry.install(str(lite_pack(tmp_path / "src", "verified")), progress=False)
    pack = registry.get_pack("verified")
    assert pack.record["runtime"]["detector"] == {**pack.record["runtime"]["detector"], "status": "ok", "onednn": True}
    assert pack.detector_spec().onednn and pack.extractor_spec().onednn
    # A record without the run (an older install, or one edited by hand): oneDNN off, never guessed.
    folder = store.version_dir("verified", "1.0.0")
    record = json.loads((folder / "install.json").read_text())
    del record["runtime"]
    (folder / "install.json").write_text(json.dumps(record))
    assert not registry.get_pack("verified").detector_spec().onednn
    # `shitu plugins verify` runs the models again and records the result.
    from shitu.serving.cli import main

    assert main(["plugins", "verify", "verified"]) == 0
    assert registry.get_pack("verified").detector_spec().onednn


def test_verify_reports_a_crashing_model_real(tmp_path, capsys):
    registry.install(str(lite_pack(tmp_path / "src", "laterbad")), progress=False)
    # The installed manifest's pass list changed afterwards (by hand): verify runs it and reports the crash.
    folder = store.version_dir("laterbad", "1.0.0")
    data = yaml.safe_load((folder / "pack.yaml").read_text())
    data["models"]["detector"]["onednn_passes"] = CRASHING_PASSES
    (folder / "pack.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    from shitu.serving.cli import main

    assert main(["plugins", "verify", "laterbad"]) == 1
    out = capsys.readouterr().out
    assert "CRASHED" in out and "SIGSEGV" in out
    assert not registry.find_pack("laterbad").detector_spec().onednn  # the crashing list is never used
