"""HTTP-level attacks of issue 27 on real ``hub serving`` over loopback: a foreign web page (real Chromium), forged
log lines, error envelopes of every API and of the HTTP servers themselves, ``100 Continue`` before a refused body.

Servers: the session's single-process ``served`` (Werkzeug, no token) and ``served_multi`` (gunicorn, 2 workers,
token) from conftest, so each check runs on both transports where they differ.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from tests.conftest import ADMIN_TOKEN, b64

HOSTILE_JSON_NUMBERS = [
    ('{"image": "x", "topk": NaN}', "NaN"),
    ('{"image": "x", "topk": Infinity}', "Infinity"),
    ('{"image": "x", "hammingRadius": -Infinity}', "Infinity"),
    ('{"image": "x", "topk": 1e400}', "beyond the range"),
    ('{"image": "x", "hammingRadius": 1e300}', "below 2**31"),
    ('{"image": "x", "detThreshold": ' + "9" * 4000 + "}", "more than 64 digits"),
    ('{"image": "x", "detThreshold": 0.' + "1" * 4000 + "}", "more than 64"),
    ('{"a": ' * 50_000 + "1" + "}" * 50_000, "nested too deeply"),
]


def _addr(server) -> tuple[str, int]:
    u = urlparse(server.url)
    return u.hostname, u.port


def _raw(server, request: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, return all that comes back until the server closes (or ``timeout``)."""
    with socket.create_connection(_addr(server), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return data


def _head_and_body(data: bytes) -> tuple[str, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), json.loads(body)


def _gallery_count(server, gallery: str) -> int:
    r = server.post("image_recognition", {"operation": "info", "gallery": gallery, "token": ADMIN_TOKEN})
    assert r.json()["status"] == "000", r.text
    return int(r.json()["results"]["count"])


def _gallery_names(server) -> set[str]:
    """The galleries on disk (the session's servers share this process's ``SHITU_HOME``)."""
    return {f"{p.parent.name}/{p.name}" for p in (Path(os.environ["SHITU_HOME"]) / "galleries").glob("*/*/")}


def _make_gallery(server, photos, n: int = 5) -> str:
    name = f"web-{uuid.uuid4().hex[:8]}"
    labels = list(photos)[:n]
    r = server.post(
        "image_recognition",
        {"operation": "add", "gallery": name, "labels": labels, "images": [b64(photos[k]) for k in labels]},
    )
    assert r.json()["status"] == "000", r.text
    return name


# -- 4. one error envelope -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("server_name", ["served", "served_multi"])
@pytest.mark.parametrize("body, needle", HOSTILE_JSON_NUMBERS)
def test_real_paddlex_hostile_numbers_and_deep_json_get_422_not_500(request, server_name, body, needle):
    server = request.getfixturevalue(server_name)
    r = requests.post(f"{server.url}/shitu-infer", data=body, headers={"Content-Type": "application/json"}, timeout=60)
    answer = r.json()
    assert r.status_code == 422 and answer["errorCode"] == 422 and needle in answer["errorMsg"], answer
    assert answer["logId"] == r.headers["X-Request-ID"]
    assert "Traceback" not in server.log.read_text(errors="replace")[-20000:]


@pytest.mark.parametrize(
    "body, needle",
    [
        (json.dumps({"key": [["image"]], "value": ["aGVsbG8="]}), "must be a string"),
        (json.dumps({"key": [{"a": 1}], "value": ["aGVsbG8="]}), "must be a string"),
        ('{"key": ' * 50_000 + "1" + "}" * 50_000, "nested too deeply"),
        ('{"key": ["image"], "value": [NaN]}', "NaN"),
    ],
)
def test_real_paddle_serving_bad_input_is_err_no_5000_with_request_id(served, body, needle):
    r = requests.post(f"{served.url}/recognition/prediction", data=body, timeout=60)  # no Content-Type, as PaddleClas
    answer = r.json()
    assert answer["err_no"] == 5000 and needle in answer["err_msg"], answer
    assert answer["request_id"] == r.headers["X-Request-ID"]


def test_real_predict_deep_json_is_400_without_a_traceback(served):
    deep = '{"a": ' * 50_000 + "1" + "}" * 50_000
    before = served.log.read_text(errors="replace").count("Traceback")
    r = requests.post(
        f"{served.url}/predict/image_recognition", data=deep, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert r.status_code == 400 and r.json()["status"] == "400" and "nested too deeply" in r.json()["msg"]
    assert r.json()["request_id"] == r.headers["X-Request-ID"]
    assert served.log.read_text(errors="replace").count("Traceback") == before


@pytest.mark.parametrize("server_name", ["served", "served_multi"])
def test_real_http_level_errors_are_json_envelopes_with_request_ids(request, server_name):
    server = request.getfixturevalue(server_name)
    host, port = _addr(server)
    cases = {
        414: f"GET /{'a' * 70_000} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode(),
        431: (
            f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\n" + "".join(f"X-H{i}: 1\r\n" for i in range(300)) + "\r\n"
        ).encode(),
        400: b"GARBAGE\r\n\r\n",
    }
    for code, raw in cases.items():
        head, body = _head_and_body(_raw(server, raw))
        assert head.startswith(f"HTTP/1.1 {code} "), (code, head)
        assert "content-type: application/json" in head.lower(), head
        assert body["status"] == str(code) and body["request_id"], body


@pytest.mark.parametrize("server_name", ["served", "served_multi"])
@pytest.mark.parametrize("path", ["/predict/image_recognition", "/shitu-index-add", "/recognition/prediction"])
def test_real_too_large_body_refused_before_100_continue_in_the_routes_format(request, server_name, path):
    """A 10 GB declared body: one 413 answer in the route's format, no ``100 Continue``, one ``Connection``."""
    server = request.getfixturevalue(server_name)
    host, port = _addr(server)
    raw = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 10000000000\r\nExpect: 100-continue\r\n"
        "X-Request-ID: big-body-1\r\n\r\n"
    ).encode()
    data = _raw(server, raw)
    assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    assert b"100 Continue" not in data
    head, body = _head_and_body(data)
    assert head.lower().count("connection:") == 1, head
    assert "X-Request-ID: big-body-1" in head
    if path.startswith("/shitu-"):
        assert body["errorCode"] == 413 and body["logId"] == "big-body-1"
    elif path == "/recognition/prediction":
        assert body["err_no"] == 5000 and body["request_id"] == "big-body-1"
    else:
        assert body["status"] == "413" and body["request_id"] == "big-body-1"
    assert "larger than the limit" in json.dumps(body)


def test_real_body_over_the_limit_without_expect_has_one_connection_header_and_an_id(served):
    host, port = _addr(served)
    raw = (
        (
            f"POST /predict/index_search HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {70 * 1024 * 1024}\r\n\r\n"
        ).encode()
        + b"{"
        + b" " * 65536
    )
    head, body = _head_and_body(_raw(served, raw))
    assert head.startswith("HTTP/1.1 413 ") and head.lower().count("connection:") == 1, head
    assert body["status"] == "413" and body["request_id"]


def test_real_gradio_routes_are_not_served(served):
    for path in ("/gradio/image_recognition", "/gradio/image_recognition/app"):
        r = requests.get(f"{served.url}{path}", timeout=30, allow_redirects=False)
        assert r.status_code == 404 and r.json()["status"] == "404", (path, r.status_code, r.text[:200])
    assert "Traceback" not in served.log.read_text(errors="replace")[-20000:]


# -- 3. logs -------------------------------------------------------------------------------------------------------


def test_real_encoded_newline_in_the_path_is_escaped_in_the_request_log(served):
    """The issue's curl: ``POST /predict/x%0Aforged:line``; no log line may start with ``forged``."""
    from shitu.serving.hub import request_log
    from shitu.serving.hub.request_log import REQUEST_LOG, SERVER_LOG

    marker = f"forged{uuid.uuid4().hex[:6]}"
    r = requests.post(
        f"{served.url}/predict/x%0A{marker}:line%E2%80%A8%1B[31m", json={}, timeout=30
    )  # newline, U+2028, ESC
    assert r.json()["status"] != "000"
    time.sleep(0.5)
    folder = request_log.log_dir()
    text = "".join((folder / name).read_text(errors="replace") for name in (REQUEST_LOG, SERVER_LOG))
    assert marker in text
    for line in text.splitlines():
        assert not line.startswith(marker), line
        assert "\x1b" not in line and "\u2028" not in line
    assert f"x\\n{marker}:line" in text


# -- 2. browsers ---------------------------------------------------------------------------------------------------


def test_real_foreign_host_header_is_refused_dns_rebinding(served, photos):
    gallery = _make_gallery(served, photos, 2)
    for path in ("/web/", "/metrics"):
        r = requests.get(f"{served.url}{path}", headers={"Host": "rebind.example:80"}, timeout=30)
        assert r.status_code == 403 and "host name" in r.json()["msg"], (path, r.status_code)
    r = requests.post(
        f"{served.url}/predict/image_recognition",
        json={"operation": "remove", "gallery": gallery, "ids": [1]},
        headers={"Host": "rebind.example"},
        timeout=30,
    )
    assert r.status_code == 403 and r.json()["request_id"] == r.headers["X-Request-ID"]
    assert _gallery_count(served, gallery) == 2
    assert requests.get(f"{served.url}/health", headers={"Host": "10.0.0.7:8866"}, timeout=30).status_code == 200


def test_real_text_plain_paddlex_writes_are_refused_even_without_origin(served, photos):
    gallery = _make_gallery(served, photos, 3)
    for content_type in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        r = requests.post(
            f"{served.url}/shitu-index-remove",
            data=json.dumps({"indexKey": gallery, "ids": [0]}),
            headers=headers,
            timeout=30,
        )
        assert r.status_code == 415 and r.json()["errorCode"] == 415, (content_type, r.text)
    assert _gallery_count(served, gallery) == 3


CSRF_PAGE = """<!doctype html><html><body><script>
const target = %(target)s, gallery = %(gallery)s, image = %(image)s;
const body = (o) => JSON.stringify(o);
async function send(path, payload, type) {
  const init = {method: "POST", mode: "no-cors", body: type === null ? new Blob([body(payload)]) : body(payload)};
  if (type) init.headers = {"Content-Type": type};
  try { await fetch(target + path, init); } catch (e) {}
}
async function sendCors(path, payload) {  // a JSON body: the browser must ask first (preflight)
  try {
    const r = await fetch(target + path, {method: "POST", headers: {"Content-Type": "application/json"}, body: body(payload)});
    return r.status;
  } catch (e) { return "blocked"; }
}
window.attack = async () => {
  const remove = {indexKey: gallery, ids: [0, 1, 2]};
  const build = {imageLabelPairs: [{image, label: "foreign"}]};
  const add = {operation: "add", gallery, images: [image], labels: ["foreign"]};
  const del = {operation: "remove", gallery, ids: [1, 2, 3]};
  for (const type of ["text/plain", null, "application/x-www-form-urlencoded"]) {
    await send("/shitu-index-remove", remove, type);
    await send("/shitu-index-build", build, type);
    await send("/shitu-index-add", {indexKey: gallery, imageLabelPairs: build.imageLabelPairs}, type);
    await send("/predict/image_recognition", add, type);
    await send("/predict/image_recognition", del, type);
    await send("/recognition/prediction", {key: ["image"], value: [image]}, type);
  }
  return [await sendCors("/shitu-index-remove", remove), await sendCors("/predict/image_recognition", del)];
};
</script></body></html>"""


class _Page(BaseHTTPRequestHandler):
    html = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.html)))
        self.end_headers()
        self.wfile.write(self.html)

    def log_message(self, *args):
        pass


