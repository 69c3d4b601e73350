"""Running the modules under the real ``hub`` command: install, write ``config.json``, start, wait, stop.

``shitu serve`` (:mod:`shitu.serving.cli.serve`) is a convenience over exactly the documented commands (listening on
``--host``, default ``127.0.0.1``; ``--token`` reaches the server as ``SHITU_ADMIN_TOKEN``, never through the config
file)::

    hub install hub_modules/mainbody_detection hub_modules/feature_extraction \\
                hub_modules/index_search hub_modules/image_recognition
    hub serving start -c config.json          # or: hub serving start -m image_recognition -p 8866

It also keeps PaddleHub offline: PaddleHub reports each ``hub install`` / ``hub serving start`` to its server;
:func:`offline_hub_config` points that at a closed loopback port so nothing leaves the machine.

``shitu serve`` becomes ``python -m shitu.serving.hub.control serving start -c config.json`` (:func:`main`): the
same ``hub`` command in the same process, which first hides the libraries' import-time warnings (paddle's "No
ccache found", setuptools' "replacing distutils"; ``--verbose`` keeps them), drops ANSI colour where stderr is not
a terminal (werkzeug's request lines, PaddleHub's log), and exits 130 when stopped by Ctrl-C (SIGINT).
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shitu.hub_modules import MODULES, module_dir
from shitu.params import flatten

#: Multi-process mode: paddle threads per worker. Two workers on two cores share the cores instead of fighting.
THREADS_PER_WORKER = 1


def hub_home() -> Path:
    return Path(os.environ.get("HUB_HOME", Path.home() / ".paddlehub"))


def offline_hub_config(home: Path | None = None) -> Path:
    """Point PaddleHub's telemetry/search server at a closed local port (``$HUB_HOME/conf/config.yaml``)."""
    conf = (home or hub_home()) / "conf" / "config.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("server: http://127.0.0.1:9/paddlehub\nlog:\n  enable: true\n  level: WARNING\n")
    return conf


def hub_command() -> list[str]:
    """``hub`` of this Python environment."""
    exe = Path(sys.executable).with_name("hub")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "paddlehub.commands.utils"]


