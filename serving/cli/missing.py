"""What to install when a command needs a part of shitu-hub that this installation lacks.

``pip install shitu-hub`` is the client (the SDK, ``shitu ... --server URL``, ``shitu plugins``, drawing with
PIL); ``pip install "shitu-hub[serving]"`` adds the engine (paddle.inference, OpenCV, faiss) and PaddleHub.
A command that needs the engine in a client-only installation stops with :func:`explain` instead of a traceback.
"""

from __future__ import annotations

#: Top-level modules of the serving stack -> what provides them.
SERVING_MODULES = {
    "paddle": "paddlepaddle",
    "cv2": "opencv-python",
    "faiss": "faiss-cpu",
    "paddlehub": "paddlehub",
    "gunicorn": "gunicorn",
}


def explain(exc: ModuleNotFoundError) -> str | None:
    """The message for a missing serving-stack module (None for any other missing module)."""
    top = (exc.name or "").split(".")[0]
    dist = SERVING_MODULES.get(top)
    if dist is None:
        return None
    hint = "; reading videos needs only OpenCV: pip install opencv-python" if top == "cv2" else ""
    return (
        f"this needs the serving stack ({dist}, module {top!r} is not installed): "
        f'pip install "shitu-hub[serving]"{hint}. Without it, run commands against a server with '
        f"--server URL"
    )
