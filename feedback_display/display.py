"""The participant display: a PsychoPy window showing the thermometer and the instructions.

The drawing thread (the main thread) owns the window. Each frame it drains the
subscriber's queue (never waiting on it), advances to the next feedback event once the bar
has settled on the current one, draws, optionally grabs a screenshot from the back buffer,
paces itself when the screen has no vsync, and flips.

What is shown follows the paradigm block of the current event's volume
(``paradigm.block_of_volume``):

- the block's instruction, above the thermometer;
- a fixation cross in ``fixation`` blocks;
- the thermometer only in blocks whose ``feedback`` is not ``"none"``, so passive-viewing
  and baseline blocks are free of feedback as the design requires (the bar keeps tracking
  the values unseen, so it appears at the current value when a feedback block starts);
- a censored value as a grey bar with a calm "Hold still" below the tube.

Events are shown in order, each until the bar has settled on its value (about 150 ms). If
more than ``max_backlog`` events wait (a replay faster than real time), the oldest are
skipped so the display catches up; live runs (one event per TR) never skip.
"""

from __future__ import annotations

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
    save_png,
    screenshot_name,
    write_json,
)
from feedback_display.subscriber import Arrival, FeedbackSubscriber, Malformed, RunEnd
from feedback_display.thermometer import BarAnimator, ThermometerGeometry
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

# Colours (rgb255): calm, low-contrast greys with one soft blue for the feedback.
BACKGROUND = (46, 48, 52)
TUBE_BORDER = (150, 152, 158)
TUBE_INSIDE = (30, 31, 34)
FILL = (86, 164, 196)
CENSORED_FILL = (120, 120, 120)
MARKER = (215, 215, 215)
TEXT = (222, 222, 222)
SOFT_TEXT = (190, 190, 190)

