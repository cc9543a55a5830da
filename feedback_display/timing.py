"""Frame pacing and frame-interval statistics, free of any window.

A screen with vsync paces the drawing loop by itself: ``win.flip()`` blocks until the next
refresh. Without vsync (Xvfb, some remote desktops) a flip returns at once and the loop would
spin at hundreds of frames per second, burning a core. :class:`FramePacer` tells the two
apart from the first few flips and, without vsync, sleeps until the next frame deadline of a
fixed-rate schedule (monotonic clock), so frames still come at the nominal rate.

:class:`FrameLog` keeps the flip times' statistics: the intervals of the run's frames (for
the run summary) and, with vsync, the refresh intervals before the run, whose median is the
period the run's frames are counted in.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from rtserver.errors import ConfigError

#: Refresh rate the display is designed for (Hz).
NOMINAL_REFRESH_HZ = 60.0
#: A frame interval longer than this many nominal periods counts as a dropped frame.
DROPPED_FRAME_FACTOR = 1.5

PACING_MODES = ("auto", "vsync", "software")


class FramePacer:
    """Decide whether the loop needs software pacing, and pace it.

    Call :meth:`wait` just before each flip and :meth:`flipped` just after it.

    Parameters
    ----------
    refresh_hz : float
        Nominal frame rate.
    mode : {"auto", "vsync", "software"}
        ``"auto"`` measures the first ``n_calibration`` flips: if they come faster than
        ``0.4`` of a frame period apart, there is no vsync and software pacing starts.
        ``"vsync"`` never sleeps; ``"software"`` always paces.
    n_calibration : int
        Flips measured in ``"auto"`` mode before deciding.
    clock, sleep : callable
        Monotonic clock (seconds) and sleep function; replaceable in tests.

    Raises
    ------
    ConfigError
        If ``refresh_hz`` is not positive or ``mode`` is not one of :data:`PACING_MODES`.
    """

    def __init__(self, refresh_hz: float = NOMINAL_REFRESH_HZ, mode: str = "auto",
                 n_calibration: int = 10, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not refresh_hz > 0:
            raise ConfigError(f"'refresh_hz' should be > 0. Got {refresh_hz!r}.")
        if mode not in PACING_MODES:
            raise ConfigError(f"'mode' should be one of {PACING_MODES}. Got {mode!r}.")
        self.period = 1.0 / refresh_hz
        self.mode = mode
        self.n_calibration = n_calibration
        self._clock = clock
        self._sleep = sleep
        self._pacing: bool | None = {"auto": None, "vsync": False, "software": True}[mode]
        self._calibration: list[float] = []
        self._last_flip: float | None = None
        self._deadline: float | None = None

    @property
    def calibrated(self) -> bool:
        """True once it is known whether software pacing is needed."""
        return self._pacing is not None

    @property
    def paced_by(self) -> str:
        """``"software"``, ``"vsync"``, or ``"undecided"`` while calibrating."""
        if self._pacing is None:
            return "undecided"
        return "software" if self._pacing else "vsync"

    def wait(self) -> None:
        """Sleep until the next frame deadline when pacing in software; else return."""
        if not self._pacing:
            return
        now = self._clock()
        if self._deadline is None:
            self._deadline = now
        elif now > self._deadline + self.period:
            # Late by more than a frame: restart the schedule rather than rush to catch up.
            self._deadline = now
        delay = self._deadline - now
        if delay > 0:
            self._sleep(delay)

    def next_flip(self, now: float | None = None, period: float | None = None) -> float:
        """When the coming flip is expected (same clock as ``clock``).

        Software pacing: the next deadline (or ``now`` when late). Vsync: the first refresh
        after ``now`` on the grid of the last flip, ``period`` apart (default the nominal
        period; pass the measured one). Before any flip: ``now``.
        """
        now = self._clock() if now is None else now
        period = self.period if period is None else period
        if self._pacing and self._deadline is not None:
            return now if now > self._deadline + self.period else max(now, self._deadline)
        if self._last_flip is None:
            return now
        periods = max(1, math.ceil((now - self._last_flip) / period - 1e-9))
        return self._last_flip + periods * period

    def flipped(self, t_flip: float) -> None:
        """Record that a flip returned at ``t_flip`` (same clock as ``clock``)."""
        if self._pacing is None and self._last_flip is not None:
            self._calibration.append(t_flip - self._last_flip)
            if len(self._calibration) >= self.n_calibration:
                self._pacing = statistics.median(self._calibration) < 0.4 * self.period
        self._last_flip = t_flip
        if self._pacing and self._deadline is not None:
            self._deadline += self.period


class IntervalStats:
    """Summary statistics of a stream of intervals in constant memory.

    Intervals are counted in a histogram of ``resolution_ms`` bins up to ``max_ms`` (longer
    ones in an overflow bin); the maximum is kept exactly. A run of any length costs the
    same memory.

    Parameters
    ----------
    threshold_ms : float or None
        Intervals longer than this are counted by :attr:`n_over_threshold`.
    resolution_ms, max_ms : float
        Histogram bin width and range.
    """

    def __init__(self, threshold_ms: float | None = None, resolution_ms: float = 0.01,
                 max_ms: float = 250.0) -> None:
        self.threshold_ms = threshold_ms
        self.resolution_ms = resolution_ms
        self._counts = np.zeros(int(round(max_ms / resolution_ms)) + 1, dtype=np.int64)
        self.n = 0
        self.max_ms = 0.0
        self.n_over_threshold = 0

    def add(self, interval_ms: float) -> None:
        """Count one interval (milliseconds)."""
        index = min(int(interval_ms / self.resolution_ms), len(self._counts) - 1)
        self._counts[max(index, 0)] += 1
        self.n += 1
        self.max_ms = max(self.max_ms, interval_ms)
        if self.threshold_ms is not None and interval_ms > self.threshold_ms:
            self.n_over_threshold += 1

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100), to within one bin; NaN when empty."""
        if self.n == 0:
            return math.nan
        rank = max(1, math.ceil(q / 100.0 * self.n))
        index = int(np.searchsorted(np.cumsum(self._counts), rank))
        if index == len(self._counts) - 1:
            return self.max_ms
        return min((index + 0.5) * self.resolution_ms, self.max_ms)


