"""The real ``feedback-display`` process in a real window (Xvfb), over real sockets.

1. A scripted session against a feedback publisher the test owns: craving rating by key
   presses, cue blocks, known feedback values, a censored value, the server going away and
   coming back, an intermittent block, the rating after the run. Every screen's screenshot
   is measured against what it must show (bar height in pixels, colours, text, the cue
   picture's pixels).
2. A replayed session: ``rtserver serve`` + ``rtserver send`` of a simulated run paced at
   its TR; the display's onsets follow the paradigm within one frame and the values it drew
   are the ones the server recorded.
3. The scanner trigger, Escape mid-run, and a run that never starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from feedback_display.screens import (
    ARROW_INSET,
    ARROW_X,
    CENSORED_FILL,
    FILL,
    INSTRUCTION_Y,
    MARKER,
    NEUTRAL_FILL,
    PICTURE_POS_ALONE,
    PICTURE_POS_WITH_THERMOMETER,
    SCALE_LINE,
    SOFT_TEXT,
    TARGET,
    TEXT,
    THERMOMETER_X,
)
from rtserver import protocol
from rtserver.paradigm import Paradigm

from .conftest import RunningProcess, command
from .display_helpers import (
    TUBE_HEIGHT,
    bind_xpub,
    feedback_event,
    ink,
    load_rgb,
    measure_bar,
    needs_display,
    picture_difference,
    press,
    read_tsv,
    wait_for_subscription,
)

pytestmark = [pytest.mark.display, needs_display]

FRAME = 1 / 60

SESSION = """
name = "session"
task = "session"
tr = 0.5

[ratings]
before = true
after = true
max_seconds = 60.0

[display]
cue_seconds = 1.0
intermittent_seconds = 1.0

[[blocks]]
condition = "fixation"
duration = 1.0
instruction = "Rest your eyes on the cross."

[[blocks]]
condition = "reappraise"
cue = "drug"
duration = 10.0
feedback = "continuous"
instruction = "REAPPRAISE: these drugs are not real, the people are actors. Bring the bar DOWN."

[[blocks]]
condition = "savor"
cue = "food"
duration = 2.0
feedback = "intermittent"
instruction = "SAVOR: imagine holding this food, tasting it, enjoying it. Bring the bar UP."

[[blocks]]
condition = "fixation"
duration = 1.5
instruction = "Rest your eyes on the cross."

[[blocks]]
condition = "look"
cue = "neutral"
duration = 1.0
instruction = "LOOK at the pictures and respond naturally."

[[blocks]]
condition = "rating"
duration = 2.0
instruction = "How strong is your craving for drugs right now?"
"""
# (volume, value, censored) shown in the reappraise block (volumes 2-21), in this order;
# the server disappears after volume 6 and is back for volume 7.
SHOWN = [(4, 0.2, False), (5, 0.9, False), (6, 0.7, True), (7, 0.4, False)]
INTERMITTENT = [(22, 0.6), (23, 0.8)]  # the savor block's volumes 22-25; mean 0.7


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Run one scripted session; return its outputs."""
    base = tmp_path_factory.mktemp("session")
    paradigm = base / "session.toml"
    paradigm.write_text(SESSION)
    out, shots = base / "out", base / "shots"
    context = zmq.Context()
    xpub, address = bind_xpub(context)
    display = RunningProcess([
        command("feedback-display"), "--windowed", "--paradigm", str(paradigm),
        "--server", address, "--out", str(out), "--screenshots", str(shots),
        "--start-on", "server", "--stale-after", "1.0", "--timeout", "60", "--verbose"])

    def send(volume: int, value: float, censored: bool = False) -> None:
        xpub.send_multipart(protocol.encode_feedback(feedback_event(volume, value, censored)))

    try:
        wait_for_subscription(xpub, 60.0, display.proc)
        display.wait_for(r"rating_before: the rating scale is shown")
        press("Right", "Right", "Right", "Left", "space")  # 50 -> 65 -> 60, confirmed
        display.wait_for(r"rating_before: 60$")
        send(0, 0.5)
        display.wait_for(r"run started by the server at volume 0")
        display.wait_for(r"screenshot block-01-fixation")
        for volume, value, censored in SHOWN[:3]:
            send(volume, value, censored)  # volume 4 moves the schedule to the reappraise block
            display.wait_for(rf"screenshot .*volume-{volume:04d}")
        xpub.close(linger=0)  # the server goes away...
        display.wait_for(r"no feedback from the server for .* showing the neutral state")
        display.wait_for(r"screenshot unavailable-")
        xpub, _ = bind_xpub(context, address)  # ...and comes back on the same address
        wait_for_subscription(xpub, 30.0, display.proc)
        send(*SHOWN[3])
        display.wait_for(r"feedback resumed at volume 7")
        display.wait_for(r"screenshot volume-0007")
        for volume, value in INTERMITTENT:
            send(volume, value)
        display.wait_for(r"screenshot block-03-savor_food")
        send(26, 0.5)  # the fixation block after it: the intermittent result
        display.wait_for(r"screenshot .*intermittent-03")
        display.wait_for(r"screenshot block-05-look_neutral")
        display.wait_for(r"rating: the rating scale is shown")  # a rating inside the run
        press("Right", "space")
        display.wait_for(r"rating: 55$")
        xpub.send_multipart(protocol.encode_run_end(35))
        display.wait_for(r"rating_after: the rating scale is shown")
        press("Left", "Left", "space")  # 50 -> 40, confirmed
        code, stderr = display.finish(timeout=60.0)
    finally:
        display.kill()
        xpub.close(linger=0)
        context.term()
    prefix = "sub-01_task-session_run-1"
    return SimpleNamespace(
        code=code, stderr=stderr, shots=shots,
        rows=read_tsv(out / f"{prefix}_events.tsv"),
        sidecar=json.loads((out / f"{prefix}_events.json").read_text()),
        summary=json.loads((out / f"{prefix}_desc-display.json").read_text()))


