"""Run one model once, in a process of its own, with given runtime settings: the pack installer's safety check.

Paddle's oneDNN passes are model-specific: a wrong pass list can kill the whole process with SIGSEGV while the
predictor is built (``FusedConv2dOp``), which no ``try`` can catch. ``shitu plugins install`` and ``verify``
therefore start this module as a child process for each model of a pack (``python -m
shitu.serving.engine.modelcheck``), feed it a JSON request on stdin and read one JSON line from stdout::

    {"kind": "detector", "model_dir": "/path/models/det", "description": {...ModelSpec.from_dict input...},
     "onednn": true, "cpu_threads": 1, "backend": "paddle"}      (backend: paddle | onnxruntime)
    -> {"status": "ok", "detail": "paddle.inference model.json (cpu, oneDNN on, 1 threads)", "outputs": 3}
    -> {"status": "error", "detail": "cannot load model ...: ..."}      (exit status 2)

A crash shows as the child's exit by a signal, which the caller records and refuses. The forward is a real one
(pre-processing, model, decoding) on a synthetic 320x240 image. The caller (:mod:`shitu.plugins.runtime_check`)
never imports this module: packs must stay loadable without the serving stack.
"""

from __future__ import annotations

import json
import sys
from typing import Any

#: Exit status for a clean failure (the model cannot be loaded or run); 0 is success.
EXIT_FAILED = 2


def check(request: dict[str, Any]) -> dict[str, Any]:
    """Load the model described by ``request`` and run one forward; return the JSON-ready result."""
    import numpy as np

    from shitu.model_spec import ModelSpec
    from shitu.params import merge
    from shitu.serving.engine.predictor import RuntimeOptions

    spec = ModelSpec.from_dict(dict(request["description"]), request["model_dir"])
    options = RuntimeOptions(
        cpu_threads=int(request.get("cpu_threads", 1)),
        enable_mkldnn=bool(request.get("onednn", False)),
        backend=str(request.get("backend", "paddle")),
    )
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    params = merge()
    if spec.kind == "detector":
        from shitu.serving.engine.detection import MainbodyDetector

        detector = MainbodyDetector(spec, options)
        outputs = int(len(detector.detect(image, params).xyxy))
        description = detector.predictor.description
    else:
        from shitu.serving.engine.extraction import FeatureExtractor

        extractor = FeatureExtractor(spec, options)
        outputs = int(extractor.embed([image], params).shape[-1])
        description = extractor.predictor.description
    return {"status": "ok", "detail": description, "outputs": outputs}


def main() -> int:
    try:
        request = json.loads(sys.stdin.read())
        result = check(request)
    except Exception as exc:  # a clean failure: report it, the caller decides
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        result = {"status": "error", "detail": lines[0] if lines else type(exc).__name__}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["status"] == "ok" else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
