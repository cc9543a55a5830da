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

A display started while the run is going skips 1 and 2 and rejoins it at the volume of its
first feedback event (:mod:`~feedback_display.rejoin`, :mod:`~feedback_display.attempts`).

Each frame the loop drains the subscriber's queue (never waiting on it), draws, optionally
grabs a screenshot from the back buffer, paces itself when the screen has no vsync, flips,
and gives every row that became visible on that frame its onset: the flip time minus the
start time. Escape ends any phase; everything shown so far is written.

:class:`FeedbackDisplay` wires the parts together: the window
(:mod:`~feedback_display.window`), the frame clock (:mod:`~feedback_display.schedule`),
the feedback and the bar (:mod:`~feedback_display.feedback_state`), the ratings
(:mod:`~feedback_display.rating`), the events rows (:mod:`~feedback_display.events`) and
the summary (:mod:`~feedback_display.summary`); all but the window work without a screen.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from feedback_display.attempts import RunFiles, find_attempt
from feedback_display.events import EventRows, rating_row
from feedback_display.feedback_state import DEFAULT_STALE_TRS, BarState, FeedbackState
from feedback_display.options import DisplayOptions
from feedback_display.outputs import RunOutputs, make_folders
from feedback_display.pictures import SHIPPED_PICTURES, find_pictures, picture_folder, stim_file
from feedback_display.rating import RatingScale
from feedback_display.rejoin import StartRule, rejoin_point
from feedback_display.schedule import FrameSchedule, Timeline, frames_of
from feedback_display.screens import Screens
from feedback_display.subscriber import Arrival, FeedbackSubscriber, processed_volumes
from feedback_display.summary import RunResult, RunStart, run_summary
from feedback_display.timing import FrameLog, FramePacer
from feedback_display.window import DisplayWindow
from rtserver import bids
from rtserver.errors import DisplayError
from rtserver.paradigm import Paradigm

__all__ = ["DisplayOptions", "FeedbackDisplay", "RunResult"]

log = logging.getLogger(__name__)
_WAITING_FOR = {"auto": "trigger or the server's first volume", "trigger": "trigger",
                "server": "server's first volume"}
_STARTED = {"trigger": "run started by the trigger", "server": "run started by the server",
            "rejoin": "rejoined the run"}