def shot(session, name: str) -> np.ndarray:
    matches = sorted(session.shots.glob(f"{name}.png"))
    assert matches, f"no screenshot {name}.png among {sorted(p.name for p in session.shots.iterdir())}"
    return load_rgb(matches[0])


def test_session_ends_cleanly(session):
    assert session.code == 0, session.stderr
    assert "Traceback" not in session.stderr
    assert session.summary["ended_by"] in ("paradigm_end", "run_end")
    assert session.summary["started_by"] == "server"


def test_instruction_and_drug_cue_screen(session):
    image = shot(session, "block-02-reappraise_drug")
    # The instruction's text across the top.
    assert ink(image, -450, 450, INSTRUCTION_Y - 40, INSTRUCTION_Y + 40, TEXT) > 1000
    # The first drug placeholder, left of the thermometer, pixel for pixel (up to scaling).
    drug = picture_difference(image, "drug", 0, PICTURE_POS_WITH_THERMOMETER)
    food = picture_difference(image, "food", 0, PICTURE_POS_WITH_THERMOMETER)
    assert drug < 1 and food > 20, (drug, food)
    # The target: an arrow pointing down, by the tube's bottom; none by its top.
    bar = measure_bar(image)
    assert bar is not None and bar.inner_height == TUBE_HEIGHT
    bottom, top = -TUBE_HEIGHT / 2, TUBE_HEIGHT / 2
    near_bottom = ink(image, ARROW_X - 25, ARROW_X + 25, bottom + ARROW_INSET - 25,
                      bottom + ARROW_INSET + 25, TARGET, 10)
    near_top = ink(image, ARROW_X - 25, ARROW_X + 25, top - ARROW_INSET - 25,
                   top - ARROW_INSET + 25, TARGET, 10)
    assert near_bottom > 400 and near_top == 0
    # Wider at its top than at its tip: it points down.
    rows = [ink(image, ARROW_X - 25, ARROW_X + 25, bottom + ARROW_INSET + dy,
                bottom + ARROW_INSET + dy + 1, TARGET, 10) for dy in (10, -10)]
    assert rows[0] > rows[1] > 0


def test_food_cue_screen_without_feedback_during_an_intermittent_block(session):
    image = shot(session, "block-03-savor_food")
    food = picture_difference(image, "food", 0, PICTURE_POS_ALONE)
    neutral = picture_difference(image, "neutral", 0, PICTURE_POS_ALONE)
    assert food < 1 and neutral > 20, (food, neutral)
    assert measure_bar(image) is None  # intermittent: no thermometer during the block


