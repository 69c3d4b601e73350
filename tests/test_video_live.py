"""Live mode: when recognition is slower than the stream, frames are dropped (never queued) and lag stays bounded.

The sources here run on their own clock like a camera: a synthetic 100 fps source delivers frame i at
``t0 + i / 100`` whether or not anybody is ready for it. The behaviour tests assert what must hold however slow
the machine is (frames dropped, never queued; every frame accounted for; capture order); the bounds that depend
on the machine's speed (lag under half a second against a 50 ms recognizer, how many frames keep up) are the
``timing`` tests, run by ``make bench``.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from shitu.serving.results import Recognition
from shitu.serving.video.stream import Frame, IterableSource, LatestFrameReader, Sampler, recognize_video

LAG_BOUND = 0.5


class PacedSource:
    """A live source: ``n`` frames at ``fps`` on the wall clock (frame i is ready at ``t0 + i / fps``)."""

    def __init__(self, n: int = 200, fps: float = 100.0):
        self.name, self.fps, self.frame_count, self.is_live = "synthetic", fps, None, True
        self.n = n
        self._i = 0
        self._t0: float | None = None
        self.closed = False
        # Each frame carries its index in its pixels, so a recognizer can tell which one it got.
        self._images = [np.full((24, 32, 3), i % 256, np.uint8) for i in range(256)]

    def read(self) -> Frame | None:
        if self._i >= self.n or self.closed:
            return None
        if self._t0 is None:
            self._t0 = time.monotonic()
        due = self._t0 + self._i / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        frame = Frame(self._i, self._i / self.fps, self._images[self._i % 256], time.monotonic())
        self._i += 1
        return frame

    def close(self) -> None:
        self.closed = True


class SlowRecognizer:
    """Sleeps ``delay`` seconds per call; reports one box whose label is the frame's index."""

    def __init__(self, delay: float = 0.05):
        self.delay = delay
        self.batches: list[int] = []
        self.seen: list[int] = []

    def __call__(self, images):
        self.batches.append(len(images))
        time.sleep(self.delay)
        out = []
        for img in images:
            self.seen.append(int(img[0, 0, 0]))
            out.append([Recognition([2, 2, 20, 20], "thing", 0.9, 0.9)])
        return out


def test_live_mode_drops_frames_instead_of_queueing():
    source = PacedSource(n=200, fps=100.0)  # 2 s of stream
    rec = SlowRecognizer(0.05)  # 20 frames/s at best: 5x slower than the stream
    threads_before = threading.active_count()
    report = recognize_video(source, rec, live=True, batch_size=8)

    assert report.live and report.frames_read == 200
    assert report.frames_dropped > 0
    # Every frame is accounted for: processed, dropped, or (nothing here) skipped by sampling.
    assert report.frames_processed + report.frames_dropped + report.frames_skipped == report.frames_read
    assert set(rec.batches) == {1}  # one frame per call in live mode, whatever batch_size says
    # Lag is reported per processed frame and stays bounded, at the start and at the end: no queue builds up.
    assert len(report.lags) == report.frames_processed == len(report.frames)
    assert all(f.lag is not None and f.lag >= 0 for f in report.frames)
    stats = report.lag_stats()
    assert stats["mean"] <= stats["max"] and stats["p95"] <= stats["max"]
    assert stats["max"] == pytest.approx(max(report.lags), abs=1e-3)
    assert stats["mean"] == pytest.approx(sum(report.lags) / len(report.lags), abs=1e-3)
    # Frames are processed in capture order, skipping ahead to the latest; 'dropped' counts up to the total.
    indices = [f.index for f in report.frames]
    assert indices == sorted(set(indices)) and indices[-1] >= 190
    assert rec.seen == [i % 256 for i in indices]
    dropped = [f.dropped for f in report.frames]
    assert dropped == sorted(dropped) and dropped[-1] <= report.frames_dropped
    assert report.frames[-1].time == pytest.approx(indices[-1] / 100.0)
    assert source.closed
    deadline = time.monotonic() + 5
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= threads_before  # the reader thread is gone
    track = report.tracks[0]
    assert track.label == "thing" and track.frames == report.frames_processed


def test_live_mode_samples_before_dropping():
    """--fps in live mode: the sampler keeps 20 of 100 frames/s; a recognizer faster than that drops nothing."""
    report = recognize_video(PacedSource(n=100, fps=100.0), SlowRecognizer(0.005), live=True, fps=20)
    assert report.frames_read == 100
    assert report.frames_skipped == 80 and report.frames_processed + report.frames_dropped == 20


def test_latest_frame_reader_holds_one_frame():
    reader = LatestFrameReader(PacedSource(n=30, fps=200.0), Sampler()).start()
    got = []
    while (frame := reader.get(timeout=5)) is not None:
        got.append(frame.index)
        time.sleep(0.03)  # slow consumer
    reader.stop()
    assert reader.ended
    assert got == sorted(got) and got[-1] == 29
    assert reader.frames_read == 30 and reader.frames_dropped == 30 - len(got)


def test_a_file_in_live_mode_is_read_at_its_own_rate():
    """A non-live source (here a list of frames at 50 fps) is paced like a broadcast, so a slow recognizer drops."""
    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(50)]  # 1 s at 50 fps
    report = recognize_video(IterableSource(frames, fps=50.0), SlowRecognizer(0.04), live=True)
    assert report.frames_read == 50 and report.frames_dropped > 0
    # Read all at once, the recognizer would only ever see the first and the last frame; paced, it keeps up
    # with about every other one.
    assert report.frames_processed + report.frames_dropped == 50


def test_live_mode_stops_at_max_frames_and_surfaces_reader_errors():
    report = recognize_video(PacedSource(n=10_000, fps=100.0), SlowRecognizer(0.01), live=True, max_frames=5)
    assert report.frames_processed == 5 and report.frames_read < 10_000

    class Broken(PacedSource):
        def read(self):
            if self._i == 3:
                raise OSError("camera unplugged")
            return super().read()

    with pytest.raises(OSError, match="camera unplugged"):
        recognize_video(Broken(), SlowRecognizer(0.0), live=True)


# -- timing (make bench): bounds that hold on an unloaded machine ------------------------------------------------
@pytest.mark.timing
def test_live_mode_lag_stays_bounded():
    report = recognize_video(PacedSource(n=200, fps=100.0), SlowRecognizer(0.05), live=True, batch_size=8)
    assert report.frames_processed < 60  # about 2 s / 50 ms
    assert all(f.lag < LAG_BOUND for f in report.frames)
    assert max(report.lags[-5:]) < LAG_BOUND  # no queue builds up towards the end
    assert report.lag_stats()["max"] < LAG_BOUND


@pytest.mark.timing
def test_live_mode_fast_recognizer_drops_almost_nothing():
    report = recognize_video(PacedSource(n=100, fps=100.0), SlowRecognizer(0.005), live=True, fps=20)
    assert report.frames_dropped <= 2  # 5 ms of work every 50 ms: at most a scheduling hiccup
    assert all(f.lag < LAG_BOUND for f in report.frames)


@pytest.mark.timing
def test_paced_file_keeps_up_with_every_other_frame():
    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(50)]
    report = recognize_video(IterableSource(frames, fps=50.0), SlowRecognizer(0.04), live=True)
    assert report.frames_processed >= 10
    assert all(f.lag < LAG_BOUND for f in report.frames)