@pytest.fixture
def chromium_browser():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Debian package 'chromium' is not installed (see tests/system-packages.txt)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package 'playwright' is not installed (pip install -e '.[dev]')")
    from tests.test_webpage import CHROMIUM_ARGS

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=exe, args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP rebind.test 127.0.0.1"]
        )
        yield browser
        browser.close()


def test_real_browser_page_on_another_origin_changes_nothing(served, photos, chromium_browser):
    """Headless Chromium loads a page from a second loopback port; it POSTs every write route of the server with
    the bodies a browser sends without asking (text/plain, a typeless Blob, a form type) and with JSON (preflight).
    Issue 27: such a page removed 3 of 5 items and built a gallery. Now the gallery and the gallery list are
    unchanged, and nothing of the server is readable from that page (no CORS)."""
    gallery = _make_gallery(served, photos, 5)
    before = _gallery_names(served)
    image = b64(photos[list(photos)[0]])
    page_html = CSRF_PAGE % {
        "target": json.dumps(served.url),
        "gallery": json.dumps(gallery),
        "image": json.dumps(image),
    }
    handler = type("Page", (_Page,), {"html": page_html.encode()})
    foreign = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    try:
        context = chromium_browser.new_context()
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{foreign.server_address[1]}/")
        cors = page.evaluate("window.attack()")
        context.close()
    finally:
        foreign.shutdown()
    assert cors == ["blocked", "blocked"]  # the preflight gets no CORS answer: the browser never sends them
    assert _gallery_count(served, gallery) == 5
    assert _gallery_names(served) == before