def test_fixation_screen_has_a_cross_and_no_thermometer(session):
    image = shot(session, "block-01-fixation")
    assert ink(image, -22, 22, -22, 22, TEXT, 10) > 250  # 40x4 + 4x40 px
    assert measure_bar(image) is None


@pytest.mark.parametrize(("volume", "value", "censored"), SHOWN)
def test_bar_height_is_value_times_tube_height(session, volume, value, censored):
    image = shot(session, f"volume-{volume:04d}")
    bar = measure_bar(image)
    assert bar is not None and bar.inner_height == TUBE_HEIGHT
    assert abs(bar.fill_height - value * TUBE_HEIGHT) <= 2, (bar.fill_height, value)
    assert bar.fill_color == pytest.approx(CENSORED_FILL if censored else FILL, abs=3)
    hold_still = ink(image, THERMOMETER_X - 100, THERMOMETER_X + 100, -340, -260, SOFT_TEXT, 40)
    assert (hold_still > 50) == censored, hold_still


def test_server_gone_shows_a_calm_neutral_bar_at_baseline(session):
    image = shot(session, "unavailable-*")
    bar = measure_bar(image)
    assert bar.fill_height == TUBE_HEIGHT // 2
    assert bar.fill_color == pytest.approx(NEUTRAL_FILL, abs=3)
    assert ink(image, THERMOMETER_X - 100, THERMOMETER_X + 100, -340, -260, SOFT_TEXT, 40) == 0


def test_intermittent_result_is_the_blocks_mean_after_it(session):
    image = shot(session, "intermittent-03")
    bar = measure_bar(image)
    assert abs(bar.fill_height - 0.7 * TUBE_HEIGHT) <= 2
    assert bar.fill_color == pytest.approx(FILL, abs=3)
    assert ink(image, THERMOMETER_X - 100, THERMOMETER_X + 100, -340, -260, SOFT_TEXT, 40) > 50
    assert ink(image, -22, 22, -22, 22, TEXT, 10) > 250  # the fixation block goes on
    row, = [row for row in session.rows if row["trial_type"] == "feedback_intermittent"]
    assert (float(row["value"]), row["volume"], row["block"]) == (0.7, "22-25", "3")
    assert float(row["duration"]) == pytest.approx(1.0, abs=2 * FRAME)


def test_rating_scale_screen(session):
    image = shot(session, "rating-before")
    line = ink(image, -360, 360, -1, 1, SCALE_LINE, 10)
    assert line > 2 * 690  # 700 px long, 4 px thick (2 rows measured)
    assert ink(image, -5, 5, -25, 25, MARKER, 10) > 300  # the marker starts in the middle
    assert ink(image, -400, 400, 120, 180, TEXT) > 500  # the question


def test_ratings_before_and_after_the_run_are_recorded(session):
    rows = {row["trial_type"]: row for row in session.rows if row["trial_type"].startswith(
        "rating_")}
    assert float(rows["rating_before"]["response"]) == 60.0
    assert float(rows["rating_before"]["onset"]) < 0  # before the run started
    assert float(rows["rating_after"]["response"]) == 40.0
    assert float(rows["rating_after"]["onset"]) > 0
    for row in rows.values():
        assert 0 < float(row["response_time"]) < 60
    answers = [(r["trial_type"], r["response"]) for r in session.summary["ratings"]]
    assert answers == [("rating_before", 60.0), ("rating", 55.0), ("rating_after", 40.0)]


def test_a_rating_block_inside_the_run_records_its_answer_in_the_block_row(session):
    row, = [row for row in session.rows if row["trial_type"] == "rating"]
    assert (row["block"], float(row["response"])) == ("6", 55.0)
    assert 0 < float(row["response_time"]) < 2.0
    assert float(row["duration"]) == pytest.approx(2.0, abs=2 * FRAME)
    image = shot(session, "block-06-rating")
    assert ink(image, -360, 360, -1, 1, SCALE_LINE, 10) > 2 * 690
    # The block's instruction is its question, at the top; the scale's own question is not
    # drawn over it.
    assert ink(image, -450, 450, INSTRUCTION_Y - 40, INSTRUCTION_Y + 40, TEXT) > 500
    assert ink(image, -400, 400, 120, 180, TEXT) == 0
    assert measure_bar(image) is None


