"""Recognise objects in videos, streams and cameras: frame sources, sampling, batching, tracking and live mode.

A video is an input like an image: :func:`recognize_video` reads frames from a *source*, keeps one every ``every``
frames (or ``fps`` per second of the source's clock), sends them to a *recognizer* in batches, follows the objects
across frames with :class:`shitu.serving.video.tracker.Tracker` and returns a :class:`VideoReport` (one
:class:`FrameResult` per processed frame, one :class:`~shitu.serving.video.tracker.TrackSummary` per track).

The recognizer is any callable ``recognizer(images: list[np.ndarray BGR]) -> list[list[Recognition]]``, e.g. the
in-process ``load_engine(...).recognize`` or the SDK's ``ShituClient(url).recognize``; it may also return
``Recognition.to_dict()`` dicts.

Sources (:func:`open_source`): a video file path, a stream URL OpenCV can open (``rtsp://``, ``http://``...), a
camera index (``0`` or ``"0"``), an iterable of BGR frames, or any object with the :class:`FrameSource` methods.

Live mode (``live=True``) keeps latency bounded when recognition is slower than the stream: a reader thread reads
the source as fast as it delivers and keeps only the *latest* sampled frame; the recognizer takes whatever frame is
latest when it is free, and every sampled frame overwritten before that is *dropped*, never queued. Each processed
frame reports its lag (seconds from capture to the end of its recognition) and the number of frames dropped so
far. In live mode frames are recognised one at a time (``batch_size`` does not apply: a batch would wait for
frames and add latency). A source that is not live by nature (a file) is read at its own frame rate in live mode,
so a file can stand in for a broadcast.

This module imports numpy only at import time (OpenCV and tqdm when used), so the client SDK can use it.
The run's report types are in :mod:`.report`.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from shitu.errors import InvalidArgument
from shitu.serving.results import Recognition
from shitu.serving.results.draw import draw_tracks
from shitu.serving.video.report import FrameResult, VideoReport
from shitu.serving.video.tracker import Tracker

if TYPE_CHECKING:
    import cv2

__all__ = [
    "Recognizer",
    "Frame",
    "FrameSource",
    "CaptureSource",
    "IterableSource",
    "VideoSourceError",
    "Sampler",
    "LatestFrameReader",
    "FrameResult",
    "VideoReport",
    "AnnotatedVideoWriter",
    "open_source",
    "recognize_video",
    "draw_tracks",
    "is_live_url",
]

Recognizer = Callable[[list[np.ndarray]], list[list[Recognition]]]
OnFrame = Callable[["FrameResult"], None]

#: URL schemes that are live broadcasts (read at the stream's pace, can't be rewound).
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "srt", "rtp", "mms")


class VideoSourceError(InvalidArgument, RuntimeError):
    """A source could not be opened (missing file, unsupported codec, unreachable stream, no such camera)."""


@dataclass
class Frame:
    """One frame read from a source."""

    #: Index of the frame in the source (0-based, counting every frame read, sampled or not).
    index: int
    #: Seconds on the source's clock: media time for files, seconds since the first frame for live sources.
    time: float
    image: np.ndarray
    #: ``time.monotonic()`` when the frame was read (what live-mode lag is measured from).
    captured_at: float = 0.0


@runtime_checkable
class FrameSource(Protocol):
    """What :func:`recognize_video` reads from. ``read()`` returns ``None`` at the end of the source."""

    name: str
    #: Nominal frames per second (``None`` when unknown).
    fps: float | None
    #: Number of frames when known (files), else ``None``.
    frame_count: int | None
    #: Whether the source runs on its own clock (camera, broadcast): frames that are not read in time are lost.
    is_live: bool

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...


def is_live_url(source: str) -> bool:
    """Whether ``source`` is a URL of a live broadcast protocol (rtsp, rtmp, udp, srt...)."""
    scheme, sep, _ = source.partition("://")
    return bool(sep) and scheme.lower() in LIVE_SCHEMES


class CaptureSource:
    """Frames from ``cv2.VideoCapture``: a file, a stream URL or a camera index.

    ``is_live`` (default: cameras and :data:`LIVE_SCHEMES` URLs) makes timestamps wall-clock seconds since the first
    frame instead of ``index / fps``, and leaves the frame count unknown. The first failed read ends the source (a
    broken stream is not reconnected).
    """

    def __init__(self, target: str | int, *, is_live: bool | None = None):
        import cv2

        self.name = f"camera {target}" if isinstance(target, int) else str(target)
        self._cap: cv2.VideoCapture | None = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            self._cap.release()
            kind = "camera" if isinstance(target, int) else "video"
            raise VideoSourceError(f"cannot open {kind} {target!r} with OpenCV")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if math.isfinite(fps) and fps > 0 else None
        if is_live is None:
            is_live = isinstance(target, int) or is_live_url(str(target))
        self.is_live = bool(is_live)
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 and not self.is_live else None
        self._index = 0
        self._t0: float | None = None
        self._lock = threading.Lock()  # close() from another thread waits for a read in progress

    def read(self) -> Frame | None:
        with self._lock:
            if self._cap is None:
                return None
            ok, image = self._cap.read()
        if not ok or image is None:
            return None
        now = time.monotonic()
        if self.is_live or self.fps is None:
            if self._t0 is None:
                self._t0 = now
            t = now - self._t0
        else:
            t = self._index / self.fps
        frame = Frame(self._index, t, image, now)
        self._index += 1
        return frame

    def close(self) -> None:
        with self._lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None


class IterableSource:
    """Frames from an iterable of BGR images (a list, a generator); timestamps are ``index / fps``."""

    def __init__(self, frames: Iterable[np.ndarray], fps: float = 25.0, *, name: str = "frames", is_live: bool = False):
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.name = name
        self._rate = float(fps)
        self.fps: float | None = self._rate  # a FrameSource's (None: unknown)
        self.frame_count = len(frames) if isinstance(frames, Sequence) else None
        self.is_live = is_live
        self._it: Iterator[np.ndarray] | None = iter(frames)
        self._index = 0

    def read(self) -> Frame | None:
        if self._it is None:
            return None
        try:
            image = next(self._it)
        except StopIteration:
            self._it = None
            return None
        frame = Frame(self._index, self._index / self._rate, np.asarray(image), time.monotonic())
        self._index += 1
        return frame

    def close(self) -> None:
        self._it = None


SourceLike = str | os.PathLike | int | FrameSource | Iterable[np.ndarray]


def open_source(source: SourceLike, *, is_live: bool | None = None) -> FrameSource:
    """A :class:`FrameSource` for a path, URL, camera index (``0``, ``"0"``), frame iterable or ready source.

    A digit string is a camera index unless a file of that name exists. ``is_live`` overrides whether a URL is a
    live broadcast (default: by its scheme, see :data:`LIVE_SCHEMES`; an ``http://`` URL may be either). Raises
    :class:`VideoSourceError` (or ``FileNotFoundError`` for a missing file) when it cannot be opened.
    """
    if isinstance(source, FrameSource):
        return source
    if isinstance(source, (bool, np.bool_)):
        raise TypeError("a video source cannot be a bool")
    if isinstance(source, (int, np.integer)):
        return CaptureSource(int(source))
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.isdigit() and not os.path.exists(text):
            return CaptureSource(int(text))
        if "://" in text:
            return CaptureSource(text, is_live=is_live)
        if not os.path.exists(text):
            raise FileNotFoundError(f"no such video file: {text}")
        return CaptureSource(text, is_live=False)
    if isinstance(source, np.ndarray):
        if source.ndim == 4:  # a stack of frames [T, H, W, C]
            return IterableSource(list(source))
        raise TypeError("a single image is not a video; pass a list of frames")
    if isinstance(source, Iterable):
        return IterableSource(source)
    raise TypeError(f"unsupported video source: {type(source).__name__}")


class Sampler:
    """Which frames to process: every ``every``-th frame, or ``fps`` frames per second of the source's clock.

    With ``fps`` a frame is kept when its timestamp reaches the next due time (due times step by ``1 / fps`` from
    the first kept frame, and jump forward after a gap, so a stall never causes a burst). Neither: every frame.
    """

    def __init__(self, every: int | None = None, fps: float | None = None):
        if every is not None and fps is not None:
            raise ValueError("give either every= or fps=, not both")
        if every is not None and int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.every = None if every is None else int(every)
        self.period = None if fps is None else 1.0 / float(fps)
        self._next_due: float | None = None
        self._count = 0

    def __call__(self, frame: Frame) -> bool:
        if self.period is not None:
            eps = 1e-6
            if self._next_due is None or frame.time + eps >= self._next_due:
                base = frame.time if self._next_due is None else self._next_due
                self._next_due = base + self.period
                if self._next_due <= frame.time + eps:  # a gap: restart the grid from this frame
                    self._next_due = frame.time + self.period
                return True
            return False
        keep = self.every is None or self._count % self.every == 0
        self._count += 1
        return keep

    def effective_fps(self, source_fps: float | None) -> float | None:
        """Processed frames per second of source time, when it can be told."""
        if self.period is not None:
            return 1.0 / self.period if source_fps is None else min(1.0 / self.period, source_fps)
        if source_fps is None:
            return None
        return source_fps / (self.every or 1)


class LatestFrameReader:
    """Live-mode reader: a thread reads ``source`` and keeps only the latest sampled frame.

    :meth:`get` blocks until a frame newer than the last one taken is there and returns it (``None`` once the source
    has ended and the last frame was taken). A sampled frame that is replaced before anybody took it counts as
    dropped; frames the sampler rejects count as skipped. At most one frame is ever held, so nothing queues up.
    A source that is not live by nature (a file) is read at its own frame rate (``pace=True``), as a broadcast
    would deliver it.
    """

    def __init__(self, source: FrameSource, sampler: Sampler | None = None, *, pace: bool | None = None):
        self.source = source
        self.sampler = sampler or Sampler()
        self.pace = (not source.is_live and source.fps is not None) if pace is None else pace
        self.frames_read = 0
        self.frames_skipped = 0
        self.frames_dropped = 0
        self.error: BaseException | None = None
        self._latest: Frame | None = None
        self._ended = False
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="shitu-video-reader", daemon=True)

    def start(self) -> LatestFrameReader:
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = None
        try:
            while not self._stop.is_set():
                if self.pace and t0 is not None and self.source.fps:
                    delay = t0 + self.frames_read / self.source.fps - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                frame = self.source.read()
                if frame is None:
                    break
                frame.captured_at = time.monotonic()
                if t0 is None:
                    t0 = frame.captured_at
                self.frames_read += 1
                if not self.sampler(frame):
                    self.frames_skipped += 1
                    continue
                with self._cond:
                    if self._latest is not None:
                        self.frames_dropped += 1
                    self._latest = frame
                    self._cond.notify_all()
        except BaseException as exc:  # surfaced to the consumer by get()
            self.error = exc
        finally:
            try:
                self.source.close()
            finally:
                with self._cond:
                    self._ended = True
                    self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The latest unseen frame; ``None`` at the end of the source (or after ``timeout`` seconds without one)."""
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None or self._ended, timeout)
            frame, self._latest = self._latest, None
        if frame is None and self.error is not None:
            raise self.error
        return frame

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._ended and self._latest is None

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop, wait for it up to ``timeout`` seconds; a frame still held counts as dropped."""
        self._stop.set()
        self._thread.join(timeout)
        with self._cond:
            if self._latest is not None:
                self.frames_dropped += 1
                self._latest = None


# --- writing -------------------------------------------------------------------------------------------------


class AnnotatedVideoWriter:
    """Writes annotated frames to a video file, opened at the first frame (its size is the video's).

    The codec follows the extension: ``.mp4``/``.m4v``/``.mov`` -> ``mp4v``, anything else (``.avi``) -> ``MJPG``.
    """

    def __init__(self, path: str | os.PathLike, fps: float):
        self.path = Path(path)
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self._writer: cv2.VideoWriter | None = None
        self.frames_written = 0

    def write(self, image: np.ndarray) -> None:
        import cv2

        if self._writer is None:
            fourcc = "mp4v" if self.path.suffix.lower() in (".mp4", ".m4v", ".mov") else "MJPG"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = image.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter.fourcc(*fourcc), self.fps, (w, h))
            if not self._writer.isOpened():
                self._writer = None
                raise VideoSourceError(f"cannot write video {self.path} (codec {fourcc})")
        self._writer.write(image)
        self.frames_written += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


# --- the loop ------------------------------------------------------------------------------------------------


def _as_recognitions(items: Iterable[Any]) -> list[Recognition]:
    return [r if isinstance(r, Recognition) else Recognition.from_dict(r) for r in items]


def recognize_video(
    source: SourceLike,
    recognizer: Recognizer,
    *,
    every: int | None = None,
    fps: float | None = None,
    live: bool = False,
    batch_size: int = 8,
    on_frame: OnFrame | None = None,
    max_frames: int | None = None,
    tracker: Tracker | None = None,
    output_video: str | os.PathLike | None = None,
    progress: bool = False,
    keep_frames: bool = True,
    overrides: dict[str, Any] | None = None,
) -> VideoReport:
    """Recognise and track the objects of a video, stream or camera.

    Args:
        source: a path, URL, camera index, frame iterable or :class:`FrameSource` (see :func:`open_source`).
        recognizer: ``recognizer(images, **overrides) -> list[list[Recognition]]`` (engine or client ``recognize``).
        every / fps: sample every n-th frame, or n frames per second of the source's clock (not both; neither:
            every frame).
        live: bound the latency: keep only the latest frame, drop the rest, report lag (see the module docstring).
        batch_size: frames per recognizer call (not live mode, where it is one frame per call).
        on_frame: called with each :class:`FrameResult` as soon as it is known (in frame order).
        max_frames: stop after this many processed frames.
        tracker: a configured, fresh :class:`Tracker` (default: ``Tracker()``); it keeps its state afterwards.
        output_video: write the processed frames, annotated, to this file (at the processing rate).
        progress: show a tqdm bar on stderr (total: the frame count when known).
        keep_frames: keep every :class:`FrameResult` in the report (turn off for endless streams).
        overrides: keyword arguments passed to every recognizer call (per-request parameters).

    A KeyboardInterrupt stops the run; the report of what was processed is returned with ``interrupted=True``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    sampler = Sampler(every=every, fps=fps)
    tracker = tracker or Tracker()
    overrides = dict(overrides or {})
    src = open_source(source)
    report = VideoReport(source=src.name, fps=src.fps, frame_count=src.frame_count, live=bool(live))
    writer = None
    if output_video is not None:
        writer = AnnotatedVideoWriter(output_video, sampler.effective_fps(src.fps) or 25.0)
    bar = None
    if progress:
        from tqdm import tqdm

        total = None if live else src.frame_count
        bar = tqdm(total=total, unit="frame", desc="recognize-video", dynamic_ncols=True, leave=False)

    def recognize(images: list[np.ndarray]) -> list[list[Recognition]]:
        out = recognizer(images, **overrides) if overrides else recognizer(images)
        out = list(out)
        if len(out) != len(images):
            raise RuntimeError(f"recognizer returned {len(out)} results for {len(images)} images")
        return [_as_recognitions(r) for r in out]

    def emit(frame: Frame, recs: list[Recognition], lag: float | None, dropped: int | None) -> None:
        upd = tracker.update(recs, frame.index, frame.time)
        result = FrameResult(frame.index, frame.time, upd.tracks, upd.frame_label, recs, lag, dropped)
        report.frames_processed += 1
        if lag is not None:
            report.add_lag(lag, bounded=not keep_frames)
        if keep_frames:
            report.frames.append(result)
        if writer is not None:
            writer.write(draw_tracks(frame.image, result))
        if on_frame is not None:
            on_frame(result)

    start = time.monotonic()
    try:
        if live:
            _run_live(src, sampler, recognize, emit, report, max_frames, bar)
        else:
            _run_batched(src, sampler, recognize, emit, report, max_frames, batch_size, bar)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        if not live:  # in live mode the reader thread closes the source when it stops
            src.close()
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
        report.elapsed = time.monotonic() - start
        report.tracks = tracker.summaries()
        report.frame_label = tracker.frame_label_summary()
    return report


