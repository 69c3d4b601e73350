"""Videos as inputs: sources, sampling, batching, tracking with voted labels, annotated output and the CLI.

The test videos are made here with OpenCV (MJPG in .avi) from real photographs: a crop of the cat of scikit-image's
``chelsea`` slides across a ``rocket`` launch-pad background for the whole clip, and a crop of the ``astronaut``'s
face enters at frame 12, moves the other way in a lower lane and leaves after frame 29. A deterministic fake
recognizer finds the pasted crops by template matching (so it really looks at the decoded frames) and adds label
noise (every 4th cat detection says "dog", every 5th astronaut one says "person", every 3rd whole-image one says
"tower", always with lower scores) to test the vote. One test runs the real engine.
"""

from __future__ import annotations

import functools
import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from shitu.serving.cli import video as video_cli
from shitu.serving.results import Recognition
from shitu.serving.video.stream import (
    CaptureSource,
    FrameResult,
    IterableSource,
    Sampler,
    VideoSourceError,
    open_source,
    recognize_video,
)
from shitu.serving.video.tracker import Tracker

W, H, FPS, N_FRAMES = 320, 240, 25.0, 40
CAT_SIZE, ASTRO_SIZE = (96, 72), (64, 64)  # (w, h)
ASTRO_FIRST, ASTRO_LAST = 12, 29


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


BACKGROUND = cv2.resize(_bgr(data.rocket()), (W, H), interpolation=cv2.INTER_AREA)
CAT_PHOTO = _bgr(data.chelsea())[10:290, 30:400]  # the cat's head
CAT = cv2.resize(CAT_PHOTO, CAT_SIZE, interpolation=cv2.INTER_AREA)
ASTRO = cv2.resize(_bgr(data.astronaut())[30:230, 140:340], ASTRO_SIZE, interpolation=cv2.INTER_AREA)


def cat_box(i: int) -> list[int]:
    x, y = 8 + 5 * i, 16
    return [x, y, x + CAT_SIZE[0], y + CAT_SIZE[1]]


def astro_box(i: int) -> list[int] | None:
    if not ASTRO_FIRST <= i <= ASTRO_LAST:
        return None
    x, y = 250 - 6 * (i - ASTRO_FIRST), 160
    return [x, y, x + ASTRO_SIZE[0], y + ASTRO_SIZE[1]]


def scene(i: int) -> np.ndarray:
    frame = BACKGROUND.copy()
    x1, y1, x2, y2 = cat_box(i)
    frame[y1:y2, x1:x2] = CAT
    box = astro_box(i)
    if box is not None:
        x1, y1, x2, y2 = box
        frame[y1:y2, x1:x2] = ASTRO
    return frame


def write_video(path: Path, n: int = N_FRAMES, fps: float = FPS) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (W, H))
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi here"
    for i in range(n):
        writer.write(scene(i))
    writer.release()
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), "OpenCV cannot read back the MJPG .avi it wrote"
    cap.release()
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "cat_and_astronaut.avi")


class FakeRecognizer:
    """Finds the pasted crops by template matching; deterministic label noise; records its batch sizes.

    ``miss`` holds image numbers (counted over all calls, from 0) in which the cat is not reported.
    """

    def __init__(self, miss: set[int] = frozenset(), as_dicts: bool = False):
        self.templates = [("cat", "dog", CAT, 4), ("astronaut", "person", ASTRO, 5)]
        self.counts = {"cat": 0, "astronaut": 0, "whole": 0}
        self.miss = set(miss)
        self.as_dicts = as_dicts
        self.batches: list[int] = []
        self.images = 0

    def __call__(self, images: list[np.ndarray]) -> list[list[Recognition]]:
        self.batches.append(len(images))
        out = []
        for image in images:
            recs = []
            for label, wrong, template, period in self.templates:
                res = cv2.matchTemplate(image, template, cv2.TM_CCOEFF_NORMED)
                _, best, _, (x, y) = cv2.minMaxLoc(res)
                if best < 0.8 or (label == "cat" and self.images in self.miss):
                    continue
                k = self.counts[label]
                self.counts[label] += 1
                noisy = k % period == period - 1
                th, tw = template.shape[:2]
                recs.append(
                    Recognition([x, y, x + tw, y + th], wrong if noisy else label, 0.55 if noisy else 0.85, 0.9)
                )
            k = self.counts["whole"]
            self.counts["whole"] += 1
            h, w = image.shape[:2]
            recs.append(
                Recognition(
                    [0, 0, w, h],
                    "tower" if k % 3 == 2 else "rocket",
                    0.4 if k % 3 == 2 else 0.6,
                    1.0,
                    is_whole_image=True,
                )
            )
            out.append([r.to_dict() for r in recs] if self.as_dicts else recs)
            self.images += 1
        return out


