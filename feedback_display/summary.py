"""The run summary: the contents of ``*_desc-display.json``.

How the run started and ended, frame timing over the run's frames (frame-interval
percentiles, dropped frames), schedule realignments, feedback counts (received, shown,
replaced unseen, out of order, before the start, malformed, neutral periods), display
latency, the ratings, and software versions. Built from the display's state objects; no
window needed.
"""

from __future__ import annotations

import importlib.metadata
import math
from dataclasses import dataclass, field
from typing import Any

from feedback_display.events import EVENTS_COLUMN_DESCRIPTIONS
from feedback_display.feedback_state import BarState, FeedbackState
from feedback_display.options import DisplayOptions
from feedback_display.timing import DROPPED_FRAME_FACTOR, FrameLog, IntervalStats
from rtserver.paradigm import Paradigm

RUN_START = ("the trigger key press, or the arrival of the server's first feedback event "
             "minus its volume index times the TR (also for a display that rejoined a run "
             "going on: its first feedback event's); every onset in the events file is "
             "relative to it")
FRAME_TIMING_SCOPE = "every frame flipped from the run's first frame to its last"
DISPLAY_LATENCY = ("arrival of a feedback event to the drawing of the first frame moving the "
                   "bar toward it")


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


@dataclass(frozen=True)
class RunStart:
    """How the run started, when (Unix time), and at which volume.

    ``started_by`` is ``trigger``, ``server`` (its first feedback event, for volume 0) or
    ``rejoin`` (a display joining a run going on, at ``volume``).
    """

    started_by: str | None = None
    unix_time: float | None = None
    volume: int = 0


def milliseconds(value: float) -> float | None:
    """A duration in ms for JSON: rounded to 3 decimals; None for NaN (nothing measured)."""
    return None if math.isnan(value) else round(value, 3)


def interval_summary(stats: IntervalStats, name: str) -> dict[str, float | None]:
    """Min, median, p95, p99 and max of intervals, as ``<name>_ms_<statistic>`` entries.

    Returns
    -------
    dict
        Milliseconds to within the histogram's resolution (the maximum exactly); None
        when no interval was counted.
    """
    entries: dict[str, float | None] = {
        f"{name}_ms_{label}": milliseconds(stats.percentile(q))
        for label, q in (("min", 0), ("median", 50), ("p95", 95), ("p99", 99))}
    entries[f"{name}_ms_max"] = milliseconds(stats.max_ms) if stats.n else None
    return entries


def frame_summary(frames: FrameLog, refresh_hz: float, period: float,
                  paced_by: str) -> dict[str, Any]:
    """Frame timing of the run's frames: the period, intervals, and dropped frames.

    Parameters
    ----------
    frames : FrameLog
        The flips of the run.
    refresh_hz : float
        Nominal refresh rate (it sets the dropped-frame threshold: 1.5 of its periods).
    period : float
        The period the run's frames were counted in (seconds).
    paced_by : str
        ``vsync``, ``software`` or ``undecided``.
    """
    return {
        "refresh_rate_hz": refresh_hz,
        "frame_period_ms": round(period * 1000.0, 4),
        "paced_by": paced_by,
        "n_frames": frames.n_run_frames,
        **interval_summary(frames.intervals, "frame_interval"),
        "dropped_frames": int(frames.intervals.n_over_threshold),
        "dropped_frame_threshold_ms": round(DROPPED_FRAME_FACTOR * 1000.0 / refresh_hz, 3),
        "frame_timing_scope": FRAME_TIMING_SCOPE,
    }


def feedback_summary(feedback: FeedbackState, bar: BarState) -> dict[str, Any]:
    """Feedback counts and the staleness threshold."""
    counts = feedback.counts
    return {
        "n_feedback_events_received": counts.received,
        "n_feedback_events_shown": bar.n_shown,
        "n_feedback_events_replaced_unseen": counts.replaced_unseen,
        "n_feedback_events_out_of_order": counts.out_of_order,
        "n_feedback_events_before_start": counts.before_start,
        "n_feedback_unavailable_episodes": counts.unavailable_episodes,
        "stale_after_s": feedback.stale_after,
        "n_messages_after_run_end": counts.after_end,
        "n_malformed_messages": counts.malformed,
    }


def latency_summary(bar: BarState) -> dict[str, Any]:
    """Median and maximum display latency (ms; None before any value was shown)."""
    latency = bar.latency
    return {
        "display_latency_ms_median": milliseconds(latency.percentile(50)),
        "display_latency_ms_max": milliseconds(latency.max_ms) if latency.n else None,
        "display_latency": DISPLAY_LATENCY,
    }


def run_summary(paradigm: Paradigm, options: DisplayOptions, ended_by: str, start: RunStart,
                feedback: FeedbackState, bar: BarState, frames: FrameLog, *,
                period: float, paced_by: str, n_realignments: int, n_triggers: int,
                n_screenshots: int, ratings: list[dict[str, Any]], pictures: str,
                window_size: list[int] | None, attempt: int = 1) -> dict[str, Any]:
    """The content of ``*_desc-display.json``.

    Parameters
    ----------
    paradigm : Paradigm
        The run's paradigm.
    options : DisplayOptions
        The display's options.
    ended_by : str
        How the run ended (see :class:`RunResult`).
    start : RunStart
        How the run started.
    feedback : FeedbackState
        The feedback channel's state at the end.
    bar : BarState
        The thermometer's state at the end.
    frames : FrameLog
        The flips of the run.
    period : float
        The period the run's frames were counted in (seconds).
    paced_by : str
        ``vsync``, ``software`` or ``undecided``.
    n_realignments, n_triggers, n_screenshots : int
        Schedule realignments, trigger key presses, and screenshots taken.
    ratings : list of dict
        Each rating's record (:meth:`feedback_display.rating.RatingScale.record`).
    pictures : str
        The cue picture folder.
    window_size : list of int or None
        The window's size in pixels, if it was open.
    attempt : int
        This start's number among the display's starts for the run (see
        :mod:`feedback_display.attempts`).

    Returns
    -------
    dict
        JSON-ready: no NaN (unmeasured values are None).
    """
    run_end = feedback.run_end
    return {
        "task": paradigm.task,
        "paradigm": paradigm.name,
        "subject": options.subject,
        "run": options.run,
        "ended_by": ended_by,
        "attempt": attempt,
        "start_on": options.start_on,
        "started_by": start.started_by,
        "rejoined_at_volume": start.volume if start.started_by == "rejoin" else None,
        "run_start": RUN_START,
        "run_start_unix_time": start.unix_time,
        "first_volume": feedback.first_volume,
        "last_volume": feedback.last_volume if feedback.last_volume >= 0 else None,
        "n_volumes_announced": None if run_end is None else run_end.n_volumes,
        "n_triggers": n_triggers,
        **frame_summary(frames, options.refresh_hz, period, paced_by),
        "n_schedule_realignments": n_realignments,
        **feedback_summary(feedback, bar),
        "n_screenshots": n_screenshots,
        **latency_summary(bar),
        "ratings": ratings,
        "pictures": pictures,
        "animation_frames": options.animation_frames,
        "window_size": window_size,
        "fullscreen": options.fullscreen,
        "events_columns": EVENTS_COLUMN_DESCRIPTIONS,
        "software": {"psychopy": package_version("psychopy"),
                     "rtfmri-cuereact": package_version("rtfmri-cuereact")},
    }


def package_version(package: str) -> str | None:
    """The installed version of ``package``, or None if it is not installed."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
