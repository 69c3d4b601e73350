"""oneDNN for models that do not say whether it is safe (official PaddleClas / PaddleDetection exports).

Paddle 3.3.1's oneDNN passes speed these models up several times on CPU, but some pass lists crash or change the
answers of some graphs (the PIR PicoDet export fails under paddle's default list). So a model folder whose
description leaves ``onednn`` unset runs without oneDNN until a pass list has been **verified on that very model**:

- :func:`verify` tries :data:`OFFICIAL_PASS_LISTS` in order, each in a subprocess (a crash cannot kill the caller),
  comparing the model's outputs with and without oneDNN on fixed synthetic images (extractors: cos >= 0.9999;
  detectors: the same boxes within 1 px and scores within 2e-3) and timing both (a list must also be at least
  ``MIN_SPEEDUP`` times faster);
- the first list that passes is recorded in ``$SHITU_HOME/onednn/<sha256 of the graph and weights>.json`` together
  with the measured speed-up; :func:`resolve` (called for every predictor) then turns oneDNN on with it.

``shitu plugins verify NAME --onednn`` runs it for a pack's models; ``python -m shitu.serving.engine.onednn
MODEL_DIR detector|extractor`` for a model folder (``Global.*_inference_model_dir``). A model whose description
sets ``onednn`` is never changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from shitu.model_spec import ModelSpec

#: Candidate pass lists, tried in order: paddle's default list (None here; spelled out by :func:`default_passes`, since
#: a predictor turns oneDNN on only with an explicit list), then a short list verified on the PIR PicoDet export (the
#: default list fails there with "ConvertPirAttribute2RuntimeAttribute not support").
OFFICIAL_PASS_LISTS: tuple[list[str] | None, ...] = (
    None,
    ["conv2d_bias_fuse_pass", "conv_elementwise_add_onednn_fuse_pass"],
)


def default_passes() -> list[str]:
    """Paddle's default CPU oneDNN pass list, as an explicit list (what ``enable_mkldnn()`` alone would run)."""
    import paddle.inference as pi

    config = pi.Config()
    config.disable_gpu()
    config.enable_mkldnn()
    return list(config.pass_builder().all_passes())


VERIFY_TIMEOUT_S = 900
#: A verified list is used only when it was also measured this much faster than plain CPU.
MIN_SPEEDUP = 1.1
_MIN_DET_SCORE = 0.1


def _home() -> Path:
    from shitu.plugins.store import home

    return home() / "onednn"


def model_key(spec: ModelSpec) -> str:
    """sha256 over the graph and weights files: a record applies to exactly these files."""
    digest = hashlib.sha256()
    for path in spec.files():
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def record_path(spec: ModelSpec) -> Path:
    return _home() / f"{model_key(spec)}.json"


def resolve(spec: ModelSpec) -> ModelSpec:
    """``spec`` with oneDNN on and its verified pass list when a record exists and the description left it unset."""
    if spec.onednn is not None or spec.kind not in ("detector", "extractor"):
        return spec
    try:
        record = json.loads(record_path(spec).read_text())
    except (OSError, ValueError):
        return spec
    if not record.get("ok"):
        return spec
    return dataclasses.replace(spec, onednn=True, onednn_passes=record.get("passes"))