def near(box, truth, tol=3) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(box, truth))


# --- sources -------------------------------------------------------------------------------------------------


def test_file_source_reads_every_frame_with_media_timestamps(video):
    src = open_source(video)
    assert isinstance(src, CaptureSource)
    assert src.fps == pytest.approx(FPS) and src.frame_count == N_FRAMES and not src.is_live
    frames = []
    while (f := src.read()) is not None:
        frames.append(f)
    src.close()
    assert [f.index for f in frames] == list(range(N_FRAMES))
    assert [f.time for f in frames] == pytest.approx([i / FPS for i in range(N_FRAMES)])
    assert frames[0].image.shape == (H, W, 3)
    # The decoded frame still shows the cat where it was pasted (MJPG is lossy, not that lossy).
    x1, y1, x2, y2 = cat_box(7)
    assert np.abs(frames[7].image[y1:y2, x1:x2].astype(int) - CAT.astype(int)).mean() < 12


def test_open_source_errors_and_kinds(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoSourceError):
        open_source(junk)
    with pytest.raises(TypeError):
        open_source(np.zeros((10, 10, 3), np.uint8))  # one image is not a video
    src = open_source([np.zeros((4, 4, 3), np.uint8)] * 3)
    assert isinstance(src, IterableSource) and src.frame_count == 3
    # A digit string is a camera index, unless a file of that name exists.
    write_video(tmp_path / "zero.avi", n=3).rename(tmp_path / "0")
    monkeypatch.chdir(tmp_path)
    src = open_source("0")
    assert isinstance(src, CaptureSource) and src.frame_count == 3 and not src.is_live
    src.close()


def test_sampler_every_and_fps():
    from shitu.serving.video.stream import Frame

    frames = [Frame(i, i / 25.0, None) for i in range(50)]
    s = Sampler(every=3)
    assert [f.index for f in frames if s(f)] == list(range(0, 50, 3))
    s = Sampler(fps=5)
    assert [f.index for f in frames if s(f)] == list(range(0, 50, 5))
    s = Sampler(fps=100)  # faster than the source: every frame
    assert sum(s(f) for f in frames) == 50
    s = Sampler(fps=10)  # 25/10: alternately 3 and 2 frames apart, no drift
    kept = [f.index for f in frames if s(f)]
    assert kept[:5] == [0, 3, 5, 8, 10] and len(kept) == 20
    s = Sampler(fps=2)  # a gap in the timestamps restarts the grid instead of bursting
    assert [s(Frame(i, t, None)) for i, t in enumerate([0.0, 0.5, 3.0, 3.1, 3.5, 3.6])] == [
        True,
        True,
        True,
        False,
        True,
        False,
    ]
    with pytest.raises(ValueError):
        Sampler(every=2, fps=5)
    with pytest.raises(ValueError):
        Sampler(every=0)


# --- tracking over a real video ------------------------------------------------------------------------------


def test_tracks_follow_objects_with_voted_labels(video):
    rec = FakeRecognizer()
    report = recognize_video(video, rec, batch_size=4)
    assert report.frames_read == report.frames_processed == N_FRAMES and report.frames_skipped == 0
    assert report.frames_dropped == 0 and not report.live and report.lags == []
    assert set(rec.batches) == {4}

    cat, astro = report.tracks  # exactly two tracks, ids by confirmation order
    assert (cat.track_id, cat.label, cat.first_frame, cat.last_frame, cat.frames) == (
        1,
        "cat",
        0,
        N_FRAMES - 1,
        N_FRAMES,
    )
    assert cat.first_time == 0.0 and cat.last_time == pytest.approx((N_FRAMES - 1) / FPS)
    assert set(cat.votes) == {"cat", "dog"} and cat.confidence == pytest.approx(30 * 0.85 / (30 * 0.85 + 10 * 0.55))
    assert cat.score == pytest.approx(0.85)
    assert (astro.track_id, astro.label, astro.first_frame, astro.last_frame) == (
        2,
        "astronaut",
        ASTRO_FIRST,
        ASTRO_LAST,
    )
    assert astro.frames == ASTRO_LAST - ASTRO_FIRST + 1
    assert astro.first_time == pytest.approx(ASTRO_FIRST / FPS)
    assert report.frame_label.label == "rocket" and report.frame_label.track_id == 0
    assert report.frame_label.frames == N_FRAMES

    raw_cat_labels = set()
    for r in report.frames:
        by_id = {t.track_id: t for t in r.tracks}
        # Reported once confirmed (min_hits=2): from the second frame each object is seen in.
        assert (1 in by_id) == (r.index >= 1)
        assert (2 in by_id) == (ASTRO_FIRST + 1 <= r.index <= ASTRO_LAST)
        if 1 in by_id:
            assert by_id[1].label == "cat"  # voted: never flickers to "dog"
            assert near(by_id[1].bbox, cat_box(r.index))
            raw_cat_labels.add(by_id[1].raw_label)
        if 2 in by_id:
            assert by_id[2].label == "astronaut" and near(by_id[2].bbox, astro_box(r.index))
        assert r.frame_label.label == "rocket"
        assert r.time == pytest.approx(r.index / FPS)
    assert raw_cat_labels == {"cat", "dog"}  # the noise was there, the vote hid it


