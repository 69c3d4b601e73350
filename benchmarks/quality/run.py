"""Recognition quality of a scenario pack on a cross-style retrieval set, in one command.

    python benchmarks/quality/run.py [--classes 80] [--seed 0] [--scenes-per-class 1] [--scenario general-lite]
                                     [--sweep] [--json OUT]
    python benchmarks/quality/run.py --write-gallery DIR; shitu adapt DIR/gallery.txt --out REC;
    python benchmarks/quality/run.py --adapted REC        # adds a row for the adapted recogniser

Builds the set of :mod:`dataset` (Debian icon themes + scikit photos; it says which package to install when one is
missing) and, for each gallery framing (``margin``: icons on a white margin, ``tight``: cut to the object; with
``--reverse`` the same for the other style pair), builds a real faiss ``Flat`` gallery through ``Engine.gallery_add``
(which records the gallery's framing rule and ``score_thres: auto``) and prints:

- **pipeline** tables per framing for the pack as shipped and as general-lite 1.2.0 had it (``1.2.0``; with
  ``--history`` also 1.1.0 and 1.0.0 ``before``): R@1 on ``alone`` queries (the whole image, framed by the
  gallery's rule), ``scene`` queries (the real ``Engine.recognize`` path: detection, crops, search, rec-NMS; R@1 =
  the best recognition's label, R@5 = the true label among the five best distinct labels of every searched box),
  ``true box`` (the pasted object's box, cropped by the gallery's rule), detector recall (a kept box with IoU >=
  0.5), the framing rule, ``score_thres`` as resolved for the gallery, the scene queries *answered* (top-1 score >=
  it), their precision and recall (right answers / all queries), and the median latency per scene image;
- a precision / recall curve of the scene queries per framing (``--pr-png``, matplotlib; skipped with a note when
  it is not installed), and the tables as markdown (``--markdown FILE``, ``--update-doc docs/quality.md``);
- detector recall at IoU >= 0.5 in the top-k per threshold and minimum relative box size (raw boxes cached);
- with ``--sweep``: the measurements behind the embedding defaults, from cached feature maps: pooling / input
  size / flip averaging / stretched or square crops / centring and whitening (R@1 alone and oracle, latency per
  crop), and the same/different score distributions with the threshold that reaches 90 % precision.

Scores are ranked without ``score_thres`` for R@k (a ranking measure); the threshold is reported separately.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import dataset  # noqa: E402
from common import describe, machine, table, write_json  # noqa: E402

#: general-lite 1.0.0 and 1.1.0 stretched crops to 224 x 224 (1.2.0 pads them to a square first).
STRETCH_OPS: list[dict[str, Any]] = [
    {"ResizeImage": {"size": [224, 224], "interpolation": "bilinear"}},
    {
        "NormalizeImage": {
            "scale": 1.0,
            "mean": [103.53, 116.28, 123.675],
            "std": [57.375, 57.12, 58.395],
            "order": "hwc",
        }
    },
    {"ToCHWImage": None},
]
#: The general-lite settings before issue #18 (GAP pooling, threshold 0.3, 5 boxes, no relative size floor).
BEFORE: dict[str, Any] = {
    "Global.threshold": 0.3,
    "Global.max_det_results": 5,
    "Global.min_box_size": 4,
    "Global.min_box_ratio": 0.0,
    "Global.crop_padding": 0.0,
    "RecPostProcess.pooling": "gap",
    "RecPostProcess.flip_average": False,
    "IndexProcess.score_thres": 0.8,
    "RecPreProcess.transform_ops": STRETCH_OPS,
    "RecPostProcess.centering": None,
    "Global.framing": "whole_image",
}
#: general-lite 1.1.0 (GeM, detector threshold 0.2, min_box_ratio 0.1, crop_padding 0.1; stretched, not centred).
V110: dict[str, Any] = {
    "RecPreProcess.transform_ops": STRETCH_OPS,
    "RecPostProcess.centering": None,
    "Global.crop_padding": 0.1,
    "IndexProcess.score_thres": 0.9,
    "Global.framing": "whole_image",
}
#: general-lite 1.2.0 (square centred crops, crop_padding 0.2, score_thres 0.5; galleries embed whole images).
V120: dict[str, Any] = {"Global.framing": "whole_image", "Global.crop_padding": 0.2, "IndexProcess.score_thres": 0.5}
#: Parameters that shape how a gallery is built (given at load time, recorded in the gallery, issue #28).
GALLERY_TIME = ("Global.framing", "Global.crop_padding")


def _known(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings this version of the schema has (the benchmark also runs on older checkouts)."""
    from shitu.params.schema import BY_NAME

    return {k: v for k, v in settings.items() if k in BY_NAME}


