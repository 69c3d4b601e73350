"""shitu-hub vs PaddleClas's own PP-ShiTu pipeline (``deploy/python/predict_system.py``), per stage and end to end.

    python benchmarks/bench_vs_paddleclas.py [--repeat 5] [--threads 2] [--onednn off,on] [--json OUT]

Both sides run in this one process on the same official-format models (``../shared/official_format/legacy``:
PicoDet mainbody detector + PP-LCNetV2_base recogniser; PaddleClas 2.6.0 loads ``.pdmodel`` on paddle 3.3.1 only
with ``FLAGS_enable_pir_api=0``, set here before paddle is imported), the same decoded photographs, the same
``cpu_num_threads`` and the same gallery: PaddleClas's ``GalleryBuilder`` (``build_gallery.py``) writes its
``vector.index`` + ``id_map.pkl``, and shitu-hub imports those very vectors (``shitu gallery import``'s code), so
both search identical vectors with faiss. Parameters are ``inference_general.yaml``'s (threshold 0.2, 5 boxes,
whole image appended, rec-NMS 0.05, score_thres 0.5, top-5).

PaddleClas is driven through ``SystemPredictor.predict``, its stages timed by wrapping its own methods:
``det_preprocess`` = ``DetPredictor.preprocess``, ``det_postprocess`` = ``parse_det_results``, ``det_forward`` = the
rest of ``DetPredictor.predict`` (input copy, run, output copy, and the line it prints per call: stdout goes to
/dev/null on both sides), ``rec_preprocess`` = its ``preprocess_ops``, ``rec_forward`` = the rest of
``RecPredictor.predict`` (run, normalisation), ``search`` = ``Searcher.search``; ``other`` = end-to-end minus those
(crops, rec-NMS, Python glue); ``e2e_cpu`` is the process's CPU time (all threads) per photo, steadier than the
wall clock on a shared machine. shitu-hub's stages come from the engine's own ``StageTimer``. PaddleClas's
``predict_system`` raises on a box with negative coordinates (it cannot crop it); as in the parity test, its
detector's boxes are clipped to the image (inside the timed ``det_postprocess``), shitu-hub's one intended
difference. Both sides get the image already decoded (PaddleClas as its ``main`` reads it: ``cv2.imread()[:, :,
::-1]``). Each round runs every photo through both sides, alternating which goes first; medians are reported.

oneDNN: ``on`` (the default) gives PaddleClas ``enable_mkldnn: True`` (paddle's default pass list, as PaddleClas
does) and shitu-hub the pass list that ``shitu.serving.engine.onednn.verify`` records for each model (a temporary
``SHITU_HOME``). ``off`` gives both ``enable_mkldnn: False``, but on paddle 3.x that does not turn oneDNN off for
PaddleClas: paddle's CPU ``Config`` starts with oneDNN on and PaddleClas's ``Predictor`` never calls
``disable_mkldnn()`` (the table prints the state its predictors report), while shitu-hub really runs without it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["FLAGS_enable_pir_api"] = "0"  # before paddle is imported: PaddleClas's predictors need it for .pdmodel
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import describe, machine, table, write_json  # noqa: E402
from paddleclas_config import DET, OFFICIAL, REC, SETTINGS, paddleclas_config  # noqa: E402

LEGACY = OFFICIAL / "legacy"  # the layout PaddleClas 2.6.0 loads (.pdmodel)

STAGES = ["det_preprocess", "det_forward", "det_postprocess", "rec_preprocess", "rec_forward", "search", "other"]


class Clock:
    """Seconds per stage of one call; :meth:`wrap` times a callable into a stage."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.values[stage] = self.values.get(stage, 0.0) + seconds

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - t)

        return timed


class TimedSearcher:
    """A faiss index whose ``search`` is timed into ``search``."""

    def __init__(self, index: Any, clock: Clock):
        self.search = clock.wrap("search", index.search)


def instrument_paddleclas(system: Any) -> Clock:
    """Wrap the stages of a PaddleClas ``SystemPredictor`` (see the module doc); the clock is reset per call."""
    import numpy as np

    clock = Clock()
    det, rec = system.det_predictor, system.rec_predictor
    det_predict, rec_predict, parse = det.predict, rec.predict, det.parse_det_results
    current: dict[str, Any] = {}

    def parse_clipped(pred: Any, threshold: float, labels: list[str]) -> list[dict[str, Any]]:
        out = parse(pred, threshold, labels)
        h, w = current["shape"][:2]
        for r in out:  # shitu-hub's one intended difference (PaddleClas cannot crop a box outside the image)
            r["bbox"] = np.clip(r["bbox"], 0, [w, h, w, h])
        return out

    det.preprocess = clock.wrap("det_preprocess", det.preprocess)
    det.parse_det_results = clock.wrap("det_postprocess", parse_clipped)
    det.predict = clock.wrap("_det", det_predict)
    rec.preprocess_ops = [clock.wrap("rec_preprocess", op) for op in rec.preprocess_ops]
    rec.predict = clock.wrap("_rec", rec_predict)
    system.Searcher = TimedSearcher(system.Searcher, clock)
    inner = system.predict

    def predict(img: Any) -> Any:
        clock.values = {}
        current["shape"] = img.shape
        return inner(img)

    system.predict = predict
    return clock


