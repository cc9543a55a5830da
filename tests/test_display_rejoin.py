"""A display started again during a run, without a screen: it rejoins the run where it is and
never rewrites what an earlier attempt wrote.

The expectations are computed here from the paradigm's seconds (block onsets summed by hand),
or from a run of the same classes from the run's first frame (what an uninterrupted display
shows), never from the code under test.
"""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pytest
import zmq

from feedback_display.attempts import Attempt, RunFiles, find_attempt
from feedback_display.events import EVENTS_COLUMNS, EventRows
from feedback_display.feedback_state import BarState, FeedbackState
from feedback_display.options import DisplayOptions
from feedback_display.outputs import BackgroundWriter, EventsLog, RunOutputs, write_new_json
from feedback_display.rejoin import StartRule, rejoin_point
from feedback_display.schedule import FrameSchedule, Timeline
from feedback_display.subscriber import processed_volumes
from feedback_display.summary import RunStart, run_summary
from feedback_display.timing import FrameLog
from rtserver import protocol
from rtserver.errors import ConfigError, DisplayError
from rtserver.paradigm import Paradigm

from .display_helpers import read_tsv

PERIOD = 1 / 60
TR = 0.5
#: fixation; drug cues with continuous feedback; food with intermittent feedback; drug cues
#: without feedback; a rating block; fixation. Ratings before and after the run.
PARADIGM = {
    "task": "rejoin", "tr": TR,
    "ratings": {"before": True, "after": True, "max_seconds": 5.0},
    "display": {"cue_seconds": 1.0, "intermittent_seconds": 1.0},
    "blocks": [
        {"condition": "fixation", "duration": 1.0},
        {"condition": "reappraise", "cue": "drug", "duration": 3.5, "feedback": "continuous"},
        {"condition": "savor", "cue": "food", "duration": 2.0, "feedback": "intermittent"},
        {"condition": "look", "cue": "drug", "duration": 2.5},
        {"condition": "rating", "duration": 1.5},
        {"condition": "fixation", "duration": 1.0},
    ],
}
PICTURES = {"drug": ["drug/a.png", "drug/b.png", "drug/c.png"],
            "food": ["food/x.jpg", "food/y.jpg"]}
#: Block onsets and ends in seconds, summed here from the durations.
ONSETS = np.cumsum([0.0] + [b["duration"] for b in PARADIGM["blocks"]])
N_VOLUMES = round(ONSETS[-1] / TR)


@pytest.fixture
def paradigm() -> Paradigm:
    return Paradigm.from_dict(PARADIGM)


def block_of_seconds(seconds: float) -> int:
    """The block running at ``seconds`` after the run start, from :data:`ONSETS`."""
    return int(np.searchsorted(ONSETS, seconds, side="right")) - 1


def uninterrupted(paradigm: Paradigm) -> dict[int, tuple[int, str | None]]:
    """Block index and cue picture of every frame, for a display there from the start."""
    timeline = Timeline(FrameSchedule(paradigm, PERIOD, 0.0), PICTURES)
    shown = {}
    for frame in range(round(ONSETS[-1] * 60)):
        timeline.update(frame, lambda first, stop: None)
        cue = timeline.cues.current
        shown[frame] = (timeline.block_index, None if cue is None else cue.stim_file)
    return shown


# ----------------------------------------------------------------------------- the rule
@pytest.mark.parametrize("volume", range(N_VOLUMES))
def test_rejoin_point_is_the_block_acquiring_the_volume(paradigm, volume):
    point = rejoin_point(FrameSchedule(paradigm, PERIOD, t0=0.0), volume)
    seconds = volume * TR
    block = block_of_seconds(seconds)
    assert point.volume == volume
    assert point.frame == round(seconds * 60)
    assert point.block_index == block
    assert point.trial_type == paradigm.blocks[block].trial_type
    assert f"block {block + 1} ({point.trial_type})" in point.describe()
    assert point.frame_in_block == round(seconds * 60) - round(ONSETS[block] * 60)
    assert 0 <= point.frame_in_block < round((ONSETS[block + 1] - ONSETS[block]) * 60)