def _run_batched(src, sampler, recognize, emit, report, max_frames, batch_size, bar) -> None:
    batch: list[Frame] = []

    def flush() -> None:
        if batch:
            results = recognize([f.image for f in batch])
            for frame, recs in zip(batch, results):
                emit(frame, recs, None, None)
            batch.clear()

    while max_frames is None or report.frames_processed + len(batch) < max_frames:
        frame = src.read()
        if frame is None:
            break
        report.frames_read += 1
        if bar is not None:
            bar.update(1)
        if not sampler(frame):
            report.frames_skipped += 1
            continue
        batch.append(frame)
        if len(batch) >= batch_size:
            flush()
    flush()


def _run_live(src, sampler, recognize, emit, report, max_frames, bar) -> None:
    reader = LatestFrameReader(src, sampler).start()
    try:
        while max_frames is None or report.frames_processed < max_frames:
            frame = reader.get()
            if frame is None:
                break
            recs = recognize([frame.image])[0]
            lag = time.monotonic() - frame.captured_at
            emit(frame, recs, lag, reader.frames_dropped)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(lag=f"{lag:.3f}s", dropped=reader.frames_dropped, refresh=False)
    finally:
        reader.stop()
        report.frames_read = reader.frames_read
        report.frames_skipped = reader.frames_skipped
        report.frames_dropped = reader.frames_dropped
