"""The typed parameter schema: every tunable of shitu-hub, with PP-ShiTu's section/key names.

A parameter is addressed as ``Section.key`` (``Global.threshold``, ``IndexProcess.score_thres``), exactly as in
PaddleClas's ``inference_*.yaml``. Each :class:`Field` carries its type, default, bounds and documentation; the
README's parameter table is generated from this list (``python -m shitu.params``), so the schema is the single
place where a parameter is defined.

Short names (``threshold``) are accepted wherever they are unambiguous, which is what per-request overrides use.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_MISSING = object()


@dataclass(frozen=True)
class Field:
    """One parameter: ``section.key`` of type ``type`` with a default and validation rules."""

    section: str
    key: str
    type: type | tuple[type, ...]
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    aliases: tuple[str, ...] = ()
    nullable: bool = False
    #: Whether a per-request override may change it (model paths and threads are load-time only).
    per_request: bool = True
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


def _transform_ops(value: Any) -> str | None:
    if not isinstance(value, list):
        return "must be a list of {OpName: {args}} entries"
    for i, op in enumerate(value):
        if not (isinstance(op, dict) and len(op) == 1 and isinstance(next(iter(op)), str)):
            return f"entry {i} must be a one-key mapping {{OpName: {{args}}}}"
        args = next(iter(op.values()))
        if args is not None and not isinstance(args, dict):
            return f"entry {i} ({next(iter(op))}): arguments must be a mapping or null"
    return None


def _score_thres(value: Any) -> str | None:
    if isinstance(value, str):
        return None if value == "auto" else 'must be a number or "auto"'
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float (JSON allows it): was a 500 once the pipeline read it
        return "must be a finite number"
    if not math.isfinite(number):
        return "must be a finite number"
    return None if number >= -1.0 else f"must be >= -1.0, got {value}"


def _labels(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return "must be a list of strings"
    return None


# fmt: off
FIELDS: tuple[Field, ...] = (
    # -- Global: detection and pipeline ------------------------------------------------------------------------
    Field("Global", "threshold", float, 0.2,
          "Mainbody detection score threshold: detector boxes scoring below it are dropped.",
          minimum=0.0, maximum=1.0),
    Field("Global", "max_det_results", int, 5,
          "At most this many detector boxes (highest scores first) are kept per image, before the whole-image "
          "box is appended. Together with `threshold` it decides how many boxes come back.", minimum=0, maximum=1000),
    Field("Global", "append_whole_image", (bool, str), True,
          "Also search the whole image as one extra box (PP-ShiTu always does); results mark it with "
          "`is_whole_image`. `fallback`: search the whole image only when no detected box yields an accepted match "
          "(`mainbody_detection` then appends it only when no detector box is left).",
          aliases=("whole_image_box",), choices=(True, False, "fallback")),
    Field("Global", "det_nms_threshold", float, 0.5,
          "IoU above which overlapping detector boxes are merged (class-agnostic NMS on raw-head `gfl` detectors; "
          "PaddleDetection exports keep their graph's own NMS, as PaddleClas does).",
          minimum=0.0, maximum=1.0),
    Field("Global", "rec_nms_thresold", float, 0.05,
          "IoU above which a recognised box is suppressed by a higher-scoring one (PaddleClas's spelling; "
          "`rec_nms_threshold` is accepted too).", minimum=0.0, maximum=1.0, aliases=("rec_nms_threshold",)),
    Field("Global", "rec_nms_per_label", bool, False,
          "Rec-NMS suppresses a box only with a better box of the *same label*, so overlapping different objects "
          "both stay (PP-ShiTu: off, any label suppresses)."),
    Field("Global", "batch_size", int, 8, "Crops per forward pass of the feature extractor.",
          minimum=1, maximum=256),
    Field("Global", "min_box_size", int, 4, "Detector boxes narrower or lower than this many pixels are dropped.",
          minimum=0, maximum=10000),
    Field("Global", "min_box_ratio", float, 0.0,
          "Detector boxes whose short side is under this fraction of the image's short side are dropped (specks "
          "match random gallery items and crowd the object out of `max_det_results`).", minimum=0.0, maximum=1.0),
    Field("Global", "crop_padding", float, 0.0,
          "Each box is widened by this fraction of its width / height on every side before it is cropped and "
          "embedded. With `framing: main_box` a gallery image's main box is widened alike and the part outside the "
          "image is the mean colour; with `whole_image` query boxes are clipped to the image. A gallery records "
          "the value it was built with and its searches use that.", minimum=0.0, maximum=1.0),
    Field("Global", "framing", str, "main_box",
          "How new galleries frame their images, recorded in each gallery; queries follow the rule of the gallery "
          "they search. `main_box`: an image is cut to what differs from its plain border (whole when the border "
          "is not plain) and every box, gallery or query, is widened by `crop_padding` with the mean colour "
          "outside the image; `whole_image`: images whole, query boxes widened and clipped (before issue #28).",
          choices=("main_box", "whole_image"), per_request=False),
    # -- Global: runtime (load time only) ----------------------------------------------------------------------
    Field("Global", "cpu_num_threads", int, 2,
          "CPU threads per model (paddle.inference math threads, onnxruntime intra-op threads).",
          minimum=1, maximum=256, per_request=False),
    Field("Global", "enable_mkldnn", bool, True,
          "Use oneDNN with each model's verified pass list (see the model's shitu_model.yml; for official models, "
          "the one `shitu plugins verify --onednn` recorded).", per_request=False),
    Field("Global", "use_gpu", (bool, str), False,
          "Run the models on a GPU. `false`: the CPU. `true`: GPU `gpu_id`, or the model does not load (the error "
          "says why: paddle without CUDA, no device visible, onnxruntime without its CUDA provider). `auto`: the "
          "GPU where one is usable, else the CPU exactly as with `false`, with one warning log line naming why "
          "(for a pack that ships to machines with and without GPUs). The models' descriptions, logged when an "
          "engine loads, name the device each runs on.",
          choices=(False, True, "auto"), per_request=False),
    Field("Global", "gpu_id", int, 0, "GPU device id when `use_gpu` is `true` or `auto`.", minimum=0,
          per_request=False),
    Field("Global", "det_inference_model_dir", str, None,
          "Mainbody detector folder (default: the current scenario pack's). A folder given here brings its own "
          "pre-processing: the pack's `DetPreProcess.transform_ops` is not applied to it.", nullable=True,
          per_request=False),
    Field("Global", "rec_inference_model_dir", str, None,
          "Feature extractor folder (default: the current scenario pack's). A folder given here brings its own "
          "pre-processing: the pack's `RecPreProcess.transform_ops`, `RecPostProcess.pooling`, `gem_power` and "
          "`centering` are not applied to it.", nullable=True, per_request=False),
    Field("Global", "det_backend", str, "auto", "Runtime for the detector: `paddle` (paddle.inference), "
          "`onnxruntime` (needs the model's ONNX file), or `auto`: on the CPU, onnxruntime when the model "
          "folder has its ONNX file (the fastest on the embedded models, same answers), else paddle; on a GPU "
          "(`use_gpu`), paddle where it has CUDA, else onnxruntime with its CUDA provider.",
          choices=("auto", "paddle", "onnxruntime"), per_request=False),
    Field("Global", "rec_backend", str, "auto", "Runtime for the feature extractor (see `det_backend`).",
          choices=("auto", "paddle", "onnxruntime"), per_request=False),
    # -- Pre-processing (None: the model folder's own shitu_model.yml / infer_cfg.yml) ---------------------------
    Field("DetPreProcess", "transform_ops", list, None,
          "Detector pre-processing ops (PaddleClas names). Default: from the model folder.", nullable=True,
          check=_transform_ops, per_request=False),
    Field("RecPreProcess", "transform_ops", list, None,
          "Feature extractor pre-processing ops (PaddleClas names). Default: from the model folder.",
          nullable=True, check=_transform_ops, per_request=False),
    # -- Post-processing of embeddings -----------------------------------------------------------------------
    Field("RecPostProcess", "normalize", bool, True, "L2-normalise embeddings (cosine = IP on them).",
          aliases=("feature_normalize",)),
    Field("RecPostProcess", "binarize", bool, False,
          "Sign-binarise embeddings (for `hamming` galleries); packs bits 8 per byte."),
    Field("RecPostProcess", "pooling", str, None,
          "How a feature-map output `[N, C, H, W]` becomes one vector: `gap` (average) or `gem` (generalised mean, "
          "which weighs the strongest activations more). Default: the model folder's `pooling`. A gallery must be "
          "re-embedded after changing it.", nullable=True, choices=("gap", "gem"), per_request=False),
    Field("RecPostProcess", "gem_power", float, 3.0, "Power `p` of `gem` pooling (1 = average, large = max).",
          minimum=1.0, maximum=16.0, per_request=False),
    # -- IndexProcess: the gallery ---------------------------------------------------------------------------
    Field("IndexProcess", "index_method", str, "HNSW32",
          "faiss index type for new galleries: `Flat`, `IVF`, `HNSW32` (PaddleClas's names), a compressed type "
          "re-ranked exactly with the stored vectors (`IVF-PQ`, `OPQ-IVF-PQ`, `IVF-SQ8`, `HNSW-SQ8`, `HNSW-PQ`), "
          "`auto` (Flat below 50k items, IVF-SQ8 below 1M, IVF-PQ above, chosen as the gallery grows) or another "
          "faiss factory string. Which to pick: docs/galleries.md, Index types.",
          per_request=False),
    Field("IndexProcess", "dist_type", str, "IP",
          "Metric for new galleries: `IP` (cosine on normalised embeddings), `L2` or `hamming`.",
          choices=("IP", "L2", "hamming"), aliases=("metric_type",), per_request=False),
    Field("IndexProcess", "index_dir", str, None, "Gallery folder (default: the scenario pack's gallery).",
          nullable=True, per_request=False),
    Field("IndexProcess", "return_k", int, 5, "Matches returned per embedding by `index_search` (and per searched "
          "box in `explain` answers, at most `Limits.max_explain_matches`).",
          minimum=1, maximum=1000),
    Field("IndexProcess", "score_thres", (float, int, str), "auto",
          "Weakest match accepted. For `IP` a score must be >= it (higher is better); for `L2` and `hamming` "
          "the distance must be <= it (smaller is better). `auto`: each gallery's own threshold, derived from its "
          "items (the score 1 % of its items reach against items of other labels; `gallery info` shows it).",
          aliases=("score_threshold",), check=_score_thres),
    Field("IndexProcess", "candidates", int, 0,
          "Each recognition also lists its best this-many labels with their scores (`candidates`, best first, the "
          "answer included), so callers see the margin to the runner-up. 0: none.", minimum=0, maximum=20),
    Field("IndexProcess", "hamming_radius", int, 100, "Largest hamming distance searched in binary galleries "
          "(per request too); new galleries also store it as their own default.", minimum=0),
    Field("IndexProcess", "delimiter", str, "\t",
          "Column separator of gallery list files; any whitespace is accepted as well."),
    Field("IndexProcess", "labels", list, None,
          "Only return matches whose label is in this list (null: all labels).", nullable=True, check=_labels),
    # -- Limits (hostile input) ------------------------------------------------------------------------------
    Field("Limits", "max_request_bytes", int, 64 * 1024 * 1024,
          "Largest HTTP request body accepted by `hub serving` (refused before it is read); set it in "
          "`config.json` `init_args`.", minimum=1024, per_request=False),
    Field("Limits", "max_images", int, 32, "Images accepted in one request.", minimum=1, per_request=False),
    Field("Limits", "max_image_bytes", int, 20_000_000, "Encoded bytes accepted per image.", minimum=1,
          per_request=False),
    Field("Limits", "max_pixels", int, 40_000_000,
          "Decoded pixels (width x height) accepted per image; a header declaring more is refused before "
          "decoding (decompression bombs).", minimum=1, per_request=False),
    Field("Limits", "image_url_fetch", bool, False,
          "Let PaddleX-API requests give an image as an http(s) URL that the server fetches (off: such URLs are "
          "refused). A fetch follows no redirects, stops at `max_image_bytes` and `image_url_timeout_s`.",
          per_request=False),
    Field("Limits", "image_url_timeout_s", float, 10.0,
          "Seconds allowed to fetch one image URL (connect and read together), when `image_url_fetch` is on.",
          minimum=0.1, maximum=300.0, per_request=False),
    Field("Limits", "max_label_length", int, 128, "Characters allowed in a gallery label.", minimum=1,
          per_request=False),
    Field("Limits", "max_explain_matches", int, 10,
          "Gallery matches listed per searched box in `explain` answers: the best `IndexProcess.return_k`, at most "
          "this many.", minimum=1, maximum=1000, per_request=False),
    Field("Limits", "max_filter_labels", int, 1000,
          "Labels a request may give in its `IndexProcess.labels` filter (refused before any work; explanations "
          "report how many labels were filtered on, never the list).", minimum=1, per_request=False),
    Field("Limits", "max_index_import_bytes", int, 1 << 30,
          "Largest `vector.index` or `id_map.pkl` file read when importing a PaddleClas index folder.", minimum=1,
          per_request=False),
    Field("Limits", "max_index_import_items", int, 10_000_000,
          "Most entries read from a PaddleClas index folder (`id_map.pkl`, `vector.index`).", minimum=1,
          per_request=False),
    Field("Limits", "max_log_bytes", int, 10 * 1024 * 1024,
          "Size at which each log file the server writes (its own and PaddleHub's) is rotated.", minimum=1024,
          per_request=False),
    Field("Limits", "log_backups", int, 5,
          "Rotated log files kept per log; the disk used by a log is at most `(log_backups + 1) * max_log_bytes`.",
          minimum=1, per_request=False),
    Field("Limits", "request_timeout", float, 20.0,
          "Seconds a client may take to send one whole request (headers and body) from its first byte, and to "
          "start one on an open connection; a late body gets a `408` envelope.", minimum=0.5, maximum=3600,
          per_request=False),
    Field("Limits", "response_timeout", float, 120.0,
          "Seconds a client has to take a whole answer once the server starts sending it; a client that reads "
          "slower (or not at all) has its connection closed, which frees the connection's thread.", minimum=0.5,
          maximum=3600, per_request=False),
    Field("Limits", "max_connections", int, 64,
          "Connections served at once per serving process: threads of the single-process server (more are "
          "answered `503` at once), gthread threads per gunicorn worker (which holds at most twice as many "
          "connections; more wait in the listen backlog).", minimum=1, maximum=4096,
          per_request=False),
    Field("Limits", "allowed_hosts", list, None,
          "Host names (`Host` header, port ignored) `hub serving` answers besides the address it listens on and the "
          "loopback names (`localhost`, `127.0.0.1`, `::1`), against DNS rebinding; `[\"*\"]`: any name. Null: "
          "any name when it listens on all addresses (`0.0.0.0`, `::`), else none. Other names get a `403` envelope "
          "(`GET /health` answers whatever the name).", nullable=True,
          per_request=False, check=_labels),
    Field("Limits", "allowed_origins", list, [],
          "Web origins (`https://app.example:8443`) other than the server's own whose pages may send POST requests "
          "and read the answers (CORS). Empty: a browser request carrying another `Origin` is refused (`403`) and "
          "no CORS headers are sent.", per_request=False, check=_labels),
    Field("Limits", "min_free_disk_bytes", int, 64 * 1024 * 1024,
          "Free bytes under which the galleries' or the logs' disk counts as full: `GET /health` then answers "
          "`degraded` (still HTTP 200: reads keep working, gallery writes are refused).", minimum=0,
          per_request=False),
    Field("Limits", "max_request_pixels", int, 160_000_000,
          "Decoded pixels accepted in one request, all its images together.", minimum=1, per_request=False),
    Field("Limits", "max_boxes", int, 256,
          "Boxes accepted in one `feature_extraction` request (`boxes`, all images together).", minimum=1,
          per_request=False),
    Field("Limits", "max_queries", int, 256, "Embeddings accepted in one `index_search` search or add.",
          minimum=1, per_request=False),
    Field("Limits", "max_return_k", int, 100, "Largest `IndexProcess.return_k` a request may ask for.",
          minimum=1, maximum=1000, per_request=False),
    Field("Limits", "max_matches", int, 2560,
          "Matches one `index_search` search may return in all (embeddings x `IndexProcess.return_k`), checked "
          "before searching: each match carries its item's metadata (up to `max_metadata_bytes`), so this bounds "
          "the size of an answer.", minimum=1, per_request=False),
    Field("Limits", "max_metadata_bytes", int, 16384,
          "JSON size of one gallery item's metadata, checked when it is added.", minimum=2, per_request=False),
    Field("Limits", "max_metadata_depth", int, 8, "Nesting depth of one gallery item's metadata.", minimum=1,
          maximum=64, per_request=False),
    Field("Limits", "max_galleries", int, 1000,
          "Galleries one scenario's gallery folder may hold: a request that would create one more (adding images "
          "under a new `gallery` name) is refused, so one client cannot fill the disk with galleries (an empty "
          "gallery takes ~165 kB).", minimum=1, per_request=False),
    Field("Limits", "max_open_galleries", int, 32,
          "Galleries a serving process keeps open (least recently used ones are closed beyond it).", minimum=1,
          per_request=False),
    Field("Limits", "gallery_record_cache", int, 200_000,
          "Item records (label, source, metadata; ~200 bytes each) a local gallery keeps in memory so searches "
          "resolve hits without SQLite: a gallery of at most this many items is held whole, a bigger one keeps "
          "only the records of its latest hits.", minimum=0, per_request=False),
    Field("Limits", "max_source_length", int, 256,
          "Characters allowed in an added image's `sources` name (the client's file name).", minimum=1,
          per_request=False),
    Field("RecPostProcess", "centering", str, None,
          "A `.npy` file (float32 `[d]`, a path relative to the recogniser folder, or absolute) holding the mean "
          "embedding of generic photographs: it is subtracted from each L2-normalised pooled embedding before it is "
          "normalised again, so different images no longer all score high (`python -m "
          "shitu.serving.engine.centering` estimates one). Null: the recogniser folder's own (`centering:` in its "
          "`shitu_model.yml`, as `shitu adapt` writes it), else off. A gallery must be re-embedded after changing "
          "it.", nullable=True, per_request=False),
)
# fmt: on

BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(f.section for f in FIELDS))


def _short_names() -> dict[str, Field | None]:
    """``key`` and each alias -> field; ``None`` where a short name is ambiguous."""
    table: dict[str, Field | None] = {}
    for f in FIELDS:
        for short in (f.key, *f.aliases):
            table[short] = None if short in table and table[short] is not f else f
        for alias in f.aliases:
            table[f"{f.section}.{alias}"] = f
    return table


SHORT: dict[str, Field | None] = _short_names()


def section_defaults(section: str, keys: list[str]) -> dict[str, dict[str, Any]]:
    """``{section: {key: default}}`` for some keys: what a hub module's ``params.py`` returns."""
    return {section: {key: BY_NAME[f"{section}.{key}"].default for key in keys}}
