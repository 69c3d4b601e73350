"""The client-only install: ``pip install shitu-hub`` (no paddle, OpenCV or faiss) runs the SDK and every
``shitu ... --server URL`` command against a real ``hub serving``; engine commands say what to install.

A real virtualenv is created with ``python -m venv``; the project goes in with ``pip install --no-deps -e`` plus
exactly the client dependencies ``setup.py`` declares (``CLIENT``), from the package index pip is configured with.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from .conftest import b64

REPO = Path(__file__).resolve().parents[1]


def client_requirements() -> list[str]:
    """The ``CLIENT = [...]`` list of setup.py (what ``pip install shitu-hub`` pulls)."""
    match = re.search(r"^CLIENT = (\[.*?\])$", (REPO / "setup.py").read_text(), re.S | re.M)
    assert match, "setup.py has no CLIENT list"
    return ast.literal_eval(match.group(1))


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    deps = subprocess.run(pip + client_requirements(), capture_output=True, text=True, timeout=900)
    if deps.returncode != 0:
        pytest.skip(f"cannot install the client dependencies from the package index: {deps.stderr[-500:]}")
    proj = subprocess.run(pip + ["--no-deps", "-e", str(REPO)], capture_output=True, text=True, timeout=900)
    assert proj.returncode == 0, proj.stderr[-2000:]
    return venv


def run(venv: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, timeout=600, env=env, cwd=cwd
    )


def test_client_venv_has_no_serving_stack(client_venv):
    for module in ("paddle", "cv2", "faiss", "paddlehub"):
        proc = run(client_venv, "python", "-c", f"import {module}")
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, module
    proc = run(client_venv, "python", "-c", "from shitu.serving.client import ShituClient; print('ok')")
    assert proc.stdout.strip() == "ok", proc.stderr


def test_client_install_recognizes_against_a_real_server(client_venv, served, photos, tmp_path):
    ok = served.post(
        "image_recognition",
        {"operation": "add", "gallery": "client-only", "images": [b64(photos["coffee"])], "labels": ["espresso"]},
    ).json()
    assert ok["status"] == "000", ok
    photo = tmp_path / "coffee.jpg"
    cv2.imwrite(str(photo), photos["coffee"])

    assert run(client_venv, "shitu", "--help").returncode == 0  # was: ModuleNotFoundError: cv2
    proc = run(
        client_venv,
        "shitu",
        "recognize",
        str(photo),
        "--server",
        served.url,
        "--gallery",
        "client-only",
        "--draw",
        str(tmp_path / "drawn"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "espresso" in proc.stdout
    assert (tmp_path / "drawn" / "coffee.jpg").stat().st_size > 1000  # drawn with PIL (no OpenCV here)
    proc = run(client_venv, "shitu", "gallery", "info", "client-only", "--server", served.url, "--json")
    assert proc.returncode == 0 and '"count": 1' in proc.stdout, proc.stderr


def test_client_install_explains_what_engine_commands_need(client_venv, tmp_path):
    photo = tmp_path / "x.jpg"
    photo.write_bytes(b"not used")
    proc = run(client_venv, "shitu", "recognize", str(photo))
    assert proc.returncode == 3
    assert 'pip install "shitu-hub[serving]"' in proc.stderr and "Traceback" not in proc.stderr


def test_building_the_package_prints_no_setuptools_data_warnings(tmp_path):
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "as data is deprecated" not in proc.stderr  # was: one warning per pack data folder
    assert (
        tmp_path / "lib" / "shitu" / "plugins" / "packs" / "general_lite" / "gallery" / "demo_vectors.json"
    ).is_file()
    shutil.rmtree(REPO / "build", ignore_errors=True)
