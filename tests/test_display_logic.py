"""The display's logic without a screen: the frame schedule, the feedback state and the bar,
the rating scale, the events rows and the run summary.

Each test feeds messages, times and frame numbers by hand and compares with an expectation
computed here independently (from the paradigm's seconds, with numpy, or written out).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from feedback_display.events import (
    EVENTS_COLUMN_DESCRIPTIONS,
    EVENTS_COLUMNS,
    EventRows,
    row_cells,
    timed_row,
)
from feedback_display.feedback_state import BarState, FeedbackState
from feedback_display.options import DisplayOptions
from feedback_display.rating import RatingKeys, RatingScale
from feedback_display.schedule import CueCycle, FrameSchedule, Timeline, block_volumes
from feedback_display.subscriber import Malformed, RunEnd
from feedback_display.summary import RunStart, frame_summary, run_summary
from feedback_display.thermometer import BASELINE_VALUE
from feedback_display.timing import FrameLog
from rtserver.errors import ConfigError
from rtserver.paradigm import Paradigm

from .display_helpers import feedback_event

PERIOD = 1 / 60
TR = 0.5

#: fixation, two drug-cue blocks around a food block with intermittent feedback, fixation.
PARADIGM = {
    "task": "logic", "tr": TR,
    "display": {"cue_seconds": 1.0, "intermittent_seconds": 1.5},
    "blocks": [
        {"condition": "fixation", "duration": 1.0},
        {"condition": "reappraise", "cue": "drug", "duration": 2.5, "feedback": "continuous"},
        {"condition": "savor", "cue": "food", "duration": 2.0, "feedback": "intermittent"},
        {"condition": "look", "cue": "drug", "duration": 2.0},
        {"condition": "fixation", "duration": 1.0},
    ],
}
PICTURES = {"drug": ["drug/a.png", "drug/b.png", "drug/c.png"],
            "food": ["food/x.jpg", "food/y.jpg"]}


@pytest.fixture
def paradigm() -> Paradigm:
    return Paradigm.from_dict(PARADIGM)


def run_timeline(paradigm: Paradigm, block_mean=lambda first, stop: None):
    """Every frame of the paradigm through a Timeline: the changes of each frame."""
    schedule = FrameSchedule(paradigm, PERIOD, t0=0.0)
    timeline = Timeline(schedule, PICTURES)
    updates = {}
    for frame in range(schedule.end_frame):
        updates[frame] = timeline.update(frame, block_mean)
    return schedule, timeline, updates


# ----------------------------------------------------------------------------- schedule
def test_block_onsets_are_whole_frames_and_each_frame_lies_in_its_block(paradigm):
    schedule = FrameSchedule(paradigm, PERIOD, t0=0.0)
    onsets_s = np.cumsum([0.0] + [b["duration"] for b in PARADIGM["blocks"]][:-1])
    assert schedule.block_frames == [int(round(s * 60)) for s in onsets_s] == [0, 60, 210, 330,
                                                                              450]
    assert schedule.end_frame == 510  # 8.5 s
    for frame in range(schedule.end_frame):
        # The middle of the frame, in seconds: never on a block boundary.
        expected = paradigm.blocks.index(paradigm.block_at((frame + 0.5) * PERIOD))
        assert schedule.block_at(frame) == expected, frame


def test_frames_count_up_and_skip_the_frames_a_late_one_lasted(paradigm):
    schedule = FrameSchedule(paradigm, PERIOD, t0=100.0)
    # Flips expected on time, then one 3.4 periods late, then one a little early.
    expected_flips = [100.0, 100.0 + PERIOD, 100.0 + 2 * PERIOD, 100.0 + 5.4 * PERIOD,
                      100.0 + 5.9 * PERIOD, 100.0 + 5.2 * PERIOD]
    frames = [schedule.advance(t) for t in expected_flips]
    assert frames == [0, 1, 2, 5, 6, 6]  # never backwards
    assert FrameSchedule(paradigm, PERIOD, t0=100.0).advance(99.0) == 0  # never negative


def test_a_volume_over_1_5_tr_ahead_moves_the_schedule_to_it(paradigm):
    schedule = FrameSchedule(paradigm, PERIOD, t0=10.0)
    schedule.advance(10.0 + 30 * PERIOD)  # frame 30: 0.5 s, volume 1's time
    ahead = {volume: (volume * TR - 30 * PERIOD) > 1.5 * TR for volume in range(12)}
    assert [v for v, is_ahead in ahead.items() if is_ahead] == list(range(3, 12))
    moved = {}
    for volume in range(12):
        trial = FrameSchedule(paradigm, PERIOD, t0=10.0)
        trial.advance(10.0 + 30 * PERIOD)
        moved[volume] = trial.realign(volume)
    assert moved == ahead
    assert schedule.n_realignments == 0
    assert schedule.realign(6)  # 3.0 s, 2.5 s ahead
    assert schedule.n_realignments == 1
    # t0 moved earlier by the difference: the time of the last frame drawn (30) is now
    # the volume's frame, and the schedule counts on from there.
    assert schedule.t0 == pytest.approx(10.0 - (180 - 30) * PERIOD)
    assert schedule.frame == round(6 * TR / PERIOD) - 1 == 179
    assert schedule.advance(10.0 + 30 * PERIOD) == 180
    assert schedule.advance(10.0 + 31 * PERIOD) == 181


def test_the_last_frame_is_the_paradigms_end_or_the_announced_volumes(paradigm):
    schedule = FrameSchedule(paradigm, PERIOD, t0=0.0)
    assert schedule.last_frame() == schedule.end_frame == round(8.5 * 60)
    assert schedule.last_frame(10) == round(10 * TR * 60)
    assert schedule.last_frame(1000) == schedule.end_frame


def test_cue_pictures_change_every_cue_seconds_and_cycle_across_blocks(paradigm):
    schedule, _, updates = run_timeline(paradigm)
    cues = [(frame, row) for frame, update in updates.items()
            for kind, row in update.changes if kind == "cue" and row is not None]
    # Independently: each cue block shows a picture at its onset and every second after,
    # each category's pictures continuing where its previous block left off.
    expected, counters = [], {"drug": 0, "food": 0}
    for number, block in enumerate(paradigm.blocks, start=1):
        if block.cue == "none":
            continue
        for i in range(math.ceil(block.duration / 1.0)):
            files = PICTURES[block.cue]
            expected.append((round((block.onset + i) * 60), {
                "trial_type": f"cue_{block.cue}", "block": number,
                "frame": round((block.onset + i) * 60),
                "stim_file": files[counters[block.cue] % len(files)]}))
            counters[block.cue] += 1
    assert cues == expected
    assert [row["stim_file"] for _, row in cues if row["block"] == 4] == [
        "drug/a.png", "drug/b.png"]  # the first drug block used a, b, c


def test_block_rows_and_screenshots_on_each_blocks_first_frame(paradigm):
    schedule, _, updates = run_timeline(paradigm)
    entered = {frame: update.entered for frame, update in updates.items() if update.entered}
    assert list(entered) == schedule.block_frames
    assert list(entered.values()) == list(paradigm.blocks)
    for index, frame in enumerate(schedule.block_frames):
        update = updates[frame]
        block = paradigm.blocks[index]
        assert ("block", {"trial_type": block.trial_type, "block": index + 1, "frame": frame,
                          "instruction": block.instruction}) in update.changes
        assert f"block-{index + 1:02d}-{block.trial_type}" in update.shots
        # The previous block's picture and feedback rows end with it.
        assert update.changes[:2] == [("cue", None), ("feedback", None)]


def test_intermittent_result_shows_the_block_mean_during_the_next_block(paradigm):
    asked = []

    def block_mean(first, stop):
        asked.append((first, stop))
        return 0.625

    _, timeline, updates = run_timeline(paradigm, block_mean)
    savor = paradigm.blocks[2]
    first, stop = round(savor.onset / TR), round((savor.onset + savor.duration) / TR)
    assert asked == [(first, stop)] == [block_volumes(savor, TR)] == [(7, 11)]
    start = round(paradigm.blocks[3].onset * 60)
    end = start + round(1.5 * 60)
    shown = [frame for frame, update in updates.items()
             for kind, row in update.changes if kind == "intermittent" and row is not None]
    removed = [frame for frame, update in updates.items()
               for kind, row in update.changes if kind == "intermittent" and row is None]
    assert shown == [start] and removed == [end]
    row, = [row for kind, row in updates[start].changes if kind == "intermittent"]
    assert row == {"trial_type": "feedback_intermittent", "block": 3, "frame": start,
                   "value": 0.625, "volume": "7-10"}
    assert "intermittent-03" in updates[start].shots


def test_cue_cycle_keeps_its_picture_within_a_slot():
    cycle = CueCycle({"food": ["food/1.png", "food/2.png"]})
    shown = [cycle.update("food", slot) for slot in (0, 0, 1, 1, 2)]
    assert [None if cue is None else cue.stim_file for cue in shown] == [
        "food/1.png", None, "food/2.png", None, "food/1.png"]
    cycle.reset()  # a new block: its first frame takes the next picture, same slot or not
    assert cycle.update("food", 2).stim_file == "food/2.png"


# ----------------------------------------------------------------------------- feedback
def test_messages_are_sorted_and_counted():
    state = FeedbackState(stale_after=1.0)
    assert not state.admit(Malformed("bad"))
    assert state.admit(feedback_event(3, 0.4))
    assert state.receive(feedback_event(3, 0.4), 10.0)
    assert not state.receive(feedback_event(3, 0.9), 10.1)  # same volume again
    assert not state.receive(feedback_event(2, 0.9), 10.2)  # older
    assert state.receive(feedback_event(5, 0.6), 10.3)  # volume 3 never taken up
    assert not state.admit(RunEnd(6))
    assert not state.admit(feedback_event(6, 0.5))  # after the end
    assert not state.admit(Malformed("late"))  # malformed first, whenever it comes
    counts = state.counts
    assert (counts.malformed, counts.received, counts.out_of_order, counts.replaced_unseen,
            counts.after_end) == (2, 2, 2, 1, 1)
    assert (state.first_volume, state.last_volume, state.run_end) == (3, 5, RunEnd(6))
    assert state.latest.volume == 5 and state.take_new() and not state.take_new()


def test_staleness_starts_after_stale_after_seconds_and_ends_with_the_next_event():
    state = FeedbackState(stale_after=1.0)
    t0 = 50.0
    assert not state.check_stale(50.9, t0)  # before any event: counted from the start
    assert state.check_stale(51.01, t0)
    state.receive(feedback_event(0, 0.5), 52.0)
    assert not state.stale
    times = np.arange(52.0, 56.0, 0.05)
    stale = [state.check_stale(float(t), t0) for t in times]
    assert stale == [bool(t - 52.0 > 1.0) for t in times]
    assert state.counts.unavailable_episodes == 2  # once per episode, not per frame


def test_block_mean_is_the_mean_of_uncensored_values_in_range():
    state = FeedbackState(stale_after=1.0)
    rng = np.random.default_rng(3)
    values = rng.uniform(0, 1, 20)
    censored = rng.uniform(0, 1, 20) < 0.3
    for volume in range(20):
        state.receive(feedback_event(volume, float(values[volume]), bool(censored[volume])),
                      float(volume))
    for first, stop in ((0, 20), (4, 9), (10, 11)):
        keep = ~censored[first:stop]
        expected = float(np.mean(values[first:stop][keep])) if keep.any() else None
        got = state.block_mean(first, stop)
        assert got == (None if expected is None else pytest.approx(expected))
    assert state.block_mean(30, 40) is None


def test_bar_moves_to_each_value_then_rests_neutral_while_feedback_is_unavailable():
    state, bar = FeedbackState(stale_after=1.0), BarState(animation_frames=4)
    t0 = 0.0
    first = bar.continuous(state, 0.1, t0, block_number=2, frame=6)  # nothing yet
    assert (first.value, first.fill) == (BASELINE_VALUE, "unavailable")
    assert first.row == {"trial_type": "feedback_unavailable", "block": 2, "frame": 6}
    state.receive(feedback_event(4, 0.9), 0.2)
    frames = [bar.continuous(state, 0.25 + i / 60, t0, 2, 7 + i) for i in range(6)]
    assert frames[0].row == {"trial_type": "feedback", "block": 2, "frame": 7, "volume": 4,
                             "value": 0.9, "censored": False}
    assert all(f.row is None for f in frames[1:])
    np.testing.assert_allclose([f.value for f in frames],
                               [*np.linspace(0.5, 0.9, 5)[1:], 0.9, 0.9])
    assert [f.shots for f in frames] == [[], [], [], ["volume-0004"], [], []]
    assert bar.latency.max_ms == pytest.approx(50.0)  # 0.2 -> 0.25 s
    state.receive(feedback_event(5, 0.3, censored=True), 0.4)
    censored = bar.continuous(state, 0.45, t0, 2, 13)
    assert censored.fill == "censored" and censored.row["censored"] is True
    quiet = bar.continuous(state, 1.41, t0, 2, 70)  # 1.01 s after the last event
    assert quiet.fill == "unavailable" and quiet.row["trial_type"] == "feedback_unavailable"
    assert bar.n_shown == 2 and state.counts.unavailable_episodes == 1


def test_a_value_replacing_one_before_the_bar_settled_gets_its_screenshot_first():
    state, bar = FeedbackState(stale_after=5.0), BarState(animation_frames=9)
    state.receive(feedback_event(1, 0.2), 0.0)
    assert bar.continuous(state, 0.01, 0.0, 1, 0).row["volume"] == 1
    state.receive(feedback_event(2, 0.8), 0.02)
    grabbed = bar.continuous(state, 0.03, 0.0, 1, 1)
    assert grabbed.shots == ["volume-0001"] and grabbed.row is None
    moved = bar.continuous(state, 0.05, 0.0, 1, 2)
    assert moved.row["volume"] == 2


def test_outside_continuous_blocks_the_bar_follows_values_unseen():
    state, bar = FeedbackState(stale_after=5.0), BarState(animation_frames=3)
    state.receive(feedback_event(1, 0.8), 0.0)
    for _ in range(3):
        bar.follow_unseen(state, 0.1, 0.0)
    assert bar.animator.value == 0.8 and not state.new_event and bar.n_shown == 0


# ----------------------------------------------------------------------------- rating
def test_rating_keys_move_clip_and_confirm():
    scale = RatingScale("rating_before", RatingKeys(left=("l",), right=("r",),
                                                    confirm=("c",), step=20.0))
    scale.press([("r", 0.5)])  # before the scale was shown: ignored
    assert scale.position == 50.0
    assert scale.shown(1.0) and not scale.shown(1.1)
    scale.press([("r", 0.9)])  # time-stamped before the onset: ignored
    scale.press([("r", 1.2), ("r", 1.3), ("r", 1.4), ("x", 1.5)])  # 70, 90, 100 (clipped)
    assert scale.position == 100.0 and scale.response is None
    scale.press([("l", 1.6)] * 7)  # down to 0, clipped
    assert scale.position == 0.0
    scale.press([("r", 1.7), ("c", 2.25), ("r", 2.3)])  # the last one after the answer
    assert (scale.response, scale.response_time) == (20.0, pytest.approx(1.25))
    assert scale.answer() == {"response": 20.0, "response_time": pytest.approx(1.25)}
    assert scale.record() == {"trial_type": "rating_before", "response": 20.0,
                              "response_time": pytest.approx(1.25), "final_position": 20.0,
                              "interrupted_by_run_start": False}


def test_an_unanswered_rating_records_its_last_position():
    scale = RatingScale("rating_after")
    scale.shown(0.0)
    scale.press([("right", 0.1)])
    assert scale.record()["response"] is None and scale.record()["final_position"] == 55.0
    assert scale.describe() == "no response"


# ----------------------------------------------------------------------------- rows
def test_rows_start_and_end_on_flips_relative_to_the_run_start():
    rows = EventRows()
    rows.show("rating", {"trial_type": "rating_before"})
    assert rows.flipped(10.0) == []
    rows.annotate("rating", {"trial_type": "other", "response": 60.0, "response_time": 1.5})
    rows.remove("rating")
    assert rows.flipped(12.0) == []  # ended before the start: held
    early = rows.start(13.0)
    assert early == [{"trial_type": "rating_before", "response": 60.0, "response_time": 1.5,
                      "onset": pytest.approx(-3.0), "duration": pytest.approx(2.0)}]
    rows.show("block", {"trial_type": "fixation", "block": 1, "frame": 0})
    rows.flipped(13.02)
    rows.show("block", {"trial_type": "look_drug", "block": 2, "frame": 60})
    rows.show("cue", {"trial_type": "cue_drug", "block": 2, "frame": 60})
    ended = rows.flipped(14.02)
    assert ended == [{"trial_type": "fixation", "block": 1, "frame": 0,
                      "onset": pytest.approx(0.02), "duration": pytest.approx(1.0)}]
    rows.end_at_next_flip()
    ended = rows.flipped(15.0)
    assert sorted(row["trial_type"] for row in ended) == ["cue_drug", "look_drug"]
    assert all(row["duration"] == pytest.approx(0.98) for row in ended)
    assert rows.close(16.0) == []


def test_rows_queued_for_a_frame_never_flipped_are_dropped_and_open_ones_closed():
    rows = EventRows()
    rows.start(0.0)
    rows.show("block", {"trial_type": "fixation"})
    rows.flipped(1.0)
    rows.show("feedback", {"trial_type": "feedback"})  # never flipped
    ended = rows.close(2.5)
    assert [(r["trial_type"], r["onset"], r["duration"]) for r in ended] == [
        ("fixation", 1.0, 1.5)]


def test_timed_row_and_cells():
    assert timed_row({"trial_type": "x", "t_onset": 5.0, "t_end": 4.0}, 2.0) == {
        "trial_type": "x", "onset": 3.0, "duration": 0.0}
    cells = row_cells({"onset": 1.23456, "duration": 2, "trial_type": "feed\tback",
                       "censored": True, "volume": "3-7"})
    assert len(cells) == len(EVENTS_COLUMNS) == len(EVENTS_COLUMN_DESCRIPTIONS)
    assert cells[:4] == ["1.2346", "2", "feed back", "n/a"]
    assert cells[EVENTS_COLUMNS.index("censored")] == "1"
    assert cells[EVENTS_COLUMNS.index("volume")] == "3-7"


# ----------------------------------------------------------------------------- summary
def test_frame_summary_percentiles_and_dropped_frames_match_numpy():
    rng = np.random.default_rng(7)
    intervals_ms = np.concatenate([rng.normal(16.7, 0.5, 2000), [26.0, 33.4, 120.0]])
    rng.shuffle(intervals_ms)
    log = FrameLog(60.0)
    t = 1000.0
    log.flipped(t - 0.5, in_run=False, vsync=False)  # before the run: not counted
    log.flipped(t, in_run=True, vsync=False)
    for interval in intervals_ms:
        t += interval / 1000.0
        log.flipped(t, in_run=True, vsync=False)
    summary = frame_summary(log, 60.0, PERIOD, "software")
    assert summary["n_frames"] == len(intervals_ms) + 1
    assert summary["dropped_frames"] == int(np.sum(intervals_ms > 25.0)) == 3
    assert summary["dropped_frame_threshold_ms"] == 25.0
    for name, q in (("min", 0), ("median", 50), ("p95", 95), ("p99", 99)):
        expected = np.percentile(intervals_ms, q, method="inverted_cdf")
        assert summary[f"frame_interval_ms_{name}"] == pytest.approx(expected, abs=0.011), name
    assert summary["frame_interval_ms_max"] == pytest.approx(120.0, abs=1e-6)
    assert summary["frame_period_ms"] == round(1000 / 60, 4)


def test_measured_period_is_the_median_refresh_interval_before_the_run():
    log = FrameLog(60.0)
    flips = 5.0 + np.cumsum([0.0, *np.full(20, 0.01666), 0.05, *np.full(10, 0.01667)])
    for t_flip in flips:
        log.flipped(float(t_flip), in_run=False, vsync=True)
    assert log.period(PERIOD, vsync=True) == pytest.approx(
        np.sort(np.diff(flips))[len(flips[1:]) // 2])
    assert log.period(PERIOD, vsync=False) == PERIOD
    few = FrameLog(60.0)
    for t_flip in flips[:5]:
        few.flipped(float(t_flip), in_run=False, vsync=True)
    assert few.period(PERIOD, vsync=True) == PERIOD  # too few to measure


def test_run_summary_is_json_without_nan_and_counts_what_happened(paradigm):
    state, bar = FeedbackState(stale_after=1.25), BarState(9)
    state.admit(Malformed("x"))
    state.receive(feedback_event(0, 0.5), 1.0)
    bar.continuous(state, 1.01, 1.0, 2, 60)
    summary = run_summary(
        paradigm, DisplayOptions(subject="P01", run=2), "escape", RunStart("server", 1.7e9),
        state, bar, FrameLog(60.0), period=PERIOD, paced_by="software", n_realignments=1,
        n_triggers=0, n_screenshots=3, ratings=[], pictures="/pictures", window_size=None)
    json.dumps(summary, allow_nan=False)
    assert summary["frame_interval_ms_median"] is None and summary["n_frames"] == 0
    assert (summary["subject"], summary["run"], summary["task"]) == ("P01", 2, "logic")
    assert (summary["n_feedback_events_received"], summary["n_feedback_events_shown"],
            summary["n_malformed_messages"], summary["n_schedule_realignments"],
            summary["first_volume"], summary["last_volume"]) == (1, 1, 1, 1, 0, 0)
    assert summary["display_latency_ms_max"] == pytest.approx(10.0)
    assert summary["stale_after_s"] == 1.25 and summary["started_by"] == "server"


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize(("options", "match"), [
    ({"subject": "sub-01"}, r"without 'sub-' \('01'\). Got 'sub-01'"),
    ({"subject": "P_01"}, r"BIDS label .* Got 'P_01'"),
    ({"confirm_keys": ()}, r"At least one confirm key is needed. Got \(\)"),
    ({"pacing": "fast"}, r"'pacing' should be one of .* Got 'fast'"),
    ({"run": 0}, r"'run' should be a positive integer. Got 0"),
])
def test_display_options_raise_config_error_naming_the_value(options, match):
    with pytest.raises(ConfigError, match=match):
        DisplayOptions(**options)