def paddleclas_system(system_class: Any, cfg: Any) -> tuple[Any, list[bool]]:
    """PaddleClas's ``SystemPredictor(cfg)`` and whether each paddle predictor it created has oneDNN on (read from
    the ``paddle.inference.Config`` handed to ``create_predictor``: PaddleClas keeps no reference to it)."""
    from paddleclas.deploy.utils import predictor as pc_predictor

    create, states = pc_predictor.create_predictor, []

    def recording(config: Any) -> Any:
        states.append(bool(config.mkldnn_enabled()))
        return create(config)

    pc_predictor.create_predictor = recording
    try:
        return system_class(cfg), states
    finally:
        pc_predictor.create_predictor = create


def paddleclas_stages(values: dict[str, float], total: float) -> dict[str, float]:
    v = dict(values)
    det, rec = v.pop("_det", 0.0), v.pop("_rec", 0.0)
    out = {s: v.get(s, 0.0) for s in STAGES}
    out["det_forward"] = det - out["det_preprocess"] - out["det_postprocess"]
    out["rec_forward"] = rec - out["rec_preprocess"]
    out["other"] = total - sum(out[s] for s in STAGES if s != "other")
    return out


def ours_stages(values: dict[str, float], total: float) -> dict[str, float]:
    out = {s: values.get(s, 0.0) for s in STAGES if s != "other"}
    out["other"] = total - sum(out.values())
    return out