WAITING_TEXT = "Waiting for the scanner..."
CENSORED_TEXT = "Hold still"
FONT = "DejaVu Sans"


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
        Nominal refresh rate; frame intervals over 1.5 periods count as dropped frames.
    animation_frames : int
        Frames the bar takes to move to a new value (9 = 150 ms at 60 Hz).
    max_backlog : int
        Events allowed to wait for display before the oldest are skipped.
    timeout : float
        Seconds to wait for the first event, and, once the run started, for any message.
    screenshots : Path or None
        Folder for one PNG per feedback event (``volume-0005.png``), or None.
    out : Path or None
        Folder for ``*_events.tsv`` and ``*_desc-display.json``, or None.
    subject, run : str, int
        BIDS entities of the output file names.
    pacing : {"auto", "vsync", "software"}
        See :class:`feedback_display.timing.FramePacer`.
    """

    fullscreen: bool = True
    window_size: tuple[int, int] = (1024, 768)
    refresh_hz: float = NOMINAL_REFRESH_HZ
    animation_frames: int = 9
    max_backlog: int = 8
    timeout: float = 120.0
    screenshots: Path | None = None
    out: Path | None = None
    subject: str = "01"
    run: int = 1
    pacing: str = "auto"

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"'timeout' should be > 0 seconds. Got {self.timeout!r}.")
        if self.max_backlog < 1:
            raise ValueError(f"'max_backlog' should be >= 1. Got {self.max_backlog!r}.")
        if isinstance(self.run, bool) or not isinstance(self.run, int) or self.run < 1:
            raise ValueError(f"'run' should be a positive integer. Got {self.run!r}.")


@dataclass
class RunResult:
    """How a run ended and what was shown.

    Attributes
    ----------
    ended_by : str
        One of ``run_end``, ``escape``, ``signal``, ``timeout`` (no message for
        ``timeout`` seconds after the run started), ``no_data`` (no event before it).
    summary : dict
        The content of ``*_desc-display.json``.
    """

    ended_by: str
    summary: dict[str, Any] = field(default_factory=dict)


class ThermometerDisplay:
    """The thermometer's PsychoPy stimuli: an outlined tube, a fill, baseline ticks.

    Every part is a filled rectangle with whole-pixel edges, so the fill covers exactly
    :meth:`fill_height` rows of pixels.

    Parameters
    ----------
    win : psychopy.visual.Window
        A window in ``"pix"`` units.
    geometry : ThermometerGeometry
        Sizes and position.
    """

    def __init__(self, win: Any, geometry: ThermometerGeometry | None = None) -> None:
        from psychopy import visual

        self.geometry = geometry if geometry is not None else ThermometerGeometry()
        g = self.geometry
        cx, cy = g.centre

        def rect(width: float, height: float, pos: tuple[float, float],
                 color: tuple[int, int, int]) -> Any:
            return visual.Rect(win, width=width, height=height, pos=pos, units="pix",
                               fillColor=color, lineColor=None, lineWidth=0,
                               colorSpace="rgb255", interpolate=False, autoLog=False)

        self._border = rect(g.width + 2 * g.border, g.height + 2 * g.border, (cx, cy),
                            TUBE_BORDER)
        self._inside = rect(g.width, g.height, (cx, cy), TUBE_INSIDE)
        self._fill = rect(g.width, 2, (cx, cy), FILL)
        offset = g.width / 2 + g.border + 2 + g.marker_length / 2
        self._markers = [rect(g.marker_length, 4, (cx + side * offset, g.marker_y), MARKER)
                         for side in (-1, 1)]
        self._colors = {False: FILL, True: CENSORED_FILL}
        self._censored: bool | None = None

    def fill_height(self, value: float) -> int:
        """Height in pixels of the fill drawn for ``value`` (see ThermometerGeometry)."""
        return self.geometry.fill_height(value)

    def draw(self, value: float, censored: bool = False) -> None:
        """Draw the tube, the baseline ticks, and the fill for ``value``."""
        self._border.draw()
        self._inside.draw()
        for marker in self._markers:
            marker.draw()
        x, y, width, height = self.geometry.fill_rect(value)
        if height > 0:
            if censored != self._censored:
                self._fill.fillColor = self._colors[censored]
                self._censored = censored
            self._fill.size = (width, height)
            self._fill.pos = (x, y)
            self._fill.draw()


class FeedbackDisplay:
    """The participant display for one run.

    Parameters
    ----------
    paradigm : Paradigm
        The run's blocks (instructions and feedback modes by volume).
    server : str
        Feedback endpoint to connect to.
    options : DisplayOptions
        Window, timing and output options.
    stop : threading.Event or None
        Set from elsewhere (a signal handler) to end the run cleanly.

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
        self.geometry = ThermometerGeometry()
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
        """Open the window and build the stimuli.

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
        self._build_stimuli()
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
        from psychopy import visual

        win, g = self._win, self.geometry
        height = int(win.size[1])
        if height < g.height + 2 * g.border + 200:
            log.warning("the window is %d px high; the %d px thermometer and its text may not "
                        "fit", height, g.height)
        self.thermometer = ThermometerDisplay(win, g)

        def text(content: str, y: float, size: int, color: tuple[int, int, int]) -> Any:
            return visual.TextStim(win, text=content, pos=(0, y), height=size, units="pix",
                                   wrapWidth=min(900, int(win.size[0]) - 80), color=color,
                                   colorSpace="rgb255", font=FONT, autoLog=False)

        instruction_y = g.top + g.border + 70
        self._instructions = {
            block.instruction: text(block.instruction or block.condition.upper(),
                                    instruction_y, 28, TEXT)
            for block in self.paradigm.blocks
        }
        self._waiting = text(WAITING_TEXT, 0, 32, TEXT)
        self._hold_still = text(CENSORED_TEXT, g.bottom - g.border - 45, 26, SOFT_TEXT)
        self._cross = [
            visual.Rect(win, width=w, height=h, pos=(0, 0), units="pix", fillColor=TEXT,
                        lineColor=None, lineWidth=0, colorSpace="rgb255", autoLog=False)
            for w, h in ((40, 4), (4, 40))
        ]
        self._prepare_first_draws()

    def _prepare_first_draws(self) -> None:
        """Draw every stimulus once, off screen: a first draw builds textures and glyphs,
        which would otherwise make the first frame of a block late."""
        stimuli = [*self._instructions.values(), self._waiting, self._hold_still, *self._cross]
        for stimulus in stimuli:
            stimulus.draw()
        for censored in (False, True):
            self.thermometer.draw(0.75, censored=censored)
        self._win.clearBuffer()

    # ----------------------------------------------------------------- the run
    def run(self) -> RunResult:
        """Show the run until its end, Escape, a stop request, or a timeout.

        Returns
        -------
        RunResult
            How the run ended, and the frame-timing summary (also written under ``out``).
        """
        if self._win is None:
            raise DisplayError("The window is not open; call open() or use `with`.")
        from psychopy import event as psychopy_event

        self._reset_state()
        psychopy_event.clearEvents()
        self._calibrate_pacing()
        subscriber = FeedbackSubscriber(self.server)
        try:
            subscriber.start()
        except BaseException:
            self._writer.close()
            raise
        log.info("connected to %s; waiting for the scanner", self.server)
        t_waiting = time.monotonic()
        ended_by = None
        try:
            while ended_by is None:
                ended_by = self._check_end(time.monotonic(), t_waiting, psychopy_event)
                if ended_by is not None:
                    break
                self._drain(subscriber)
                self._advance()
                self._draw_frame()
                # Like a vsync'd flip, the software pacer waits after drawing, so a slow draw
                # (a screenshot) is absorbed by the wait instead of delaying the flip.
                self._pacer.wait()
                self._win.flip()
                self._after_flip(time.monotonic())
                if self._run_end is not None and not self._pending and self._current_done:
                    ended_by = "run_end"
        finally:
            subscriber.close()
            self._drain(subscriber)  # count what arrived while closing
            summary = self._finish(ended_by or "error")
        return RunResult(ended_by=ended_by, summary=summary)

    def _reset_state(self) -> None:
        opts = self.options
        self._pacer = FramePacer(opts.refresh_hz, mode=opts.pacing)
        self._frames = frame_stats(opts.refresh_hz)
        self._latency = IntervalStats()
        self._animator = BarAnimator(n_frames=opts.animation_frames, initial=0.5)
        self._pending: deque[Arrival] = deque()
        self._current: FeedbackEvent | None = None
        self._current_done = True
        self._current_arrival = 0.0
        self._block: Block | None = None
        self._run_end: RunEnd | None = None
        self._t0: float | None = None
        self._t0_unix: float | None = None
        self._first_volume: int | None = None
        self._last_arrival: float | None = None
        self._last_volume = -1
        self._last_flip: float | None = None
        self._starting: list[dict[str, Any]] = []
        self._open_rows: dict[str, dict[str, Any]] = {}
        self._counts = dict.fromkeys(("received", "shown", "skipped", "out_of_order",
                                      "malformed", "after_end", "screenshots"), 0)
        self._n_run_frames = 0
        self._writer = BackgroundWriter()
        self._events_log: EventsLog | None = None  # created when the run starts

    def _calibrate_pacing(self) -> None:
        """Flip the waiting screen until the pacer knows whether the screen has vsync, before
        any event can arrive (unpaced calibration frames would be too short)."""
        while not self._pacer.calibrated:
            self._waiting.draw()
            self._pacer.wait()
            self._win.flip()
            self._pacer.flipped(time.monotonic())
        log.debug("frames paced by %s", self._pacer.paced_by)

    def _check_end(self, now: float, t_waiting: float, psychopy_event: Any) -> str | None:
        if self._stop.is_set():
            return "signal"
        if psychopy_event.getKeys(keyList=["escape"]):
            return "escape"
        timeout = self.options.timeout
        if self._t0 is None and now - t_waiting > timeout:
            return "no_data"
        if self._t0 is not None and now - self._last_arrival > timeout:
            return "timeout"
        return None

    def _drain(self, subscriber: FeedbackSubscriber) -> None:
        """Move everything the subscriber received onto the pending list (never blocks)."""
        while True:
            try:
                arrival = subscriber.queue.get_nowait()
            except queue.Empty:
                return
            self._accept(arrival)

    def _accept(self, arrival: Arrival) -> None:
        item = arrival.item
        self._last_arrival = arrival.t_arrival
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
        if item.volume <= self._last_volume:
            self._counts["out_of_order"] += 1
            log.warning("ignored feedback for volume %d after volume %d", item.volume,
                        self._last_volume)
            return
        self._last_volume = item.volume
        self._counts["received"] += 1
        if self._t0 is None:
            self._t0 = arrival.t_arrival
            self._t0_unix = time.time() - (time.monotonic() - arrival.t_arrival)
            self._first_volume = item.volume
            log.info("run started at volume %d", item.volume)
            if self.options.out is not None:
                self._events_log = EventsLog(self._output_path("events.tsv"), self._writer)
        self._pending.append(arrival)
        if len(self._pending) > self.options.max_backlog:
            skipped = self._pending.popleft()
            if self._counts["skipped"] == 0:
                log.warning("the display is behind the server; skipping volumes to catch up")
            self._counts["skipped"] += 1
            log.debug("skipped volume %d", skipped.item.volume)

    def _advance(self) -> None:
        """Make the next pending event current once the bar settled on the present one."""
        if not self._pending or not self._current_done:
            return
        arrival = self._pending.popleft()
        event = arrival.item
        self._current, self._current_done = event, False
        self._current_arrival = arrival.t_arrival
        self._counts["shown"] += 1
        self._animator.set_target(event.value)
        self._starting.append({"trial_type": "feedback", "volume": event.volume,
                               "value": event.value, "censored": event.censored})
        block = self.paradigm.block_of_volume(event.volume)
        if block != self._block:
            self._block = block
            self._starting.append({"trial_type": block.trial_type, "volume": event.volume,
                                   "instruction": block.instruction})

    def _draw_frame(self) -> None:
        value = self._animator.step()
        event, block = self._current, self._block
        if event is None or block is None:
            self._waiting.draw()
            return
        self._instructions[block.instruction].draw()
        if block.condition == "fixation":
            for part in self._cross:
                part.draw()
        if block.feedback != "none":
            self.thermometer.draw(value, censored=event.censored)
            if event.censored:
                self._hold_still.draw()
        if self._animator.settled and not self._current_done:
            if self.options.screenshots is not None:
                self._save_screenshot(event.volume)
            self._current_done = True

    def _save_screenshot(self, volume: int) -> None:
        image = self._win.getMovieFrame(buffer="back")
        frames = self._win.movieFrames
        if frames and frames[-1] is image:
            frames.pop()  # getMovieFrame keeps every frame; we only want this one
        path = Path(self.options.screenshots) / screenshot_name(volume)
        self._writer.submit(save_png, path, image)
        self._counts["screenshots"] += 1

    def _after_flip(self, t_flip: float) -> None:
        self._pacer.flipped(t_flip)
        if self._t0 is not None and self._current is not None:
            if self._n_run_frames > 0:
                interval_ms = (t_flip - self._last_flip) * 1000.0
                self._frames.add(interval_ms)
                if interval_ms > self._frames.threshold_ms:
                    log.debug("frame %d came %.1f ms after the previous one (volume %d)",
                              self._n_run_frames, interval_ms, self._current.volume)
            self._n_run_frames += 1
        self._last_flip = t_flip
        for row in self._starting:
            self._start_row(row, t_flip)
        self._starting.clear()

    def _start_row(self, row: dict[str, Any], t_flip: float) -> None:
        """Give a row its onset (this flip); end the previous row of its kind."""
        onset = t_flip - self._t0
        kind = "feedback" if row["trial_type"] == "feedback" else "block"
        if kind == "feedback":
            self._latency.add((t_flip - self._current_arrival) * 1000.0)
        self._end_row(kind, onset)
        self._open_rows[kind] = {**row, "onset": onset}

    def _end_row(self, kind: str, t_end: float) -> None:
        row = self._open_rows.pop(kind, None)
        if row is not None and self._events_log is not None:
            row["duration"] = max(0.0, t_end - row["onset"])
            self._events_log.add(row)

    # ----------------------------------------------------------------- outputs
    def _finish(self, ended_by: str) -> dict[str, Any]:
        if self._t0 is not None and self._last_flip is not None:
            t_end = max(0.0, self._last_flip - self._t0)
            for kind in ("block", "feedback"):
                self._end_row(kind, t_end)
        summary = self._summary(ended_by)
        if self.options.out is not None and self._t0 is not None:
            self._events_log.finish()
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
            "run_start": "arrival of the first feedback event at the display; every onset "
                         "in the events file is relative to it",
            "run_start_unix_time": self._t0_unix,
            "first_volume": self._first_volume,
            "last_volume": self._last_volume if self._last_volume >= 0 else None,
            "n_volumes_announced": None if self._run_end is None else self._run_end.n_volumes,
            "refresh_rate_hz": self.options.refresh_hz,
            "paced_by": self._pacer.paced_by,
            "n_frames": self._n_run_frames,
            "frame_interval_ms_median": ms(frames.percentile(50)),
            "frame_interval_ms_p95": ms(frames.percentile(95)),
            "frame_interval_ms_max": ms(frames.max_ms) if frames.n else None,
            "dropped_frames": int(frames.n_over_threshold),
            "dropped_frame_threshold_ms": round(
                DROPPED_FRAME_FACTOR * 1000.0 / self.options.refresh_hz, 3),
            "frame_timing_scope": "frames flipped from the first frame showing feedback to "
                                  "the end of the run",
            "n_feedback_events_received": counts["received"],
            "n_feedback_events_shown": counts["shown"],
            "n_feedback_events_skipped": counts["skipped"],
            "n_feedback_events_out_of_order": counts["out_of_order"],
            "n_messages_after_run_end": counts["after_end"],
            "n_malformed_messages": counts["malformed"],
            "n_screenshots": counts["screenshots"],
            "display_latency_ms_median": ms(self._latency.percentile(50)),
            "display_latency_ms_max": ms(self._latency.max_ms) if self._latency.n else None,
            "display_latency": "arrival of a feedback event to the flip of the first frame "
                               "moving the bar toward it",
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