def test_batch_size_does_not_change_the_result(video):
    small, large = FakeRecognizer(), FakeRecognizer()
    a = recognize_video(video, small, batch_size=1)
    b = recognize_video(video, large, batch_size=7)
    assert set(small.batches) == {1}
    assert large.batches == [7] * 5 + [5]
    assert a.to_dict()["frames"] == b.to_dict()["frames"]
    assert [t.to_dict() for t in a.tracks] == [t.to_dict() for t in b.tracks]


@pytest.mark.parametrize(
    "kwargs,expected", [({"every": 3}, list(range(0, N_FRAMES, 3))), ({"fps": 5}, list(range(0, N_FRAMES, 5)))]
)
def test_sampled_frames_are_tracked(video, kwargs, expected):
    report = recognize_video(video, FakeRecognizer(), **kwargs)
    assert [f.index for f in report.frames] == expected
    assert report.frames_read == N_FRAMES and report.frames_skipped == N_FRAMES - len(expected)
    labels = {t.label: t for t in report.tracks}
    assert sorted(labels) == ["astronaut", "cat"] and len(report.tracks) == 2
    assert labels["cat"].first_frame == 0 and labels["cat"].last_frame == expected[-1]
    seen = [i for i in expected if astro_box(i) is not None]
    assert labels["astronaut"].first_frame == seen[0] and labels["astronaut"].last_frame == seen[-1]


def test_missed_frames_keep_the_track_within_max_age(video):
    report = recognize_video(video, FakeRecognizer(miss={20, 21}), tracker=Tracker(max_age=3))
    cats = [t for t in report.tracks if t.label == "cat"]
    assert len(cats) == 1 and cats[0].frames == N_FRAMES - 2 and cats[0].last_frame == N_FRAMES - 1
    assert 1 not in {t.track_id for t in report.frames[20].tracks}  # not drawn while missed

    report = recognize_video(video, FakeRecognizer(miss={20, 21}), tracker=Tracker(max_age=1))
    cats = [t for t in report.tracks if t.label == "cat"]
    assert [(t.first_frame, t.last_frame) for t in cats] == [(0, 19), (22, N_FRAMES - 1)]
    assert cats[0].track_id != cats[1].track_id


def test_whole_image_box_can_be_excluded(video):
    report = recognize_video(video, FakeRecognizer(), tracker=Tracker(whole_image="exclude"))
    assert report.frame_label is None and all(f.frame_label is None for f in report.frames)
    assert [t.label for t in report.tracks] == ["cat", "astronaut"]


def test_on_frame_max_frames_dict_results_and_overrides(video):
    seen: list[FrameResult] = []
    calls = []

    def recognizer(images, **overrides):
        calls.append(overrides)
        return FakeRecognizer(as_dicts=True)(images)

    report = recognize_video(
        video,
        recognizer,
        on_frame=seen.append,
        max_frames=10,
        batch_size=4,
        overrides={"threshold": 0.4},
        keep_frames=False,
    )
    assert [f.index for f in seen] == list(range(10))
    assert report.frames_processed == 10 and report.frames == []
    assert calls == [{"threshold": 0.4}] * 3
    assert seen[5].tracks[0].label == "cat"


def test_recognizer_must_return_one_result_per_image(video):
    with pytest.raises(RuntimeError, match="2 results for 1 images"):
        recognize_video(video, lambda images: [[], []], batch_size=1)


