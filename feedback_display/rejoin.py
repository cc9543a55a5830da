"""Joining a run that is already going: what starts the display's run, and where it lands.

A display restarted during a run (killed, crashed, quit) must neither show the rating
before the run nor wait for a trigger that came long ago: it puts itself on the run's clock
at the volume being acquired and shows the block running then. It knows the run is going

- before its first frame, if an earlier attempt at the run left its events file in the
  output folder (:mod:`feedback_display.attempts`), or if the server's results channel says
  volumes were processed; it then shows a fixation cross (nothing else) until the first
  feedback event;
- otherwise when the first feedback event it receives is for a volume after the first.

Either way the first feedback event starts the display's run: time zero is its arrival
minus its volume index times the TR, so frame ``n`` is ``n`` frame periods after the run's
start, as for a display that was there from the start. The clock then lags the scanner by
the feedback's latency (the volume's acquisition, export and processing), as a run started
by the server does. :class:`~feedback_display.schedule.Timeline` enters the block of that
frame and shows the cue picture the run shows then; an intermittent result due then is not
shown (the block's values were received by the earlier attempt, not this one).

- :class:`StartRule` -- what may start the run, and whether the rating before it is shown.
- :func:`rejoin_point` -- for a volume, the frame, the block and how far into it.

Pure: given options, volume indices and the frame clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from feedback_display.schedule import FrameSchedule


@dataclass(frozen=True)
class StartRule:
    """What may start the run, and what is shown before it.

    Parameters
    ----------
    start_on : {"auto", "trigger", "server"}
        The display's start mode (see :class:`~feedback_display.options.DisplayOptions`).
    rejoining : bool
        True if the run is known to be going before any feedback event arrives.
    """

    start_on: str
    rejoining: bool = False

    def rating_before(self, asked: bool) -> bool:
        """Whether to show the rating before the run (``asked`` by the paradigm and options)."""
        return asked and not self.rejoining

    @property
    def trigger_starts(self) -> bool:
        """Whether a trigger key press starts the run (never while rejoining)."""
        return self.start_on != "server" and not self.rejoining

    def event_starts(self, volume: int) -> str | None:
        """How a feedback event for ``volume`` before the start starts the run.

        Returns
        -------
        str or None
            ``"rejoin"`` while rejoining or for a volume after the first (in every start
            mode: the run is going); ``"server"`` for volume 0 unless the run waits for
            the trigger; None if the event is refused (volume 0 before the trigger).
        """
        if self.rejoining or volume > 0:
            return "rejoin"
        return None if self.start_on == "trigger" else "server"


@dataclass(frozen=True)
class RejoinPoint:
    """Where a display joining the run at a volume lands on the run's frame clock.

    Attributes
    ----------
    volume : int
        The volume it joins at (the first feedback event's).
    frame : int
        That volume's frame: its index times the TR, in whole frames from the run start.
    block_index : int
        The 0-based paradigm block that frame belongs to.
    frame_in_block : int
        Frames from that block's onset to ``frame``.
    trial_type : str
        That block's ``trial_type``.
    """

    volume: int
    frame: int
    block_index: int
    frame_in_block: int
    trial_type: str

    def describe(self) -> str:
        """One line for the log: the block, how far into it, the frame."""
        return (f"block {self.block_index + 1} ({self.trial_type}) {self.frame_in_block} "
                f"frames after its onset, at frame {self.frame} (volume {self.volume})")


def rejoin_point(schedule: FrameSchedule, volume: int) -> RejoinPoint:
    """The frame, block and offset into it of a display joining the run at ``volume``.

    Parameters
    ----------
    schedule : FrameSchedule
        The run's frame clock.
    volume : int
        The volume of the first feedback event the display received.

    Returns
    -------
    RejoinPoint
        Past the paradigm's end, its last block (the run ends on the frame drawn next).
    """
    frame = schedule.frame_of_volume(volume)
    index = schedule.block_at(frame)
    return RejoinPoint(volume=volume, frame=frame, block_index=index,
                       frame_in_block=frame - schedule.block_frames[index],
                       trial_type=schedule.paradigm.blocks[index].trial_type)
