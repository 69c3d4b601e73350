"""`shitu serve`'s default workers x model threads: the rule keyed by usable cores, and that serve writes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shitu.serving.hub.serve_defaults import ServeDefaults, serve_defaults, usable_cores


@pytest.mark.parametrize(
    "cores, workers, threads, expected",
    [
        (1, None, None, (1, 1)),  # one core: no second thread, no second worker
        (2, None, None, (1, 2)),  # one worker's 2 threads keep both cores busy
        (3, None, None, (1, 2)),
        (4, None, None, (2, 2)),
        (16, None, None, (8, 2)),
        (2, 2, None, (2, 1)),  # --workers 2 on 2 cores: 1 thread each (the shipped 2-worker config)
        (4, 1, None, (1, 2)),
        (8, 3, None, (3, 2)),
        (1, 4, None, (4, 1)),
        (2, None, 1, (2, 1)),  # --threads 1 on 2 cores: a worker per core
        (16, None, 4, (4, 4)),
        (2, 3, 3, (3, 3)),  # both given: kept as they are
    ],
)
def test_rule_per_core_count(cores, workers, threads, expected):
    assert serve_defaults(cores, workers, threads) == ServeDefaults(*expected)


def test_rule_refuses_non_positive_numbers():
    for bad in ((0, None, None), (2, 0, None), (2, None, 0)):
        with pytest.raises(ValueError, match="must be >= 1"):
            serve_defaults(*bad)


def test_usable_cores_follows_the_affinity_mask():
    code = (
        "import os; os.sched_setaffinity(0, {0}); from shitu.serving.hub.serve_defaults import usable_cores; "
        "print(usable_cores())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "1", out.stderr
    assert usable_cores() == len(os.sched_getaffinity(0))


def _serve_fake_exec(monkeypatch, tmp_path, argv):
    """Run `shitu serve ARGV` in-process up to the exec, with hub install and the exec replaced (the config it
    writes is the case under test; the real path is test_serve_writes_the_rule_for_its_cores_real)."""
    from shitu.serving.cli import main, serve

    calls = []
    monkeypatch.setattr(serve, "install_modules", lambda modules: None)
    monkeypatch.setattr(serve.os, "execv", lambda *a: calls.append(a))
    cfg = tmp_path / "cfg.json"
    code = main(["serve", "--config-out", str(cfg), *argv])
    return code, (json.loads(cfg.read_text()) if cfg.is_file() else None), calls


def _threads(cfg: dict) -> set[int]:
    return {m["init_args"]["params"]["Global"]["cpu_num_threads"] for m in cfg["modules_info"].values()}


def test_serve_explicit_flags_win_fake_exec(monkeypatch, tmp_path, capsys):
    cores = usable_cores()
    code, cfg, calls = _serve_fake_exec(monkeypatch, tmp_path, [])
    pick = serve_defaults(cores)
    assert code == 0 and len(calls) == 1
    assert cfg["workers"] == pick.workers and _threads(cfg) == {pick.threads}
    assert cfg["use_multiprocess"] == (pick.workers > 1)
    code, cfg, _ = _serve_fake_exec(monkeypatch, tmp_path, ["--workers", "2"])
    assert cfg["workers"] == 2 and cfg["use_multiprocess"] and _threads(cfg) == {serve_defaults(cores, 2).threads}
    code, cfg, _ = _serve_fake_exec(monkeypatch, tmp_path, ["--workers", "1", "--threads", "3"])
    assert cfg["workers"] == 1 and _threads(cfg) == {3}
    assert "1 worker(s) x 3 model thread(s)" in capsys.readouterr().err


def test_serve_refuses_threads_above_the_schema_bound(monkeypatch, tmp_path, capsys):
    code, cfg, calls = _serve_fake_exec(monkeypatch, tmp_path, ["--threads", "1000"])
    assert code == 2 and cfg is None and not calls
    assert "--threads" in (err := capsys.readouterr().err) and "must be <= 256" in err


def test_serve_writes_the_rule_for_its_cores_real(tmp_path):
    """The real `shitu serve` (hub install + exec of hub serving) on one core: 1 worker x 1 model thread, where the
    in-process default is 2 threads; the server it became answers."""
    import requests

    from shitu.serving.hub import control as hub_serving

    port = hub_serving.free_port()
    cfg = tmp_path / "serving.json"
    shitu = Path(sys.executable).with_name("shitu")
    proc = subprocess.Popen(
        [str(shitu), "serve", "--port", str(port), "--modules", "image_recognition", "--config-out", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "log", "wb"),
        start_new_session=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {0}),
    )
    try:
        hub_serving.wait_ready(f"http://127.0.0.1:{port}", proc, timeout=600)
        written = json.loads(cfg.read_text())
        assert written["workers"] == 1 and not written["use_multiprocess"]
        assert _threads(written) == {1}
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=30).json()
        assert health["results"]["modules"] == ["image_recognition"]
    finally:
        hub_serving.stop(proc)
    assert "1 worker(s) x 1 model thread(s)" in (tmp_path / "log").read_text()


def test_cpu_quota_caps_the_usable_cores(tmp_path):
    from shitu.serving.hub.serve_defaults import cpu_quota

    affinity = len(os.sched_getaffinity(0))
    assert cpu_quota(tmp_path) is None and usable_cores(tmp_path) == affinity  # no cgroup files: affinity only
    (tmp_path / "cpu.max").write_text("max 100000\n")  # cgroup v2, no quota
    assert cpu_quota(tmp_path) is None and usable_cores(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # docker --cpus=0.5
    assert cpu_quota(tmp_path) == 0.5 and usable_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 cores: rounded up
    assert usable_cores(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # cgroup v1, no quota
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path) is None
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert cpu_quota(tmp_path) == 1.0 and usable_cores(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("garbage\n")
    assert cpu_quota(tmp_path) is None


def test_serve_prints_its_own_lines_plainly_and_exits_130_on_ctrl_c_real(tmp_path):
    """The real `shitu serve` into files: no paddle ccache / setuptools warnings, "serving on" at INFO with the web
    page's URL, no ANSI colour in a request line (a 404 is coloured by werkzeug on a terminal), and SIGINT (Ctrl-C)
    exits 130 (was: both warnings, "serving on" at WARNING, no URL, exit 1)."""
    import signal

    import requests

    from shitu.serving.hub import control as hub_serving

    port = hub_serving.free_port()
    shitu = Path(sys.executable).with_name("shitu")
    err = tmp_path / "err"
    proc = subprocess.Popen(
        [
            str(shitu),
            "serve",
            "--port",
            str(port),
            "--modules",
            "image_recognition",
            "--config-out",
            str(tmp_path / "c"),
        ],
        stdout=open(tmp_path / "out", "wb"),
        stderr=open(err, "wb"),
        start_new_session=True,
    )
    try:
        hub_serving.wait_ready(f"http://127.0.0.1:{port}", proc, timeout=600)
        assert requests.get(f"http://127.0.0.1:{port}/no-such-route", timeout=30).status_code == 404
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    finally:
        hub_serving.stop(proc)
    text = err.read_text()
    assert "ccache" not in text and "Setuptools" not in text and "warnings.warn" not in text, text
    assert "\x1b[" not in text, text
    serving = [line for line in text.splitlines() if "serving on" in line]
    assert len(serving) == 1 and "[    INFO]" in serving[0], text
    assert f"web page http://127.0.0.1:{port}/web/" in serving[0]
    assert '"GET /no-such-route HTTP/1.1" 404' in text


def test_serve_verbose_keeps_the_library_notices_fake_exec(monkeypatch, tmp_path):
    """`shitu -v serve` execs the server with --verbose (the notices kept); plain `serve` without."""
    from shitu.serving.cli import main, serve

    calls = []
    monkeypatch.setattr(serve, "install_modules", lambda modules: None)
    monkeypatch.setattr(serve.os, "execv", lambda *a: calls.append(a))
    assert main(["-v", "serve", "--config-out", str(tmp_path / "c")]) == 0
    assert main(["serve", "--config-out", str(tmp_path / "c")]) == 0
    (exe, verbose), (_, plain) = calls
    assert verbose[:3] == [sys.executable, "-m", "shitu.serving.hub.control"] and "--verbose" in verbose
    assert "--verbose" not in plain and plain[-4:] == ["serving", "start", "-c", str(tmp_path / "c")]
