"""Follow recognised objects across video frames: IoU matching of boxes and a score-weighted label vote.

The engine recognises every frame on its own, so an object's label can flicker from frame to frame (a cat that
is "cat" 0.81 in one frame may be "dog" 0.62 in the next). :class:`Tracker` links the boxes of consecutive
processed frames into tracks and decides each track's label over all of its frames:

- **Matching** -- boxes are matched to tracks by IoU (intersection over union) with the track's *predicted* box
  (its last box moved by its smoothed per-step velocity, so objects still match when frames are sampled
  sparsely). The assignment maximises the total IoU (Hungarian, ``scipy.optimize.linear_sum_assignment``) when
  scipy is importable, else it is greedy (highest IoU pair first); pairs under ``iou_threshold`` never match.
  The label plays no part in matching: it is what the vote is for.
- **Birth** (``min_hits``) -- an unmatched box starts a *tentative* track. It becomes *confirmed*, gets a track id
  (1, 2, 3, ... in order of confirmation) and is reported once it was matched in ``min_hits`` consecutive
  processed frames; a tentative track that misses a frame is discarded (one-frame false positives never become
  tracks). Its first frame is the frame where it was first seen, not where it was confirmed.
- **Death** (``max_age``) -- a confirmed track that is not matched keeps its id for up to ``max_age`` processed
  frames (an object hidden or missed for a moment keeps its id and its vote); after that it ends.
- **Vote** -- every matched frame adds the recognition's ``score`` to its label's weight; the track's label is the
  label with the largest total weight, its ``confidence`` that weight's share of the total, its ``score`` the mean
  score of the frames that voted for it. ``vote_window`` limits the vote to a track's last N frames (default: all).
- **The whole-image box** (``Recognition.is_whole_image``, PP-ShiTu's extra "whole image" region) is not a
  located object, so it never takes part in IoU matching. With ``whole_image="track"`` (default) it is followed
  as one special track, id ``0``, that always matches the whole-image recognition of each frame and whose voted
  label is the *frame label* (what the scene is); ``max_age``/``min_hits`` do not apply to it. With
  ``whole_image="exclude"`` it is ignored and there is no frame label.

Kept rather than supervision's ByteTrack (moved to the ``trackers`` package in supervision 0.31): its Kalman,
two-threshold association has no ``min_hits`` birth, ids in order of confirmation, nor the whole-image track 0.

The tracker counts in *processed* frames (it sees only the frames that were sampled and recognised); frame indices
and timestamps are the caller's and only recorded. It imports numpy only (scipy lazily), so the client SDK can use
it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shitu.serving.results import Recognition
from shitu.serving.results.types import pairwise_iou as iou_matrix

__all__ = [
    "Tracker",
    "TrackObservation",
    "TrackSummary",
    "TrackerUpdate",
    "iou_matrix",
    "match_greedy",
    "match_hungarian",
    "WHOLE_IMAGE_TRACK_ID",
]

#: Track id of the whole-image track (the frame label) when ``whole_image="track"``.
WHOLE_IMAGE_TRACK_ID = 0
_WEIGHT_FLOOR = 1e-6


def match_greedy(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs ``(row, col)`` taken highest IoU first, each row and column at most once, IoU >= ``threshold``."""
    if iou.size == 0:
        return []
    rows, cols = np.nonzero(iou >= threshold)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    pairs = []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        pairs.append((r, c))
    return sorted(pairs)