TARGET_PRECISION = 0.9


def iou(a: np.ndarray, b: list[float]) -> np.ndarray:
    """IoU of boxes ``a`` [n, 4] with one box ``b``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[:, 2], b[2]) - np.maximum(a[:, 0], b[0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[3]) - np.maximum(a[:, 1], b[1]), 0, None)
    inter = w * h
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / np.maximum(union, 1e-9)


def rank_at(scores: np.ndarray, labels: list[str], truth: list[str]) -> tuple[float, float, list[float], list[bool]]:
    """R@1, R@5 of a [queries, gallery] score matrix (one gallery image per label); top-1 scores and correctness."""
    order = np.argsort(-scores, axis=1)
    top1 = [labels[o[0]] == t for o, t in zip(order, truth)]
    top5 = [t in {labels[i] for i in o[:5]} for o, t in zip(order, truth)]
    best = scores[np.arange(len(scores)), order[:, 0]].tolist()
    return float(np.mean(top1)), float(np.mean(top5)), best, top1


def calibrate(best: list[float], right: list[bool], precision: float = TARGET_PRECISION) -> float:
    """Lowest threshold whose accepted top-1 answers are right at least ``precision`` of the time."""
    pairs = sorted(zip(best, right), reverse=True)
    chosen = 1.0
    ok = 0
    for n, (score, good) in enumerate(pairs, 1):
        ok += good
        if ok / n >= precision:
            chosen = score
    return round(float(chosen), 3)


# -- the real pipeline ------------------------------------------------------------------------------------------
def pipeline_report(
    engine: Any, qs: dataset.QualitySet, settings: dict[str, Any], gallery_images: list[np.ndarray]
) -> dict[str, Any]:
    """R@k alone / scene / oracle, detector recall, answered queries and their precision and recall through
    ``Engine`` as a caller uses it: the gallery built by ``Engine.gallery_add`` (which records its framing rule),
    queries cropped by that gallery's rule, ``score_thres`` resolved for that gallery (``auto``)."""
    from shitu.serving.engine.framing import frame_box

    p = engine.params.override(settings)
    index = flat_gallery(engine.embedding_size)
    engine.gallery_add(gallery_images, qs.labels, gallery=index.path)
    index.close()
    index = engine.gallery(index.path)
    framing = engine.rules.framing(index)
    thres = engine.rules.apply(p, index)["IndexProcess.score_thres"]

    def embed(images: list[np.ndarray]) -> np.ndarray:
        return engine.extractor.embed(images, p)

    alone = index.search(engine.rules.embedder(index, embed)(qs.alone), 5)
    oracle_crops = [frame_box(s.image, s.box, False, framing, engine.rules.fill) for s in qs.scenes]
    oracle = index.search(embed(oracle_crops), 5)
    scene_r1, scene_r5, recall, times, crops, best = [], [], [], [], [], []
    for s in qs.scenes:
        t0 = time.perf_counter()
        recs, expl = engine.recognize_explained(
            [s.image], index, **_per_request(settings, return_k=5, score_thres=-1.0)
        )[0]
        times.append(time.perf_counter() - t0)
        crops.append(len(expl.searched))
        boxes = np.array([b.bbox for b in expl.searched if not b.is_whole_image] or np.zeros((0, 4)))
        recall.append(bool(len(boxes)) and bool((iou(boxes, s.box) >= 0.5).any()))
        scene_r1.append(bool(recs) and recs[0].label == s.label)
        best.append(recs[0].score if recs else float("-inf"))
        cands = sorted(((m.score, m.label) for b in expl.searched for m in b.matches), reverse=True)
        distinct = list(dict.fromkeys(lab for _, lab in cands))[:5]
        scene_r5.append(s.label in distinct)
    answered = {
        "scene": answered_stats(best, scene_r1, thres),
        "alone": answered_stats(
            [m[0].score for m in alone], [m[0].label == t for m, t in zip(alone, qs.labels)], thres
        ),
        "oracle": answered_stats(
            [m[0].score for m in oracle], [m[0].label == s.label for m, s in zip(oracle, qs.scenes)], thres
        ),
    }
    return {
        "alone_r1": float(np.mean([m[0].label == t for m, t in zip(alone, qs.labels)])),
        "alone_r5": float(np.mean([t in {x.label for x in m} for m, t in zip(alone, qs.labels)])),
        "scene_r1": float(np.mean(scene_r1)),
        "scene_r5": float(np.mean(scene_r5)),
        "oracle_r1": float(np.mean([m[0].label == s.label for m, s in zip(oracle, qs.scenes)])),
        "oracle_r5": float(np.mean([s.label in {x.label for x in m} for m, s in zip(oracle, qs.scenes)])),
        "det_recall": float(np.mean(recall)),
        "framing": framing.as_dict(),
        "score_thres": float(thres),
        "answered": answered,
        # scene answers (as before): share answered and their precision
        "accepted": answered["scene"]["answered"],
        "precision_accepted": answered["scene"]["precision"],
        "recall_answered": answered["scene"]["recall"],
        "scene_scores": [[float(b), bool(r)] for b, r in zip(best, scene_r1)],
        "median_ms_per_scene": statistics.median(times) * 1000,
        "crops_per_scene": float(np.mean(crops)),
    }


