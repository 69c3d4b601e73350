"""Debian's nginx, run by a test (or a benchmark) on loopback with the shipped deploy/nginx/shitu-hub.conf.

The shipped file is used as it is, except its upstream ``server`` lines (pointed at the given instances) and its
``listen`` port (a free loopback port). nginx runs in the foreground (``daemon off``) with a temporary prefix.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SITE_CONF = REPO / "deploy" / "nginx" / "shitu-hub.conf"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def render_site(upstreams: list[str], port: int) -> str:
    """The shipped site config with ``upstreams`` (host:port) and ``listen 127.0.0.1:port``."""
    text = SITE_CONF.read_text()
    servers = "".join(f"    server {u} max_fails=2 fail_timeout=10s;\n" for u in upstreams)
    text, n = re.subn(r"(?m)^    server \S+:\d+ [^;]*;\n(?:    server \S+:\d+ [^;]*;\n)*", servers, text, count=1)
    assert n == 1, "deploy/nginx/shitu-hub.conf: no upstream server lines found"
    text, n = re.subn(r"(?m)^    listen 80;", f"    listen 127.0.0.1:{port};", text)
    assert n == 1, "deploy/nginx/shitu-hub.conf: no 'listen 80;' line found"
    return text


class Nginx:
    """``nginx -p prefix -c nginx.conf -g 'daemon off;'`` in front of ``upstreams``."""

    def __init__(self, prefix: Path, upstreams: list[str], port: int):
        self.prefix, self.port = prefix, port
        self.url = f"http://127.0.0.1:{port}"
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        (prefix / "shitu-hub.conf").write_text(render_site(upstreams, port))
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers read the test's private temp folders
        (prefix / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log warn;\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{\n  access_log {prefix}/logs/access.log;\n"
            f"  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n"
            f"  fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n"
            f"  scgi_temp_path {prefix}/scgi;\n  include {prefix}/shitu-hub.conf;\n}}\n"
        )
        self.proc: subprocess.Popen | None = None

    def check(self) -> str:
        """``nginx -t`` on the rendered configuration; returns its output (raises if invalid)."""
        out = subprocess.run(
            [nginx_binary() or "nginx", "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"), "-t"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if out.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{out.stderr}")
        return out.stderr

    def start(self, timeout: float = 30.0) -> None:
        self.check()
        self.proc = subprocess.Popen(
            [
                nginx_binary() or "nginx",
                "-p",
                str(self.prefix),
                "-c",
                str(self.prefix / "nginx.conf"),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.prefix / "logs" / "stderr", "ab"),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.prefix / 'logs' / 'error.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("nginx did not listen in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self.proc = None