def test_annotated_output_video(video, tmp_path):
    out = tmp_path / "out" / "annotated.mp4"
    report = recognize_video(video, FakeRecognizer(), every=2, output_video=out)
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == report.frames_processed == N_FRAMES // 2
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS / 2)
    for _ in range(5):
        ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (H, W, 3)
    # Frame 8 of the source: the cat's box outline is drawn around it (track #1's colour, not the photo).
    x1, y1, x2, y2 = cat_box(8)
    plain = scene(8)
    rows, cols = slice(y2 - 1, y2 + 2), slice(x1 + 10, x2 - 10)
    assert np.abs(frame[rows, cols].astype(int) - plain[rows, cols]).mean() > 40
    rows = slice(y2 + 6, y2 + 9)  # and nothing drawn a bit further down
    assert np.abs(frame[rows, cols].astype(int) - plain[rows, cols]).mean() < 15


def test_real_engine_tracks_the_cat(video, tmp_path):
    """The real default models: a gallery made of the cat's photo, and the video of it moving."""
    from shitu.serving.engine.engine import load_engine

    engine = load_engine(gallery=tmp_path / "g")
    try:
        engine.gallery_add([CAT_PHOTO], ["cat"])
        # the gallery picture is the tight crop pasted in the video: boxes are not widened to frame it like a
        # picture with a margin (general-lite's crop_padding 0.2 scores it 0.34-0.43 with centred embeddings)
        report = recognize_video(video, functools.partial(engine.recognize, crop_padding=0.0), every=2, batch_size=4)
    finally:
        engine.close()
    cats = [t for t in report.tracks if t.label == "cat"]
    assert cats, f"no cat track: {[t.to_dict() for t in report.tracks]}"
    best = max(cats, key=lambda t: t.frames)
    assert best.frames >= 0.6 * report.frames_processed
    assert best.first_frame <= 8 and best.last_frame >= N_FRAMES - 10
    boxes = {f.index: t.bbox for f in report.frames for t in f.tracks if t.track_id == best.track_id}
    from shitu.serving.video.tracker import iou_matrix

    assert all(iou_matrix([b], [cat_box(i)])[0, 0] > 0.6 for i, b in boxes.items())


# --- the CLI -------------------------------------------------------------------------------------------------


def test_cli_in_process_with_the_real_engine(video, tmp_path, capsys):
    """`shitu recognize-video VIDEO --gallery DIR` through the real entry point, real models, real faiss."""
    from shitu.serving.cli import main as shitu_main
    from shitu.serving.engine.engine import load_engine

    engine = load_engine(gallery=tmp_path / "g")
    try:  # a catalogue-like picture: the cat on a white margin, as the pack's crop_padding expects
        h, w = CAT_PHOTO.shape[:2]
        framed = cv2.copyMakeBorder(
            CAT_PHOTO, h // 5, h // 5, w // 5, w // 5, cv2.BORDER_CONSTANT, value=(255, 255, 255)
        )
        engine.gallery_add([framed], ["cat"])
    finally:
        engine.close()
    rc = shitu_main(
        ["recognize-video", str(video), "--gallery", str(tmp_path / "g"), "--every", "4", "--json", "--no-progress"]
    )
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0
    tracks = [x for x in lines if x["type"] == "track"]
    assert any(t["label"] == "cat" for t in tracks), tracks
    assert lines[-1]["type"] == "summary" and lines[-1]["frames_processed"] == N_FRAMES // 4


def run_cli(argv, monkeypatch, recognizer=None):
    """Run ``recognize-video`` through :func:`video_cli.main` with a fake engine (records load_engine's args)."""
    loaded = []

    class FakeEngine:
        def __init__(self, **kwargs):
            loaded.append(kwargs)
            self.recognize = recognizer or FakeRecognizer()

    fake = types.ModuleType("shitu.serving.engine.engine")
    fake.load_engine = lambda scenario=None, gallery=None, params=None: FakeEngine(scenario=scenario, gallery=gallery)
    monkeypatch.setitem(sys.modules, "shitu.serving.engine.engine", fake)
    return video_cli.main(["recognize-video", *map(str, argv)]), loaded


