"""Tiny Paddle models built on the fly, to test the loaders and decoders in both file formats.

``build(kind, out_dir, legacy)`` runs paddle in a subprocess: the legacy ``.pdmodel`` format needs
``FLAGS_enable_pir_api=0`` before paddle is imported, and the test process has paddle in PIR mode already.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

_SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np
    import paddle

    kind, out = sys.argv[1], sys.argv[2]

    class PaddleDetLike(paddle.nn.Layer):
        """PaddleDetection's export format: rows [class, score, x1, y1, x2, y2] + a box count; pads with -1."""
        def __init__(self):
            super().__init__()
            self.fc = paddle.nn.Linear(3, 1)
        def forward(self, image, scale_factor):
            z = paddle.mean(self.fc(paddle.mean(image, axis=[2, 3]))) * 0.0 + paddle.mean(scale_factor) * 0.0
            rows = paddle.to_tensor(np.array([[0, 0.9, 10, 20, 110, 220], [3, 0.5, 50, 60, 150, 160],
                                              [1, 0.3, 12, 22, 108, 218], [-1, 0, 0, 0, 0, 0]], "float32"))
            return rows + z, paddle.full([1], 3, dtype="int32")

    class FeatureMap(paddle.nn.Layer):
        """An extractor whose output is a feature map [N, 8, H/4, W/4] (pooled by the engine)."""
        def __init__(self):
            super().__init__()
            self.conv = paddle.nn.Conv2D(3, 8, 3, stride=4, padding=1)
        def forward(self, x):
            return paddle.nn.functional.leaky_relu(self.conv(x), 0.1)

    paddle.seed(0)
    if kind == "paddledet":
        net = PaddleDetLike()
        spec = [paddle.static.InputSpec([None, 3, None, None], "float32", "image"),
                paddle.static.InputSpec([None, 2], "float32", "scale_factor")]
    else:
        net = FeatureMap()
        spec = [paddle.static.InputSpec([None, 3, None, None], "float32", "x")]
    net.eval()
    paddle.jit.save(paddle.jit.to_static(net, input_spec=spec, full_graph=True), out + "/inference")
''')


def build(kind: str, out_dir: Path, legacy: bool) -> Path:
    """Write a tiny ``paddledet`` detector or ``featuremap`` extractor to ``out_dir``; returns it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, FLAGS_enable_pir_api="0" if legacy else "1")
    script = out_dir / "_build_tiny_model.py"  # dy2static reads the source, so it must be a file
    script.write_text(_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), kind, str(out_dir)], env=env, capture_output=True, text=True, timeout=300
    )
    script.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"building the tiny {kind} model failed:\n{proc.stderr[-3000:]}")
    return out_dir
