"""Attacks on a real served instance: slow and idle sockets, pixel bombs, unbounded work, hostile JSON.

Every test runs against real ``hub serving`` over loopback (single process and gunicorn), with bounded loops:
``/health`` must keep answering within 2 s for every probe while the attack runs, and the attacked requests get
JSON envelopes.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlparse

import pytest
import requests

from tests.conftest import ADMIN_TOKEN


def _addr(served) -> tuple[str, int]:
    u = urlparse(served.url)
    return u.hostname, u.port


class SocketAttack:
    """``idle`` connections that send nothing and ``slow`` ones that drip a request body a byte a second."""

    def __init__(self, served, idle: int, slow: int, body_bytes: int = 5000):
        self.addr = _addr(served)
        self.stop = threading.Event()
        self.idle = [socket.create_connection(self.addr, timeout=60) for _ in range(idle)]
        head = (f"POST /predict/index_search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {body_bytes}\r\n\r\n{{").encode()
        self.slow = []
        for _ in range(slow):
            s = socket.create_connection(self.addr, timeout=60)
            s.sendall(head)
            self.slow.append(s)
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self) -> None:
        while not self.stop.wait(1.0):
            for s in self.slow:
                try:
                    s.send(b" ")
                except OSError:
                    pass

    def answers(self, deadline_s: float = 90.0) -> list[bytes]:
        """What each slow socket received before the server closed it."""
        out = []
        end = time.monotonic() + deadline_s
        for s in self.slow:
            data = b""
            s.settimeout(max(1.0, end - time.monotonic()))
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            out.append(data)
        return out

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for s in self.idle + self.slow:
            s.close()


def _probe_health(served, probes: int = 10) -> None:
    for _ in range(probes):
        r = requests.get(f"{served.url}/health", timeout=2)
        assert r.status_code == 200 and r.json()["status"] == "000"
        time.sleep(0.3)


def _slow_and_idle_sockets_cost_bounded(served) -> None:
    attack = SocketAttack(served, idle=20, slow=20)
    try:
        time.sleep(1.0)
        _probe_health(served)
        r = served.post("index_search", {"operation": "info"}, timeout=30)
        assert r.json()["status"] == "000", r.text
        answers = attack.answers()
    finally:
        attack.close()
    for data in answers:  # each slow body is refused with an envelope once its deadline passed
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        body = json.loads(data.partition(b"\r\n\r\n")[2])
        assert body["status"] == "408" and "did not arrive within" in body["msg"]
    _probe_health(served, probes=2)


def test_real_single_process_idle_and_slow_sockets_do_not_block(served):
    _slow_and_idle_sockets_cost_bounded(served)


def test_real_gunicorn_idle_and_slow_sockets_do_not_block(served_multi):
    _slow_and_idle_sockets_cost_bounded(served_multi)