@pytest.mark.parametrize(("start_on", "rejoining", "volume", "started_by"), [
    ("auto", False, 0, "server"),
    ("server", False, 0, "server"),
    ("trigger", False, 0, None),       # volume 0 before the trigger: the run waits for it
    ("auto", False, 7, "rejoin"),      # a volume after the first: the run is going
    ("server", False, 7, "rejoin"),
    ("trigger", False, 7, "rejoin"),   # its trigger came long ago
    ("trigger", True, 0, "rejoin"),
    ("auto", True, 12, "rejoin"),
])
def test_what_a_feedback_event_before_the_start_does(start_on, rejoining, volume, started_by):
    assert StartRule(start_on, rejoining).event_starts(volume) == started_by


def test_a_rejoining_display_skips_the_rating_before_and_ignores_the_trigger():
    for start_on in ("auto", "trigger", "server"):
        rejoining = StartRule(start_on, rejoining=True)
        assert not rejoining.rating_before(True) and not rejoining.rating_before(False)
        assert not rejoining.trigger_starts
        fresh = StartRule(start_on)
        assert fresh.rating_before(True) and not fresh.rating_before(False)
        assert fresh.trigger_starts == (start_on != "server")


@pytest.mark.parametrize("volume", [1, 3, 9, 10, 12, 15, 18, 21])
def test_a_timeline_joining_mid_run_shows_what_the_run_shows_then(paradigm, volume):
    """Block and cue picture, from the joining frame to the end, are those of a display that
    was there from the start; no intermittent result is shown at the join.
    """
    expected = uninterrupted(paradigm)
    schedule = FrameSchedule(paradigm, PERIOD, t0=0.0)
    joined = Timeline(schedule, PICTURES)
    start = rejoin_point(schedule, volume).frame
    first = joined.update(start, lambda first, stop: 0.5)
    assert first.entered == paradigm.blocks[block_of_seconds(volume * TR)]
    assert joined.intermittent is None
    assert [kind for kind, _ in first.changes if kind == "intermittent"] == []
    for frame in range(start, len(expected)):
        if frame > start:
            joined.update(frame, lambda first, stop: None)
        cue = joined.cues.current
        assert (joined.block_index, None if cue is None else cue.stim_file) == \
            expected[frame], frame


def rejoined_rows(paradigm: Paradigm, volume: int, latency: float) -> list[dict]:
    """The rows of a display rejoining at ``volume``, its feedback arriving ``latency`` s
    after the volume's acquisition; frames flipped one period apart from the next one on.
    """
    rule = StartRule("trigger", rejoining=True)
    t_run_start = 1000.0
    t_arrival = t_run_start + volume * TR + latency
    assert rule.event_starts(volume) == "rejoin"
    t0 = t_arrival - volume * paradigm.tr  # the display's rule
    schedule = FrameSchedule(paradigm, PERIOD, t0)
    timeline, rows = Timeline(schedule, PICTURES), EventRows()
    assert rows.start(t0) == []  # nothing before the run: no rating row
    ended: list[dict] = []
    t_flip = t_arrival + PERIOD
    while (frame := schedule.advance(t_flip)) < schedule.end_frame:
        for kind, row in timeline.update(frame, lambda first, stop: None).changes:
            rows.remove(kind) if row is None else rows.show(kind, row)
        ended += rows.flipped(t_flip)
        t_flip += PERIOD
    rows.end_at_next_flip()
    return ended + rows.flipped(t_flip)


