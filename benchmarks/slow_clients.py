"""Hostile connections for the soak and the test suite: idle sockets and slow-body sockets against a server.

``idle`` connections open and send nothing; ``slow`` ones send a request's headers and then drip its body a byte a
second; ``headers`` ones (slowloris) send a request line and then drip one endless header a byte a
second. With ``reconnect`` a connection the server closed is opened again at once, so the attack lasts as long as
the :class:`SlowClients` is open. ``answers`` counts what the server said to the slow ones (status line -> count);
``received`` holds each answer whole (headers and ``Content-Length`` body), however many pieces it arrived in.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter


class SlowClients:
    """``idle`` silent connections and ``slow`` ones dripping a body to ``host:port`` (loopback)."""

    def __init__(
        self,
        host: str,
        port: int,
        idle: int,
        slow: int,
        headers: int = 0,
        *,
        reconnect: bool = False,
        path: str = "/predict/index_search",
        body_bytes: int = 5000,
    ):
        self.addr = (host, port)
        self.reconnect = reconnect
        self.head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {body_bytes}\r\n\r\n{{"
        ).encode()
        self.line = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode()
        self.answers: Counter[str] = Counter()
        self.closed: Counter[str] = Counter()  # kind -> connections the server closed
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._partial: dict[int, bytes] = {}  # socket fd -> the start of an answer still arriving
        self.idle = [self._open("idle") for _ in range(idle)]
        self.slow = [self._open("slow") for _ in range(slow)]
        self.headers = [self._open("headers") for _ in range(headers)]
        self._thread = threading.Thread(target=self._drip, daemon=True)
        self._thread.start()

    def _open(self, kind: str) -> socket.socket:
        s = socket.create_connection(self.addr, timeout=60)
        if kind != "idle":
            s.sendall(self.head if kind == "slow" else self.line)
        s.setblocking(False)
        return s

    def _drip(self) -> None:
        while not self._stop.wait(1.0):
            for group, kind in ((self.slow, "slow"), (self.idle, "idle"), (self.headers, "headers")):
                for i, s in enumerate(group):
                    if s.fileno() == -1:
                        continue  # closed earlier and not reopened: counted once, when the server closed it
                    closed = False
                    try:
                        data = s.recv(65536)
                        closed = not data
                        if data:
                            self._collect(s, data)
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed = True
                    if not closed and kind != "idle":
                        try:
                            s.send(b" " if kind == "slow" else b"a")
                        except OSError:
                            closed = True
                    if closed:
                        partial = self._partial.pop(s.fileno(), b"")
                        if partial:  # what arrived of an answer before the server closed
                            self._record(partial)
                        s.close()
                        with self._lock:
                            self.closed[kind] += 1
                        if self.reconnect and not self._stop.is_set():
                            try:
                                group[i] = self._open(kind)
                            except OSError:
                                pass

    def _collect(self, s: socket.socket, data: bytes) -> None:
        """Add ``data`` to what ``s`` received; record each answer once whole (an answer can arrive in pieces)."""
        buf = self._partial.pop(s.fileno(), b"") + data
        while True:
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if not sep:
                break
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and value.strip().isdigit():
                    length = int(value.strip())
            if len(rest) < length:
                break
            self._record(head + sep + rest[:length])
            buf = rest[length:]
        if buf:
            self._partial[s.fileno()] = buf

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
        for s in self.idle + self.slow + self.headers:
            s.close()