def match_hungarian(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs of the assignment with the largest total IoU (scipy), keeping those with IoU >= ``threshold``.

    Pairs under the threshold are masked out before solving, so a forbidden pair never displaces an allowed one.
    Raises ``ImportError`` when scipy is missing (:class:`Tracker` then falls back to :func:`match_greedy`).
    """
    from scipy.optimize import linear_sum_assignment

    if iou.size == 0:
        return []
    allowed = iou >= threshold
    if not allowed.any():
        return []
    cost = np.where(allowed, -iou, 1.0)  # any forbidden pair costs more than every allowed one
    rows, cols = linear_sum_assignment(cost)
    return sorted((int(r), int(c)) for r, c in zip(rows, cols) if allowed[r, c])


@dataclass
class TrackObservation:
    """A confirmed track as seen in one processed frame (one entry of a frame's ``tracks``)."""

    track_id: int
    bbox: list[int]
    #: The track's voted label so far, its vote share and the mean score of the frames that voted for it.
    label: str
    confidence: float
    score: float
    #: This frame's own recognition (before voting).
    raw_label: str
    raw_score: float
    det_score: float
    #: Frames the track was matched in so far.
    hits: int
    is_whole_image: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "track_id": self.track_id,
            "bbox": [int(v) for v in self.bbox],
            "label": self.label,
            "score": round(float(self.score), 6),
            "confidence": round(float(self.confidence), 6),
            "raw_label": self.raw_label,
            "raw_score": round(float(self.raw_score), 6),
            "det_score": round(float(self.det_score), 6),
            "hits": self.hits,
        }


@dataclass
class TrackSummary:
    """One track over its whole life: where it was first and last seen, its voted label and how sure the vote is."""

    track_id: int
    label: str
    confidence: float
    score: float
    first_frame: int
    last_frame: int
    first_time: float | None
    last_time: float | None
    #: Number of processed frames the track was matched in.
    frames: int
    votes: dict[str, float]
    is_whole_image: bool = False

    def to_dict(self) -> dict[str, Any]:
        def t(v: float | None) -> float | None:
            return None if v is None else round(float(v), 4)

        return {
            "track_id": self.track_id,
            "label": self.label,
            "confidence": round(float(self.confidence), 6),
            "score": round(float(self.score), 6),
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "first_time": t(self.first_time),
            "last_time": t(self.last_time),
            "frames": self.frames,
            "votes": {k: round(float(v), 6) for k, v in self.votes.items()},
            "is_whole_image": self.is_whole_image,
        }


@dataclass
class TrackerUpdate:
    """What :meth:`Tracker.update` returns for one frame: the confirmed tracks matched in it and the frame label."""

    tracks: list[TrackObservation]
    frame_label: TrackObservation | None


@dataclass
class _Track:
    key: int  # internal, assigned at birth
    bbox: np.ndarray  # float64 [4], last matched box
    first_frame: int
    first_time: float | None
    last_frame: int
    last_time: float | None
    is_whole_image: bool = False
    track_id: int | None = None  # public id, assigned on confirmation
    hits: int = 0
    streak: int = 0  # consecutive processed frames matched
    misses: int = 0  # processed frames since the last match
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    history: deque = field(default_factory=deque)  # (label, score) of the frames in the vote window
    weights: dict = field(default_factory=dict)  # label -> summed score (cumulative vote)
    counts: dict = field(default_factory=dict)  # label -> (summed raw score, frames)

    def predicted(self) -> np.ndarray:
        return self.bbox + self.velocity * (self.misses + 1)

    def add_vote(self, label: str, score: float, window: int | None) -> None:
        weight = max(float(score), _WEIGHT_FLOOR)
        self.history.append((label, weight, float(score)))
        self.weights[label] = self.weights.get(label, 0.0) + weight
        s, n = self.counts.get(label, (0.0, 0))
        self.counts[label] = (s + float(score), n + 1)
        if window is not None:
            while len(self.history) > window:
                old, w, sc = self.history.popleft()
                self.weights[old] -= w
                s, n = self.counts[old]
                if n <= 1:
                    del self.weights[old]
                    del self.counts[old]
                else:
                    self.counts[old] = (s - sc, n - 1)

    def vote(self) -> tuple[str, float, float]:
        """``(label, confidence, mean score of that label's frames)``; ties go to the label voted first."""
        if not self.weights:
            return "", 0.0, 0.0
        label = max(self.weights, key=lambda k: self.weights[k])  # dict order = first vote first
        total = sum(self.weights.values())
        s, n = self.counts[label]
        return label, (self.weights[label] / total if total > 0 else 0.0), (s / n if n else 0.0)


class Tracker:
    """IoU tracker with score-weighted label voting (see the module docstring for the rules).

    Args:
        iou_threshold: a box matches a track only when their IoU is at least this.
        max_age: processed frames a confirmed track survives without a match (0: it ends at its first miss).
        min_hits: consecutive matched frames before a track is confirmed and reported (1: at once).
        whole_image: ``"track"`` (the whole-image box is the special track 0, the frame label) or ``"exclude"``.
        matcher: ``"auto"`` (Hungarian when scipy imports, else greedy), ``"hungarian"`` or ``"greedy"``.
        vote_window: vote over a track's last N matched frames only (``None``: all of them).
        predict: move the track's box by its smoothed velocity before matching (helps with sparse sampling).
    """

    def __init__(
        self,
        iou_threshold: float = 0.3,
        max_age: int = 5,
        min_hits: int = 2,
        whole_image: str = "track",
        matcher: str = "auto",
        vote_window: int | None = None,
        predict: bool = True,
    ):
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_age < 0:
            raise ValueError(f"max_age must be >= 0, got {max_age}")
        if min_hits < 1:
            raise ValueError(f"min_hits must be >= 1, got {min_hits}")
        if whole_image not in ("track", "exclude"):
            raise ValueError(f"whole_image must be 'track' or 'exclude', got {whole_image!r}")
        if matcher not in ("auto", "hungarian", "greedy"):
            raise ValueError(f"matcher must be 'auto', 'hungarian' or 'greedy', got {matcher!r}")
        if vote_window is not None and vote_window < 1:
            raise ValueError(f"vote_window must be >= 1 or None, got {vote_window}")
        self.iou_threshold = float(iou_threshold)
        self.max_age = int(max_age)
        self.min_hits = int(min_hits)
        self.whole_image = whole_image
        self.vote_window = vote_window
        self.predict = predict
        self.matcher = self._resolve_matcher(matcher)
        self._active: list[_Track] = []
        self._ended: list[_Track] = []
        self._whole: _Track | None = None
        self._next_key = 0
        self._next_id = 1
        self.frames_seen = 0

    @staticmethod
    def _resolve_matcher(matcher: str) -> str:
        if matcher == "greedy":
            return "greedy"
        try:
            import scipy.optimize  # noqa: F401
        except ImportError:
            if matcher == "hungarian":
                raise ImportError("matcher='hungarian' needs scipy; use matcher='greedy' or 'auto'") from None
            return "greedy"
        return "hungarian"

    def _match(self, iou: np.ndarray) -> list[tuple[int, int]]:
        if self.matcher == "hungarian":
            return match_hungarian(iou, self.iou_threshold)
        return match_greedy(iou, self.iou_threshold)

    # --- updating -------------------------------------------------------------------------------------------

    def update(
        self, recognitions: Iterable[Recognition], frame_index: int, timestamp: float | None = None
    ) -> TrackerUpdate:
        """Feed one processed frame's recognitions; returns the confirmed tracks matched in it and the frame label."""
        self.frames_seen += 1
        objects: list[Recognition] = []
        whole: list[Recognition] = []
        for r in recognitions:
            (whole if r.is_whole_image else objects).append(r)

        frame_label = None
        if whole and self.whole_image == "track":
            best = max(whole, key=lambda r: r.score)
            frame_label = self._update_whole(best, frame_index, timestamp)

        boxes = np.array([r.bbox for r in objects], np.float64).reshape(-1, 4)
        tracks = self._active
        predicted = np.array([t.predicted() if self.predict else t.bbox for t in tracks], np.float64).reshape(-1, 4)
        pairs = self._match(iou_matrix(predicted, boxes))
        matched_t = {t for t, _ in pairs}
        matched_d = {d for _, d in pairs}

        seen: list[tuple[_Track, Recognition]] = []
        for ti, di in pairs:
            track, rec = tracks[ti], objects[di]
            new_box = np.asarray(rec.bbox, np.float64)
            step = (new_box - track.bbox) / (track.misses + 1)
            track.velocity = step if track.hits == 1 else 0.5 * track.velocity + 0.5 * step
            track.bbox = new_box
            track.hits += 1
            track.streak += 1
            track.misses = 0
            track.last_frame, track.last_time = frame_index, timestamp
            track.add_vote(rec.label, rec.score, self.vote_window)
            if track.track_id is None and track.streak >= self.min_hits:
                track.track_id = self._next_id
                self._next_id += 1
            seen.append((track, rec))

        survivors = []
        for ti, track in enumerate(tracks):
            if ti in matched_t:
                survivors.append(track)
                continue
            track.misses += 1
            track.streak = 0
            if track.track_id is None:
                continue  # tentative tracks die at their first miss
            if track.misses > self.max_age:
                self._ended.append(track)
            else:
                survivors.append(track)

        for di, rec in enumerate(objects):
            if di in matched_d:
                continue
            track = self._new_track(rec, frame_index, timestamp)
            survivors.append(track)
            seen.append((track, rec))
        self._active = survivors

        observations = [self._observe(t, r) for t, r in seen if t.track_id is not None]
        observations.sort(key=lambda o: o.track_id)
        return TrackerUpdate(observations, frame_label)

    def _new_track(self, rec: Recognition, frame_index: int, timestamp: float | None) -> _Track:
        track = _Track(
            key=self._next_key,
            bbox=np.asarray(rec.bbox, np.float64),
            first_frame=frame_index,
            first_time=timestamp,
            last_frame=frame_index,
            last_time=timestamp,
            hits=1,
            streak=1,
        )
        self._next_key += 1
        track.add_vote(rec.label, rec.score, self.vote_window)
        if self.min_hits <= 1:
            track.track_id = self._next_id
            self._next_id += 1
        return track

    def _update_whole(self, rec: Recognition, frame_index: int, timestamp: float | None) -> TrackObservation:
        if self._whole is None:
            self._whole = _Track(
                key=-1,
                bbox=np.asarray(rec.bbox, np.float64),
                first_frame=frame_index,
                first_time=timestamp,
                last_frame=frame_index,
                last_time=timestamp,
                is_whole_image=True,
                track_id=WHOLE_IMAGE_TRACK_ID,
            )
        w = self._whole
        w.bbox = np.asarray(rec.bbox, np.float64)
        w.hits += 1
        w.last_frame, w.last_time = frame_index, timestamp
        w.add_vote(rec.label, rec.score, self.vote_window)
        return self._observe(w, rec)

    @staticmethod
    def _observe(track: _Track, rec: Recognition) -> TrackObservation:
        label, confidence, score = track.vote()
        assert track.track_id is not None  # only confirmed tracks are observed
        return TrackObservation(
            track_id=track.track_id,
            bbox=[int(round(v)) for v in track.bbox],
            label=label,
            confidence=confidence,
            score=score,
            raw_label=rec.label,
            raw_score=float(rec.score),
            det_score=float(rec.det_score),
            hits=track.hits,
            is_whole_image=track.is_whole_image,
        )

    # --- results --------------------------------------------------------------------------------------------

    @staticmethod
    def _summary(track: _Track) -> TrackSummary:
        label, confidence, score = track.vote()
        assert track.track_id is not None  # only confirmed tracks are summarised
        return TrackSummary(
            track_id=track.track_id,
            label=label,
            confidence=confidence,
            score=score,
            first_frame=track.first_frame,
            last_frame=track.last_frame,
            first_time=track.first_time,
            last_time=track.last_time,
            frames=track.hits,
            votes=dict(sorted(track.weights.items(), key=lambda kv: -kv[1])),
            is_whole_image=track.is_whole_image,
        )

    def summaries(self) -> list[TrackSummary]:
        """Every confirmed object track so far (ended and still active), by track id."""
        tracks: Sequence[_Track] = [t for t in self._ended + self._active if t.track_id is not None]
        return sorted((self._summary(t) for t in tracks), key=lambda s: s.track_id)

    def frame_label_summary(self) -> TrackSummary | None:
        """The whole-image track (the frame label over the video), or ``None`` (excluded or never seen)."""
        return None if self._whole is None else self._summary(self._whole)

    @property
    def active_count(self) -> int:
        """Confirmed tracks alive now (matched recently enough)."""
        return sum(1 for t in self._active if t.track_id is not None)