def answered_stats(scores: list[float], right: list[bool], thres: float) -> dict[str, float]:
    """Queries whose top-1 answer passes ``thres``: their share, precision (right among them) and recall (right
    answers among all queries)."""
    ok = [s >= thres for s in scores]
    n_ok = sum(ok)
    good = sum(o and r for o, r in zip(ok, right))
    return {
        "answered": n_ok / max(len(scores), 1),
        "precision": good / n_ok if n_ok else float("nan"),
        "recall": good / max(len(scores), 1),
    }


def pr_curve(scores: list[list[Any]]) -> tuple[list[float], list[float]]:
    """Precision and recall of answered queries as the threshold falls through the top-1 scores."""
    pairs = sorted(((s, r) for s, r in scores if s != float("-inf")), key=lambda t: -t[0])
    precision, recall, ok = [], [], 0
    for n, (_, r) in enumerate(pairs, 1):
        ok += r
        precision.append(ok / n)
        recall.append(ok / max(len(scores), 1))
    return precision, recall


def plot_pr(out: dict[str, Any], path: Path) -> str:
    """A precision / recall PNG per framing (scene queries, every setting; a dot at its ``score_thres``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "precision/recall curve not drawn: matplotlib is not installed (pip install matplotlib)"
    sets = out["framings"]
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    for ax, (name, runs) in zip(axes[0], sets.items()):
        for setting, r in runs.items():
            prec, rec = pr_curve(r["scene_scores"])
            (line,) = ax.plot(rec, prec, label=setting)
            a = r["answered"]["scene"]
            if a["answered"]:
                ax.plot([a["recall"]], [a["precision"]], "o", color=line.get_color())
        ax.set_title(f"{name}: scene queries")
        ax.set_xlabel("recall (right answers / queries)")
        ax.set_ylabel("precision of answered")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return f"precision/recall curve: {path}"


def flat_gallery(dim: int) -> Any:
    """A real gallery (SQLite + faiss ``Flat``, IP) in a temporary folder removed at exit."""
    import atexit
    import shutil
    import tempfile

    from shitu.serving.gallery import Gallery

    folder = tempfile.mkdtemp(prefix="quality-gallery-")
    atexit.register(shutil.rmtree, folder, True)
    return Gallery.create(Path(folder) / "g", dim, index_method="Flat")


def latency(
    engines: dict[str, tuple[Any, dict[str, Any]]], qs: dataset.QualitySet, index: Any, rounds: int
) -> dict[str, float]:
    """Median ms per scene image for each setting, interleaved image by image (a shared CPU's load hits all)."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for s in qs.scenes:
            for name, (engine, settings) in engines.items():
                t0 = time.perf_counter()
                engine.recognize([s.image], index, **_per_request(settings))
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) * 1000 for name, v in times.items()}


def dataset_crop(image: np.ndarray, box: list[float], padding: float = 0.0) -> np.ndarray:
    """The pipeline's crop of ``box`` (widened by ``Global.crop_padding``)."""
    from shitu.serving.engine.extraction import crop

    return crop(image, box, padding) if padding else crop(image, box)


