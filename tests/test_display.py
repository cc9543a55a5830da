"""The participant display: geometry and timing units, the subscriber over a real socket,
and the real ``feedback-display`` process in a real window (Xvfb), checked pixel by pixel.

The window tests publish known values on an XPUB socket the test binds itself, read each
screenshot back, and measure the bar's height in pixels at the tube's centre column: the
ground truth is ``value * 500`` px.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from feedback_display.display import (
    CENSORED_FILL,
    FILL,
    SOFT_TEXT,
    TUBE_BORDER,
    TUBE_INSIDE,
)
from feedback_display.outputs import BackgroundWriter, EventsLog
from feedback_display.subscriber import (
    FeedbackSubscriber,
    Malformed,
    RunEnd,
    check_endpoint,
)
from feedback_display.thermometer import BarAnimator, ThermometerGeometry
from feedback_display.timing import FramePacer, IntervalStats, frame_stats
from rtserver import protocol
from rtserver.errors import TransportError

FEEDBACK_DISPLAY = Path(sys.executable).parent / "feedback-display"
TUBE_HEIGHT = 500  # the specified inner height of the thermometer, in pixels

needs_display = [
    pytest.mark.display,
    pytest.mark.skipif(not os.environ.get("DISPLAY"),
                       reason="needs an X display; run under xvfb-run"),
]


# ----------------------------------------------------------------------------- helpers
def feedback_event(volume: int, value: float, censored: bool = False) -> protocol.FeedbackEvent:
    now = time.time()
    return protocol.FeedbackEvent(volume=volume, value=value, censored=censored, fd=0.1,
                                  rois={"nacc": 1.0}, t_received=now, t_published=now,
                                  latency_ms=4.0)


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


def bind_xpub(context: zmq.Context) -> tuple[zmq.Socket, str]:
    xpub = context.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    port = xpub.bind_to_random_port("tcp://127.0.0.1")
    return xpub, f"tcp://127.0.0.1:{port}"


def wait_for_subscription(xpub: zmq.Socket, timeout: float,
                          process: subprocess.Popen | None = None) -> bytes:
    """Receive the subscriber's subscription message (an XPUB socket forwards it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if xpub.poll(250):
            return xpub.recv()
        if process is not None and process.poll() is not None:
            pytest.fail(f"the display exited ({process.returncode}) before subscribing: "
                        f"{process.stderr.read()}")
    pytest.fail(f"no subscription within {timeout} s")


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def is_color(pixels: np.ndarray, color: tuple[int, int, int], tolerance: int = 3) -> np.ndarray:
    return np.all(np.abs(pixels.astype(int) - np.array(color)) <= tolerance, axis=-1)


