"""``shitu recognize-video``: recognise and track objects in a video file, a stream URL or a camera.

The top-level CLI adds the sub-command with :func:`register`; ``python -m shitu.serving.cli.video recognize-video
...`` runs it on its own. Heavy imports (the engine, the client) happen inside :func:`run`, so ``shitu --help``
stays fast.

Exit status (as ``shitu.serving.cli.toolkit``): 0 something was tracked, 1 nothing was recognised in any processed frame,
2 usage error (bad option, source that can't be opened), 3 engine, client or server error.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["register", "run", "main", "format_frame", "format_tracks"]

from shitu.serving.cli.toolkit import (
    EXIT_ERROR,
    EXIT_NOTHING,
    EXIT_OK,
    EXIT_USAGE,
    non_negative_int,
    positive_float,
    positive_int,
    resolve_gallery,
    table,
)


def _iou(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def register(subparsers: Any) -> None:
    """Add the ``recognize-video`` parser to an ``argparse`` sub-parsers object (sets ``func=run``)."""
    p = subparsers.add_parser(
        "recognize-video",
        help="recognise and track objects in a video file, stream URL or camera",
        description="Recognise the objects of a video, a stream (RTSP/HTTP URL OpenCV can open) or a camera, "
        "follow them across frames (IoU tracker, score-weighted label vote) and print one line per processed "
        "frame and a summary per track.",
    )
    p.add_argument("input", help="video file, stream URL (rtsp://..., http://...) or camera index (0, 1, ...)")
    where = p.add_argument_group("where to recognise")
    where.add_argument("--server", metavar="URL", help="recognise on a shitu server (default: in-process engine)")
    where.add_argument("--scenario", help="scenario pack (in-process, or on the server with --server)")
    where.add_argument(
        "--gallery",
        metavar="NAME|PATH",
        help="gallery: a name in the pack, or a folder (with --server: a gallery name on the server)",
    )
    sampling = p.add_argument_group("sampling").add_mutually_exclusive_group()
    sampling.add_argument("--every", type=positive_int, metavar="N", help="process every N-th frame")
    sampling.add_argument("--fps", type=positive_float, metavar="F", help="process F frames per second of video")
    p.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bounded latency: keep only the latest frame, drop frames recognition can't keep up with, report lag "
        "(default: on for cameras and rtsp/rtmp/udp/srt streams, off for files)",
    )
    p.add_argument("--json", action="store_true", help="JSON lines on stdout (default: human-readable lines)")
    p.add_argument("--output-video", metavar="PATH", help="write the processed frames, annotated, to this file")
    p.add_argument("--max-frames", type=positive_int, metavar="N", help="stop after N processed frames")
    p.add_argument(
        "--batch-size", type=positive_int, default=8, metavar="N", help="frames per recognition call (8; live: 1)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    tracking = p.add_argument_group("tracking")
    tracking.add_argument("--iou", type=_iou, default=0.3, help="IoU a box needs to continue a track (0.3)")
    tracking.add_argument(
        "--max-age", type=non_negative_int, default=5, help="processed frames a track may miss before it ends (5)"
    )
    tracking.add_argument(
        "--min-hits", type=positive_int, default=2, help="consecutive frames before a new track is reported (2)"
    )
    tracking.add_argument(
        "--whole-image",
        choices=("track", "exclude"),
        default="track",
        help="the whole-image box: its own track 0, the frame label (default), or ignored",
    )
    p.set_defaults(func=run)


def _fmt_time(t: float | None) -> str:
    return "-" if t is None else f"{t:.2f}s"


def format_frame(result: Any) -> str:
    """One human-readable line for a :class:`~shitu.serving.video.stream.FrameResult`."""
    parts = [f"frame {result.index:>6}  t={result.time:8.3f}s"]
    if result.tracks:
        parts += [f"#{t.track_id} {t.label} {t.score:.3f} [{','.join(map(str, t.bbox))}]" for t in result.tracks]
    else:
        parts.append("(no tracks)")
    line = "  ".join(parts)
    if result.frame_label is not None:
        line += f"  | frame: {result.frame_label.label} {result.frame_label.score:.3f}"
    if result.lag is not None:
        line += f"  lag={result.lag:.3f}s dropped={result.dropped}"
    return line


def format_tracks(report: Any) -> list[str]:
    """The human-readable track table and totals of a :class:`~shitu.serving.video.stream.VideoReport`."""
    rows = [("track", "label", "conf", "score", "frames", "first", "last")]
    tracks = list(report.tracks)
    if report.frame_label is not None:
        tracks.append(report.frame_label)
    for t in tracks:
        rows.append(
            (
                "frame" if t.is_whole_image else f"#{t.track_id}",
                t.label,
                f"{t.confidence:.2f}",
                f"{t.score:.3f}",
                str(t.frames),
                f"{t.first_frame} @ {_fmt_time(t.first_time)}",
                f"{t.last_frame} @ {_fmt_time(t.last_time)}",
            )
        )
    lines = table(rows).splitlines() if tracks else ["no tracks"]
    total = (
        f"{report.frames_processed} frames processed of {report.frames_read} read "
        f"({report.frames_skipped} skipped by sampling, {report.frames_dropped} dropped), "
        f"{len(report.tracks)} track(s), {report.elapsed:.1f}s"
    )
    lag = report.lag_stats()
    if lag is not None:
        total += f", lag mean {lag['mean']:.3f}s p95 {lag['p95']:.3f}s max {lag['max']:.3f}s"
    if report.interrupted:
        total += " (interrupted)"
    return lines + [total]


def _recognizer(args: argparse.Namespace) -> Any:
    if args.server:
        from shitu.serving.client.sdk import ShituClient

        chosen = {k: v for k, v in (("scenario", args.scenario), ("gallery", args.gallery)) if v}
        client = ShituClient(args.server)
        return functools.partial(client.recognize, **chosen) if chosen else client.recognize
    from shitu.serving.engine.engine import load_engine

    return load_engine(scenario=args.scenario, gallery=resolve_gallery(args.gallery)).recognize


def run(args: argparse.Namespace) -> int:
    """Run ``recognize-video`` for parsed ``args``; returns the exit status."""
    from tqdm import tqdm

    from shitu.serving.video.stream import VideoSourceError, is_live_url, open_source, recognize_video
    from shitu.serving.video.tracker import Tracker

    out = sys.stdout
    try:
        # A URL the user calls live (an http:// stream, say) is read as a broadcast: wall-clock time, no pacing.
        source = open_source(args.input, is_live=True if args.live and "://" in args.input else None)
    except (FileNotFoundError, VideoSourceError) as exc:
        print(f"recognize-video: {exc}", file=sys.stderr)
        return EXIT_USAGE
    live = args.live
    if live is None:
        live = bool(source.is_live) or is_live_url(args.input)
        if live:
            print("recognize-video: live source, live mode on (frames are dropped, not queued)", file=sys.stderr)
    try:
        recognize = _recognizer(args)
    except Exception as exc:  # noqa: BLE001 -- reported as the exit status, like every shitu command
        source.close()
        what = "client for " + args.server if args.server else "engine"
        print(f"recognize-video: cannot start the {what}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BaseException:
        source.close()
        raise

    def emit(line: str) -> None:
        tqdm.write(line, file=out)
        out.flush()

    def on_frame(result: Any) -> None:
        if args.json:
            emit(json.dumps({"type": "frame", **result.to_dict()}, ensure_ascii=False))
        else:
            emit(format_frame(result))

    tracker = Tracker(
        iou_threshold=args.iou, max_age=args.max_age, min_hits=args.min_hits, whole_image=args.whole_image
    )
    try:
        report = recognize_video(
            source,
            recognize,
            every=args.every,
            fps=args.fps,
            live=live,
            batch_size=args.batch_size,
            on_frame=on_frame,
            max_frames=args.max_frames,
            tracker=tracker,
            output_video=args.output_video,
            progress=not args.no_progress,
            keep_frames=False,
        )
    except VideoSourceError as exc:  # e.g. the annotated video can't be written
        print(f"recognize-video: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 -- the recognizer (engine or server) failed
        print(f"recognize-video: recognition failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR

    if args.json:
        tracks = list(report.tracks) + ([report.frame_label] if report.frame_label is not None else [])
        for t in tracks:
            emit(json.dumps({"type": "track", **t.to_dict()}, ensure_ascii=False))
        summary = report.to_dict(frames=False)
        summary.pop("tracks")
        summary.pop("frame_label")
        if args.output_video:
            summary["output_video"] = str(args.output_video)
        emit(json.dumps({"type": "summary", **summary}, ensure_ascii=False))
    else:
        emit("")
        for line in format_tracks(report):
            emit(line)
        if args.output_video:
            emit(f"annotated video: {args.output_video}")
    return EXIT_OK if report.tracks or report.frame_label is not None else EXIT_NOTHING


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m shitu.serving.cli.video recognize-video INPUT [options]``."""
    parser = argparse.ArgumentParser(prog="shitu")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