def _per_request(settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Per-request overrides (load-time parameters are set on the engine instead)."""
    from shitu.params.schema import BY_NAME

    out = {k.split(".")[1]: v for k, v in settings.items() if BY_NAME[k].per_request}
    out.update(extra)
    return out


# -- the sweep -------------------------------------------------------------------------------------------------
def feature_maps(
    extractor: Any, images: list[np.ndarray], size: int, flip: bool = False, square: bool = False
) -> np.ndarray:
    """Backbone feature maps ``[n, C, h, w]`` at input ``size`` (the pack's normalisation); ``square``: padded to a
    square with the normalisation mean first (``PadToSquare``), else stretched."""
    import cv2

    from shitu.serving.engine.transforms import Sample, pad_to_square

    norm = [op for op in extractor.spec.transform_ops if "NormalizeImage" in op][0]["NormalizeImage"]
    mean, std = np.array(norm["mean"], np.float32), np.array(norm["std"], np.float32)
    out = []
    for i in range(0, len(images), 8):
        batch = []
        for img in images[i : i + 8]:
            if square:
                img = pad_to_square(norm["mean"])(Sample(img, img.shape[:2])).image
            x = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32)
            if flip:
                x = x[:, ::-1]
            batch.append(((x * norm.get("scale", 1.0) - mean) / std).transpose(2, 0, 1))
        res = extractor.predictor.run({extractor.predictor.input_names[0]: np.ascontiguousarray(np.stack(batch))})
        out.append(res[extractor.predictor.output_names[0]])
    return np.concatenate(out)


def sweep(engine: Any, qs: dataset.QualitySet) -> dict[str, Any]:
    from shitu.serving.engine.centering import generic_images
    from shitu.serving.engine.extraction import l2_normalize, pool

    ex = engine.extractor
    oracle_crops = [dataset_crop(s.image, s.box) for s in qs.scenes]
    truth_o = [s.label for s in qs.scenes]
    emb_rows, emb = [], {}
    sets = (("g", qs.gallery), ("a", qs.alone), ("o", oracle_crops))
    generic: dict[bool, np.ndarray] = {}

    def add_row(name: str, f: dict[str, np.ndarray], per_crop: float) -> None:
        a1, a5, a_best, a_ok = rank_at(f["a"] @ f["g"].T, qs.labels, qs.labels)
        o1, o5, o_best, o_ok = rank_at(f["o"] @ f["g"].T, qs.labels, truth_o)
        emb_rows.append([name, a1, a5, o1, o5, per_crop * 1000])
        emb[name] = {
            "alone_r1": a1,
            "alone_r5": a5,
            "oracle_r1": o1,
            "oracle_r5": o5,
            "ms_per_crop": per_crop * 1000,
            "best": a_best + o_best,
            "right": a_ok + o_ok,
            "gallery_pairs": _pair_scores(f["g"]),
        }

    for square in (False, True):
        for size in (224, 288):
            for flip in (False, True):
                t0 = time.perf_counter()
                maps = {k: feature_maps(ex, imgs, size, square=square) for k, imgs in sets}
                per_crop = (time.perf_counter() - t0) / sum(len(v) for v in maps.values())
                if flip:
                    maps_f = {k: feature_maps(ex, imgs, size, flip=True, square=square) for k, imgs in sets}
                    per_crop *= 2
                for method, power in (("gap", 1.0), ("gem", 2.0), ("gem", 3.0), ("gem", 4.0)):
                    f = {k: pool(v, method, power) for k, v in maps.items()}
                    if flip:
                        f = {k: v + pool(maps_f[k], method, power) for k, v in f.items()}
                    f = {k: l2_normalize(v) for k, v in f.items()}
                    name = (
                        f"{method}{'' if method == 'gap' else f' p={power:g}'} {size}"
                        f"{' square' if square else ''}{' +flip' if flip else ''}"
                    )
                    add_row(name, f, per_crop)
                    if (size, flip, method, power) == (224, False, "gem", 3.0):
                        # centring and PCA whitening, estimated here on the generic photo crops (as shipped)
                        generic[square] = l2_normalize(
                            pool(feature_maps(ex, generic_images(0), 224, square=square), "gem", 3.0)
                        )
                        mean = generic[square].mean(axis=0)
                        add_row(f"{name} +centre", {k: l2_normalize(v - mean) for k, v in f.items()}, per_crop)
                        _, sv, vt = np.linalg.svd(generic[square] - mean, full_matrices=False)
                        lam = sv[:96] ** 2 / len(generic[square])
                        w = vt[:96].T / np.sqrt(lam + lam.mean())
                        add_row(
                            f"{name} +centre +whiten96",
                            {k: l2_normalize((v - mean) @ w) for k, v in f.items()},
                            per_crop,
                        )
    return {"embedding": emb, "embedding_rows": emb_rows}


def detector_recall(engine: Any, qs: dataset.QualitySet) -> dict[str, Any]:
    """Recall at IoU >= 0.5 in the top-k per threshold and minimum relative box size (raw boxes once per scene)."""
    raws = [engine.detector.raw(s.image, engine.params["Global.det_nms_threshold"]) for s in qs.scenes]
    det_rows, det = [], {}
    for thr in (0.3, 0.2, 0.1, 0.05):
        for ratio in (0.0, 0.05, 0.1):
            hits = {1: [], 5: [], 10: [], "all": []}
            small_kept = 0
            kept_total = 0
            for s, raw in zip(qs.scenes, raws):
                h, w = s.image.shape[:2]
                side = np.minimum(raw.xyxy[:, 2] - raw.xyxy[:, 0], raw.xyxy[:, 3] - raw.xyxy[:, 1])
                ok = (raw.scores >= thr) & (side >= max(4, ratio * min(h, w)))
                idx = np.nonzero(ok)[0]
                idx = idx[np.argsort(-raw.scores[idx], kind="stable")]
                good = iou(raw.xyxy[idx], s.box) >= 0.5
                for k in (1, 5, 10):
                    hits[k].append(bool(good[:k].any()))
                hits["all"].append(bool(good.any()))
                kept_total += min(len(idx), 5)
                small_kept += int((side[idx[:5]] < 32).sum())
            row = {f"top{k}": float(np.mean(v)) for k, v in hits.items()}
            row["small_share_top5"] = small_kept / max(kept_total, 1)
            det[f"thr={thr} ratio={ratio}"] = row
            det_rows.append(
                [thr, ratio, row["top1"], row["top5"], row["top10"], row["topall"], row["small_share_top5"]]
            )
    return {"detector": det, "detector_rows": det_rows}


def _pair_scores(g: np.ndarray) -> dict[str, float]:
    s = g @ g.T
    off = s[~np.eye(len(g), dtype=bool)]
    return {
        "median": float(np.median(off)),
        "p99": float(np.percentile(off, 99)),
        "share_ge_0.8": float((off >= 0.8).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--scenes-per-class",
        type=int,
        default=1,
        help="scene queries per object (3: 219 scenes, R@1 steps of 0.005 instead of 0.014)",
    )
    ap.add_argument("--scenario", default=None)
    ap.add_argument("--sweep", action="store_true", help="also print the measurements behind the defaults")
    ap.add_argument("--skip-before", action="store_true", help="only the pack as shipped")
    ap.add_argument("--history", action="store_true", help="also general-lite 1.0.0 (before) and 1.1.0")
    ap.add_argument("--reverse", action="store_true", help="also the other style pair (gallery and queries swapped)")
    ap.add_argument(
        "--pr-png", default=str(HERE.parent / "results" / "quality_pr.png"), help="precision/recall curve (PNG)"
    )
    ap.add_argument("--markdown", metavar="FILE", help="also write the per-framing tables as markdown")
    ap.add_argument(
        "--update-doc", metavar="MD", help=f"replace the tables between {DOC_MARKS[0]} and {DOC_MARKS[1]} in MD"
    )
    ap.add_argument(
        "--latency-rounds",
        type=int,
        default=1,
        help="passes over the scenes timing each setting in turn (0: time the quality pass only)",
    )
    ap.add_argument(
        "--adapted",
        metavar="DIR",
        help="also measure a recogniser written by `shitu adapt` (train "
        "it on the set's gallery: --write-gallery, then shitu adapt LIST --out DIR)",
    )
    ap.add_argument("--write-gallery", metavar="DIR", help="write the gallery as a PaddleClas list file and exit")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    try:
        qs = dataset.build(args.classes, args.scenes_per_class, args.seed)
    except dataset.MissingData as exc:
        print(f"cannot build the set: {exc}", file=sys.stderr)
        return 2
    if args.write_gallery:
        print(dataset.write_list_file(qs, Path(args.write_gallery)))
        return 0
    from shitu.serving.engine import load_engine

    info = machine()
    print(describe(info, qs.describe()))
    out: dict[str, Any] = {"machine": info, "set": qs.describe(), "seed": args.seed}
    if args.sweep:
        engine = load_engine(args.scenario, params={"Global.cpu_num_threads": 1})
        sw = sweep(engine, qs)
        print("\nEmbedding (R@k on alone queries and oracle boxes; ms per crop, 1 thread, batches of 8):")
        print(table(["variant", "alone R@1", "alone R@5", "oracle R@1", "oracle R@5", "ms/crop"], sw["embedding_rows"]))
        print("\nScores (top-1 answers over alone + oracle queries; different gallery pairs):")
        rows = []
        for name, e in sw["embedding"].items():
            right = [b for b, r in zip(e["best"], e["right"]) if r]
            wrong = [b for b, r in zip(e["best"], e["right"]) if not r]
            rows.append(
                [
                    name,
                    statistics.median(right) if right else float("nan"),
                    statistics.median(wrong) if wrong else float("nan"),
                    e["gallery_pairs"]["p99"],
                    e["gallery_pairs"]["share_ge_0.8"],
                    calibrate(e["best"], e["right"]),
                ]
            )
            e["thres_p90"] = rows[-1][-1]
            del e["best"], e["right"]
        print(
            table(
                [
                    "variant",
                    "right median",
                    "wrong median",
                    "pairs p99",
                    "pairs >= 0.8",
                    f"thres @{TARGET_PRECISION:.0%}",
                ],
                rows,
            )
        )
        out["sweep"] = {"embedding": sw["embedding"]}
        engine.close()
    engine = load_engine(args.scenario, params={"Global.cpu_num_threads": 1})
    det = detector_recall(engine, qs)
    engine.close()
    print("\nDetector recall (a box with IoU >= 0.5 among the top-k kept; small = short side < 32 px):")
    print(table(["threshold", "min ratio", "top1", "top5", "top10", "all", "small share top5"], det["detector_rows"]))
    out["detector_recall"] = det["detector"]
    engines: dict[str, tuple[Any, dict[str, Any]]] = {}
    runs = [("1.2.0", _known(V120)), ("shipped", {})]
    if args.history:
        runs = [("before", _known(BEFORE)), ("1.1.0", _known(V110))] + runs
    if args.adapted:
        runs.append(("adapted", {"Global.rec_inference_model_dir": str(args.adapted)}))
    pairs = {"": qs}
    if args.reverse:
        pairs["reversed "] = dataset.build(args.classes, args.scenes_per_class, args.seed, reverse=True)
    out["framings"] = {}
    for name, settings in runs:
        if name != "shipped" and args.skip_before:
            continue
        load_time = {k: v for k, v in settings.items() if not _is_per_request(k) or k in GALLERY_TIME}
        engine = load_engine(args.scenario, params={"Global.cpu_num_threads": 1, **load_time})
        per_request = {k: v for k, v in settings.items() if k not in load_time}
        for prefix, pair in pairs.items():
            for framing, images in pair.framings().items():
                report = pipeline_report(engine, pair, per_request, images)
                out["framings"].setdefault(f"{prefix}{framing}", {})[name] = report
        out[name] = out["framings"]["margin"][name]
        engines[name] = (engine, per_request)
    if args.latency_rounds:
        first = next(iter(engines.values()))[0]
        index = flat_gallery(first.embedding_size)
        index.add(np.zeros((1, first.embedding_size), np.float32), ["nothing"])  # searching costs the same
        for name, ms in latency(engines, qs, index, args.latency_rounds).items():
            for runs_of in out["framings"].values():
                runs_of[name]["median_ms_per_scene"] = ms
    for engine, _ in engines.values():
        engine.close()
    print(
        "\nPipeline per gallery framing (Engine.recognize on scenes; R@k ranked without score_thres; answered: top-1 "
        "score >= score_thres, precision = right among answered, recall = right answered / queries; 1 thread per "
        "model; ms/scene interleaved):"
    )
    headers, tables = result_tables(out)
    for framing, rows in tables.items():
        print(f"\n{framing} gallery:")
        print(table(headers, rows))
    print(plot_pr(out, Path(args.pr_png)))
    md = markdown_tables(out, " ".join(sys.argv[1:] if argv is None else argv))
    if args.markdown:
        Path(args.markdown).write_text(md)
        print(f"tables in markdown: {args.markdown}")
    if args.update_doc:
        print(update_doc(Path(args.update_doc), md))
    out["summary"] = summary(out) or quality_summary(out, list(engines))
    for runs_of in out["framings"].values():
        for r in runs_of.values():
            del r["scene_scores"]
    write_json("quality", out, args.json)
    return 0


COLUMNS = (
    ("alone R@1", "alone_r1"),
    ("scene R@1", "scene_r1"),
    ("scene R@5", "scene_r5"),
    ("true box R@1", "oracle_r1"),
    ("det recall", "det_recall"),
    ("framing", None),
    ("score_thres", "score_thres"),
    ("answered", "accepted"),
    ("precision", "precision_accepted"),
    ("recall", "recall_answered"),
    ("ms/scene", "median_ms_per_scene"),
)


def result_tables(out: dict[str, Any]) -> tuple[list[str], dict[str, list[list[Any]]]]:
    """Headers and one table of rows per gallery framing (scene queries for answered / precision / recall)."""
    tables = {}
    for framing, runs in out["framings"].items():
        rows = []
        for name, r in runs.items():
            f = r["framing"]
            rows.append([name] + [f"{f['rule']} {f['crop_padding']:g}" if k is None else r[k] for _, k in COLUMNS])
        tables[framing] = rows
    return ["settings"] + [h for h, _ in COLUMNS], tables


def markdown_tables(out: dict[str, Any], command: str) -> str:
    """The per-framing tables as markdown (``docs/quality.md`` carries them as this writes them)."""
    headers, tables = result_tables(out)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if v != v else f"{v:.1f}" if abs(v) > 5 else f"{v:.3f}"
        return str(v)

    parts = [f"`python benchmarks/quality/run.py {command}`".replace(" `", "`"), "", f"Set: {out['set']}.", ""]
    for framing, rows in tables.items():
        parts += [f"**{framing}** gallery:", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        parts += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
        parts.append("")
    return "\n".join(parts)


DOC_MARKS = ("<!-- quality-tables: written by benchmarks/quality/run.py -->", "<!-- /quality-tables -->")


def update_doc(path: Path, md: str) -> str:
    """Put ``md`` between :data:`DOC_MARKS` in ``path`` (``docs/quality.md``)."""
    text = path.read_text()
    start, end = text.find(DOC_MARKS[0]), text.find(DOC_MARKS[1])
    if start < 0 or end < start:
        return f"{path}: no {DOC_MARKS[0]} ... {DOC_MARKS[1]} section; tables not written"
    path.write_text(text[: start + len(DOC_MARKS[0])] + "\n" + md + "\n" + text[end:])
    return f"tables written into {path}"


def quality_summary(out: dict[str, Any], names: list[str]) -> list[dict[str, str]]:
    """Headline figures per settings measured (``make bench`` collects them into one table)."""
    return [
        {
            "what": f"recognition quality, {name} settings ({out['set']}): R@1 alone / in scenes, detector "
            "recall, precision of accepted answers, ms per scene",
            "figure": f"{out[name]['alone_r1']:.3f} / {out[name]['scene_r1']:.3f}, {out[name]['det_recall']:.3f}, "
            f"{out[name]['precision_accepted']:.3f}, {out[name]['median_ms_per_scene']:.0f} ms",
        }
        for name in names
    ]


def summary(out: dict[str, Any]) -> list[dict[str, str]]:
    """Headline rows (``make bench`` collects them): the shipped pack against general-lite 1.0.0 (``before``)."""
    if "shipped" not in out or "before" not in out:
        return []
    now, was = out["shipped"], out["before"]
    rows = [
        {
            "what": f"quality set, {label} R@1: general-lite shipped vs 1.0.0",
            "figure": f"{now[key]:.3f} vs {was[key]:.3f}",
        }
        for key, label in (("scene_r1", "scene"), ("alone_r1", "alone"), ("oracle_r1", "true-box"))
    ]
    rows.append(
        {
            "what": "quality set, ms per scene: general-lite shipped / 1.0.0 (interleaved, 1 thread)",
            "figure": f"{now['median_ms_per_scene'] / was['median_ms_per_scene']:.2f}x "
            f"({now['median_ms_per_scene']:.1f} vs {was['median_ms_per_scene']:.1f} ms)",
        }
    )
    return rows


def _is_per_request(name: str) -> bool:
    from shitu.params.schema import BY_NAME

    return BY_NAME[name].per_request


if __name__ == "__main__":
    sys.exit(main())
