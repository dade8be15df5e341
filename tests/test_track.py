"""Tracker: scripted box sequences with a known truth, matches as the gallery would return them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from facelite.errors import ConfigError
from facelite.recognition.matching import Match
from facelite.recognition.track import Tracker, TrackerConfig, TrackEvent, TrackUpdate, face_quality
from facelite.vision.geometry import BBox, Face

FPS = 8  # 0.125 s per frame is exact in binary, so timestamps compare exactly
T0 = 1_700_000_000.0


def ts(i: int, fps: float = FPS) -> float:
    return T0 + i / fps


def face(x: float, y: float, size: float = 120.0, score: float = 0.99) -> Face:
    return Face(BBox(x, y, x + size, y + size), score)


def known(person: str, similarity: float = 0.8, margin: float = 0.4) -> Match:
    return Match(person, similarity, margin, "known", "someone else")


def unknown(similarity: float = 0.3) -> Match:
    return Match(None, similarity, 0.1, "unknown", "alice")


def ambiguous() -> Match:
    return Match("alice", 0.6, 0.02, "ambiguous", "bob")


@dataclass
class Run:
    """Feeds frames, answers embedding requests from the truth, and records what happened."""

    tracker: Tracker
    oracle: Callable[[str, float], Match] = lambda truth, t: known(truth)
    events: list[TrackEvent] = field(default_factory=list)
    requests: list[tuple[float, str, TrackUpdate]] = field(default_factory=list)  # (ts, truth, update)
    track_of: dict[str, set[int]] = field(default_factory=dict)

    def frame(self, t: float, labelled: Sequence[tuple[str, Face]], qualities: Sequence[float] | None = None) -> None:
        faces = [f for _, f in labelled]
        for u in self.tracker.update(t, faces, qualities):
            truth = labelled[u.face_index][0]
            self.track_of.setdefault(truth, set()).add(u.track_id)
            if u.needs_embedding:
                self.requests.append((t, truth, u))
                self.tracker.add_match(u.track_id, self.oracle(truth, t), u.quality)
        self.events.extend(self.tracker.pop_events())

    def kinds(self) -> list[tuple[str, int, str | None]]:
        return [(e.type, e.track_id, e.person) for e in self.events]


def frames_until_left(cfg: TrackerConfig, fps: float) -> int:
    """Empty frames after the last sighting until the track ends: more than N frames AND more than S seconds."""
    k = 1
    while not (k > cfg.max_missed_frames and k / fps > cfg.max_missed_seconds):
        k += 1
    return k


CFG = TrackerConfig(
    iou_threshold=0.3, max_missed_frames=10, max_missed_seconds=2.0, min_votes=3, recheck_interval_s=5.0
)


# -- a visit -----------------------------------------------------------------------------------------
def test_standing_still_300_frames_gives_one_recognized_and_one_left() -> None:
    run = Run(Tracker(CFG))
    for i in range(300):
        run.frame(ts(i), [("alice", face(200, 150))])
    assert run.kinds() == [("recognized", 1, "alice")]
    recognized = run.events[0]
    assert recognized.ts == ts(CFG.min_votes - 1)  # decided on the min_votes-th embedding
    assert recognized.decision == "known"
    assert (recognized.similarity, recognized.margin) == pytest.approx((0.8, 0.4))
    assert recognized.bbox == face(200, 150).bbox

    gap = frames_until_left(CFG, FPS)
    for k in range(1, gap + 1):
        run.frame(ts(299 + k), [])
        assert len(run.events) == (2 if k == gap else 1), f"left must come exactly after {gap} empty frames"
    left = run.events[1]
    assert (left.type, left.track_id, left.person, left.decision) == ("left", 1, "alice", "known")
    assert (left.first_seen, left.last_seen, left.ts) == (ts(0), ts(299), ts(299 + gap))
    assert run.tracker.active_tracks == 0


def test_undecided_flicker_gives_no_events() -> None:
    run = Run(Tracker(CFG))
    run.frame(ts(0), [("ghost", face(10, 10, 40))])  # a one-frame false detection: one vote < min_votes
    for i in range(1, 40):
        run.frame(ts(i), [])
    assert run.events == [] and run.tracker.active_tracks == 0


@pytest.mark.parametrize(
    ("fps", "missing"),
    [(8, 2), (30, 15), (1, 3)],
    ids=["2 frames", "15 frames but 0.5 s", "3 s but 3 frames"],
)
def test_short_dropout_keeps_track_and_gives_no_new_event(fps: float, missing: int) -> None:
    run = Run(Tracker(CFG))
    n = 0
    for _ in range(40):
        run.frame(ts(n, fps), [("alice", face(200, 150))])
        n += 1
    for _ in range(missing):
        run.frame(ts(n, fps), [])
        n += 1
    for _ in range(40):
        run.frame(ts(n, fps), [("alice", face(204, 152))])
        n += 1
    assert run.kinds() == [("recognized", 1, "alice")]
    assert run.track_of == {"alice": {1}}
    run.events.extend(run.tracker.finish(ts(n, fps)))
    assert run.kinds() == [("recognized", 1, "alice"), ("left", 1, "alice")]


def test_two_people_crossing_keep_their_identities() -> None:
    # 60 px per frame with 120 px boxes, 20 px apart vertically, passing each other between frames 9
    # and 10: there alice's last box overlaps bob's new box more than her own (IoU 0.45 vs 0.33), so
    # only the motion prediction keeps the identities.
    run = Run(Tracker(CFG))
    steps = 19
    for i in range(steps):
        a = ("alice", face(40 + 60 * i, 200))
        b = ("bob", face(1210 - 60 * i, 220))
        run.frame(ts(i), [a, b] if i % 2 else [b, a])  # detector order must not matter
    assert len(run.track_of["alice"]) == 1 and len(run.track_of["bob"]) == 1
    assert run.track_of["alice"] != run.track_of["bob"]
    (ta,), (tb,) = run.track_of["alice"], run.track_of["bob"]
    run.events.extend(run.tracker.finish(ts(steps)))
    assert sorted(run.kinds()) == sorted(
        [("recognized", ta, "alice"), ("recognized", tb, "bob"), ("left", ta, "alice"), ("left", tb, "bob")]
    )


def test_fast_motion_without_overlap_keeps_the_track() -> None:
    # 100 px boxes jumping 80 px on the first step: IoU 0.11 < 0.3, the centre fallback keeps the track.
    run = Run(Tracker(CFG))
    run.frame(ts(0), [("alice", face(100, 100, 100))])
    run.frame(ts(1), [("alice", face(180, 100, 100))])
    run.frame(ts(2), [("alice", face(260, 100, 100)), ("bob", face(900, 500, 40))])
    assert run.track_of == {"alice": {1}, "bob": {2}}


# -- embedding budget ------------------------------------------------------------------------------
def test_embeddings_until_decided_then_only_at_recheck_interval() -> None:
    run = Run(Tracker(CFG))
    n = 300
    for i in range(n):
        run.frame(ts(i), [("alice", face(200, 150))])
    times = [t for t, _, _ in run.requests]
    reasons = [u.reason for _, _, u in run.requests]
    m = CFG.min_votes
    assert times[:m] == [ts(i) for i in range(m)]
    assert reasons[:m] == ["new"] + ["undecided"] * (m - 1)
    assert set(reasons[m:]) == {"recheck"}
    gaps = [b - a for a, b in zip(times[m - 1 :], times[m:])]
    assert gaps and all(g == CFG.recheck_interval_s for g in gaps)
    assert len(times) == m + int((ts(n - 1) - ts(m - 1)) // CFG.recheck_interval_s)


def test_skipped_recheck_is_asked_again_next_frame() -> None:
    tracker = Tracker(CFG)
    for i in range(3):
        [u] = tracker.update(ts(i), [face(200, 150)])
        tracker.add_match(u.track_id, known("alice"), u.quality)
    due = ts(2) + CFG.recheck_interval_s
    i = 3
    while ts(i) < due:
        [u] = tracker.update(ts(i), [face(200, 150)])
        assert not u.needs_embedding and u.person == "alice" and u.state == "recognized"
        i += 1
    [u] = tracker.update(ts(i), [face(200, 150)])
    assert (u.needs_embedding, u.reason) == (True, "recheck")  # the caller skips it (e.g. busy)
    [u] = tracker.update(ts(i + 1), [face(200, 150)])
    assert (u.needs_embedding, u.reason) == (True, "recheck")
    tracker.add_match(u.track_id, known("alice"), u.quality)
    [u] = tracker.update(ts(i + 2), [face(200, 150)])
    assert not u.needs_embedding


def test_clearly_better_face_is_embedded_early_marginally_better_is_not() -> None:
    tracker = Tracker(CFG)
    q = 0.5
    for i in range(3):
        [u] = tracker.update(ts(i), [face(200, 150)], [q])
        tracker.add_match(u.track_id, known("alice"), u.quality)
    [u] = tracker.update(ts(3), [face(200, 150)], [q + CFG.quality_improvement / 2])
    assert not u.needs_embedding
    [u] = tracker.update(ts(4), [face(200, 150)], [q + CFG.quality_improvement])
    assert (u.needs_embedding, u.reason) == (True, "quality")
    tracker.add_match(u.track_id, known("alice"), u.quality)
    [u] = tracker.update(ts(5), [face(200, 150)], [q + CFG.quality_improvement])
    assert not u.needs_embedding
    assert [e.type for e in tracker.pop_events()] == ["recognized"]


# -- votes -----------------------------------------------------------------------------------------
def test_unknown_visit_upgraded_once_after_a_fresh_round_agrees() -> None:
    # Unknown at first (far away), known from the first re-check on (closer).
    first_known_at = ts(0) + 2 * CFG.recheck_interval_s
    run = Run(Tracker(CFG), oracle=lambda truth, t: known(truth, 0.7, 0.3) if t >= first_known_at else unknown())
    for i in range(200):
        run.frame(ts(i), [("alice", face(200, 150))])
    assert run.kinds() == [("unknown", 1, None), ("recognized", 1, "alice")]
    upgraded = run.events[1]
    assert upgraded.decision == "known"
    assert (upgraded.similarity, upgraded.margin) == pytest.approx((0.7, 0.3))
    verify = [u for _, _, u in run.requests if u.reason == "verify"]
    assert len(verify) == CFG.min_votes - 1  # the re-check that matched, then a fresh round of votes
    run.events.extend(run.tracker.finish(ts(200)))
    assert run.kinds()[-1] == ("left", 1, "alice")


def test_one_lucky_match_does_not_upgrade_an_unknown_visit() -> None:
    # Decided unknown at ts(2); the second re-check (ts(2) + 2 intervals) matches alice once, then not.
    lucky = ts(CFG.min_votes - 1) + 2 * CFG.recheck_interval_s
    run = Run(Tracker(CFG), oracle=lambda truth, t: known("alice") if t == lucky else unknown())
    i = 0
    while ts(i) < lucky + 2:
        run.frame(ts(i), [("stranger", face(200, 150))])
        i += 1
    assert [(t, u.reason) for t, _, u in run.requests if t >= lucky] == [(lucky, "recheck")] + [
        (lucky + k / FPS, "verify") for k in range(1, CFG.min_votes)
    ]
    assert run.kinds() == [("unknown", 1, None)]


def test_split_votes_end_in_an_ambiguous_unknown() -> None:
    answers = iter([known("alice"), known("bob"), unknown()] * 10)
    run = Run(Tracker(CFG), oracle=lambda truth, t: next(answers))
    for i in range(20):
        run.frame(ts(i), [("who", face(200, 150))])
    assert run.kinds() == [("unknown", 1, None)]
    assert run.events[0].decision == "ambiguous"
    assert run.events[0].ts == ts(CFG.vote_limit - 1)


def test_ambiguous_matches_never_count_as_a_person() -> None:
    run = Run(Tracker(CFG), oracle=lambda truth, t: ambiguous())
    for i in range(20):
        run.frame(ts(i), [("twin", face(200, 150))])
    assert [(e.type, e.person, e.decision) for e in run.events] == [("unknown", None, "ambiguous")]


def test_majority_decides_despite_one_wrong_vote() -> None:
    answers = iter([known("alice", 0.8), known("bob", 0.6), known("alice", 0.9)] + [known("alice")] * 10)
    run = Run(Tracker(CFG), oracle=lambda truth, t: next(answers))
    for i in range(10):
        run.frame(ts(i), [("alice", face(200, 150))])
    assert run.kinds() == [("recognized", 1, "alice")]
    assert run.events[0].similarity == pytest.approx(0.85)


# -- misc ------------------------------------------------------------------------------------------
def test_time_going_backwards_does_not_end_or_split_tracks() -> None:
    run = Run(Tracker(CFG))
    for i in range(10):
        run.frame(ts(i), [("alice", face(200, 150))])
    run.frame(ts(0), [("alice", face(200, 150))])
    run.frame(ts(11), [("alice", face(200, 150))])
    assert run.track_of == {"alice": {1}} and run.kinds() == [("recognized", 1, "alice")]


def test_match_for_ended_track_is_ignored() -> None:
    tracker = Tracker(CFG)
    [u] = tracker.update(ts(0), [face(0, 0)])
    tracker.finish(ts(1))
    tracker.add_match(u.track_id, known("alice"), 0.9)
    assert tracker.pop_events() == []


def test_default_quality_scales_with_score_and_size() -> None:
    assert face_quality(face(0, 0, 224, 0.9)) == pytest.approx(0.9)
    assert face_quality(face(0, 0, 56, 1.0)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("iou_threshold", 0.0),
        ("max_missed_frames", -1),
        ("max_missed_seconds", float("nan")),
        ("min_votes", 0),
        ("recheck_interval_s", 0.0),
        ("quality_improvement", 1.5),
        ("max_votes", 2),
    ],
)
def test_config_validation_names_the_field(field_name: str, value: float) -> None:
    with pytest.raises(ConfigError) as info:
        TrackerConfig(**{field_name: value})
    assert f"tracker.{field_name}" in str(info.value) and "\n" not in str(info.value)