class _Stop(Exception):
    """Escape or a stop request: end the run where it is (never leaves this module)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FeedbackDisplay:
    """The participant display for one run.

    The constructor checks everything that can be checked without a window (output folders
    and what earlier attempts at the run left in them, the cue pictures the paradigm needs),
    so bad input fails before a window opens.

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
        If an output folder cannot be created, or is refused by :func:`.attempts.find_attempt`.

    Attributes
    ----------
    attempt : Attempt
        This start's number among the starts for the run, and whether it rejoins it.

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
        self.picture_folder = picture_folder(folder)
        self._window = DisplayWindow(self.options.fullscreen, self.options.window_size)
        make_folders(self.options.out, self.options.screenshots)
        prefix = bids.prefix(self.options.subject, paradigm.task, self.options.run)
        self._files = None if self.options.out is None else RunFiles(Path(self.options.out), prefix)
        self.attempt = find_attempt(self._files)

    # ----------------------------------------------------------------- setup and teardown
    @property
    def screens(self) -> Screens | None:
        """The run's stimuli, once the window is open."""
        return self._window.screens

    def open(self) -> FeedbackDisplay:
        """Open the window and build (and pre-draw) every stimulus, pictures included.

        Raises
        ------
        DisplayError
            If no window can be opened (no screen, no OpenGL).
        """
        self._window.open()
        opts = self.options
        hint = (f"{opts.left_keys[0].upper()} / {opts.right_keys[0].upper()} to move, "
                f"{opts.confirm_keys[0].upper()} to confirm")
        try:
            self._window.build(self.paradigm, hint, self.picture_files)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the window."""
        self._window.close()

    def __enter__(self) -> FeedbackDisplay:
        """Open the window (see :meth:`open`)."""
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        """Close the window."""
        self.close()

    # ----------------------------------------------------------------- the run
    def run(self) -> RunResult:
        """Rate, wait for the start, show the run, rate again; write the outputs.

        Returns
        -------
        RunResult
            How the run ended, and the summary (also written under ``out``).

        Raises
        ------
        DisplayError
            If the window is not open.
        TransportError
            If the feedback subscriber cannot connect.
        """
        if not self._window.is_open:
            raise DisplayError("The window is not open; call open() or use `with`.")
        # Everything built so far (PsychoPy, the stimuli) lives for the whole run: leave it
        # out of garbage collections, whose pauses would otherwise grow with it.
        gc.collect()
        gc.freeze()
        self._reset_state()
        self._window.start_keyboard()
        subscriber = FeedbackSubscriber(self.server, curve=self.options.curve)
        try:
            subscriber.start()
        except BaseException:
            self._out.close()
            raise
        self._subscriber = subscriber
        log.info("connected to %s", self.server)
        results = self.options.results
        self._rule = StartRule(self.options.start_on, self.attempt.rejoins or (
            results is not None and bool(processed_volumes(results, keys=subscriber.keys))))
        ended_by = "error"
        try:
            ended_by = self._run_phases()
        finally:
            subscriber.close()
            self._drain()  # count what arrived while closing
            summary = self._finish(ended_by)
        return RunResult(ended_by=ended_by, summary=summary)

    def _run_phases(self) -> str:
        """Rating before, the wait for the start, the paradigm, rating after."""
        ratings, skip = self.paradigm.ratings, self.options.skip_ratings
        try:
            self._calibrate_pacing()
            if self._rule.rating_before(ratings.before and not skip) and self._t0 is None:
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
        """Fresh state for a run."""
        opts = self.options
        self._pacer = FramePacer(opts.refresh_hz, mode=opts.pacing)
        self._period = 1.0 / opts.refresh_hz
        self._frame_log = FrameLog(opts.refresh_hz)
        self._feedback = FeedbackState(opts.stale_after or DEFAULT_STALE_TRS * self.paradigm.tr)
        self._bar = BarState(opts.animation_frames)
        self._rows = EventRows()
        self._t0: float | None = None
        self._start_info = RunStart()
        self._rule = StartRule(opts.start_on)
        self._in_run = False
        self._schedule: FrameSchedule | None = None
        self._timeline: Timeline | None = None
        self._block_rating: RatingScale | None = None
        self._ratings: list[dict[str, Any]] = []
        self._shots: list[str] = []
        self._n_triggers = 0
        self._out = RunOutputs(self._files, self.attempt.number, opts.screenshots)

    # ----------------------------------------------------------------- frames
    def _present(self) -> float:
        """Screenshot if asked, pace, flip; return the flip time (``time.monotonic``)."""
        if self._shots and self.options.screenshots is not None:
            self._save_screenshot(self._shots)
        self._shots = []
        t_flip = self._window.flip(self._pacer)
        self._frame_log.flipped(t_flip, self._in_run, vsync=self._pacer.paced_by == "vsync")
        for row in self._rows.flipped(t_flip):
            self._log_row(row)
        return t_flip

    def _calibrate_pacing(self) -> None:
        """Flip the waiting screen until the pacer knows whether the screen has vsync.

        With vsync, the frames before the run (this, the rating, the wait for the trigger)
        measure the refresh period the run's frames are counted in.
        """
        while not self._pacer.calibrated:
            self._check_keys()
            self._draw_waiting()
            self._present()
        log.debug("frames paced by %s", self._pacer.paced_by)

    # ----------------------------------------------------------------- keys and messages
    def _check_keys(self) -> list[tuple[str, float]]:
        """Poll the keyboard once; handle Escape and triggers; return the other keys."""
        if self._stop.is_set():
            raise _Stop("signal")
        others = []
        for key, t_key in self._window.keys():
            if key == "escape":
                raise _Stop("escape")
            if key in self.options.trigger_keys:
                self._n_triggers += 1
                if self._t0 is None and self._rule.trigger_starts:
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
        """One message: maybe the run's start; a volume ahead may move the schedule."""
        item = arrival.item
        if not self._feedback.admit(item):
            return
        if self._t0 is None:
            started_by = self._rule.event_starts(item.volume)
            if started_by is None:
                self._feedback.refuse_before_start(item)
                return
            self._start(arrival.t_arrival - item.volume * self.paradigm.tr, started_by,
                        item.volume)
        accepted = self._feedback.receive(item, arrival.t_arrival)
        if accepted and self._in_run and self._start_info.started_by != "trigger":
            self._schedule.realign(item.volume)

    def _start(self, t0: float, started_by: str, volume: int = 0) -> None:
        """The run starts at ``t0``: open the events file, write the rows before it."""
        self._t0 = t0
        self._start_info = RunStart(started_by, time.time() - (time.monotonic() - t0), volume)
        log.info("%s at volume %d (attempt %d)", _STARTED[started_by], volume,
                 self.attempt.number)
        self._out.start_events()
        for row in self._rows.start(t0):
            self._log_row(row)

    # ----------------------------------------------------------------- ratings and waiting
    def _rate_outside_run(self, trial_type: str) -> None:
        """Show the rating scale until a confirmed answer or ``max_seconds``.

        Before the run, also until the run starts.
        """
        rating = RatingScale(trial_type, self.options.rating_keys)
        n_frames = frames_of(self.paradigm.ratings.max_seconds, self._period)
        frame = 0
        while frame < n_frames and not rating.confirmed:
            rating.press(self._check_keys())
            self._drain()
            if trial_type == "rating_before" and self._t0 is not None:
                rating.interrupted = True
                log.warning("the run started during the rating before it; rating abandoned")
                break
            self.screens.rating.draw(rating.position, rating.confirmed)
            if rating.t_onset is None:
                self._rows.show("rating", rating_row(trial_type))
                self._shots.append(trial_type.replace("_", "-"))
            if rating.shown(self._present()):
                log.info("%s: the rating scale is shown", trial_type)
            frame += 1
        self._finish_rating(rating, kind="rating")
        self._rows.remove("rating")
        if self._t0 is None or trial_type == "rating_after":
            self._draw_waiting()
            self._present()
        # else the run starts now: its first frame removes the scale

    def _finish_rating(self, rating: RatingScale, kind: str) -> None:
        """Put the answer in the rating's row (of ``kind``) and the summary."""
        self._rows.annotate(kind, rating.answer())
        log.info("%s: %s", rating.trial_type, rating.describe())
        self._ratings.append(rating.record())

    def _wait_for_start(self) -> None:
        """Show the waiting screen until the run starts or ``timeout`` passes."""
        t_waiting = time.monotonic()
        log.info("waiting for the %s", "server's next volume to rejoin the run"
                 if self._rule.rejoining else _WAITING_FOR[self.options.start_on])
        while self._t0 is None:
            self._check_keys()
            self._drain()
            if self._t0 is not None:
                return
            if time.monotonic() - t_waiting > self.options.timeout:
                return
            self._draw_waiting()
            self._present()

    def _draw_waiting(self) -> None:
        """The screen before the run: the waiting text, or a fixation cross when rejoining."""
        (self.screens.draw_cross if self._rule.rejoining else self.screens.waiting.draw)()

    # ----------------------------------------------------------------- the paradigm
    def _run_paradigm(self) -> str:
        """Draw the paradigm frame by frame until its end, the server's, or Escape."""
        self._period = self._frame_log.period(self._period, self._pacer.paced_by == "vsync")
        log.info("frames counted at %.3f Hz (%s)", 1.0 / self._period,
                 "measured" if self._pacer.paced_by == "vsync" else "software pacing")
        self._schedule = schedule = FrameSchedule(self.paradigm, self._period, self._t0)
        if self._start_info.started_by == "rejoin":
            log.info("joined %s", rejoin_point(schedule, self._start_info.volume).describe())
        self._timeline = Timeline(schedule, {
            category: [stim_file(category, path) for path in paths]
            for category, paths in self.picture_files.items()})
        self._in_run = True
        try:
            while True:
                keys = self._check_keys()
                self._drain()
                frame = schedule.advance(self._pacer.next_flip(time.monotonic(), self._period))
                run_end = self._feedback.run_end
                last = schedule.last_frame(None if run_end is None else run_end.n_volumes)
                if frame >= last:
                    ended_by = "run_end" if last < schedule.end_frame else "paradigm_end"
                    break
                self._update_block(frame)
                if self._block_rating is not None:
                    self._block_rating.press(keys)
                self._draw_run_frame(frame)
                t_flip = self._present()
                if self._block_rating is not None and self._block_rating.shown(t_flip):
                    log.info("rating: the rating scale is shown")
        finally:
            self._end_blocks()
            self._in_run = False
        return ended_by

    def _update_block(self, frame: int) -> None:
        """Apply the frame's changes of block, cue picture and intermittent result."""
        update = self._timeline.update(frame, self._feedback.block_mean)
        if update.entered is not None:
            self._bar.enter_block()
            if self._block_rating is not None:
                self._close_block_rating()
        for kind, row in update.changes:
            if row is None:
                self._rows.remove(kind)
            else:
                self._rows.show(kind, row)
        self._shots += update.shots
        if update.entered is not None and update.entered.condition == "rating":
            # its answer goes into the block's row
            self._block_rating = RatingScale("rating", self.options.rating_keys)

    def _close_block_rating(self) -> None:
        """End the rating of a rating block."""
        self._finish_rating(self._block_rating, kind="block")
        self._block_rating = None

    def _draw_run_frame(self, frame: int) -> None:
        """Draw frame ``frame``: instruction, cross or picture, thermometer or rating."""
        timeline, screens = self._timeline, self.screens
        block = timeline.block
        if self._block_rating is not None:
            screens.draw_block_rating(block, self._block_rating.position,
                                      self._block_rating.confirmed)
            return
        intermittent, cue = timeline.intermittent, timeline.cues.current
        thermometer = block.feedback == "continuous" or intermittent is not None
        screens.draw_block(block, None if cue is None else
                           screens.pictures[cue.category][cue.index], thermometer)
        if block.feedback == "continuous":
            bar = self._bar.continuous(self._feedback, time.monotonic(), self._t0,
                                       timeline.block_index + 1, frame)
            if bar.row is not None:
                self._rows.show("feedback", bar.row)
            self._shots += bar.shots
            screens.draw_bar(bar.value, bar.fill, block.target)
        else:
            self._bar.follow_unseen(self._feedback, time.monotonic(), self._t0)
        if intermittent is not None:
            screens.draw_result(intermittent.mean, intermittent.target)

    def _end_blocks(self) -> None:
        """End the run's rows at the next flip (the rating after the run's first).

        Without a next flip they end when the display stops; rows queued for a frame that
        was never flipped are dropped.
        """
        if self._block_rating is not None:
            self._close_block_rating()
        self._rows.end_at_next_flip()

    # ----------------------------------------------------------------- outputs
    def _log_row(self, row: dict[str, Any]) -> None:
        """Write a finished row (with ``out``, once the run started)."""
        self._out.add(row)

    def _save_screenshot(self, names: list[str]) -> None:
        """Grab the frame drawn so far; write it on the writer thread under each name."""
        log.debug("screenshot %s", ", ".join(names))
        self._out.screenshot(names, self._window.grab())

    def _finish(self, ended_by: str) -> dict[str, Any]:
        """End the rows on screen, write the events and the summary; return the summary."""
        for row in self._rows.close(time.monotonic()):  # on screen until now
            self._log_row(row)
        summary = run_summary(
            self.paradigm, self.options, ended_by, self._start_info, self._feedback,
            self._bar, self._frame_log, period=self._period, paced_by=self._pacer.paced_by,
            n_realignments=self._schedule.n_realignments if self._schedule else 0,
            n_triggers=self._n_triggers, n_screenshots=self._out.n_screenshots,
            ratings=self._ratings, pictures=str(self.picture_folder),
            window_size=self._window.size, attempt=self.attempt.number)
        self._out.close(summary)
        return summary