@pytest.mark.parametrize(("volume", "latency"), [(5, 0.0), (11, 0.0), (11, 0.37), (18, 0.8)])
def test_rejoined_rows_have_onsets_on_the_run_clock(paradigm, volume, latency):
    rows = sorted(rejoined_rows(paradigm, volume, latency), key=lambda row: row["onset"])
    block_rows = [row for row in rows if "instruction" in row]
    joined = block_of_seconds(volume * TR)
    assert [row["block"] for row in block_rows] == list(range(joined + 1, len(ONSETS)))
    assert not any(row["trial_type"].startswith("rating_") for row in rows)
    # The first frame after the arrival: the volume's time plus a frame on the run clock;
    # the joined block's row opens on it (and its picture with it, if it has one).
    assert block_rows[0]["onset"] == rows[0]["onset"]
    assert block_rows[0]["onset"] == pytest.approx(volume * TR + PERIOD, abs=1e-9)
    assert block_rows[0]["frame"] == round(volume * TR * 60) + 1
    for row in block_rows[1:]:
        assert row["onset"] == pytest.approx(ONSETS[row["block"] - 1], abs=1e-9)
        assert row["frame"] == round(ONSETS[row["block"] - 1] * 60)
    for row in rows:  # every row lies in its block, in time and in frames
        block = row["block"] - 1
        if row["trial_type"] == "feedback_intermittent":  # the block's mean, shown after it
            assert row["onset"] == pytest.approx(ONSETS[block + 1], abs=1e-9)
            continue
        assert ONSETS[block] - 1e-9 <= row["onset"] < ONSETS[block + 1]
        assert round(ONSETS[block] * 60) <= row["frame"] < round(ONSETS[block + 1] * 60)


# ----------------------------------------------------------------------------- files
def write_attempt(path, rows: list[dict], attempt: int, finish: bool) -> None:
    writer = BackgroundWriter()
    log = EventsLog(path, writer, attempt)
    for row in rows:
        log.add(row)
    if finish:
        log.finish()
    writer.close()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


FIRST = [  # as a killed display leaves them: in the order they ended, unsorted
    {"onset": 1.0, "duration": 0.5, "trial_type": "cue_drug", "block": 2},
    {"onset": 1.2, "duration": 0.1, "trial_type": "feedback", "block": 2, "volume": 2,
     "value": 0.25, "censored": False},
    {"onset": 0.0, "duration": 1.0, "trial_type": "fixation", "block": 1,
     "instruction": "Rest."},
]
SECOND = [
    {"onset": 6.6, "duration": 0.2, "trial_type": "feedback", "block": 3, "volume": 13,
     "value": 0.75, "censored": True},
    {"onset": 7.0, "duration": 1.0, "trial_type": "look_drug", "block": 4,
     "instruction": "LOOK"},
    {"onset": 6.5, "duration": 0.5, "trial_type": "savor_food", "block": 3,
     "instruction": "SAVOR"},
]


def test_a_restarted_events_log_appends_and_leaves_earlier_bytes_as_they_were(tmp_path):
    path = tmp_path / "sub-01_task-rejoin_run-1_events.tsv"
    write_attempt(path, FIRST, attempt=1, finish=False)  # killed: never sorted
    before = path.read_bytes()
    write_attempt(path, SECOND, attempt=2, finish=True)
    after = path.read_bytes()
    assert digest(after[:len(before)]) == digest(before)
    assert after.count(("\t".join(EVENTS_COLUMNS) + "\n").encode()) == 1  # the header once
    rows = read_tsv(path)
    assert [(row["trial_type"], row["attempt"]) for row in rows] == [
        ("cue_drug", "1"), ("feedback", "1"), ("fixation", "1"),  # as they were
        ("savor_food", "2"), ("feedback", "2"), ("look_drug", "2")]  # sorted by onset
    assert rows[4]["censored"] == "1" and rows[4]["volume"] == "13"


