"""HTTP-level attacks of issue 27 against a running ``hub serving`` on loopback, each bounded (one request, 10 s).

    python benchmarks/attacks/http_level.py http://127.0.0.1:8866 [--gallery NAME]

Prints one line per attack: what was sent, what came back, and whether the server held (``ok``) or not (``HOLE``).
Exit status 1 when any hole is found. Only loopback addresses are accepted. With ``--gallery`` the write attacks
target that gallery (its item count must not change); without, they target a gallery name that does not exist.
The same attacks, with a real browser, are tests/test_hostile_http.py.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
from urllib.parse import urlparse

TIMEOUT_S = 10.0


def _raw(host: str, port: int, data: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as s:
        s.sendall(data)
        out = b""
        try:
            while len(out) < 1 << 20 and (chunk := s.recv(65536)):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def _request(host: str, port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {headers.pop('Host', f'{host}:{port}')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return _raw(host, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def _status(answer: bytes) -> int:
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def _json(answer: bytes) -> dict:
    try:
        return json.loads(answer.partition(b"\r\n\r\n")[2])
    except ValueError:
        return {}


def attacks(host: str, port: int, gallery: str) -> list[tuple[str, bool, str]]:
    """(attack, held, what came back) for each attack."""
    out: list[tuple[str, bool, str]] = []
    remove = json.dumps({"indexKey": gallery, "ids": [0, 1, 2]}).encode()
    own, foreign = f"http://{host}:{port}", f"http://{host}:{port + 1}"

    a = _request(host, port, "POST", "/shitu-index-remove", {"Content-Type": "text/plain"}, remove)
    out.append(("text/plain PaddleX remove", _status(a) == 415, a[:12].decode("latin-1")))
    a = _request(
        host, port, "POST", "/shitu-index-remove", {"Content-Type": "application/json", "Origin": foreign}, remove
    )
    out.append(("foreign Origin PaddleX remove", _status(a) == 403, a[:12].decode("latin-1")))
    a = _request(host, port, "POST", "/shitu-index-remove", {"Content-Type": "application/json", "Origin": own}, b"{}")
    out.append(("own Origin still served", _status(a) in (200, 422), a[:12].decode("latin-1")))
    a = _request(host, port, "GET", "/web/", {"Host": "rebind.example"})
    out.append(("DNS-rebinding Host", _status(a) == 403, a[:12].decode("latin-1")))
    a = _request(
        host,
        port,
        "OPTIONS",
        "/predict/image_recognition",
        {"Origin": foreign, "Access-Control-Request-Method": "POST"},
    )
    out.append(
        ("no CORS for foreign origins", b"access-control-allow-origin" not in a.lower(), a[:12].decode("latin-1"))
    )
    a = _request(host, port, "POST", "/predict/x%0Aforged:line", {"Content-Type": "application/json"}, b"{}")
    out.append(("%0A in the path (check the request log)", _status(a) in (200, 404), a[:12].decode("latin-1")))
    big = (
        f"POST /predict/image_recognition HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        "Content-Length: 10000000000\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    a = _raw(host, port, big)
    out.append(
        (
            "10 GB body, Expect: 100-continue",
            a.startswith(b"HTTP/1.1 413") and b"100 Continue" not in a,
            a[:12].decode("latin-1"),
        )
    )
    a = _raw(host, port, f"GET /{'a' * 70000} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    out.append(("70 kB request line", _status(a) == 414 and "status" in _json(a), a[:12].decode("latin-1")))
    many = "".join(f"X-H{i}: 1\r\n" for i in range(300))
    a = _raw(host, port, f"GET /health HTTP/1.1\r\nHost: {host}\r\n{many}\r\n".encode())
    out.append(("300 headers", _status(a) == 431 and "status" in _json(a), a[:12].decode("latin-1")))
    for body in (
        '{"image": "x", "topk": NaN}',
        '{"image": "x", "topk": 1e400}',
        '{"image": "x", "detThreshold": ' + "9" * 4000 + "}",
        '{"a":' * 50000 + "1" + "}" * 50000,
    ):
        a = _request(host, port, "POST", "/shitu-infer", {"Content-Type": "application/json"}, body.encode())
        out.append(
            (
                f"PaddleX {body[:28]}...",
                _status(a) == 422 and _json(a).get("errorCode") == 422,
                a[:12].decode("latin-1"),
            )
        )
    a = _request(host, port, "POST", "/recognition/prediction", {}, b'{"key": [["image"]], "value": ["x"]}')
    out.append(("Paddle Serving list as a key", _json(a).get("err_no") == 5000, str(_json(a).get("err_no"))))
    a = _request(host, port, "GET", "/gradio/image_recognition", {})
    out.append(("/gradio/<module>", _status(a) == 404, a[:12].decode("latin-1")))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--gallery", default="attack-no-such-gallery")
    args = parser.parse_args(argv)
    u = urlparse(args.url)
    host = u.hostname or ""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        parser.error("only loopback servers are attacked")
    results = attacks(host, u.port or 80, args.gallery)
    for name, held, got in results:
        print(f"{'ok  ' if held else 'HOLE'} {name:45s} {got}")
    return 0 if all(held for _, held, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
