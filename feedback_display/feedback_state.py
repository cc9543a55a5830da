"""The feedback channel's state, and what the thermometer shows from it.

- :class:`FeedbackState` -- what arrived: the latest value (and whether a frame has shown
  it yet), the values of every volume (for intermittent block means), whether the server
  has gone quiet for ``stale_after`` seconds, and counts of every kind of message.
- :class:`BarState` -- what the bar shows in a continuous-feedback block: the latest value
  (grey when censored), or the neutral state at baseline while there is no feedback or the
  server withheld the latest value (``value`` null); the events row each change opens, and
  the screenshot to take once the bar settles.

Both are fed messages, times (seconds, monotonic clock) and frame numbers; neither reads a
clock, a socket or a window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from feedback_display.events import feedback_row, unavailable_row
from feedback_display.outputs import screenshot_stem
from feedback_display.subscriber import Malformed, RunEnd
from feedback_display.thermometer import BASELINE_VALUE, BarAnimator
from feedback_display.timing import IntervalStats
from rtserver.protocol import FeedbackEvent

log = logging.getLogger(__name__)

#: Without ``stale_after``, the bar goes neutral after this many TRs without feedback.
DEFAULT_STALE_TRS = 2.5


@dataclass
class FeedbackCounts:
    """How many messages of each kind arrived (see the run summary's ``n_*`` entries)."""

    received: int = 0
    replaced_unseen: int = 0
    out_of_order: int = 0
    before_start: int = 0
    after_end: int = 0
    malformed: int = 0
    unavailable_episodes: int = 0


class FeedbackState:
    """What the feedback channel delivered, as the drawing loop drains it.

    Parameters
    ----------
    stale_after : float
        Seconds without a feedback event after which the feedback counts as unavailable.

    Attributes
    ----------
    latest : FeedbackEvent or None
        The latest event accepted.
    latest_arrival : float
        When it arrived.
    new_event : bool
        True while no frame has taken up :attr:`latest` yet (see :meth:`take_new`).
    stale : bool
        True from the moment the feedback went quiet until the next event.
    run_end : RunEnd or None
        The server's end-of-run message, once received.
    first_volume, last_volume : int
        The first and latest volume accepted (None and -1 before any).
    counts : FeedbackCounts
        Messages by kind.
    """

    def __init__(self, stale_after: float) -> None:
        self.stale_after = stale_after
        self.latest: FeedbackEvent | None = None
        self.latest_arrival = 0.0
        self.new_event = False
        self.stale = False
        self.run_end: RunEnd | None = None
        self.first_volume: int | None = None
        self.last_volume = -1
        self.last_arrival: float | None = None
        self.counts = FeedbackCounts()
        self._values: dict[int, tuple[float | None, bool]] = {}  # volume -> (value, censored)

    def admit(self, item: FeedbackEvent | RunEnd | Malformed) -> bool:
        """Take a message's first look: count malformed ones, note the end of the run.

        Returns
        -------
        bool
            True for a feedback event to go on with (:meth:`receive`); False for a
            malformed message, the end-of-run message, or anything after it.
        """
        if isinstance(item, Malformed):
            self.counts.malformed += 1
            return False
        if self.run_end is not None:
            self.counts.after_end += 1
            return False
        if isinstance(item, RunEnd):
            self.run_end = item
            log.info("end of run announced (%d volumes)", item.n_volumes)
            return False
        return True

    def refuse_before_start(self, event: FeedbackEvent) -> None:
        """Count an event that came before the trigger of a run that waits for it."""
        if self.counts.before_start == 0:
            log.info("ignored feedback for volume %d: the run waits for the trigger",
                     event.volume)
        self.counts.before_start += 1

    def receive(self, event: FeedbackEvent, t_arrival: float) -> bool:
        """Accept an event, unless its volume is not after the latest one.

        Returns
        -------
        bool
            True if accepted; False for a volume out of order (counted, logged).
        """
        if event.volume <= self.last_volume:
            self.counts.out_of_order += 1
            log.warning("ignored feedback for volume %d after volume %d", event.volume,
                        self.last_volume)
            return False
        if self.first_volume is None:
            self.first_volume = event.volume
        self.last_volume = event.volume
        self.last_arrival = t_arrival
        self.counts.received += 1
        self._values[event.volume] = (event.value, event.censored)
        if self.latest is not None and self.new_event:
            self.counts.replaced_unseen += 1  # replaced before a frame could show it
        self.latest, self.latest_arrival, self.new_event = event, t_arrival, True
        if self.stale:
            self.stale = False
            log.info("feedback resumed at volume %d", event.volume)
        return True

    def take_new(self) -> bool:
        """True (once) if :attr:`latest` arrived since the last call."""
        new, self.new_event = self.new_event, False
        return new

    def check_stale(self, now: float, t0: float) -> bool:
        """Whether the feedback is unavailable at ``now``.

        Parameters
        ----------
        now : float
            The time of the frame being drawn.
        t0 : float
            The run start: the silence is counted from it before the first event.

        Returns
        -------
        bool
            True once no event has arrived for more than ``stale_after`` seconds, until the
            next one; each such episode is counted (and logged) once.
        """
        last = self.last_arrival if self.last_arrival is not None else t0
        stale = now - last > self.stale_after
        if stale and not self.stale:
            self.stale = True
            self.counts.unavailable_episodes += 1
            log.warning("no feedback from the server for %.1f s: showing the neutral state",
                        now - last)
        return self.stale

    def block_mean(self, first: int, stop: int) -> float | None:
        """The mean of the uncensored values received for volumes ``first`` to ``stop - 1``.

        Returns
        -------
        float or None
            None if no uncensored value of those volumes arrived (withheld values count
            as none).
        """
        values = [value for volume, (value, censored) in self._values.items()
                  if first <= volume < stop and not censored and value is not None]
        return sum(values) / len(values) if values else None


@dataclass
class BarFrame:
    """The thermometer on one frame of a continuous-feedback block.

    Attributes
    ----------
    value : float
        Height of the bar (feedback units, 0-1).
    fill : {"value", "censored", "unavailable"}
        The bar's colour: feedback, censored for motion (with "Hold still"), or neutral.
    row : dict or None
        A ``feedback`` events row starting on this frame, if the bar's target changed.
    shots : list of str
        Screenshots to take of this frame (names without ``.png``).
    """

    value: float
    fill: str
    row: dict[str, Any] | None = None
    shots: list[str] = field(default_factory=list)


class BarState:
    """What the thermometer shows, frame by frame.

    In continuous-feedback blocks (:meth:`continuous`) the bar moves to each new value;
    while the feedback is unavailable it rests at baseline in a neutral colour. Elsewhere
    (:meth:`follow_unseen`) it follows the values unseen, so a continuous block starts at
    the current value.

    Parameters
    ----------
    animation_frames : int
        Frames a move to a new value takes.

    Attributes
    ----------
    latency : IntervalStats
        Milliseconds from an event's arrival to the first frame moving the bar toward it.
    n_shown : int
        Values (feedback rows) the bar was moved to.
    """

    def __init__(self, animation_frames: int) -> None:
        self.animator = BarAnimator(n_frames=animation_frames, initial=BASELINE_VALUE)
        self.latency = IntervalStats()
        self.n_shown = 0
        self._showing: str | None = None  # "value" or "unavailable", within a block
        self._shown: FeedbackEvent | None = None  # the value the bar moves to or shows
        self._shot_after_settle: str | None = None

    def enter_block(self) -> None:
        """A new block: its first continuous frame opens a new feedback row."""
        self._showing = None
        self._shot_after_settle = None

    def follow_unseen(self, feedback: FeedbackState, now: float, t0: float) -> None:
        """A frame outside continuous feedback: move the bar toward the latest value."""
        if feedback.take_new():
            value = feedback.latest.value
            self.animator.set_target(BASELINE_VALUE if value is None else value)
        self.animator.step()
        feedback.check_stale(now, t0)

    def continuous(self, feedback: FeedbackState, now: float, t0: float, block_number: int,
                   frame: int) -> BarFrame:
        """A frame of a continuous-feedback block.

        Parameters
        ----------
        feedback : FeedbackState
            The channel's state; its new event, if any, is taken up.
        now : float
            The time of the frame being drawn.
        t0 : float
            The run start.
        block_number : int
            1-based number of the block (for the events row).
        frame : int
            The frame's number (for the events row and screenshot names).

        Returns
        -------
        BarFrame
            What to draw, and the row and screenshots the frame brings.
        """
        shots: list[str] = []
        row = None
        event = feedback.latest
        if feedback.check_stale(now, t0) or event is None or event.value is None:
            if self._showing != "unavailable":
                self._showing = "unavailable"
                self.animator.set_target(BASELINE_VALUE)
                row = unavailable_row(block_number, frame)
                self._shot_after_settle = f"unavailable-{frame:06d}"
            feedback.take_new()
            fill = "unavailable"
        elif feedback.new_event and self._showing == "value" and self._shot_after_settle:
            # A value came before the bar settled on the previous one (a replay faster than
            # real time): grab the previous value's screenshot now, move on next frame.
            shots.append(self._shot_after_settle)
            self._shot_after_settle = None
            fill = "censored" if self._shown.censored else "value"
        else:
            if feedback.new_event or self._showing != "value":
                if feedback.take_new():  # arrived now, not before the block
                    self.latency.add((now - feedback.latest_arrival) * 1000.0)
                self._showing = "value"
                self._shown = event
                self.n_shown += 1
                self.animator.set_target(event.value)
                row = feedback_row(event, block_number, frame)
                self._shot_after_settle = screenshot_stem(event.volume)
            fill = "censored" if self._shown.censored else "value"
        value = self.animator.step()
        if self.animator.settled and self._shot_after_settle is not None:
            shots.append(self._shot_after_settle)
            self._shot_after_settle = None
        return BarFrame(value=value, fill=fill, row=row, shots=shots)