def test_a_row_cut_short_by_a_crash_is_ended_before_the_next_attempt_appends(tmp_path):
    path = tmp_path / "events.tsv"
    write_attempt(path, FIRST, attempt=1, finish=True)
    with path.open("ab") as handle:
        handle.write(b"3.5000\t0.2")  # a row cut short
    before = path.read_bytes()
    write_attempt(path, SECOND[:1], attempt=2, finish=True)
    after = path.read_bytes()
    assert after.startswith(before + b"\n6.6000\t")
    assert read_tsv(path)[-1]["attempt"] == "2"


def test_an_events_file_of_other_columns_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "sub-01_task-rejoin_run-1_events.tsv"
    path.write_bytes(b"onset\tduration\ttrial_type\n0.0\t1.0\tfixation\n")
    before = path.read_bytes()
    with pytest.raises(DisplayError, match="exists with other columns.*Got 'onset"):
        find_attempt(RunFiles(tmp_path, "sub-01_task-rejoin_run-1"))
    writer = BackgroundWriter()
    log = EventsLog(path, writer, 2)
    log.add(SECOND[0])
    log.finish()
    writer.close()
    assert writer.n_failed == 1 and path.read_bytes() == before


def test_json_outputs_are_created_never_replaced(tmp_path):
    path = tmp_path / "x.json"
    write_new_json(path, {"a": 1})
    write_new_json(path, {"a": 1})  # the same contents: nothing to do
    with pytest.raises(DisplayError, match="exists with other contents"):
        write_new_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def summary_file(files: RunFiles, attempt: int, ended_by: str) -> None:
    files.summary(attempt).write_text(json.dumps({"ended_by": ended_by}))


def test_attempts_are_numbered_from_what_earlier_ones_left(tmp_path):
    files = RunFiles(tmp_path, "sub-01_task-rejoin_run-1")
    assert find_attempt(files) == Attempt(1, run_started=False)
    assert find_attempt(RunFiles(tmp_path / "missing", files.prefix)) == Attempt(1)
    summary_file(files, 1, "no_start")  # the first start timed out before the run
    assert find_attempt(files) == Attempt(2, run_started=False, previous_ended_by="no_start")
    write_attempt(files.events, FIRST, attempt=2, finish=False)  # the second, killed
    assert find_attempt(files) == Attempt(3, run_started=True)
    assert find_attempt(files).rejoins
    summary_file(files, 3, "escape")  # the third quit mid-run
    assert files.summary(3).name == "sub-01_task-rejoin_run-1_desc-displayAttempt3.json"
    assert find_attempt(files) == Attempt(4, run_started=True, previous_ended_by="escape")


def test_an_events_file_without_rows_still_counts_as_a_started_run(tmp_path):
    files = RunFiles(tmp_path, "sub-01_task-rejoin_run-1")
    files.events.write_bytes(b"")  # killed between creating it and writing the header
    assert find_attempt(files) == Attempt(2, run_started=True)
    write_attempt(files.events, SECOND, attempt=2, finish=True)
    assert [row["attempt"] for row in read_tsv(files.events)] == ["2"] * 3


@pytest.mark.parametrize("ended_by", ["paradigm_end", "run_end"])
def test_a_completed_run_is_refused_before_anything_is_written(tmp_path, paradigm, ended_by):
    from feedback_display.display import FeedbackDisplay

    files = RunFiles(tmp_path, "sub-01_task-rejoin_run-1")
    write_attempt(files.events, FIRST, attempt=1, finish=True)
    summary_file(files, 1, ended_by)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    with pytest.raises(DisplayError, match=f"is complete \\(attempt 1 ended by {ended_by}\\)"):
        FeedbackDisplay(paradigm, "tcp://127.0.0.1:5556", DisplayOptions(out=tmp_path))
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_the_command_refuses_a_completed_run_in_one_line_before_any_window(tmp_path):
    from .test_display import one_line_error, run_cli, without_screen

    files = RunFiles(tmp_path, "sub-01_task-regulation_run-1")
    write_attempt(files.events, FIRST, attempt=1, finish=True)
    summary_file(files, 1, "paradigm_end")
    line = one_line_error(run_cli("--paradigm", "regulation", "--out", str(tmp_path),
                                  env=without_screen()))
    assert f"The run in {files.events} is complete (attempt 1 ended by paradigm_end)" in line
    assert "Cannot open a window" not in line


