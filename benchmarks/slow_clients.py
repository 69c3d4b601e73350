"""Hostile connections for the soak and the test suite: idle sockets and slow-body sockets against a server.

``idle`` connections open and send nothing; ``slow`` ones send a request's headers and then drip its body a byte a
second. With ``reconnect`` a connection the server closed is opened again at once, so the attack lasts as long as
the :class:`SlowClients` is open. ``answers`` counts what the server said to the slow ones (status line -> count).
"""
from __future__ import annotations

import socket
import threading
from collections import Counter


class SlowClients:
    """``idle`` silent connections and ``slow`` ones dripping a body to ``host:port`` (loopback)."""

    def __init__(self, host: str, port: int, idle: int, slow: int, *, reconnect: bool = False,
                 path: str = "/predict/index_search", body_bytes: int = 5000):
        self.addr = (host, port)
        self.reconnect = reconnect
        self.head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {body_bytes}\r\n\r\n{{").encode()
        self.answers: Counter[str] = Counter()
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.idle = [self._open(False) for _ in range(idle)]
        self.slow = [self._open(True) for _ in range(slow)]
        self._thread = threading.Thread(target=self._drip, daemon=True)
        self._thread.start()

    def _open(self, slow: bool) -> socket.socket:
        s = socket.create_connection(self.addr, timeout=60)
        if slow:
            s.sendall(self.head)
        s.setblocking(False)
        return s

    def _drip(self) -> None:
        while not self._stop.wait(1.0):
            for group, slow in ((self.slow, True), (self.idle, False)):
                for i, s in enumerate(group):
                    closed = False
                    try:
                        data = s.recv(65536)
                        closed = not data
                        if data:
                            self._record(data)
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed = True
                    if not closed and slow:
                        try:
                            s.send(b" ")
                        except OSError:
                            closed = True
                    if closed:
                        s.close()
                        if self.reconnect and not self._stop.is_set():
                            try:
                                group[i] = self._open(slow)
                            except OSError:
                                pass

    def _record(self, data: bytes) -> None:
        with self._lock:
            self.received.append(data)
            self.answers[data.split(b"\r\n", 1)[0].decode("latin-1")] += 1

    def wait_answers(self, count: int, timeout: float) -> list[bytes]:
        """Wait until ``count`` answers arrived (or ``timeout`` s passed); return them."""
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if len(self.received) >= count:
                    break
            time.sleep(0.2)
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.idle + self.slow:
            s.close()
