"""The request log's pieces in isolation: a rotating log shared by several real processes, message cuts, ids.
(The served behaviour is tested against ``hub serving`` in test_observability.py.)"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from shitu.serving.hub.request_log import (
    MAX_MESSAGE_CHARS,
    REQUEST_ID,
    LockedRotatingFileHandler,
    RequestContextFilter,
    new_request_id,
)

WRITER = r"""
import logging, sys
from shitu.serving.hub.request_log import LockedRotatingFileHandler
h = LockedRotatingFileHandler(sys.argv[1], 20000, 3)
h.setFormatter(logging.Formatter("%(message)s"))
log = logging.getLogger("w"); log.addHandler(h); log.setLevel(logging.INFO)
for i in range(int(sys.argv[3])):
    log.info('{"writer": %s, "i": %d, "pad": "%s"}' % (sys.argv[2], i, "x" * 150))
"""


def test_rotating_log_shared_by_processes_stays_bounded_and_whole(tmp_path):
    log = tmp_path / "shared.log"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(w), "600"]) for w in range(3)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    files = sorted(f for f in tmp_path.iterdir() if not f.name.endswith(".lock"))
    assert {f.name for f in files} == {"shared.log", "shared.log.1", "shared.log.2", "shared.log.3"}
    seen = []
    for f in files:
        assert f.stat().st_size <= 20000 + 300, (f.name, f.stat().st_size)
        for line in f.read_text().splitlines():
            rec = json.loads(line)  # whole lines only: no two processes' writes interleaved
            seen.append((rec["writer"], rec["i"]))
    assert len(seen) == len(set(seen))  # nothing written twice by a rotation race
    assert len(seen) >= 3 * 20000 // 200  # the three rotated files are full: nothing dropped but the oldest
    assert any(i == 599 for _w, i in seen)  # the last writer's final line is there


def test_long_messages_and_tracebacks_are_cut_and_carry_the_request_id(tmp_path):
    handler = LockedRotatingFileHandler(tmp_path / "x.log", 1 << 20, 1)
    handler.setFormatter(logging.Formatter("%(request_id)s %(message)s"))
    handler.addFilter(RequestContextFilter())
    log = logging.getLogger("shitu.test_request_log")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    token = REQUEST_ID.set("rid-1")
    try:
        log.error("invalid gallery name %r", "g" * 8_000_000)
        try:
            raise ValueError("v" * 1_000_000)
        except ValueError:
            log.exception("failed")
    finally:
        REQUEST_ID.reset(token)
        log.removeHandler(handler)
        handler.close()
    text = (tmp_path / "x.log").read_text()
    assert len(text) < 3 * MAX_MESSAGE_CHARS + 500
    assert text.startswith("rid-1 invalid gallery name 'ggg") and "characters cut]" in text


def test_request_ids_are_the_clients_when_acceptable():
    assert new_request_id("abc-123.x:y_z") == "abc-123.x:y_z"
    for bad in ("", "a b", "a\nb", "x" * 129, "é", None):
        rid = new_request_id(bad)
        assert len(rid) == 32 and int(rid, 16) >= 0
    assert new_request_id() != new_request_id()


def test_text_request_lines_quote_values_with_spaces(tmp_path, monkeypatch):
    from shitu.serving.hub import request_log

    monkeypatch.setenv("SHITU_LOG_DIR", str(tmp_path))
    monkeypatch.setenv("SHITU_LOG_FORMAT", "text")
    monkeypatch.setattr(request_log, "_configured", set())
    saved = {n: list(logging.getLogger(n).handlers) for n in ("shitu", "PaddleHub", "shitu.requests")}
    try:
        request_log.configure_logs(None, 4096, 1)
        request_log.log_request(request_id="r1", status="101", error="bad thing = here", images=None)
        line = Path(tmp_path / "shitu-requests.log").read_text().strip()
    finally:
        for name, handlers in saved.items():
            for h in logging.getLogger(name).handlers:
                if h not in handlers:
                    h.close()
            logging.getLogger(name).handlers = handlers
    assert "request_id=r1 status=101" in line and 'error="bad thing = here"' in line and "images=-" in line


HOSTILE = "/predict/x\nforged:line\r\x1b[31m\u2028\u202e\x85\x7f"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_client_strings_never_put_raw_control_characters_in_any_log(tmp_path, monkeypatch, fmt):
    """Issue 27: an encoded newline in a path forged a request-log line. Every format, both logs, a traceback."""
    from shitu.serving.hub import request_log

    monkeypatch.setenv("SHITU_LOG_DIR", str(tmp_path))
    monkeypatch.setenv("SHITU_LOG_FORMAT", fmt)
    monkeypatch.setattr(request_log, "_configured", set())
    saved = {n: list(logging.getLogger(n).handlers) for n in ("shitu", "PaddleHub", "shitu.requests")}
    try:
        request_log.configure_logs(None, 1 << 20, 1)
        request_log.log_request(request_id="r1", path=HOSTILE, error=HOSTILE, status="111")
        logging.getLogger("shitu.serving").warning("module %s not found", HOSTILE)
        try:
            raise ValueError(HOSTILE)
        except ValueError:
            logging.getLogger("shitu.serving").exception("failed on %s", HOSTILE)
        text = "".join((tmp_path / n).read_text() for n in ("shitu-requests.log", "shitu-server.log"))
    finally:
        for name, handlers in saved.items():
            for h in logging.getLogger(name).handlers:
                if h not in handlers:
                    h.close()
            logging.getLogger(name).handlers = handlers
    assert text.count("forged:line") == 5, text
    for line in text.split("\n"):  # a record, or a traceback's indented line
        assert line.startswith(("[", "ts=", "{", "    ")) or not line, line
        assert all(c.isprintable() for c in line), repr(line)
    if fmt == "json":
        for line in text.splitlines():
            assert json.loads(line)


def test_a_full_log_disk_prints_one_line_not_a_traceback_per_record(tmp_path, capsys):
    handler = LockedRotatingFileHandler(tmp_path / "x.log", 4096, 1)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("full-disk-test")
    log.addHandler(handler)
    log.propagate = False
    try:
        handler.stream = open("/dev/full", "w")  # every write fails with ENOSPC
        handler.baseFilename = "/dev/full"
        for i in range(20):
            log.warning("record %d", i)
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("cannot write") == 1, err