def test_run_outputs_of_a_second_attempt_go_to_new_files(tmp_path):
    files = RunFiles(tmp_path, "sub-01_task-rejoin_run-1")
    first = RunOutputs(files, 1)
    first.start_events()
    first.add(FIRST[0])
    first.close({"ended_by": "escape"})
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    second = RunOutputs(files, 2)
    second.start_events()
    second.add(SECOND[0])
    second.close({"ended_by": "paradigm_end"})
    assert second.writer.n_failed == 0
    for name, content in before.items():
        assert (tmp_path / name).read_bytes().startswith(content), name
    assert json.loads(files.summary(1).read_text()) == {"ended_by": "escape"}
    assert json.loads(files.summary(2).read_text()) == {"ended_by": "paradigm_end"}
    assert [row["attempt"] for row in read_tsv(files.events)] == ["1", "2"]


def test_summary_says_which_attempt_and_where_it_rejoined(paradigm):
    summary = run_summary(
        paradigm, DisplayOptions(), "run_end", RunStart("rejoin", 1.7e9, 14),
        FeedbackState(1.25), BarState(9), FrameLog(60.0), period=PERIOD, paced_by="software",
        n_realignments=0, n_triggers=3, n_screenshots=0, ratings=[], pictures="/p",
        window_size=None, attempt=2)
    assert (summary["attempt"], summary["started_by"], summary["rejoined_at_volume"]) == (
        2, "rejoin", 14)
    fresh = run_summary(
        paradigm, DisplayOptions(), "run_end", RunStart("trigger", 1.7e9), FeedbackState(1.0),
        BarState(9), FrameLog(60.0), period=PERIOD, paced_by="software", n_realignments=0,
        n_triggers=1, n_screenshots=0, ratings=[], pictures="/p", window_size=None)
    assert (fresh["attempt"], fresh["rejoined_at_volume"]) == (1, None)


# ----------------------------------------------------------------------------- results channel
def answer_once(context: zmq.Context, reply: bytes) -> tuple[str, threading.Thread]:
    rep = context.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    port = rep.bind_to_random_port("tcp://127.0.0.1")

    def serve() -> None:
        try:
            if rep.poll(10_000):
                protocol.decode_request(rep.recv())
                rep.send(reply)
        finally:
            rep.close(linger=0)

    thread = threading.Thread(target=serve)
    thread.start()
    return f"tcp://127.0.0.1:{port}", thread


@pytest.mark.parametrize(("reply", "expected"), [
    (protocol.encode_status(n_processed=37, n_received=37), 37),
    (protocol.encode_status(n_processed=0), 0),
    (protocol.encode_status(n_received=3), None),  # no count of processed volumes
    (protocol.encode_reply(protocol.ERROR, None, error="busy"), None),
    (b"not json", None),
])
def test_the_results_channel_says_how_many_volumes_were_processed(reply, expected):
    context = zmq.Context()
    try:
        address, thread = answer_once(context, reply)
        assert processed_volumes(address, timeout=10.0, context=context) == expected
        thread.join()
    finally:
        context.term()


def test_a_silent_results_channel_is_no_answer():
    context = zmq.Context()
    rep = context.socket(zmq.REP)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    try:
        assert processed_volumes(f"tcp://127.0.0.1:{port}", timeout=0.2, context=context) is None
    finally:
        rep.close(linger=0)
        context.term()


def test_a_bad_results_endpoint_is_refused():
    with pytest.raises(ConfigError, match="'results' should be a ZeroMQ endpoint .* Got 'x:1'"):
        DisplayOptions(results="x:1")
