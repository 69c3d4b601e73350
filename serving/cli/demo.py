"""The demo: a small gallery of real photographs, queries that differ from them, answers as tables and pictures.

The photographs are the ones scikit-image and scikit-learn ship in their wheels (used at run time, not committed):
Chelsea the cat, a coffee cup, the astronaut Eileen Collins, a rocket (scikit-image, public domain / CC0 per its
``skimage.data`` documentation), and a Chinese temple and a flower (scikit-learn's ``load_sample_images``,
CC BY 2.0 photos listed in its documentation).

Queries are other views: a mirrored crop, a rescaled crop, a brighter blurred copy, a collage of two gallery
objects on a new background, and an image of something the gallery does not hold (rejected by
``IndexProcess.score_thres``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def gallery_photos() -> dict[str, np.ndarray]:
    """label -> BGR photo, the demo gallery."""
    from skimage import data

    photos = {
        "cat": data.chelsea(),
        "coffee": data.coffee(),
        "astronaut": data.astronaut(),
        "rocket": data.rocket(),
    }
    try:
        from sklearn.datasets import load_sample_images

        china, flower = load_sample_images().images
        photos["temple"], photos["flower"] = china, flower
    except ImportError:  # scikit-learn is optional for the demo
        pass
    return {k: np.ascontiguousarray(v[:, :, ::-1]) for k, v in photos.items()}


def query_photos(gallery: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """name -> BGR query image; every name says what it should be recognised as."""
    import cv2
    from skimage import data

    cat, coffee, rocket = gallery["cat"], gallery["coffee"], gallery["rocket"]
    h, w = coffee.shape[:2]
    queries = {
        "cat_mirrored_crop": np.ascontiguousarray(cat[10:290, 30:430][:, ::-1]),
        "coffee_rescaled_crop": cv2.resize(coffee[h // 10 : h - h // 10, w // 10 : w - w // 10], None, fx=0.7, fy=0.7),
        "rocket_bright_blur": cv2.GaussianBlur(cv2.convertScaleAbs(rocket, alpha=1.15, beta=12), (5, 5), 0),
    }
    # Two gallery objects side by side on a plain background: one box each.
    canvas = np.full((420, 760, 3), (200, 210, 215), np.uint8)
    canvas[40 : 40 + 270, 20 : 20 + 360] = cv2.resize(cat, (360, 270))
    canvas[60 : 60 + 300, 400 : 400 + 340] = cv2.resize(coffee[0:400, 100:550], (340, 300))
    queries["collage_cat_and_coffee"] = canvas
    queries["not_in_gallery_ihc"] = np.ascontiguousarray(data.immunohistochemistry()[:, :, ::-1])
    return queries


def overlapping_collage(gallery: dict[str, np.ndarray]) -> np.ndarray:
    """The cat with the coffee cup pasted over its right side: two *different* objects whose boxes overlap (rec-NMS
    at PP-ShiTu's 0.05 keeps one, ``Global.rec_nms_per_label`` keeps both). Not one of the demo queries."""
    import cv2

    canvas = np.full((420, 760, 3), (200, 210, 215), np.uint8)
    canvas[40 : 40 + 270, 20 : 20 + 360] = cv2.resize(gallery["cat"], (360, 270))
    canvas[60 : 60 + 300, 260 : 260 + 340] = cv2.resize(gallery["coffee"][0:400, 100:550], (340, 300))
    return canvas


def format_table(name: str, recognitions: list) -> str:
    lines = [f"{name}:"]
    if not recognitions:
        lines.append("    (nothing recognised)")
    for r in recognitions:
        where = "whole image" if r.is_whole_image else str(r.bbox)
        lines.append(f"    {r.label:<12} score {r.score:.3f}   det {r.det_score:.2f}   {where}")
    return "\n".join(lines)


def report(name: str, img: np.ndarray, found: list, out_dir: Path, as_json: bool) -> None:
    """Print one query's answer (table or JSON line) and write its annotated copy."""
    import cv2

    from shitu.serving.results.draw import draw_recognitions

    print(
        json.dumps({"image": name, "results": [r.to_dict() for r in found]}) if as_json else format_table(name, found)
    )
    cv2.imwrite(str(out_dir / "annotated" / f"{name}.jpg"), draw_recognitions(img, found))


def run_demo(out_dir: Path, as_json: bool = False) -> int:
    from shitu.serving.engine.engine import load_engine

    out_dir = Path(out_dir)
    (out_dir / "annotated").mkdir(parents=True, exist_ok=True)
    _example_photos(out_dir / "photos")
    engine = load_engine(gallery=out_dir / "gallery")
    gallery = gallery_photos()
    g = engine.gallery()
    if len(g) == 0:
        engine.gallery_add(list(gallery.values()), list(gallery), sources=[f"demo:{k}" for k in gallery])
    print(f"gallery {g.path}: {len(g)} images, labels {sorted(gallery)}", file=sys.stderr)
    print(f"models: {engine.detector.predictor.description}; {engine.extractor.predictor.description}", file=sys.stderr)
    for name, img in query_photos(gallery).items():
        report(name, img, engine.recognize([img])[0], out_dir, as_json)
    print(f"annotated images written to {out_dir / 'annotated'}", file=sys.stderr)
    engine.close()
    return 0


def run_served_demo(out_dir: Path, as_json: bool = False, serve: bool = False) -> int:
    """The main job: install the hub modules, start ``hub serving``, recognise the demo photos over HTTP.

    The example photos are written to ``OUT/photos`` first, so they can be tried while the demo serves. ``serve``:
    then print the web page's URL and keep serving until Ctrl-C (``make demo``). SIGINT and SIGTERM (``timeout``,
    a process manager) stop every process the demo started (the server's whole process group); exit 130 / 143."""
    import base64
    import os
    import signal

    import requests

    from shitu.serving.engine.images import encode
    from shitu.serving.hub import control as hub_serving
    from shitu.serving.results import Recognition

    out_dir = Path(out_dir).resolve()
    (out_dir / "annotated").mkdir(parents=True, exist_ok=True)
    _example_photos(out_dir / "photos")
    env = dict(os.environ)
    env.setdefault("HUB_HOME", str(out_dir / "hub_home"))
    env.setdefault("SHITU_HOME", str(out_dir / "shitu_home"))
    os.environ.update({k: env[k] for k in ("HUB_HOME", "SHITU_HOME")})

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below, which stops the server

    signal.signal(signal.SIGTERM, terminated)
    proc = None
    try:
        print(f"hub install hub_modules/* into {env['HUB_HOME']}/modules", file=sys.stderr)
        hub_serving.install_modules(env=env)
        port = hub_serving.free_port()
        config = out_dir / "serving_config.json"
        config.write_text(json.dumps(hub_serving.serving_config(port=port), indent=2))
        print(f"hub serving start -c {config} (port {port})", file=sys.stderr)
        proc = hub_serving.start(config, env=env, log_path=out_dir / "serving.log")
        url = f"http://127.0.0.1:{port}"

        def call(payload: dict) -> object:
            body = requests.post(f"{url}/predict/image_recognition", json=payload, timeout=300).json()
            if body["status"] != "000":
                raise RuntimeError(f"server error {body['status']}: {body['msg']}")
            return body["results"]

        def b64(img: np.ndarray) -> str:
            return base64.b64encode(encode(img)).decode()

        hub_serving.wait_ready(url, proc)
        gallery = gallery_photos()
        info = call({"operation": "info", "gallery": "demo"})
        if info["count"] == 0:  # type: ignore[index]
            call(
                {
                    "operation": "add",
                    "gallery": "demo",
                    "images": [b64(v) for v in gallery.values()],
                    "labels": list(gallery),
                }
            )
        print(f"gallery 'demo': {len(gallery)} photos, labels {sorted(gallery)}", file=sys.stderr)
        for name, img in query_photos(gallery).items():
            answer = call({"images": [b64(img)], "gallery": "demo"})[0]  # type: ignore[index]
            report(name, img, [Recognition.from_dict(r) for r in answer["results"]], out_dir, as_json)
        print(f"annotated images written to {out_dir / 'annotated'}", file=sys.stderr)
        if serve:
            print(f"web page: {url}/web/  (gallery 'demo'; Ctrl-C stops the server)", flush=True)
            proc.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        if proc is not None:
            hub_serving.stop(proc)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return 0


def _example_photos(folder: Path) -> None:
    """Leave the demo photographs beside the answers, for trying ``shitu recognize`` next."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        write_photos(folder)


def write_photos(folder: Path) -> int:
    """Save the demo's gallery photographs and queries as JPEG files (the README's example photos)."""
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gallery = gallery_photos()
    for name, img in {**gallery, **query_photos(gallery)}.items():
        cv2.imwrite(str(folder / f"{name}.jpg"), img)
        print(folder / f"{name}.jpg")
    print(
        f"example photos in {folder}; try: shitu recognize {folder / 'collage_cat_and_coffee.jpg'}   "
        f"(general-lite's demo gallery holds {', '.join(sorted(gallery))})",
        file=sys.stderr,
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.photos:
        return write_photos(Path(args.photos))
    if args.in_process:
        return run_demo(Path(args.out), args.json)
    return run_served_demo(Path(args.out), args.json, serve=args.serve)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="recognise the demo photographs with the embedded default models",
        description="Start hub serving on the embedded general-lite models, add the demo photographs (scikit-image "
        "and scikit-learn sample images) to the gallery 'demo', recognise other views of them and print "
        "the answers; annotated copies go to OUT/annotated. With --photos DIR, only write the "
        "photographs (gallery and queries) as JPEG files, e.g. to try `shitu recognize` on them.",
    )
    p.add_argument(
        "--out", default="demo_output", help="folder for the gallery and annotated images (default: %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="JSON lines instead of tables")
    p.add_argument("--in-process", action="store_true", help="run the engine in this process, without hub serving")
    p.add_argument(
        "--serve",
        action="store_true",
        help="then print the web page's URL and keep serving until Ctrl-C (not with --in-process)",
    )
    p.add_argument("--photos", metavar="DIR", help="write the demo photographs to DIR as JPEG files and stop")
    p.set_defaults(func=_run)