def test_cli_json_lines_with_a_fake_engine(video, monkeypatch, capsys):
    rc, loaded = run_cli([video, "--json", "--no-progress", "--every", "2", "--gallery", "g1"], monkeypatch)
    assert rc == 0 and loaded == [{"scenario": None, "gallery": "g1"}]
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    frames = [x for x in lines if x["type"] == "frame"]
    tracks = [x for x in lines if x["type"] == "track"]
    summary = lines[-1]
    assert [f["frame"] for f in frames] == list(range(0, N_FRAMES, 2))
    assert frames[3]["tracks"][0]["track_id"] == 1 and frames[3]["tracks"][0]["label"] == "cat"
    assert set(frames[3]["tracks"][0]) >= {"track_id", "bbox", "label", "score", "confidence", "raw_label"}
    assert frames[3]["frame_label"]["label"] == "rocket" and frames[3]["time"] == pytest.approx(6 / FPS)
    assert [(t["track_id"], t["label"], t["first_frame"], t["last_frame"]) for t in tracks] == [
        (1, "cat", 0, 38),
        (2, "astronaut", 12, 28),
        (0, "rocket", 0, 38),
    ]
    assert summary["type"] == "summary" and summary["frames_processed"] == N_FRAMES // 2
    assert summary["frames_skipped"] == N_FRAMES // 2 and summary["live"] is False


def test_cli_human_output_progress_and_video_with_a_fake_engine(video, monkeypatch, capsys, tmp_path):
    out = tmp_path / "a.avi"
    rc, _ = run_cli([video, "--fps", "5", "--output-video", out, "--batch-size", "3"], monkeypatch)
    assert rc == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("frame      0  t=   0.000s  (no tracks)  | frame: rocket")
    assert "#1 cat 0.850 [" in lines[1]
    assert any(line.startswith("#2     astronaut") for line in lines)
    assert f"8 frames processed of {N_FRAMES} read (32 skipped by sampling, 0 dropped), 2 track(s)" in captured.out
    assert f"{N_FRAMES}/{N_FRAMES}" in captured.err  # the progress bar knew the total
    assert out.exists() and out.stat().st_size > 0


def test_cli_server_mode_builds_the_client_with_a_fake_client(video, monkeypatch, capsys):
    urls = []

    class FakeClient:
        def __init__(self, base_url):
            urls.append(base_url)
            self.recognize = FakeRecognizer()

    fake = types.ModuleType("shitu.serving.client.sdk")
    fake.ShituClient = FakeClient
    monkeypatch.setitem(sys.modules, "shitu.serving.client.sdk", fake)
    rc = video_cli.main(
        ["recognize-video", str(video), "--server", "http://srv:8866", "--json", "--no-progress", "--max-frames", "5"]
    )
    assert rc == 0 and urls == ["http://srv:8866"]
    assert [json.loads(x)["type"] for x in capsys.readouterr().out.splitlines()] == ["frame"] * 5 + [
        "track",
        "track",
        "summary",
    ]


def test_cli_exit_status_with_fakes(video, tmp_path, monkeypatch, capsys):
    rc, loaded = run_cli([tmp_path / "nope.avi", "--no-progress"], monkeypatch)
    assert rc == 2 and loaded == [] and "no such video file" in capsys.readouterr().err
    rc, _ = run_cli(
        [video, "--no-progress", "--max-frames", "3"], monkeypatch, recognizer=lambda images: [[] for _ in images]
    )
    assert rc == 1 and "no tracks" in capsys.readouterr().out  # nothing recognised

    def broken(images):
        raise ConnectionError("server went away")

    rc, _ = run_cli([video, "--no-progress"], monkeypatch, recognizer=broken)
    assert rc == 3 and "ConnectionError: server went away" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "shitu.serving.client.sdk", None)  # no client SDK installed
    rc = video_cli.main(["recognize-video", str(video), "--server", "http://srv", "--no-progress"])
    assert rc == 3 and "cannot start the client for http://srv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        video_cli.main(["recognize-video", "x.avi", "--every", "2", "--fps", "3"])
    with pytest.raises(SystemExit):
        video_cli.main(["recognize-video", "x.avi", "--every", "0"])


def test_register_adds_the_subcommand():
    import argparse

    parser = argparse.ArgumentParser()
    register_into = parser.add_subparsers(dest="cmd")
    video_cli.register(register_into)
    args = parser.parse_args(["recognize-video", "rtsp://cam/1", "--live", "--max-frames", "3"])
    assert args.func is video_cli.run and args.live is True and args.input == "rtsp://cam/1"
    assert args.batch_size == 8 and args.every is None and args.whole_image == "track"


def test_ctrl_c_returns_what_was_processed(video):
    rec = FakeRecognizer()

    def interrupted_on_third_call(images):
        if len(rec.batches) == 2:
            raise KeyboardInterrupt
        return rec(images)

    report = recognize_video(video, interrupted_on_third_call, batch_size=4)
    assert report.interrupted and report.frames_processed == 8
    assert [t.label for t in report.tracks] == ["cat"] and report.tracks[0].last_frame == 7