def install_modules(modules: tuple[str, ...] = MODULES, env: dict[str, str] | None = None) -> None:
    """``hub install`` each module folder (one process for all, :func:`main`: nothing written outside
    ``HUB_HOME`` whatever its folders are named)."""
    env = dict(env or os.environ)
    offline_hub_config(Path(env["HUB_HOME"]) if "HUB_HOME" in env else None)
    proc = subprocess.run(  # `hub install` through main(): see keep_temp_paths
        [sys.executable, "-m", __name__, "install", *[str(module_dir(m)) for m in modules]],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    installed = Path(env.get("HUB_HOME", hub_home())) / "modules"
    missing = [m for m in modules if not (installed / m / "module.py").is_file()]
    if proc.returncode != 0 or missing:
        raise RuntimeError(
            f"hub install failed for {missing or list(modules)}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )


def serving_config(
    modules: tuple[str, ...] = MODULES,
    port: int = 8866,
    workers: int = 1,
    init_args: dict[str, Any] | None = None,
    predict_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``config.json`` for ``hub serving start -c``; ``workers > 1`` selects the gunicorn multi-process mode."""
    args = copy.deepcopy(init_args or {})  # the caller's mapping stays as it was
    if workers > 1:
        params = args.setdefault("params", {})
        if "Global.cpu_num_threads" not in flatten(params):
            params.setdefault("Global", {})["cpu_num_threads"] = THREADS_PER_WORKER
    cfg: dict[str, Any] = {
        "modules_info": {
            m: {"init_args": {"version": "1.0.0", **args}, "predict_args": dict(predict_args or {})} for m in modules
        },
        "port": port,
        "use_multiprocess": workers > 1,
        "workers": workers,
    }
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(config_path: Path, env: dict[str, str] | None = None, log_path: Path | None = None) -> subprocess.Popen:
    """``hub serving start -c config_path`` in its own process group (so :func:`stop` ends every worker)."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen(
        [*hub_command(), "serving", "start", "-c", str(config_path)],
        env=env or dict(os.environ),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_ready(base_url: str, proc: subprocess.Popen | None = None, timeout: float = 180.0) -> None:
    """Poll ``GET /health`` until the server answers."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"hub serving exited with code {proc.returncode} before answering")
        try:
            if requests.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"hub serving did not answer on {base_url} within {timeout:.0f} s")


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the server's process group (master and gunicorn workers), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)
    except ProcessLookupError:
        pass


#: Warnings every ``hub serving`` start prints and that say nothing about this server (nothing is compiled; the
#: distutils shim is setuptools' business): (message start, category).
LIBRARY_NOTICES = (
    ("No ccache found", UserWarning),
    ("Setuptools is replacing distutils", UserWarning),
)


def quiet_libraries() -> None:
    """Hide :data:`LIBRARY_NOTICES` (before paddle and setuptools are imported)."""
    import warnings

    for message, category in LIBRARY_NOTICES:
        warnings.filterwarnings("ignore", message=message, category=category)


def plain_logs() -> None:
    """No ANSI colour codes in the log lines: werkzeug's request lines and PaddleHub's colorlog formatter
    (``NO_COLOR``, which colorlog reads at each record)."""
    os.environ["NO_COLOR"] = "1"
    import werkzeug.serving

    werkzeug.serving._log_add_style = False  # werkzeug's own switch (it is off on Windows consoles)


def keep_temp_paths() -> None:
    """Make PaddleHub 2.4.0's ``hub install DIR`` write only inside ``HUB_HOME``. Its ``_install_from_directory``
    replaces ``-`` with ``_`` in the *whole* path of its temporary copy (meant for the module's name), so a
    ``HUB_HOME`` inside a folder named ``shitu-hub`` got a stray ``../shitu_hub/.../tmp/`` outside it: only the
    last part of a path (the module's name) is normalised now, as PaddleHub means it for names."""
    from paddlehub.module.manager import LocalModuleManager

    def normalized(self: Any, name: str) -> str:
        head, tail = os.path.split(name)
        return os.path.join(head, tail.replace("-", "_"))

    LocalModuleManager._get_normalized_name = normalized  # type: ignore[method-assign]


class _Interrupted:
    """Whether SIGINT stopped the server: PaddleHub's single-process server swallows the KeyboardInterrupt and
    gunicorn's arbiter handles SIGINT itself, and both then exit 0 or 1."""

    seen = False


def _note_sigint() -> None:
    def on_sigint(signum: int, frame: Any) -> None:
        _Interrupted.seen = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        from gunicorn.arbiter import Arbiter
    except ImportError:  # no gunicorn: single-process serving only
        return
    handle_int = Arbiter.handle_int

    def noted(self: Any) -> None:
        _Interrupted.seen = True
        handle_int(self)

    Arbiter.handle_int = noted  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    """``python -m shitu.serving.hub.control [--verbose] serving start -c config.json`` (or ``install DIR...``): the
    ``hub`` command with the library notices hidden (unless ``--verbose``), no colour off a terminal, exit status
    130 on Ctrl-C, and :func:`keep_temp_paths`."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args
    args = [a for a in args if a != "--verbose"]
    if not verbose:
        quiet_libraries()
    if not sys.stderr.isatty():
        plain_logs()
    _note_sigint()
    keep_temp_paths()
    from paddlehub.commands.utils import execute

    sys.argv = ["hub", *args]
    try:
        status = int(execute())
    except KeyboardInterrupt:
        status = 130
    except SystemExit as exc:  # gunicorn's arbiter halts with sys.exit
        status = exc.code if isinstance(exc.code, int) else 1
    return 130 if _Interrupted.seen else status


def serve_command(config_path: Path, verbose: bool = False) -> list[str]:
    """The command line ``shitu serve`` becomes: ``hub serving start -c config_path`` through :func:`main`."""
    return [
        sys.executable,
        "-m",
        __name__,
        *(["--verbose"] if verbose else []),
        "serving",
        "start",
        "-c",
        str(config_path),
    ]


def check_serve_args(modules: tuple[str, ...], scenario: str | None) -> str | None:
    """What is wrong with ``shitu serve``'s modules or scenario (None: fine), found before anything starts."""
    unknown = [m for m in modules if m not in MODULES]
    if unknown or not modules:
        return f"--modules: unknown module(s) {', '.join(unknown) or '(none given)'}; choose from {','.join(MODULES)}"
    from shitu.plugins import registry
    from shitu.plugins.errors import PackError

    try:
        pack = registry.get_pack(scenario)
    except PackError as exc:
        return f"--scenario: {exc}"
    if not pack.is_available():
        return f"--scenario: {pack.fetch_instructions()}"
    return None


if __name__ == "__main__":
    sys.exit(main())