def test_events_list_each_value_shown_and_the_neutral_period(session):
    rows = session.rows
    feedback = [row for row in rows if row["trial_type"].startswith("feedback")
                and row["trial_type"] != "feedback_intermittent"]
    shown = [(int(r["volume"]), float(r["value"]), r["censored"] == "1")
             for r in feedback if r["trial_type"] == "feedback"]
    assert shown == SHOWN
    volumes = [row["volume"] for row in feedback]
    between = feedback[volumes.index("6") + 1:volumes.index("7")]
    assert [row["trial_type"] for row in between] == ["feedback_unavailable"]
    onsets = [float(row["onset"]) for row in rows]
    assert onsets == sorted(onsets)
    assert all(float(row["duration"]) >= 0 for row in rows)
    assert set(session.sidecar) == set(rows[0]) and "Description" in session.sidecar["value"]


def test_cue_pictures_cycle_every_second_counted_in_frames(session):
    cues = [row for row in session.rows if row["trial_type"] == "cue_drug"]
    assert len(cues) >= 2  # the reappraise block lasts as long as the script takes
    names = [row["stim_file"] for row in cues]
    assert names == [f"drug/placeholder-{i % 3 + 1}.png" for i in range(len(cues))]
    # The block began where volume 4 moved the schedule; from then on a picture every 60
    # frames (1 s at 60 Hz) on the block's grid (its paradigm onset: frame 60).
    assert all((int(row["frame"]) - 60) % 60 == 0 for row in cues[1:])
    assert set(np.diff([int(row["frame"]) for row in cues[1:]])) <= {60}


def test_display_json_reports_frame_timing(session):
    summary = session.summary
    assert summary["paced_by"] in ("software", "vsync")
    assert summary["n_frames"] > 60 * 2
    assert 0 < summary["frame_interval_ms_median"] <= summary["frame_interval_ms_p95"] \
        <= summary["frame_interval_ms_p99"] <= summary["frame_interval_ms_max"]
    assert isinstance(summary["dropped_frames"], int) and summary["dropped_frames"] >= 0
    assert summary["n_schedule_realignments"] >= 2
    assert summary["n_feedback_unavailable_episodes"] >= 1
    assert summary["n_feedback_events_received"] == len(SHOWN) + len(INTERMITTENT) + 2


# ----------------------------------------------------------------------------- replay
REPLAY = """
name = "replaytest"
task = "replaytest"
tr = 0.5

[display]
cue_seconds = 1.0

[[blocks]]
condition = "fixation"
duration = 2.0
instruction = "Rest your eyes on the cross."

[[blocks]]
condition = "reappraise"
cue = "drug"
duration = 3.0
feedback = "continuous"
instruction = "REAPPRAISE: these drugs are not real, the people are actors. Bring the bar DOWN."

[[blocks]]
condition = "fixation"
duration = 1.0
instruction = "Rest your eyes on the cross."

[[blocks]]
condition = "savor"
cue = "food"
duration = 3.0
feedback = "continuous"
instruction = "SAVOR: imagine holding this food, tasting it, enjoying it. Bring the bar UP."

[[blocks]]
condition = "fixation"
duration = 1.0
instruction = "Rest your eyes on the cross."
"""
LISTENING = r"listening: volumes (\S+), feedback (\S+), results (\S+)"