def runs_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of every run of True values."""
    padded = np.concatenate([[False], mask, [False]]).astype(int)
    changes = np.flatnonzero(np.diff(padded))
    return list(zip(changes[::2], changes[1::2], strict=True))


def measure_bar(path: Path) -> SimpleNamespace | None:
    """Measure the thermometer along the window's centre column of a screenshot.

    Returns None when no tube is drawn; else the tube's inner height, the fill's height in
    pixels (counted up from the inner bottom edge) and the fill's colour.
    """
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB"))
    column = image[:, image.shape[1] // 2]
    border = runs_of(is_color(column, TUBE_BORDER))
    if not border:
        return None
    inner_top, inner_bottom = border[0][1], border[-1][0]  # rows inside the outline
    inside = column[inner_top:inner_bottom]
    filled = ~is_color(inside, TUBE_INSIDE)
    fill_runs = runs_of(filled)
    fill_height = 0
    if fill_runs:
        assert len(fill_runs) == 1, f"the fill is not one solid bar: {fill_runs}"
        start, stop = fill_runs[0]
        assert stop == len(inside), "the fill does not start at the tube's bottom"
        fill_height = stop - start
    return SimpleNamespace(inner_height=inner_bottom - inner_top, fill_height=fill_height,
                           fill_color=tuple(int(c) for c in inside[-1]) if fill_height else None,
                           image=image, inner_bottom=inner_bottom)


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


# ----------------------------------------------------------------------------- command line
def run_cli(*args: str, env: dict | None = None, timeout: float = 60.0):
    return subprocess.run([str(FEEDBACK_DISPLAY), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("args", [
    ["--paradigm", "/nonexistent/paradigm.toml"],
    ["--paradigm", "no_such_paradigm"],
    ["--paradigm", "regulation", "--server", "localhost:5556"],
    ["--paradigm", "regulation", "--timeout", "-1"],
    ["--paradigm", "regulation", "--subject", "sub-01"],
    [],
])
def test_bad_input_is_one_line_on_stderr(args):
    result = run_cli(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("feedback-display: error: ")
    assert "Traceback" not in result.stderr


def test_invalid_paradigm_file_is_one_line_on_stderr(tmp_path):
    paradigm = tmp_path / "broken.toml"
    paradigm.write_text('tr = 2.0\n[[blocks]]\ncondition = "dance"\nduration = 10.0\n')
    result = run_cli("--paradigm", str(paradigm))
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "'condition' should be one of" in result.stderr


def test_no_screen_is_one_line_on_stderr():
    env = {key: value for key, value in os.environ.items()
           if key not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = run_cli("--paradigm", "regulation", "--windowed", env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "Cannot open a window" in result.stderr


# ----------------------------------------------------------------------------- real window
# (volume, value, censored): two volumes in blocks without feedback (fixation, look_drug),
# five in the first reappraise_drug block (volumes 20-29 at TR 2 s), the last censored.
# Seven events sent at once stay within the display's backlog of 8, so none is skipped.
PUBLISHED = [(0, 0.5, False), (5, 0.9, False), (20, 0.0, False), (21, 0.25, False),
             (22, 0.8, False), (23, 1.0, False), (24, 0.6, True)]
FEEDBACK_VOLUMES = [volume for volume, _, _ in PUBLISHED if volume >= 20]


@pytest.fixture(scope="module")
def display_run(tmp_path_factory):
    """Run ``feedback-display`` once against a test-owned XPUB socket; return what it did."""
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs an X display; run under xvfb-run")
    base = tmp_path_factory.mktemp("display")
    out, shots = base / "out", base / "screenshots"
    context = zmq.Context()
    xpub, address = bind_xpub(context)
    process = subprocess.Popen(
        [str(FEEDBACK_DISPLAY), "--windowed", "--paradigm", "regulation", "--server", address,
         "--out", str(out), "--screenshots", str(shots), "--timeout", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for_subscription(xpub, 60.0, process)
        bad = malformed_messages()
        for number, (volume, value, censored) in enumerate(PUBLISHED):
            xpub.send_multipart(protocol.encode_feedback(feedback_event(volume, value, censored)))
            if number < len(bad):
                xpub.send_multipart(bad[number])
        xpub.send_multipart(protocol.encode_run_end(30))
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        xpub.close(linger=0)
        context.term()
    prefix = "sub-01_task-regulation_run-1"
    return SimpleNamespace(code=process.returncode, stderr=stderr, shots=shots,
                           n_malformed=len(bad), events=out / f"{prefix}_events.tsv",
                           summary=out / f"{prefix}_desc-display.json")


def display_test(function):
    """Mark a test as needing a screen, and skip it when there is none."""
    for mark in needs_display:
        function = mark(function)
    return function


@display_test
def test_display_ends_cleanly_at_the_end_of_the_run(display_run):
    assert display_run.code == 0, display_run.stderr
    assert "Traceback" not in display_run.stderr
    assert sorted(path.name for path in display_run.shots.iterdir()) == [
        f"volume-{volume:04d}.png" for volume, _, _ in PUBLISHED]


@display_test
@pytest.mark.parametrize(("volume", "value", "censored"),
                         [event for event in PUBLISHED if event[0] >= 20])
def test_screenshot_bar_height_equals_value_times_tube_height(display_run, volume, value,
                                                              censored):
    bar = measure_bar(display_run.shots / f"volume-{volume:04d}.png")
    assert bar is not None, "no thermometer in a feedback block"
    assert bar.inner_height == TUBE_HEIGHT
    assert abs(bar.fill_height - value * TUBE_HEIGHT) <= 2, (bar.fill_height, value)
    if bar.fill_height:
        assert is_color(np.array(bar.fill_color), CENSORED_FILL if censored else FILL)


@display_test
def test_censored_value_says_hold_still_below_the_tube(display_run):
    def text_pixels(volume: int) -> int:
        bar = measure_bar(display_run.shots / f"volume-{volume:04d}.png")
        below = bar.image[bar.inner_bottom + 10: bar.inner_bottom + 90, 400:624]
        return int(is_color(below, SOFT_TEXT, tolerance=40).sum())

    assert text_pixels(24) > 50  # "Hold still"
    assert text_pixels(22) == 0


@display_test
@pytest.mark.parametrize("volume", [0, 5])
def test_no_thermometer_in_blocks_without_feedback(display_run, volume):
    assert measure_bar(display_run.shots / f"volume-{volume:04d}.png") is None


@display_test
def test_events_tsv_lists_the_blocks_and_values_shown(display_run):
    rows = read_tsv(display_run.events)
    assert list(rows[0]) == ["onset", "duration", "trial_type", "volume", "value", "censored",
                             "instruction"]
    blocks = [row for row in rows if row["trial_type"] != "feedback"]
    assert [(row["trial_type"], int(row["volume"])) for row in blocks] == [
        ("fixation", 0), ("look_drug", 5), ("reappraise_drug", 20)]
    assert blocks[2]["instruction"].startswith("REAPPRAISE")
    feedback = [row for row in rows if row["trial_type"] == "feedback"]
    assert [(int(row["volume"]), float(row["value"]), row["censored"] == "1")
            for row in feedback] == PUBLISHED
    onsets = [float(row["onset"]) for row in rows]
    assert onsets == sorted(onsets) and onsets[0] >= 0.0
    assert all(float(row["duration"]) >= 0.0 for row in rows)
    # A new value stays up until the bar has settled on it: 9 frames at 60 Hz. (Volume 0's
    # 0.5 is where the bar starts, so it settles at once.)
    assert all(float(row["duration"]) > 8.5 / 60 for row in feedback[1:-1])


@display_test
def test_display_json_reports_frame_timing_and_malformed_messages(display_run):
    summary = json.loads(display_run.summary.read_text())
    assert summary["ended_by"] == "run_end"
    assert isinstance(summary["dropped_frames"], int) and summary["dropped_frames"] >= 0
    assert summary["n_frames"] >= 1 + (len(PUBLISHED) - 1) * 9  # 9 frames per new value
    assert 0 < summary["frame_interval_ms_median"] <= summary["frame_interval_ms_p95"] \
        <= summary["frame_interval_ms_max"]
    assert summary["refresh_rate_hz"] == 60.0
    assert summary["paced_by"] in ("software", "vsync")
    assert summary["n_feedback_events_shown"] == len(PUBLISHED)
    assert summary["n_feedback_events_skipped"] == 0
    assert summary["n_malformed_messages"] == display_run.n_malformed
    assert summary["n_volumes_announced"] == 30
    assert summary["first_volume"] == 0


@display_test
def test_no_event_within_the_timeout_is_one_line_error(tmp_path):
    context = zmq.Context()
    xpub, address = bind_xpub(context)  # bound, so the display connects, but silent
    try:
        result = run_cli("--windowed", "--paradigm", "regulation", "--server", address,
                         "--timeout", "1", "--quiet", "--out", str(tmp_path))
    finally:
        xpub.close(linger=0)
        context.term()
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"feedback-display: error: no feedback event arrived from {address} within 1 s."]
    assert list(tmp_path.iterdir()) == []


@display_test
def test_escape_ends_the_run_and_keeps_what_was_shown(tmp_path, processes):
    xlib = pytest.importorskip("Xlib", reason="python-xlib sends the key press (XTEST)")
    from Xlib import XK
    from Xlib.display import Display
    from Xlib.ext import xtest

    context = zmq.Context()
    xpub, address = bind_xpub(context)
    try:
        display = processes([str(FEEDBACK_DISPLAY), "--windowed", "--paradigm", "regulation",
                             "--server", address, "--out", str(tmp_path), "--timeout", "20"])
        wait_for_subscription(xpub, 60.0, display.proc)
        xpub.send_multipart(protocol.encode_feedback(feedback_event(20, 0.3)))
        display.wait_for(r"run started at volume 20", timeout=20.0)
        screen = Display()
        escape = screen.keysym_to_keycode(XK.string_to_keysym("Escape"))
        for kind in (xlib.X.KeyPress, xlib.X.KeyRelease):
            xtest.fake_input(screen, kind, escape)
        screen.sync()
        code, stderr = display.finish(timeout=20.0)
    finally:
        xpub.close(linger=0)
        context.term()
    assert code == 0, stderr
    summary = json.loads((tmp_path / "sub-01_task-regulation_run-1_desc-display.json")
                         .read_text())
    assert summary["ended_by"] == "escape"
    rows = read_tsv(tmp_path / "sub-01_task-regulation_run-1_events.tsv")
    assert [(row["trial_type"], row["volume"]) for row in rows] == [
        ("reappraise_drug", "20"), ("feedback", "20")]
