"""The participant display: geometry and timing units, the subscriber over a real socket,
paradigm and picture checks before any window opens, and the command line.

The real ``feedback-display`` process in a real window (Xvfb), checked pixel by pixel, is in
``test_display_session.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq

from feedback_display.outputs import BackgroundWriter, EventsLog
from feedback_display.pictures import (
    CUE_CATEGORIES,
    N_PLACEHOLDERS,
    SHIPPED_PICTURES,
    find_pictures,
    placeholder_image,
    placeholder_path,
)
from feedback_display.subscriber import (
    FeedbackSubscriber,
    Malformed,
    RunEnd,
    check_endpoint,
)
from feedback_display.thermometer import BarAnimator, ThermometerGeometry
from feedback_display.timing import FramePacer, IntervalStats, frame_stats
from rtserver import protocol
from rtserver.errors import ConfigError, TransportError
from rtserver.paradigm import Paradigm

from .display_helpers import bind_xpub, feedback_event, read_tsv, wait_for_subscription

FEEDBACK_DISPLAY = Path(sys.executable).parent / "feedback-display"


# ----------------------------------------------------------------------------- helpers
def malformed_messages() -> list[list[bytes]]:
    """Messages the display must count and skip: each breaks the protocol differently."""
    good = feedback_event(30, 0.5).to_dict()
    return [
        [protocol.FEEDBACK_TOPIC, b"\x00\xff not json at all"],
        [protocol.FEEDBACK_TOPIC, json.dumps({**good, "protocol": "rtfmri/0"}).encode()],
        [protocol.FEEDBACK_TOPIC, json.dumps({**good, "value": 1.5}).encode()],
        [protocol.FEEDBACK_TOPIC, json.dumps(good).encode(), b"one frame too many"],
        [b"feedbackish", json.dumps(good).encode()],  # passes the prefix filter, wrong topic
    ]


# ----------------------------------------------------------------------------- units
@pytest.mark.parametrize(("value", "expected"), [
    (0.0, 0), (0.25, 125), (0.5, 250), (0.8, 400), (1.0, 500), (0.123, 62), (-0.2, 0),
    (1.7, 500),
])
def test_fill_height_is_value_times_tube_height(value, expected):
    geometry = ThermometerGeometry()
    assert geometry.fill_height(value) == expected
    x, y, width, height = geometry.fill_rect(value)
    assert (x, width, height) == (0.0, 120, expected)
    assert y - height / 2 == geometry.bottom == -250  # anchored at the tube's bottom


def test_geometry_refuses_sizes_off_the_pixel_grid():
    with pytest.raises(ValueError, match="even"):
        ThermometerGeometry(width=121)
    with pytest.raises(ValueError, match="positive whole number"):
        ThermometerGeometry(height=0)


def test_bar_moves_linearly_and_lands_exactly_on_the_target():
    bar = BarAnimator(n_frames=9, initial=0.5)
    bar.set_target(0.8)
    values = [bar.step() for _ in range(9)]
    assert values[-1] == 0.8 and bar.settled
    np.testing.assert_allclose(np.diff([0.5, *values]), 0.3 / 9)
    assert bar.step() == 0.8  # stays
    bar.set_target(0.8)  # same value: settled at once
    assert bar.settled and bar.step() == 0.8
    bar.set_target(0.1)
    assert not bar.settled


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def run_frames(pacer: FramePacer, clock: FakeClock, n: int, flip_cost: float) -> list[float]:
    flips = []
    for _ in range(n):
        clock.now += 0.002  # drawing
        pacer.wait()
        clock.now += flip_cost
        pacer.flipped(clock.now)
        flips.append(clock.now)
    return flips


def test_pacer_without_vsync_sleeps_to_a_60_hz_schedule():
    clock = FakeClock()
    pacer = FramePacer(60.0, mode="auto", n_calibration=5, clock=clock, sleep=clock.sleep)
    flips = run_frames(pacer, clock, 40, flip_cost=0.0005)  # flips return at once (Xvfb)
    assert pacer.paced_by == "software"
    np.testing.assert_allclose(np.diff(flips[10:]), 1 / 60, atol=1e-9)


def test_pacer_with_vsync_never_sleeps():
    clock = FakeClock()
    pacer = FramePacer(60.0, mode="auto", n_calibration=5, clock=clock, sleep=clock.sleep)
    run_frames(pacer, clock, 40, flip_cost=1 / 60 - 0.002)  # flips block until the refresh
    assert pacer.paced_by == "vsync"
    assert clock.sleeps == []


def test_pacer_restarts_its_schedule_after_a_long_stall():
    clock = FakeClock()
    pacer = FramePacer(60.0, mode="software", clock=clock, sleep=clock.sleep)
    run_frames(pacer, clock, 5, flip_cost=0.0005)
    clock.now += 0.5  # a stall: no burst of catch-up frames afterwards
    flips = run_frames(pacer, clock, 5, flip_cost=0.0005)
    assert min(np.diff(flips)) == pytest.approx(1 / 60)


def test_pacer_predicts_the_coming_flip():
    clock = FakeClock()
    software = FramePacer(60.0, mode="software", clock=clock, sleep=clock.sleep)
    flips = run_frames(software, clock, 5, flip_cost=0.0005)
    # The schedule's next deadline; the flip comes right after it.
    assert software.next_flip(clock.now + 0.001) == pytest.approx(flips[0] - 0.0005 + 5 / 60)
    assert software.next_flip(clock.now + 0.5) == clock.now + 0.5  # late: at once
    vsync = FramePacer(60.0, mode="vsync", clock=clock, sleep=clock.sleep)
    flips = run_frames(vsync, clock, 3, flip_cost=1 / 60 - 0.002)
    assert vsync.next_flip(flips[-1] + 0.002) == pytest.approx(flips[-1] + 1 / 60)
    assert vsync.next_flip(flips[-1] + 0.02, period=0.0166) == pytest.approx(flips[-1] + 0.0332)


def test_interval_stats_match_numpy_and_count_dropped_frames():
    rng = np.random.default_rng(0)
    intervals = np.concatenate([rng.normal(16.7, 0.4, 1000), [30.0, 41.2, 400.0]])
    stats = frame_stats(60.0)
    for interval in intervals:
        stats.add(float(interval))
    assert stats.n == len(intervals)
    assert stats.n_over_threshold == 3  # > 25 ms
    assert stats.max_ms == 400.0
    for q in (50, 95):
        assert stats.percentile(q) == pytest.approx(
            np.percentile(intervals, q, method="inverted_cdf"), abs=0.01)
    assert np.isnan(IntervalStats().percentile(50))


def test_events_log_is_sorted_by_onset_at_the_end(tmp_path):
    writer = BackgroundWriter()
    log = EventsLog(tmp_path / "events.tsv", writer)
    log.add({"onset": 2.0, "duration": 1.0, "trial_type": "feedback", "volume": 3,
             "value": 0.25, "censored": False})
    log.add({"onset": 0.5, "duration": 3.0, "trial_type": "look_drug", "volume": 1,
             "instruction": "LOOK"})
    log.finish()
    writer.close()
    rows = read_tsv(tmp_path / "events.tsv")
    assert [row["trial_type"] for row in rows] == ["look_drug", "feedback"]
    assert rows[0]["value"] == "n/a" and rows[1]["value"] == "0.2500"
    assert rows[1]["censored"] == "0"


@pytest.mark.parametrize("address", ["localhost:5556", "tcp://127.0.0.1", "tcp://host:99999",
                                     "http://127.0.0.1:5556", ""])
def test_bad_server_addresses_are_refused(address):
    with pytest.raises(TransportError, match="ZeroMQ endpoint"):
        check_endpoint(address)


def test_subscriber_that_cannot_connect_raises_transport_error():
    with pytest.raises(TransportError, match="Cannot connect to tcp://\\*:5556"):
        FeedbackSubscriber("tcp://*:5556").start()


def test_subscriber_hands_over_events_run_end_and_malformed_messages():
    context = zmq.Context()
    xpub, address = bind_xpub(context)
    try:
        with FeedbackSubscriber(address) as subscriber:
            assert wait_for_subscription(xpub, 10.0) == b"\x01" + protocol.FEEDBACK_TOPIC
            xpub.send_multipart(protocol.encode_feedback(feedback_event(7, 0.3)))
            for message in malformed_messages():
                xpub.send_multipart(message)
            xpub.send_multipart(protocol.encode_run_end(8))
            items = [subscriber.queue.get(timeout=5.0).item for _ in range(7)]
    finally:
        xpub.close(linger=0)
        context.term()
    assert isinstance(items[0], protocol.FeedbackEvent)
    assert (items[0].volume, items[0].value, items[0].censored) == (7, 0.3, False)
    assert all(isinstance(item, Malformed) for item in items[1:6])
    assert "rtfmri/1" in items[2].reason and "rtfmri/0" in items[2].reason
    assert items[6] == RunEnd(8)



def test_events_log_puts_blocks_first_then_cues_feedback_and_ratings(tmp_path):
    writer = BackgroundWriter()
    log = EventsLog(tmp_path / "events.tsv", writer)
    for trial_type in ("rating_after", "feedback", "cue_drug", "reappraise_drug"):
        log.add({"onset": 1.0, "duration": 1.0, "trial_type": trial_type})
    log.finish()
    writer.close()
    assert [row["trial_type"] for row in read_tsv(tmp_path / "events.tsv")] == [
        "reappraise_drug", "cue_drug", "feedback", "rating_after"]


# ----------------------------------------------------------------------------- paradigms
MINIMAL = {"tr": 2.0, "blocks": [
    {"condition": "fixation", "duration": 10.0},
    {"condition": "reappraise", "cue": "drug", "duration": 20.0, "feedback": "continuous"},
    {"condition": "savor", "cue": "food", "duration": 20.0, "feedback": "intermittent"},
    {"condition": "fixation", "duration": 10.0},
]}


def test_ratings_and_display_tables_leave_the_scanned_run_unchanged():
    """The simulator and the server read n_volumes, events() and block_of_volume: the
    ratings before and after the run take no scanner time.
    """
    plain = Paradigm.from_dict(MINIMAL)
    rated = Paradigm.from_dict({**MINIMAL, "ratings": {"before": True, "after": True},
                                "display": {"cue_seconds": 2.0}})
    assert rated.n_volumes == plain.n_volumes == 30
    assert rated.events() == plain.events()
    assert [rated.block_of_volume(v) for v in range(30)] == \
        [plain.block_of_volume(v) for v in range(30)]
    assert (rated.ratings.before, rated.ratings.after) == (True, True)
    assert (plain.ratings.before, plain.ratings.after) == (False, False)
    assert rated.display.cue_seconds == 2.0


def test_target_direction_follows_the_strategy():
    blocks = Paradigm.from_dict(MINIMAL).blocks
    assert [b.target for b in blocks] == ["none", "down", "up", "none"]
    flipped = {**MINIMAL, "blocks": [{**MINIMAL["blocks"][1], "target": "up"}]}
    assert Paradigm.from_dict(flipped).blocks[0].target == "up"


@pytest.mark.parametrize("name", ["regulation", "regulation_intermittent", "localizer"])
def test_shipped_paradigms_rate_craving_before_and_after_the_run(name):
    paradigm = Paradigm.from_file(name)
    assert paradigm.ratings.before and paradigm.ratings.after
    assert "craving" in paradigm.ratings.question
    assert paradigm.n_volumes == 140  # as before the ratings were added: not scanned
    assert {block.cue for block in paradigm.blocks} == {"none", "drug", "food", "neutral"}
    for block in paradigm.blocks:
        if block.condition == "reappraise":
            assert "not real" in block.instruction and "actors" in block.instruction
            assert block.target == "down" and "DOWN" in block.instruction
        if block.condition == "savor":
            assert all(word in block.instruction for word in ("holding", "tasting", "enjoying"))
            assert block.target == "up" and "UP" in block.instruction


@pytest.mark.parametrize(("change", "match"), [
    ({"blocks": [{"condition": "dance", "duration": 10.0}]}, "'condition' should be one of"),
    ({"blocks": [{"condition": "look", "cue": "drug", "duration": -20.0}]},
     "'duration' should be a positive number. Got -20.0"),
    ({"blocks": [{"condition": "look", "cue": "drug", "duration": 20.0, "target": "left"}]},
     "'target' should be one of"),
    ({"ratings": {"before": "yes"}}, r"\[ratings\]: 'before' should be true or false"),
    ({"ratings": {"max_seconds": 0}}, "'max_seconds' should be a positive number"),
    ({"ratings": {"befor": True}}, r"unknown keys \['befor'\]"),
    ({"display": {"cue_seconds": -4}}, "'cue_seconds' should be a positive number"),
    ({"blocks": [{"condition": "savor", "cue": "food", "duration": 20.0,
                  "feedback": "intermittent"}]},
     "intermittent feedback is shown for 4 s at the start of the next block"),
])
def test_bad_paradigms_are_refused_with_a_clear_message(change, match):
    with pytest.raises(ConfigError, match=match):
        Paradigm.from_dict({**MINIMAL, **change})


def test_paradigm_picture_folder_is_relative_to_the_file(tmp_path):
    (tmp_path / "study").mkdir()
    path = tmp_path / "study" / "run.toml"
    path.write_text('tr = 2.0\n[display]\npictures = "cues"\n'
                    '[[blocks]]\ncondition = "fixation"\nduration = 10.0\n')
    assert Paradigm.from_file(path).display.pictures == tmp_path / "study" / "cues"


# ----------------------------------------------------------------------------- pictures
def test_shipped_placeholders_are_the_generator_output():
    """The shipped PNGs are exactly what placeholder_image draws (same code, same bytes)."""
    from PIL import Image

    found = find_pictures(SHIPPED_PICTURES, CUE_CATEGORIES)
    for category in CUE_CATEGORIES:
        assert [p.name for p in found[category]] == [
            placeholder_path(SHIPPED_PICTURES, category, i).name for i in range(N_PLACEHOLDERS)]
        for index, path in enumerate(found[category]):
            assert np.array_equal(np.asarray(Image.open(path).convert("RGB")),
                                  placeholder_image(category, index)), path
    assert not np.array_equal(placeholder_image("drug", 0), placeholder_image("food", 0))


def test_find_pictures_takes_png_and_jpeg_and_refuses_missing_ones(tmp_path):
    from PIL import Image

    for category, name in (("drug", "a.PNG"), ("drug", "b.jpeg"), ("food", "c.jpg"),
                           ("food", "notes.txt")):
        (tmp_path / category).mkdir(exist_ok=True)
        if name.endswith("txt"):
            (tmp_path / category / name).write_text("not a picture")
        else:
            Image.fromarray(placeholder_image(category, 0)).save(tmp_path / category / name)
    found = find_pictures(tmp_path, ["drug", "food"])
    assert [p.name for p in found["drug"]] == ["a.PNG", "b.jpeg"]
    assert [p.name for p in found["food"]] == ["c.jpg"]
    with pytest.raises(ConfigError, match=r"no PNG or JPEG pictures in neutral/"):
        find_pictures(tmp_path, ["drug", "neutral"])
    with pytest.raises(ConfigError, match=r"Picture folder /no/such/folder does not exist"):
        find_pictures("/no/such/folder", ["drug"])


@pytest.mark.parametrize(("options", "match"), [
    ({"trigger_keys": ("space",)}, "'space' is both a trigger key and a confirm key"),
    ({"left_keys": ("escape",)}, "'escape' is both a quit key and a left key"),
    ({"start_on": "pulse"}, "'start_on' should be one of"),
    ({"stale_after": 0.0}, "'stale_after' should be > 0"),
])
def test_display_options_refuse_conflicting_keys_and_bad_values(options, match):
    from feedback_display.options import DisplayOptions

    with pytest.raises(ValueError, match=match):
        DisplayOptions(**options)


# ----------------------------------------------------------------------------- command line
def run_cli(*args: str, env: dict | None = None, timeout: float = 60.0):
    return subprocess.run([str(FEEDBACK_DISPLAY), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def without_screen() -> dict[str, str]:
    """The environment minus the X display: a run that got as far as opening a window
    would fail with "Cannot open a window", so any other error came before it.
    """
    return {key: value for key, value in os.environ.items()
            if key not in ("DISPLAY", "WAYLAND_DISPLAY")}


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("feedback-display: error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("args", [
    ["--paradigm", "/nonexistent/paradigm.toml"],
    ["--paradigm", "no_such_paradigm"],
    ["--paradigm", "regulation", "--server", "localhost:5556"],
    ["--paradigm", "regulation", "--timeout", "-1"],
    ["--paradigm", "regulation", "--subject", "sub-01"],
    ["--paradigm", "regulation", "--start-on", "pulse"],
    ["--paradigm", "regulation", "--trigger-key", "space"],
    ["--paradigm", "regulation", "--trigger-key", ","],
    ["--paradigm", "regulation", "--results", "localhost:5557"],
    [],
])
def test_bad_input_is_one_line_on_stderr(args):
    result = run_cli(*args, env=without_screen())
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("feedback-display: error: ")
    assert "Cannot open a window" not in result.stderr and "Traceback" not in result.stderr


BLOCK = '[[blocks]]\ncondition = "{condition}"\ncue = "{cue}"\nduration = {duration}\n'


@pytest.mark.parametrize(("content", "match"), [
    ("tr = 2.0\n" + BLOCK.format(condition="dance", cue="drug", duration=10.0),
     "'condition' should be one of"),
    ("tr = 2.0\n" + BLOCK.format(condition="look", cue="drug", duration=-10.0),
     "'duration' should be a positive number. Got -10.0"),
    ('tr = 2.0\n[display]\npictures = "no_such_folder"\n'
     + BLOCK.format(condition="look", cue="drug", duration=10.0),
     "Picture folder .*no_such_folder does not exist"),
])
def test_bad_paradigm_files_are_refused_before_any_window_opens(tmp_path, content, match):
    paradigm = tmp_path / "broken.toml"
    paradigm.write_text(content)
    line = one_line_error(run_cli("--paradigm", str(paradigm), env=without_screen()))
    assert re.search(match, line), line


def test_picture_folder_without_a_needed_category_is_refused_before_any_window(tmp_path):
    (tmp_path / "drug").mkdir()
    line = one_line_error(run_cli("--paradigm", "regulation", "--pictures", str(tmp_path),
                                  env=without_screen()))
    assert f"Picture folder {tmp_path} has no PNG or JPEG pictures in drug/" in line


def test_no_screen_is_one_line_on_stderr():
    line = one_line_error(run_cli("--paradigm", "regulation", "--windowed",
                                  env=without_screen()))
    assert "Cannot open a window" in line


def test_yaml_paradigm_reads_like_toml(tmp_path):
    yaml = pytest.importorskip("yaml")
    raw = {**MINIMAL, "ratings": {"before": True, "max_seconds": 8.0},
           "display": {"pictures": "cues", "cue_seconds": 2.0}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    read = Paradigm.from_file(tmp_path / "run.yaml")
    assert read == Paradigm.from_dict(raw, source=str(tmp_path / "run.yaml"), base=tmp_path)
    assert read.ratings.max_seconds == 8.0 and read.display.pictures == tmp_path / "cues"
