"""A real Milvus API on loopback for the tests: milvus-lite in server mode, or a full Milvus server.

- ``SHITU_TEST_MILVUS_URI=milvus://host:port`` (a full Milvus standalone or cluster; credentials as for the
  product, ``SHITU_MILVUS_TOKEN``): the tests use it, each in its own fresh collections, and skip only what needs
  to restart the server.
- Otherwise ``python -m milvus_lite server`` is started on a free loopback port with its own data folder. The
  server needs pymilvus 3 / protobuf >= 5 while paddlehub pins protobuf 3.20.3, so its Python packages live
  apart, in ``.venv/milvus-server`` (``make milvus-lite``; ``SHITU_MILVUS_LITE_PATH`` overrides the folder) and
  reach the server through ``PYTHONPATH``. The client side (``pymilvus`` 2.5, speaking the same gRPC API) is in the
  venv. Missing, the tests skip saying so.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LITE_PATH = Path(os.environ.get("SHITU_MILVUS_LITE_PATH") or REPO / ".venv" / "milvus-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MilvusServer:
    """One Milvus server: ``uri(name)`` gives a fresh gallery URI on it; ``kill`` / ``start`` for milvus-lite."""

    def __init__(self, host: str, port: int, data_dir: Path | None = None):
        self.host, self.port, self.data_dir = host, port, data_dir
        self.proc: subprocess.Popen | None = None
        self.log = None

    @property
    def external(self) -> bool:
        return self.data_dir is None

    def uri(self, name: str = "g") -> str:
        return f"milvus://{self.host}:{self.port}/t_{name}_{secrets.token_hex(4)}"

    def start(self, timeout: float = 120.0) -> None:
        assert self.data_dir is not None
        env = {**os.environ, "PYTHONPATH": str(LITE_PATH)}
        self.log = open(self.data_dir.parent / "milvus-lite.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "milvus_lite",
                "server",
                "--data-dir",
                str(self.data_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"milvus-lite server did not listen on port {self.port} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL the server (a crash, not a clean stop)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None
        if self.log:
            self.log.close()


def milvus_server(tmp_dir: Path):
    """Generator for a fixture: the server of ``SHITU_TEST_MILVUS_URI`` or a fresh milvus-lite one."""
    pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install -e '.[dev]')")
    external = os.environ.get("SHITU_TEST_MILVUS_URI")
    if external:
        from shitu.serving.gallery.milvus import parse_uri

        target = parse_uri(external.rstrip("/") + "/x")
        yield MilvusServer(target.host, target.port)
        return
    if not (LITE_PATH / "pymilvus").is_dir():
        pytest.skip(f"the milvus-lite server environment {LITE_PATH} is missing: run `make milvus-lite`")
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install -e '.[dev]')")
    server = MilvusServer("127.0.0.1", free_port(), tmp_dir / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()