def test_replayed_session_onsets_and_values(tmp_path, processes):
    """Server + bridge replaying a simulated run at its TR; the display starts on the first
    volume. Onsets follow the paradigm within one frame; the values drawn are the server's.
    """
    from rtserver.sim import simulate_subject

    paradigm_file = tmp_path / "replaytest.toml"
    paradigm_file.write_text(REPLAY)
    paradigm = Paradigm.from_file(paradigm_file)
    run = simulate_subject(tmp_path / "bids", "01", "patient", 1, paradigm=paradigm,
                           shape=(24, 24, 20), voxel_size=8.0).runs[0]
    server_out, display_out = tmp_path / "server", tmp_path / "display"
    server = processes([
        command("rtserver"), "serve", "--out", str(server_out), "--volumes", "tcp://127.0.0.1:*",
        "--feedback", "tcp://127.0.0.1:*", "--results", "tcp://127.0.0.1:*",
        "--paradigm", str(paradigm_file), "--task", "replaytest", "--roi", str(run.rois),
        "--target", "nacc", "--wait-display", "60"])
    volumes, feedback, _ = server.wait_for(LISTENING).groups()
    display = processes([
        command("feedback-display"), "--windowed", "--paradigm", str(paradigm_file),
        "--server", feedback, "--out", str(display_out), "--start-on", "server",
        "--timeout", "60"])
    server.wait_for(r"a feedback subscriber joined")
    bridge = processes([command("rtserver"), "send", str(run.bold), "--to", volumes,
                        "--timeout", "60"])
    for process, name in ((bridge, "bridge"), (server, "server"), (display, "display")):
        code, stderr = process.finish(timeout=120)
        assert code == 0, f"{name}: {stderr}"
        assert "Traceback" not in stderr

    summary = json.loads((display_out / "sub-01_task-replaytest_run-1_desc-display.json")
                         .read_text())
    rows = read_tsv(display_out / "sub-01_task-replaytest_run-1_events.tsv")
    assert summary["started_by"] == "server" and summary["first_volume"] == 0
    assert summary["n_schedule_realignments"] == 0  # real time: the clock needed no help
    assert summary["frame_period_ms"] == pytest.approx(1000 * FRAME, abs=0.01)

    # Block onsets: on the frame the paradigm says (counted from the start), and within one
    # frame of the paradigm's onset in time. A late (dropped) frame may delay an onset by
    # its own lateness; the JSON counts them.
    blocks = [row for row in rows if row["trial_type"] in {b.trial_type for b in paradigm.blocks}]
    assert [row["trial_type"] for row in blocks] == [b.trial_type for b in paradigm.blocks]
    slack = FRAME if summary["dropped_frames"] == 0 else summary["frame_interval_ms_max"] / 1000
    for row, block in zip(blocks[1:], paradigm.blocks[1:], strict=True):
        assert int(row["frame"]) == round(block.onset / FRAME)
        assert abs(float(row["onset"]) - block.onset) <= slack + 0.002, (row, block)
    assert float(blocks[0]["onset"]) <= 2 * FRAME + 0.002  # the first frame after the start
    # One picture a second, on the frame, cycling through each category's pictures.
    cues = [row for row in rows if row["trial_type"].startswith("cue_")]
    assert [(row["block"], row["stim_file"], int(row["frame"])) for row in cues] == [
        (str(number), f"{block.cue}/placeholder-{i + 1}.png", round((block.onset + i) / FRAME))
        for number, block in enumerate(paradigm.blocks, start=1) if block.cue != "none"
        for i in range(3)]
    for row in cues:
        assert abs(float(row["onset"]) - int(row["frame"]) * FRAME) <= slack + 0.002

    # The values drawn are the ones the server published for those volumes.
    server_rows = {int(row["volume"]): row for row in read_tsv(
        server_out / "sub-01_task-replaytest_run-1_desc-feedback_timeseries.tsv")}
    drawn = [row for row in rows if row["trial_type"] == "feedback"]
    for row in drawn:
        published = server_rows[int(row["volume"])]
        assert float(row["value"]) == pytest.approx(float(published["value"]), abs=5e-5)
        assert row["censored"] == published["censored"]
        assert paradigm.blocks[int(row["block"]) - 1].feedback == "continuous"
    # Every volume acquired during a continuous block was drawn (the one arriving with the
    # block's first frame may be replaced before it is seen).
    continuous = {v for v in range(paradigm.n_volumes)
                  if paradigm.block_of_volume(v).feedback == "continuous"}
    assert len(continuous - {int(row["volume"]) for row in drawn}) <= 2
    # Frame timing: Xvfb has no vsync and this machine is shared, so a late frame now and
    # then is not the display's doing; the schedule above is what must hold. Here only a
    # systematic failure (frames at half rate, a stalled loop) fails.
    assert summary["frame_interval_ms_median"] == pytest.approx(1000 * FRAME, abs=1.0)
    assert summary["dropped_frames"] <= 0.1 * summary["n_frames"], summary


def test_screenshot_files_are_named_after_what_they_show(session):
    names = {path.name for path in session.shots.iterdir()}
    assert {"rating-before.png", "rating-after.png", "block-01-fixation.png",
            "intermittent-03.png", "block-06-rating.png"} <= names
    assert all(Path(name).suffix == ".png" for name in names)
