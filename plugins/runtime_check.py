"""Run each model of a pack once in a child process with the pack's runtime settings, and record the outcome.

Why a child process: Paddle's oneDNN passes are model-specific, and a wrong list kills the process with SIGSEGV
while the predictor is built. Found at request time, that is one unauthenticated request taking a server down.
So ``shitu plugins install`` and ``shitu plugins verify`` start ``python -m shitu.serving.engine.modelcheck``
for the detector and the recogniser (this module never imports the serving stack), and:

- a model that **crashes** (killed by a signal) or hangs is **refused**, with a message naming the model, the
  settings and what to change;
- a model that fails cleanly with oneDNN on is tried again with oneDNN off; if that works oneDNN stays off;
- a model that ships its ONNX file is also run on onnxruntime (``Global.*_backend`` ``auto`` serves it there);
  a crash or hang there refuses the pack too;
- the result goes into the store's ``install.json`` under ``runtime``. When a store pack is loaded, oneDNN is
  enabled for a model only if this record says that exact pass list ran (:func:`onednn_allowed`), so nothing a
  request chooses (a scenario, a parameter) can select a runtime setting that was not verified.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from shitu.plugins.manifest import Manifest, ModelEntry

#: The child process module (run with ``python -m``; never imported from here).
RUNNER = "shitu.serving.engine.modelcheck"
#: Seconds one model may take to load and run once.
TIMEOUT_S = float(os.environ.get("SHITU_MODELCHECK_TIMEOUT", "300"))
#: ``status`` values that make an install or a verify fail.
FATAL = ("crashed", "timeout")


def _declared_onednn(entry: ModelEntry) -> tuple[bool, list[str] | None]:
    """(whether oneDNN would be on, the pass list): on only with an explicit pass list."""
    desc = entry.description
    passes = desc.get("onednn_passes")
    return bool(desc.get("onednn")) and passes is not None, (list(passes) if passes is not None else None)


def _run_child(entry: ModelEntry, root: Path, onednn: bool, timeout: float, backend: str = "paddle") -> dict[str, Any]:
    request = {
        "kind": entry.kind,
        "model_dir": str(root / entry.path),
        "description": entry.description,
        "onednn": onednn,
        "cpu_threads": 1,
        "backend": backend,
    }
    env = dict(os.environ, GLOG_minloglevel="2", FLAGS_call_stack_level="0")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", RUNNER],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "detail": f"did not load and run one image within {timeout:g} s"}
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return {"status": "crashed", "detail": f"the process was killed by {name} while loading or running it"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "error", "detail": f"the check exited with status {proc.returncode}: {tail}"}
    return {"status": str(result.get("status", "error")), "detail": str(result.get("detail", ""))}


def check_model(entry: ModelEntry, root: Path, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """Run ``entry`` (a model of the pack at ``root``) once in a child process; the record for ``install.json``."""
    onednn, passes = _declared_onednn(entry)
    record: dict[str, Any] = {"onednn": onednn, "onednn_passes": passes}
    if entry.format != "paddle":
        record.update(status="skipped", onednn=False, detail=f"format {entry.format}: runs without paddle")
    else:
        record.update(_run_child(entry, root, onednn, timeout))
        if record["status"] == "error" and onednn:
            retry = _run_child(entry, root, False, timeout)
            if retry["status"] == "ok":
                record.update(
                    status="ok",
                    onednn=False,
                    detail=f"oneDNN left off: with the pass list it failed ({record['detail']})",
                )
    if entry.description.get("onnx_file"):
        # Global.*_backend `auto` runs a model that ships its ONNX file on onnxruntime: check that runtime too.
        record["onnxruntime"] = _run_child(entry, root, False, timeout, backend="onnxruntime")
    record["checked_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return record


def check_models(manifest: Manifest, root: Path, timeout: float = TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """``{role: record}`` for every model of the pack whose files sit in ``root``."""
    return {role: check_model(entry, root, timeout) for role, entry in manifest.models.items()}


def refusal(manifest: Manifest, results: dict[str, dict[str, Any]], where: str) -> str | None:
    """The error message for a pack with a model that crashed or hung (None when every model is usable)."""
    for role, rec in results.items():
        ort = rec.get("onnxruntime") or {}
        if ort.get("status") in FATAL:
            return (
                f"{where}: models.{role} ({manifest.models[role].name}) on onnxruntime: {ort['detail']}. The "
                "pack is refused: a request would crash the server the same way (check its ONNX file)."
            )
        if rec.get("status") not in FATAL:
            continue
        entry = manifest.models[role]
        how = f"oneDNN on with passes {rec.get('onednn_passes')}" if rec.get("onednn") else "oneDNN off"
        return (
            f"{where}: models.{role} ({entry.name}) {rec['detail']} ({how}). The pack is refused: a request "
            f"would crash the server the same way. "
            + (
                "oneDNN passes are model-specific: set `onednn: false` for this model, or give an "
                "`onednn_passes` list verified on it."
                if rec.get("onednn")
                else "Check that the model files belong together and run with this paddle version."
            )
        )
    return None


def onednn_allowed(record: dict[str, Any] | None, role: str, description: dict[str, Any]) -> bool:
    """Whether the install record shows the model ``role`` ran with oneDNN on and exactly this pass list."""
    rec = ((record or {}).get("runtime") or {}).get(role) or {}
    passes = description.get("onednn_passes")
    return (
        rec.get("status") == "ok"
        and bool(rec.get("onednn"))
        and passes is not None
        and list(passes) == list(rec.get("onednn_passes") or [])
    )


def summary(results: dict[str, dict[str, Any]]) -> list[str]:
    """One line per model: ``detector: ok (oneDNN on): ...``."""
    return [
        f"{role}: {rec.get('status')} (oneDNN {'on' if rec.get('onednn') else 'off'})"
        + (f": {rec['detail']}" if rec.get("detail") else "")
        for role, rec in results.items()
    ]