def photos() -> dict[str, Any]:
    from shitu.serving.cli.demo import gallery_photos, query_photos

    g = gallery_photos()
    return {**{f"gallery_{k}": v for k, v in g.items()}, **query_photos(g)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="rounds over all photos per oneDNN setting")
    ap.add_argument("--threads", type=int, default=2, help="Global.cpu_num_threads of both sides")
    ap.add_argument("--onednn", default="on", help="oneDNN settings to compare: on, off or off,on (see above)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if not (LEGACY / DET).is_dir():
        print(f"skipped: {LEGACY} not found")
        return 0
    try:
        from paddleclas.deploy.python.build_gallery import GalleryBuilder
        from paddleclas.deploy.python.predict_system import SystemPredictor
    except ImportError:
        print("skipped: paddleclas is not installed (pip install --no-deps paddleclas==2.6.0)")
        return 0
    import cv2

    tmp = Path(tempfile.mkdtemp(prefix="bench-vs-paddleclas-"))
    os.environ["SHITU_HOME"] = str(tmp / "shitu_home")

    from paddleclas.deploy.utils import config as pc_config

    from shitu.model_spec import ModelSpec
    from shitu.params import merge
    from shitu.serving.cli.demo import gallery_photos
    from shitu.serving.engine import onednn as onednn_check
    from shitu.serving.engine.engine import Engine
    from shitu.serving.engine.timing import StageTimer
    from shitu.serving.gallery.local import Gallery
    from shitu.serving.gallery.paddleclas_index import import_paddleclas_index

    (tmp / "gallery").mkdir(parents=True)
    lines = []
    for label, img in gallery_photos().items():
        cv2.imwrite(str(tmp / "gallery" / f"{label}.png"), img)
        lines.append(f"{label}.png\t{label}")
    list_file = tmp / "gallery" / "list.txt"
    list_file.write_text("\n".join(lines) + "\n")
    images = photos()
    info = machine()
    settings = [s.strip() for s in args.onednn.split(",") if s.strip()]
    specs = {
        "detector": ModelSpec.from_dir(LEGACY / DET, "detector"),
        "extractor": ModelSpec.from_dir(LEGACY / REC, "extractor"),
    }
    print(describe(info, f"{args.threads} threads; {len(images)} photos x {args.repeat} rounds per side"))
    out: dict[str, Any] = {
        "machine": info,
        "threads": args.threads,
        "repeat": args.repeat,
        "photos": {k: list(v.shape) for k, v in images.items()},
        "settings": {},
    }
    summary: list[dict[str, str]] = []
    devnull = open(os.devnull, "w")
    built_index = False
    for setting in settings:
        on = setting == "on"
        verified = {kind: (onednn_check.verify(spec)["ok"] if on else False) for kind, spec in specs.items()}
        cfg_file = tmp / f"inference_general_{setting}.yaml"
        import yaml

        cfg_file.write_text(yaml.safe_dump(paddleclas_config(tmp, list_file, args.threads, on)))
        cfg = pc_config.get_config(str(cfg_file), show=False)
        with contextlib.redirect_stdout(devnull):
            if not built_index:
                GalleryBuilder(cfg)  # PaddleClas's own gallery build; shitu-hub imports the same vectors
                import_paddleclas_index(tmp / "index", tmp / "ours_gallery")
                built_index = True
            system, states = paddleclas_system(SystemPredictor, cfg)
        theirs_onednn = all(states)
        clock = instrument_paddleclas(system)
        params = merge(
            {
                "Global": {
                    "threshold": SETTINGS["threshold"],
                    "max_det_results": SETTINGS["max_det_results"],
                    "rec_nms_thresold": SETTINGS["rec_nms_thresold"],
                    "enable_mkldnn": on,
                    "cpu_num_threads": args.threads,
                },
                "IndexProcess": {"score_thres": SETTINGS["score_thres"], "return_k": SETTINGS["return_k"]},
            }
        )
        engine = Engine(specs["detector"], specs["extractor"], params)
        gallery = Gallery.open(tmp / "ours_gallery")

        def run_theirs(img: Any) -> tuple[dict[str, float], list[str]]:
            rgb = img[:, :, ::-1]
            t, c = time.perf_counter(), time.process_time()
            found = system.predict(rgb)
            total, cpu = time.perf_counter() - t, time.process_time() - c
            return (
                {**paddleclas_stages(clock.values, total), "e2e": total, "e2e_cpu": cpu},
                sorted(r["rec_docs"] for r in found),
            )

        def run_ours(img: Any) -> tuple[dict[str, float], list[str]]:
            timer = StageTimer()
            t, c = time.perf_counter(), time.process_time()
            found = engine.recognize([img], gallery=gallery, timer=timer)[0]
            total, cpu = time.perf_counter() - t, time.process_time() - c
            return {**ours_stages(timer.values, total), "e2e": total, "e2e_cpu": cpu}, sorted(r.label for r in found)

        samples: dict[str, dict[str, list[float]]] = {
            side: {s: [] for s in [*STAGES, "e2e", "e2e_cpu"]} for side in ("ours", "theirs")
        }
        agree = 0
        with contextlib.redirect_stdout(devnull):
            for img in images.values():  # warm-up (oneDNN prepares kernels per shape), answers compared
                _, mine = run_ours(img)
                _, ref = run_theirs(img)
                agree += mine == ref
            for r in range(args.repeat):
                for i, img in enumerate(images.values()):
                    order = (("ours", run_ours), ("theirs", run_theirs))
                    for side, fn in order if (r + i) % 2 == 0 else order[::-1]:
                        stages, _ = fn(img)
                        for s, v in stages.items():
                            samples[side][s].append(v)
        med = {side: {s: statistics.median(v) * 1000 for s, v in per.items()} for side, per in samples.items()}
        rows = [
            [
                s,
                med["ours"][s],
                med["theirs"][s],
                med["ours"][s] / med["theirs"][s] if med["theirs"][s] > 1e-6 else float("nan"),
            ]
            for s in [*STAGES, "e2e", "e2e_cpu"]
        ]
        print(
            f"\noneDNN {setting} (shitu-hub: verified detector {verified['detector']}, recogniser "
            f"{verified['extractor']}; PaddleClas's predictors report oneDNN {'on' if theirs_onednn else 'off'}); "
            f"same labels on {agree} of {len(images)} photos"
        )
        print(table(["stage (median per photo)", "shitu-hub ms", "PaddleClas ms", "ours / theirs"], rows))
        out["settings"][setting] = {
            "verified": verified,
            "paddleclas_onednn_effective": theirs_onednn,
            "same_labels": agree,
            "photos": len(images),
            "median_ms": med,
            "ours_over_theirs": {r[0]: r[3] for r in rows},
        }
        e2e = med["ours"]["e2e"] / med["theirs"]["e2e"]
        summary.append(
            {
                "what": f"shitu-hub / PaddleClas predict_system end-to-end, oneDNN {setting}, {args.threads} threads",
                "figure": f"{e2e:.2f}x ({med['ours']['e2e']:.1f} vs {med['theirs']['e2e']:.1f} ms)",
            }
        )
        cpu = med["ours"]["e2e_cpu"] / med["theirs"]["e2e_cpu"]
        summary.append(
            {
                "what": f"shitu-hub / PaddleClas predict_system CPU time per photo, oneDNN {setting}",
                "figure": f"{cpu:.2f}x ({med['ours']['e2e_cpu']:.1f} vs {med['theirs']['e2e_cpu']:.1f} ms)",
            }
        )
        for stage in ("det_preprocess", "det_forward", "rec_forward"):
            summary.append(
                {
                    "what": f"shitu-hub / PaddleClas {stage}, oneDNN {setting}",
                    "figure": f"{rows[STAGES.index(stage)][3]:.2f}x ({med['ours'][stage]:.1f} vs "
                    f"{med['theirs'][stage]:.1f} ms)",
                }
            )
        engine.close()
        gallery.close()
    out["summary"] = summary
    print("\n" + table(["what", "figure"], [[s["what"], s["figure"]] for s in summary]))
    write_json("vs_paddleclas", out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
