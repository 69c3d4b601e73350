"""The IoU tracker: matching (Hungarian and greedy), track birth (min_hits), death (max_age), the label vote and
the whole-image track."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from shitu.serving.results import Recognition
from shitu.serving.video.tracker import Tracker, iou_matrix, match_greedy, match_hungarian


def rec(box, label="cat", score=0.8, whole=False) -> Recognition:
    return Recognition(list(box), label, score, 0.9, is_whole_image=whole)


def box_at(x, y=10, w=50, h=50):
    return [x, y, x + w, y + h]


def test_iou_matrix():
    a = [[0, 0, 10, 10], [0, 0, 10, 10]]
    b = [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]]
    m = iou_matrix(a, b)
    assert m.shape == (2, 4)
    assert m[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0, 0.0])
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 4)


def test_hungarian_maximises_total_iou_where_greedy_does_not():
    iou = np.array([[0.9, 0.8], [0.8, 0.1]])
    assert match_greedy(iou, 0.3) == [(0, 0)]  # takes 0.9 first, leaving a 0.1 pair under the threshold
    assert match_hungarian(iou, 0.3) == [(0, 1), (1, 0)]  # 1.6 in total, both above the threshold
    # Pairs under the threshold never match, and never push an allowed pair out.
    assert match_hungarian(np.array([[0.5, 0.0], [0.0, 0.2]]), 0.3) == [(0, 0)]
    assert match_greedy(np.zeros((0, 3)), 0.3) == [] and match_hungarian(np.zeros((2, 0)), 0.3) == []


def test_matcher_falls_back_to_greedy_without_scipy(monkeypatch):
    assert Tracker().matcher == "hungarian"  # scipy is installed here
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    t = Tracker()
    assert t.matcher == "greedy"
    with pytest.raises(ImportError):
        Tracker(matcher="hungarian")
    # The greedy tracker still tracks.
    for i in range(5):
        t.update([rec(box_at(10 + 4 * i)), rec(box_at(10 + 4 * i, y=200))], i)
    assert [(s.track_id, s.frames) for s in t.summaries()] == [(1, 5), (2, 5)]


def test_min_hits_confirms_after_consecutive_frames_and_first_frame_is_first_seen():
    t = Tracker(min_hits=3)
    out = [t.update([rec(box_at(10 + 2 * i))], i, i / 10) for i in range(5)]
    assert [len(u.tracks) for u in out] == [0, 0, 1, 1, 1]
    s = t.summaries()[0]
    assert (s.track_id, s.first_frame, s.first_time, s.last_frame, s.frames) == (1, 0, 0.0, 4, 5)


def test_one_frame_false_positives_never_become_tracks_nor_use_ids():
    t = Tracker(min_hits=2)
    t.update([rec(box_at(300), "ghost")], 0)  # seen once, gone
    for i in range(1, 4):
        upd = t.update([rec(box_at(10))], i)
    assert [(s.track_id, s.label) for s in t.summaries()] == [(1, "cat")]
    assert upd.tracks[0].track_id == 1
    # A tentative track that misses one frame is discarded, even with a large max_age.
    t = Tracker(min_hits=3, max_age=10)
    t.update([rec(box_at(10))], 0)
    t.update([rec(box_at(10))], 1)
    t.update([], 2)
    t.update([rec(box_at(10))], 3)
    t.update([rec(box_at(10))], 4)
    assert t.summaries() == []


def test_min_hits_one_reports_at_once():
    t = Tracker(min_hits=1)
    upd = t.update([rec(box_at(10))], 0)
    assert [o.track_id for o in upd.tracks] == [1]


@pytest.mark.parametrize("gap,max_age,same", [(2, 2, True), (3, 2, False), (1, 0, False)])
def test_max_age(gap, max_age, same):
    t = Tracker(max_age=max_age, min_hits=1)
    frame = 0
    for _ in range(3):
        t.update([rec(box_at(10))], frame)
        frame += 1
    for _ in range(gap):
        assert t.update([], frame).tracks == []
        frame += 1
    upd = t.update([rec(box_at(10))], frame)
    assert (upd.tracks[0].track_id == 1) is same
    summaries = t.summaries()
    assert len(summaries) == (1 if same else 2)
    if not same:
        assert (summaries[0].last_frame, summaries[1].first_frame) == (2, frame)


def test_score_weighted_vote_not_majority():
    t = Tracker(min_hits=1)
    labels = [("cat", 0.9), ("cat", 0.9), ("dog", 0.3), ("dog", 0.3), ("dog", 0.3)]
    seen = []
    for i, (label, score) in enumerate(labels):
        upd = t.update([rec(box_at(10), label, score)], i)
        seen.append((upd.tracks[0].label, upd.tracks[0].raw_label))
    assert seen == [("cat", "cat"), ("cat", "cat"), ("cat", "dog"), ("cat", "dog"), ("cat", "dog")]
    s = t.summaries()[0]
    assert s.label == "cat"  # 3 "dog" frames against 2 "cat" ones, but 1.8 against 0.9 in score
    assert s.confidence == pytest.approx(1.8 / 2.7)
    assert s.score == pytest.approx(0.9)
    assert s.votes == pytest.approx({"cat": 1.8, "dog": 0.9})


def test_vote_window_follows_a_change():
    t = Tracker(min_hits=1, vote_window=3)
    for i in range(6):
        t.update([rec(box_at(10), "cat" if i < 3 else "dog", 0.8)], i)
    s = t.summaries()[0]
    assert s.label == "dog" and s.confidence == pytest.approx(1.0) and s.votes == pytest.approx({"dog": 2.4})
    t = Tracker(min_hits=1)  # no window: the tie goes to the label voted first
    for i in range(6):
        t.update([rec(box_at(10), "cat" if i < 3 else "dog", 0.8)], i)
    assert t.summaries()[0].label == "cat"


def test_whole_image_is_its_own_track_and_never_matches_boxes():
    t = Tracker(min_hits=2)
    whole = [0, 0, 60, 70]
    for i in range(4):
        # The object box covers almost all of the image: IoU with the whole-image box is high.
        upd = t.update(
            [rec(box_at(0, y=0, w=60, h=68), "cat"), rec(whole, "kitchen" if i != 2 else "garden", 0.5, whole=True)],
            i,
            i * 0.5,
        )
        assert upd.frame_label is not None and upd.frame_label.track_id == 0
        assert upd.frame_label.label == "kitchen" and upd.frame_label.is_whole_image
    assert [(s.track_id, s.label, s.frames) for s in t.summaries()] == [(1, "cat", 4)]
    fl = t.frame_label_summary()
    assert (fl.track_id, fl.label, fl.frames, fl.first_frame, fl.last_time) == (0, "kitchen", 4, 0, 1.5)
    assert fl.confidence == pytest.approx(1.5 / 2.0)

    t = Tracker(whole_image="exclude")
    upd = t.update([rec(whole, "kitchen", whole=True)], 0)
    assert upd.frame_label is None and upd.tracks == [] and t.frame_label_summary() is None
    assert t.summaries() == []


def test_velocity_prediction_keeps_an_accelerating_object():
    # Steps of 10, 20, 30, 40, 40, 40 px on a 50 px box: from the 30 px step on, the last box overlaps the new
    # one by IoU < 0.3, the predicted box by far more.
    xs = [0, 10, 30, 60, 100, 140, 180]
    with_prediction, without = Tracker(min_hits=1), Tracker(min_hits=1, predict=False)
    for i, x in enumerate(xs):
        with_prediction.update([rec(box_at(x))], i)
        without.update([rec(box_at(x))], i)
    assert [s.frames for s in with_prediction.summaries()] == [7]
    assert len(without.summaries()) > 1


def test_two_objects_keep_their_ids_and_labels():
    t = Tracker()
    for i in range(10):
        recs = [rec(box_at(10 + 5 * i, y=10), "cat", 0.8), rec(box_at(300 - 5 * i, y=100), "cup", 0.7)]
        upd = t.update(recs[::-1] if i % 2 else recs, i)  # order of the boxes does not matter
        if i >= 1:
            assert [(o.track_id, o.label) for o in upd.tracks] == [(1, "cat"), (2, "cup")]
    assert t.active_count == 2


def test_parameter_validation():
    for kwargs in (
        {"iou_threshold": 0},
        {"max_age": -1},
        {"min_hits": 0},
        {"whole_image": "box"},
        {"matcher": "magic"},
        {"vote_window": 0},
    ):
        with pytest.raises(ValueError):
            Tracker(**kwargs)
