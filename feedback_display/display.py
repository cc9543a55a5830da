"""The participant display: runs the paradigm on a clock anchored to the scanner's trigger.

The drawing thread (the main thread) owns the window. A run goes through four phases:

1. **rating before** (if the paradigm asks for it): the craving scale, until the participant
   confirms, ``max_seconds`` pass, or the run starts (the scanner never waits);
2. **waiting for the start**: the trigger key (``start_on="trigger"``), the server's first
   feedback event (``"server"``, for replays), or whichever comes first (``"auto"``);
3. **the run**: frame ``n`` shows what the paradigm shows ``n`` frame periods after the
   start. Block onsets, cue pictures and intermittent results are counted in frames at the
   measured refresh rate; a late frame advances the count by the frames it lasted, so the
   schedule never falls behind the scanner. Feedback events move the thermometer in
   continuous-feedback blocks as they arrive; without events for ``stale_after`` seconds
   the bar rests at baseline in a neutral colour until they come back. When the run was
   started by the server, a volume arriving more than 1.5 TR ahead of the schedule (a
   replay faster than real time) moves the schedule forward to it;
4. **rating after** (if asked for and the run was not aborted).

Each frame the loop drains the subscriber's queue (never waiting on it), draws, optionally
grabs a screenshot from the back buffer, paces itself when the screen has no vsync, flips,
and gives every row that became visible on that frame its onset: the flip time minus the
start time. Escape ends any phase; everything shown so far is written.
"""

from __future__ import annotations

import bisect
import gc
import importlib.metadata
import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedback_display import DisplayError
from feedback_display.outputs import (
    EVENTS_COLUMN_DESCRIPTIONS,
    BackgroundWriter,
    EventsLog,
    bids_prefix,
    events_sidecar,
    save_png,
    screenshot_name,
    write_json,
)
from feedback_display.pictures import SHIPPED_PICTURES, find_pictures
from feedback_display.screens import (
    BACKGROUND,
    CENSORED_FILL,
    FILL,
    NEUTRAL_FILL,
    CuePicture,
    Screens,
)
from feedback_display.subscriber import Arrival, FeedbackSubscriber, Malformed, RunEnd
from feedback_display.thermometer import BASELINE_VALUE, BarAnimator
from feedback_display.timing import (
    DROPPED_FRAME_FACTOR,
    NOMINAL_REFRESH_HZ,
    FramePacer,
    IntervalStats,
    frame_stats,
)
from rtserver.paradigm import Block, Paradigm
from rtserver.protocol import FeedbackEvent

log = logging.getLogger(__name__)

START_MODES = ("auto", "trigger", "server")
#: A volume this many TRs ahead of the schedule moves it forward (server-started runs).
REALIGN_TRS = 1.5


@dataclass(frozen=True)
class DisplayOptions:
    """How the display runs.

    Parameters
    ----------
    fullscreen : bool
        Full screen (the default for participants) or a window of ``window_size``.
    window_size : tuple of int
        Size of the window when not full screen.
    refresh_hz : float
        Nominal refresh rate: the frame rate without vsync; with vsync the rate is measured.
        Frame intervals over 1.5 periods count as dropped frames.
    animation_frames : int
        Frames the bar takes to move to a new value (9 = 150 ms at 60 Hz).
    timeout : float
        Seconds to wait for the run to start (trigger or first event) before giving up.
    screenshots : Path or None
        Folder for PNGs of what was shown (see :func:`screenshot_name`), or None.
    out : Path or None
        Folder for ``*_events.tsv``, ``*_events.json`` and ``*_desc-display.json``.
    subject, run : str, int
        BIDS entities of the output file names.
    pacing : {"auto", "vsync", "software"}
        See :class:`feedback_display.timing.FramePacer`.
    start_on : {"auto", "trigger", "server"}
        What starts the run: the trigger key, the server's first feedback event, or either.
    trigger_keys : tuple of str
        Keys the scanner's trigger arrives as (PsychoPy key names: ``"5"``, ``"t"``).
    left_keys, right_keys, confirm_keys : tuple of str
        Keys that move the rating marker and confirm the rating (keyboard or button box).
    rating_step : float
        Scale points (of 100) one key press moves the marker.
    stale_after : float or None
        Seconds without feedback after which the bar shows the neutral state; None: 2.5 TR.
    skip_ratings : bool
        Leave out the ratings before and after the run (development).
    pictures : Path or None
        Cue picture folder, overriding the paradigm's; None: the paradigm's, else the
        shipped placeholders.
    """

    fullscreen: bool = True
    window_size: tuple[int, int] = (1024, 768)
    refresh_hz: float = NOMINAL_REFRESH_HZ
    animation_frames: int = 9
    timeout: float = 120.0
    screenshots: Path | None = None
    out: Path | None = None
    subject: str = "01"
    run: int = 1
    pacing: str = "auto"
    start_on: str = "auto"
    trigger_keys: tuple[str, ...] = ("5",)
    left_keys: tuple[str, ...] = ("left", "1")
    right_keys: tuple[str, ...] = ("right", "2")
    confirm_keys: tuple[str, ...] = ("space", "return", "3")
    rating_step: float = 5.0
    stale_after: float | None = None
    skip_ratings: bool = False
    pictures: Path | None = None

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"'timeout' should be > 0 seconds. Got {self.timeout!r}.")
        if isinstance(self.run, bool) or not isinstance(self.run, int) or self.run < 1:
            raise ValueError(f"'run' should be a positive integer. Got {self.run!r}.")
        if self.start_on not in START_MODES:
            raise ValueError(f"'start_on' should be one of {START_MODES}. Got {self.start_on!r}.")
        if self.stale_after is not None and not self.stale_after > 0:
            raise ValueError(f"'stale_after' should be > 0 seconds. Got {self.stale_after!r}.")
        if not 0 < self.rating_step <= 100:
            raise ValueError(f"'rating_step' should be in (0, 100]. Got {self.rating_step!r}.")
        roles = {"trigger": self.trigger_keys, "left": self.left_keys,
                 "right": self.right_keys, "confirm": self.confirm_keys}
        seen = {"escape": "quit"}
        for role, keys in roles.items():
            if not keys:
                raise ValueError(f"At least one {role} key is needed.")
            for key in keys:
                if key in seen:
                    raise ValueError(f"Key {key!r} is both a {seen[key]} key and a {role} key.")
                seen[key] = role