def test_real_browser_dns_rebinding_name_gets_nothing(served, photos, chromium_browser):
    """A name the attacker re-points at 127.0.0.1 (Chromium's host resolver maps ``rebind.test`` there): the page
    is then same-origin with the server, so only the ``Host`` check stands between it and the galleries."""
    gallery = _make_gallery(served, photos, 2)
    port = _addr(served)[1]
    context = chromium_browser.new_context()
    page = context.new_page()
    answer = page.goto(f"http://rebind.test:{port}/web/")
    assert answer.status == 403
    status = page.evaluate(
        """async (gallery) => (await fetch("/predict/image_recognition", {method: "POST",
             headers: {"Content-Type": "application/json"},
             body: JSON.stringify({operation: "remove", gallery, ids: [1, 2]})})).status""",
        gallery,
    )
    context.close()
    assert status == 403
    assert _gallery_count(served, gallery) == 2


def test_real_own_web_page_and_plain_clients_still_write(served, photos):
    """The server's own page (same origin) and clients that are not browsers (no Origin) keep working."""
    gallery = _make_gallery(served, photos, 2)
    host, port = _addr(served)
    r = requests.post(
        f"{served.url}/shitu-index-remove",
        json={"indexKey": gallery, "ids": [0]},
        headers={"Origin": f"http://{host}:{port}"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["result"]["imageCount"] == 1, r.text
    r = requests.post(
        f"{served.url}/shitu-index-remove",
        json={"indexKey": gallery, "ids": [1]},
        headers={"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["result"]["imageCount"] == 0, r.text
    r = requests.post(
        f"{served.url}/shitu-index-remove",
        json={"indexKey": gallery, "ids": [0]},
        headers={"Origin": f"http://{host}:{port + 1}"},
        timeout=30,
    )
    assert r.status_code == 403 and r.json()["errorCode"] == 403
    assert "Access-Control-Allow-Origin" not in r.headers


CORS_PAGE = """<!doctype html><html><body><script>
window.ask = async (target) => {
  const r = await fetch(target + "/predict/image_recognition", {method: "POST",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({operation: "info"})});
  return {status: r.status, body: await r.json(), rid: r.headers.get("X-Request-ID")};
};
</script></body></html>"""


def test_real_browser_cors_only_for_configured_origins_and_hosts(tmp_path, chromium_browser):
    """``Limits.allowed_origins`` lets a page on that origin call the API and read the answer (CORS preflight
    answered); ``Limits.allowed_hosts`` adds a host name. Another origin still gets nothing."""
    from shitu.serving.hub import control as hub_serving
    from tests.conftest import start_served

    handler = type("Page", (_Page,), {"html": CORS_PAGE.encode()})
    allowed, other = (ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2))
    for page_server in (allowed, other):
        threading.Thread(target=page_server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{allowed.server_address[1]}"
    limits = {"allowed_origins": [origin], "allowed_hosts": ["shitu.test"]}
    server = start_served(tmp_path, init_args={"params": {"Limits": limits}})
    try:
        context = chromium_browser.new_context()
        page = context.new_page()
        page.goto(f"{origin}/")
        answer = page.evaluate("(t) => window.ask(t)", server.url)
        assert answer["status"] == 200 and answer["body"]["status"] == "000" and answer["rid"], answer
        page.goto(f"http://127.0.0.1:{other.server_address[1]}/")
        blocked = page.evaluate("(t) => window.ask(t).then(() => 'read', () => 'blocked')", server.url)
        assert blocked == "blocked"
        context.close()
        port = _addr(server)[1]
        ok = requests.get(f"{server.url}/web/", headers={"Host": f"shitu.test:{port}"}, timeout=30)
        assert ok.status_code == 200
        refused = requests.get(f"{server.url}/web/", headers={"Host": "other.test"}, timeout=30)
        assert refused.status_code == 403
    finally:
        hub_serving.stop(server.proc)
        allowed.shutdown()
        other.shutdown()


@pytest.mark.parametrize("server_name", ["served", "served_multi"])
def test_real_body_within_the_limit_with_expect_gets_one_100_continue_then_its_answer(request, server_name):
    """curl sends ``Expect: 100-continue`` with large uploads: a body within the limit is still taken."""
    server = request.getfixturevalue(server_name)
    host, port = _addr(server)
    body = json.dumps({"operation": "info", "token": ADMIN_TOKEN}).encode()
    head = (
        f"POST /predict/index_search HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(head)
        first = s.recv(4096)
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), first
        s.sendall(body)
        data = first[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"100 Continue") == 0 and data.startswith(b"HTTP/1.1 200"), data[:300]
    assert json.loads(data.partition(b"\r\n\r\n")[2])["status"] == "000"
