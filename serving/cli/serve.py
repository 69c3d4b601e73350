"""``shitu serve``: ``hub install`` the modules and run ``hub serving start -c config.json`` in their place
(through :func:`shitu.serving.hub.control.main`: only the server's own lines, no colour off a terminal, exit 130
on Ctrl-C).

The work is done by :mod:`shitu.serving.hub.control` (config, install, the ``hub`` command); this is the command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from shitu.hub_modules import MODULES
from shitu.params import ParamError, merge
from shitu.serving.cli.toolkit import EXIT_USAGE, fail, non_negative_int, positive_int
from shitu.serving.hub.control import check_serve_args, hub_home, install_modules, serve_command, serving_config
from shitu.serving.hub.serve_defaults import serve_defaults, usable_cores

__all__ = ["register", "run_serve"]


def run_serve(args: argparse.Namespace) -> int:
    """Write the config, ``hub install`` the modules, then become ``hub serving start -c`` (exec)."""
    modules = tuple(m.strip() for m in args.modules.split(",") if m.strip()) if args.modules else MODULES
    problem = check_serve_args(modules, args.scenario)
    if problem:
        return fail(problem, EXIT_USAGE)
    from shitu.serving.hub.connections import warn_if_exposed
    from shitu.serving.hub.service import TOKEN_ENV

    init_args: dict[str, Any] = {"host": args.host}
    if args.scenario:
        init_args["scenario"] = args.scenario
    if args.token:  # passed through the environment: a secret is never written into the config file
        os.environ[TOKEN_ENV] = args.token
    warning = warn_if_exposed(args.host, bool(os.environ.get(TOKEN_ENV)))
    if warning:
        print(warning, file=sys.stderr)
    pick = serve_defaults(usable_cores(), args.workers, args.threads)  # explicit flags win; see serve_defaults
    init_args["params"] = {"Global": {"cpu_num_threads": pick.threads}}
    try:
        merge(init_args["params"])
    except ParamError as exc:  # e.g. --threads above the schema's bound: refused before anything starts
        return fail(f"--threads: {exc}", EXIT_USAGE)
    cfg = serving_config(modules, args.port, pick.workers, init_args)
    config_path = Path(args.config_out)
    config_path.write_text(json.dumps(cfg, indent=2))
    print(f"installing {', '.join(modules)} into {hub_home() / 'modules'}", file=sys.stderr)
    install_modules(modules)
    print(
        f"hub serving start -c {config_path}  ({args.host}:{args.port}, {pick.workers} worker(s) x "
        f"{pick.threads} model thread(s))",
        file=sys.stderr,
        flush=True,
    )
    command = serve_command(config_path, verbose=getattr(args, "verbose", False))
    os.execv(command[0], command)
    return 0  # pragma: no cover - exec does not return


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``shitu`` parser."""
    p = subparsers.add_parser(
        "serve",
        help="hub install the modules and run `hub serving start -c config.json`",
        description="Write config.json, `hub install` the modules and exec `hub serving start "
        "-c config.json`. An unknown module or scenario, or a scenario whose "
        "models are not installed, stops here, before anything starts.",
    )
    p.add_argument("--port", type=non_negative_int, default=8866, help="port to listen on (default: %(default)s)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)",
    )
    p.add_argument(
        "--token",
        help="admin token for gallery changes (default: $SHITU_ADMIN_TOKEN); strongly "
        "advised with --host beyond loopback",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help=">1: gunicorn multi-process mode with that many workers (default: from this machine's cores, "
        "see README Serving)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="model threads per worker (paddle.inference or onnxruntime), Global.cpu_num_threads "
        "(default: from this machine's cores and --workers, see README Serving)",
    )
    p.add_argument("--modules", help=f"comma-separated subset of {','.join(MODULES)}")
    p.add_argument("--scenario", help="default scenario pack of the served modules")
    p.add_argument("--config-out", default="shitu_serving.json", help="where to write the config.json used")
    p.set_defaults(func=run_serve)