@dataclass
class RunResult:
    """How a run ended and what was shown.

    Attributes
    ----------
    ended_by : str
        One of ``paradigm_end`` (the paradigm's last frame), ``run_end`` (the server's
        end-of-run message, at the announced volume count), ``escape``, ``signal``,
        ``no_start`` (neither trigger nor feedback within ``timeout`` seconds).
    summary : dict
        The content of ``*_desc-display.json``.
    """

    ended_by: str
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Rating:
    """A rating scale on screen: where its marker is, and the answer once confirmed."""

    trial_type: str
    position: float = 50.0
    confirmed: bool = False
    t_onset: float | None = None
    response_time: float | None = None
    interrupted: bool = False

    def row(self) -> dict[str, Any]:
        return {"trial_type": self.trial_type,
                "response": self.position if self.confirmed else None,
                "response_time": self.response_time}


class _Stop(Exception):
    """Escape or a stop request: end the run where it is."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FeedbackDisplay:
    """The participant display for one run.

    The constructor checks everything that can be checked without a window (output folders,
    the cue pictures the paradigm needs), so bad input fails before a window opens.

    Parameters
    ----------
    paradigm : Paradigm
        The run's blocks, ratings and display settings.
    server : str
        Feedback endpoint to connect to.
    options : DisplayOptions
        Window, timing, keys and output options.
    stop : threading.Event or None
        Set from elsewhere (a signal handler) to end the run cleanly.

    Raises
    ------
    ConfigError
        If the cue picture folder lacks a category the paradigm shows.
    DisplayError
        If an output folder cannot be created.

    Examples
    --------
    >>> with FeedbackDisplay(Paradigm.from_file("regulation"), "tcp://127.0.0.1:5556",
    ...                      DisplayOptions(fullscreen=False)) as display:  # doctest: +SKIP
    ...     result = display.run()
    """

    def __init__(self, paradigm: Paradigm, server: str,
                 options: DisplayOptions | None = None,
                 stop: threading.Event | None = None) -> None:
        self.paradigm = paradigm
        self.server = server
        self.options = options if options is not None else DisplayOptions()
        self._stop = stop if stop is not None else threading.Event()
        folder = self.options.pictures or paradigm.display.pictures or SHIPPED_PICTURES
        categories = sorted({b.cue for b in paradigm.blocks if b.cue != "none"})
        self.picture_files = find_pictures(folder, categories)
        self.picture_folder = Path(folder)
        self._win: Any = None
        self._writer: BackgroundWriter | None = None
        self._prepare_folders()

    # ----------------------------------------------------------------- setup and teardown
    def _prepare_folders(self) -> None:
        for folder in (self.options.out, self.options.screenshots):
            if folder is None:
                continue
            try:
                Path(folder).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DisplayError(f"Cannot create folder {folder}: {exc.strerror}.") from None

    def open(self) -> FeedbackDisplay:
        """Open the window and build (and pre-draw) every stimulus, pictures included.

        Raises
        ------
        DisplayError
            If no window can be opened (no screen, no OpenGL).
        """
        try:
            from psychopy import logging as psychopy_logging

            psychopy_logging.console.setLevel(psychopy_logging.CRITICAL)
            from psychopy import visual

            self._win = visual.Window(
                size=self.options.window_size, fullscr=self.options.fullscreen, units="pix",
                color=BACKGROUND, colorSpace="rgb255", winType="pyglet",
                allowGUI=not self.options.fullscreen, checkTiming=False, waitBlanking=True,
                gammaErrorPolicy="ignore", autoLog=False,
            )
        except Exception as exc:  # pyglet and OpenGL raise many types; say it in one line
            raise DisplayError(f"Cannot open a window: {type(exc).__name__}: {exc}".rstrip()
                               + ". Is a screen available (DISPLAY set, or xvfb-run)?") from None
        self._win.mouseVisible = not self.options.fullscreen
        try:
            self._build_stimuli()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the window."""
        if self._win is not None:
            self._win.close()
            self._win = None

    def __enter__(self) -> FeedbackDisplay:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _build_stimuli(self) -> None:
        height = int(self._win.size[1])
        if height < 700:
            log.warning("the window is %d px high; the thermometer and texts may not fit",
                        height)
        opts, ratings = self.options, self.paradigm.ratings
        hint = (f"{opts.left_keys[0].upper()} / {opts.right_keys[0].upper()} to move, "
                f"{opts.confirm_keys[0].upper()} to confirm")
        instructions = sorted({b.instruction or b.condition.upper() for b in self.paradigm.blocks})
        self.screens = Screens(self._win, instructions, self.picture_files,
                               (ratings.question, ratings.low_label, ratings.high_label, hint))
        self.geometry = self.screens.geometry
        self.screens.prepare()

    # ----------------------------------------------------------------- the run
    def run(self) -> RunResult:
        """Rate, wait for the start, show the run, rate again; write the outputs.

        Returns
        -------
        RunResult
            How the run ended, and the summary (also written under ``out``).
        """
        if self._win is None:
            raise DisplayError("The window is not open; call open() or use `with`.")
        from psychopy import core
        from psychopy import event as psychopy_event

        self._event_module = psychopy_event
        self._psychopy_offset = time.monotonic() - core.getTime()
        # Everything built so far (PsychoPy, the stimuli) lives for the whole run: leave it
        # out of garbage collections, whose pauses would otherwise grow with it.
        gc.collect()
        gc.freeze()
        self._reset_state()
        psychopy_event.clearEvents()
        subscriber = FeedbackSubscriber(self.server)
        try:
            subscriber.start()
        except BaseException:
            self._writer.close()
            raise
        self._subscriber = subscriber
        log.info("connected to %s", self.server)
        ended_by = "error"
        try:
            ended_by = self._run_phases()
        finally:
            subscriber.close()
            self._drain()  # count what arrived while closing
            summary = self._finish(ended_by)
        return RunResult(ended_by=ended_by, summary=summary)

    def _run_phases(self) -> str:
        ratings, skip = self.paradigm.ratings, self.options.skip_ratings
        try:
            self._calibrate_pacing()
            if ratings.before and not skip and self._t0 is None:
                self._rate_outside_run("rating_before")
            if self._t0 is None:
                self._wait_for_start()
            if self._t0 is None:
                return "no_start"
            ended_by = self._run_paradigm()
            if ratings.after and not skip:
                try:
                    self._rate_outside_run("rating_after")
                except _Stop as stop:  # the run itself was complete
                    log.info("the rating after the run was ended by %s", stop.reason)
            return ended_by
        except _Stop as stop:
            return stop.reason

    def _reset_state(self) -> None:
        opts = self.options
        self._pacer = FramePacer(opts.refresh_hz, mode=opts.pacing)
        self._period = 1.0 / opts.refresh_hz
        self._frames = frame_stats(opts.refresh_hz)
        self._latency = IntervalStats()
        self._animator = BarAnimator(n_frames=opts.animation_frames, initial=BASELINE_VALUE)
        self._stale_after = opts.stale_after or 2.5 * self.paradigm.tr
        self._t0: float | None = None
        self._t0_unix: float | None = None
        self._started_by: str | None = None
        self._run_end: RunEnd | None = None
        self._first_volume: int | None = None
        self._last_volume = -1
        self._last_arrival: float | None = None
        self._latest: FeedbackEvent | None = None
        self._shown: FeedbackEvent | None = None  # the value the bar moves to or shows
        self._latest_arrival = 0.0
        self._new_event = False
        self._stale = False
        self._values: dict[int, tuple[float, bool]] = {}  # volume -> (value, censored)
        self._in_run = False
        self._n_run_frames = 0
        self._last_flip: float | None = None
        self._refresh_intervals: deque[float] = deque(maxlen=600)
        self._changes: list[tuple[str, dict[str, Any] | None]] = []
        self._open_rows: dict[str, dict[str, Any]] = {}
        self._early_rows: list[dict[str, Any]] = []  # finished before the start (t0 unknown)
        self._ratings: list[dict[str, Any]] = []
        self._shots: list[str] = []
        self._shot_after_settle: str | None = None
        self._counts = dict.fromkeys((
            "received", "shown", "not_shown", "out_of_order", "malformed", "after_end",
            "before_start", "screenshots", "realignments", "triggers", "unavailable"), 0)
        self._writer = BackgroundWriter()
        self._events_log: EventsLog | None = None

    # ----------------------------------------------------------------- frames
    def _present(self) -> float:
        """Screenshot if asked, pace, flip; return the flip time (``time.monotonic``)."""
        if self._shots and self.options.screenshots is not None:
            self._save_screenshot(self._shots)
        self._shots = []
        # Like a vsync'd flip, the software pacer waits after drawing, so a slow draw
        # (a screenshot) is absorbed by the wait instead of delaying the flip.
        self._pacer.wait()
        self._win.flip()
        t_flip = time.monotonic()
        self._pacer.flipped(t_flip)
        if self._in_run:
            if self._n_run_frames > 0:
                self._frames.add((t_flip - self._last_flip) * 1000.0)
            self._n_run_frames += 1
        elif self._last_flip is not None and self._pacer.paced_by == "vsync":
            self._refresh_intervals.append(t_flip - self._last_flip)
        self._last_flip = t_flip
        for kind, row in self._changes:
            self._end_row(kind, t_flip)
            if row is not None:
                self._open_rows[kind] = {**row, "t_onset": t_flip}
        self._changes.clear()
        return t_flip

    def _calibrate_pacing(self) -> None:
        """Flip the waiting screen until the pacer knows whether the screen has vsync.

        With vsync, the frames before the run (this, the rating, the wait for the trigger)
        measure the refresh period the run's frames are counted in (:meth:`_measure_period`).
        """
        while not self._pacer.calibrated:
            self._check_keys()
            self.screens.waiting.draw()
            self._present()
        log.debug("frames paced by %s", self._pacer.paced_by)

    def _measure_period(self) -> None:
        """The median refresh interval before the run (vsync), else the nominal period."""
        intervals = sorted(self._refresh_intervals)
        if self._pacer.paced_by == "vsync" and len(intervals) >= 10:
            self._period = intervals[len(intervals) // 2]
        log.info("frames counted at %.3f Hz (%s)", 1.0 / self._period,
                 "measured" if self._pacer.paced_by == "vsync" else "software pacing")

    def _frames_of(self, seconds: float) -> int:
        return max(1, round(seconds / self._period))

    # ----------------------------------------------------------------- keys and messages
    def _check_keys(self) -> list[tuple[str, float]]:
        """Poll the keyboard once; handle Escape and triggers; return the other keys."""
        if self._stop.is_set():
            raise _Stop("signal")
        others = []
        for key, t_key in self._event_module.getKeys(timeStamped=True):
            t_key += self._psychopy_offset
            if key == "escape":
                raise _Stop("escape")
            if key in self.options.trigger_keys:
                self._counts["triggers"] += 1
                if self._t0 is None and self.options.start_on != "server":
                    self._start(t_key, "trigger")
            else:
                others.append((key, t_key))
        return others

    def _drain(self) -> None:
        """Take everything the subscriber received (never blocks)."""
        while True:
            try:
                arrival = self._subscriber.queue.get_nowait()
            except queue.Empty:
                return
            self._accept(arrival)

    def _accept(self, arrival: Arrival) -> None:
        item = arrival.item
        if isinstance(item, Malformed):
            self._counts["malformed"] += 1
            return
        if self._run_end is not None:
            self._counts["after_end"] += 1
            return
        if isinstance(item, RunEnd):
            self._run_end = item
            log.info("end of run announced (%d volumes)", item.n_volumes)
            return
        if self._t0 is None:
            if self.options.start_on == "trigger":
                if self._counts["before_start"] == 0:
                    log.info("ignored feedback for volume %d: the run waits for the trigger",
                             item.volume)
                self._counts["before_start"] += 1
                return
            self._start(arrival.t_arrival - item.volume * self.paradigm.tr, "server",
                        item.volume)
        if item.volume <= self._last_volume:
            self._counts["out_of_order"] += 1
            log.warning("ignored feedback for volume %d after volume %d", item.volume,
                        self._last_volume)
            return
        if self._first_volume is None:
            self._first_volume = item.volume
        self._last_volume = item.volume
        self._last_arrival = arrival.t_arrival
        self._counts["received"] += 1
        self._values[item.volume] = (item.value, item.censored)
        if self._latest is not None and self._new_event:
            self._counts["not_shown"] += 1  # replaced before a frame could show it
        self._latest, self._latest_arrival, self._new_event = item, arrival.t_arrival, True
        if self._stale:
            self._stale = False
            log.info("feedback resumed at volume %d", item.volume)
        if self._in_run and self._started_by == "server":
            self._realign(item.volume)

    def _start(self, t0: float, started_by: str, volume: int = 0) -> None:
        self._t0, self._started_by = t0, started_by
        self._t0_unix = time.time() - (time.monotonic() - t0)
        log.info("run started by the %s at volume %d", started_by, volume)
        if self.options.out is not None:
            self._events_log = EventsLog(self._output_path("events.tsv"), self._writer)
            for row in self._early_rows:
                self._log_row(row)
            self._early_rows.clear()

    # ----------------------------------------------------------------- ratings
    def _rate_outside_run(self, trial_type: str) -> None:
        """Show the rating scale until a confirmed answer or ``max_seconds``; before the
        run, also until the run starts."""
        rating = _Rating(trial_type)
        n_frames = self._frames_of(self.paradigm.ratings.max_seconds)
        frame = 0
        while frame < n_frames and not rating.confirmed:
            self._handle_rating_keys(rating, self._check_keys())
            self._drain()
            if trial_type == "rating_before" and self._t0 is not None:
                rating.interrupted = True
                log.warning("the run started during the rating before it; rating abandoned")
                break
            self.screens.rating.draw(rating.position, rating.confirmed)
            if rating.t_onset is None:
                self._changes.append(("rating", {"trial_type": trial_type}))
                self._shots.append(trial_type.replace("_", "-"))
            t_flip = self._present()
            if rating.t_onset is None:
                rating.t_onset = t_flip
                log.info("%s: the rating scale is shown", trial_type)
            frame += 1
        self._finish_rating(rating)
        if self._t0 is None or trial_type == "rating_after":
            self._changes.append(("rating", None))
            self.screens.waiting.draw()
            self._present()
        else:  # the run starts now: its first frame removes the scale
            self._changes.append(("rating", None))

    def _handle_rating_keys(self, rating: _Rating, keys: list[tuple[str, float]]) -> None:
        opts = self.options
        for key, t_key in keys:
            if rating.confirmed or rating.t_onset is None or t_key < rating.t_onset:
                continue  # answered, or pressed before the scale was on screen
            if key in opts.left_keys:
                rating.position = max(0.0, rating.position - opts.rating_step)
            elif key in opts.right_keys:
                rating.position = min(100.0, rating.position + opts.rating_step)
            elif key in opts.confirm_keys:
                rating.confirmed = True
                rating.response_time = max(0.0, t_key - rating.t_onset)

    def _finish_rating(self, rating: _Rating, kind: str = "rating") -> None:
        row = self._open_rows.get(kind)
        if row is not None:
            row.update({**rating.row(), "trial_type": row["trial_type"]})
        log.info("%s: %s", rating.trial_type,
                 f"{rating.position:g}" if rating.confirmed else "no response")
        self._ratings.append({
            "trial_type": rating.trial_type,
            "response": rating.position if rating.confirmed else None,
            "response_time": rating.response_time,
            "final_position": rating.position,
            "interrupted_by_run_start": rating.interrupted,
        })

    # ----------------------------------------------------------------- waiting
    def _wait_for_start(self) -> None:
        t_waiting = time.monotonic()
        log.info("waiting for the %s", {"auto": "trigger or the server's first volume",
                                        "trigger": "trigger", "server": "server's first volume"}
                 [self.options.start_on])
        while self._t0 is None:
            self._check_keys()
            self._drain()
            if self._t0 is not None:
                return
            if time.monotonic() - t_waiting > self.options.timeout:
                return
            self.screens.waiting.draw()
            self._present()

    # ----------------------------------------------------------------- the paradigm
    def _run_paradigm(self) -> str:
        self._measure_period()
        blocks = self.paradigm.blocks
        self._block_frames = [round(b.onset / self._period) for b in blocks]
        end_frame = round(self.paradigm.duration / self._period)
        self._frame = -1
        self._schedule_t0 = self._t0  # moved forward by realignments only
        self._block_index = -1
        self._cue_counters = dict.fromkeys(self.picture_files, 0)
        self._cue: CuePicture | None = None
        self._cue_slot = -1
        self._intermittent: tuple[int, float | None, str] | None = None  # end frame, value
        self._rating: _Rating | None = None
        self._showing: str | None = None  # what the thermometer shows in continuous blocks
        self._in_run = True
        try:
            while True:
                keys = self._check_keys()
                self._drain()
                self._next_frame()
                last = end_frame
                if self._run_end is not None:
                    last = min(end_frame, round(self._run_end.n_volumes * self.paradigm.tr
                                                / self._period))
                if self._frame >= last:
                    ended_by = "run_end" if last < end_frame else "paradigm_end"
                    break
                self._update_block()
                if self._rating is not None:
                    self._handle_rating_keys(self._rating, keys)
                self._draw_run_frame()
                t_flip = self._present()
                if self._rating is not None and self._rating.t_onset is None:
                    self._rating.t_onset = t_flip
                    log.info("rating: the rating scale is shown")
        finally:
            self._end_blocks()
            self._in_run = False
        return ended_by

    def _next_frame(self) -> None:
        """Number the frame about to be drawn: frame ``n`` is meant to flip ``n`` periods
        after the start, so the number is that of the coming flip's time. Frames normally
        count up one by one; a late frame makes the count skip the frames it lasted, so the
        schedule never falls behind the scanner, and a measured period a little off cannot
        make it drift either way."""
        t_next = self._pacer.next_flip(time.monotonic(), self._period)
        due = round((t_next - self._schedule_t0) / self._period)
        self._frame = max(self._frame, due, 0)

    def _realign(self, volume: int) -> None:
        """Server-started runs: a volume well ahead of the schedule moves it forward."""
        frame = round(volume * self.paradigm.tr / self._period)
        if (frame - self._frame) * self._period <= REALIGN_TRS * self.paradigm.tr:
            return
        if self._counts["realignments"] == 0:
            log.warning("volumes arrive faster than real time (an accelerated replay?); "
                        "the paradigm follows the volumes")
        self._counts["realignments"] += 1
        self._schedule_t0 -= (frame - self._frame) * self._period
        self._frame = frame - 1  # drawn next

    def _update_block(self) -> None:
        index = bisect.bisect_right(self._block_frames, self._frame) - 1
        if index != self._block_index:
            self._enter_block(index)
        block = self.paradigm.blocks[self._block_index]
        if block.cue != "none" and block.condition != "rating":
            self._update_cue(block)
        if self._intermittent is not None and self._frame >= self._intermittent[0]:
            self._intermittent = None
            self._changes.append(("intermittent", None))

    def _enter_block(self, index: int) -> None:
        previous = self.paradigm.blocks[self._block_index] if self._block_index >= 0 else None
        self._block_index = index
        block = self.paradigm.blocks[index]
        for kind in ("cue", "feedback"):
            self._changes.append((kind, None))
        self._showing = None
        self._shot_after_settle = None
        self._cue = None
        if self._rating is not None:
            self._close_block_rating()
        if self._intermittent is not None:
            self._intermittent = None
            self._changes.append(("intermittent", None))
        self._changes.append(("block", {"trial_type": block.trial_type, "block": index + 1,
                                        "frame": self._frame,
                                        "instruction": block.instruction}))
        self._shots.append(f"block-{index + 1:02d}-{block.trial_type}")
        if previous is not None and previous.feedback == "intermittent":
            self._start_intermittent(previous, index)
        if block.condition == "rating":
            self._rating = _Rating("rating")  # its answer goes into the block's row

    def _close_block_rating(self) -> None:
        self._finish_rating(self._rating, kind="block")
        self._rating = None

    def _start_intermittent(self, previous: Block, index: int) -> None:
        """The previous block's mean feedback (uncensored values received for its volumes)."""
        tr = self.paradigm.tr
        first, stop = round(previous.onset / tr), round((previous.onset + previous.duration) / tr)
        values = [value for volume, (value, censored) in self._values.items()
                  if first <= volume < stop and not censored]
        mean = sum(values) / len(values) if values else None
        end = self._frame + self._frames_of(self.paradigm.display.intermittent_seconds)
        self._intermittent = (end, mean, previous.target)
        self._changes.append(("intermittent", {
            "trial_type": "feedback_intermittent", "block": index, "frame": self._frame,
            "value": mean, "volume": f"{first}-{stop - 1}"}))
        self._shots.append(f"intermittent-{index:02d}")

    def _update_cue(self, block: Block) -> None:
        """One picture every ``cue_seconds``; each category's pictures cycle in file-name
        order across the run's blocks."""
        per_picture = self._frames_of(self.paradigm.display.cue_seconds)
        slot = (self._frame - self._block_frames[self._block_index]) // per_picture
        if self._cue is None or slot != self._cue_slot:
            cues = self.screens.pictures[block.cue]
            cue = cues[self._cue_counters[block.cue] % len(cues)]
            self._cue_counters[block.cue] += 1
            self._cue, self._cue_slot = cue, slot
            stim_file = cue.path.relative_to(self.picture_folder).as_posix()
            self._changes.append(("cue", {"trial_type": f"cue_{block.cue}",
                                          "block": self._block_index + 1, "frame": self._frame,
                                          "stim_file": stim_file}))

    def _draw_run_frame(self) -> None:
        block = self.paradigm.blocks[self._block_index]
        screens = self.screens
        if self._rating is not None:
            if block.instruction:
                screens.instructions[block.instruction].draw()
            screens.rating.draw(self._rating.position, self._rating.confirmed,
                                question=not block.instruction)
            return
        screens.instructions[block.instruction or block.condition.upper()].draw()
        thermometer = block.feedback == "continuous" or self._intermittent is not None
        if block.condition == "fixation" or (block.cue == "none" and not thermometer):
            screens.draw_cross()
        if self._cue is not None:
            screens.draw_picture(self._cue, with_thermometer=thermometer)
        if block.feedback == "continuous":
            self._draw_continuous(block)
        else:
            self._track_unseen()
        if self._intermittent is not None:
            _, mean, target = self._intermittent
            if mean is None:
                screens.thermometer.draw(BASELINE_VALUE, NEUTRAL_FILL, target)
            else:
                screens.thermometer.draw(mean, FILL, target)
                screens.result.draw()

    def _track_unseen(self) -> None:
        """Outside continuous blocks the bar follows the values unseen, so it starts at the
        current value when a continuous block begins."""
        if self._new_event:
            self._animator.set_target(self._latest.value)
            self._new_event = False
        self._animator.step()
        self._check_stale()

    def _check_stale(self) -> bool:
        now = time.monotonic()
        last = self._last_arrival if self._last_arrival is not None else self._t0
        stale = now - last > self._stale_after
        if stale and not self._stale:
            self._stale = True
            self._counts["unavailable"] += 1
            log.warning("no feedback from the server for %.1f s: showing the neutral state",
                        now - last)
        return self._stale

    def _draw_continuous(self, block: Block) -> None:
        screens, event = self.screens, self._latest
        stale = self._check_stale()
        if stale or event is None:
            if self._showing != "unavailable":
                self._showing = "unavailable"
                self._animator.set_target(BASELINE_VALUE)
                self._changes.append(("feedback", {
                    "trial_type": "feedback_unavailable", "block": self._block_index + 1,
                    "frame": self._frame}))
                self._shot_after_settle = f"unavailable-{self._frame:06d}"
            self._new_event = False
            value = self._animator.step()
            screens.thermometer.draw(value, NEUTRAL_FILL, block.target)
        elif self._new_event and self._showing == "value" and self._shot_after_settle:
            # A value came before the bar settled on the previous one (a replay faster than
            # real time): grab the previous value's screenshot now, move on next frame.
            self._shots.append(self._shot_after_settle)
            self._shot_after_settle = None
            self._draw_value(block)
        else:
            if self._new_event or self._showing != "value":
                if self._new_event:  # arrived now, not before the block
                    self._latency.add((time.monotonic() - self._latest_arrival) * 1000.0)
                self._showing = "value"
                self._new_event = False
                self._shown = event
                self._counts["shown"] += 1
                self._animator.set_target(event.value)
                self._changes.append(("feedback", {
                    "trial_type": "feedback", "block": self._block_index + 1,
                    "frame": self._frame, "volume": event.volume, "value": event.value,
                    "censored": event.censored}))
                self._shot_after_settle = screenshot_name(event.volume)[:-4]
            self._draw_value(block)
        if self._animator.settled and self._shot_after_settle is not None:
            self._shots.append(self._shot_after_settle)
            self._shot_after_settle = None

    def _draw_value(self, block: Block) -> None:
        """The thermometer moving toward the value shown, grey and "Hold still" if censored."""
        value = self._animator.step()
        censored = self._shown.censored
        self.screens.thermometer.draw(value, CENSORED_FILL if censored else FILL, block.target)
        if censored:
            self.screens.hold_still.draw()

    def _end_blocks(self) -> None:
        """The run's rows end at the next flip (the rating after it), or when the display
        stops; rows queued for a frame that was never flipped are dropped."""
        if self._rating is not None:
            self._close_block_rating()
        self._changes = [(kind, None) for kind, _ in self._changes]
        self._changes += [(kind, None) for kind in self._open_rows]

    # ----------------------------------------------------------------- rows and outputs
    def _end_row(self, kind: str, t_end: float) -> None:
        row = self._open_rows.pop(kind, None)
        if row is None:
            return
        row["t_end"] = t_end
        if self._t0 is None:
            self._early_rows.append(row)
        else:
            self._log_row(row)

    def _log_row(self, row: dict[str, Any]) -> None:
        if self._events_log is None:
            return
        onset = row.pop("t_onset") - self._t0
        row["duration"] = max(0.0, row.pop("t_end") - self._t0 - onset)
        row["onset"] = onset
        self._events_log.add(row)

    def _save_screenshot(self, names: list[str]) -> None:
        image = self._win.getMovieFrame(buffer="back")
        frames = self._win.movieFrames
        if frames and frames[-1] is image:
            frames.pop()  # getMovieFrame keeps every frame; we only want this one
        log.debug("screenshot %s", ", ".join(names))
        for name in names:
            self._writer.submit(save_png, Path(self.options.screenshots) / f"{name}.png", image)
            self._counts["screenshots"] += 1

    def _finish(self, ended_by: str) -> dict[str, Any]:
        t_end = time.monotonic()  # what is on screen stays there until now
        for kind in list(self._open_rows):
            self._end_row(kind, t_end)
        self._changes.clear()
        summary = self._summary(ended_by)
        if self.options.out is not None:
            if self._events_log is not None:
                self._events_log.finish()
                self._writer.submit(write_json, self._output_path("events.json"),
                                    events_sidecar())
            self._writer.submit(write_json, self._output_path("desc-display.json"), summary)
        self._writer.close()
        if self._writer.n_failed:
            log.error("%d display outputs could not be written", self._writer.n_failed)
        return summary

    def _output_path(self, suffix: str) -> Path:
        prefix = bids_prefix(self.options.subject, self.paradigm.task, self.options.run)
        return Path(self.options.out) / f"{prefix}_{suffix}"

    def _summary(self, ended_by: str) -> dict[str, Any]:
        frames, counts = self._frames, self._counts

        def ms(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 3)

        return {
            "task": self.paradigm.task,
            "paradigm": self.paradigm.name,
            "subject": self.options.subject,
            "run": self.options.run,
            "ended_by": ended_by,
            "start_on": self.options.start_on,
            "started_by": self._started_by,
            "run_start": "the trigger key press, or the arrival of the server's first "
                         "feedback event minus its volume index times the TR; every onset "
                         "in the events file is relative to it",
            "run_start_unix_time": self._t0_unix,
            "first_volume": self._first_volume,
            "last_volume": self._last_volume if self._last_volume >= 0 else None,
            "n_volumes_announced": None if self._run_end is None else self._run_end.n_volumes,
            "n_triggers": counts["triggers"],
            "refresh_rate_hz": self.options.refresh_hz,
            "frame_period_ms": round(self._period * 1000.0, 4),
            "paced_by": self._pacer.paced_by,
            "n_frames": self._n_run_frames,
            "frame_interval_ms_min": ms(frames.percentile(0)),
            "frame_interval_ms_median": ms(frames.percentile(50)),
            "frame_interval_ms_p95": ms(frames.percentile(95)),
            "frame_interval_ms_p99": ms(frames.percentile(99)),
            "frame_interval_ms_max": ms(frames.max_ms) if frames.n else None,
            "dropped_frames": int(frames.n_over_threshold),
            "dropped_frame_threshold_ms": round(
                DROPPED_FRAME_FACTOR * 1000.0 / self.options.refresh_hz, 3),
            "frame_timing_scope": "every frame flipped from the run's first frame to its last",
            "n_schedule_realignments": counts["realignments"],
            "n_feedback_events_received": counts["received"],
            "n_feedback_events_shown": counts["shown"],
            "n_feedback_events_replaced_unseen": counts["not_shown"],
            "n_feedback_events_out_of_order": counts["out_of_order"],
            "n_feedback_events_before_start": counts["before_start"],
            "n_feedback_unavailable_episodes": counts["unavailable"],
            "stale_after_s": self._stale_after,
            "n_messages_after_run_end": counts["after_end"],
            "n_malformed_messages": counts["malformed"],
            "n_screenshots": counts["screenshots"],
            "display_latency_ms_median": ms(self._latency.percentile(50)),
            "display_latency_ms_max": ms(self._latency.max_ms) if self._latency.n else None,
            "display_latency": "arrival of a feedback event to the drawing of the first frame "
                               "moving the bar toward it",
            "ratings": self._ratings,
            "pictures": str(self.picture_folder),
            "animation_frames": self.options.animation_frames,
            "window_size": [int(v) for v in self._win.size] if self._win is not None else None,
            "fullscreen": self.options.fullscreen,
            "events_columns": EVENTS_COLUMN_DESCRIPTIONS,
            "software": {"psychopy": _version("psychopy"),
                         "rtfmri-cuereact": _version("rtfmri-cuereact")},
        }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
