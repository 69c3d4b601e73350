"""What a video run reports: :class:`FrameResult` per processed frame and :class:`VideoReport` for the run (frames
read = processed + dropped + skipped, lag statistics, one :class:`~.tracker.TrackSummary` per track)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shitu.serving.results import Recognition
from shitu.serving.video.tracker import TrackObservation, TrackSummary

__all__ = ["LAG_WINDOW", "FrameResult", "VideoReport"]

#: Lags kept for the p95 of an endless stream (``keep_frames=False``).
LAG_WINDOW = 10_000


@dataclass
class FrameResult:
    """One processed frame: its tracks (confirmed tracks matched in it, with voted labels) and the frame label."""

    index: int
    time: float
    tracks: list[TrackObservation]
    frame_label: TrackObservation | None
    #: The frame's raw recognitions, as the recognizer returned them.
    recognitions: list[Recognition] = field(default_factory=list)
    #: Live mode: seconds from capture to the end of recognition, and frames dropped so far.
    lag: float | None = None
    dropped: int | None = None

    def to_dict(self, raw: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "frame": self.index,
            "time": round(float(self.time), 4),
            "tracks": [t.to_dict() for t in self.tracks],
            "frame_label": None
            if self.frame_label is None
            else {
                "label": self.frame_label.label,
                "score": round(float(self.frame_label.score), 6),
                "confidence": round(float(self.frame_label.confidence), 6),
                "raw_label": self.frame_label.raw_label,
                "raw_score": round(float(self.frame_label.raw_score), 6),
            },
        }
        if self.lag is not None:
            d["lag"] = round(float(self.lag), 4)
        if self.dropped is not None:
            d["dropped"] = int(self.dropped)
        if raw:
            d["recognitions"] = [r.to_dict() for r in self.recognitions]
        return d


@dataclass
class VideoReport:
    """Everything :func:`recognize_video` found in one source."""

    source: str
    #: The source's nominal frame rate and frame count (``None`` when unknown).
    fps: float | None
    frame_count: int | None
    live: bool
    frames_read: int = 0
    frames_processed: int = 0
    #: Frames the sampler passed over (``every`` / ``fps``).
    frames_skipped: int = 0
    #: Live mode: sampled frames replaced by a newer one before recognition was free for them.
    frames_dropped: int = 0
    #: Per processed frame (empty when ``keep_frames=False``).
    frames: list[FrameResult] = field(default_factory=list)
    #: Confirmed object tracks, by id.
    tracks: list[TrackSummary] = field(default_factory=list)
    #: The whole-image track over the video (``None`` when excluded or absent).
    frame_label: TrackSummary | None = None
    #: Live mode: lag of each processed frame, in seconds (the last :data:`LAG_WINDOW` only when
    #: ``keep_frames=False``; mean and max in :meth:`lag_stats` still cover every frame).
    lags: list[float] = field(default_factory=list)
    #: Seconds spent from the first read to the end.
    elapsed: float = 0.0
    interrupted: bool = False
    _lag_n: int = field(default=0, repr=False)
    _lag_sum: float = field(default=0.0, repr=False)
    _lag_max: float = field(default=0.0, repr=False)

    def add_lag(self, lag: float, bounded: bool = False) -> None:
        self._lag_n += 1
        self._lag_sum += lag
        self._lag_max = max(self._lag_max, lag)
        self.lags.append(lag)
        if bounded and len(self.lags) > 2 * LAG_WINDOW:
            del self.lags[:-LAG_WINDOW]

    def lag_stats(self) -> dict[str, float] | None:
        """Live mode: ``{"mean", "p95", "max"}`` lag in seconds (p95 over :attr:`lags`), else ``None``."""
        if not self._lag_n:
            return None
        return {
            "mean": round(self._lag_sum / self._lag_n, 4),
            "p95": round(float(np.percentile(np.asarray(self.lags, np.float64), 95)), 4),
            "max": round(self._lag_max, 4),
        }

    def track(self, track_id: int) -> TrackSummary:
        for t in self.tracks:
            if t.track_id == track_id:
                return t
        raise KeyError(track_id)

    def to_dict(self, frames: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "source": self.source,
            "fps": None if self.fps is None else round(float(self.fps), 4),
            "frame_count": self.frame_count,
            "live": self.live,
            "frames_read": self.frames_read,
            "frames_processed": self.frames_processed,
            "frames_skipped": self.frames_skipped,
            "frames_dropped": self.frames_dropped,
            "lag": self.lag_stats(),
            "elapsed": round(float(self.elapsed), 3),
            "interrupted": self.interrupted,
            "tracks": [t.to_dict() for t in self.tracks],
            "frame_label": None if self.frame_label is None else self.frame_label.to_dict(),
        }
        if frames:
            d["frames"] = [f.to_dict() for f in self.frames]
        return d