def frame_stats(refresh_hz: float = NOMINAL_REFRESH_HZ) -> IntervalStats:
    """Interval statistics whose threshold is the dropped-frame limit at ``refresh_hz``."""
    return IntervalStats(threshold_ms=DROPPED_FRAME_FACTOR * 1000.0 / refresh_hz)


class FrameLog:
    """Statistics of flip times: the run's frame intervals, and the refresh period before it.

    Parameters
    ----------
    refresh_hz : float
        Nominal frame rate; frame intervals over 1.5 of its periods count as dropped.
    n_refresh : int
        Refresh intervals kept (the latest ones) to measure the period before the run.
    """

    #: Refresh intervals needed before a measured period replaces the nominal one.
    MIN_REFRESH_INTERVALS = 10

    def __init__(self, refresh_hz: float = NOMINAL_REFRESH_HZ, n_refresh: int = 600) -> None:
        self.intervals = frame_stats(refresh_hz)
        self.n_run_frames = 0
        self._last_flip: float | None = None
        self._refresh: deque[float] = deque(maxlen=n_refresh)

    def flipped(self, t_flip: float, in_run: bool, vsync: bool) -> None:
        """Record a flip.

        Parameters
        ----------
        t_flip : float
            When the flip returned (seconds, monotonic clock).
        in_run : bool
            True for a frame of the run: counted, and its interval from the previous frame
            of the run added to :attr:`intervals`.
        vsync : bool
            True if flips wait for the screen's refresh; then the intervals of frames
            before the run measure the refresh period.
        """
        if in_run:
            if self.n_run_frames > 0:
                self.intervals.add((t_flip - self._last_flip) * 1000.0)
            self.n_run_frames += 1
        elif self._last_flip is not None and vsync:
            self._refresh.append(t_flip - self._last_flip)
        self._last_flip = t_flip

    def period(self, nominal: float, vsync: bool) -> float:
        """The frame period to count the run in (seconds).

        Returns
        -------
        float
            With vsync and at least :attr:`MIN_REFRESH_INTERVALS` refresh intervals, their
            median (the upper one of an even count); else ``nominal``.
        """
        intervals = sorted(self._refresh)
        if vsync and len(intervals) >= self.MIN_REFRESH_INTERVALS:
            return intervals[len(intervals) // 2]
        return nominal