def _images() -> list[np.ndarray]:
    """Fixed synthetic BGR photos-like images: smooth noise with a few solid shapes."""
    import cv2

    rng = np.random.default_rng(1234)
    out = []
    for h, w in ((480, 640), (360, 360), (300, 500)):
        noise = rng.integers(0, 255, (h // 8, w // 8, 3), np.uint8)
        img = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
        for _ in range(3):
            x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            cv2.rectangle(
                img, (x, y), (x + int(rng.integers(40, w // 2)), y + int(rng.integers(40, h // 2))), color, -1
            )
        out.append(img)
    return out


def _run(spec: ModelSpec, onednn: bool, passes: list[str] | None) -> tuple[list[np.ndarray], float]:
    """Outputs on the fixed images and the mean seconds per image (after one warm-up)."""
    from shitu.params import merge
    from shitu.serving.engine.detection import MainbodyDetector
    from shitu.serving.engine.extraction import FeatureExtractor
    from shitu.serving.engine.predictor import RuntimeOptions

    spec = dataclasses.replace(spec, onednn=onednn, onednn_passes=passes)
    options = RuntimeOptions(cpu_threads=1, enable_mkldnn=onednn)
    images = _images()
    if spec.kind == "detector":
        det = MainbodyDetector(spec, options)
        call = lambda img: (lambda d: np.column_stack([d.scores, d.xyxy]))(det.raw(img))  # noqa: E731
    else:
        ext = FeatureExtractor(spec, options)
        params = merge()
        call = lambda img: ext.embed([img], params)[0]  # noqa: E731
    call(images[0])
    start = time.perf_counter()
    outs = [call(img) for img in images]
    return outs, (time.perf_counter() - start) / len(images)


def _same(kind: str, ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[bool, str]:
    for i, (a, b) in enumerate(zip(ref, got)):
        if kind == "extractor":
            cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
            if cos < 0.9999:
                return False, f"image {i}: cos {cos:.6f} < 0.9999"
            continue
        for x, y, label in ((a, b, "missing with oneDNN"), (b, a, "extra with oneDNN")):
            for row in x[x[:, 0] >= _MIN_DET_SCORE + (0 if label.startswith("missing") else 0.005)]:
                near = (
                    (np.abs(y[:, 1:] - row[1:]).max(axis=1) <= 1.0) & (np.abs(y[:, 0] - row[0]) <= 2e-3)
                    if len(y)
                    else np.zeros(0, bool)
                )
                if not near.any():
                    return False, f"image {i}: box {np.round(row[1:], 1).tolist()} score {row[0]:.3f} {label}"
    return True, "same answers"


def check(spec: ModelSpec, passes: list[str] | None) -> dict[str, Any]:
    """In this process: compare oneDNN with ``passes`` against plain CPU on ``spec``'s model."""
    passes = default_passes() if passes is None else passes  # recorded spelled out: predictors need a list
    ref, t_plain = _run(spec, False, None)
    try:
        got, t_onednn = _run(spec, True, passes)
    except Exception as exc:  # noqa: BLE001 - paddle raises its own types
        return {"ok": False, "passes": passes, "detail": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    ok, detail = _same(spec.kind, ref, got)
    speedup = round(t_plain / max(t_onednn, 1e-9), 2)
    if ok and speedup < MIN_SPEEDUP:
        ok, detail = False, f"same answers but not faster ({speedup}x < {MIN_SPEEDUP}x)"
    return {
        "ok": ok,
        "passes": passes,
        "detail": detail,
        "ms_plain": round(t_plain * 1000, 1),
        "ms_onednn": round(t_onednn * 1000, 1),
        "speedup": speedup,
    }


def _spec_json(spec: ModelSpec) -> str:
    data = dataclasses.asdict(spec)
    data.pop("model_dir")
    return json.dumps({"model_dir": str(spec.model_dir), "description": data})


def _spec_from_json(text: str) -> ModelSpec:
    data = json.loads(text)
    return ModelSpec.from_dict(data["description"], data["model_dir"])


def verify(spec: ModelSpec, timeout: float = VERIFY_TIMEOUT_S) -> dict[str, Any]:
    """Try each candidate pass list in a subprocess; record and return the first that passes (or the failures)."""
    tried = []
    for passes in OFFICIAL_PASS_LISTS:
        cmd = [sys.executable, "-m", "shitu.serving.engine.onednn", "--check", _spec_json(spec), json.dumps(passes)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            tried.append({"ok": False, "passes": passes, "detail": f"timed out after {timeout:.0f} s"})
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tried.append(
                {"ok": False, "passes": passes, "detail": f"the check process exited with {proc.returncode} (crashed)"}
            )
            continue
        result = json.loads(lines[-1])
        tried.append(result)
        if result["ok"]:
            break
    best = next((t for t in tried if t["ok"]), None)
    record = {
        **(best or {"ok": False, "passes": None}),
        "model": spec.model_dir.name,
        "kind": spec.kind,
        "tried": tried,
    }
    path = record_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return record


def describe(record: dict[str, Any]) -> str:
    """One line for the CLI."""
    if record.get("ok"):
        passes = "paddle's default passes" if record["passes"] is None else f"{len(record['passes'])} passes"
        return (
            f"oneDNN verified ({passes}): same answers, {record['ms_plain']} -> {record['ms_onednn']} ms per "
            f"image ({record['speedup']}x)"
        )
    return "oneDNN stays off: " + "; ".join(str(t.get("detail")) for t in record.get("tried", []))


def _main(argv: list[str]) -> int:
    from shitu.model_spec import ModelSpecError

    if argv[:1] == ["--check"]:
        print(json.dumps(check(_spec_from_json(argv[1]), json.loads(argv[2]))), flush=True)
        return 0
    if not argv or len(argv) > 2 or argv[-1] not in ("detector", "extractor"):
        print("usage: python -m shitu.serving.engine.onednn MODEL_DIR detector|extractor", file=sys.stderr)
        return 2
    try:
        spec = ModelSpec.from_dir(argv[0], argv[1])
    except ModelSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    record = verify(spec)
    print(describe(record))
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
